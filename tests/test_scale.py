"""Scaling options: --attn-implementation, --auto-batch-size, grpo's vLLM modes, distill --backend
vllm, and the 7B recipe's validation (no download: every stage's config is built)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from helpers.cli import assert_exit_2
from helpers.files import write_jsonl
from helpers.rows import arithmetic, collect_rows

REPO = Path(__file__).resolve().parent.parent
HAS_VLLM = importlib.util.find_spec("vllm") is not None
SFT_FAST = ["--max-steps", "2", "--max-length", "256", "--no-packing", "--save-steps", "1", "--max-new-tokens", "4"]


# ---- --attn-implementation ---------------------------------------------------------------------

@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_attn_implementation_is_passed_to_from_pretrained(tiny_model, attn):
    from chainforge import training
    from chainforge.models import resolve_model
    from chainforge.stages.sft import SftConfig

    config = SftConfig(model=str(tiny_model), data="d.jsonl", output="o", attn_implementation=attn)
    model = training.load_trainable(resolve_model(str(tiny_model)), config)
    assert model.config._attn_implementation == attn


def test_flash_attention_2_on_a_machine_without_it_is_exit_2(cli, tiny_model, tmp_path):
    if importlib.util.find_spec("flash_attn") is not None:
        import torch

        if torch.cuda.is_available():
            pytest.skip("flash-attn and a GPU are here")
    data = write_jsonl(tmp_path / "d.jsonl", collect_rows(4))
    out = tmp_path / "out"
    r = cli("sft", "--model", tiny_model, "--data", data, "--output", out, "--attn-implementation",
            "flash_attention_2", *SFT_FAST)
    # refused once the data is read (a recipe naming it still validates on a machine without it)
    # exit 2 on what the machine lacks: one `Error:` line last, after the data-loading messages
    line = assert_exit_2(r, "sdpa", alone=False)
    assert line.startswith("Error: --attn-implementation flash_attention_2 needs"), line
    assert not out.exists()


def test_an_unknown_attn_implementation_is_refused(cli, tiny_model, tmp_path):
    r = cli("sft", "--model", tiny_model, "--data", "d.jsonl", "--output", tmp_path / "o",
            "--attn-implementation", "flash_attention_9")
    assert r.exit_code == 2 and "flash_attention_9" in r.output + r.stderr


# ---- --auto-batch-size -------------------------------------------------------------------------

@pytest.fixture
def oom_above_two_rows(monkeypatch):
    """Training steps on more than two rows fail as a GPU out of memory does."""
    import torch
    from transformers import Trainer

    real = Trainer.training_step
    sizes = []

    def training_step(self, model, inputs, *args, **kwargs):
        rows = inputs["input_ids"].shape[0]
        sizes.append(rows)
        if rows > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(self, model, inputs, *args, **kwargs)

    monkeypatch.setattr(Trainer, "training_step", training_step)
    return sizes


def test_auto_batch_size_halves_on_out_of_memory_keeping_the_effective_batch(cli, tiny_model, tmp_path,
                                                                            oom_above_two_rows):
    data = write_jsonl(tmp_path / "d.jsonl", collect_rows(12))
    out = tmp_path / "out"
    r = cli("sft", "--model", tiny_model, "--data", data, "--output", out, "--batch-size", "8", "--grad-accum", "1",
            "--auto-batch-size", *SFT_FAST)
    assert r.exit_code == 0, r.output + r.stderr
    assert oom_above_two_rows[:2] == [8, 4] and set(oom_above_two_rows[2:]) <= {1, 2}
    m = json.loads((out / "chainforge.json").read_text())
    assert m["status"] == "complete"
    assert (m["metrics"]["batch_size"], m["metrics"]["grad_accum"]) == (2, 4)  # 8 x 1 = 2 x 4
    assert "out of memory at --batch-size 8" in r.stderr and "retrying with 4 x grad-accum 2" in r.stderr
    from helpers.checkpoints import load_checkpoint

    load_checkpoint(out, tiny_model)  # whole, and trained by the retried steps


def test_out_of_memory_without_auto_batch_size_stops_with_exit_1(cli, tiny_model, tmp_path, oom_above_two_rows):
    data = write_jsonl(tmp_path / "d.jsonl", collect_rows(12))
    out = tmp_path / "out"
    r = cli("sft", "--model", tiny_model, "--data", data, "--output", out, "--batch-size", "4", *SFT_FAST)
    assert r.exit_code == 1 and "out of memory" in r.stderr, r.stderr
    assert oom_above_two_rows == [4]
    assert json.loads((out / "chainforge.json").read_text())["status"] == "incomplete"


def test_halved_grpo_args_keep_the_generation_batch(tmp_path):
    from trl import GRPOConfig

    from chainforge import training
    from chainforge.stages.grpo import GrpoConfig

    config = GrpoConfig(model="m", data="d", output=str(tmp_path / "o"), num_generations=4, prompts_per_step=2)
    args = training.trainer_args(config, tmp_path / "o", GRPOConfig, per_device_train_batch_size=8,
                                 gradient_accumulation_steps=1, num_generations=4)
    smaller = training.halved(args)
    assert (smaller.per_device_train_batch_size, smaller.gradient_accumulation_steps) == (4, 2)
    assert smaller.generation_batch_size == args.generation_batch_size == 8
    assert training.halved(training.halved(training.halved(smaller))) is None  # 2, 1, then no smaller


def test_auto_batch_size_under_a_launcher_is_refused(cli, tiny_model, tmp_path, monkeypatch):
    data = write_jsonl(tmp_path / "d.jsonl", collect_rows(4))
    monkeypatch.setenv("WORLD_SIZE", "2")
    r = cli("sft", "--model", tiny_model, "--data", data, "--output", tmp_path / "out", "--auto-batch-size",
            *SFT_FAST)
    line = assert_exit_2(r, alone=False)  # after the data-loading messages
    assert line.startswith("Error: --auto-batch-size works in one process"), line
    assert not (tmp_path / "out").exists()


# ---- grpo: vLLM colocate / server --------------------------------------------------------------

def grpo_args(tmp_path, **options):
    """The GRPOConfig TRL receives for these grpo options (built as `chainforge grpo` builds it)."""
    from trl import GRPOConfig

    from chainforge import training
    from chainforge.stages.grpo import GrpoConfig, vllm_fields

    config = GrpoConfig(model="m", data="d", output=str(tmp_path / "o"), **options)
    return training.trainer_args(config, tmp_path / "o", GRPOConfig, per_device_train_batch_size=4,
                                 num_generations=4, **vllm_fields(config))


def test_vllm_server_mode_reaches_trl(tmp_path):
    args = grpo_args(tmp_path, vllm_mode="server", vllm_server_url="http://10.0.0.8:8000/")
    assert (args.use_vllm, args.vllm_mode, args.vllm_server_base_url) == (True, "server", "http://10.0.0.8:8000")


def test_vllm_colocate_mode_reaches_trl(tmp_path):
    args = grpo_args(tmp_path, vllm_mode="colocate", vllm_gpu_memory=0.45)
    assert (args.use_vllm, args.vllm_mode, args.vllm_gpu_memory_utilization) == (True, "colocate", 0.45)
    plain = grpo_args(tmp_path, use_vllm=True)
    assert (plain.use_vllm, plain.vllm_mode) == (True, "colocate")
    assert grpo_args(tmp_path).use_vllm is False


@pytest.mark.skipif(HAS_VLLM, reason="vllm is installed here")
@pytest.mark.parametrize("extra", [["--vllm-mode", "server", "--vllm-server-url", "http://127.0.0.1:8000"],
                                   ["--vllm-mode", "colocate"]])
def test_vllm_mode_without_vllm_names_the_extra(cli, tiny_model, tmp_path, extra):
    data = write_jsonl(tmp_path / "p.jsonl", arithmetic())
    out = tmp_path / "out"
    r = cli("grpo", "--model", tiny_model, "--data", data, "--output", out, *extra)
    assert_exit_2(r, "pip install 'chainforge-r1[vllm]'", f"--vllm-mode {extra[1]}")
    assert not out.exists()


@pytest.mark.parametrize("extra,fragment", [
    (["--vllm-server-url", "http://127.0.0.1:8000"], "add --vllm-mode server"),
    (["--vllm-mode", "server", "--vllm-server-url", "127.0.0.1:8000"], "http(s)://HOST:PORT"),
    (["--vllm-mode", "server", "--vllm-server-url", "http://bob:hunter2@10.0.0.8:8000"], "must not carry credentials"),
])
def test_bad_vllm_server_options_are_exit_2(cli, tiny_model, tmp_path, extra, fragment):
    out = tmp_path / "out"
    r = cli("grpo", "--model", tiny_model, "--data", "p.jsonl", "--output", out, *extra)
    assert_exit_2(r, fragment)
    assert "hunter2" not in r.stderr + r.stdout
    assert not out.exists()


@pytest.mark.skipif(HAS_VLLM, reason="vllm is installed here")
def test_distill_backend_vllm_without_vllm_names_the_extra(cli, tiny_model, tmp_path):
    data = write_jsonl(tmp_path / "p.jsonl", arithmetic())
    out = tmp_path / "out"
    r = cli("distill", "--teacher", tiny_model, "--student", tiny_model, "--data", data, "--output", out,
            "--backend", "vllm")
    assert_exit_2(r, "pip install 'chainforge-r1[vllm]'", "--backend hf")
    assert not out.exists()


# ---- the 7B recipe -----------------------------------------------------------------------------

def test_the_7b_recipe_reads_public_math_data_by_hub_id_with_its_column_mapping(tmp_path, monkeypatch):
    """Every stage's config is built (validated) from the hub ids; nothing is downloaded or created."""
    from chainforge.stages.run import load_recipe, plan_stages

    monkeypatch.chdir(tmp_path)
    plan = {s.name: s for s in plan_stages(load_recipe(REPO / "configs" / "qwen2.5-7b.yaml"))}
    clean = plan["decontaminate"]
    assert list(plan)[0] == "decontaminate"  # before any stage reads the training prompts
    assert (clean.config.data, clean.config.subset, clean.config.split) == ("open-r1/OpenR1-Math-220k", "default",
                                                                            "train")
    assert clean.config.against == ["HuggingFaceH4/MATH-500:column=problem:split=test",
                                    "openai/gsm8k:subset=main:split=test:column=question"]
    assert clean.config.prompt_column == "problem"
    for name in ("collect", "rl", "reject", "rl-final", "distill"):
        config = plan[name].config
        source = config.prompts if name == "collect" else config.data
        assert source == str(clean.output), name  # the decontaminated rows
        assert (config.prompt_column, config.answer_column) == ("problem", "answer"), name
    for name in ("gsm8k-base", "gsm8k-final", "gsm8k-student"):
        config = plan[name].config
        assert (config.data, config.subset, config.split) == ("openai/gsm8k", "main", "test")
        assert (config.prompt_column, config.answer_column) == ("question", "answer")
    assert plan["gsm8k-base"].config.model == "Qwen/Qwen2.5-7B"
    assert plan["gsm8k-final"].config.model == str(plan["rl-final"].output)
    assert plan["gsm8k-student"].config.model == str(plan["distill"].output)
    assert plan["reject"].config.backend == plan["distill"].config.backend == "vllm"
    assert not any(tmp_path.iterdir())


