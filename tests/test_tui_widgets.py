"""Unit tests of the console widgets' logic: dB meter, turn splitting, latency statistics."""

from __future__ import annotations

import numpy as np
import pytest

from ppchat.engine.events import StepEvent
from ppchat.engine.levels import FLOOR_DB, level_db, level_fraction
from ppchat.tui.widgets.latency import LatencyStats, chart_cells
from ppchat.tui.widgets.monologue import Transcript, clock
from ppchat.tui.widgets.statusbar import short_path
from ppchat.tui.widgets.strips import strip_text
from ppchat.tui.widgets.waveform import FrameLevel, Waveform, column_cells


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


def test_column_height_follows_peak_and_body_follows_rms():
    # peak -20 dB on 3 rows = 16 of 24 eighths: two full bottom rows, empty top row.
    cells = column_cells(FrameLevel(rms=0.01, peak=0.1), rows=3)
    assert [c for c, _ in cells] == [" ", "█", "█"]
    # rms -40 dB = 8 eighths: the bottom row is body, the middle one (RMS..peak) is tip.
    assert [k for _, k in cells] == ["", "tip", "body"]


def test_full_scale_peak_fills_the_column_and_flags_clipping():
    cells = column_cells(FrameLevel(rms=0.5, peak=1.0), rows=2)
    assert cells == [("█", "clip"), ("█", "body")]


def test_partial_cells_use_eighth_blocks():
    # peak at -52.5 dB = 1/8 of the scale -> 3 of 24 eighths on 3 rows.
    cells = column_cells(FrameLevel(rms=0.0, peak=10 ** (-52.5 / 20)), rows=3)
    assert cells[-1][0] == "▃" and cells[0][0] == cells[1][0] == " "


def test_silence_draws_a_baseline_and_a_missing_frame_a_gap():
    assert column_cells(FrameLevel(0.0, 0.0), rows=2) == [(" ", ""), ("▁", "base")]
    assert column_cells(FrameLevel(0.0, 0.0, filled=True), rows=2)[-1] == ("·", "gap")


def test_waveform_scrolls_newest_right_and_draws_speech_and_silence_differently():
    wave = Waveform("mic", speech_color="green")
    for _ in range(5):
        wave.push(FrameLevel(rms=0.1, peak=0.3))  # speech: -20 dB RMS
    for _ in range(5):
        wave.push(FrameLevel(rms=0.0005, peak=0.002))  # room noise: -66 dB RMS
    strips = wave.render_strips(rows=3, width=7 + 20)
    assert len(strips) == 3 and all(strip.cell_length == 27 for strip in strips)
    lines = [strip_text(strip) for strip in strips]
    assert lines[0].startswith("mic")
    chart = [line[7:] for line in lines]
    # 10 frames right-aligned in 20 columns: first 10 columns blank.
    assert all(row[:10] == " " * 10 for row in chart)
    speech_cols, silence_cols = range(10, 15), range(15, 20)
    assert all(chart[0][c] != " " for c in speech_cols)  # speech reaches the top row
    assert all(chart[0][c] == " " and chart[1][c] == " " for c in silence_cols)  # noise stays low
    # peak 0.002 = -54 dB = 0.1 of the scale = 2.4 -> 2 of 24 eighths.
    assert all(chart[2][c] == "▂" for c in silence_cols)
    # Colour: speech cells carry the speech colour, silence cells never do.
    colours = [cell_colour(strips[2], 7 + c) for c in range(20)]
    assert all(colours[c] == "green" for c in speech_cols)
    assert all(colours[c] != "green" for c in silence_cols)


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
        wave.push(FrameLevel(rms=i / 10, peak=i / 10))
    assert [lvl.rms for lvl in wave.levels] == [0.6, 0.7, 0.8, 0.9]


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


def test_clock():
    assert clock(0) == "00:00" and clock(61.9) == "01:01" and clock(3725) == "1:02:05"


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


# ---- status bar ----------------------------------------------------------------------------


def test_short_path_elides_the_middle(monkeypatch):
    monkeypatch.setenv("HOME", "/home/ann")
    assert short_path("/home/ann/sessions/x", 40) == "~/sessions/x"
    long = "/data/" + "a" * 50 + "/2025-01-01T10-00-00_ab12"
    out = short_path(long, 30)
    assert len(out) == 30 and "…" in out and out.endswith("00_ab12") and out.startswith("/data")
