import json
import os
import signal
import subprocess
import sys
import textwrap

import datasets
import pytest

from chainforge.inputs import answer_column, load_rows, require_columns
from chainforge.outputs import MANIFEST, atomic_write_text, output_kind, plan_output, read_manifest
from chainforge.config import Options
from chainforge.errors import UsageError

ROWS = [{"prompt": f"What is {i} + 1?", "answer": str(i + 1)} for i in range(5)]


@pytest.fixture
def inputs(tmp_path):
    ds = datasets.Dataset.from_list(ROWS)
    paths = {}
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    paths["jsonl"] = tmp_path / "d.jsonl"
    (tmp_path / "d.json").write_text(json.dumps(ROWS))
    paths["json"] = tmp_path / "d.json"
    ds.to_csv(str(tmp_path / "d.csv"))
    paths["csv"] = tmp_path / "d.csv"
    ds.to_parquet(str(tmp_path / "d.parquet"))
    paths["parquet"] = tmp_path / "d.parquet"
    ds.save_to_disk(str(tmp_path / "folder"))
    paths["folder"] = tmp_path / "folder"
    return paths


@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv", "parquet", "folder"])
def test_every_input_format_loads(inputs, fmt):
    ds = load_rows(inputs[fmt])
    assert len(ds) == 5
    assert ds[2]["prompt"] == "What is 2 + 1?"
    assert str(ds[2]["answer"]) == "3"
    assert len(load_rows(inputs[fmt], limit=2)) == 2


