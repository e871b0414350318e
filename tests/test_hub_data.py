"""Dataset repositories (folders laid out like a hub repo) and hub ids as --data, with split/subset."""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import datasets
import pytest

from chainforge.inputs import load_rows
from chainforge.errors import UsageError

ROOT = Path(__file__).resolve().parents[1]

# GSM8K's layout: two configs, each with train and test shards, declared in the README's YAML header.
GSM8K_README = """---
license: mit
configs:
- config_name: main
  data_files:
  - split: train
    path: main/train-*
  - split: test
    path: main/test-*
- config_name: socratic
  data_files:
  - split: train
    path: socratic/train-*
  - split: test
    path: socratic/test-*
---
# Grade-school arithmetic, small
"""

SIZES = {"train": 6, "test": 3}


def rows(subset: str, split: str) -> list[dict]:
    return [{"question": f"{subset} {split} {i}: what is {i} + 1?", "answer": f"#### {i + 1}"}
            for i in range(SIZES[split])]


def write(path: Path, records: list[dict], fmt: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "parquet":
        datasets.Dataset.from_list(records).to_parquet(str(path))
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


def gsm8k_like(root: Path, fmt: str, readme: str = GSM8K_README) -> Path:
    root.mkdir(parents=True)
    (root / "README.md").write_text(readme, encoding="utf-8")
    for subset in ("main", "socratic"):
        for split in SIZES:
            write(root / subset / f"{split}-00000-of-00001.{fmt}", rows(subset, split), fmt)
    return root


@pytest.fixture(params=["parquet", "jsonl"])
def repo(request, tmp_path) -> Path:
    return gsm8k_like(tmp_path / f"gsm8k-{request.param}", request.param)


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*"))}


# ---- repositories with subsets -------------------------------------------------------------------

def test_repository_reads_the_named_subset_and_split(repo):
    train = load_rows(repo, subset="main")  # no split named: train
    assert train.column_names == ["question", "answer"]
    assert train["question"][:] == [r["question"] for r in rows("main", "train")]
    test = load_rows(repo, subset="socratic", split="test")
    assert test["question"][:] == [r["question"] for r in rows("socratic", "test")]
    assert len(load_rows(repo, subset="main", split="test", limit=2)) == 2


def test_repository_with_several_subsets_needs_one(repo):
    with pytest.raises(UsageError) as err:
        load_rows(repo)
    assert "several subsets: main, socratic" in err.value.message
    assert "--subset" in err.value.message


def test_unknown_subset_and_split_list_the_available_ones(repo):
    with pytest.raises(UsageError) as err:
        load_rows(repo, subset="Main")
    assert "no subset 'Main'" in err.value.message and "its subsets: main, socratic" in err.value.message
    with pytest.raises(UsageError) as err:
        load_rows(repo, subset="main", split="validation")
    assert "no split 'validation'" in err.value.message and "its splits: train, test" in err.value.message


def test_readme_default_config_needs_no_subset(tmp_path):
    readme = GSM8K_README.replace("- config_name: socratic", "- config_name: socratic\n  default: true")
    repo = gsm8k_like(tmp_path / "r", "jsonl", readme)
    ds = load_rows(repo, split="test")
    assert ds["question"][:] == [r["question"] for r in rows("socratic", "test")]


def test_loading_writes_nothing_into_the_folder_nor_a_cache(repo, tmp_path, monkeypatch):
    before = snapshot(repo)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    hf_cache = Path(datasets.config.HF_DATASETS_CACHE)
    cached_before = set(os.listdir(hf_cache)) if hf_cache.is_dir() else set()
    ds = load_rows(repo, subset="main", split="test")
    assert snapshot(repo) == before
    assert list(scratch.iterdir()) == []  # the conversion cache is gone
    assert (set(os.listdir(hf_cache)) if hf_cache.is_dir() else set()) == cached_before
    # The rows live in memory: nothing refers to files that were deleted.
    assert ds.cache_files == []
    assert ds.map(lambda r: {"n": len(r["question"])})["n"][0] > 0


def test_only_the_chosen_split_is_read(tmp_path):
    repo = gsm8k_like(tmp_path / "r", "jsonl")
    # A broken train shard must not stop a test-split load: only the split asked for is converted.
    (repo / "main" / "train-00000-of-00001.jsonl").write_text("{not json\n", encoding="utf-8")
    assert len(load_rows(repo, subset="main", split="test")) == SIZES["test"]
    with pytest.raises(UsageError, match=r"cannot read --data .*"):
        load_rows(repo, subset="main", split="train")


# ---- repositories without a README config ----------------------------------------------------------

def test_folder_of_data_files_picks_train_then_the_only_split(tmp_path):
    flat = tmp_path / "flat"
    write(flat / "data" / "train.jsonl", rows("main", "train"), "jsonl")
    write(flat / "data" / "test.jsonl", rows("main", "test"), "jsonl")
    assert len(load_rows(flat)) == SIZES["train"]
    assert len(load_rows(flat, split="test")) == SIZES["test"]
    with pytest.raises(UsageError, match="no subset 'main'; its subsets: default"):
        load_rows(flat, subset="main")

    only = tmp_path / "only"
    write(only / "test.parquet", rows("main", "test"), "parquet")
    assert len(load_rows(only)) == SIZES["test"]

    two = tmp_path / "two"
    write(two / "data" / "validation.jsonl", rows("main", "test"), "jsonl")
    write(two / "data" / "test.jsonl", rows("main", "test"), "jsonl")
    with pytest.raises(UsageError) as err:
        load_rows(two)
    assert "several splits" in err.value.message and "test" in err.value.message
    assert "validation" in err.value.message and "--split" in err.value.message


def test_model_and_chainforge_output_folders_are_not_repositories(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "tokenizer.json").write_text("{}")
    with pytest.raises(UsageError, match="not a dataset folder"):
        load_rows(model)
    unfinished = tmp_path / "collect-out"
    unfinished.mkdir()
    (unfinished / "chainforge.json").write_text('{"stage": "collect", "status": "running"}')
    write(unfinished / "journal.jsonl", rows("main", "test"), "jsonl")
    with pytest.raises(UsageError, match="not a dataset folder"):
        load_rows(unfinished)


# ---- save_to_disk folders and files ------------------------------------------------------------------

def test_saved_dataset_dict_takes_a_split(tmp_path):
    dd = datasets.DatasetDict({s: datasets.Dataset.from_list(rows("main", s)) for s in SIZES})
    dd.save_to_disk(str(tmp_path / "dd"))
    assert len(load_rows(tmp_path / "dd")) == SIZES["train"]
    assert len(load_rows(tmp_path / "dd", split="test")) == SIZES["test"]
    with pytest.raises(UsageError, match="no split 'dev'; its splits: train, test"):
        load_rows(tmp_path / "dd", split="dev")
    with pytest.raises(UsageError, match="--subset main: .* no subsets; drop --subset"):
        load_rows(tmp_path / "dd", subset="main")

    no_train = datasets.DatasetDict({s: datasets.Dataset.from_list(rows("main", "test"))
                                     for s in ("validation", "test")})
    no_train.save_to_disk(str(tmp_path / "no-train"))
    with pytest.raises(UsageError, match="several splits: validation, test; choose one with --split"):
        load_rows(tmp_path / "no-train")

    datasets.Dataset.from_list(rows("main", "test")).save_to_disk(str(tmp_path / "one"))
    assert len(load_rows(tmp_path / "one")) == SIZES["test"]
    with pytest.raises(UsageError, match="--split test: .* no splits; drop --split"):
        load_rows(tmp_path / "one", split="test")


def test_split_or_subset_on_a_single_file_is_refused(tmp_path):
    f = tmp_path / "d.jsonl"
    write(f, rows("main", "test"), "jsonl")
    with pytest.raises(UsageError, match="--split test: --eval-data .* is a single file"):
        load_rows(f, what="--eval-data", split="test")
    with pytest.raises(UsageError, match="--subset main: .* single file"):
        load_rows(f, subset="main")


# ---- hub ids ---------------------------------------------------------------------------------------------

def run_cli(tmp_path, *args, **env):
    environ = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    environ.update(PYTHONPATH=str(ROOT), **env)
    return subprocess.run([sys.executable, "-m", "chainforge", *map(str, args)], capture_output=True,
                          text=True, env=environ, cwd=tmp_path)


def test_hub_id_offline_with_an_empty_cache_is_exit_2(tmp_path, tiny_model):
    hf_home = tmp_path / "hf-home"
    r = run_cli(tmp_path, "eval", "--model", tiny_model, "--data", "openai/gsm8k", "--output", "out",
                HF_HUB_OFFLINE="1", HF_HOME=str(hf_home))
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    error = [line for line in r.stderr.splitlines() if line.startswith("Error:")]
    assert len(error) == 1, r.stderr
    assert "--data openai/gsm8k" in error[0] and "needs network access" in error[0]
    assert "HF cache" in error[0] and "--local-dir DIR" in error[0] and "--data DIR" in error[0]
    assert not (tmp_path / "out").exists()


def test_repository_folder_through_a_stage(cli, tiny_model, tmp_path):
    repo = tmp_path / "questions"
    write(repo / "data" / "train.jsonl", [{"prompt": f"Add {i} and 2.", "answer": str(i + 2)}
                                          for i in range(4)], "jsonl")
    write(repo / "data" / "test.jsonl", [{"prompt": "Add 1 and 2.", "answer": "3"}], "jsonl")
    r = cli("eval", "--model", tiny_model, "--data", repo, "--output", tmp_path / "ev",
            "--max-new-tokens", 4, "--num-samples", 1, "--temperature", 0)
    assert r.exit_code == 0, r.output
    results = [json.loads(line) for line in (tmp_path / "ev" / "results.jsonl").read_text().splitlines()]
    assert sorted(r["prompt"] for r in results) == [f"Add {i} and 2." for i in range(4)]  # train split
    assert sorted(os.listdir(repo)) == ["data"]  # nothing written next to the data


# What an earlier online `load_dataset("openai/gsm8k", subset)` leaves in the HF cache: the prepared
# Arrow files under <namespace>___<name>/<subset>/<version>/<hash>. Built here from a local copy of
# the repository (named like the hub one), then read back by hub id with the hub unreachable.
CACHED_HUB = """
import json, os, shutil, sys
import datasets
from chainforge.inputs import load_rows
from chainforge.errors import UsageError

repo, cache = sys.argv[1], datasets.config.HF_DATASETS_CACHE
for subset in ("main", "socratic"):
    datasets.load_dataset_builder(repo, subset).download_and_prepare()
shutil.move(os.path.join(cache, os.path.basename(repo)), os.path.join(cache, "openai___gsm8k"))
out = {}
for name, kwargs in [("main-test", {"subset": "main", "split": "test"}), ("socratic", {"subset": "socratic"}),
                     ("no-subset", {}), ("bad-subset", {"subset": "nope"}),
                     ("bad-split", {"subset": "main", "split": "validation"})]:
    try:
        out[name] = load_rows("openai/gsm8k", **kwargs)["question"][:]
    except UsageError as exc:
        out[name] = "Error: " + exc.message
print(json.dumps(out))
"""


def test_hub_id_loads_offline_from_the_hf_cache(tmp_path):
    repo = gsm8k_like(tmp_path / "gsm8k", "parquet")
    environ = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    environ.update(PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    r = subprocess.run([sys.executable, "-c", CACHED_HUB, str(repo)], capture_output=True, text=True,
                       env=environ, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["main-test"] == [row["question"] for row in rows("main", "test")]
    assert out["socratic"] == [row["question"] for row in rows("socratic", "train")]
    for case in ("no-subset", "bad-subset"):
        assert out[case].startswith("Error: --data openai/gsm8k: "), out[case]
        assert "main" in out[case] and "socratic" in out[case] and "--subset NAME" in out[case]
    assert out["bad-split"] == ("Error: --data openai/gsm8k has no split 'validation'; its splits: "
                                "train, test (pass --split NAME)")
