"""`Conversation`: the controller behind `ppchat talk`, the TUI and the headless mode.

It owns one loaded model and one `EventBus`, and for each conversation wires together
the model pipeline (conditioned on a voice and a role prompt), an audio endpoint, the
step thread, the session recorder and the monitor socket. The TUI drives it through
`start` / `stop` / `restart` and watches the bus; so does anything else that subscribes.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ppchat import paths
from ppchat.constants import DEPFORMER_STEPS, MAX_BACKLOG_FRAMES, REPO_ID
from ppchat.engine.events import EventBus, NoticeEvent, ProgressEvent
from ppchat.engine.pipeline import SILENCE_FRAMES, ModelPipeline, PrefillReport, Progress, role_prompt_tokens
from ppchat.engine.prompts import PRESETS, named_prompt, resolve_prompt
from ppchat.engine.runtime import AudioEndpoint, DuplexRuntime, FrameProcessor, RuntimePolicy
from ppchat.engine.voice_fit import long_voice_notice
from ppchat.errors import ConditioningCancelled, PPChatError
from ppchat.models.loader import LoadedModel, load_model, resolve_source
from ppchat.models.voices import DEFAULT_VOICE, PRESET_VOICES, VoicePrompt, available_voices, load_voice
from ppchat.sampling import Sampling
from ppchat.sessions.recorder import Recorder, start_recording
from ppchat.sessions.schema import SessionMeta
from ppchat.sessions.store import default_sessions_root

NO_VOICE = "none"


def pick_model_source(requested: str | None) -> str:
    """`--model` as given, or "auto": the real model if it is already downloaded, else the demo."""
    if requested and requested != "auto":
        return requested
    try:
        resolve_source(REPO_ID, paths.cache_dir(), allow_download=False)
        return REPO_ID
    except PPChatError:
        return "demo"


@dataclass
class TalkOptions:
    model: str = "auto"
    quantize: int | None = None
    voice: str | None = None
    prompt: str | None = None
    sampling: Sampling = field(default_factory=Sampling)
    input_device: str | int | None = None
    output_device: str | int | None = None
    samplerate: int | None = None
    half_duplex: bool = False
    aec: bool = True  # echo cancellation on the sound card (not on network endpoints: the client does its own)
    max_backlog_frames: int = MAX_BACKLOG_FRAMES
    sessions_dir: Path | None = None
    record: bool = True
    monitor: bool = True
    monitor_socket: Path | None = None
    session_kind: str = "talk"  # recorded in session.json: "talk" or "respond"
    captions: bool = False
    asr_model: str | None = None  # for the captions; None = the default Qwen3-ASR


class Conversation:
    """Loads the model once; runs one conversation at a time over a fresh audio endpoint."""

    def __init__(
        self,
        options: TalkOptions,
        model: LoadedModel | None = None,
        audio_factory: Callable[[], AudioEndpoint] | None = None,
    ):
        self.options = options
        self.prompt_name, self.prompt_text = resolve_prompt(options.prompt)  # a bad prompt fails before the model loads
        self.bus = EventBus()
        self._load(model)
        self._audio_factory = audio_factory or self._open_device
        self._lock = threading.RLock()  # one start/stop/restart at a time
        # Renewed by abandon_start (stop, restart): a start that read an older value gives up its
        # conditioning at the next chunk, instead of holding `_lock` for the whole prefill (a long
        # voice file conditions for tens of seconds, and quitting must not wait for it). A counter's
        # next(), not `+= 1`: two threads asking at once must not make one value.
        self._request_ids = itertools.count(1)
        self._requests = 0
        self._ticket = 0  # the value the start in progress read
        # Guards the fields `info` reports, which other threads read while start/stop change them.
        self._state_lock = threading.Lock()
        self.runtime: DuplexRuntime | None = None
        self.recorder: Recorder | None = None
        self.last_session_dir: Path | None = None  # the most recent finished recording
        self.prefill: PrefillReport | None = None
        self.sampling = options.sampling  # of the current (or last) conversation
        self.voice_name = options.voice or self._default_voice()
        self._devices: dict[str, Any] = {}
        self._custom_voices: list[str] = []
        self.started_at: float | None = None
        self.monitor = None
        if options.monitor:
            self._start_monitor()
        self._aec_on = True  # what `a` chose; each conversation's runtime starts with it
        self.captions = None  # LiveCaptions, from the first start on when options.captions
        self._captions_tried = False

    # ------------------------------------------------------------------------------ describe

    @property
    def info(self) -> dict[str, Any]:
        """A consistent snapshot; safe from any thread (the monitor socket reads it on its own)."""
        model = self._model_info()
        with self._state_lock:
            recorder, runtime, devices = self.recorder, self.runtime, dict(self._devices)
            voice, prompt, prompt_name, started_at = self.voice_name, self.prompt_text, self.prompt_name, self.started_at
            captions = self.captions
        return {
            **model,
            "input_device": devices.get("input", ""),
            "output_device": devices.get("output", ""),
            "voice": voice,
            "prompt": prompt,
            "prompt_name": prompt_name,
            "session_dir": str(recorder.session_dir) if recorder else None,
            "running": runtime is not None and runtime.running,
            "started_at": started_at,
            "captions": captions.state if captions is not None else "off",
            # The whole session's step statistics (the monitor shows them; they are the
            # recorder's, so none when not recording).
            "session_stats": asdict(recorder.stats) if recorder else None,
            "aec": self.aec,
            # The mic switches, for `ppchat monitor`'s badges (the console keeps its own).
            "muted": runtime is not None and runtime.muted,
            "half_duplex": self.options.half_duplex,
        }

    @property
    def running(self) -> bool:
        runtime = self.runtime  # read once: stop() may clear it on another thread
        return runtime is not None and runtime.running

    def for_client(self) -> Conversation:
        """The conversation that a new network client is to run (`ppchat serve`): this one, which
        runs one at a time (`ppchat.served.ServedBatch` hands out one per client)."""
        return self

    def voices(self) -> list[str]:
        found = available_voices(self.model.voices_dir)
        names = found or ([NO_VOICE] if self.model.info.is_demo else list(PRESET_VOICES))
        return names + [v for v in self._custom_voices if v not in names]

    def prompts(self) -> dict[str, str]:
        return dict(PRESETS)

    def check_voice(self, voice: str) -> None:
        """Raise a PPChatError that names the problem and the fix if `voice` cannot be used,
        with the checks `--voice` makes (the console's voice picker asks before restarting)."""
        if voice != NO_VOICE:
            load_voice(voice, self.model.voices_dir, expected_dim=self.model.lm.config.dim)

    # ------------------------------------------------------------------------------- control

    def start(
        self,
        voice: str | None = None,
        prompt: str | None = None,
        *,
        audio: AudioEndpoint | None = None,
        sampling: Sampling | None = None,
        client: str | None = None,
    ) -> PrefillReport:
        """Condition the model, open the audio device and go live. Blocks for the prefill.

        `voice`: a voice name or audio file path; `prompt`: a preset name or the prompt text.
        None keeps the current choice. `audio`: an endpoint to use instead of the sound card
        (a network connection); `sampling`: settings for this conversation only; `client`: the
        network client's address, recorded in a session of kind "served".
        """
        ticket = self._requests  # before waiting for the lock: a stop asked meanwhile cancels this start
        with self._lock:
            if self.running:
                raise PPChatError("a conversation is already running; stop it first")
            self._ticket = ticket
            named = named_prompt(prompt) if prompt is not None else None
            with self._state_lock:
                if voice is not None:
                    self.voice_name = voice
                if named is not None:
                    self.prompt_name, self.prompt_text = named
            self.sampling = sampling or self.options.sampling
            try:
                self._give_up_if_abandoned("before it began")
                processor = self._condition(self.sampling)
                self._give_up_if_abandoned("as it ended")
            except ConditioningCancelled as exc:
                # Nothing was opened or recorded yet; the pipeline refuses to step until a start ends.
                self._notice("info", str(exc))
                raise
            if audio is None:
                audio = self._audio_factory()
            canceller = self._echo_canceller(audio, processor.sample_rate)
            recorder = self._start_recorder(client, mic_track=canceller is not None) if self.options.record else None
            runtime = self._new_runtime(
                processor,
                audio,
                RuntimePolicy(max_backlog_frames=self.options.max_backlog_frames, half_duplex_gate=self.options.half_duplex),
                canceller,
            )
            runtime.aec_enabled = self._aec_on
            with self._state_lock:
                self.recorder, self.runtime, self.started_at = recorder, runtime, time.time()
            runtime.start()
            self._notice("info", f"live (prefill {self.prefill.seconds:.2f} s, {self.prefill.calls} calls)")
            if self.options.captions and not self._captions_tried:
                self._start_captions()
            return self.prefill

    def abandon_start(self) -> None:
        """Make a `start` that is conditioning (or waiting to) give up at its next chunk of voice
        encoding or prefill, raising `ConditioningCancelled`. Never blocks: a signal handler may
        call it on the thread that is conditioning."""
        self._requests = next(self._request_ids)

    def stop(self, stop_reason: str | None = None) -> None:
        """Stop audio and finish the recording. Safe to call at any time, any number of times.
        A start still conditioning is abandoned first (`abandon_start`), so this returns within
        one chunk of it rather than after the whole prefill.

        `stop_reason` marks the recording "stopped" (cut short, e.g. by a signal) instead of "complete"."""
        self.abandon_start()
        with self._lock:
            with self._state_lock:
                runtime, self.runtime = self.runtime, None
            if runtime is not None:
                runtime.stop()
            with self._state_lock:
                recorder, self.recorder = self.recorder, None
            if recorder is not None:
                recorder.close(stop_reason=stop_reason)
                if recorder.discarded:
                    self._notice("info", "nothing was recorded (the client left before the first step): no session kept")
                else:
                    self._notice("info", f"saved {recorder.session_dir}")
                    self.last_session_dir = recorder.session_dir

    def restart(self, voice: str | None = None, prompt: str | None = None) -> PrefillReport:
        self.abandon_start()  # a start still conditioning gives way, rather than this queueing behind it
        with self._lock:
            self.stop()
            return self.start(voice, prompt)

    def set_mute(self, on: bool) -> None:
        if self.runtime:
            self.runtime.muted = on

    @property
    def aec(self) -> str:
        """'on' / 'off' (the model hears the cancelled / raw microphone), or 'unavailable'
        (no canceller: `--aec off`, a network endpoint, or the library did not load)."""
        runtime = self.runtime
        if not self.options.aec or (runtime is not None and not runtime.cancels_echo):
            return "unavailable"
        return "on" if self._aec_on else "off"

    def set_aec(self, on: bool) -> None:
        """Let the model hear the echo-cancelled (True) or the raw microphone."""
        self._aec_on = on
        if self.runtime:
            self.runtime.aec_enabled = on

    def set_half_duplex(self, on: bool) -> None:
        self.options.half_duplex = on
        if self.runtime:
            self.runtime.policy.half_duplex_gate = on

    def mark(self) -> None:
        if self.runtime:
            self.runtime.mark()

    def close(self) -> None:
        self.stop()
        if self.captions is not None:
            self.captions.close()
            self.captions = None
        if self.monitor is not None:
            self.monitor.close()
            self.monitor = None

    def __enter__(self) -> Conversation:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # ------------------------------------------------- the model side (a subclass may put it elsewhere)

    def _load(self, model: LoadedModel | None) -> None:
        self.model = model or self._load_model()
        self.pipeline = ModelPipeline(self.model, self.options.sampling)
        self._warm_up()

    def _load_model(self) -> LoadedModel:
        return load_model(pick_model_source(self.options.model), quantize=self.options.quantize, depformer_steps=DEPFORMER_STEPS)

    def _new_runtime(self, processor: FrameProcessor, audio: AudioEndpoint, policy: RuntimePolicy,
                     canceller) -> DuplexRuntime:
        """What steps `processor` against `audio` (not yet started)."""
        return DuplexRuntime(processor, audio, self.bus, policy, canceller=canceller)

    def _default_voice(self) -> str:
        return DEFAULT_VOICE if self.model.voices_dir else NO_VOICE

    def _model_info(self) -> dict[str, Any]:
        """What `info` and the recording say about the model."""
        m = self.model.info
        return {"model": "demo (random weights)" if m.is_demo else m.source, "model_id": "demo" if m.is_demo else m.source,
                "is_demo": m.is_demo, "quantization": m.quantization}

    def _condition(self, sampling: Sampling) -> FrameProcessor:
        """Make the model ready for a new conversation with the current voice and prompt (sets
        `prefill`); returns what the step thread steps."""
        voice_prompt = self._load_voice(self.voice_name)
        self.pipeline.set_sampling(sampling)
        self._notice("info", f"conditioning: voice {self.voice_name}, prompt '{self.prompt_name}'")
        self.prefill = self.pipeline.start(voice_prompt, self.prompt_text, progress=self._progress_publisher())
        return self.pipeline

    def _give_up_if_abandoned(self, where: str) -> None:
        if self._requests != self._ticket:
            # Short: the console shows it on one line beside "not recording" at 80 columns.
            raise ConditioningCancelled(f"prefill stopped {where}: nothing recorded")

    def _progress_publisher(self, interval_s: float = 0.1) -> Progress:
        """A `Progress` callback that publishes `ProgressEvent`s: a task's first and last report and
        at most one every `interval_s` between (a voice file reports every few frames). Called
        between chunks of the work, it is also where an abandoned start gives up."""
        last: dict[str, float] = {}

        def publish(task: str, done: int, total: int) -> None:
            self._give_up_if_abandoned(f"at {task} {done}/{total}")
            now = time.time()
            if task in last and done < total and now - last[task] < interval_s:
                return
            last[task] = now
            self.bus.publish(ProgressEvent(task, done, total, now))

        return publish

    def _session_meta(self, client: str | None) -> SessionMeta:
        model = self._model_info()
        return SessionMeta(
            kind=self.options.session_kind if client is None else "served",
            client=client,
            model_id=model["model_id"],
            quantization=model["quantization"],
            voice=self.voice_name,
            role_prompt=self.prompt_text,
            sampling=self.sampling.to_json(),
            devices=dict(self._devices),
        )

    # ------------------------------------------------------------------------------ helpers

    def _warm_up(self, frames: int = 4) -> None:
        """Run a few silent frames first, as the reference does, so that one-off costs
        (kernel compilation, allocations) are paid before the microphone is open."""
        import numpy as np

        self.pipeline.start(None, PRESETS["casual"])
        silence = np.zeros(self.pipeline.frame_size, dtype=np.float32)
        for _ in range(frames):
            self.pipeline.process(silence)

    def _load_voice(self, name: str) -> VoicePrompt | None:
        if name == NO_VOICE:
            return None
        voice = load_voice(name, self.model.voices_dir, expected_dim=self.model.lm.config.dim)
        if Path(name).expanduser().is_file() and name not in self._custom_voices:
            self._custom_voices.append(name)
        text_tokens = len(role_prompt_tokens(self.model, self.prompt_text))
        warning = long_voice_notice(name, voice.n_frames, self.model.lm.config.context, text_tokens, SILENCE_FRAMES)
        if warning is not None:
            self._notice("warning", warning)
        return voice

    def _open_device(self) -> AudioEndpoint:
        from ppchat.engine.audio_io import DuplexAudio

        audio = DuplexAudio(self.options.input_device, self.options.output_device, samplerate=self.options.samplerate,
                            echo_reference=self.options.aec)
        with self._state_lock:
            self._devices = {"input": audio.input_device.name, "output": audio.output_device.name}
        return audio

    def _echo_canceller(self, audio: AudioEndpoint, sample_rate: int):
        """A fresh canceller for this conversation's endpoint (a new device or a restart starts
        from nothing), or None: AEC off, an endpoint with no far end, or the library missing."""
        from ppchat.engine.aec import AecUnavailable, EchoCanceller

        if not self.options.aec or audio.buffers.echo is None:
            return None
        try:
            return EchoCanceller(sample_rate)
        except AecUnavailable as exc:
            self._notice("warning", str(exc))
            return None

    def _start_recorder(self, client: str | None, mic_track: bool = False) -> Recorder | None:
        meta = self._session_meta(client)
        root = self.options.sessions_dir or default_sessions_root()
        try:
            # A network client that leaves before its first step (during the prompts, or at once after
            # the handshake) had no conversation: no session is kept for it. One at the console is.
            return start_recording(self.bus, Path(root), meta, mic_track=mic_track, keep_empty=client is None)
        except PPChatError as exc:
            # The conversation matters more than the recording: go on, and say so loudly.
            self._notice("error", f"not recording: {exc}")
            return None

    def _start_monitor(self) -> None:
        from ppchat.engine.monitor_socket import MonitorServer

        try:
            self.monitor = MonitorServer(self.bus, info=lambda: self.info, path=self.options.monitor_socket).start()
        except (OSError, PPChatError) as exc:
            self.monitor = None
            self._notice("warning", f"monitor socket unavailable: {exc}")

    def _start_captions(self) -> None:
        """One caption process for all conversations of this run; started with the first, after
        the console has subscribed, so that a missing model is a notice it shows."""
        from ppchat.asr.captions import CaptionSettings, LiveCaptions
        from ppchat.asr.model_files import resolve_asr_model

        self._captions_tried = True
        try:
            folder = resolve_asr_model(self.options.asr_model)
        except PPChatError as exc:
            self._notice("warning", f"captions are off: {exc}")
            return
        settings = CaptionSettings(folder, log_path=paths.state_dir() / "captions.log")  # beside ppchat.log
        self.captions = LiveCaptions(self.bus, settings).start()

    def _notice(self, level: str, message: str) -> None:
        self.bus.publish(NoticeEvent(level=level, message=message, wall_time=time.time()))
