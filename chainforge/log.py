"""Where a stage talks to the user: stderr, through rich (plain lines when not a terminal)."""

from __future__ import annotations

from rich.console import Console

console = Console(stderr=True, highlight=False, soft_wrap=True)  # a log line stays one line in a file or pipe


def info(message: str) -> None:
    console.print(message, markup=False)


def fmt_value(value, spec: str = ".3f", none: str = "-") -> str:
    """A metric for a table or a log line: floats by `spec`, None as `none`."""
    if value is None:
        return none
    if isinstance(value, float):
        return format(value, spec)
    return str(value)
