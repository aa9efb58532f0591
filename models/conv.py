"""Causal 1-D convolutions that run whole-signal or streaming, as Mimi's (moshi `modules/conv.py`).

Activations are NLC (`[batch, time, channels]`), as MLX expects. Every layer has two entry points:

* `__call__(x)`: the whole signal at once, like the reference outside `streaming()`. A causal conv
  pads `kernel - stride` samples on the left and just enough on the right to complete the last
  window; a transposed conv trims its `kernel - stride` overhang on the right.
* `step(x)`: one chunk of a stream, like the reference inside `streaming()`. A conv left-pads once
  per reset and carries a left-over buffer between calls (the stride remainder); a transposed conv
  overlap-adds its `kernel - stride` tail into the next call. No right padding, no trimming.

Streaming state lives in MLX arrays on the module (underscore names, so never parameters), which
keeps `step` free of data-dependent Python branches.
"""

from __future__ import annotations

import math

import mlx.core as mx
import mlx.nn as nn

PAD_MODES = ("constant", "replicate")


def padding_total(kernel_size: int, stride: int, dilation: int = 1) -> int:
    """Left padding of a causal conv: effective kernel minus stride."""
    return (kernel_size - 1) * dilation + 1 - stride


def extra_padding_for_conv1d(length: int, kernel_size: int, stride: int, padding: int) -> int:
    """Right padding that completes the last window (moshi `get_extra_padding_for_conv1d`).

    `kernel_size` is the effective (dilated) kernel and `padding` the left padding already planned.
    """
    n_frames = (length - kernel_size + padding) / stride + 1
    ideal_length = (math.ceil(n_frames) - 1) * stride + (kernel_size - padding)
    return ideal_length - length


def pad1d(x: mx.array, left: int, right: int, mode: str) -> mx.array:
    """Pad the time axis of an NLC array with zeros (`constant`) or copies of the edge samples (`replicate`)."""
    if left == 0 and right == 0:
        return x
    return mx.pad(x, [(0, 0), (left, right), (0, 0)], mode="edge" if mode == "replicate" else "constant")


class StreamingConv1d(nn.Module):
    """Causal Conv1d (moshi `StreamingConv1d` + `RawStreamingConv1d`). Weight layout `[out, k, in/groups]`."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        bias: bool = True,
        pad_mode: str = "constant",
    ) -> None:
        super().__init__()
        if pad_mode not in PAD_MODES:
            raise ValueError(f"pad_mode must be one of {PAD_MODES}, got {pad_mode!r}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.stride = stride
        self.dilation = dilation
        self.groups = groups
        self.pad_mode = pad_mode
        self.effective_kernel = (kernel_size - 1) * dilation + 1
        self.padding = padding_total(kernel_size, stride, dilation)
        self.weight = mx.zeros((out_channels, kernel_size, in_channels // groups))
        if bias:
            self.bias = mx.zeros((out_channels,))
        self.reset()

    def _conv(self, x: mx.array) -> mx.array:
        y = mx.conv1d(x, self.weight, stride=self.stride, dilation=self.dilation, groups=self.groups)
        return y + self.bias if "bias" in self else y

    def __call__(self, x: mx.array) -> mx.array:
        """Whole signal `[B, T, in]` -> `[B, ceil(T / stride), out]`."""
        right = extra_padding_for_conv1d(x.shape[1], self.effective_kernel, self.stride, self.padding)
        return self._conv(pad1d(x, self.padding, right, self.pad_mode))

    def reset(self, batch_size: int = 1) -> None:
        """Forget the stream. The buffer starts as the left padding the reference prepends to the first chunk."""
        self._previous = mx.zeros((batch_size, self.padding, self.in_channels))
        if self.pad_mode == "replicate":
            # The replicated value is the stream's first sample, unknown until the first chunk arrives.
            # One flag per row: rows of a batch are streams that may start at different times.
            self._first = mx.ones((batch_size,), dtype=mx.bool_)

    def step(self, x: mx.array) -> mx.array:
        """One chunk `[B, T, in]` -> every output frame whose window is now complete."""
        if x.shape[1] == 0:
            # The reference pads only on the first non-empty chunk, so an empty one must not consume it.
            return mx.zeros((x.shape[0], 0, self.out_channels))
        if self.effective_kernel == 1 and self.stride == 1:
            # Nothing to carry (a 1x1 conv): the chunk as it is, without a concatenation (a copy
            # kernel per piece on a GPU).
            return self._conv(x)
        previous = self._previous
        if self.pad_mode == "replicate":
            previous = mx.where(self._first[:, None, None], x[:, :1], previous)
            self._first = mx.zeros_like(self._first)
        x = mx.concatenate([previous, x], axis=1)
        n_frames = max(0, (x.shape[1] - self.effective_kernel) // self.stride + 1)
        self._previous = x[:, n_frames * self.stride :]
        if n_frames == 0:
            return mx.zeros((x.shape[0], 0, self.out_channels))
        return self._conv(x[:, : (n_frames - 1) * self.stride + self.effective_kernel])


class StreamingConvTranspose1d(nn.Module):
    """Causal ConvTranspose1d (moshi `StreamingConvTranspose1d`). Weight layout `[out, k, in/groups]`.

    `groups = channels` gives the depthwise transposed conv of Mimi's `upsample`.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int,
        groups: int = 1,
        bias: bool = True,
    ) -> None:
        super().__init__()
        if kernel_size < stride:
            raise ValueError(f"kernel_size {kernel_size} < stride {stride}: the overlap-add tail would be negative")
        self.out_channels = out_channels
        self.stride = stride
        self.groups = groups
        self.tail = kernel_size - stride
        self.weight = mx.zeros((out_channels, kernel_size, in_channels // groups))
        if bias:
            self.bias = mx.zeros((out_channels,))
        self.reset()

    def _add_bias(self, y: mx.array) -> mx.array:
        return y + self.bias if "bias" in self else y

    def __call__(self, x: mx.array) -> mx.array:
        """Whole signal `[B, T, in]` -> `[B, T * stride, out]` (causal: the whole overhang is trimmed on the right)."""
        y = mx.conv_transpose1d(x, self.weight, stride=self.stride, groups=self.groups)
        return self._add_bias(y[:, : y.shape[1] - self.tail])

    def reset(self, batch_size: int = 1) -> None:
        """Forget the stream: the carried tail becomes silence."""
        # Kept without bias, so adding it is plain addition; the reference keeps it with bias and
        # subtracts the bias once when adding, which is the same sum.
        self._partial = mx.zeros((batch_size, self.tail, self.out_channels))

    def step(self, x: mx.array) -> mx.array:
        """One chunk `[B, T, in]` -> `[B, T * stride, out]`; the last `kernel - stride` samples wait for
        the next chunk."""
        if x.shape[1] == 0:
            return mx.zeros((x.shape[0], 0, self.out_channels))
        y = mx.conv_transpose1d(x, self.weight, stride=self.stride, groups=self.groups)
        ready = y.shape[1] - self.tail
        if ready == self.tail:
            # The whole output overlaps the carried tail (one step through a kernel of twice the
            # stride, as Mimi's upsample runs): one add, no concatenation (a copy per piece on a GPU).
            out = y[:, :ready] + self._partial
        else:
            y = mx.concatenate([y[:, : self.tail] + self._partial, y[:, self.tail :]], axis=1)
            out = y[:, :ready]
        self._partial = y[:, ready:]
        return self._add_bias(out)
