"""Unit tests of the console widgets' logic: dB meter, turn splitting, latency statistics."""

from __future__ import annotations

import numpy as np
import pytest
from rich.style import Style

from ppchat.engine.events import StepEvent
from ppchat.engine.transcript import Transcript, format_clock
from ppchat.tui.levels import FLOOR_DB, level_db, level_fraction
from ppchat.tui.widgets.latency import LatencyStats, chart_cells, chart_top, phase_segment
from ppchat.tui.widgets.statusbar import short_path
from ppchat.tui.widgets.waveform import FrameShape, Waveform, column_chars, dot_extent


def step(n: int, *, token: int | None = 3, piece: str | None = None, total: float = 40.0, **kw) -> StepEvent:
    return StepEvent(step=n, audio_time=n * 0.08, wall_time=0.0, timings_ms={"total": total}, text_token=token, text_piece=piece, **kw)


# ---- waveform ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "amplitude, fraction",
    [(1.0, 1.0), (0.1, 2 / 3), (0.01, 1 / 3), (10 ** (FLOOR_DB / 20), 0.0), (1e-9, 0.0), (0.0, 0.0), (2.0, 1.0)],
)
def test_level_fraction_is_linear_in_db_between_floor_and_full_scale(amplitude, fraction):
    # -60 dB floor: -20 dBFS sits two thirds of the way up, -40 dBFS one third.
    assert level_fraction(amplitude) == pytest.approx(fraction)


def test_level_db_is_20_log10():
    assert level_db(0.5) == pytest.approx(20 * np.log10(0.5))
    assert level_db(float("nan")) == FLOOR_DB


def braille_dots(char: str) -> set[tuple[int, int]]:
    """The (sub-column, dot row) pairs set in a braille character (Unicode's dot numbering)."""
    bits = ord(char) - 0x2800 if char != " " else 0
    layout = {0x01: (0, 0), 0x02: (0, 1), 0x04: (0, 2), 0x40: (0, 3), 0x08: (1, 0), 0x10: (1, 1), 0x20: (1, 2), 0x80: (1, 3)}
    return {pos for bit, pos in layout.items() if bits & bit}


def column_dots(chars: list[str]) -> dict[int, set[int]]:
    """Dot rows set per sub-column over a whole column (row 0 = top of the widget)."""
    out: dict[int, set[int]] = {0: set(), 1: set()}
    for row, char in enumerate(chars):
        for sub, dot in braille_dots(char):
            out[sub].add(4 * row + dot)
    return out


def test_dot_extent_is_linear_in_db_from_the_floor_to_full_scale():
    assert dot_extent(1.0, 6) == 6 and dot_extent(-1.0, 6) == 6
    assert dot_extent(10 ** (-30 / 20), 6) == 3  # half way up the dB scale
    assert dot_extent(10 ** (-61 / 20), 6) == 0 and dot_extent(0.0, 6) == 0


def test_silence_is_a_thin_centre_line():
    # 3 rows = 12 dot rows; the centre lies between dot rows 5 and 6.
    dots = column_dots(column_chars(FrameShape((0.0, 0.0), (0.0, 0.0), rms=0.0), rows=3))
    assert dots == {0: {5}, 1: {5}}


def test_each_slice_draws_its_max_up_and_its_min_down_from_the_centre():
    # Slice 0: max -20 dB (2/3 of 6 dots = 4 up), min -40 dB (1/3 = 2 down). Slice 1: full scale both ways.
    shape = FrameShape(lows=(-0.01, -1.0), highs=(0.1, 1.0), rms=0.1)
    dots = column_dots(column_chars(shape, rows=3))
    assert dots[0] == set(range(6 - 4, 6 + 2))
    assert dots[1] == set(range(0, 12))
    assert column_chars(shape, rows=3)[0][0] != " "


