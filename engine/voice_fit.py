"""What to tell the user about a long voice prompt.

The prompt phases (spec §6.1: voice, 6 silence frames, the role prompt, 6 silence frames) are one
causal sequence in the LM's ring KV cache, whose queries attend to the last `context - 1` positions
(`models/kv_cache.py`; 2999 frames, 4 minutes, on PersonaPlex). The reference encodes and prefills a
voice file of any length (spec §6.2), and so does ppchat: frames that have left the window still
shape the keys and values of the deeper layers computed while they were in it (on the lm_tiny
fixture, context 40, a 40-frame voice cut to the 25 frames the first live call's window holds
changed the first live calls' text logits by up to 0.41, cut by one frame by 0.03), so a cut
changes what the model does. But every prompt frame counts against the window the conversation shares
with it (spec §6.6): the longer the voice, the sooner it starts sliding out of direct attention as
the conversation goes on, and every frame costs conditioning time (a Mimi encode and a transformer
column). A voice that would start sliding out within the first half of the window's span of
conversation (2 minutes) is warned about.
"""

from __future__ import annotations

from ppchat.constants import FRAME_SECONDS


def describe_length(frames: int) -> str:
    seconds = frames * FRAME_SECONDS
    return f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"


def long_voice_notice(name: str, frames: int, context: int, text_tokens: int, silence_frames: int) -> str | None:
    """A warning about voice prompt `name` of `frames` frames, or None when it leaves the conversation
    at least half of the model's attention window before it starts sliding out."""
    window = context - 1
    prefill = frames + 2 * silence_frames + text_tokens
    left = window - prefill  # live frames before the voice's first frame leaves the window
    if left >= window / 2:
        return None
    when = f"{describe_length(left)} into the conversation" if left > 0 else "before the conversation starts"
    return (
        f"voice {name} is {describe_length(frames)} ({frames} frames): with the role prompt it takes {prefill} of the "
        f"{window} frames the model attends to, so it starts sliding out of attention {when}. About 10 s of clean "
        "speech makes a voice prompt, and starts faster."
    )
