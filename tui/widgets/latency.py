"""The latency panel: per-step compute time against the 80 ms frame budget.

A bar per step (newest right) with the budget drawn as a line across the chart;
bars over budget are red. The chart's top follows what it shows (1.5 x the largest
step in view, never below the budget), so 40 ms steps fill two thirds of it, not all
of it. Under it: p50/p95/max of the recent window, the real-time factor (compute
time / audio time: below 1 keeps up), the frames waiting in the input and output
queues, the late/dropped/underrun/xrun counters since the start, and the mean split
between the four phases, each segment labelled with its name so that it reads
without colour. Every figure is explained on the help screen (?).
"""

from __future__ import annotations

import math

from rich.style import Style
from textual.strip import Strip
from textual.widget import Widget

from ppchat.constants import FRAME_MS
from ppchat.engine.events import PHASES, StepEvent
from ppchat.tui.latency_stats import LatencyStats
from ppchat.tui.levels import EIGHTHS
from ppchat.tui.widgets.strips import runs_to_strip

PHASE_LABELS = {"encode": "enc", "temporal": "tmp", "depformer": "dep", "decode": "dec"}
TOP_HEADROOM = 1.5
# Distinct shades keep the phase bar readable under NO_COLOR.
PHASE_CHARS = {"encode": "▓", "temporal": "█", "depformer": "▒", "decode": "░"}


def chart_top(values: list[float], budget: float) -> float:
    """The chart's top: 1.5 x the largest value, at least the budget, rounded up to 10 ms."""
    top = max(budget, TOP_HEADROOM * max(values, default=0.0))
    return float(math.ceil(top / 10.0 - 1e-9) * 10)


def chart_cells(values: list[float], rows: int, top: float, budget: float) -> list[list[tuple[str, str]]]:
    """Bar chart cells, top row first: (character, kind) with kind in ok/over/budget/''.

    The budget line goes on the row holding `budget`; bars cover it where they reach it.
    """
    total = rows * 8
    budget_row = rows - 1 - min(rows - 1, int(budget / top * rows)) if top > 0 else rows - 1
    grid = []
    for row in range(rows):
        base = (rows - 1 - row) * 8
        line = []
        for v in values:
            height = min(total, round(v / top * total)) if top > 0 else 0
            fill = min(8, max(0, height - base))
            kind = "over" if v > budget else "ok"
            if fill:
                line.append((EIGHTHS[fill], kind))
            elif row == budget_row:
                line.append(("┈", "budget"))
            else:
                line.append((" ", ""))
        grid.append(line)
    return grid


def phase_segment(phase: str, cells: int) -> str:
    """A phase's part of the split bar: its label (or first letter) where it fits, then its shade."""
    label = PHASE_LABELS[phase]
    label = label if cells > len(label) else label[0]
    return (label + PHASE_CHARS[phase] * cells)[:cells]


