"""Driving the CLI in tests: the in-process runner and the one check for a refused command."""

from __future__ import annotations

from pathlib import Path
from typing import Optional


class CLI:
    """Run `chainforge ARGS` in-process; returns typer's Result (exit_code, stdout, stderr)."""

    def __call__(self, *args, env=None):
        from typer.testing import CliRunner

        from chainforge.cli import app

        result = CliRunner().invoke(app, [str(a) for a in args], env=env, catch_exceptions=True)
        if result.exception and not isinstance(result.exception, SystemExit):
            import traceback

            traceback.print_exception(result.exception)
        return result


def assert_exit_2(r, *fragments: str, output: Optional[Path] = None, alone: bool = True) -> str:
    """A refused command: exit 2, exactly one `Error:` line, last, holding every fragment, no
    traceback, and nothing created at `output`. `alone`: that line is the whole of stderr (False:
    messages printed before the check failed, such as data loading, may come first). Takes typer's
    Result or a CompletedProcess; returns the error line."""
    code = r.exit_code if hasattr(r, "exit_code") else r.returncode
    assert code == 2, (code, r.stdout, r.stderr)
    errors = [line for line in r.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, r.stderr
    assert r.stderr.strip().splitlines()[-1] == errors[0], r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    if alone:
        assert r.stderr == errors[0] + "\n", r.stderr
    for fragment in fragments:
        assert fragment in errors[0], (fragment, r.stderr)
    if output is not None:
        assert not Path(output).exists(), f"{output} was created"
    return errors[0]


def sigint_default() -> None:
    """`preexec_fn` for a child the test interrupts with SIGINT: a suite started in the background
    (`cmd &` in a non-interactive shell) inherits SIGINT ignored, and Python keeps it ignored, so the
    child would never see the signal."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