def test_frame_shape_takes_min_and_max_of_each_half_frame():
    rng = np.random.default_rng(3)
    pcm = rng.uniform(-0.5, 0.5, 1920).astype(np.float32)
    shape = FrameShape.from_pcm(pcm, rms=0.2)
    assert shape.lows == (pcm[:960].min(), pcm[960:].min()) and shape.highs == (pcm[:960].max(), pcm[960:].max())
    # The monitor's eight 10 ms peaks: each half is drawn as +-(its largest peak).
    env = FrameShape.from_peaks([0.1, 0.2, 0.05, 0.1, 0.3, 0.0, 0.0, 0.01], rms=0.1)
    assert env.highs == pytest.approx((0.2, 0.3)) and env.lows == pytest.approx((-0.2, -0.3))


def speech_like(n: int, loud: bool) -> np.ndarray:
    """A 200 Hz tone under a syllable envelope (loud) or faint noise (quiet)."""
    t = np.arange(n) / 24000
    if not loud:
        return (0.0005 * np.sin(2 * np.pi * 50 * t)).astype(np.float32)
    return (0.3 * np.sin(2 * np.pi * 200 * t) * np.sin(np.pi * t / t[-1])).astype(np.float32)


def test_waveform_scrolls_newest_right_and_draws_speech_and_silence_differently():
    wave = Waveform("mic")
    for _ in range(5):
        pcm = speech_like(1920, loud=True)
        wave.push(FrameShape.from_pcm(pcm, rms=float(np.sqrt(np.mean(pcm ** 2)))))
    for _ in range(5):
        pcm = speech_like(1920, loud=False)
        wave.push(FrameShape.from_pcm(pcm, rms=float(np.sqrt(np.mean(pcm ** 2)))))
    wave.push(FrameShape.from_level(1.0, rms=0.7))  # a clipped frame
    wave.push(FrameShape.from_level(0.0, rms=0.0, filled=True))  # a frame the engine filled in
    styles = {"speech": Style(color="green"), "quiet": Style(color="grey50"), "clip": Style(color="red"), "gap": Style(color="yellow")}
    wave._style = lambda name: styles.get(name, Style())  # the widget is not mounted: no CSS
    strips = wave.render_strips(rows=3, width=7 + 20)
    assert len(strips) == 3 and all(strip.cell_length == 27 for strip in strips)
    lines = [strip.text for strip in strips]
    assert lines[0].startswith("mic") and lines[1].startswith(" -60dB")  # the newest frame is the filled one
    chart = [line[7:] for line in lines]
    assert all(row[:8] == " " * 8 for row in chart)  # 12 frames right-aligned in 20 columns
    speech_cols, quiet_cols = range(8, 13), range(13, 18)
    assert all(chart[0][c] != " " and chart[2][c] != " " for c in speech_cols)  # speech spans the height
    assert all(column_dots([row[c] for row in chart]) == {0: {5}, 1: {5}} for c in quiet_cols)  # a thin line
    assert [row[18] for row in chart] == ["⣿"] * 3 and [row[19] for row in chart] == [" ", "·", " "]
    colours = [cell_colour(strips[1], 7 + c) for c in range(8, 20)]
    assert colours == ["green"] * 5 + ["grey50"] * 5 + ["red", "yellow"]


def cell_colour(strip, x: int) -> str | None:
    """The foreground colour name of the cell at column x."""
    pos = 0
    for segment in strip:
        if pos <= x < pos + len(segment.text):
            return segment.style.color.name if segment.style and segment.style.color else None
        pos += len(segment.text)
    raise IndexError(x)


def test_waveform_keeps_only_its_history():
    wave = Waveform("mic", history=4)
    for i in range(10):
        wave.push(FrameShape.from_level(i / 10, rms=i / 10))
    assert [f.rms for f in wave.frames] == [0.6, 0.7, 0.8, 0.9]


# ---- monologue -----------------------------------------------------------------------------


def test_transcript_joins_pieces_and_skips_pad_and_epad():
    t = Transcript(turn_gap_steps=5)
    events = [step(0, token=3), step(1, token=0), step(2, token=17, piece=" Hello"),
              step(3, token=3), step(4, token=18, piece=" world"), step(5, token=19, piece="!")]
    for ev in events:
        t.add(ev)
    assert t.plain_lines() == ["00:00 Hello world!"]


