"""Model and dataset cards on real outputs of the tiny model; the system prompt a checkpoint was
trained with is the default of the stages that load it; ChatML checkpoints stop at <|im_end|>."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from helpers.files import write_jsonl

FAST = ["--max-steps", "2", "--batch-size", "4", "--max-new-tokens", "4"]


def _rows(n: int = 8) -> list[dict]:
    return [{"prompt": f"What is {i} + 1?", "completion": f"<think>{i} plus one</think> {i + 1}", "answer": str(i + 1)}
            for i in range(n)]


@pytest.fixture(scope="module")
def base(tiny_model, tmp_path_factory) -> Path:
    """The tiny model as a Qwen base model ships: eos is <|endoftext|>, <|im_end|> only in the vocab."""
    folder = tmp_path_factory.mktemp("base") / "qwen-base"
    shutil.copytree(tiny_model, folder)
    tok = json.loads((folder / "tokenizer.json").read_text())
    endoftext = next(t["id"] for t in tok["added_tokens"] if t["content"] == "<|endoftext|>")
    gen = json.loads((folder / "generation_config.json").read_text()) if (folder / "generation_config.json").is_file() else {}
    gen["eos_token_id"] = endoftext
    (folder / "generation_config.json").write_text(json.dumps(gen))
    tok_config = json.loads((folder / "tokenizer_config.json").read_text())
    tok_config["eos_token"] = "<|endoftext|>"
    (folder / "tokenizer_config.json").write_text(json.dumps(tok_config))
    config = json.loads((folder / "config.json").read_text())
    config["eos_token_id"] = endoftext
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="module")
def run_dir(base, tmp_path_factory):
    """A recipe-like run folder: an eval of the base, then sft on it, then a second sft with its own
    system prompt."""
    from helpers.cli import CLI

    cli = CLI()
    root = tmp_path_factory.mktemp("run")
    data = write_jsonl(root / "train.jsonl", _rows())
    test = write_jsonl(root / "test.jsonl", _rows(3))
    r = cli("eval", "--model", base, "--data", test, "--output", root / "00-eval-base", "--num-samples", 1,
            "--max-new-tokens", 4)
    assert r.exit_code == 0, r.output
    r = cli("sft", "--model", base, "--data", data, "--output", root / "01-sft", *FAST)
    assert r.exit_code == 0, r.output
    r = cli("sft", "--model", root / "01-sft", "--data", data, "--output", root / "02-sft-brief",
            "--system-prompt", "Be brief.", "--learning-rate", "1e-4", *FAST)
    assert r.exit_code == 0, r.output
    return {"root": root, "data": data, "test": test, "base": base}


def test_sft_card_names_base_data_options_evals_and_command(run_dir):
    from chainforge.formats import SUPER_COT_SYSTEM_PROMPT

    out = run_dir["root"] / "01-sft"
    card = (out / "README.md").read_text()
    assert "[None]" not in card and "fine-tuned version" not in card
    assert "base_model:" not in card  # the hub's field takes hub ids, not local folders
    assert f"**Base model:** `{run_dir['base']}`" in card
    assert "base → `sft` (01-sft)" in card
    sha = hashlib.sha256(run_dir["data"].read_bytes()).hexdigest()[:16]
    assert f"`{run_dir['data']}`, fingerprint `sha256:{sha}`, 8 rows" in card
    assert "| max_steps | 2 |" in card and "| batch_size | 4 |" in card
    # the base's evaluation, found next to the output
    assert "| 00-eval-base |" in card
    assert f"chainforge sft --model {run_dir['base']} --data {run_dir['data']} --output {out}" in card
    assert "--max-steps 2" in card and "--overwrite" not in card
    # the system prompt it was trained with: a file and the manifest
    assert (out / "system_prompt.txt").read_text() == SUPER_COT_SYSTEM_PROMPT
    assert json.loads((out / "chainforge.json").read_text())["system_prompt"] == SUPER_COT_SYSTEM_PROMPT


def test_second_stage_card_has_the_chain_and_its_own_system_prompt(run_dir):
    out = run_dir["root"] / "02-sft-brief"
    card = (out / "README.md").read_text()
    assert f"**Base model:** `{run_dir['base']}`" in card
    assert "base → `sft` (01-sft) → `sft` (02-sft-brief)" in card
    assert "--system-prompt 'Be brief.'" in card and "--learning-rate 0.0001" in card
    assert (out / "system_prompt.txt").read_text() == "Be brief."
    assert "| 00-eval-base |" in card  # the base is in the chain: its evaluation is known


def test_chatml_checkpoint_stops_at_im_end(run_dir):
    tok = json.loads((run_dir["base"] / "tokenizer.json").read_text())
    ids = {t["content"]: t["id"] for t in tok["added_tokens"]}
    for name in ("01-sft", "02-sft-brief"):
        gen = json.loads((run_dir["root"] / name / "generation_config.json").read_text())
        eos = gen["eos_token_id"]
        assert isinstance(eos, list) and set(eos) == {ids["<|endoftext|>"], ids["<|im_end|>"]}
    from transformers import GenerationConfig

    assert ids["<|im_end|>"] in GenerationConfig.from_pretrained(run_dir["root"] / "01-sft").eos_token_id


def test_eval_inherits_the_checkpoints_system_prompt(run_dir, cli, tiny_model, tmp_path):
    # The two sft steps above teach the tiny model to answer everything alike, so the prompt's effect
    # is watched on the random tiny model, given the system_prompt.txt the sft output has.
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_model, ckpt)
    shutil.copy(run_dir["root"] / "02-sft-brief" / "system_prompt.txt", ckpt / "system_prompt.txt")
    common = ["--model", ckpt, "--data", run_dir["test"], "--temperature", "1.0", "--num-samples", 1, "--seed", 3,
              "--max-new-tokens", 8]  # seeded: the same prompt draws the same text
    inherited = cli("eval", *common, "--output", tmp_path / "e-inherited")
    assert inherited.exit_code == 0, inherited.output
    said = " ".join(inherited.output.split())  # the log wraps long lines
    assert f"system prompt: the one {ckpt} was trained with (system_prompt.txt); --system-prompt to change it" in said
    explicit = cli("eval", *common, "--output", tmp_path / "e-explicit", "--system-prompt", "Be brief.")
    default = cli("eval", *common, "--output", tmp_path / "e-default", "--system-prompt",
                  __import__("chainforge.formats", fromlist=["x"]).SUPER_COT_SYSTEM_PROMPT)
    assert "system prompt: the one" not in explicit.output

    def completions(name):
        return [r["completions"] for r in map(json.loads, (tmp_path / name / "results.jsonl").read_text()
                                              .splitlines())]

    assert completions("e-inherited") == completions("e-explicit")
    assert completions("e-inherited") != completions("e-default")
    from chainforge.sampling import resolve_system_prompt

    assert resolve_system_prompt(None, run_dir["root"] / "02-sft-brief", quiet=True) == "Be brief."
    assert resolve_system_prompt("", ckpt, quiet=True) is None  # '' still means none
    assert resolve_system_prompt("Other.", ckpt, quiet=True) == "Other."


def test_reject_and_decontaminate_write_dataset_cards(run_dir, cli, tmp_path):
    out = tmp_path / "reject"
    r = cli("reject", "--model", run_dir["root"] / "01-sft", "--data", run_dir["test"], "--output", out,
            "--num-samples", 2, "--max-new-tokens", 4, "--min-reward", "-100")
    assert r.exit_code == 0, r.output
    card = (out / "README.md").read_text()
    manifest = json.loads((out / "chainforge.json").read_text())
    assert f"- **Rows:** {manifest['metrics']['kept']}" in card and manifest["metrics"]["kept"] == 3
    assert f"model `{run_dir['root'] / '01-sft'}`" in card
    assert "best of 2 candidates per prompt, kept when its reward reaches --min-reward -100.0" in card
    for column in ("| id |", "| prompt |", "| reward | float64 |", "| kept_rank | int64 |", "| messages |"):
        assert column in card
    assert "system_prompt.txt" not in {p.name for p in out.iterdir()}  # a dataset, not a checkpoint

    clean = tmp_path / "clean"
    r = cli("decontaminate", "--data", run_dir["data"], "--against", run_dir["test"], "--output", clean,
            "--ngram", 3)
    assert r.exit_code == 0, r.output
    card = (clean / "README.md").read_text()
    m = json.loads((clean / "chainforge.json").read_text())["metrics"]
    assert m["removed"] == 3
    assert f"rows sharing a 3-word run with a prompt of {run_dir['test']} removed (3 of 8" in card
    assert "- **Rows:** 5" in card


def test_collect_card_names_models_and_cost(tmp_path):
    from chainforge.cards import dataset_card
    from chainforge.stages import reproduce_command

    config = {"prompts": "p.jsonl", "teacher": "deepseek", "teacher_model": "deepseek-flash",
              "expander": "anthropic", "expander_model": "claude-x", "keep_incorrect": False, "api_key": "***"}
    card = dataset_card("collect", tmp_path, config, [],
                        {"prompts": 4, "rows": 3, "failed": 1, "cost_usd": 0.01234, "requests": 9},
                        reproduce_command("collect", config))
    assert "teacher_model `deepseek-flash`" in card and "expander_model `claude-x`" in card
    assert "- **Cost:** $0.0123 (9 API requests)" in card
    assert "rows whose final answer did not match the reference dropped (--drop-incorrect); 1 prompts failed" in card
    assert "***" not in card.split("## Reproduce")[1]


def test_collect_with_a_local_teacher_writes_a_dataset_card(cli, tmp_path, tiny_model):
    out = tmp_path / "collect"
    data = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"What is {i} + 1?", "answer": str(i + 1)} for i in range(3)])
    r = cli("collect", "--prompts", data, "--output", out, "--teacher", "local", "--teacher-model", tiny_model,
            "--max-new-tokens", 12, "--expander", "none", "--keep-incorrect")
    assert r.exit_code == 0, r.stderr
    card = (out / "README.md").read_text()
    m = json.loads((out / "chainforge.json").read_text())["metrics"]
    assert f"- **Rows:** {m['rows']}" in card and m["rows"] >= 1
    assert f"- **From:** `{data}` (3 prompts)" in card
    assert f"teacher `local`, teacher_model `{tiny_model}`, expander `none`" in card
    assert "- **Cost:** $0.0000" in card
    assert "all answers kept (--keep-incorrect)" in card
    for column in ("| text | string |", "| steps | list[string] |", "| correct |"):
        assert column in card
    assert "--teacher local" in card and "--keep-incorrect" in card


def test_model_card_from_a_hub_model_names_it_in_the_hub_field(tmp_path):
    from chainforge.cards import model_card
    from chainforge.stages import reproduce_command

    config = {"model": "Qwen/Qwen2.5-0.5B-Instruct", "data": "openai/gsm8k", "learning_rate": 1e-6}
    card = model_card("grpo", tmp_path / "rl", config, [], {"steps": 3}, "Think.", reproduce_command("grpo", config))
    assert 'base_model: "Qwen/Qwen2.5-0.5B-Instruct"' in card.split("---")[1]
    assert "base → `grpo` (rl)" in card and "| learning_rate | 1e-06 |" in card
    assert "chainforge grpo --model Qwen/Qwen2.5-0.5B-Instruct --data openai/gsm8k" in card
