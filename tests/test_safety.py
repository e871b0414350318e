"""Losing nothing: what --overwrite may remove, one writer per output, torn checkpoints.

Real folders on disk, real processes (the lock must hold between two of them), the real
`chainforge` command, and real SFTTrainer checkpoints on the tiny model.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest

from chainforge.config import Options
from chainforge.outputs import LOCK, MANIFEST, plan_output, read_manifest
from chainforge.errors import UsageError
from helpers.files import write_jsonl
from helpers.fake_apis import FakeDeepSeek

ROOT = Path(__file__).parent.parent


def snapshot(folder: Path) -> dict:
    """Every file under `folder` with the hash of its bytes: equal snapshots, nothing touched."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def opts(**kw) -> Options:
    return Options(overwrite=False, config=None, **kw)


def chainforge_output(folder: Path, stage: str = "sft") -> Path:
    """A finished output that chainforge itself made (manifest written by StageOutput)."""
    plan_output(str(folder), stage, opts()).create().finish({})
    (folder / "model.safetensors").write_bytes(b"weights")
    return folder


# ---- --overwrite replaces only what chainforge made ---------------------------------------------------

def test_overwrite_refuses_a_folder_chainforge_did_not_make(tmp_path):
    mine = tmp_path / "thesis"
    mine.mkdir()
    (mine / "chapter1.tex").write_text("months of work")
    (mine / "figures").mkdir()
    (mine / "figures" / "plot.png").write_bytes(b"\x89PNG")
    before = snapshot(mine)
    with pytest.raises(UsageError) as err:
        plan_output(str(mine), "sft", opts(), overwrite=True)
    assert "not a chainforge output" in str(err.value)
    assert "--overwrite" not in str(err.value)  # never suggested for a folder that is not ours
    # without --overwrite: the same refusal, and it does not suggest --overwrite either
    with pytest.raises(UsageError) as err:
        plan_output(str(mine), "sft", opts())
    assert "--overwrite" not in str(err.value)
    assert snapshot(mine) == before and not (mine / LOCK).exists()


def test_overwrite_refuses_a_manifest_chainforge_did_not_write(tmp_path):
    forged = tmp_path / "forged"
    forged.mkdir()
    (forged / MANIFEST).write_text(json.dumps({"stage": "sft", "status": "complete"}))
    (forged / "data.csv").write_text("a,b\n1,2\n")
    edited = chainforge_output(tmp_path / "edited")
    manifest = read_manifest(edited)
    manifest["stage"] = "grpo"  # hand-edited after the fact: the fingerprint no longer matches
    (edited / MANIFEST).write_text(json.dumps(manifest))
    for folder in (forged, edited):
        before = snapshot(folder)
        with pytest.raises(UsageError, match="chainforge did not write") as err:
            plan_output(str(folder), "sft", opts(), overwrite=True)
        assert "--overwrite" not in str(err.value)
        assert snapshot(folder) == before


def test_overwrite_replaces_an_output_chainforge_made(tmp_path):
    out = chainforge_output(tmp_path / "out")
    plan = plan_output(str(out), "sft", opts(), overwrite=True)
    assert plan.mode == "overwrite" and (out / "model.safetensors").exists()  # planning removes nothing
    plan.create()
    assert not (out / "model.safetensors").exists() and read_manifest(out)["status"] == "running"


@pytest.mark.parametrize("where", ["cwd", "parent", "home", "root"])
def test_overwrite_never_removes_cwd_its_parents_home_or_root(where, tmp_path, monkeypatch):
    home = tmp_path / "home"
    cwd = home / "project" / "work"
    cwd.mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    # Each holds a manifest chainforge wrote, so only the location itself is the reason to refuse.
    made = chainforge_output(tmp_path / "made")
    target = {"cwd": ".", "parent": "..", "home": str(home), "root": "/"}[where]
    if where != "root":
        shutil.copy(made / MANIFEST, Path(target) / MANIFEST)
    before = snapshot(home)
    with pytest.raises(UsageError, match="--overwrite never removes it") as err:
        plan_output(target, "sft", opts(), overwrite=True)
    assert {"cwd": "current directory", "parent": "parent of the current directory",
            "home": "home directory", "root": "filesystem root"}[where] in str(err.value)
    assert snapshot(home) == before


