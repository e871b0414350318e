"""The measurements behind scripts/gpu_check.sh, one per subcommand, each in its own process.

    python scripts/gpu_check.py build  OUT    # random-init models (Qwen2.5-1.5B / 0.5B shapes) and data
    python scripts/gpu_check.py sft    OUT    # bf16 SFT: tokens/s and MFU
    python scripts/gpu_check.py grpo   OUT [--vllm]   # GRPO steps: generation share of step time
    python scripts/gpu_check.py reject OUT    # HF vs vLLM sampling throughput on the same prompts
    python scripts/gpu_check.py fsdp   OUT    # FSDP save, kill, resume, from_pretrained (2+ GPUs)
    python scripts/gpu_check.py report OUT    # OUT/gpu_check.json and the table

Each measuring subcommand writes OUT/results/NAME.json (docs/gpu-check.md describes the fields),
an error included, so one failed check never hides the others. GPU_CHECK_TINY=1 swaps in tiny
shapes and a few steps: the plumbing runs on a CPU in a minute (the test suite does that).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import random
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # helpers/tiny.py: a tokenizer built offline, no hub access needed

TINY = os.environ.get("GPU_CHECK_TINY") == "1"
SCHEMA = 1

# Dense bf16 tensor-core peaks in TFLOP/s (vendor data sheets, no sparsity). Longest name first:
# "H100 PCIe" before "H100". GPU_CHECK_PEAK_TFLOPS overrides.
PEAK_BF16_TFLOPS = [("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("GH200", 989.4), ("H200", 989.4),
                    ("H100", 989.4), ("H800", 989.4), ("H20", 148.0), ("B200", 2250.0), ("A100", 312.0),
                    ("A800", 312.0), ("L40S", 362.0), ("L40", 181.0), ("A10G", 70.0), ("A10", 125.0),
                    ("L4", 121.0), ("RTX 4090", 165.2), ("A6000", 154.8)]

# Targets on an H100/H200 (docs/gpu-check.md): (metric, rule, value)
TARGETS = {"sft": ("mfu", ">=", 0.40), "grpo-vllm": ("generation_time_share", "<=", 0.50),
           "reject": ("vllm_speedup", ">=", 5.0)}

SHAPES = {  # Qwen2.5 shapes (the vocabulary is the offline test tokenizer's, see build)
    "sft": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                num_key_value_heads=2),
    "small": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                  num_key_value_heads=2),
}
TINY_SHAPE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2)


def gpu() -> dict:
    import torch

    if not torch.cuda.is_available():
        return {"gpu": None, "gpus": 0, "peak_bf16_tflops": None}
    name = torch.cuda.get_device_name(0)
    peak = os.environ.get("GPU_CHECK_PEAK_TFLOPS")
    value = float(peak) if peak else next((v for key, v in PEAK_BF16_TFLOPS if key in name), None)
    return {"gpu": name, "gpus": torch.cuda.device_count(), "peak_bf16_tflops": value}


def verdict(check: str, value) -> tuple[str, dict | None]:
    target = TARGETS.get(check)
    if target is None:
        return "ok", None
    metric, rule, bound = target
    spec = {"metric": metric, "rule": rule, "value": bound}
    if value is None:
        return "no_target", spec
    met = value >= bound if rule == ">=" else value <= bound
    return ("ok" if met else "below_target"), spec


def write_result(out: Path, check: str, fn) -> None:
    """Run one measurement; its result (or its error) goes to OUT/results/CHECK.json."""
    started = time.time()
    try:
        result = fn()
        status, target = verdict(check, result.get("value"))
        result = {"check": check, "status": result.pop("status", status), "target": target, **result}
    except Exception as exc:  # a failed check is a result too
        traceback.print_exc()
        result = {"check": check, "status": "error", "error": f"{type(exc).__name__}: {exc}"[:2000],
                  "value": None, "target": None}
    result["seconds"] = round(time.time() - started, 1)
    folder = out / "results"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{check}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"gpu_check: {check}: {result['status']} {result.get('metric', '')}={result.get('value')}",
          file=sys.stderr)


# ---- build -------------------------------------------------------------------------------------

def build(out: Path) -> None:
    """Random-init models with Qwen2.5 shapes and the offline test tokenizer (its ~400-token
    vocabulary replaces Qwen's 151,936: no download, and the embedding is a rounding error of the
    parameter count), SFT rows near the training length, and arithmetic prompts."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from helpers.tiny import build_tokenizer

    tok = build_tokenizer()
    for name, shape in SHAPES.items():
        folder = out / "models" / name
        if (folder / "config.json").is_file():
            continue
        torch.manual_seed(0)
        config = Qwen2Config(vocab_size=len(tok), max_position_embeddings=32768, rope_theta=1e6,
                             tie_word_embeddings=True, eos_token_id=tok.eos_token_id,
                             pad_token_id=tok.pad_token_id, bos_token_id=None, **(TINY_SHAPE if TINY else shape))
        model = Qwen2ForCausalLM(config).to(torch.bfloat16)
        model.generation_config.eos_token_id = tok.eos_token_id
        model.generation_config.pad_token_id = tok.pad_token_id
        model.save_pretrained(str(folder))
        tok.save_pretrained(str(folder))
        del model
    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    words = " ".join(__import__("helpers.tiny", fromlist=["CORPUS"]).CORPUS).split()
    target = 200 if TINY else 1900  # tokens per SFT row: near --max-length, little padding
    rows = []
    for i in range(64 if not TINY else 8):
        text = []
        while len(tok(" ".join(text))["input_ids"]) < target:
            text.extend(rng.choice(words) for _ in range(50))
        answer = " ".join(text)
        ids = tok(answer)["input_ids"][:target]
        rows.append({"messages": [{"role": "user", "content": f"Question {i}: what is {i} + {i}?"},
                                  {"role": "assistant", "content": tok.decode(ids)}]})
    (data / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    prompts = [{"prompt": f"What is {a} + {b}?", "answer": str(a + b)} for a in range(16) for b in range(8)]
    (data / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in prompts))


