"""The ranges of values a user gives, and argparse `type=` callables that enforce them.

A bad option value ends in argparse's usual one-line error and exit status 2, e.g.
`ppchat talk: error: argument --temp: must be a number >= 0, not 'nan'`; a file with an
unusable sample rate is an `AudioError` (`check_sample_rate`).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path

from ppchat.errors import AudioError

# Device and file sample rates ppchat resamples from (telephone-band to high-end interfaces).
MIN_SAMPLE_RATE = 4000
MAX_SAMPLE_RATE = 384000
MAX_SEED = 2**64 - 1  # what MLX's and numpy's generators take


def _range(minimum: float | None, maximum: float | None, above: bool) -> str:
    low = f"> {minimum:g}" if above else f">= {minimum:g}"
    if maximum is None:
        return low
    return f"from {minimum:g} to {maximum:g}" if not above else f"{low} and <= {maximum:g}"


def number(minimum: float = 0.0, maximum: float | None = None, *, above: bool = False) -> Callable[[str], float]:
    """A finite float in [minimum, maximum] (or (minimum, maximum] with `above`)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        ok = math.isfinite(value) and (value > minimum if above else value >= minimum)
        if not ok or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"must be a number {_range(minimum, maximum, above)}, not {text!r}")
        return value

    return parse


def whole(minimum: int = 0, maximum: int | None = None) -> Callable[[str], int]:
    """An int in [minimum, maximum]."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"must be a whole number {_range(minimum, maximum, False)}, not {text!r}")
        return value

    return parse


sample_rate = whole(MIN_SAMPLE_RATE, MAX_SAMPLE_RATE)


def check_sample_rate(rate: int, path: Path) -> None:
    """Refuse a file whose header's rate is outside what ppchat resamples (a broken or hostile header:
    2^31-1 Hz would give an empty result, 1 Hz a multi-hour job)."""
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise AudioError(
            f"audio file {path} says its sample rate is {rate} Hz; ppchat reads {MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz. "
            "The header is probably damaged: convert the file again (e.g. to a 24 kHz WAV)"
        )


def unreadable_audio(path: Path, exc: Exception, what: str = "audio file") -> AudioError:
    """The error for an audio file soundfile could not open: a missing file or a folder said as
    such (libsndfile only says "System error."), else its reason."""
    path = Path(path)
    if not path.exists():
        return AudioError(f"{what} {path} does not exist")
    if path.is_dir():
        return AudioError(f"{what} {path} is a folder, not an audio file")
    reason = str(exc).rstrip(".").replace("Error opening", "error opening") or type(exc).__name__
    return AudioError(f"cannot read {what} {path} ({reason}); give a WAV, FLAC, OGG or MP3 file")
