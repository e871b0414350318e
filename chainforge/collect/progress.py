"""What the user watches: a rich progress bar on a terminal, plain lines otherwise, and a summary."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from chainforge.log import console, info

PLAIN_EVERY_S = 10.0


@dataclass
class Tally:
    total: int  # prompts to process in this run
    done: int = 0
    failed: int = 0
    expanded: int = 0
    expansion_failures: int = 0
    cost: float = 0.0
    started: float = field(default_factory=time.monotonic)

    @property
    def rate(self) -> float:
        elapsed = time.monotonic() - self.started
        return (self.done + self.failed) / elapsed if elapsed > 0 else 0.0

    def line(self) -> str:
        return (f"{self.done + self.failed}/{self.total} prompts · {self.done} rows · {self.failed} failed · "
                f"{self.expanded} expanded · ${self.cost:.4f} · {self.rate:.1f} prompts/s")


class Progress:
    """`update()` after each prompt; a bar on a terminal, a plain line every few seconds elsewhere."""

    def __init__(self, tally: Tally):
        self.tally = tally
        self._bar = None
        self._last = time.monotonic()

    def __enter__(self) -> "Progress":
        if console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as Bar, TextColumn, TimeRemainingColumn

            self._bar = Bar(TextColumn("collect"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[status]}"), TimeRemainingColumn(),
                            console=console, transient=False)
            self._bar.start()
            self._task = self._bar.add_task("collect", total=self.tally.total, status="")
        return self

    def update(self) -> None:
        t = self.tally
        if self._bar is not None:
            self._bar.update(self._task, completed=t.done + t.failed,
                             status=f"failed {t.failed} · expanded {t.expanded} · ${t.cost:.4f} · {t.rate:.1f}/s")
        elif time.monotonic() - self._last >= PLAIN_EVERY_S:
            self._last = time.monotonic()
            info(t.line())

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()


def print_summary(metrics: dict, expansion_failures: int) -> None:
    """The final table (rich renders it plainly when stderr is not a terminal)."""
    from rich.table import Table

    table = Table(title="collect", show_header=False)
    rows = [("prompts", metrics["prompts"]), ("rows", metrics["rows"]), ("failed", metrics["failed"]),
            ("uncertain steps", metrics["uncertain_steps"]), ("expanded steps", metrics["expanded_steps"]),
            ("expansions rejected/failed", expansion_failures),
            ("correct rate", "n/a" if metrics["correct_rate"] is None else f"{metrics['correct_rate']:.3f}"),
            ("cost (USD)", f"{metrics['cost_usd']:.4f}"), ("requests", metrics["requests"]),
            ("retries", metrics["retries"])]
    for name, value in rows:
        table.add_row(name, str(value))
    console.print(table)