def param_count(folder: Path) -> int:
    from transformers import AutoConfig, AutoModelForCausalLM

    import torch

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(folder)))
    return sum(p.numel() for p in model.parameters())


# ---- sft: tokens/s and MFU ---------------------------------------------------------------------

def sft(out: Path) -> dict:
    """chainforge's SFT path (training.sft_args / load_trainable / train_sft) on the 1.5B shape in
    bf16 autocast; tokens/s in steady state (after the first steps) from TRL's token counts."""
    import importlib.util
    import shutil

    import datasets
    import torch
    from transformers import TrainerCallback

    from chainforge import training
    from chainforge.outputs import plan_output
    from chainforge.models import load_tokenizer, resolve_model, training_template
    from chainforge.stages.sft import SftConfig

    folder = out / "models" / "sft"
    flash = torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None
    attn = "flash_attention_2" if flash else "sdpa"
    steps = 4 if TINY else 24
    config = SftConfig(model=str(folder), data=str(out / "data" / "sft.jsonl"), output=str(out / "runs" / "sft"),
                       overwrite=True, max_steps=steps, batch_size=2 if TINY else 8, grad_accum=1,
                       max_length=256 if TINY else 2048, packing=False, attn_implementation=attn,
                       auto_batch_size=True, optim="adamw_torch_fused" if torch.cuda.is_available() else "adamw_torch",
                       save_steps=10 ** 6, logging_steps=1, warmup_ratio=0.0, max_new_tokens=8)
    shutil.rmtree(config.output, ignore_errors=True)
    ref = resolve_model(str(folder))
    tok = load_tokenizer(ref)
    rows = [json.loads(line) for line in (out / "data" / "sft.jsonl").read_text().splitlines()]
    dataset = datasets.Dataset.from_list(rows)
    training_template(tok, rows[0]["messages"])
    plan = plan_output(config.output, "sft", config, overwrite=True)
    args = training.sft_args(config, plan.path)
    run_out = plan.create(inputs=[config.data])
    model = training.load_trainable(ref, config)

    marks: list[tuple[float, int]] = []

    class Timer(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "num_tokens" in logs:
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                marks.append((time.perf_counter(), int(float(logs["num_tokens"]))))

    metrics = training.train_sft(config, run_out, model, tok, dataset, args=args, callbacks=[Timer()])
    skip = min(2, len(marks) - 2)
    (t0, n0), (t1, n1) = marks[skip], marks[-1]
    tokens_per_s = (n1 - n0) / (t1 - t0) if t1 > t0 else None
    params = param_count(folder)
    peak = gpu()["peak_bf16_tflops"]
    mfu = 6 * params * tokens_per_s / (peak * 1e12) if peak and tokens_per_s else None
    memory = torch.cuda.max_memory_allocated() / 2 ** 30 if torch.cuda.is_available() else None
    return {"metric": "mfu", "value": mfu, "detail": {
        "tokens_per_s": tokens_per_s, "params": params, "attn_implementation": attn,
        "batch_size": metrics.get("batch_size"), "grad_accum": metrics.get("grad_accum"),
        "max_length": config.max_length, "steps": metrics.get("steps"), "steps_timed": len(marks) - 1 - skip,
        "peak_bf16_tflops": peak, "max_memory_gib": memory, "dtype": "fp32 weights, bf16 autocast"}}


# ---- grpo: generation share ---------------------------------------------------------------------

def grpo(out: Path, vllm: bool) -> dict:
    """`chainforge grpo` for a few steps on the 0.5B shape (its own process: vLLM's memory goes with
    it); generation_time_share and the step time from its manifest."""
    import shutil

    name = "grpo-vllm" if vllm else "grpo-hf"
    target = out / "runs" / name
    shutil.rmtree(target, ignore_errors=True)
    cmd = [sys.executable, "-m", "chainforge", "grpo", "--model", str(out / "models" / "small"),
           "--data", str(out / "data" / "prompts.jsonl"), "--output", str(target),
           "--max-steps", "2" if TINY else "6", "--num-generations", "4" if TINY else "8",
           "--prompts-per-step", "2" if TINY else "8", "--max-new-tokens", "16" if TINY else "512",
           "--save-steps", "1000", "--logging-steps", "1", "--rewards", "accuracy,format"]
    if vllm:
        import importlib.util

        if importlib.util.find_spec("vllm") is None:
            return {"status": "skipped", "metric": "generation_time_share", "value": None,
                    "detail": {"why": "vllm is not installed (pip install 'chainforge-r1[vllm]')"}}
        cmd += ["--vllm-mode", "colocate", "--vllm-gpu-memory", "0.3"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    (out / "logs" / f"{name}.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"chainforge grpo exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}")
    metrics = json.loads((target / "chainforge.json").read_text())["metrics"]
    keep = ("steps", "generation_time_share", "reward", "train_runtime", "format_rate")
    return {"metric": "generation_time_share", "value": metrics.get("generation_time_share"),
            "detail": {k: metrics.get(k) for k in keep if k in metrics}}


# ---- reject: HF vs vLLM ------------------------------------------------------------------------

def reject(out: Path) -> dict:
    """The sampling engine reject uses (chainforge.sampling.generate), on the same prompts through
    the HF loop and through vLLM: generated tokens per second, timed after a warm-up."""
    import gc
    import importlib.util

    import torch

    from chainforge.models import resolve_model
    from chainforge.sampling import EngineSpec, generate, load_engine, load_vllm

    folder = out / "models" / "small"
    rows = [json.loads(line) for line in (out / "data" / "prompts.jsonl").read_text().splitlines()]
    prompts = [r["prompt"] for r in rows[: (8 if TINY else 128)]]
    kwargs = dict(n=4 if TINY else 8, temperature=0.7, top_p=0.95, max_new_tokens=16 if TINY else 256, seed=0)

    def timed(model, tok) -> dict:
        generate(model, tok, prompts[:2], **{**kwargs, "n": 1, "max_new_tokens": 8})  # warm-up
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        outs = generate(model, tok, prompts, **kwargs)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        tokens = sum(c.tokens for comps in outs for c in comps)
        return {"tokens": tokens, "seconds": round(seconds, 3), "tokens_per_s": tokens / seconds}

    ref = resolve_model(str(folder))
    model, tok = load_engine(EngineSpec(ref, "hf", "auto", 0))
    hf = timed(model, tok)
    del model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    detail = {"prompts": len(prompts), "samples": kwargs["n"], "max_new_tokens": kwargs["max_new_tokens"], "hf": hf}
    if importlib.util.find_spec("vllm") is None:
        return {"status": "skipped", "metric": "vllm_speedup", "value": None,
                "detail": {**detail, "why": "vllm is not installed (pip install 'chainforge-r1[vllm]')"}}
    vllm = timed(load_vllm(str(folder), seed=0), tok)
    detail["vllm"] = vllm
    return {"metric": "vllm_speedup", "value": vllm["tokens_per_s"] / hf["tokens_per_s"], "detail": detail}


# ---- fsdp: save, kill, resume, load -------------------------------------------------------------

def fsdp(out: Path) -> dict:
    """accelerate launch with configs/accelerate/fsdp.yaml on 2 GPUs: `chainforge sft` is killed once
    a checkpoint is complete, the same command resumes from it, and from_pretrained loads the
    result (same parameter count as the model it started from, finite logits)."""
    import shutil

    import torch

    if torch.cuda.device_count() < 2:
        return {"status": "skipped", "metric": "round_trip", "value": None,
                "detail": {"why": f"needs 2 GPUs, found {torch.cuda.device_count()}"}}
    from chainforge.training import checkpoint_problem

    target = out / "runs" / "fsdp"
    shutil.rmtree(target, ignore_errors=True)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(REPO / "configs" / "accelerate" / "fsdp.yaml"), "--num_processes", "2", "-m", "chainforge", "sft",
           "--model", str(out / "models" / "small"), "--data", str(out / "data" / "sft.jsonl"),
           "--output", str(target), "--max-steps", "40", "--save-steps", "2", "--batch-size", "2",
           "--max-length", "1024", "--no-packing", "--max-new-tokens", "8"]
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / "fsdp-first.log", "w") as log:
        first = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True)
        killed_at = None
        deadline = time.time() + 300
        while first.poll() is None and time.time() < deadline:
            ready = [c for c in target.glob("checkpoint-*") if c.is_dir() and checkpoint_problem(c) is None]
            if ready:
                killed_at = max(ready, key=lambda c: int(c.name.split("-")[1])).name
                os.killpg(first.pid, signal.SIGKILL)  # a crash, not a clean stop
                break
            time.sleep(1)
        first.wait()
    second = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    (logs / "fsdp-resume.log").write_text(second.stdout + second.stderr)
    if second.returncode != 0:
        raise RuntimeError(f"resumed run exit {second.returncode}: {second.stderr.strip().splitlines()[-1:]}")
    resumed = "resuming from checkpoint-" in second.stdout + second.stderr
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(target), dtype=torch.bfloat16).to("cuda")
    ids = torch.tensor([[1, 2, 3, 4]], device="cuda")
    finite = bool(torch.isfinite(model(input_ids=ids).logits).all())
    same = sum(p.numel() for p in model.parameters()) == param_count(out / "models" / "small")
    ok = bool(killed_at and resumed and finite and same)
    return {"status": "ok" if ok else "error", "metric": "round_trip", "value": ok,
            "detail": {"killed_after": killed_at, "resumed": resumed, "params_match": same,
                       "finite_logits": finite}}


