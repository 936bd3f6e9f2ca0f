"""Terminal output through rich: tables, a job's live progress bar and faint notes.

On a terminal, output gets colour (unless $NO_COLOR is set) and the terminal's width. Into a pipe or a file it
is plain text that is never wrapped: tables keep one row per line and events one line each, for grep and
scripts (--json is the stable format).
"""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Iterable, Sequence
from typing import Any, TextIO

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Table
from rich.text import Text

from lmforge.cli.format import (
    format_event_line,
    format_metrics_line,
    format_rollouts_lines,
    progress_fraction,
    to_json,
)
from lmforge.client import job_state_name
from lmforge.v1 import trainer_pb2

EXIT_OK, EXIT_FAILED, EXIT_ERROR = 0, 1, 2

PLAIN_WIDTH = 100_000  # tables are drawn this wide at most: never wrapped or cut (a terminal soft-wraps long lines)
# Styles on a colour terminal: of a job state's name, wherever one is shown.
STATE_STYLES = {"SUCCEEDED": "green", "FAILED": "bold red", "CANCELLED": "yellow", "RUNNING": "cyan",
                "QUEUED": "blue", "VALIDATING": "blue"}
# ... of the cells of some columns, by header and value.
CELL_STYLES: dict[str, dict[str, str]] = {"STATE": STATE_STYLES, "LOADED": {"yes": "green"},
                                          "BEST": {"yes": "bold green"}, "FINAL": {"yes": "green"}}
RIGHT_ALIGNED = frozenset({"STEP", "LOSS", "SIZE", "MEMORY MiB"})
LOG_STYLES = {"WARNING": "yellow", "ERROR": "bold red", "CRITICAL": "bold red", "DEBUG": "dim"}


def is_tty(stream: TextIO) -> bool:
    return bool(getattr(stream, "isatty", lambda: False)())


def color_enabled(stream: TextIO) -> bool:
    """Colour on `stream`: it is a terminal and $NO_COLOR is unset."""
    return is_tty(stream) and not os.environ.get("NO_COLOR")


def make_console(stream: TextIO, *, terminal: bool, color: bool, width: int | None = None) -> Console:
    """A rich Console writing to `stream`: a terminal one (cursor control; the terminal's width unless `width`)
    or a plain, unwrapped one; styles only with `color`. Never markup, emoji or highlighting: texts are printed
    as they are."""
    options: dict[str, Any] = dict(file=stream, highlight=False, markup=False, emoji=False)
    if terminal:
        return Console(force_terminal=True, color_system="standard" if color else None, no_color=not color,
                       width=width, **options)
    return Console(force_terminal=False, color_system=None, no_color=True, width=width or PLAIN_WIDTH, **options)


# ----------------------------------------------------------------------------------------------- tables


def build_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> Table:
    """Columns separated by two spaces, no borders, bold header; numbers right-aligned; states coloured."""
    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold", highlight=False)
    for header in headers:
        table.add_column(str(header), justify="right" if header in RIGHT_ALIGNED else "left", no_wrap=True)
    for row in rows:
        cells = ["" if c is None else str(c) for c in row]
        table.add_row(*(Text(c, style=CELL_STYLES.get(h, {}).get(c, "")) for h, c in zip(headers, cells)))
    return table


def format_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], *, color: bool = False) -> str:
    """The table as text: one line per row, no trailing spaces, as wide as it needs."""
    buffer = io.StringIO()
    make_console(buffer, terminal=color, color=color, width=PLAIN_WIDTH).print(build_table(headers, rows))
    return "\n".join(line.rstrip() for line in buffer.getvalue().splitlines())


def print_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], out: TextIO | None = None) -> None:
    """The table on a terminal (coloured; cells never wrapped, ids stay whole), else format_table's plain text."""
    out = out or sys.stdout
    if is_tty(out):
        make_console(out, terminal=True, color=color_enabled(out), width=PLAIN_WIDTH).print(build_table(headers, rows))
    else:
        out.write(format_table(headers, rows) + "\n")
    out.flush()


# ------------------------------------------------------------------------------------------------ notes


def print_note(stream: TextIO, text: str) -> None:
    """A line of secondary information (stats, hints) in the terminal's faint style when colour is on."""
    if color_enabled(stream):
        make_console(stream, terminal=True, color=True).print(Text(text, style="dim"), soft_wrap=True)
    else:
        stream.write(text + "\n")
    stream.flush()


# --------------------------------------------------------------------------------------- event printing


def event_style(event: trainer_pb2.TrainingEvent) -> str:
    """The colour of an event's line: its state for a state change, its level for a log line."""
    kind = event.WhichOneof("payload")
    if kind == "state_change":
        return STATE_STYLES.get(job_state_name(event.state_change.state), "")
    if kind == "log":
        return LOG_STYLES.get((event.log.level or "INFO").upper(), "")
    if kind == "checkpoint_saved":
        return "green"
    return ""


class EventPrinter:
    """Prints a job's events: one line per event, and in --json mode one JSON object per event. On a terminal,
    train metrics update a rich progress bar (`━━━━╸━━━ 42% step 21/50 loss 1.234 ...`) kept below the other
    lines; into a pipe each metrics event is a line of its own."""

    def __init__(self, out: TextIO, *, tty: bool, json_mode: bool, total_steps: int = 0, samples: bool = False):
        self.out = out
        self.json_mode = json_mode
        self.total_steps = total_steps
        self.samples = samples  # print rollout samples in full (else one summary line per event)
        live = tty and not json_mode
        self._console = make_console(out, terminal=True, color=color_enabled(out)) if live else None
        self._progress: Progress | None = None
        self._task = None

    def line(self, text: str, style: str = "") -> None:
        if self._console is None:
            self.out.write(text + "\n")
            self.out.flush()
        else:  # above the progress bar while it is shown
            self._console.print(Text(text, style=style), soft_wrap=True)

    def _draw_progress(self, event: trainer_pb2.TrainingEvent) -> None:
        fraction = progress_fraction(event.step, self.total_steps, dict(event.metrics.values))
        shown = dict(description=format_metrics_line(event, self.total_steps),
                     total=None if fraction is None else 1.0, completed=fraction or 0.0)  # None: a pulsing bar
        if self._progress is None:
            bar = BarColumn(bar_width=24, style="bright_black", complete_style="cyan", finished_style="green",
                            pulse_style="cyan")
            self._progress = Progress(bar, TextColumn("{task.description}", markup=False), console=self._console,
                                      auto_refresh=False)
            self._task = self._progress.add_task(**shown)
            self._progress.start()  # drawn here, with the first values
        else:
            self._progress.update(self._task, **shown)
            self._progress.refresh()

    def handle(self, event: trainer_pb2.TrainingEvent) -> None:
        if self.json_mode:
            self.out.write(to_json(event) + "\n")
            self.out.flush()
            return
        kind = event.WhichOneof("payload")
        if kind == "metrics" and event.metrics.total_steps:
            self.total_steps = event.metrics.total_steps
        if kind == "metrics" and self._console is not None and event.metrics.phase != "eval":
            self._draw_progress(event)
        elif kind == "rollouts" and self.samples:
            self.line("\n".join(format_rollouts_lines(event)))
        else:
            self.line(format_event_line(event, self.total_steps), event_style(event))

    def finish(self) -> None:
        """Leaves the last progress bar drawn and moves below it."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        self.out.flush()