class LatencyPanel(Widget):
    """Step timing chart and statistics for a live or replayed conversation."""

    DEFAULT_CSS = """
    LatencyPanel { height: 1fr; width: 1fr; padding: 0 1; text-wrap: nowrap; text-overflow: clip; }
    LatencyPanel > .latency--ok { color: ansi_green; }
    LatencyPanel > .latency--over { color: ansi_red; text-style: bold; }
    LatencyPanel > .latency--budget { color: ansi_yellow; }
    LatencyPanel > .latency--label { text-style: dim; }
    LatencyPanel > .latency--value { text-style: bold; }
    LatencyPanel > .latency--encode { color: ansi_cyan; }
    LatencyPanel > .latency--temporal { color: ansi_magenta; }
    LatencyPanel > .latency--depformer { color: ansi_yellow; }
    LatencyPanel > .latency--decode { color: ansi_blue; }
    """
    COMPONENT_CLASSES = {
        "latency--ok", "latency--over", "latency--budget", "latency--label", "latency--value",
        *(f"latency--{p}" for p in PHASES),
    }

    def __init__(self, budget_ms: float = FRAME_MS, *, name: str | None = None, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self.budget_ms = budget_ms
        self.stats = LatencyStats()
        # The whole session's figures when someone else has them (the monitor: sent by the
        # engine); otherwise p50/p95/max cover the recent window and the counters what this
        # view has seen.
        self.session_stats: dict | None = None
        self.window_label = "20 s"  # what the recent window is called ("attach" in a monitor)
        self._strips: list[Strip] | None = None
        self._strips_size = (0, 0)

    def reset(self) -> None:
        self.stats = LatencyStats()
        self.refresh()

    def add(self, ev: StepEvent) -> None:
        """Record one step; call `refresh()` once after a batch."""
        self.stats.add(ev)

    def refresh(self, *args, **kwargs):
        self._strips = None
        return super().refresh(*args, **kwargs)

    def render_line(self, y: int) -> Strip:
        width, height = self.content_size.width, self.content_size.height
        if self._strips is None or self._strips_size != (width, height):
            self._strips = [runs_to_strip(runs, width) for runs in self.render_runs(width, height)]
            self._strips_size = (width, height)
        return self._strips[y] if 0 <= y < len(self._strips) else Strip.blank(width)

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._strips = None  # the theme changed the component styles

    def _style(self, name: str) -> Style:
        if not self.is_attached:
            return Style()  # drawn outside an app (tests of the layout): no stylesheet
        return self.get_component_rich_style(f"latency--{name}", partial=True)

    def render_runs(self, width: int, height: int) -> list[list[tuple[str, Style | None]]]:
        """The panel as lines of (text, style) runs: title, chart, statistics, phase split."""
        self._styles = {kind: self._style(kind) for kind in ("ok", "over", "budget")}
        self._dim, self._bold = self._style("label"), self._style("value")
        self._phase_styles = {p: self._style(p) for p in PHASES}
        s = self.stats
        dim, bold, over = self._dim, self._bold, self._styles["over"]
        info_lines = 6 if s.network else 5
        rows = max(1, height - info_lines - 1)
        values = list(s.totals)[-width:] if width else []
        top = chart_top(values, self.budget_ms)
        attached = self.window_label == "attach"
        title = [("step ms ", bold)] + ([("since attach ", dim)] if attached else [])
        budget = f"{self.budget_ms:.0f}" + ("" if attached else " budget")
        lines = [title + [("┈", self._styles["budget"]), (f"{budget}  top {top:.0f}", dim)]]
        for line in chart_cells(values, rows, top, self.budget_ms):
            lines.append([(" " * (width - len(line)), None)] + [(char, self._styles.get(kind)) for char, kind in line])

        def fmt(v: float | None) -> str:  # whole ms from 100 on: "session p50 … max 1234" fits 34 cells
            return "–" if v is None else f"{v:.1f}" if v < 100 else f"{v:.0f}"

        def flagged(v: float | None, bad: bool) -> tuple[str, Style]:
            return fmt(v), over if bad else bold

        session = self.session_stats
        if session and session.get("total_ms"):
            scope, total = "session ", session["total_ms"]
            p50, p95, top_ms = total.get("p50"), total.get("p95"), total.get("max")
            counts = (session.get("late_frames", 0), session.get("dropped_frames", 0), session.get("underruns", 0), session.get("xruns", 0))
        else:
            scope, p50, p95, top_ms = self.window_label + " ", s.percentile(50), s.percentile(95), s.max()
            counts = (s.late, s.dropped_in, s.underruns, s.xruns)
        rtf = s.real_time_factor(self.budget_ms)
        lines.append([(scope, dim), ("p50 ", dim), flagged(p50, False), (" p95 ", dim), flagged(p95, bool(p95 and p95 > self.budget_ms)),
                      (" max ", dim), flagged(top_ms, False)])
        lines.append([("RTF ", dim), ("–" if rtf is None else f"{rtf:.2f}", over if rtf and rtf > 1 else bold),
                      (" queue in ", dim), (str(s.queue_in), bold), (" out ", dim), (str(s.queue_out), bold)])
        for labels in (("late", "drop", "under", "xrun"), ("late", "drop", "und", "xr"), ("l", "d", "u", "x")):
            counters = []  # the shortest labels that let four large counts fit (the help names them)
            for label, value in zip(labels, counts):
                counters += [(f" {label} " if counters else f"{label} ", dim), (str(value), over if value else bold)]
            if sum(len(text) for text, _ in counters) <= width:
                break
        lines.append(counters)
        if s.network:  # a remote model: what the client measures of the network
            net = s.network
            lines.append([("rtt ", dim), (fmt(net.get("rtt")), bold), (" jitter ", dim), (fmt(net.get("jitter")), bold),
                          (" buf ", dim), (f"{net.get('buffer', 0):.0f}", bold)])
        means = s.phase_means()
        lines.append(self.phase_bar(means, width))
        if s.totals and not s.has_phases:  # zeros would read as free phases
            split = [("phases not reported by the model", dim)]
        else:
            split = []
            for p in PHASES:
                mean = f"{means[p]:.0f}" if s.totals else "–"
                split += [(" " if split else "", None), (PHASE_LABELS[p] + " ", self._phase_styles[p]), (mean, bold)]
        lines.append(split)
        return lines

    def phase_bar(self, means: dict[str, float], width: int) -> list[tuple[str, Style | None]]:
        """The mean step split into phases, to scale: the full width is the frame budget."""
        runs: list[tuple[str, Style | None]] = []
        used = 0
        for p in PHASES:
            cells = min(width - used, round(means[p] / self.budget_ms * width))
            if cells > 0:
                runs.append((phase_segment(p, cells), self._phase_styles[p]))
                used += cells
        runs.append(("·" * (width - used), self._dim))
        return runs