# ---- report ------------------------------------------------------------------------------------

ORDER = ["sft", "grpo-hf", "grpo-vllm", "reject", "fsdp"]


def report(out: Path) -> dict:
    import importlib.metadata as md

    def version(name: str):
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return None

    results = {}
    for f in sorted((out / "results").glob("*.json")):
        results[f.stem] = json.loads(f.read_text())
    checks = [results[c] for c in ORDER if c in results] + [r for c, r in results.items() if c not in ORDER]
    doc = {"schema": SCHEMA, "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
           **gpu(), "tiny": TINY,
           "versions": {n: version(n) for n in ("torch", "transformers", "trl", "accelerate", "vllm", "flash-attn")},
           "checks": checks}
    (out / "gpu_check.json").write_text(json.dumps(doc, indent=2) + "\n")
    print(table(doc))
    return doc


def table(doc: dict) -> str:
    def fmt(v):
        if v is None:
            return "-"
        if isinstance(v, bool):
            return "yes" if v else "no"
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = [f"GPU check {doc['date']}: {doc['gpu'] or 'no GPU'} x{doc['gpus']}"
             + (" (tiny shapes)" if doc["tiny"] else ""),
             f"{'check':<10} {'metric':<22} {'value':>8} {'target':>8} {'status':<12} {'s':>6}"]
    for c in doc["checks"]:
        t = c.get("target")
        target = f"{t['rule']}{t['value']:g}" if t else "-"
        lines.append(f"{c['check']:<10} {c.get('metric', '-'):<22} {fmt(c.get('value')):>8} {target:>8} "
                     f"{c['status']:<12} {fmt(c.get('seconds')):>6}")
        if c.get("error"):
            lines.append(f"           error: {c['error'][:200]}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] not in ("build", "sft", "grpo", "reject", "fsdp", "report"):
        print(__doc__, file=sys.stderr)
        return 2
    command, out = argv[0], Path(argv[1]).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if command == "build":
        build(out)
    elif command == "report":
        report(out)
    elif command == "grpo":
        vllm = "--vllm" in argv[2:]
        write_result(out, "grpo-vllm" if vllm else "grpo-hf", lambda: grpo(out, vllm))
    else:
        write_result(out, command, {"sft": lambda: sft(out), "reject": lambda: reject(out),
                                    "fsdp": lambda: fsdp(out)}[command])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