def test_transcript_turns_raw_word_start_marks_into_spaces():
    t = Transcript()
    for n, piece in enumerate(["\u2581Good", "\u2581mor", "ning"]):
        t.add(step(n, token=50 + n, piece=piece))
    assert t.plain_lines() == ["00:00 Good morning"]


def test_transcript_starts_a_new_turn_after_a_long_pad_run():
    t = Transcript(turn_gap_steps=5)
    t.add(step(0, token=5, piece=" Hi"))
    for n in range(1, 5):  # 4 PADs: shorter than the gap, same turn
        t.add(step(n, token=3))
    t.add(step(5, token=6, piece=" there"))
    for n in range(6, 11):  # 5 PADs: a turn boundary
        t.add(step(n, token=3))
    assert not t.speaking
    t.add(step(11, token=7, piece=" Next"))
    assert t.plain_lines() == ["00:00 Hi there", "00:00 Next"]
    assert t.entries[1].start == pytest.approx(11 * 0.08)


def test_transcript_shows_marks_and_ends_the_turn_at_a_mark():
    t = Transcript(turn_gap_steps=50)
    t.add(step(0, token=5, piece=" One"))
    t.add(step(1, marked=True))
    t.add(step(2, token=6, piece=" two"))
    assert [e.kind for e in t.entries] == ["turn", "mark", "turn"]
    assert t.entries[2].text == "two"


def test_transcript_is_bounded():
    t = Transcript(turn_gap_steps=1, max_entries=3)
    for n in range(0, 20, 2):
        t.add(step(n, token=5, piece=f" w{n}"))
        t.add(step(n + 1, token=3))
    assert [e.text for e in t.entries] == ["w14", "w16", "w18"]


def test_clock_without_tenths_shows_whole_seconds_rounded_down():
    assert [format_clock(s, tenths=False) for s in (0, 61.9, 3725)] == ["00:00", "01:01", "1:02:05"]


# ---- latency -------------------------------------------------------------------------------


def test_latency_stats_percentiles_rtf_and_counters():
    s = LatencyStats(window=100)
    for n in range(1, 101):  # totals 1..100 ms
        s.add(step(n, total=float(n), late=n % 10 == 0, dropped_in=1 if n == 5 else 0, underruns=2 if n == 7 else 0))
    assert s.percentile(50) == pytest.approx(50.5)  # median of 1..100
    assert s.max() == 100.0
    assert s.real_time_factor(80.0) == pytest.approx(50.5 / 80.0)
    assert (s.late, s.dropped_in, s.underruns, s.steps) == (10, 1, 2, 100)


def test_latency_window_slides_but_counters_do_not():
    s = LatencyStats(window=10)
    for n in range(50):
        s.add(step(n, total=1000.0 if n < 40 else 10.0, late=True))
    assert s.max() == 10.0 and s.late == 50


def test_frames_skipped_to_catch_up_count_but_do_not_pull_the_percentiles_down():
    s = LatencyStats()
    for n in range(10):
        s.add(step(n, total=50.0))
        s.add(StepEvent(100 + n, 0.0, 0.0, {}, filled="agent"))  # dropped: no compute
    assert s.percentile(50) == 50.0 and s.steps == 20 and s.filled == 10


def test_latency_total_falls_back_to_the_sum_of_phases():
    s = LatencyStats()
    s.add(StepEvent(0, 0.0, 0.0, {"encode": 1.0, "temporal": 20.0, "depformer": 8.0, "decode": 2.0}))
    assert s.totals[-1] == 31.0
    assert s.phase_means() == {"encode": 1.0, "temporal": 20.0, "depformer": 8.0, "decode": 2.0}


