"""SEANet encoder and decoder as used by Mimi (moshi `modules/seanet.py`), causal, without LSTM.

Layer lists mirror the reference's `model` Sequential index for index (activations included), so
parameter paths such as `encoder.model.3` name the same layer as the reference checkpoint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn

from ppchat.models.conv import StreamingConv1d, StreamingConvTranspose1d


@dataclass(frozen=True)
class SEANetConfig:
    """The `seanet` kwargs of the reference that change the network (shared by encoder and decoder)."""

    channels: int
    dimension: int
    n_filters: int
    ratios: tuple[int, ...]
    kernel_size: int
    residual_kernel_size: int
    last_kernel_size: int
    n_residual_layers: int
    dilation_base: int
    compress: int
    pad_mode: str

    @property
    def hop_length(self) -> int:
        """Audio samples per latent step."""
        return math.prod(self.ratios)


class ELU(nn.Module):
    """ELU(alpha=1), stateless, with the same `__call__`/`step`/`reset` surface as the conv layers."""

    def __call__(self, x: mx.array) -> mx.array:
        # expm1 like torch, and clamped so the unused branch never overflows.
        return mx.where(x > 0, x, mx.expm1(mx.minimum(x, 0)))

    def step(self, x: mx.array) -> mx.array:
        return self(x)

    def reset(self, batch_size: int = 1) -> None:
        pass


class SEANetResnetBlock(nn.Module):
    """ELU -> conv(k, dim -> dim/compress) -> ELU -> conv(1, -> dim), plus an identity shortcut (`true_skip`)."""

    def __init__(self, dim: int, kernel_size: int, dilation: int, compress: int, pad_mode: str) -> None:
        super().__init__()
        hidden = dim // compress
        self.block = [
            ELU(),
            StreamingConv1d(dim, hidden, kernel_size, dilation=dilation, pad_mode=pad_mode),
            ELU(),
            StreamingConv1d(hidden, dim, 1, pad_mode=pad_mode),
        ]

    def __call__(self, x: mx.array) -> mx.array:
        y = x
        for layer in self.block:
            y = layer(y)
        return x + y

    def step(self, x: mx.array) -> mx.array:
        # Stride-1 convs with their left padding pre-buffered emit exactly as many samples as they
        # receive, so both branches have equal length and the reference's StreamingAdd is a plain add.
        y = x
        for layer in self.block:
            y = layer.step(y)
        return x + y

    def reset(self, batch_size: int = 1) -> None:
        for layer in self.block:
            layer.reset(batch_size)


class _SEANetStack(nn.Module):
    """Runs `self.model` in order, whole-signal or streaming."""

    model: list[nn.Module]

    def __call__(self, x: mx.array) -> mx.array:
        """Whole signal, NLC."""
        for layer in self.model:
            x = layer(x)
        return x

    def step(self, x: mx.array) -> mx.array:
        """One streaming chunk, NLC."""
        for layer in self.model:
            x = layer.step(x)
        return x

    def reset(self, batch_size: int = 1) -> None:
        """Clear every conv buffer and transposed-conv tail."""
        for layer in self.model:
            layer.reset(batch_size)


def _resblocks(cfg: SEANetConfig, dim: int) -> list[nn.Module]:
    return [
        SEANetResnetBlock(dim, cfg.residual_kernel_size, cfg.dilation_base**j, cfg.compress, cfg.pad_mode)
        for j in range(cfg.n_residual_layers)
    ]


class SEANetEncoder(_SEANetStack):
    """Audio `[B, T, channels]` -> latent `[B, T / hop, dimension]`; downsamples by the ratios in reverse order."""

    def __init__(self, cfg: SEANetConfig) -> None:
        super().__init__()
        nf, pad = cfg.n_filters, cfg.pad_mode
        mult = 1
        layers: list[nn.Module] = [StreamingConv1d(cfg.channels, nf, cfg.kernel_size, pad_mode=pad)]
        for ratio in reversed(cfg.ratios):
            layers += _resblocks(cfg, mult * nf)
            layers += [ELU(), StreamingConv1d(mult * nf, 2 * mult * nf, 2 * ratio, stride=ratio, pad_mode=pad)]
            mult *= 2
        layers += [ELU(), StreamingConv1d(mult * nf, cfg.dimension, cfg.last_kernel_size, pad_mode=pad)]
        self.model = layers


class SEANetDecoder(_SEANetStack):
    """Latent `[B, F, dimension]` -> audio `[B, F * hop, channels]`; upsamples by the ratios in order."""

    def __init__(self, cfg: SEANetConfig) -> None:
        super().__init__()
        nf, pad = cfg.n_filters, cfg.pad_mode
        mult = 2 ** len(cfg.ratios)
        layers: list[nn.Module] = [StreamingConv1d(cfg.dimension, mult * nf, cfg.kernel_size, pad_mode=pad)]
        for ratio in cfg.ratios:
            layers += [ELU(), StreamingConvTranspose1d(mult * nf, mult * nf // 2, 2 * ratio, stride=ratio)]
            layers += _resblocks(cfg, mult * nf // 2)
            mult //= 2
        layers += [ELU(), StreamingConv1d(nf, cfg.channels, cfg.last_kernel_size, pad_mode=pad)]
        self.model = layers
