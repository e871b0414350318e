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
