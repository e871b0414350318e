"""Where a stage talks to the user: stderr, through rich (plain lines when not a terminal)."""

from __future__ import annotations

from rich.console import Console

console = Console(stderr=True, highlight=False)


def info(message: str) -> None:
    console.print(message, markup=False)
