"""The crash-safe record of a collect run: append-only JSON Lines in `--output`.

- `journal.jsonl`: one finished row per line, written with one `write(2)` on an `O_APPEND` file
  before the prompt counts as done, so a SIGKILL loses at most the requests in flight, never a
  finished row. (It reaches the kernel at once; it is fsynced when the run ends.) A torn last line
  (a crash of the machine mid-write) is cut off when the journal is reopened.
- `failed.jsonl`: one line per prompt that failed for good: `{id, prompt, reason, status_code}`.
  It is compacted when a run ends (one line per id, none for an id that has a row).

The dataset is built from the journal at the end, in input order, one row at a time
(`rows_in_order` keeps only byte offsets in memory).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from chainforge.data import atomic_write_text

JOURNAL = "journal.jsonl"
FAILED = "failed.jsonl"


class AppendLog:
    """JSON Lines appended one record per write(2)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._fd: int | None = None

    def recover(self, project: Callable[[dict], Any] = lambda rec: rec) -> list[tuple[int, Any]]:
        """(byte offset, project(record)) for every intact record; a torn last line is cut off.

        `project` keeps memory bounded: the caller keeps what it needs of each record, not the row.
        """
        if not self.path.exists():
            return []
        records, good_end = [], 0
        with open(self.path, "rb") as f:
            offset = 0
            for line in f:
                end = offset + len(line)
                try:
                    if not line.endswith(b"\n"):
                        raise ValueError("torn")
                    records.append((offset, project(json.loads(line))))
                    good_end = end
                except ValueError:
                    break  # everything after a torn line is unreliable
                offset = end
        if good_end != self.path.stat().st_size:
            os.truncate(self.path, good_end)
        return records

    def append(self, record: dict) -> None:
        """One line, one write(2): it is in the file (the kernel's) before this returns."""
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        data = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        while data:
            data = data[os.write(self._fd, data):]

    def close(self) -> None:
        if self._fd is not None:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None


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
