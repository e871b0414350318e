"""`torchrun --nproc_per_node 2 -m chainforge grpo` on CPU (gloo): both ranks generate and score
their share of every step, their gradients are averaged (both end with the same weights), and one
whole, trained checkpoint is written."""

from __future__ import annotations

import json

import pytest

from helpers.checkpoints import load_checkpoint
from helpers.files import manifest, write_jsonl
from helpers.launch import torchrun
from helpers.rows import arithmetic


@pytest.mark.slow
def test_grpo_on_two_ranks_writes_one_trained_checkpoint(tiny_model, tmp_path):
    data = write_jsonl(tmp_path / "p.jsonl", arithmetic(8))
    log = tmp_path / "rewards.jsonl"
    out = tmp_path / "rl"
    # 2 ranks × a batch of 4 completions = 8 per step: 4 prompts × 2 generations
    proc = torchrun(["grpo", "--model", tiny_model, "--data", data, "--output", out, "--rewards",
                     "helpers.rewards:close_to_19_logged", "--max-steps", "2", "--num-generations", "2",
                     "--batch-size", "4", "--max-new-tokens", "8", "--lr", "1e-2", "--save-steps", "100",
                     "--warmup-ratio", "0", "--seed", "0"], tmp_path,
                    env={"CHAINFORGE_TEST_REWARD_LOG": str(log)}, weights_dir=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    per_rank = {rank: [len(c["completions"]) for c in calls if c["rank"] == rank] for rank in (0, 1)}
    assert per_rank == {0: [4, 4], 1: [4, 4]}, per_rank  # each rank scored its 4 completions per step
    assert proc.stderr.count("grpo: 8 prompts") == 1  # rank 0 speaks for the run
    m = manifest(out)
    assert m["status"] == "complete" and m["metrics"]["steps"] == 2
    assert m["metrics"]["reward/close_to_19_logged"] is not None
    assert len(list(out.glob("*.safetensors"))) == 1
    assert not list(out.glob("checkpoint-*")) and not list(out.glob(".partial-*"))
    _, moved = load_checkpoint(out, tiny_model)  # whole, and moved by the two steps
    # the gradients were averaged across the ranks: both end with the same weights, the saved ones
    import torch
    from safetensors.torch import load_file

    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    saved = load_file(str(out / "model.safetensors"))
    for key, value in saved.items():
        assert torch.equal(rank0[key], rank1[key]), key
        assert torch.equal(rank0[key].to(value.dtype), value), key
    assert moved
