"""Every shipped config loads and validates: recipes against the stages they name (configs built),
option files against their stage's config class, accelerate launcher configs as YAML."""

from pathlib import Path

import pytest
import yaml

from chainforge.stages import STAGE_MODULES, stage_module
from chainforge.stages.run import load_recipe, plan_stages

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
RECIPES = sorted(p for p in CONFIGS.glob("*.yaml") if "stages" in (yaml.safe_load(p.read_text()) or {}))
OPTION_FILES = sorted(p for p in CONFIGS.glob("*.yaml") if p not in RECIPES)


def test_there_are_configs_to_check():
    assert {p.name for p in RECIPES} >= {"demo.yaml", "qwen2.5-7b.yaml", "qwen2.5-0.5b-single-gpu.yaml"}
    assert OPTION_FILES


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_validates(path):
    recipe = load_recipe(path)
    plan = plan_stages(recipe)
    assert [s.name for s in plan] == [s["name"] for s in recipe["stages"]]
    for stage in plan:
        assert isinstance(stage.config, stage_module(stage.command).CONFIG)
        assert stage.config.output == str(stage.output)


@pytest.mark.parametrize("path", OPTION_FILES, ids=lambda p: p.name)
def test_option_file_validates(path):
    command = path.name.split("-")[0]
    assert command in STAGE_MODULES, f"{path.name}: no command '{command}' (option files are named COMMAND-*.yaml)"
    cls = stage_module(command).CONFIG
    values = cls.coerce_mapping(yaml.safe_load(path.read_text()), path.name)
    assert "output" not in values and "config" not in values


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_stages_agree_with_the_option_files_they_name(path):
    """A stage that names an option file runs with the file's values, except the keys the stage
    sets itself, and it does not repeat the file's values (copies drift)."""
    raw = yaml.safe_load(path.read_text())
    plan = {s.name: s for s in plan_stages(load_recipe(path))}
    for st in raw["stages"]:
        if "config" not in st:
            continue
        cls = stage_module(st["command"]).CONFIG
        file_values = cls.coerce_mapping(yaml.safe_load((path.parent / st["config"]).read_text()), st["config"])
        own = cls.coerce_mapping({k: v for k, v in st.items() if k not in ("name", "command", "config")}, "stage")
        config = plan[st["name"]].config
        for key, value in file_values.items():
            if key in own:
                assert own[key] != value, f"{path.name}: stage {st['name']} repeats {key} from {st['config']}"
            else:
                assert getattr(config, key) == value, (path.name, st["name"], key)


def test_the_7b_recipe_reads_its_training_options_from_the_option_files():
    raw = yaml.safe_load((CONFIGS / "qwen2.5-7b.yaml").read_text())
    named = {s["name"]: s.get("config") for s in raw["stages"] if s["command"] in ("sft", "grpo")}
    assert named and all(named.values()), named


@pytest.mark.parametrize("path", sorted((CONFIGS / "accelerate").glob("*.yaml")), ids=lambda p: p.name)
def test_accelerate_configs_parse(path):
    cfg = yaml.safe_load(path.read_text())
    assert cfg["compute_environment"] == "LOCAL_MACHINE" and "distributed_type" in cfg
