"""`ppchat respond`: a WAV file through the live engine, offline, like the reference offline tool.

The input plays the user's side through the same `DuplexRuntime` and `ModelPipeline` as a
live conversation (an `ArrayAudio` endpoint that is not real time, so no frame is ever
dropped). The agent's audio is written at 24 kHz with exactly as many samples as the
input has at 24 kHz (spec §5.5), and the session is recorded like any other.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

from ppchat import logfile
from ppchat.atomic import replacing
from ppchat.constants import SAMPLE_RATE
from ppchat.engine.events import NoticeEvent, StepEvent
from ppchat.engine.transcript import reference_text_entry
from ppchat.errors import AudioError, PPChatError, interruption
from ppchat.start_lines import StartLines
from ppchat.validate import check_sample_rate, unreadable_audio


def read_audio(path: Path) -> tuple[np.ndarray, list[str]]:
    """Any file soundfile reads → 24 kHz mono float32 (channel 0, as the reference), plus notes."""
    from ppchat.engine.resample import resample

    try:
        check_sample_rate(sf.info(str(path)).samplerate, path)  # before reading: the rate sizes the job
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError) as exc:
        raise unreadable_audio(path, exc) from None
    notes = []
    if data.shape[0] == 0:
        raise AudioError(f"audio file {path} has no samples")
    if data.shape[1] > 1:
        notes.append(f"{path.name} has {data.shape[1]} channels; using channel 0 (as the reference offline tool)")
    pcm = data[:, 0]
    if rate != SAMPLE_RATE:
        notes.append(f"resampling {path.name} from {rate} Hz to {SAMPLE_RATE} Hz")
        pcm = resample(pcm, rate, SAMPLE_RATE)
    if not np.all(np.isfinite(pcm)):
        raise AudioError(f"audio file {path} contains NaN or infinite samples")
    return np.ascontiguousarray(pcm, dtype=np.float32), notes


def check_writable(target: Path) -> None:
    """Refuse an output that can't be written, before any work: a folder, a missing folder, a
    read-only file, or a folder where no file can be created (tried for real, as root can
    write where the permission bits say no)."""
    path = target.expanduser()
    if path.is_dir():
        raise PPChatError(f"cannot write {target}: it is a folder; give a file name such as {target / 'out.wav'}")
    if not path.parent.is_dir():
        raise PPChatError(f"cannot write {target}: folder {path.parent} does not exist")
    if path.exists() and not os.access(path, os.W_OK):
        raise PPChatError(f"cannot write {target}: the file is read-only")
    probe = path.with_name(f".{path.name}.{os.getpid()}.probe")
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        os.unlink(probe)
    except OSError as exc:
        raise PPChatError(f"cannot write {target}: {exc.strerror or exc} (in {path.parent})") from None


def _write_output(target: Path, write) -> None:
    try:
        with replacing(target.expanduser()) as tmp:
            write(tmp)
    except OSError as exc:
        raise PPChatError(f"cannot write {target}: {exc.strerror or exc}") from None


def respond(input_path: Path, output_path: Path, options, *, text_json: Path | None = None,
            stream: bool = False, model=None, out=sys.stdout) -> int:
    from ppchat.conversation import Conversation
    from ppchat.engine.virtual_io import ArrayAudio

    # Fail before minutes of model work, not after.
    targets = [Path(t) for t in (output_path, text_json) if t is not None]
    if len(targets) == 2 and targets[0].expanduser().resolve() == targets[1].expanduser().resolve():
        raise PPChatError(f"--output and --text-json are the same file {targets[0]}; give two names")
    for target in targets:
        check_writable(target)
    options = dataclasses.replace(options, session_kind="respond")
    pcm, notes = read_audio(Path(input_path))
    for note in notes:
        print(f"ppchat: {note}", file=sys.stderr)
    holder = {}

    def audio_factory():
        holder["audio"] = ArrayAudio(pcm, SAMPLE_RATE, realtime=False)
        return holder["audio"]

    conv = Conversation(options, model=model, audio_factory=audio_factory)
    if conv.model.info.is_demo:
        print("ppchat: using the built-in DEMO model (random weights)", file=sys.stderr)
    sub = conv.bus.subscribe(maxlen=1_000_000, name="respond")
    steps: list[StepEvent] = []
    stop_reason = None
    try:
        # A long voice file conditions for a while: its progress as `talk --no-tui` prints it.
        with StartLines(sub, levels=("warning", "error")) as starting:
            prefill = conv.start()
        steps.extend(_take_events(starting.kept, stream, out))
        while conv.runtime is not None and conv.runtime.join(timeout=0.1) is False:
            steps.extend(_take(sub, stream, out))
        steps.extend(_take(sub, stream, out))
        error = conv.runtime.error if conv.runtime else None
    except BaseException as exc:
        # Ctrl-C or SIGTERM: the session keeps what was done, marked as cut short, and the
        # signal goes on to the CLI (exit 130 / 143). No output file: it would be incomplete.
        stop_reason = interruption(exc)
        if stop_reason is not None:
            print(f"\nppchat: {stop_reason}: {output_path} was not written", file=sys.stderr)
        raise
    finally:
        conv.stop(stop_reason=stop_reason)
        if stop_reason is not None and conv.last_session_dir:
            print(f"ppchat: the session so far is in {conv.last_session_dir}", file=sys.stderr)
        conv.close()
        sub.close()
    if error is not None:
        raise PPChatError(f"the engine stopped: {error}{logfile.see_log()}")
    if stream:
        print(file=out)

    agent = holder["audio"].played()[: len(pcm)]
    if len(agent) < len(pcm):
        agent = np.concatenate([agent, np.zeros(len(pcm) - len(agent), dtype=np.float32)])
    _write_output(Path(output_path), lambda p: sf.write(str(p), agent, SAMPLE_RATE, subtype="PCM_16", format="WAV"))
    if text_json is not None:
        doc = {
            "input": str(input_path),
            "model": conv.info["model"],
            "voice": conv.voice_name,
            "prompt": conv.prompt_text,
            "sampling": options.sampling.to_json(),
            "prefill_seconds": round(prefill.seconds, 4),
            "text": [reference_text_entry(e.text_token, e.text_piece) for e in steps],
            "steps": [{"step": e.step, "t": round(e.audio_time, 3), "token": e.text_token, "piece": e.text_piece,
                       "ms": {k: round(v, 3) for k, v in e.timings_ms.items()}} for e in steps],
        }
        _write_output(Path(text_json), lambda p: p.write_text(json.dumps(doc, ensure_ascii=False, indent=1)))
    session = conv.last_session_dir
    print(f"ppchat: wrote {output_path} ({len(agent) / SAMPLE_RATE:.2f} s, {len(steps)} frames)"
          + (f"; session {session}" if session else ""), file=sys.stderr)
    return 0


def _take(sub, stream: bool, out) -> list[StepEvent]:
    return _take_events(sub.drain(), stream, out)


def _take_events(events, stream: bool, out) -> list[StepEvent]:
    got = []
    for ev in events:
        if isinstance(ev, StepEvent):
            got.append(ev)
            if stream and ev.text_piece:
                print(ev.text_piece, end="", file=out, flush=True)
        elif isinstance(ev, NoticeEvent) and ev.level != "info":
            print(f"[{ev.level}] {ev.message}", file=sys.stderr)
    return got
