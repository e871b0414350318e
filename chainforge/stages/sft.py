"""Stages 1 and 3b: supervised fine-tuning on Super CoT traces, with the loss on the answer only.

    chainforge sft --model smollm2 --data runs/demo/00-collect --output runs/demo/01-sft
    chainforge sft --config configs/sft-qwen2.5-7b.yaml --model Qwen/Qwen2.5-7B-Instruct --data D --output O
    torchrun --nproc_per_node 2 -m chainforge sft --model M --data D --output O     # several processes
    accelerate launch --config_file configs/accelerate/zero2.yaml -m chainforge sft --model M ...  # GPUs

On CPU, launch several processes with torchrun (gloo): `accelerate launch --cpu --num_processes 2`
was seen to start ONE process here (accelerate 1.15; the manifest's `world_size` says 1).

The same command serves the cold start (a collect output) and the additional SFT (a reject output):
both carry a `messages` column; a dataset with `prompt`/`completion` columns works too.

Three things this stage gets right that peers get wrong:
- The loss covers the assistant turn only (TRL's `assistant_only_loss`, which needs `{% generation %}`
  markers in the chat template). A template without them, or one that rewrites the Super CoT text (some
  reasoning templates strip `<think>` blocks), is replaced for training and saved with the checkpoint,
  so sampling later sees the same template the model was trained with.
- Rows are packed padding-free by default (TRL's best-fit-decreasing packing into `--max-length`
  rows, then one flat sequence per batch): no padding is computed. Each row keeps its own attention
  because TRL passes `use_cache=False`, so transformers derives a block-diagonal mask from the
  position ids (a test shows packed and padded losses agree). On 2 CPU cores this ran 2.0x faster
  than TRL's padded default (scripts/bench_sft.py). `--no-packing` batches rows of similar length
  instead; use it on GPUs without a varlen attention kernel (flash-attention), where the flat
  sequence's dense mask grows with the square of batch × max length.
- Only rank 0 creates the output folder and writes the checkpoint and manifest.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Optional

from chainforge import distributed, training
from chainforge.compat import check_tested_versions
from chainforge.config import (DataOptions, GenerationOptions, LoraOptions, ModelOptions, OutputOptions,
                               SftTrainOptions, StageSpec, TrainOptions, default, option)
from chainforge.inputs import load_rows
from chainforge.outputs import create_output, plan_output
from chainforge.log import info
from chainforge.models import (checkpoint_path, load_tokenizer, resolve_model,
                               training_template)
from chainforge.sampling import resolve_system_prompt
from chainforge.traces import prompt_messages, sft_dataset


@dataclass(kw_only=True)
class SftConfig(ModelOptions, DataOptions, OutputOptions, SftTrainOptions, TrainOptions, LoraOptions):
    REQUIRED = ("model", "data", "output")

    system_prompt: Optional[str] = default(GenerationOptions, "system_prompt", None)
    only_correct: bool = option(True, "Train only on rows whose `correct` is not false.",
                                flags=("--only-correct/--all-rows",))
    max_new_tokens: Optional[int] = default(GenerationOptions, "max_new_tokens", 256)


CONFIG = SftConfig
SPEC = StageSpec("sft", produces="checkpoint", inputs={"model": "checkpoint", "data": "dataset"}, trains=True)

# How many rows `format_rate` generates for, and how they are chosen: a seeded sample of the data held
# out of training when the data has at least FORMAT_HOLDOUT_MIN_ROWS rows; otherwise (tiny data sets)
# the prompts of the first rows, which were trained on — the manifest says which (`format_held_out`).
FORMAT_PROMPTS = 4
FORMAT_HOLDOUT_MIN_ROWS = 40


def run(config: SftConfig) -> None:
    check_tested_versions()  # trl/transformers internals this stage relies on
    plan = plan_output(config.output, "sft", config, overwrite=config.overwrite)
    ref = resolve_model(config.model)

    rows = load_rows(config.data, limit=config.limit, split=config.split, subset=config.subset)
    dataset = sft_dataset(rows, prompt_column=config.prompt_column, only_correct=config.only_correct,
                          system_prompt=resolve_system_prompt(config.system_prompt, config.model))
    dataset, format_prompts, held_out = split_format_prompts(dataset, config.seed)

    tokenizer = load_tokenizer(ref)
    training_template(tokenizer, dataset[0]["messages"])
    training.check_prompt_lengths(tokenizer, dataset, config.max_length)
    args = training.sft_args(config, plan.path)
    model = training.load_trainable(ref, config)
    peft_config = training.lora_config(config, model)

    out = create_output(plan, inputs=[config.data, checkpoint_path(ref) if ref.kind == "folder" else ref.spec])
    metrics = training.train_sft(config, out, model, tokenizer, dataset, args=args, peft_config=peft_config,
                                 format_prompts=format_prompts)
    metrics["format_held_out"] = held_out
    metrics["rows"] = len(dataset)
    training.finish(out, metrics)
    if distributed.is_main():
        info(f"sft: {metrics['steps']} steps, train_loss {metrics['train_loss']}, "
             f"{metrics['tokens_per_s'] or 0:.0f} tokens/s, format_rate {metrics['format_rate']} -> {out.path}")


def split_format_prompts(dataset, seed: int, n: int = FORMAT_PROMPTS):
    """(training rows, prompts for format_rate, held_out). See FORMAT_PROMPTS."""
    if len(dataset) >= FORMAT_HOLDOUT_MIN_ROWS:
        picked = sorted(random.Random(seed).sample(range(len(dataset)), n))
        prompts = [prompt_messages(dataset[i]["messages"]) for i in picked]
        keep = sorted(set(range(len(dataset))) - set(picked))
        return dataset.select(keep), prompts, True
    prompts = [prompt_messages(dataset[i]["messages"]) for i in range(min(n, len(dataset)))]
    return dataset, prompts, False