def test_a_deleted_working_directory_is_a_clear_error(tmp_path, monkeypatch):
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    with pytest.raises(UsageError, match="current directory no longer exists"):
        plan_output("out", "sft", opts(), overwrite=True)


@dataclass
class TypedConfig:
    """A typed options object (a dataclass, not a dict): plan_output reads it with getattr only."""

    output: str
    model: Optional[str] = None
    data: Optional[str] = None
    compare: Optional[list] = None
    overwrite: bool = False

    def redacted(self) -> dict:
        return {"model": self.model, "data": self.data, "compare": self.compare}


@pytest.mark.parametrize("option", ["model", "data", "prompts", "teacher", "student", "compare",
                                    "eval_data", "teacher_model"])
@pytest.mark.parametrize("relation", ["is", "contains", "lies inside"])
def test_an_output_that_is_holds_or_lies_inside_an_input_is_refused(option, relation, tmp_path):
    inp = chainforge_output(tmp_path / "inputs" / "model")
    out = {"is": inp, "contains": inp.parent, "lies inside": inp / "sub"}[relation]
    before = snapshot(tmp_path)
    for overwrite in (True, False):
        with pytest.raises(UsageError, match=f"{relation} the --{option.replace('_', '-')} input"):
            plan_output(str(out), "eval", opts(**{option: str(inp)}), overwrite=overwrite)
    assert snapshot(tmp_path) == before
    assert not (tmp_path / "inputs" / "model" / "sub").exists()


def test_inputs_are_read_from_a_typed_config_and_lists_of_paths(tmp_path):
    model, data = tmp_path / "m", tmp_path / "d.jsonl"
    model.mkdir()
    data.write_text("{}\n")
    with pytest.raises(UsageError, match="lies inside the --model input"):
        plan_output(str(model / "eval"), "eval", TypedConfig(output="x", model=str(model)), overwrite=True)
    with pytest.raises(UsageError, match="contains the --compare input"):
        plan_output(str(tmp_path), "eval", TypedConfig(output="x", compare=[str(tmp_path / "none"), str(model)]))
    # a hub id is not a path here: no refusal, and nothing is created by planning
    plan = plan_output(str(tmp_path / "out"), "eval", TypedConfig(output="x", model="Qwen/Qwen2.5-0.5B",
                                                                  data=str(data)))
    assert plan.mode == "new" and not (tmp_path / "out").exists()


def test_cli_eval_with_output_equal_to_model_and_overwrite_leaves_the_model_intact(cli, tiny_model, tmp_path):
    """The case that deleted a model: eval --model X --output X --overwrite."""
    model = tmp_path / "X"
    shutil.copytree(tiny_model, model)
    chainforge_output(tmp_path / "made")  # borrow a genuine manifest so that X looks like an sft output
    shutil.copy(tmp_path / "made" / MANIFEST, model / MANIFEST)
    data = write_jsonl(tmp_path / "q.jsonl", [{"prompt": "What is 2 + 3?", "answer": "5"}])
    before = snapshot(model)
    r = cli("eval", "--model", model, "--data", data, "--output", model, "--overwrite")
    assert r.exit_code == 2, r.stderr
    assert "is the --model input" in r.stderr and "Traceback" not in r.stderr
    assert snapshot(model) == before


