"""`TracingLMGen`: an `LMGen` that records what every model call computes, for the parity tests.

Each call that runs the model does the reference's full computation (every depformer step the model
has, logits evaluated) and leaves it in `last_trace`. With `batch_prefill=False` that is every call
but call 0, prompt calls included, as in the reference; with it, prompt calls are queued and batched
as in `LMGen` and leave no trace. Live calls are made synchronously (`step_live` resolves at once).
The live generator has none of this: tracing costs a host synchronisation on every logit.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from ppchat.models.generator import LiveStep, LMGen, check_predictable
from ppchat.models.lm import LM
from ppchat.models.token_ring import CallColumns


@dataclass(frozen=True)
class StepTrace:
    """What one model call computed."""

    model_input: np.ndarray | None
    """Token column [17] fed to the transformer; None when an embedding was replayed."""
    text_logits: np.ndarray
    """float32 [text_card]."""
    dep_text_in: int
    """Text token fed to depformer step 0 (provided text, else the sampled one)."""
    dep_logits: np.ndarray
    """float32 [steps, card]."""
    dep_sampled: np.ndarray
    """[steps] sampled token of each step, before forcing."""


class TracingLMGen(LMGen):
    """`LMGen` with every depformer step, no phase timing, and the last model call in `last_trace`
    (None after a call that ran no model)."""

    def __init__(self, lm: LM, **kwargs) -> None:
        if kwargs.get("depformer_steps") not in (None, lm.depformer.steps):
            raise ValueError("a traced call runs every depformer step the model has")
        self.last_trace: StepTrace | None = None
        # No phase timing: a trace evaluates the whole call at its end anyway.
        super().__init__(lm, **{**kwargs, "phase_timing": False})

    def reset(self) -> None:
        super().reset()
        self.last_trace = None

    def step_live(self, user_codes: mx.array) -> LiveStep:
        self._refuse_open_live_step()
        return self._step_resolved(user_codes)

    def _prepare(self, user: np.ndarray | None, agent: np.ndarray | None, text: int | None) -> bool:
        self.last_trace = None  # every call starts here
        return super()._prepare(user, agent, text)

    def _prefill_call(self, call: CallColumns, source: np.ndarray | mx.array) -> None:
        self._predict(call, source)  # the full computation; every token of the target is provided

    def _predict(self, call: CallColumns, source: np.ndarray | mx.array) -> np.ndarray:
        check_predictable(call.provided, self.depformer_steps)
        arrays = self._launch(call, source, self.depformer_steps)
        mx.eval(arrays.sampled, arrays.text_in, arrays.text_logits, arrays.dep_logits, self.pending_arrays())
        tokens = np.array(arrays.sampled[0], dtype=np.int64)
        self.last_trace = StepTrace(
            model_input=call.model_input if isinstance(source, np.ndarray) else None,
            text_logits=np.array(arrays.text_logits[0]),
            dep_text_in=int(arrays.text_in[0]),
            dep_logits=np.array(arrays.dep_logits[0]),
            dep_sampled=tokens[1:],
        )
        return tokens

