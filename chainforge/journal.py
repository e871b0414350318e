"""Append-only JSON Lines journals: the one rule for writing and reading every journal.

A journal is how a long run survives a crash: collect's `journal.jsonl` and `failed.jsonl`, and
the sampling engine's journal (reject, eval, distill) all use this module.

Writing: one record per line, one `write(2)` on an `O_APPEND` file, so a record is in the kernel's
hands before the work it stands for counts as done; `sync()`/`close()` fsync it.

Reading (`Journal.recover`):
- a last line without its newline is torn (the process or the machine died mid-write): it is cut
  off the file, and the work it stood for is done again;
- any other line that cannot be read (not JSON, JSON that is not an object, an object without the
  journal's key field, or one the caller's `project` cannot read) is skipped, with ONE warning
  that counts them; the line stays in the file for a person to inspect, and only the work of
  skipped lines is done again;
- every readable line is kept: a bad line in the middle never costs the lines after it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Optional

from chainforge.log import info

# What a caller's projection raises when a record lacks a field or has the wrong type for it.
_UNREADABLE = (ValueError, KeyError, TypeError, IndexError, AttributeError)


class Journal:
    """JSON Lines appended one record per write(2); `key` is the field every record must have."""

    def __init__(self, path: str | os.PathLike, key: Optional[str] = None):
        self.path = Path(path)
        self.key = key
        self.skipped = 0  # unreadable lines found by the last recover()
        self._warned: Optional[int] = None
        self._fd: Optional[int] = None

    def recover(self, project: Callable[[dict], Any] = lambda rec: rec) -> list[tuple[int, Any]]:
        """(byte offset, project(record)) for every readable record, in file order.

        A torn last line is cut off the file; other unreadable lines are skipped and counted (one
        warning per count, however often a run reads its journal). `project` keeps memory bounded:
        the caller keeps what it needs of each record, not the record.
        """
        if not self.path.exists():
            self.skipped = 0
            return []
        records: list[tuple[int, Any]] = []
        skipped = 0
        offset = 0
        with open(self.path, "rb") as f:
            for line in f:
                if not line.endswith(b"\n"):
                    break  # only the last line can lack its newline
                try:
                    rec = json.loads(line)
                    if not isinstance(rec, dict) or (self.key is not None and self.key not in rec):
                        raise ValueError("not a record")
                    records.append((offset, project(rec)))
                except _UNREADABLE:
                    if line.strip():
                        skipped += 1
                offset += len(line)
        if offset != self.path.stat().st_size:
            os.truncate(self.path, offset)
        self.skipped = skipped
        if skipped and skipped != self._warned:
            self._warned = skipped
            info(f"warning: {self.path}: skipped {skipped} unreadable line{'s' if skipped != 1 else ''} "
                 f"(kept {len(records)}); their work is done again")
        return records

    def append(self, record: dict) -> None:
        """One line, one write(2): it is in the file (the kernel's) before this returns."""
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        data = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        while data:
            data = data[os.write(self._fd, data):]

    def sync(self) -> None:
        """fsync what was appended: it survives a crash of the machine too."""
        if self._fd is not None:
            os.fsync(self._fd)

    def close(self) -> None:
        if self._fd is not None:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "Journal":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

