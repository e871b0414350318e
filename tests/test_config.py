"""--config merging on a real Typer command built from the shared option declarations."""

from typing import Annotated, Optional

import pytest
import typer
from typer.testing import CliRunner

from chainforge.config import (
    REDACTED, ConfigFile, Limit, Options, Seed, Temperature, config_differences, resolve_options,
)
from chainforge.errors import UsageError

app = typer.Typer()
seen: dict = {}


@app.command()
def stage(
    ctx: typer.Context,
    limit: Limit = None,
    seed: Seed = 0,
    temperature: Temperature = None,
    name: Annotated[str, typer.Option("--name")] = "default",
    greedy: Annotated[bool, typer.Option("--greedy/--no-greedy")] = False,
    rewards: Annotated[Optional[list[str]], typer.Option("--rewards")] = None,
    ratio: Annotated[float, typer.Option("--ratio", min=0.0, max=1.0)] = 0.5,
    config: ConfigFile = None,
):
    try:
        seen.clear()
        seen.update(resolve_options(ctx, locals()))
    except UsageError as exc:
        typer.echo(f"Error: {exc.message}", err=True)
        raise typer.Exit(2)


def run(*args):
    return CliRunner().invoke(app, list(args))


def test_file_values_apply_and_the_command_line_wins(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("limit: 5\nseed: 3\nname: from-file\ngreedy: true\ntemperature: 1\nrewards: [accuracy, format]\n")
    r = run("--config", str(cfg), "--seed", "9")
    assert r.exit_code == 0, r.output
    assert seen["limit"] == 5 and seen["seed"] == 9 and seen["name"] == "from-file"
    assert seen["greedy"] is True and seen["temperature"] == 1.0
    assert seen["rewards"] == ["accuracy", "format"]


def test_dashed_keys_are_accepted(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("limit: 2\n")
    assert run("--config", str(cfg)).exit_code == 0 and seen["limit"] == 2


@pytest.mark.parametrize("body,needle", [
    ("bogus: 1\n", "unknown key 'bogus'"),
    ("limit: many\n", "key 'limit' expects int"),
    ("limit: 0\n", "key 'limit' must be at least 1"),
    ("temperature: -1\n", "key 'temperature' must be at least 0.0"),
    ("ratio: 2\n", "key 'ratio' must be at most 1.0"),
    ("greedy: 3\n", "key 'greedy' expects bool"),
    ("seed: true\n", "key 'seed' expects int, got a boolean"),
    ("name: [a, b]\n", "key 'name' expects str"),
    ("limit: 1\n  seed: [\n", "malformed YAML"),
    ("- a\n- b\n", "must be a mapping"),
])
def test_bad_config_files_are_one_line_errors(tmp_path, body, needle):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(body)
    r = run("--config", str(cfg))
    assert r.exit_code == 2
    assert needle in r.stderr
    assert r.stderr.startswith("Error: ") and r.stderr.count("\n") == 1


def test_malformed_yaml_names_the_line(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("limit: 1\nseed: 2\nname: [unclosed\n")
    r = run("--config", str(cfg))
    assert r.exit_code == 2 and "line 4" in r.stderr


def test_missing_config_file(tmp_path):
    r = run("--config", str(tmp_path / "nope.yaml"))
    assert r.exit_code == 2 and "config file not found" in r.stderr


def test_redaction_masks_secret_keys():
    opts = Options(api_key="sk-123", hf_token="t", client_secret="s", model="m", config="x.yaml")
    red = opts.redacted()
    assert red["api_key"] == REDACTED and red["hf_token"] == REDACTED and red["client_secret"] == REDACTED
    assert red["model"] == "m" and "config" not in red


def test_config_differences_names_changed_options():
    assert config_differences({"a": 1, "b": 2, "overwrite": False}, {"a": 1, "b": 3, "overwrite": True}) == ["b"]
    assert config_differences({"a": 1, "c": 1}, {"a": 1, "c": 2}, ignore=["c"]) == []


def test_options_require():
    with pytest.raises(UsageError, match="missing --model"):
        Options(model=None).require("model")


def test_unreadable_config_file(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_bytes(b"limit: \xff\xfe\n")
    r = run("--config", str(cfg))
    assert r.exit_code == 2 and "cannot read config" in r.stderr
