"""Every shipped config loads and validates: recipes against the commands they name, option files
against their command's options, accelerate launcher configs as YAML."""

from pathlib import Path

import pytest
import yaml

from chainforge.config import coerce_value
from chainforge.stages.run import _hints, command_params, load_recipe, plan_stages

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
        assert "--output" in stage.args


@pytest.mark.parametrize("path", OPTION_FILES, ids=lambda p: p.name)
def test_option_file_validates(path):
    command = path.name.split("-")[0]
    params, hints = command_params(command), _hints(command)
    assert params, f"{path.name}: no command '{command}' (option files are named COMMAND-*.yaml)"
    for key, value in yaml.safe_load(path.read_text()).items():
        assert key in params and key not in ("output", "config"), f"{path.name}: unknown key {key}"
        coerce_value(key, value, hints.get(key, str), params[key], path.name)


@pytest.mark.parametrize("path", sorted((CONFIGS / "accelerate").glob("*.yaml")), ids=lambda p: p.name)
def test_accelerate_configs_parse(path):
    cfg = yaml.safe_load(path.read_text())
    assert cfg["compute_environment"] == "LOCAL_MACHINE" and "distributed_type" in cfg
