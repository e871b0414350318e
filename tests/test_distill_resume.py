"""`chainforge distill` killed (SIGKILL) mid-training, then the same command again: it resumes from
the newest checkpoint, trains only the steps that were missing, reuses the teacher's samples, the
filtered traces and the student's before-check, and ends with the weights of a run never killed.
Child processes: the signal must hit a real process, with nothing cleaned up."""

from __future__ import annotations

from helpers.files import manifest, write_jsonl
from helpers.launch import chainforge_steps, logged_steps

ROWS = [{"prompt": f"What is {a} + {b}?", "answer": str(a + b)} for a, b in
        [(3, 4), (1, 2), (5, 2), (4, 4), (6, 1), (2, 2), (0, 7), (9, 9)]]


def weights(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def test_distill_killed_mid_training_resumes_to_the_uninterrupted_result(scripted_teacher, tiny_model, tmp_path):
    data = write_jsonl(tmp_path / "p.jsonl", ROWS)
    held_out = write_jsonl(tmp_path / "e.jsonl", [{"prompt": "What is 2 + 5?", "answer": "7"}])

    def args(out):
        return ["distill", "--teacher", scripted_teacher, "--student", tiny_model, "--data", data,
                "--eval-data", held_out, "--output", out, "--num-samples", "2", "--temperature", "1.0",
                "--max-new-tokens", "16", "--max-steps", "4", "--save-steps", "2", "--batch-size", "2",
                "--learning-rate", "1e-3", "--warmup-ratio", "0", "--seed", "0"]

    whole = tmp_path / "whole"
    p = chainforge_steps(args(whole), tmp_path, tmp_path / "whole.steps")
    assert p.returncode == 0, p.stderr[-3000:]
    assert logged_steps(tmp_path / "whole.steps") == [1, 2, 3, 4]

    out = tmp_path / "killed"
    p = chainforge_steps(args(out), tmp_path, tmp_path / "first.steps", kill_at_step=3)
    assert p.returncode == -9, p.stderr[-3000:]
    assert logged_steps(tmp_path / "first.steps") == [1, 2, 3]
    assert manifest(out)["status"] != "complete"
    assert (out / "checkpoint-2").is_dir() and not (out / "model.safetensors").exists()
    # (bytes and modification time: rewriting the same content would be drawing or scoring again)
    kept = {name: ((out / name).read_bytes(), (out / name).stat().st_mtime_ns)
            for name in ("teacher-samples.jsonl", "eval_before.json")}
    traces = sorted(p.name for p in (out / "traces").iterdir())

    p = chainforge_steps(args(out), tmp_path, tmp_path / "second.steps")
    assert p.returncode == 0, p.stderr[-3000:]
    assert "resuming from checkpoint-2" in p.stderr
    assert "reusing 4 teacher traces" in p.stderr and "sampling" not in p.stderr
    assert logged_steps(tmp_path / "second.steps") == [3, 4]  # steps 1-2 came from the checkpoint
    for name, (content, mtime) in kept.items():
        assert ((out / name).read_bytes(), (out / name).stat().st_mtime_ns) == (content, mtime), name
    assert sorted(p.name for p in (out / "traces").iterdir()) == traces
    m = manifest(out)
    assert m["status"] == "complete" and m["metrics"]["steps"] == 4 and m["metrics"]["traces"] == 4
    assert m["metrics"]["eval_before/pass@1"] == manifest(whole)["metrics"]["eval_before/pass@1"]
    assert not list(out.glob("checkpoint-*"))

    uninterrupted, resumed = weights(whole), weights(out)
    assert set(resumed) == set(uninterrupted)
    for key, value in uninterrupted.items():
        assert resumed[key].allclose(value, atol=1e-6), key
