"""The crash-safe record of a collect run: append-only JSON Lines in `--output`.

- `journal.jsonl`: one finished row per line, written with one `write(2)` on an `O_APPEND` file
  before the prompt counts as done, so a SIGKILL loses at most the requests in flight, never a
  finished row. (It reaches the kernel at once; it is fsynced when the run ends.) Reading follows
  the one journal rule of chainforge/journal.py: a torn last line is cut, any other unreadable line
  is skipped with one warning and its prompt asked again, every readable row is kept.
- `failed.jsonl`: one line per prompt that failed for good: `{id, prompt, reason, status_code}`.
  It is compacted when a run ends (one line per id, none for an id that has a row).

The dataset is built from the journal at the end, in input order, one row at a time
(`rows_in_order` keeps only byte offsets in memory).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator, Sequence

from chainforge.outputs import atomic_write_text
from chainforge.journal import Journal

JOURNAL = "journal.jsonl"
FAILED = "failed.jsonl"


class AppendLog(Journal):
    """collect's journals (`journal.jsonl`, `failed.jsonl`): every record carries the prompt's `id`."""

    def __init__(self, path: Path):
        super().__init__(path, key="id")


def rows_in_order(path: Path, offsets: Sequence[tuple[int, int]]) -> Iterator[dict]:
    """The journal's rows sorted by input index; `offsets` holds (index, byte offset) pairs."""
    with open(path, "rb") as f:
        for _, offset in sorted(offsets):
            f.seek(offset)
            yield json.loads(f.readline())


def compact_failed(path: Path, done_ids: set[str]) -> int:
    """Rewrite failed.jsonl with the last line per id and none for ids that have a row."""
    if not path.exists():
        return 0
    last: dict[str, dict] = {}
    for _, rec in AppendLog(path).recover():
        if rec.get("id") not in done_ids:
            last[rec["id"]] = rec
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in last.values()))
    return len(last)
