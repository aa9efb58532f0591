"""The wire format of the PersonaPlex protocol: Ogg pages, Opus packets, messages, query parameters."""

from __future__ import annotations

import numpy as np
import pytest

sphn = pytest.importorskip("sphn")

from ppchat.net import ogg, protocol  # noqa: E402
from ppchat.net.opus import (  # noqa: E402
    OggOpusDecoder,
    OggOpusEncoder,
    OpusStreamError,
    frame_samples_48k,
    join_frames,
    split_frames,
)
from ppchat.net.params import ChatParams  # noqa: E402
from ppchat.net.protocol import Kind, ProtocolError  # noqa: E402


def _speechlike(seconds: float, seed: int = 0) -> np.ndarray:
    """Noise bursts and tones: libopus switches between its SILK, hybrid and CELT modes on this."""
    rng = np.random.default_rng(seed)
    n = int(seconds * 24000)
    t = np.arange(n) / 24000
    envelope = (np.sin(2 * np.pi * 1.3 * t) > 0).astype(np.float32)
    return (0.2 * np.sin(2 * np.pi * 220 * t) * envelope + 0.05 * rng.standard_normal(n) * (1 - envelope)).astype(np.float32)


def _sphn_stream(pcm: np.ndarray) -> bytes:
    writer = sphn.OpusStreamWriter(24000)
    return b"".join(writer.append_pcm(pcm[i:i + 1920]) for i in range(0, len(pcm), 1920))


def test_pages_written_here_are_byte_identical_to_sphns():
    # An independent writer (libogg inside sphn) made these pages: same packets, same fields, same checksum.
    stream = _sphn_stream(_speechlike(1.0))
    pages, rest = ogg.parse_pages(stream)
    assert rest == b"" and len(pages) > 10
    writer = ogg.PageWriter(pages[0].serial)
    rewritten = b"".join(writer.page(p.packets, p.granule, first=bool(p.flags & ogg.FLAG_BOS)) for p in pages)
    assert rewritten == stream


def test_a_corrupted_page_is_refused_and_a_partial_one_waits():
    stream = bytearray(_sphn_stream(_speechlike(0.3)))
    pages, _ = ogg.parse_pages(bytes(stream))
    cut = len(pages[0].raw) + 10
    complete, rest = ogg.parse_pages(bytes(stream[:cut]))
    assert len(complete) == 1 and rest == bytes(stream[len(pages[0].raw):cut])
    stream[40] ^= 0xFF
    with pytest.raises(ValueError, match="checksum"):
        ogg.parse_pages(bytes(stream))
    with pytest.raises(ValueError, match="not an Ogg page"):
        ogg.parse_pages(b"RIFF" + bytes(40))


@pytest.mark.parametrize("lengths", [[1], [10, 10], [10, 20], [300, 5, 700], [251, 252, 253, 1000], [40] * 6])
def test_opus_frames_split_and_join(lengths):
    rng = np.random.default_rng(len(lengths))
    frames = [bytes(rng.integers(0, 256, n, dtype=np.uint8)) for n in lengths]
    toc = (23 << 3)  # CELT fullband 20 ms, mono
    packet = join_frames(toc, frames)
    assert split_frames(packet) == (toc | (0 if len(frames) == 1 else 3), frames)


def test_opus_code1_and_code2_packets_split_as_rfc6716_says():
    toc = 13 << 3
    assert split_frames(bytes([toc | 1]) + b"abcdef") == (toc | 1, [b"abc", b"def"])
    assert split_frames(bytes([toc | 2, 2]) + b"abcdef") == (toc | 2, [b"ab", b"cdef"])
    with pytest.raises(OpusStreamError):
        split_frames(bytes([toc | 2, 200]) + b"ab")
    with pytest.raises(OpusStreamError):
        split_frames(b"")


def test_frame_durations_follow_the_toc_table():
    assert frame_samples_48k(10 << 3) == 1920  # SILK WB 40 ms
    assert frame_samples_48k(13 << 3) == 960  # hybrid SWB 20 ms
    assert frame_samples_48k(31 << 3) == 960  # CELT FB 20 ms
    assert frame_samples_48k(28 << 3) == 120  # CELT FB 2.5 ms


