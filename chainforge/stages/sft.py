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
import time
from typing import Optional, Sequence

from chainforge.config import Options
from chainforge.data import load_rows, plan_output
from chainforge.errors import UsageError
from chainforge.log import info
from chainforge.models import CHATML_TEMPLATE, checkpoint_path, load_model, load_tokenizer, resolve_model
from chainforge.sampling import resolve_system_prompt
from chainforge import training

# How many rows `format_rate` generates for, and how they are chosen: a seeded sample of the data held
# out of training when the data has at least FORMAT_HOLDOUT_MIN_ROWS rows; otherwise (tiny data sets)
# the prompts of the first rows, which were trained on — the manifest says which (`format_held_out`).
FORMAT_PROMPTS = 4
FORMAT_HOLDOUT_MIN_ROWS = 40

# A probe that holds every Super CoT tag: the chat template must render it byte for byte.
_PROBE_TEXT = ("<reasoning_process>\n<think>Add 2 and 2: x < 3 is false, a > b.</think>\n<think>check\n"
               "<explanation>2 + 2 = 4 because addition is counting.</explanation>\n</think>\n"
               "</reasoning_process>\n<summary>\n4\n</summary>")


def run(opts: Options) -> None:
    opts.require("model", "data", "output")
    plan = plan_output(opts.output, "sft", opts, overwrite=opts.overwrite)
    ref = resolve_model(opts.model)

    rows = load_rows(opts.data, limit=opts.limit)
    dataset = sft_dataset(rows, prompt_column=opts.get("prompt_column") or "prompt",
                          only_correct=opts.get("only_correct", True),
                          system_prompt=resolve_system_prompt(opts.get("system_prompt")))
    dataset, format_prompts, held_out = split_format_prompts(dataset, opts.get("seed", 0))

    tokenizer = load_tokenizer(ref)
    training_template(tokenizer, dataset[0]["messages"])
    check_prompt_lengths(tokenizer, dataset, opts.get("max_length") or 2048)
    args = sft_config(opts, plan.path)
    model = load_model(ref, dtype=training.model_dtype(lora=bool(opts.get("lora"))))
    peft_config = training.lora_config(opts, model)

    out = training.create_output(plan, inputs=[opts.data, checkpoint_path(ref) if ref.kind == "folder" else ref.spec])
    metrics = train_sft(opts, out, model, tokenizer, dataset, args=args, peft_config=peft_config,
                        format_prompts=format_prompts)
    metrics["format_held_out"] = held_out
    metrics["rows"] = len(dataset)
    training.finish(out, metrics)
    if training.is_main_process():
        info(f"sft: {metrics['steps']} steps, train_loss {metrics['train_loss']}, "
             f"{metrics['tokens_per_s'] or 0:.0f} tokens/s, format_rate {metrics['format_rate']} -> {out.path}")


# ---- the training itself (also distill --method traces) ------------------------------------------

def sft_config(opts, output_dir, **overrides):
    """The SFTConfig for `opts` (shared training options + --max-length/--packing); a bad combination
    is exit 2. Call it before the output folder is created."""
    from trl import SFTConfig

    packing = bool(opts.get("packing", True))
    fields = dict(
        max_length=opts.get("max_length") or 2048,
        assistant_only_loss=True,
        packing=packing,
        packing_strategy="bfd",
        # Without packing, put rows of similar length into the same batch so little padding is computed.
        train_sampling_strategy="random" if packing else "group_by_length",
        optim=opts.get("optim") or "adamw_torch",
        dataset_num_proc=None,
        save_only_model=False,
    )
    fields.update(overrides)
    return training.trainer_args(opts, output_dir, SFTConfig, **fields)


def train_sft(opts, out, model, tokenizer, dataset, args=None, peft_config=None,
              format_prompts: Sequence = (), callbacks: Sequence = ()) -> dict:
    """Fine-tune `model` on `dataset` (a `messages` column, see `sft_dataset`) into the open
    StageOutput `out`, and return the metrics (train_loss, tokens, tokens_per_s, format_rate, …).

    Inputs are already validated: the tokenizer carries a template with generation markers
    (`training_template`), `args` comes from `sft_config` (built here from `opts` when None) and
    `peft_config` from `training.lora_config`. Resumes from the last `checkpoint-*` in `out.path`,
    writes the trained model (LoRA merged unless --no-merge) and tokenizer into `out.path` on rank 0,
    then measures `format_rate` on `format_prompts`. It does not finish the manifest: the caller
    adds its own metrics and calls `out.finish`. distill --method traces trains through here.
    """
    if args is None:
        args = sft_config(opts, out.path)
    started = time.time()
    trainer = _trainer_class()(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                               peft_config=peft_config, callbacks=list(callbacks) or None)
    result = training.train(trainer, out)
    trained = training.save_trained(trainer, out, tokenizer, merge=opts.get("merge", True))
    metrics = training.train_metrics(trainer, result, started)
    metrics["world_size"] = trainer.args.world_size
    metrics["format_rate"] = None
    metrics["format_prompts"] = len(format_prompts)
    if trained is not None and format_prompts:
        metrics["format_rate"] = training.format_rate(trained, tokenizer, format_prompts,
                                                      max_new_tokens=opts.get("max_new_tokens") or 256,
                                                      seed=opts.get("seed", 0))
    return metrics


