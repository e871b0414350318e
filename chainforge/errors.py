"""The few failures a user sees. The CLI turns each into one line and an exit code.

- `UsageError` (exit 2): bad input or usage. Raised before `--output` is created; the message says
  what is wrong and how to fix it.
- `RunFailed` (exit 1): the work stopped while running; what was finished is kept and the same
  command resumes.
- `Interrupted` (exit 130): Ctrl-C; work kept, the same command resumes.
"""

from __future__ import annotations


class ChainforgeError(Exception):
    exit_code = 1

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class UsageError(ChainforgeError):
    exit_code = 2


class RunFailed(ChainforgeError):
    exit_code = 1


class Interrupted(ChainforgeError):
    exit_code = 130
