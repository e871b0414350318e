import subprocess
import sys

from chainforge import __version__


def test_version(cli):
    r = cli("--version")
    assert r.exit_code == 0 and r.stdout.strip() == f"chainforge {__version__}"


def test_python_m_and_one_line_usage_errors():
    r = subprocess.run([sys.executable, "-m", "chainforge", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and __version__ in r.stdout
    r = subprocess.run([sys.executable, "-m", "chainforge", "--no-such-flag"], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.startswith("Error: No such option: --no-such-flag") and r.stderr.count("\n") == 1


HELP_CHECK = """
import sys
from chainforge.cli import app
from typer.testing import CliRunner
commands = [c.name for c in __import__('typer').main.get_command(app).commands.values()] if hasattr(__import__('typer').main.get_command(app), 'commands') else []
for args in [["--help"]] + [[c, "--help"] for c in commands]:
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, (args, r.output)
heavy = [m for m in ("torch", "transformers", "trl", "datasets") if m in sys.modules]
print("HEAVY", heavy, "COMMANDS", commands)
"""


def test_help_does_not_import_heavy_libraries():
    r = subprocess.run([sys.executable, "-c", HELP_CHECK], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "HEAVY []" in r.stdout, r.stdout


def test_shell_completion_is_on_and_offers_the_fixed_choices(tmp_path):
    r = subprocess.run([sys.executable, "-m", "chainforge", "--help"], capture_output=True, text=True)
    assert "--install-completion" in r.stdout
    # what the shell asks when completing `chainforge reject --keep <TAB>`
    env = dict(__import__("os").environ, _CHAINFORGE_COMPLETE="complete_bash", COMP_WORDS="chainforge reject --keep ",
               COMP_CWORD="3")
    r = subprocess.run([sys.executable, "-c", "from chainforge.cli import app; app(prog_name='chainforge')"],
                       capture_output=True, text=True, env=env)
    assert set(r.stdout.split()) >= {"best", "all-passing"}, (r.stdout, r.stderr)


def test_a_long_log_line_stays_one_line_in_a_pipe():
    import subprocess
    import sys

    line = "warning: " + " ".join(f"word{i}" for i in range(60))
    r = subprocess.run([sys.executable, "-c", f"from chainforge.log import info; info({line!r})"],
                       capture_output=True, text=True, check=True)
    assert r.stderr.splitlines() == [line]


def _option_line(help_text: str, flag: str) -> str:
    """The help line that names `flag` (as click writes it: the flags, then the metavar)."""
    import re

    lines = [ln.strip() for ln in help_text.splitlines()]
    found = [ln for ln in lines if re.match(rf"(?:-\w, )?{re.escape(flag)}(?:[ ,/]|$)", ln)]
    assert len(found) == 1, (flag, found)
    return found[0]


def test_every_fixed_choice_is_shown_beside_its_option_name(cli):
    # `--backend [hf|vllm]`, where a reader looks (and where click shows an enum's choices), for every
    # Literal option and every list option with fixed item choices, in every command
    import dataclasses

    from chainforge.config import cli_flags, field_types, literal_choices
    from chainforge.stages import STAGE_MODULES, stage_module

    checked = set()
    for command in STAGE_MODULES:
        cls = stage_module(command).CONFIG
        hints = field_types(cls)
        r = cli(command, "--help", env={"COLUMNS": "200"})
        assert r.exit_code == 0, r.output
        for f in dataclasses.fields(cls):
            choices = literal_choices(hints[f.name]) or f.metadata.get("choices")
            if not choices or not f.metadata.get("cli", True):
                continue
            flag = cli_flags(f)[0].split("/")[0]
            line = _option_line(r.stdout, flag)
            assert line.startswith(f"{flag} [{'|'.join(choices)}]"), (command, line)
            assert "<str>" not in line, (command, line)
            checked.add(f.name)
    # the options named where choices were missing: all of them are Literal options that were checked
    assert {"backend", "precision", "method", "keep", "loss_type", "teacher", "expander",
            "rollout_sampler", "attn_implementation", "marker_domain"} <= checked, checked


SPIN_CHECK = """
import os, sys
import chainforge.cli as cli
os.getloadavg = lambda: (float(sys.argv[1]), 0.0, 0.0)
cli._openmp_wait()
print("SPIN", os.environ.get("GOMP_SPINCOUNT"))
import torch  # libgomp reads the variable as torch loads: the command must set it before
"""


def test_openmp_threads_stop_spinning_on_a_busy_machine_only():
    """GOMP_SPINCOUNT=1000 when the 1-minute load average is 1 or more, nothing when idle, and a value
    the user set wins (a fresh process each: torch must not be loaded yet)."""
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}

    def spin(load, **extra):
        r = subprocess.run([sys.executable, "-c", SPIN_CHECK, str(load)], capture_output=True, text=True,
                           env={**env, **extra})
        assert r.returncode == 0, r.stderr
        return r.stdout.split("SPIN ")[1].split()[0]

    assert spin(3.5) == "1000"
    assert spin(0.2) == "None"
    assert spin(3.5, GOMP_SPINCOUNT="50000") == "50000"
    assert spin(3.5, OMP_WAIT_POLICY="ACTIVE") == "None"