def _trainer_class():
    """SFTTrainer whose length-grouped sampler is seeded per epoch.

    transformers' LengthGroupedSampler draws from the global RNG when iteration starts; a resumed
    run restores that RNG from the checkpoint *before* iterating, so it would see a different order
    than the run it continues (the default random sampler is seeded per epoch by accelerate, this
    one isn't). Seeding by (data_seed, epoch) makes a resumed run replay the same batches.
    """
    import torch
    from transformers.trainer_pt_utils import LengthGroupedSampler
    from trl import SFTTrainer

    class SeededLengthGroupedSampler(LengthGroupedSampler):
        def __init__(self, batch_size: int, lengths: list[int], seed: int):
            super().__init__(batch_size, lengths=lengths)
            self.seed, self.epoch = seed, 0

        def set_epoch(self, epoch: int) -> None:
            self.epoch = epoch

        def __iter__(self):
            self.generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            return super().__iter__()

    class ChainforgeSFTTrainer(SFTTrainer):
        def _get_train_sampler(self, train_dataset=None):
            dataset = train_dataset if train_dataset is not None else self.train_dataset
            if self.args.train_sampling_strategy != "group_by_length" or "input_ids" not in dataset.column_names:
                return super()._get_train_sampler(train_dataset)
            seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
            return SeededLengthGroupedSampler(self.args.train_batch_size * self.args.gradient_accumulation_steps,
                                              [len(ids) for ids in dataset["input_ids"]], seed)

    return ChainforgeSFTTrainer


# ---- input: rows → chat messages ------------------------------------------------------------------

def sft_dataset(rows, prompt_column: str = "prompt", only_correct: bool = True,
                system_prompt: Optional[str] = None):
    """The training rows as one `messages` column (role/content dicts ending in an assistant turn).

    Accepts a `messages` column (collect and reject outputs, unchanged) or prompt/completion
    columns (either may be a string or a list of chat messages). With `only_correct`, rows whose
    `correct` is False are skipped; rows without a `correct` column all count. `system_prompt`
    is put before conversations that have no system turn: grpo, reject, eval and distill sample
    under the Super CoT system prompt by default, so the model is trained under it too (a small
    model that learnt the format without it does not produce it with it, and vice versa).
    """
    import datasets

    columns = rows.column_names
    if "messages" not in columns and not (prompt_column in columns and "completion" in columns):
        raise UsageError(f"--data needs a 'messages' column (a collect or reject output) or "
                         f"'{prompt_column}' and 'completion' columns; columns found: {', '.join(columns)}")
    if only_correct and "correct" in columns:
        before = len(rows)
        rows = rows.filter(lambda c: c is not False, input_columns=["correct"], keep_in_memory=True)
        if len(rows) == 0:
            raise UsageError(f"every one of the {before} rows has correct=false, so --only-correct leaves "
                             f"nothing to train on; pass --all-rows to train on them anyway")
        if len(rows) < before:
            info(f"--only-correct: skipped {before - len(rows)} of {before} rows with correct=false")
    conversations = []
    for i, row in enumerate(rows):
        if "messages" in columns:
            messages = _as_messages(row["messages"], i, "messages")
        else:
            messages = (_as_messages(row[prompt_column], i, prompt_column, role="user")
                        + _as_messages(row["completion"], i, "completion", role="assistant"))
        last = max((k for k, m in enumerate(messages) if m["role"] == "assistant"), default=None)
        if last is None or not messages[last]["content"].strip():
            raise UsageError(f"--data row {i} has no assistant turn with content in its messages; every row "
                             f"needs the answer to train on (fix the row or drop it)")
        if last == 0:
            raise UsageError(f"--data row {i} starts with the assistant turn: there is no prompt before it")
        if system_prompt and messages[0]["role"] != "system":
            messages = [{"role": "system", "content": system_prompt}] + messages
            last += 1
        conversations.append(messages[:last + 1])  # turns after the last answer carry no loss
    return datasets.Dataset.from_dict({"messages": conversations})


