"""`TokenRing`: one conversation's token grid around the current call (spec §5.1), host (numpy) state.

Stream k's token for call-frame c sits in column `c + delay_k`, slot `column % slots`. A call `n`
writes the supplied tokens of call-frame `n`, reads column `n-1` as the transformer's input and column
`n` as its target (tokens already provided there win over sampled ones), and returns call-frame
`n - max_delay` once every stream of it is known.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

UNGENERATED = -2


@dataclass(frozen=True)
class CallColumns:
    """What call `n` reads from the ring (copies): the input column, the target column and which of
    the target's tokens are provided."""

    n: int
    input_slot: int
    target_slot: int
    model_input: np.ndarray
    target: np.ndarray
    provided: np.ndarray


class TokenRing:
    """The [streams, max_delay + 3] token ring, its provided flags and the call counter."""

    def __init__(self, delays: tuple[int, ...], init_tokens: np.ndarray):
        self.delays = np.array(delays)
        self.init_tokens = np.asarray(init_tokens, dtype=np.int64)
        self.slots = int(self.delays.max()) + 3
        self.reset()

    def reset(self) -> None:
        self.tokens = np.full((len(self.delays), self.slots), UNGENERATED, dtype=np.int64)
        self.provided = np.zeros((len(self.delays), self.slots), dtype=bool)
        self.offset = 0

    @property
    def max_delay(self) -> int:
        return int(self.delays.max())

    def write(self, stream: int, token: int) -> None:
        """Provide stream `stream`'s token of the current call-frame."""
        slot = (self.offset + self.delays[stream]) % self.slots
        self.tokens[stream, slot] = token
        self.provided[stream, slot] = True

    def start_call(self) -> bool:
        """Apply the start-of-sequence INIT rule to the current call; False for call 0, which runs
        nothing (the counter moves on to call 1)."""
        starting = self.offset <= self.delays
        self.tokens[starting, self.offset % self.slots] = self.init_tokens[starting]
        self.provided[starting, self.offset % self.slots] = True
        if self.offset == 0:
            # Call 0 runs nothing; the INIT rule above has already overwritten its delay-0 tokens,
            # and call 1 overwrites its delay-1 ones, so everything supplied here is discarded.
            self.offset = 1
            return False
        return True

    def columns(self) -> CallColumns:
        n = self.offset
        input_slot, target_slot = (n - 1) % self.slots, n % self.slots
        return CallColumns(
            n, input_slot, target_slot,
            self.tokens[:, input_slot].copy(), self.tokens[:, target_slot].copy(), self.provided[:, target_slot].copy(),
        )

    def fill_target(self, call: CallColumns, chosen: np.ndarray) -> None:
        """Write sampled tokens [k] (streams 0..k-1) where nothing was provided (provided tokens win)."""
        fill = ~call.provided[: chosen.shape[0]]
        self.tokens[: chosen.shape[0], call.target_slot][fill] = chosen[fill]

    def finish_call(self, call: CallColumns) -> np.ndarray | None:
        """Close call `n`: its input column is free again; returns call-frame n-1's tokens [streams],
        or None while n <= max_delay."""
        self.provided[:, call.input_slot] = False
        self.offset = call.n + 1
        if call.n <= self.max_delay:
            return None
        return self.output_columns(call.n)

    def output_columns(self, n: int) -> np.ndarray:
        """Call-frame n-1 (every stream at its delay) as of call n."""
        columns = (n - self.max_delay + self.delays) % self.slots
        return self.tokens[np.arange(len(self.delays)), columns].copy()

    def copy(self) -> TokenRing:
        other = TokenRing(tuple(self.delays.tolist()), self.init_tokens)
        other.tokens, other.provided, other.offset = self.tokens.copy(), self.provided.copy(), self.offset
        return other
