"""CLI: `aec-check` — does echo cancellation work on this machine's speaker and microphone?"""

from __future__ import annotations

import argparse
import json

from ppchat import validate


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "aec-check",
        help="play a test signal through the speaker and measure the echo cancellation",
        description="Plays about 10 s of a speech-like test signal through the output device while recording the "
                    "input device, exactly as a conversation does, and reports the loop delay (as the sound card "
                    "reports it and as measured), how loud the echo is and how much of it echo cancellation "
                    "removes (ERLE). Stay quiet while it runs. With headphones there is no echo to measure.",
    )
    p.add_argument("--input-device", default=None, help="microphone: index or part of its name (see `ppchat devices`)")
    p.add_argument("--output-device", default=None, help="speaker: index or part of its name")
    p.add_argument("--samplerate", type=validate.sample_rate, default=None,
                   help="device sample rate (default: the device's)")
    p.add_argument("--seconds", type=validate.number(4, 60), default=10.0, help="how long to play (default 10 s)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.set_defaults(func=cmd_aec_check)


def _device(spec: str | None) -> str | int | None:
    return int(spec) if spec is not None and spec.strip().isdigit() else spec


def cmd_aec_check(args) -> int:
    from ppchat.engine.aec import AecUnavailable, load_backend
    from ppchat.engine.aec_check import run_check
    from ppchat.engine.audio_io import DuplexAudio
    from ppchat.errors import AudioError

    try:
        load_backend()
    except AecUnavailable as exc:
        raise AudioError(str(exc)) from exc
    audio = DuplexAudio(_device(args.input_device), _device(args.output_device), samplerate=args.samplerate,
                        echo_reference=True)
    if not args.json:
        print(f"Playing a test signal on {audio.output_device.name!r} for {args.seconds:g} s, recording "
              f"{audio.input_device.name!r}; please stay quiet.", flush=True)
    check = run_check(audio, args.seconds)
    if args.json:
        print(json.dumps(check.to_json(), indent=2))
        return 0
    def ms(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.0f} ms"

    lines = [
        f"streams        {check.layout} at {check.device_rate} Hz",
        f"loop delay     {ms(check.measured_delay_ms)} measured; {ms(check.reported_delay_ms)} by the sound card's clock",
        f"echo level     {check.echo_db:.0f} dB relative to what was played",
        f"ERLE           {'n/a' if check.erle_db is None else f'{check.erle_db:.1f} dB'} "
        f"(live estimate {'n/a' if check.live_erle_db is None else f'{check.live_erle_db:.1f} dB'})",
        f"glitches       {check.underruns} under-runs, {check.xruns} xruns",
    ]
    lines += [f"note           {n}" for n in check.notes]
    lines.append(f"verdict        {check.verdict()}")
    print("\n".join(lines))
    return 0
