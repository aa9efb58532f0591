"""PersonaPlex facts that more than one part of ppchat needs, each written down once (spec §2).

Model hyper-parameters belong to the checkpoint's config (`models/manifest.py` for the
real model); these are the constants of the streaming contract around it.
"""

from __future__ import annotations

REPO_ID = "nvidia/personaplex-7b-v1"
"""The real model on the Hugging Face hub."""

SAMPLE_RATE = 24000
"""Mimi's audio rate, Hz: every track, frame and model input is at this rate."""
FRAME_SAMPLES = 1920
"""Samples in one model frame (one step)."""
FRAME_SECONDS = FRAME_SAMPLES / SAMPLE_RATE
"""One frame lasts 80 ms: the real-time budget of a step."""
FRAME_MS = FRAME_SECONDS * 1000
FRAME_RATE = SAMPLE_RATE / FRAME_SAMPLES
"""12.5 frames a second."""

EPAD_ID = 0
"""Text token "end of padding": the step before a word starts; no text of its own."""
PAD_ID = 3
"""Text token "no text in this frame"."""
NO_TEXT_IDS = frozenset({EPAD_ID, PAD_ID})
WORD_START = "\u2581"
"""SentencePiece's "▁": a piece that starts a word."""

SILENCE_TOKENS = (948, 243, 1178, 546, 1736, 1030, 1978, 2008)
"""Mimi codes of a silent frame: the agent stream during silence and text-prompt phases."""
SINE_TOKENS = (430, 1268, 381, 1611, 1095, 1495, 56, 472)
"""Mimi codes of a 440 Hz sine: the user stream during every prompt phase."""

DEPFORMER_STEPS = 8
"""Audio codebooks the depformer samples per step for the agent (the model's other 8 are the user's)."""

MAX_BACKLOG_FRAMES = 3
"""Live: microphone frames allowed to wait before all but the newest are dropped (240 ms)."""