def test_cli_overwrite_of_the_current_directory_is_refused(cli, tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("mine")
    shutil.copy(chainforge_output(tmp_path / "made") / MANIFEST, work / MANIFEST)
    data = write_jsonl(tmp_path / "train.jsonl", [{"prompt": "p", "answer": "a"}])
    monkeypatch.chdir(work)
    before = snapshot(work)
    r = cli("sft", "--model", "x/y", "--data", data, "--output", ".", "--overwrite")
    assert r.exit_code == 2
    assert "is the current directory; --overwrite never removes it" in r.stderr, r.stderr
    assert snapshot(work) == before


# ---- one writer per output ----------------------------------------------------------------------------

N = 24


class GatedDeepSeek(FakeDeepSeek):
    """Answers the first `free` requests, then holds every other one until `gate` is set: the
    first run is certainly still writing while the test starts a second one."""

    def __init__(self, free: int = 2, **kw):
        super().__init__(**kw)
        self.free, self.gate = free, threading.Event()

    async def _respond(self, *args):
        if args[0] == "GET":  # the preflight's model list is never held
            return await super()._respond(*args)
        if self.free > 0:
            self.free -= 1
        else:
            while not self.gate.is_set():
                await asyncio.sleep(0.01)
        return await super()._respond(*args)


def collect(tmp_path: Path, server: FakeDeepSeek, out: Path, *extra: str) -> subprocess.Popen:
    prompts = tmp_path / "prompts.jsonl"
    if not prompts.exists():
        write_jsonl(prompts, [{"prompt": f"P{i}: what is 6 times 7?", "answer": "42"} for i in range(N)])
    env = dict(os.environ, DEEPSEEK_API_KEY=server.api_key, DEEPSEEK_BASE_URL=server.url, PYTHONPATH=str(ROOT))
    env.pop("ANTHROPIC_API_KEY", None)
    return subprocess.Popen([sys.executable, "-m", "chainforge", "collect", "--prompts", str(prompts),
                             "--output", str(out), "--concurrency", "2", *extra],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_rows(out: Path, n: int, proc: subprocess.Popen) -> None:
    journal = out / "journal.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        if journal.exists() and journal.read_text().count("\n") >= n:
            return
        time.sleep(0.02)
    raise AssertionError("the journal did not grow")


def test_a_second_process_on_an_output_in_use_exits_2_and_the_first_finishes(tmp_path):
    from datasets import load_from_disk

    with GatedDeepSeek() as server:
        out = tmp_path / "out"
        first = collect(tmp_path, server, out)
        wait_for_rows(out, 2, first)
        for extra in ((), ("--overwrite",)):  # --overwrite does not take a folder that is in use either
            second = collect(tmp_path, server, out, *extra)
            _, stderr = second.communicate(timeout=120)
            assert second.returncode == 2, stderr
            assert f"{out} is in use by chainforge (pid {first.pid})" in stderr
            assert "Traceback" not in stderr
            assert first.poll() is None  # the first run is still at work
        server.gate.set()
        _, stderr = first.communicate(timeout=120)
        assert first.returncode == 0, stderr
        rows = list(load_from_disk(str(out)))
        assert len({r["id"] for r in rows}) == N
        assert sum(server.attempts.values()) == N  # the second process sent nothing
        assert read_manifest(out)["status"] == "complete"
        assert not (out / LOCK).exists()  # a finished run leaves no lock file behind


def test_a_lock_left_by_a_killed_run_does_not_block_the_resume(tmp_path):
    from datasets import load_from_disk

    with GatedDeepSeek() as server:
        out = tmp_path / "out"
        proc = collect(tmp_path, server, out)
        wait_for_rows(out, 2, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        server.gate.set()
        assert (out / LOCK).read_text().strip() == str(proc.pid)  # the dead holder's file is still there
        proc = collect(tmp_path, server, out)
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr
        assert len({r["id"] for r in load_from_disk(str(out))}) == N


def test_the_same_process_may_plan_its_own_output_again(tmp_path):
    """`run`, the Python API and in-process tests plan an output more than once in one process."""
    out = tmp_path / "out"
    plan_output(str(out), "sft", opts()).create()  # running: this process holds the lock
    assert (out / LOCK).read_text().strip() == str(os.getpid())
    assert plan_output(str(out), "sft", opts()).mode == "resume"


# ---- resume from the last complete checkpoint ----------------------------------------------------------

def fake_checkpoint(folder: Path, step: int) -> Path:
    """A checkpoint folder with the files the Trainer writes, made by the real libraries."""
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    save_file({"w": torch.arange(64, dtype=torch.float32)}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text("{}")
    torch.save({"state": {0: torch.ones(64)}}, folder / "optimizer.pt")
    torch.save({"last_epoch": step}, folder / "scheduler.pt")
    torch.save({"python": 1}, folder / "rng_state.pth")
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return folder


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.parametrize("damage", ["no trainer_state", "torn trainer_state", "torn weights",
                                    "torn weights header", "torn optimizer", "torn rng state"])
def test_last_checkpoint_skips_a_checkpoint_killed_mid_save(damage, tmp_path, capfd):
    from chainforge.training import checkpoint_problem, last_checkpoint

    fake_checkpoint(tmp_path / "checkpoint-2", 2)
    newest = fake_checkpoint(tmp_path / "checkpoint-10", 10)  # 10 > 2 numerically, not as text
    assert checkpoint_problem(newest) is None
    assert last_checkpoint(tmp_path) == str(newest)
    if damage == "no trainer_state":
        (newest / "trainer_state.json").unlink()
    elif damage == "torn trainer_state":
        truncate(newest / "trainer_state.json")
    elif damage == "torn weights":
        truncate(newest / "model.safetensors", 0.9)
    elif damage == "torn weights header":
        truncate(newest / "model.safetensors", 0.01)
    elif damage == "torn optimizer":
        truncate(newest / "optimizer.pt")
    else:
        truncate(newest / "rng_state.pth", 0.8)
    capfd.readouterr()
    assert last_checkpoint(tmp_path) == str(tmp_path / "checkpoint-2")
    err = " ".join(capfd.readouterr().err.split())  # rich wraps long lines
    assert "warning: skipping checkpoint-10" in err
    # nothing complete at all: start from scratch rather than crash
    truncate(tmp_path / "checkpoint-2" / "trainer_state.json")
    assert last_checkpoint(tmp_path) is None


def test_a_sharded_checkpoint_needs_every_shard(tmp_path):
    import torch
    from safetensors.torch import save_file

    from chainforge.training import checkpoint_problem

    ckpt = fake_checkpoint(tmp_path / "checkpoint-4", 4)
    (ckpt / "model.safetensors").unlink()
    save_file({"a": torch.zeros(4)}, str(ckpt / "model-00001-of-00002.safetensors"))
    (ckpt / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    assert "model-00002-of-00002.safetensors is missing" in checkpoint_problem(ckpt)
    save_file({"b": torch.zeros(4)}, str(ckpt / "model-00002-of-00002.safetensors"))
    assert checkpoint_problem(ckpt) is None


def test_sft_resumes_from_the_older_checkpoint_when_the_newest_is_torn(tiny_model, tmp_path, cli, monkeypatch):
    """Stop an sft run after checkpoint-2 and checkpoint-4 exist, tear checkpoint-4 as a kill
    mid-save would, rerun the same command: it warns, resumes from checkpoint-2, and ends at step 6."""
    import transformers.trainer as hf_trainer
    from safetensors.torch import load_file
    from transformers import TrainerCallback

    from helpers.rows import collect_rows

    class CtrlCAtStep5(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 5:
                raise KeyboardInterrupt

    data = write_jsonl(tmp_path / "collect.jsonl", collect_rows())
    args = ["--max-steps", "6", "--save-steps", "2", "--batch-size", "4", "--max-new-tokens", "8"]
    out = tmp_path / "out"
    with monkeypatch.context() as mp:
        mp.setattr(hf_trainer, "DEFAULT_CALLBACKS", hf_trainer.DEFAULT_CALLBACKS + [CtrlCAtStep5])
        first = cli("sft", "--model", tiny_model, "--data", data, "--output", out, *args)
    assert first.exit_code == 130, first.stderr
    assert (out / "checkpoint-2").is_dir() and (out / "checkpoint-4").is_dir()
    truncate(out / "checkpoint-4" / "model.safetensors", 0.7)
    (out / "checkpoint-4" / "trainer_state.json").unlink()  # the Trainer writes it last

    second = cli("sft", "--model", tiny_model, "--data", data, "--output", out, *args)
    assert second.exit_code == 0, second.stderr
    err = " ".join(second.stderr.split())
    assert "warning: skipping checkpoint-4" in err and "resuming from checkpoint-2" in err
    m = read_manifest(out)
    assert m["status"] == "complete" and m["metrics"]["steps"] == 6
    # (test_sft checks that a resumed run ends with the weights of an uninterrupted one)
    assert load_file(str(out / "model.safetensors"))