def test_latency_chart_marks_budget_row_and_over_budget_bars():
    # top 160, budget 80 on 4 rows: budget row is index 4-1-int(80/160*4) = 1.
    # 40 ms = 8 of 32 eighths (the bottom row); 120 ms = 24 eighths (the bottom three rows).
    grid = chart_cells([40.0, 120.0, 0.0], rows=4, top=160.0, budget=80.0)
    assert grid[1][0] == ("┈", "budget") and grid[1][2] == ("┈", "budget")  # bars below the line leave it visible
    assert grid[1][1] == ("█", "over")  # 120 ms covers the line and is over budget
    assert [row[0] for row in grid] == [(" ", ""), ("┈", "budget"), (" ", ""), ("█", "ok")]
    assert [row[1][0] for row in grid] == [" ", "█", "█", "█"]
    assert grid[3][2] == (" ", "") and grid[0][2] == (" ", "")


def test_latency_chart_top_follows_the_steps_but_never_hides_the_budget():
    assert chart_top([40.0, 38.0, 41.0], 80.0) == 80.0  # 1.5 x 41 = 61.5 < budget
    assert chart_top([40.0, 70.0], 80.0) == 110.0  # 1.5 x 70 = 105, rounded up to 10 ms
    assert chart_top([], 80.0) == 80.0
    # 40 ms steps against a 40 ms budget: top 60, so the bars fill two thirds of 6 rows
    # (32 of 48 eighths) and the budget line sits on the row above them.
    grid = chart_cells([40.0] * 3, rows=6, top=chart_top([40.0], 40.0), budget=40.0)
    assert [row[0][0] for row in grid] == [" ", "┈", "█", "█", "█", "█"]


def test_phase_segments_carry_their_names():
    assert phase_segment("temporal", 8) == "tmp█████"
    assert phase_segment("encode", 2) == "e▓" and phase_segment("decode", 1) == "d"


# ---- status bar ----------------------------------------------------------------------------


def test_short_path_elides_the_middle(monkeypatch):
    monkeypatch.setenv("HOME", "/home/ann")
    assert short_path("/home/ann/sessions/x", 40) == "~/sessions/x"
    long = "/data/" + "a" * 50 + "/2025-01-01T10-00-00_ab12"
    out = short_path(long, 30)
    assert len(out) == 30 and "…" in out and out.endswith("00_ab12") and out.startswith("/data")


# ---- headless status lines ------------------------------------------------------------------


def test_status_lines_have_fixed_columns_within_100_characters():
    from ppchat.tui.status_line import HEADER, StatusLine

    status = StatusLine()
    assert status.line() == "waiting for audio…"
    widths, lines = set(), []
    for n in (0, 9, 12_345, 999_999):  # up to 22 hours of steps
        slow = 1234.5 if n == 12_345 else 41.0
        status.add(StepEvent(n, n * 0.08, 0.0, {"total": slow}, in_peak=0.07, out_peak=1.0, late=slow > 80,
                             user_pcm=np.full(1920, 0.07, np.float32), agent_pcm=None))
        for line in status.line().splitlines():
            lines.append(line)
            widths.add(len(line))
    # Every line as long as the header, whatever the numbers: the columns stay put.
    assert lines[0] == HEADER and widths == {len(HEADER)} and len(HEADER) <= 100
    assert lines[1].split()[:4] == ["00:00.0", "0", "-23", "▅▅▅▅▅▅▅▅"]  # -23 dB, from the frame's own samples
    assert lines[-1].split()[:2] == ["22:13:19.9", "999999"]


def test_status_line_prints_each_agent_turn_once_when_it_ends():
    from ppchat.tui.status_line import StatusLine

    status = StatusLine()
    pieces = {3: " Hello", 6: " there", 40: " Second", 43: " turn"}
    printed = []
    for n in range(50):
        status.add(step(n, token=100 + n if n in pieces else 3, piece=pieces.get(n)))
        printed += status.finished_turns()
    assert printed == ["agent 00:00.2  Hello there"]  # the first turn ended (20 silent steps); the second is open
    assert status.finished_turns(final=True) == ["agent 00:03.2  Second turn"]
    assert status.finished_turns(final=True) == []


