"""Several processes on one command: real `torchrun --nproc_per_node 2` runs on CPU (gloo).

Paid and file-writing work happens once, on rank 0; generation is split across ranks and the
shards merged into one journal (chainforge/distributed.py, chainforge/sampling/journaled.py).
"""

from __future__ import annotations

import json

import pytest
import yaml
from helpers.files import write_jsonl
from helpers.fake_apis import FakeDeepSeek
from helpers.launch import torchrun


def test_collect_in_a_recipe_on_two_ranks_pays_once_per_prompt(tmp_path):
    prompts = write_jsonl(tmp_path / "prompts.jsonl",
                          [{"prompt": f"Q{i}: what is 6 times 7?", "answer": "42"} for i in range(5)])
    run_dir = tmp_path / "run"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "run_dir": str(run_dir), "model": "unused-by-collect", "prompts": str(prompts),
        "stages": [{"name": "collect", "command": "collect", "teacher": "deepseek", "expander": "none",
                    "concurrency": 4}]}, sort_keys=False))
    with FakeDeepSeek(latency=0.01) as ds:
        proc = torchrun(["run", recipe], tmp_path, env={"DEEPSEEK_API_KEY": ds.api_key, "DEEPSEEK_BASE_URL": ds.url})
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        asked = sorted(r["json"]["messages"][-1]["content"] for r in ds.requests)
    assert asked == sorted(f"Q{i}: what is 6 times 7?" for i in range(5))  # one request per prompt, no more
    out = run_dir / "00-collect"
    manifest = json.loads((out / "chainforge.json").read_text())
    assert manifest["status"] == "complete" and manifest["metrics"]["rows"] == 5
    journal = [json.loads(line) for line in (out / "journal.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in journal) == sorted({r["id"] for r in journal}) and len(journal) == 5
    state = json.loads((run_dir / "run.json").read_text())
    assert state["stages"]["collect"]["status"] == "complete"


def _eval_args(model, data, out):
    return ["eval", "--model", model, "--data", data, "--output", out, "--num-samples", "2",
            "--max-new-tokens", "6", "--batch-size", "1", "--seed", "3"]


@pytest.mark.slow
def test_eval_on_two_ranks_gives_the_rows_of_one_process(tmp_path, tiny_model, cli):
    data = write_jsonl(tmp_path / "q.jsonl", [{"prompt": f"What is {i} + {i}?" + " x" * (i % 4), "answer": str(2 * i)}
                                             for i in range(7)])
    one = tmp_path / "one"
    result = cli(*_eval_args(tiny_model, data, one))
    assert result.exit_code == 0, result.output
    two = tmp_path / "two"
    proc = torchrun(_eval_args(tiny_model, data, two), tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    def rows(folder):
        return [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines()]

    assert rows(two) == rows(one)
    m1, m2 = (json.loads((f / "chainforge.json").read_text())["metrics"] for f in (one, two))
    assert m1 == m2
    # the shards were merged into the one journal, which holds every question once
    assert not list(two.glob("samples.rank*.jsonl"))
    lines = [json.loads(line) for line in (two / "samples.jsonl").read_text().splitlines()]
    assert sorted(r["index"] for r in lines) == list(range(7))


def test_a_rank_journal_left_by_a_multi_process_run_is_reused_and_merged(tmp_path, tiny_model):
    """A run on N ranks stopped before the merge; the same command on one process draws only
    what no journal holds, and folds the rank journal into the main one."""
    from chainforge.models import load_model, load_tokenizer, resolve_model
    from chainforge.sampling import generate_journaled, prompt_id

    ref = resolve_model(str(tiny_model))
    model, tok = load_model(ref), load_tokenizer(ref)
    prompts = [f"Question {i}?" for i in range(4)]
    (tmp_path / "a").mkdir()
    full = generate_journaled(tmp_path / "a" / "samples.jsonl", model, tok, prompts, n=2, max_new_tokens=4, seed=1, batch_size=1)
    # rank 1 of a 2-rank run had drawn prompts 1 and 3 (a marker text shows they are reused, not redrawn)
    run = tmp_path / "b"
    run.mkdir()
    shard = run / "samples.rank1.jsonl"
    shard.write_text("".join(json.dumps({"index": i, "prompt_sha": prompt_id(prompts[i]),
                                         "completions": [{"text": f"from rank 1 #{i}", "tokens": 1,
                                                          "finished": True}] * 2}) + "\n" for i in (1, 3)))
    got = generate_journaled(run / "samples.jsonl", model, tok, prompts, n=2, max_new_tokens=4, seed=1, batch_size=1)
    assert [c.text for c in got[1]] == ["from rank 1 #1"] * 2 and got[3][0].text == "from rank 1 #3"
    assert [[c.text for c in got[i]] for i in (0, 2)] == [[c.text for c in full[i]] for i in (0, 2)]
    assert not shard.exists()
    merged = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert sorted(r["index"] for r in merged) == [0, 1, 2, 3]


def test_shards_interleave_and_cover_every_prompt(monkeypatch):
    from chainforge import distributed

    seen = []
    for r in range(3):
        monkeypatch.setenv("WORLD_SIZE", "3")
        monkeypatch.setenv("RANK", str(r))
        seen.append(distributed.shard(list("abcdefg")))
    assert seen == [[0, 3, 6], [1, 4], [2, 5]]
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.delenv("RANK")
    assert distributed.shard(list("abc")) == [0, 1, 2] and distributed.is_main()


@pytest.mark.slow
def test_an_fsdp_launch_on_cpu_says_it_trains_unsharded_and_still_writes_a_loadable_model(tmp_path, tiny_model):
    """accelerate enables FSDP for GPU process groups only (MULTI_CPU stays data parallel): the run
    says so instead of pretending to shard, and its checkpoint loads."""
    from helpers.rows import collect_rows

    data = write_jsonl(tmp_path / "d.jsonl", collect_rows(12))
    out = tmp_path / "out"
    fsdp_env = {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP",
                "FSDP_STATE_DICT_TYPE": "FULL_STATE_DICT", "ACCELERATE_MIXED_PRECISION": "no"}
    proc = torchrun(["sft", "--model", tiny_model, "--data", data, "--output", out, "--max-steps", "2",
                     "--batch-size", "2", "--max-length", "256", "--no-packing", "--max-new-tokens", "4"],
                    tmp_path, env=fsdp_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("FSDP was asked for") == 1  # rank 0 only
    m = json.loads((out / "chainforge.json").read_text())
    assert m["status"] == "complete" and m["metrics"]["world_size"] == 2
    from helpers.checkpoints import load_checkpoint

    load_checkpoint(out, tiny_model)  # every weight whole (not a shard), and trained


@pytest.mark.slow
def test_a_recipe_of_eval_sft_reject_and_distill_on_two_ranks(tmp_path, tiny_model):
    """eval (the process group started by chainforge), then sft (accelerate joins it), reject and
    distill's teacher sampling split across the ranks, every output written once."""
    from helpers.rows import collect_rows

    sft_data = write_jsonl(tmp_path / "sft.jsonl", collect_rows(8))
    questions = write_jsonl(tmp_path / "q.jsonl", [{"prompt": f"What is {i} + {i}?", "answer": str(2 * i)}
                                                   for i in range(5)])
    bare = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"Name {i} things."} for i in range(6)])
    run_dir = tmp_path / "run"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"run_dir": str(run_dir), "model": str(tiny_model), "prompts": str(bare),
                                      "stages": [
        {"name": "ev", "command": "eval", "data": str(questions), "num_samples": 2, "max_new_tokens": 4},
        {"name": "sft", "command": "sft", "data": str(sft_data), "max_steps": 2, "batch_size": 2, "max_length": 256,
         "packing": False, "max_new_tokens": 4},
        {"name": "rej", "command": "reject", "data": str(questions), "num_samples": 2, "max_new_tokens": 4,
         "rewards": "format", "min_reward": 0.0},
        {"name": "dist", "command": "distill", "student": str(tiny_model), "max_steps": 1, "batch_size": 2,
         "max_length": 256, "packing": False, "max_new_tokens": 4, "eval_fraction": 0.0}]}, sort_keys=False))
    proc = torchrun(["run", recipe], tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    state = json.loads((run_dir / "run.json").read_text())
    assert all(s["status"] == "complete" for s in state["stages"].values()), state
    sft = json.loads((run_dir / "01-sft" / "chainforge.json").read_text())
    assert sft["metrics"]["world_size"] == 2
    for journal, n in ((run_dir / "00-ev" / "samples.jsonl", 5), (run_dir / "02-rej" / "candidates.jsonl", 5),
                       (run_dir / "03-dist" / "teacher-samples.jsonl", 6)):
        lines = [json.loads(line) for line in journal.read_text().splitlines()]
        assert sorted(r["index"] for r in lines) == list(range(n)), journal  # both shards, merged, once each
        assert not list(journal.parent.glob("*.rank*.jsonl"))
    dist = json.loads((run_dir / "03-dist" / "chainforge.json").read_text())
    assert dist["status"] == "complete" and dist["metrics"]["trace_prompts"] == 6
