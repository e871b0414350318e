import json
import sys

import datasets
import pytest

from chainforge.metrics import select_candidates
from helpers.cli import assert_exit_2
from helpers.files import write_jsonl
from helpers.rewards import vowel_share

DOCUMENTED_COLUMNS = {"id", "prompt", "reference", "text", "messages", "reward", "candidates", "kept_rank"}


REWARD = "helpers.rewards:vowel_share"  # a reward only some candidates pass


def test_select_candidates_dedupes_ranks_and_filters():
    texts = ["a", "b", "a", "c", "d", "e"]
    rewards = [1.0, 0.5, 1.0, 1.2, 1.0, 0.9999999999999999]
    assert select_candidates(texts, rewards, 1.0, "best") == [("c", 1.2)]
    # ties go to the candidate drawn first; duplicates count once; >= is inclusive (round-off allowed)
    assert select_candidates(texts, rewards, 1.0, "all-passing") == [
        ("c", 1.2), ("a", 1.0), ("d", 1.0), ("e", 0.9999999999999999)]
    assert select_candidates(texts, rewards, 1.3, "best") == []


@pytest.fixture
def prompts(tmp_path):
    rows = [{"id": f"q{i}", "prompt": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(4)]
    rows.append({"id": "chat", "prompt": [{"role": "user", "content": "Say hi"}], "answer": "hi"})
    return write_jsonl(tmp_path / "p.jsonl", rows[:4]), rows


def _reject(cli, tiny_model, data, out, *extra):
    return cli("reject", "--model", tiny_model, "--data", data, "--output", out, "--max-new-tokens", 10,
               "--num-samples", 6, "--temperature", 1.0, "--rewards", REWARD, *extra)


def _journal(out):
    return {json.loads(line)["index"]: [c["text"] for c in json.loads(line)["completions"]]
            for line in (out / "candidates.jsonl").read_text().splitlines()}


def test_reject_keeps_exactly_the_best_passing_candidates(cli, tiny_model, prompts, tmp_path):
    data, rows = prompts
    out = tmp_path / "best"
    # a threshold at the median candidate reward: some candidates pass, some don't
    probe = tmp_path / "probe"
    assert _reject(cli, tiny_model, data, probe, "--min-reward", 0).exit_code == 0
    drawn = _journal(probe)
    scores = sorted(s for texts in drawn.values() for s in vowel_share(texts))
    threshold = scores[len(scores) // 2]

    r = _reject(cli, tiny_model, data, out, "--min-reward", threshold)
    assert r.exit_code == 0, r.stderr
    ds = datasets.load_from_disk(str(out))
    assert set(ds.column_names) == DOCUMENTED_COLUMNS
    drawn = _journal(out)
    expected = {}
    for i, texts in drawn.items():
        passing = [(s, t) for t, s in zip(texts, vowel_share(texts)) if s >= threshold]
        if passing:
            expected[f"q{i}"] = max(passing, key=lambda p: p[0])
    assert 0 < len(expected) <= 4
    kept = {row["id"]: row for row in ds}
    assert set(kept) == set(expected)
    for qid, (score, text) in expected.items():
        row = kept[qid]
        assert row["reward"] == pytest.approx(score) and vowel_share([row["text"]])[0] == pytest.approx(score)
        assert row["kept_rank"] == 0 and row["candidates"] == 6
        assert row["messages"] == [{"role": "user", "content": row["prompt"]},
                                   {"role": "assistant", "content": row["text"]}]
        assert row["reference"] == str(2 * int(qid[1:]))
    metrics = json.loads((out / "chainforge.json").read_text())["metrics"]
    assert set(metrics) == {"prompts", "candidates", "kept", "pass@1", "pass@k", "mean_reward_all", "mean_reward_kept"}
    assert (metrics["prompts"], metrics["candidates"], metrics["kept"]) == (4, 24, len(expected))
    passing_share = sum(s >= threshold for texts in drawn.values() for s in vowel_share(texts)) / 24
    assert metrics["pass@1"] == pytest.approx(passing_share)
    assert metrics["pass@k"] == pytest.approx(len(expected) / 4)

    # all-passing: every distinct passing candidate, best first
    every = tmp_path / "every"
    assert _reject(cli, tiny_model, data, every, "--min-reward", threshold, "--keep", "all-passing").exit_code == 0
    ds_all = datasets.load_from_disk(str(every))
    for i, texts in drawn.items():
        mine = [row for row in ds_all if row["id"] == f"q{i}"]
        distinct = {t: s for t, s in zip(texts, vowel_share(texts)) if s >= threshold}
        assert sorted(row["text"] for row in mine) == sorted(distinct)
        assert [row["kept_rank"] for row in mine] == list(range(len(mine)))
        assert [row["reward"] for row in mine] == sorted((row["reward"] for row in mine), reverse=True)


def test_nothing_passing_is_exit_1_and_a_lower_bar_reuses_the_candidates(cli, tiny_model, prompts, tmp_path):
    data, _ = prompts
    out = tmp_path / "none"
    r = _reject(cli, tiny_model, data, out, "--min-reward", 11)
    assert r.exit_code == 1
    assert "no candidate reached --min-reward 11" in r.stderr
    assert json.loads((out / "chainforge.json").read_text())["status"] == "incomplete"
    before = (out / "candidates.jsonl").read_text()
    r = _reject(cli, tiny_model, data, out, "--min-reward", 0)
    assert r.exit_code == 0, r.stderr
    assert (out / "candidates.jsonl").read_text() == before  # nothing drawn again
    assert len(datasets.load_from_disk(str(out))) == 4


def test_chat_prompts_and_default_rewards(cli, tiny_model, prompts, tmp_path):
    _, rows = prompts
    data = write_jsonl(tmp_path / "chat.jsonl", [{**rows[4], "prompt": rows[4]["prompt"]}])
    out = tmp_path / "chat"
    # accuracy+format on a random model: nothing is correct, so nothing passes -> exit 1
    r = cli("reject", "--model", tiny_model, "--data", data, "--output", out, "--max-new-tokens", 4,
            "--num-samples", 2)
    assert r.exit_code == 1 and "no candidate reached --min-reward 1.0" in r.stderr
    r = cli("reject", "--model", tiny_model, "--data", data, "--output", out, "--max-new-tokens", 4,
            "--num-samples", 2, "--min-reward", 0)
    assert r.exit_code == 0, r.stderr
    row = datasets.load_from_disk(str(out))[0]
    assert row["messages"][0] == {"role": "user", "content": "Say hi"} and row["messages"][1]["role"] == "assistant"
    assert row["reward"] == 0.0


def test_bad_input_is_one_line_exit_2_and_nothing_created(cli, tiny_model, prompts, tmp_path, monkeypatch):
    data, _ = prompts
    no_answer = write_jsonl(tmp_path / "q.jsonl", [{"prompt": "What is 2 + 3?"}])
    bad_prompt = write_jsonl(tmp_path / "bp.jsonl", [{"prompt": [{"role": "user", "content": "1 + 1?"}], "answer": "2"},
                                                     {"prompt": [{"role": "user"}], "answer": "7"}])
    bad_answer = write_jsonl(tmp_path / "ba.jsonl", [{"prompt": "What is 1 + 1?", "answer": {"value": 2}}])
    monkeypatch.setitem(sys.modules, "vllm", None)
    cases = [
        ((bad_prompt,), "--data row 1: column 'prompt' must be a non-empty string"),
        ((bad_answer,), "--data row 0: column 'answer' must hold the reference answer"),
        ((data, "--rewards", "helpers.rewards:vowel_share", "--no-custom-rewards"), "custom rewards are turned off"),
        ((data, "--num-samples", 0), "--num-samples"),
        ((no_answer, "--rewards", "accuracy,format"), "--rewards accuracy needs reference answers"),
        ((data, "--backend", "vllm"), "pip install 'chainforge-r1[vllm]'"),
        ((data, "--keep", "some"), "--keep 'some' is not one of best, all-passing"),
        ((data, "--rewards", "brevity"), "unknown reward 'brevity'"),
        ((data, "--rewards", "format=heavy"), "is not a number"),
    ]
    for i, ((path, *extra), message) in enumerate(cases):
        out = tmp_path / f"out{i}"
        r = cli("reject", "--model", tiny_model, "--data", path, "--output", out, *extra)
        assert_exit_2(r, message, output=out)
    # a reward that needs no answer works on data without one
    r = cli("reject", "--model", tiny_model, "--data", no_answer, "--output", tmp_path / "fmt",
            "--rewards", REWARD, "--min-reward", 0, "--num-samples", 2, "--max-new-tokens", 4)
    assert r.exit_code == 0, r.stderr
    assert datasets.load_from_disk(str(tmp_path / "fmt"))[0]["reference"] is None