def test_status_bar_keeps_what_matters_at_80_columns_and_drops_the_rest_in_order(monkeypatch):
    monkeypatch.setenv("HOME", "/home/ann")
    from ppchat.tui.widgets.statusbar import Status, StatusBar

    bar = StatusBar()
    info = {"model": "demo (random weights)", "is_demo": True, "quantization": "none", "voice": "NATF2",
            "prompt_name": "customer-service", "input_device": "HDA Intel PCH: ALC3246 Analog", "output_device": "pulse",
            "session_dir": "/home/ann/.local/share/ppchat/sessions/2026-12-01T13-15-51_a38a"}
    bar.status = Status(state="live", elapsed=42.0, info=info, muted=True)
    wide = bar.render_text(160).plain.splitlines()
    assert wide[0] == " ● LIVE  00:42  MUTED  │  DEMO  demo (random weights) unquantised │ voice NATF2 │ prompt customer-service"
    assert wide[1] == "in HDA Intel PCH: ALC3246 Analog → out pulse │ ● rec ~/.local/share/ppchat/sessions/2026-12-01T13-15-51_a38a"
    narrow = bar.render_text(80).plain.splitlines()
    # The quantisation and the model's name go first (DEMO stays), then the devices; nothing is cut mid-word.
    assert narrow[0] == " ● LIVE  00:42  MUTED  │  DEMO  │ voice NATF2 │ prompt customer-service"
    assert narrow[1].startswith("● rec ") and narrow[1].endswith("2026-12-01T13-15-51_a38a") and len(narrow[1]) <= 80
    tiny = bar.render_text(50).plain.splitlines()[0]
    assert tiny == " ● LIVE  00:42  MUTED  │ prompt custom…"  # below the 80-column minimum, more goes
    # Both mic badges and a voice file: DEMO stayed, the file's name gives way (it went, seen live).
    bar.status = Status(state="live", elapsed=36.0, muted=True, half_duplex=True,
                        info=dict(info, voice="/home/ann/voices/grandpa_reading.wav", prompt_name="custom"))
    both = bar.render_text(78).plain.splitlines()[0]
    assert both == " ● LIVE  00:36  MUTED   HALF-DUPLEX  │  DEMO  │ voice grandpa… │ prompt custom"


def test_latency_figures_of_a_slow_session_fit_the_narrow_panel():
    from ppchat.tui.widgets.latency import LatencyPanel

    panel = LatencyPanel()
    panel.session_stats = {"total_ms": {"p50": 160.5, "p95": 820.4, "max": 1612.3}, "late_frames": 1200,
                           "dropped_frames": 3400, "underruns": 5000, "xruns": 12}
    panel.add(step(0, total=1612.3))
    lines = ["".join(t for t, _ in line) for line in panel.render_runs(34, 20)]
    assert "session p50 160 p95 820 max 1612" in lines and "late 1200 drop 3400 und 5000 xr 12" in lines


def test_a_step_without_a_phase_split_is_not_drawn_as_free_phases():
    """A batched server step (`serve --max-conversations`) or NVIDIA's server sends a total only;
    the panel said 'enc 0 tmp 0 dep 0 dec 0' for it (seen with `talk --server`)."""
    from ppchat.tui.widgets.latency import LatencyPanel

    panel = LatencyPanel()
    panel.add(step(0, total=40.0))
    lines = ["".join(t for t, _ in line) for line in panel.render_runs(34, 20)]
    assert "phases not reported by the model" in lines and not any("enc 0" in line for line in lines)
    phased = StepEvent(step=1, audio_time=0.08, wall_time=0.0,
                       timings_ms={"total": 40.0, "encode": 10.0, "temporal": 12.0, "depformer": 8.0, "decode": 10.0})
    panel.add(phased)
    lines = ["".join(t for t, _ in line) for line in panel.render_runs(34, 20)]
    assert "enc 10 tmp 12 dep 8 dec 10" in lines
