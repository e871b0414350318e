"""Stages fed by a teacher that is sometimes right: the scripted tiny Qwen2 (helpers.tiny) answers
every prompt with one well-formed Super CoT whose answer is 7, so it is right exactly where the
reference is 7. distill keeps those traces and drops the wrong ones; reject keeps them and its
real output trains sft."""

from __future__ import annotations

import json

import datasets

from helpers.checkpoints import assistant_loss
from helpers.files import manifest, write_jsonl
from helpers.tiny import SEVEN

# Which prompts the teacher gets right: those whose reference is 7.
ROWS = [
    {"id": "a", "prompt": "What is 3 + 4?", "answer": "7"},
    {"id": "b", "prompt": "What is 1 + 2?", "answer": "3"},
    {"id": "c", "prompt": "What is 5 + 2?", "answer": "7"},
    {"id": "d", "prompt": "What is 4 + 4?", "answer": "8"},
    {"id": "e", "prompt": "What is 6 + 1?", "answer": "7"},
    {"id": "f", "prompt": "What is 9 + 9?", "answer": "18"},
]
RIGHT = {r["prompt"] for r in ROWS if r["answer"] == "7"}


def test_the_scripted_teacher_writes_its_script_and_stops_at_any_temperature(scripted_teacher):
    from chainforge.models import load_model, load_tokenizer, resolve_model
    from chainforge.sampling import generate
    from chainforge.formats import SUPER_COT_SYSTEM_PROMPT

    ref = resolve_model(str(scripted_teacher))
    model, tok = load_model(ref), load_tokenizer(ref)
    for temperature in (0.0, 1.0):
        out = generate(model, tok, [r["prompt"] for r in ROWS], n=2, temperature=temperature, max_new_tokens=16,
                       seed=3, system_prompt=SUPER_COT_SYSTEM_PROMPT)
        for comps in out:
            for c in comps:
                # five pieces, then <|im_end|>: stopped at EOS, well before the budget
                assert (c.text, c.tokens, c.finished) == (SEVEN, 6, True), c


def test_distill_keeps_the_correct_well_formed_traces_and_drops_the_wrong_ones(cli, scripted_teacher, tiny_model,
                                                                                tmp_path):
    data = write_jsonl(tmp_path / "p.jsonl", ROWS + [{"id": "g", "prompt": "Name a colour.", "answer": None}])
    out = tmp_path / "student"
    r = cli("distill", "--teacher", scripted_teacher, "--student", tiny_model, "--data", data, "--output", out,
            "--eval-fraction", "0", "--num-samples", "2", "--temperature", "1.0", "--max-new-tokens", "16",
            "--max-steps", "2", "--batch-size", "2", "--seed", "0")
    assert r.exit_code == 0, r.stderr
    traces = datasets.load_from_disk(str(out / "traces"))
    by_prompt = {row["prompt"]: row for row in traces}
    # kept: one row per distinct completion (the two samples are the same text) of each prompt the
    # teacher got right, and of the prompt without a reference; dropped: the three it got wrong
    assert set(by_prompt) == RIGHT | {"Name a colour."} and len(traces) == len(by_prompt)
    for prompt, row in by_prompt.items():
        assert row["text"] == SEVEN
        if prompt in RIGHT:
            assert row["reference"] == "7" and row["correct"] is True
            assert row["reward"] >= 1.2  # accuracy 1 + format 0.2
        else:
            assert row["reference"] is None and row["correct"] is None
    metrics = manifest(out)["metrics"]
    assert metrics["traces"] == 4 and metrics["trace_prompts"] == 4 and metrics["train_prompts"] == 7
    assert "kept 4 of 14 teacher completions" in r.stderr


def test_reject_output_trains_sft_as_it_is(cli, scripted_teacher, tiny_model, tmp_path):
    data = write_jsonl(tmp_path / "p.jsonl", ROWS)
    rejected = tmp_path / "reject"
    r = cli("reject", "--model", scripted_teacher, "--data", data, "--output", rejected, "--num-samples", "2",
            "--max-new-tokens", "16", "--seed", "0")
    assert r.exit_code == 0, r.stderr
    kept = datasets.load_from_disk(str(rejected))
    assert sorted(kept["prompt"]) == sorted(RIGHT) and set(kept["text"]) == {SEVEN}
    assert manifest(rejected)["metrics"]["kept"] == 3

    out = tmp_path / "sft"
    r = cli("sft", "--model", tiny_model, "--data", rejected, "--output", out, "--max-steps", "8",
            "--batch-size", "3", "--learning-rate", "3e-3", "--warmup-ratio", "0", "--max-new-tokens", "4",
            "--seed", "0")
    assert r.exit_code == 0, r.stderr
    m = manifest(out)
    assert m["status"] == "complete" and m["metrics"]["rows"] == 3 and m["metrics"]["steps"] == 8
    assert [i["path"] for i in m["inputs"]][0] == str(rejected)
    # what sft learned is reject's kept answer, under the system turn the rows are trained with
    from chainforge.formats import SUPER_COT_SYSTEM_PROMPT
    from chainforge.traces import sft_dataset

    conversations = sft_dataset(kept, system_prompt=SUPER_COT_SYSTEM_PROMPT)["messages"]
    assert [c[-1]["content"] for c in conversations] == [SEVEN] * 3
    before, after = assistant_loss(tiny_model, conversations), assistant_loss(out, conversations)
    assert after < before * 0.9, (before, after)
    assert json.loads((out / "chainforge.json").read_text())["config"]["data"] == str(rejected)