def test_missing_empty_and_unreadable_inputs(tmp_path):
    with pytest.raises(UsageError, match="not found"):
        load_rows(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(UsageError, match="is empty"):
        load_rows(tmp_path / "empty.jsonl")
    (tmp_path / "bad.jsonl").write_text('{"prompt": "x"}\n{oops\n')
    with pytest.raises(UsageError, match="line 2 is not valid JSON"):
        load_rows(tmp_path / "bad.jsonl")
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(UsageError, match="unsupported file type"):
        load_rows(tmp_path / "x.txt")
    (tmp_path / "notds").mkdir()
    with pytest.raises(UsageError, match="not a dataset folder"):
        load_rows(tmp_path / "notds")


def test_column_check_names_missing_and_found(inputs):
    ds = load_rows(inputs["jsonl"])
    require_columns(ds, ["prompt"])
    with pytest.raises(UsageError) as err:
        require_columns(ds, ["question"])
    assert "'question'" in err.value.message and "prompt, answer" in err.value.message


def test_answer_column_falls_back_to_reference():
    ds = datasets.Dataset.from_list([{"prompt": "p", "reference": "1"}])
    assert answer_column(ds, "answer", required=True) == "reference"
    assert answer_column(datasets.Dataset.from_list([{"prompt": "p"}]), "answer", required=False) is None
    with pytest.raises(UsageError, match="no answer column 'gold'"):
        answer_column(ds, "gold", required=True)


def opts(**kw):
    return Options(model="m", lr=1e-5, overwrite=False, config=None, **kw)


def test_output_life_cycle_and_manifest(tmp_path):
    out_dir = tmp_path / "out"
    plan = plan_output(str(out_dir), "sft", opts(api_key="sk-secret"))
    assert plan.mode == "new" and not out_dir.exists()  # validation creates nothing
    out = plan.create(inputs=[str(tmp_path)])
    m = read_manifest(out_dir)
    assert m["status"] == "running" and m["stage"] == "sft"
    out.save_dataset(datasets.Dataset.from_list(ROWS))
    assert read_manifest(out_dir)["status"] == "running"
    out.finish({"rows": 5})
    m = read_manifest(out_dir)
    assert m["status"] == "complete" and m["metrics"] == {"rows": 5}
    assert set(m) >= {"stage", "chainforge_version", "created", "config", "inputs", "metrics", "status", "fingerprint"}
    assert m["config"]["api_key"] == "***" and m["config"]["lr"] == 1e-5
    assert "sk-secret" not in (out_dir / MANIFEST).read_text()
    assert len(datasets.load_from_disk(str(out_dir))) == 5
    assert output_kind(out_dir) == "dataset"
    assert not [p for p in os.listdir(out_dir) if p.startswith(".")]


def test_existing_outputs(tmp_path):
    out_dir = tmp_path / "out"
    out = plan_output(str(out_dir), "sft", opts()).create()
    # unfinished, same config: resume
    assert plan_output(str(out_dir), "sft", opts()).mode == "resume"
    # unfinished, other config: refused, naming the option
    with pytest.raises(UsageError, match=r"lr \(was 1e-05, now 0.1\)"):
        plan_output(str(out_dir), "sft", Options(model="m", lr=0.1, overwrite=False, config=None))
    # another stage's output: refused
    with pytest.raises(UsageError, match="a 'sft' output"):
        plan_output(str(out_dir), "grpo", opts())
    out.finish({})
    with pytest.raises(UsageError, match="already holds a complete sft output"):
        plan_output(str(out_dir), "sft", opts())
    assert plan_output(str(out_dir), "sft", opts(), overwrite=True).mode == "overwrite"
    # a non-empty folder that is not ours
    other = tmp_path / "other"
    other.mkdir()
    (other / "file.txt").write_text("x")
    with pytest.raises(UsageError, match="not empty"):
        plan_output(str(other), "sft", opts())
    with pytest.raises(UsageError, match="not a folder"):
        plan_output(str(other / "file.txt"), "sft", opts())


def test_overwrite_replaces_the_folder(tmp_path):
    out_dir = tmp_path / "out"
    plan_output(str(out_dir), "sft", opts()).create().finish({})
    (out_dir / "stale.txt").write_text("old")
    plan_output(str(out_dir), "sft", opts(), overwrite=True).create()
    assert not (out_dir / "stale.txt").exists()
    assert read_manifest(out_dir)["status"] == "running"


WRITER = textwrap.dedent("""
    import os, sys, time, datasets
    import chainforge.outputs as outputs
    from chainforge.config import Options
    real_replace = os.replace
    count = 0
    def slow_replace(a, b):
        global count
        real_replace(a, b)
        count += 1
        if count == 2:   # the manifest went in first, then one result file
            print("MOVED", flush=True)
            time.sleep(60)
    outputs.os.replace = slow_replace
    out = outputs.plan_output(sys.argv[1], "collect", Options(x=1)).create()
    ds = datasets.Dataset.from_list([{"a": i} for i in range(1000)])
    out.save_dataset(ds)
    out.finish({})
""")


def test_a_writer_killed_midway_leaves_nothing_complete_looking(tmp_path):
    out_dir = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(out_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "MOVED"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert read_manifest(out_dir)["status"] == "running"
    assert output_kind(out_dir) is None  # state.json goes in last
    with pytest.raises(Exception):
        datasets.load_from_disk(str(out_dir))


def test_atomic_writes_fsync_the_file_then_its_folder(tmp_path, monkeypatch):
    """Without the folder's fsync a power cut can lose the rename: the old manifest after new results."""
    import stat

    real_fsync, synced = os.fsync, []

    def recording_fsync(fd):
        st = os.fstat(fd)
        synced.append(("dir" if stat.S_ISDIR(st.st_mode) else "file", st.st_ino))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    target = tmp_path / "m.json"
    atomic_write_text(target, "{}")
    assert synced == [("file", target.stat().st_ino), ("dir", tmp_path.stat().st_ino)]
    assert target.read_text() == "{}" and [p.name for p in tmp_path.iterdir()] == ["m.json"]
    # results moved into an output: every file's bytes reach the disk, then the folder's names
    out = plan_output(str(tmp_path / "out"), "sft", opts()).create()
    synced.clear()
    out.save_dataset(datasets.Dataset.from_list(ROWS))
    files = {p.stat().st_ino for p in (tmp_path / "out").iterdir() if p.is_file() and p.name != MANIFEST
             and not p.name.startswith(".")}
    assert files and files <= {ino for kind, ino in synced if kind == "file"}
    assert ("dir", (tmp_path / "out").stat().st_ino) in synced