@pytest.mark.parametrize("packet_ms,per_page", [(80, 1), (20, 2), (40, 1)])
def test_regrouped_streams_decode_to_exactly_sphns_samples(packet_ms, per_page):
    pcm = _speechlike(3.0, seed=packet_ms)
    reference = sphn.OpusStreamReader(24000).append_bytes(_sphn_stream(pcm))
    encoder = OggOpusEncoder(packet_ms=packet_ms, packets_per_page=per_page)
    pages = [page for i in range(0, len(pcm), 1920) for page in encoder.encode(pcm[i:i + 1920])]
    decoder = OggOpusDecoder()
    decoded = np.concatenate([decoder.decode(p) for p in pages])
    # Same coded frames, only regrouped: libopus must produce the very same samples.
    np.testing.assert_array_equal(decoded, reference)
    parsed, _ = ogg.parse_pages(b"".join(pages))
    assert parsed[0].packets[0].startswith(b"OpusHead") and parsed[0].flags & ogg.FLAG_BOS
    assert parsed[1].packets[0].startswith(b"OpusTags")
    audio = parsed[2:]
    durations = [sum(frame_samples_48k(p[0]) * len(split_frames(p)[1]) for p in page.packets) for page in audio]
    granules = [page.granule for page in audio]
    assert granules == list(np.cumsum(durations))  # 48 kHz granule positions
    full = [page for page in audio if len(page.packets) == per_page]
    assert len(full) >= 0.8 * len(audio)
    for page in audio:
        for packet in page.packets:
            toc, frames = split_frames(packet)
            assert frame_samples_48k(toc) * len(frames) <= packet_ms * 48 or len(frames) == 1
    if packet_ms == 80:
        # One 80 ms packet per page, as the reference server sends, wherever libopus kept its mode.
        assert sum(d == 3840 for d in durations) >= 0.8 * len(audio)


def test_the_decoder_accepts_any_chunking():
    stream = _sphn_stream(_speechlike(1.0))
    whole = OggOpusDecoder().decode(stream)
    decoder = OggOpusDecoder()
    pieces = np.concatenate([decoder.decode(stream[i:i + 7]) for i in range(0, len(stream), 7)])
    np.testing.assert_array_equal(pieces, whole)


@pytest.mark.parametrize("garbage", [b"hello world, not ogg at all", b"RIFF\x00\x00\x00\x00WAVEfmt " * 4, bytes(range(256))])
def test_the_decoder_refuses_bytes_that_are_not_ogg(garbage):
    with pytest.raises(OpusStreamError, match="not a valid Ogg/Opus stream"):
        OggOpusDecoder().decode(garbage)


def test_messages_round_trip_and_unknown_kinds_are_refused():
    assert protocol.handshake() == b"\x00"
    assert protocol.decode(protocol.text(" héllo")).text() == " héllo"
    assert protocol.decode(protocol.audio(b"OggS..")) == protocol.Message(Kind.AUDIO, b"OggS..")
    assert protocol.decode(protocol.metadata({"a": 1})).json() == {"a": 1}
    assert protocol.decode(protocol.error("nope")).kind == Kind.ERROR
    with pytest.raises(ProtocolError, match="unknown message kind 0x07"):
        protocol.decode(b"\x07abc")
    with pytest.raises(ProtocolError, match="empty message"):
        protocol.decode(b"")


def test_query_parameters_of_the_web_ui():
    query = {"voice_prompt": "NATF2.pt", "text_prompt": "You enjoy having a good conversation.", "seed": "-1",
             "text_temperature": "0.7", "text_topk": "25", "audio_temperature": "0.8", "audio_topk": "250",
             "pad_mult": "0", "repetition_penalty": "1.0", "repetition_penalty_context": "64",
             "text_seed": "1", "audio_seed": "2", "worker_auth_id": "x", "email": "a@b"}
    params = ChatParams.from_query(query)
    assert params == ChatParams("NATF2.pt", "You enjoy having a good conversation.", None, 0.7, 25, 0.8, 250)
    assert ChatParams.from_query({}) == ChatParams()
    assert ChatParams.from_query({"seed": "42", "text_prompt": "  "}) == ChatParams(seed=42)
    back = ChatParams(voice_prompt="NATM1", text_prompt="a & b = c?", seed=7, audio_topk=100)
    from urllib.parse import parse_qsl

    assert ChatParams.from_query(dict(parse_qsl(back.to_query()))) == back


@pytest.mark.parametrize("query,named", [
    ({"voice_prompt": "../../etc/passwd"}, "voice_prompt"),
    ({"voice_prompt": "sub/NATF2.pt"}, "voice_prompt"),
    ({"voice_prompt": "..\\NATF2.pt"}, "voice_prompt"),
    ({"voice_prompt": ".hidden"}, "voice_prompt"),
    ({"voice_prompt": "a\x00b"}, "voice_prompt"),
    ({"text_prompt": "x" * 1001}, "text_prompt"),
    ({"seed": "abc"}, "seed"),
    ({"seed": "-5"}, "seed"),
    ({"text_temperature": "nan"}, "text_temperature"),
    ({"audio_temperature": "-1"}, "audio_temperature"),
    ({"audio_temperature": "1e9"}, "audio_temperature"),
    ({"text_topk": "0"}, "text_topk"),
    ({"audio_topk": "2.5"}, "audio_topk"),
])
def test_bad_query_parameters_are_named(query, named):
    with pytest.raises(ProtocolError, match=named):
        ChatParams.from_query(query)
