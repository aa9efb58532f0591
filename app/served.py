"""`ppchat serve --max-conversations N`: up to N served conversations in one batched step.

`ServedBatch` loads the model once and runs an `engine.batch_runtime.BatchRuntime` over it; every
network client gets its own `ServedRow` from `for_client`: a `Conversation` with its own event bus,
recording (kind `served`, the client's address) and monitor socket, whose frames the batch's one
step thread steps together with the others'. Voice, role prompt and seed are each conversation's;
temperatures and top-k are the batch's (`ppchat serve`'s sampling options), since one batched
sampling step draws every row.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import replace

from ppchat.conversation import Conversation, TalkOptions
from ppchat.engine.batch import BatchPipeline, Conditioned
from ppchat.engine.batch_runtime import BatchLane, BatchRuntime
from ppchat.engine.runtime import AudioEndpoint, DuplexRuntime, FrameProcessor, RuntimePolicy
from ppchat.errors import PPChatError
from ppchat.models.loader import LoadedModel
from ppchat.paths import runtime_dir
from ppchat.sampling import Sampling


class ServedBatch(Conversation):
    """The model and the batch's step thread; never runs a conversation itself (see `for_client`)."""

    def __init__(self, options: TalkOptions, capacity: int, model: LoadedModel | None = None) -> None:
        if capacity < 1:
            raise PPChatError(f"--max-conversations must be at least 1, got {capacity}")
        self.capacity = capacity
        self._row_monitors = options.monitor
        self._rows = itertools.count(1)
        self.batch: BatchRuntime | None = None
        super().__init__(replace(options, monitor=False), model)  # each row has its own monitor socket

    def _load(self, model: LoadedModel | None) -> None:
        self.model = model or self._load_model()
        sampling = self.options.sampling
        self.batch = BatchRuntime(lambda: BatchPipeline(self.model, self.capacity, sampling), self.model.tokenizer.piece)
        self.batch.start()

    def for_client(self) -> ServedRow:
        n = next(self._rows)
        socket = runtime_dir() / f"monitor-{os.getpid()}-{n}.sock" if self._row_monitors else None
        return ServedRow(replace(self.options, monitor=self._row_monitors, monitor_socket=socket), self)

    def row_sampling(self, seed: int | None) -> Sampling:
        """What a row runs: the batch's temperatures and top-k, its own seed."""
        return replace(self.options.sampling, seed=seed)

    def start(self, *args, **kwargs):
        raise PPChatError("a served batch runs its conversations through for_client()")

    def close(self) -> None:
        super().close()
        if self.batch is not None:
            self.batch.close()


class ServedRow(Conversation):
    """One client's conversation in a `ServedBatch` (a row of its batch while it runs)."""

    def __init__(self, options: TalkOptions, host: ServedBatch) -> None:
        self._host = host
        self._conditioned: Conditioned | None = None
        super().__init__(options, model=host.model)

    def _load(self, model: LoadedModel | None) -> None:
        self.model = model  # the host's; the batch does the stepping

    def _condition(self, sampling: Sampling) -> FrameProcessor:
        voice_prompt = self._load_voice(self.voice_name)
        self._notice("info", f"conditioning: voice {self.voice_name}, prompt '{self.prompt_name}'")
        self._conditioned = self._host.batch.condition(voice_prompt, self.prompt_text, sampling.seed,
                                                       progress=self._progress_publisher())
        self.prefill = self._conditioned.report
        return self._host.batch.pipeline

    def _new_runtime(self, processor: FrameProcessor, audio: AudioEndpoint, policy: RuntimePolicy,
                     canceller) -> DuplexRuntime:
        return BatchLane(self._host.batch, self._conditioned, audio, self.bus, policy)