def _as_messages(value, i: int, column: str, role: Optional[str] = None) -> list[dict]:
    if isinstance(value, str) and role:
        return [{"role": role, "content": value}]
    if not isinstance(value, list) or not value:
        raise UsageError(f"--data row {i}: '{column}' must be a non-empty list of {{role, content}} messages"
                         + (" or a string" if role else "") + f", got {type(value).__name__}")
    messages = []
    for m in value:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise UsageError(f"--data row {i}: every message in '{column}' needs a string 'role' and 'content'")
        messages.append({"role": m["role"], "content": m["content"]})  # drop struct padding keys
    return messages


def prompt_messages(messages: list[dict]) -> list[dict]:
    """The turns before the (last) assistant answer: what the model is asked."""
    last = max(k for k, m in enumerate(messages) if m["role"] == "assistant")
    return messages[:last]


def split_format_prompts(dataset, seed: int, n: int = FORMAT_PROMPTS):
    """(training rows, prompts for format_rate, held_out). See FORMAT_PROMPTS."""
    if len(dataset) >= FORMAT_HOLDOUT_MIN_ROWS:
        picked = sorted(random.Random(seed).sample(range(len(dataset)), n))
        prompts = [prompt_messages(dataset[i]["messages"]) for i in picked]
        keep = sorted(set(range(len(dataset))) - set(picked))
        return dataset.select(keep), prompts, True
    prompts = [prompt_messages(dataset[i]["messages"]) for i in range(min(n, len(dataset)))]
    return dataset, prompts, False


# ---- the chat template and lengths ---------------------------------------------------------------

def template_renders(tokenizer, messages: list[dict], template: Optional[str] = None) -> bool:
    """True when `template` has generation markers and renders every message's content verbatim,
    with the assistant's content inside the generation span (the part that carries the loss)."""
    from trl.chat_template_utils import has_generation_markers

    template = template or tokenizer.chat_template
    if not template or not has_generation_markers(template):
        return False
    try:
        out = tokenizer.apply_chat_template(messages, chat_template=template, tokenize=True,
                                            return_dict=True, return_assistant_tokens_mask=True)
        text = tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False)
    except Exception:  # a template that cannot render plain role/content turns is not usable here
        return False
    if not all(m["content"] in text for m in messages):
        return False
    answer = [t for t, keep in zip(out["input_ids"], out["assistant_masks"]) if keep]
    return messages[-1]["content"] in tokenizer.decode(answer)


def training_template(tokenizer, sample: list[dict]) -> str:
    """Make sure the tokenizer's chat template supports the assistant-only loss and keeps Super CoT
    text intact; install a training variant when it doesn't. Returns what was done.

    Order: the model's own template if it passes; TRL's marker-bearing variant of it (Qwen2.5,
    Llama 3, Qwen3, …); else ChatML with markers (`CHATML_TEMPLATE`). SmolLM2's template has no
    markers and injects a default system prompt when there is none: it gets ChatML, which adds no
    system prompt, and since the template is saved with the checkpoint, sampling uses it too.
    """
    probe = [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": _PROBE_TEXT}]
    checks = (probe, sample)
    if all(template_renders(tokenizer, m) for m in checks):
        return "kept the model's chat template"
    candidates = []
    try:
        from trl.chat_template_utils import get_training_chat_template

        patched = get_training_chat_template(tokenizer)
        if patched:
            candidates.append(("TRL's training variant of the model's chat template", patched))
    except Exception:  # unsupported template: TRL raises ValueError
        pass
    candidates.append(("ChatML with generation markers", CHATML_TEMPLATE))
    for what, template in candidates:
        if all(template_renders(tokenizer, m, template) for m in checks):
            tokenizer.chat_template = template
            info(f"chat template: installed {what} (the model's own has no generation markers or "
                 f"rewrites the Super CoT text); it is saved with the checkpoint")
            return f"installed {what}"
    raise UsageError("no chat template keeps the Super CoT text intact with an assistant-only loss for "
                     "this tokenizer; give a model whose template uses ChatML or add {% generation %} markers")


def check_prompt_lengths(tokenizer, dataset, max_length: int) -> int:
    """Exit 2 when a prompt alone fills --max-length (its answer would be cut away entirely).
    Returns how many rows will be truncated (prompt fits, answer does not)."""
    truncated = 0
    for i, row in enumerate(dataset):
        prompt_ids = tokenizer.apply_chat_template(prompt_messages(row["messages"]), tokenize=True,
                                                   add_generation_prompt=True, return_dict=True)["input_ids"]
        if len(prompt_ids) >= max_length:
            raise UsageError(f"--data row {i}: the prompt is {len(prompt_ids)} tokens but --max-length is "
                             f"{max_length}, leaving no room for the answer; raise --max-length or drop the row")
        full = tokenizer.apply_chat_template(row["messages"], tokenize=True, return_dict=True)["input_ids"]
        truncated += len(full) > max_length
    if truncated:
        info(f"{truncated} of {len(dataset)} rows are longer than --max-length {max_length}: their answers "
             f"are cut at the limit (raise --max-length to keep them whole)")
    return truncated
