"""The typed configs: one definition per option, read by --help, --config, recipes, the manifest and
the stage alike. Checked through the real CLI and the config classes themselves."""

import dataclasses

import pytest
import typer

from chainforge.cli import app
from chainforge.config import REDACTED, config_differences
from chainforge.errors import UsageError
from chainforge.stages import STAGE_MODULES, stage_module


def configs():
    return [(command, stage_module(command).CONFIG) for command in STAGE_MODULES]


def test_every_cli_option_default_is_its_config_default_and_is_in_help(cli):
    group = typer.main.get_command(app)
    for command, cls in configs():
        params = {p.name: p for p in group.commands[command].params}
        fields = {f.name: f for f in dataclasses.fields(cls)}
        assert set(params) - {"config"} == set(fields), command
        help_text = cli(command, "--help").stdout
        for name, f in fields.items():
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            assert params[name].default == default, (command, name)
            assert params[name].opts[0] in help_text, (command, name)
            assert f.metadata.get("help"), (command, name)  # every option says what it does


def test_zero_is_a_value_not_unset(tiny_model, tmp_path):
    """`--learning-rate 0` reaches the trainer as 0 (it used to become the default)."""
    from trl import SFTConfig

    from chainforge import training
    from chainforge.stages.sft import SftConfig

    cfg = SftConfig(model=str(tiny_model), data="d", output=str(tmp_path / "o"), learning_rate=0, warmup_ratio=0)
    assert cfg.learning_rate == 0.0
    args = training.trainer_args(cfg, tmp_path / "o", SFTConfig, report_to=[])
    assert args.learning_rate == 0.0 and args.warmup_steps == 0


@pytest.mark.parametrize("flag", [False, True])
def test_checkpointing_reaches_the_trainer_by_its_current_name_without_a_warning(tiny_model, tmp_path, flag):
    """--gradient-checkpointing sets transformers' `activation_checkpointing` (its old name,
    `gradient_checkpointing`, warns of its removal on every run) and the old name mirrors it."""
    import warnings

    from trl import GRPOConfig, SFTConfig

    from chainforge import training
    from chainforge.stages.sft import SftConfig

    cfg = SftConfig(model=str(tiny_model), data="d", output=str(tmp_path / "o"), gradient_checkpointing=flag)
    for config_class in (SFTConfig, GRPOConfig):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            args = training.trainer_args(cfg, tmp_path / "o", config_class, report_to=[])
        assert [str(w.message) for w in caught if "checkpointing" in str(w.message)] == []
        assert args.activation_checkpointing is flag and args.gradient_checkpointing is flag


def test_config_checks_types_bounds_choices_and_required():
    from chainforge.stages.reject import RejectConfig

    ok = dict(model="m", data="d", output="o")
    for bad, needle in [
        ({"num_samples": 0}, "--num-samples must be at least 1"),
        ({"top_p": 0.0}, "--top-p must be above 0"),
        ({"keep": "some"}, "--keep 'some' is not one of best, all-passing"),
        ({"backend": "tpu"}, "--backend 'tpu' is not one of hf, vllm"),
        ({"num_samples": "8"}, "--num-samples expects int"),
        ({"model": None}, "missing --model"),
    ]:
        with pytest.raises(UsageError) as err:
            RejectConfig(**{**ok, **bad})
        assert needle in err.value.message, (bad, err.value.message)
    assert RejectConfig(**ok, min_reward=1).min_reward == 1.0  # an int where a float is expected widens


def test_redaction_masks_secret_keys_and_leaves_config_out():
    @dataclasses.dataclass(kw_only=True)
    class WithSecrets(stage_module("eval").CONFIG):
        api_key: str = "sk-123"
        hf_token: str = "t"

    red = WithSecrets(model="m", data="d", output="o").redacted()
    assert red["api_key"] == REDACTED and red["hf_token"] == REDACTED
    assert red["model"] == "m" and red["max_new_tokens"] == 512 and "config" not in red


def test_config_differences_names_changed_options():
    assert config_differences({"a": 1, "b": 2, "overwrite": False}, {"a": 1, "b": 3, "overwrite": True}) == ["b"]
    assert config_differences({"a": 1, "c": 1}, {"a": 1, "c": 2}, ignore=["c"]) == []


# ---- --config files, through the real command --------------------------------------------------------

def _eval(cli, tmp_path, body, *args):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(body)
    return cli("eval", "--config", cfg, "--data", tmp_path / "missing.jsonl", "--output", tmp_path / "o", *args)


def test_file_values_apply_and_the_command_line_wins(cli, tmp_path, monkeypatch):
    seen = {}

    def fake_run(config):
        seen["config"] = config

    monkeypatch.setattr(stage_module("eval"), "run", fake_run)
    r = _eval(cli, tmp_path, "model: m\nlimit: 5\nseed: 3\ntemperature: 1\ncustom-rewards: false\n"
                             "top_p: 0.5\n", "--seed", "9")
    assert r.exit_code == 0, r.output
    cfg = seen["config"]
    assert (cfg.limit, cfg.seed, cfg.temperature, cfg.custom_rewards, cfg.top_p) == (5, 9, 1.0, False, 0.5)
    assert cfg.num_samples == 4  # untouched options keep the config's default


@pytest.mark.parametrize("body,needle", [
    ("bogus: 1\n", "unknown key 'bogus'"),
    ("limit: many\n", "key 'limit' expects int"),
    ("limit: 0\n", "key 'limit' must be at least 1"),
    ("temperature: -1\n", "key 'temperature' must be at least 0.0"),
    ("top_p: 2\n", "key 'top_p' must be at most 1.0"),
    ("overwrite: 3\n", "key 'overwrite' expects bool"),
    ("seed: true\n", "key 'seed' expects int, got a boolean"),
    ("model: [a, b]\n", "key 'model' expects str"),
    ("keep: x\n", "unknown key 'keep'"),
    ("backend: tpu\n", "key 'backend' 'tpu' is not one of hf, vllm"),
    ("limit: 1\n  seed: [\n", "malformed YAML"),
    ("- a\n- b\n", "must be a mapping"),
])
def test_bad_config_files_are_one_line_errors(cli, tmp_path, body, needle):
    r = _eval(cli, tmp_path, body)
    assert r.exit_code == 2
    assert needle in r.stderr, r.stderr
    assert r.stderr.startswith("Error: ") and r.stderr.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_malformed_yaml_names_the_line(cli, tmp_path):
    r = _eval(cli, tmp_path, "limit: 1\nseed: 2\nmodel: [unclosed\n")
    assert r.exit_code == 2 and "line 4" in r.stderr


def test_missing_and_unreadable_config_files(cli, tmp_path):
    r = cli("eval", "--config", tmp_path / "nope.yaml")
    assert r.exit_code == 2 and "config file not found" in r.stderr
    cfg = tmp_path / "c.yaml"
    cfg.write_bytes(b"limit: \xff\xfe\n")
    r = cli("eval", "--config", cfg)
    assert r.exit_code == 2 and "cannot read config" in r.stderr


def test_choices_are_listed_in_help(cli):
    assert "[best|all-passing]" in cli("reject", "--help").stdout
    assert "[traces|logits]" in cli("distill", "--help").stdout
    assert "[deepseek|openai|local]" in cli("collect", "--help").stdout


def test_the_options_page_is_generated_from_the_configs():
    """docs/options.md is what scripts/options_doc.py writes from the config classes today."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, str(root / "scripts" / "options_doc.py"), "--check"], capture_output=True,
                       text=True, env={**__import__("os").environ, "PYTHONPATH": str(root)})
    assert r.returncode == 0, r.stderr
