"""The chainforge-r1 wheel works outside the checkout: built from the source tree, installed into a
fresh venv in a temporary folder (the dev venv's libraries visible, nothing downloaded), then run
from a folder that is not the checkout. Also: packaged recipes by name, `chainforge init`."""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers.files import read_toml

ROOT = Path(__file__).resolve().parent.parent


def _build_wheel(tmp: Path) -> Path:
    # From a copy of the tracked sources, so the build neither reads nor leaves anything else in
    # the checkout (build/, *.egg-info).
    src = tmp / "src"
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        src.mkdir(exist_ok=True)
        shutil.copy(ROOT / name, src / name)
    for name in ("chainforge", "configs", "data"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp / "dist"
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(out), str(src)], capture_output=True, text=True, cwd=tmp)
    assert r.returncode == 0, r.stderr
    (wheel,) = out.glob("chainforge_r1-*.whl")
    return wheel


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A venv holding only the wheel; the dev venv's site-packages are appended to its path by a .pth
    line (which adds the folder but runs none of its own .pth files, so the dev checkout's editable
    chainforge stays invisible)."""
    tmp = tmp_path_factory.mktemp("wheel")
    wheel = _build_wheel(tmp)
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    purelib = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  capture_output=True, text=True, check=True).stdout.strip())
    (purelib / "dev-venv.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    r = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "-q", str(wheel)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env['PATH']}"
    work = tmp / "work"
    work.mkdir()
    env["CHAINFORGE_HOME"] = str(tmp / "home")
    return {"venv": venv, "purelib": purelib, "env": env, "work": work, "wheel": wheel}


def _chainforge(installed, *args, cwd=None):
    return subprocess.run([str(installed["venv"] / "bin" / "chainforge"), *map(str, args)], capture_output=True,
                          text=True, cwd=cwd or installed["work"], env=installed["env"])


def test_wheel_contents_and_name(installed):
    import zipfile

    names = zipfile.ZipFile(installed["wheel"]).namelist()
    for shipped in ("chainforge/share/configs/demo.yaml", "chainforge/share/configs/sft-cpu-small.yaml",
                    "chainforge/share/configs/accelerate/zero3.yaml", "chainforge/share/data/toy/train.jsonl",
                    "chainforge/share/data/toy/test.jsonl"):
        assert shipped in names
    # every recipe, option file and task file in the checkout ships (the globs are generic)
    for path in list((ROOT / "configs").rglob("*.yaml")) + list((ROOT / "data").rglob("*.jsonl")):
        assert f"chainforge/share/{path.relative_to(ROOT)}" in names
    meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
    text = zipfile.ZipFile(installed["wheel"]).read(meta).decode()
    assert "Name: chainforge-r1" in text
    assert any(n.endswith("licenses/LICENSE") for n in names)


def test_installed_command_runs_from_the_wheel_not_the_checkout(installed):
    r = _chainforge(installed, "--version")
    assert r.returncode == 0, r.stderr
    import chainforge

    assert r.stdout.strip() == f"chainforge {chainforge.__version__}"
    py = installed["venv"] / "bin" / "python"
    where = subprocess.run([str(py), "-c", "import chainforge, importlib.metadata as m; "
                            "print(chainforge.__file__); print(m.version('chainforge-r1'))"],
                           capture_output=True, text=True, cwd=installed["work"], env=installed["env"])
    path, version = where.stdout.split()
    assert Path(path).is_relative_to(installed["purelib"]) and version == chainforge.__version__


def test_installed_run_resolves_packaged_recipe_by_name(installed):
    # An unknown --until lists the packaged demo's stages: the recipe was found by name, loaded and
    # every stage's config built from the packaged copies.
    r = _chainforge(installed, "run", "demo", "--until", "no-such-stage")
    assert r.returncode == 2, r.stderr
    assert "no such stage; stages: eval-base, collect" in r.stderr
    r = _chainforge(installed, "run", "no-such-recipe")
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert "recipe not found: no-such-recipe" in r.stderr and "demo" in r.stderr
    assert not (installed["work"] / "runs").exists()


def test_installed_init_writes_editable_copies_and_refuses_to_overwrite(installed):
    r = _chainforge(installed, "init", "proj")
    assert r.returncode == 0, r.stderr
    proj = installed["work"] / "proj"
    assert (proj / "configs" / "demo.yaml").read_text() == (ROOT / "configs" / "demo.yaml").read_text()
    assert (proj / "data" / "toy" / "train.jsonl").read_bytes() == (ROOT / "data" / "toy" / "train.jsonl").read_bytes()
    assert (proj / "configs" / "accelerate" / "ddp.yaml").is_file()
    recipe = yaml.safe_load((proj / "configs" / "demo.yaml").read_text())
    assert (proj / recipe["prompts"]).is_file() and (proj / recipe["eval_data"]).is_file()
    # the copy is the recipe `run configs/demo.yaml` reads from proj (its stage list, exit 2 on a bad --until)
    r = _chainforge(installed, "run", "configs/demo.yaml", "--until", "nope", cwd=proj)
    assert r.returncode == 2 and "stages: eval-base" in r.stderr
    # a second init: exit 2 naming a clash; an edited file stays as the user left it
    (proj / "configs" / "demo.yaml").write_text("# mine\n")
    r = _chainforge(installed, "init", "proj")
    assert r.returncode == 2 and r.stderr.startswith("Error: init proj: would overwrite")
    assert "demo.yaml" in r.stderr and r.stderr.count("\n") == 1
    assert (proj / "configs" / "demo.yaml").read_text() == "# mine\n"
    # one clash means nothing is written: a new folder with one file in the way stays as it was
    other = installed["work"] / "other"
    (other / "data" / "toy").mkdir(parents=True)
    (other / "data" / "toy" / "test.jsonl").write_text("{}\n")
    r = _chainforge(installed, "init", "other")
    assert r.returncode == 2 and "other/data/toy/test.jsonl" in r.stderr
    assert sorted(p.relative_to(other).as_posix() for p in other.rglob("*") if p.is_file()) == ["data/toy/test.jsonl"]
    (installed["work"] / "afile").write_text("x")
    r = _chainforge(installed, "init", "afile")
    assert r.returncode == 2 and "not a folder" in r.stderr


@pytest.mark.slow
def test_installed_demo_first_stage_reads_the_packaged_task(installed):
    """`chainforge run demo --until eval-base` from the wheel: SmolLM2 on the packaged held-out split
    (minutes on 2 CPU cores, hence slow)."""
    r = _chainforge(installed, "run", "demo", "--until", "eval-base")
    assert r.returncode == 0, r.stderr[-3000:]
    out = installed["work"] / "runs" / "demo" / "00-eval-base"  # run_dir stays relative to the cwd
    manifest = json.loads((out / "chainforge.json").read_text())
    data = Path(manifest["config"]["data"])
    assert data.is_relative_to(installed["purelib"]) and data.as_posix().endswith("chainforge/share/data/toy/test.jsonl")
    # the demo scores every held-out question of the packaged split (100)
    assert len((out / "results.jsonl").read_text().splitlines()) == len(data.read_text().splitlines()) == 100


def test_package_list_covers_every_code_package():
    """pyproject lists the packages by hand (the share/ mapping needs it): a new subpackage must be
    added there, or the wheel would lack it."""
    listed = set(read_toml(ROOT / "pyproject.toml")["tool"]["setuptools"]["packages"])
    code = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "chainforge").rglob("__init__.py")}
    assert code <= listed, f"add to pyproject.toml [tool.setuptools] packages: {sorted(code - listed)}"


def test_packaged_recipe_paths_anchor_to_the_shipped_copies(tmp_path, monkeypatch):
    """In the checkout the shipped root is the repository: `run demo` from another folder reads
    data/toy from there, keeps run_dir under the cwd, and leaves hub ids alone."""
    from chainforge.packaged import anchor_paths, find_recipe, recipe_names
    from chainforge.stages.run import load_recipe, plan_run

    monkeypatch.chdir(tmp_path)
    assert {"demo", "qwen2.5-7b"} <= set(recipe_names()) and "sft-cpu-small" not in recipe_names()
    path, root = find_recipe("demo")
    assert root == ROOT and path == ROOT / "configs" / "demo.yaml"
    assert find_recipe("demo.yaml")[1] == ROOT
    spec = load_recipe(path)
    spec["stages"][0]["data"] = "openai/gsm8k"
    anchor_paths(spec, root)
    assert spec["prompts"] == str(ROOT / "data" / "toy" / "train.jsonl")
    assert spec["stages"][0]["data"] == "openai/gsm8k"
    spec["decontaminate"] = True  # the shipped toy recipes turn it off (their splits are disjoint by construction)
    plan, clean = plan_run(spec)
    assert plan[0].output == tmp_path / "runs" / "demo" / "00-eval-base"
    # the packaged prompts are decontaminated against the packaged eval set, and the eval stage's own
    # data, before collect reads them
    assert clean.config.data == str(ROOT / "data" / "toy" / "train.jsonl")
    assert clean.config.against == [str(ROOT / "data" / "toy" / "test.jsonl") + ":column=prompt",
                                    "openai/gsm8k:column=prompt"]
    assert plan[1].config.prompts == str(clean.output) and clean.output.parent == tmp_path / "runs" / "demo"
    # a file of that name in the cwd wins over the packaged recipe
    (tmp_path / "demo").write_text("run_dir: x\n")
    assert find_recipe("demo") == (Path("demo"), None)