def test_a_recipe_keeps_hub_ids_and_resolves_local_paths(tmp_path, monkeypatch):
    from chainforge.stages.run import _data

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    assert _data("openai/gsm8k") == "openai/gsm8k"
    assert _data("data/gsm8k") == str(tmp_path / "data" / "gsm8k")  # its folder is here: a path
    assert _data("toy/train.jsonl") == str(tmp_path / "toy" / "train.jsonl")
    assert _data("./x/y") == str(tmp_path / "x" / "y")


def test_the_server_mode_option_file_gives_trl_server_mode(tmp_path):
    import yaml

    values = yaml.safe_load((REPO / "configs" / "grpo-qwen2.5-7b-vllm-server.yaml").read_text())
    args = grpo_args(tmp_path, vllm_mode=values["vllm_mode"], vllm_server_url=values["vllm_server_url"])
    assert (args.use_vllm, args.vllm_mode, args.vllm_server_base_url) == (True, "server", "http://localhost:8000")
    assert values["batch_size"] * 7 * values["grad_accum"] % values["num_generations"] == 0


# ---- scripts/gpu_check.sh ----------------------------------------------------------------------

@pytest.mark.slow
def test_gpu_check_runs_end_to_end_in_tiny_mode_and_writes_its_documented_json(tmp_path):
    """The GPU check's plumbing on this machine (GPU_CHECK_TINY=1: tiny shapes, a few steps): every
    check leaves a result, the JSON has the documented fields, and checks that need what is
    missing here (vLLM, a GPU's peak, 2 GPUs) say `skipped` / `no_target` instead of failing."""
    import os
    import subprocess
    import sys

    out = tmp_path / "gc"
    env = {**os.environ, "GPU_CHECK_TINY": "1", "GPU_CHECK_NO_INSTALL": "1", "PYTHON": sys.executable,
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), str(out)], capture_output=True,
                          text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((out / "gpu_check.json").read_text())
    assert doc["schema"] == 1 and doc["tiny"] is True and {"date", "gpu", "gpus", "peak_bf16_tflops",
                                                           "versions", "checks"} <= set(doc)
    checks = {c["check"]: c for c in doc["checks"]}
    assert list(checks) == ["sft", "grpo-hf", "grpo-vllm", "reject", "fsdp"]
    for c in checks.values():
        assert {"check", "status", "metric", "value", "target", "seconds"} <= set(c), c
        assert c["status"] in ("ok", "below_target", "no_target", "skipped"), c  # no "error" here
    sft = checks["sft"]["detail"]
    assert sft["tokens_per_s"] > 0 and sft["params"] > 0 and sft["steps"] == 4
    assert 0 < checks["grpo-hf"]["value"] < 1
    assert checks["reject"]["detail"]["hf"]["tokens"] > 0
    if not HAS_VLLM:
        assert checks["grpo-vllm"]["status"] == checks["reject"]["status"] == "skipped"
    import torch

    if torch.cuda.device_count() < 2:
        assert checks["fsdp"]["status"] == "skipped"
    assert "check      metric" in proc.stdout and "sft" in proc.stdout  # the table
