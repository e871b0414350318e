#!/usr/bin/env python
"""Benchmark: SFT throughput of our configuration vs TRL's padded default, and MFU.

    python scripts/bench_sft.py                       # SmolLM2-135M shape, random init, CPU, fp32
    python scripts/bench_sft.py --layers 4 --rows 32  # a quicker, shallower run
    python scripts/bench_sft.py --shape qwen2.5-1.5b --dtype bf16 --rows 512   # on a GPU

Variable-length conversations (total 32..512 tokens, uniform) go through the real `chainforge sft`
code path (`training.sft_args` + `training.train_sft`'s SFTTrainer) once per configuration, one full epoch each over
the same rows, with the same batch size:

- `trl-padded`: SFTConfig's defaults (no packing, random batches padded to their longest row);
- `ours`: `chainforge sft`'s defaults (TRL's bfd packing, padding-free);
- `length-grouped` (`--no-packing`: batches of similar-length rows) and `padding-free` (TRL's
  padding_free without packing), with --all, for comparison.

tokens/s counts real (non-pad) tokens over the summed optimizer-step times (the first warm-up epoch
is not timed). MFU = 6 · params · tokens/s ÷ the matmul peak measured here (fp32 on CPU, or the
--dtype on a GPU): the dense-model estimate, which leaves attention's own FLOPs out.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

SHAPES = {
    # SmolLM2-135M-Instruct (Llama architecture)
    "smollm2-135m": dict(arch="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536,
                         num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3),
    "qwen2.5-1.5b": dict(arch="qwen2", vocab_size=151936, hidden_size=1536, intermediate_size=8960,
                         num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2),
}


def matmul_peak(dtype, device: str, n: int = 2048, reps: int = 10) -> float:
    """Best FLOP/s of an n×n matmul in `dtype` on `device`."""
    import torch

    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    best = 0.0
    for _ in range(3):
        a @ b
    for _ in range(reps):
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        best = max(best, 2 * n ** 3 / (time.perf_counter() - t))
    return best


def build_model(shape: dict, layers: int | None, tokenizer, dtype):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    shape = dict(shape)
    arch = shape.pop("arch")
    if layers:
        shape["num_hidden_layers"] = layers
    cls_config, cls_model = (LlamaConfig, LlamaForCausalLM) if arch == "llama" else (Qwen2Config, Qwen2ForCausalLM)
    config = cls_config(**shape, tie_word_embeddings=True, max_position_embeddings=2048,
                        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None)
    torch.manual_seed(0)
    return cls_model(config).to(dtype)


def conversations(tokenizer, rows: int, low: int, high: int, seed: int):
    """Rows whose rendered conversation is `low..high` tokens (uniform), Super CoT-shaped."""
    import datasets

    from chainforge.formats import write_super_cot

    rng = random.Random(seed)
    words = "the sum of two and three is five so we carry one maybe check again because ten is more".split()
    out = []
    for _ in range(rows):
        target = rng.randint(low, high)
        prompt = [{"role": "user", "content": "What is 2 + 3?"}]
        base = len(tokenizer.apply_chat_template(prompt + [{"role": "assistant", "content": "x"}], tokenize=True,
                                                 return_dict=True)["input_ids"])
        steps, n = [], 0
        while True:
            step = " ".join(rng.choice(words) for _ in range(8))
            text = write_super_cot(steps + [step], None, "5")
            n = len(tokenizer(text, add_special_tokens=False)["input_ids"])
            if base + n > target and steps:
                break
            steps.append(step)
            if base + n > target:
                break
        text = write_super_cot(steps, None, "5")
        out.append({"messages": prompt + [{"role": "assistant", "content": text}]})
    return datasets.Dataset.from_list(out)


class StepTimer:
    def __init__(self):
        from transformers import TrainerCallback

        timer = self

        class _CB(TrainerCallback):
            def on_step_begin(self, args, state, control, **kw):
                timer.sync()
                timer.t0 = time.perf_counter()

            def on_step_end(self, args, state, control, **kw):
                timer.sync()
                timer.total += time.perf_counter() - timer.t0
                timer.steps += 1

        self.callback = _CB()
        self.total = 0.0
        self.steps = 0
        self.t0 = 0.0

    @staticmethod
    def sync():
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()


def run_config(name, model_factory, tokenizer, dataset, batch_size, max_length, out_dir):
    """One epoch over `dataset` under configuration `name`; returns (real tokens, seconds, steps)."""
    from trl import SFTConfig, SFTTrainer

    from chainforge.stages.sft import SftConfig
    from chainforge.training import sft_args, trainer_args

    opts = SftConfig(model="m", data="d", output=str(out_dir), batch_size=batch_size, max_length=max_length, seed=0,
                     epochs=1.0, save_steps=10 ** 6, logging_steps=10 ** 6, learning_rate=1e-5,
                     packing=(name == "ours"))
    if name == "trl-padded":
        args = trainer_args(opts, out_dir, SFTConfig, max_length=max_length, assistant_only_loss=True,
                            save_strategy="no")
    elif name == "padding-free":
        # TRL refuses padding_free with max_length set and no packing: rows are short enough here.
        args = trainer_args(opts, out_dir, SFTConfig, max_length=None, assistant_only_loss=True,
                            padding_free=True, save_strategy="no")
    else:  # ours, length-grouped: exactly what `chainforge sft` builds (with --packing / --no-packing)
        args = sft_args(opts, out_dir, save_strategy="no")
    args.report_to = []
    timer = StepTimer()
    trainer = SFTTrainer(model=model_factory(), args=args, train_dataset=dataset, processing_class=tokenizer,
                         callbacks=[timer.callback])
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # keep the output to the result lines
    trainer.train()
    tokens = int(trainer._total_train_tokens)
    if name in ("ours", "padding-free"):
        # TRL counts padding-free tokens by sequence width, which includes pad_to_multiple_of padding
        tokens = sum(len(x) for x in trainer.train_dataset["input_ids"])
    return tokens, timer.total, timer.steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", choices=sorted(SHAPES), default="smollm2-135m")
    p.add_argument("--layers", type=int, default=None, help="keep only N decoder layers (quicker)")
    p.add_argument("--rows", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--min-tokens", type=int, default=32)
    p.add_argument("--max-tokens", type=int, default=512)
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--all", action="store_true", help="also time length-grouped and padding-free")
    a = p.parse_args()

    import os

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import datasets
    import torch
    import transformers

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    from helpers.tiny import build_tokenizer

    from chainforge.models import CHATML_TEMPLATE

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if a.dtype == "bf16" else torch.float32
    tokenizer = build_tokenizer()
    tokenizer.chat_template = CHATML_TEMPLATE
    data = conversations(tokenizer, a.rows, a.min_tokens, a.max_tokens, seed=0)
    warm = conversations(tokenizer, a.batch_size * 2, a.min_tokens, a.max_tokens, seed=1)
    shape = SHAPES[a.shape]
    # fp32 weights + bf16 autocast on GPUs (what `chainforge sft` does for full fine-tuning)
    factory = lambda: build_model(shape, a.layers, tokenizer, torch.float32)  # noqa: E731
    params = sum(t.numel() for t in factory().parameters())
    peak = matmul_peak(dtype, device)
    lengths = [len(tokenizer.apply_chat_template(r["messages"], tokenize=True, return_dict=True)["input_ids"])
               for r in data]
    print(f"device: {device} ({torch.cuda.get_device_name() if device == 'cuda' else f'{torch.get_num_threads()} threads'}), "
          f"torch {torch.__version__}, transformers {transformers.__version__}")
    print(f"model: {a.shape} random init, {params / 1e6:.1f}M params, layers={a.layers or shape['num_hidden_layers']}, "
          f"{a.dtype}; data: {a.rows} rows, {min(lengths)}..{max(lengths)} tokens (mean {sum(lengths) / len(lengths):.0f}), "
          f"batch {a.batch_size}")
    print(f"{a.dtype} matmul peak (2048x2048): {peak / 1e9:.1f} GFLOP/s")
    names = ["trl-padded", "ours"] + (["length-grouped", "padding-free"] if a.all else [])
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            run_config(name, factory, tokenizer, warm, a.batch_size, a.max_tokens + 64, Path(tmp) / f"warm-{name}")
            tokens, seconds, steps = run_config(name, factory, tokenizer, data, a.batch_size, a.max_tokens + 64,
                                                Path(tmp) / name)
            tps = tokens / seconds
            mfu = 6 * params * tps / peak
            results[name] = tps
            print(f"{name:13s} {steps:3d} steps  {tokens:7d} tokens  {seconds:7.1f} s  {tps:9.1f} tokens/s  MFU {mfu:6.1%}")
    base = results["trl-padded"]
    print("speed-up over trl-padded: " + ", ".join(f"{k} {v / base:.2f}x" for k, v in results.items() if k != "trl-padded"))


if __name__ == "__main__":
    main()
