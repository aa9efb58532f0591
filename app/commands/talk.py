"""CLI: `talk` (the default command), `respond`, `voices`, `prompts`, `devices`."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ppchat import validate
from ppchat.commands.transcribe import add_asr_model_argument
from ppchat.constants import FRAME_SECONDS, MAX_BACKLOG_FRAMES, REPO_ID
from ppchat.sampling import AUDIO_DEFAULTS, TEXT_DEFAULTS, Sampling, SamplingParams


def _model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", default="auto",
                   help="'auto' (default: the real model if downloaded, else the demo), 'demo', a model "
                        f"directory, or a Hugging Face repo id such as {REPO_ID}")
    g.add_argument("--quantize", choices=("4", "8", "none"), default="none",
                   help="quantise the LM to 4 or 8 bit (converted once, then cached); default: none")
    g.add_argument("--voice", default=None,
                   help="voice preset (NATF0-3, NATM0-3, VARF0-4, VARM0-4) or a path to a WAV to imitate; "
                        "default NATF0 (the demo model has no presets: 'none' or a WAV)")
    g.add_argument("--prompt", default=None,
                   help="role prompt: a preset name (see `ppchat prompts`), @file.txt, or free text; default: assistant")
    s = p.add_argument_group("sampling")
    audio, text = AUDIO_DEFAULTS, TEXT_DEFAULTS
    s.add_argument("--temp", type=validate.number(0), default=audio.temp, help=f"audio temperature (default {audio.temp}; 0 = greedy)")
    s.add_argument("--temp-text", type=validate.number(0), default=text.temp, help=f"text temperature (default {text.temp}; 0 = greedy)")
    s.add_argument("--topk", type=validate.whole(1), default=audio.top_k, help=f"audio top-k (default {audio.top_k})")
    s.add_argument("--topk-text", type=validate.whole(1), default=text.top_k, help=f"text top-k (default {text.top_k})")
    s.add_argument("--seed", type=validate.whole(0, validate.MAX_SEED), default=None, help="random seed for reproducible sampling")
    p.add_argument("--sessions-dir", type=Path, default=None,
                   help="where sessions are recorded (default: the user data dir, see `ppchat sessions`)")
    p.add_argument("--no-record", action="store_true", help="do not record this session")


def _device_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("audio")
    g.add_argument("--input-device", default=None, help="microphone: index or part of its name (see --list-devices)")
    g.add_argument("--output-device", default=None, help="speaker: index or part of its name")
    g.add_argument("--samplerate", type=validate.sample_rate, default=None,
                   help="device sample rate (default: the device's; audio is resampled to 24 kHz)")
    g.add_argument("--list-devices", action="store_true", help="list audio devices and exit")
    g.add_argument("--aec", choices=("on", "off"), default="on",
                   help="echo cancellation (WebRTC AEC3), so the agent does not hear itself from loudspeakers; "
                        "default on ('a' toggles it in the console)")
    g.add_argument("--half-duplex", action="store_true",
                   help="mute the microphone while the agent speaks: the fallback for loudspeakers when echo "
                        "cancellation is not enough")
    g.add_argument("--max-backlog", type=validate.whole(0), default=MAX_BACKLOG_FRAMES, metavar="FRAMES",
                   help="when the model falls behind, drop microphone frames beyond this backlog "
                        f"(default {MAX_BACKLOG_FRAMES} = {MAX_BACKLOG_FRAMES * FRAME_SECONDS * 1000:.0f} ms)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("talk", help="talk to the model (the default command)",
                       description="Talk to PersonaPlex live through your microphone and speakers, in the console "
                                   "(or headless with --no-tui). Every session is recorded unless --no-record.")
    _model_args(p)
    _device_args(p)
    p.add_argument("--no-tui", action="store_true", help="no console: print a status line once a second")
    p.add_argument("--duration", type=validate.number(0, above=True), default=None, metavar="S",
                   help="stop (and save) after S seconds of conversation, counted from the first live frame")
    p.add_argument("--no-monitor", action="store_true", help="do not open the `ppchat monitor` socket")
    g = p.add_argument_group("remote model")
    g.add_argument("--server", default=None, metavar="ws[s]://HOST:PORT",
                   help="talk to the model on a PersonaPlex server (`ppchat serve`, or NVIDIA's) instead of running it "
                        "here: --voice, --prompt and the sampling options are sent to it, --model and --quantize "
                        "are the server's business")
    g.add_argument("--token", default=None, help="with --server: the server's --token")
    p.add_argument("--captions", action="store_true",
                   help="live captions of what you say (Qwen3-ASR in a separate, lower-priority process; "
                        "needs `ppchat download --asr`)")
    add_asr_model_argument(p)
    p.set_defaults(func=cmd_talk)

    p = sub.add_parser("respond", help="offline: run a WAV file through the model, write the agent's WAV",
                       description="Offline WAV-to-WAV through the same streaming engine, as the reference offline "
                                   "tool does: the output has the same length as the input. Any format soundfile "
                                   "reads is accepted (any rate or channel count; channel 0 is used).")
    p.add_argument("--input", "-i", required=True, type=Path, help="input audio (the user side)")
    p.add_argument("--output", "-o", required=True, type=Path, help="output WAV (the agent, 24 kHz mono)")
    p.add_argument("--text-json", type=Path, default=None,
                   help="write the text tokens and per-step timings as JSON")
    p.add_argument("--stream", action="store_true", help="print the agent's text as it is generated")
    _model_args(p)
    p.set_defaults(func=cmd_respond)

    p = sub.add_parser("voices", help="list voices")
    p.add_argument("--model", default="auto", help="as for talk")
    p.set_defaults(func=cmd_voices)
    p = sub.add_parser("prompts", help="list role-prompt presets")
    p.set_defaults(func=cmd_prompts)
    p = sub.add_parser("devices", help="list audio devices")
    p.set_defaults(func=cmd_devices)


def _sampling(args):
    return Sampling(text=SamplingParams(args.temp_text, args.topk_text), audio=SamplingParams(args.temp, args.topk), seed=args.seed)


def _options(args, **extra):
    from ppchat.conversation import TalkOptions

    return TalkOptions(
        model=args.model,
        quantize=None if args.quantize == "none" else int(args.quantize),
        voice=args.voice,
        prompt=args.prompt,
        sampling=_sampling(args),
        sessions_dir=args.sessions_dir,
        record=not args.no_record,
        **extra,
    )


def _banner(conv) -> None:
    if getattr(conv, "model", None) is not None and conv.model.info.is_demo:
        print("ppchat: running the built-in DEMO model (tiny, random weights: it babbles). "
              f"For the real PersonaPlex: accept the licence on huggingface.co/{REPO_ID}, "
              "export HF_TOKEN, run `ppchat download`.", file=sys.stderr)


def cmd_devices(args) -> int:
    from ppchat.engine.audio_io import list_devices, no_device_hint
    from ppchat.errors import AudioError

    devices = list_devices()
    if not devices:
        raise AudioError(f"no audio devices found. {no_device_hint()}")
    for d in devices:
        print(d.describe())
    return 0


def cmd_prompts(args) -> int:
    from ppchat.engine.prompts import DEFAULT_PROMPT, PRESETS

    for name, text in PRESETS.items():
        print(f"{name}{' (default)' if name == DEFAULT_PROMPT else ''}\n    {text}")
    return 0


def cmd_voices(args) -> int:
    from ppchat import paths
    from ppchat.conversation import pick_model_source
    from ppchat.errors import CheckpointError
    from ppchat.models.loader import resolve_source, resolve_voices_dir
    from ppchat.models.manifest import VOICES_ARCHIVE
    from ppchat.models.voices import PRESET_VOICES, available_voices

    source = pick_model_source(args.model)
    ckpt = resolve_source(source, paths.cache_dir(), allow_download=False)
    ckpt.validate_weights()  # headers only: a broken model folder is an error here, not at `talk`
    found = available_voices(resolve_voices_dir(ckpt, paths.cache_dir()))
    if found:
        print("\n".join(found))
    elif ckpt.is_demo:
        print("The demo model has no preset voices: use --voice none (default) or --voice PATH.wav.\n"
              f"The real model's presets ({', '.join(PRESET_VOICES)}) come with `ppchat download`.")
    else:
        raise CheckpointError(
            f"{ckpt.root} has no preset voices (no voices/ folder, no {VOICES_ARCHIVE}); re-run `ppchat download` "
            "for the presets, or use --voice PATH.wav"
        )
    print("Any audio file works as a custom voice: --voice path/to/voice.wav (about 10 s of clean speech).")
    return 0


def cmd_talk(args) -> int:
    if args.list_devices:
        return cmd_devices(args)
    from ppchat.conversation import Conversation

    options = _options(
        args,
        input_device=_int_or_str(args.input_device),
        output_device=_int_or_str(args.output_device),
        samplerate=args.samplerate,
        half_duplex=args.half_duplex,
        aec=args.aec == "on",
        max_backlog_frames=args.max_backlog,
        monitor=not args.no_monitor,
        captions=args.captions,
        asr_model=args.asr_model,
    )
    if args.server is not None:
        from ppchat.net.remote import RemoteConversation

        conv = RemoteConversation(args.server, options, token=args.token)
    else:
        conv = Conversation(options)
    _banner(conv)
    try:
        if args.no_tui:
            return _run_headless(conv, args.duration)
        from ppchat.tui.app import run_app

        return run_app(conv, sessions_root=args.sessions_dir, duration=args.duration)
    finally:
        conv.close()


def _int_or_str(value):
    if value is None:
        return None
    return int(value) if str(value).isdigit() else value


def _run_headless(conv, duration: float | None) -> int:
    """One status line a second until the conversation ends, `duration` seconds of it
    have been heard, Ctrl-C, SIGTERM/SIGHUP, or stdout is gone; the session is saved.
    What C libraries print meanwhile (PortAudio's "Expression '…' failed in …" lines when a
    stream hiccups at start-up) goes to the log, as in the console, not between the lines."""
    from ppchat.tui.stderr_guard import StderrToLog

    with StderrToLog():
        return _headless_lines(conv, duration)


def _headless_lines(conv, duration: float | None) -> int:
    import signal

    from ppchat.asr.captions import CaptionEvent
    from ppchat.engine.events import NoticeEvent, StepEvent
    from ppchat.errors import ConditioningCancelled
    from ppchat.start_lines import StartLines
    from ppchat.tui.status_line import StatusLine

    stop_reason: list[str] = []
    signalled: list[int] = []

    def on_signal(signum, frame) -> None:
        # A flag, not an exception: the loop ends within one wait and stops normally, and a start
        # still conditioning (a long voice file) gives up at its next chunk.
        signalled.append(signum)
        stop_reason.append(signal.Signals(signum).name)
        conv.abandon_start()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    sub = conv.bus.subscribe(maxlen=1000, name="headless")
    status = StatusLine()
    started = False
    try:
        with StartLines(sub) as starting:  # conditioning on a long voice file takes a while: say how far
            try:
                conv.start()
                started = True
            except ConditioningCancelled:
                pass  # a signal: its notice says so, and below the exit status
        if started and conv.monitor is not None:
            print(f"monitor: ppchat monitor --socket {conv.monitor.path}", file=sys.stderr)
        last_print, printed = 0.0, ()  # printed: the step of the last line (None: "waiting")
        pending = starting.kept
        while conv.running and not stop_reason:
            ev = pending.pop(0) if pending else sub.get(timeout=0.2)
            if isinstance(ev, StepEvent):
                status.add(ev)
                if duration is not None and ev.audio_time + FRAME_SECONDS >= duration - 1e-6:
                    stop_reason.append("duration")
            elif isinstance(ev, NoticeEvent):
                print(f"[{ev.level}] {ev.message}", file=sys.stderr, flush=True)
            elif isinstance(ev, CaptionEvent):
                _print_caption(ev)
            for line in status.finished_turns():
                print(line, flush=True)
            step = status.last.step if status.last is not None else None
            if time.monotonic() - last_print >= 1.0 and step != printed:  # each line once
                print(status.line(), flush=True)
                last_print, printed = time.monotonic(), step
    except OSError:
        pass  # stdout went away (a closed pipe or terminal): stop and save all the same
    finally:
        error = conv.runtime.error if conv.runtime else None
        conv.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        try:
            for ev in sub.drain():
                if isinstance(ev, NoticeEvent):
                    print(f"[{ev.level}] {ev.message}", file=sys.stderr)
                elif isinstance(ev, StepEvent):
                    status.add(ev)
                elif isinstance(ev, CaptionEvent):
                    _print_caption(ev)
            for line in status.finished_turns(final=True):
                print(line, flush=True)
        except OSError:
            pass
        sub.close()
    if error is not None:
        from ppchat import logfile

        print(f"ppchat: the engine stopped: {error}{logfile.see_log()}", file=sys.stderr)
        return 1
    if signalled:  # as the CLI does for SIGTERM raised elsewhere: 128 + the signal's number
        saved = "session saved" if conv.last_session_dir is not None else "nothing recorded"
        print(f"\n{stop_reason[0].lower()}: {saved}", file=sys.stderr)
        return 128 + signalled[0]
    return 0


def _print_caption(ev) -> None:
    """A final live caption (--captions) as the agent's turns are printed: `user  mm:ss.t  words`."""
    import textwrap

    from ppchat.engine.transcript import format_clock
    from ppchat.tui.status_line import MAX_WIDTH

    if ev.kind == "final" and ev.text:
        head = f"user  {format_clock(ev.start)}  "
        print("\n".join(textwrap.wrap(ev.text, MAX_WIDTH, initial_indent=head, subsequent_indent=" " * len(head))), flush=True)


def cmd_respond(args) -> int:
    from ppchat.respond import respond

    return respond(
        args.input,
        args.output,
        _options(args, monitor=False),
        text_json=args.text_json,
        stream=args.stream,
    )
