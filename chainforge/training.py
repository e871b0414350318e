"""The one trainer skeleton that sft, grpo and distill share.

A training stage reads top to bottom (see chainforge/stages/sft.py):

    plan = plan_output(...)                       # validate --output, nothing created
    ... data, model, tokenizer, validated ...
    args = trainer_args(config, plan.path, ConfigClass, **stage_specific)
    out = plan.create(inputs=[...])
    trainer = SomeTRLTrainer(model=..., args=args, ...)
    result = train(trainer, out)                  # resumes from the last checkpoint-* if any
    save_trained(trainer, out, tokenizer, merge=config.merge)
    out.finish({... train_metrics(trainer, result) ...})

Working files under fixed names in the output folder: `checkpoint-*` (resumable trainer state) and
`runs/` (TensorBoard event files).

The SFT trainer path (`sft_args`, `train_sft`, `check_prompt_lengths`) lives here too: sft trains
through it, and so does distill --method traces.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import time
import zipfile
from pathlib import Path
from typing import Any, Optional, Sequence

from chainforge import distributed
from chainforge.errors import Interrupted, RunFailed, UsageError
from chainforge.log import info

TENSORBOARD_DIR = "runs"
# --lr-scheduler → transformers' scheduler names (each warms up linearly over --warmup-ratio first)
LR_SCHEDULERS = {"linear": "linear", "constant": "constant_with_warmup", "cosine": "cosine"}


def hardware(precision: str = "auto") -> dict:
    """Precision flags for this machine: bf16 mixed precision where the hardware computes bf16
    natively (GPUs that have it; CPUs with AVX512-BF16/AMX, where a SmolLM2 forward+backward runs
    2.5× faster than in fp32, scripts/bench_precision.py), fp32 elsewhere or with `--precision
    fp32`. On CPU TRL needs use_cpu=True (it defaults bf16 on and fails without it)."""
    import torch

    from chainforge.models import use_bf16

    if torch.cuda.is_available():
        return {"use_cpu": False, "bf16": use_bf16(precision, "cuda"), "fp16": False}
    return {"use_cpu": True, "bf16": use_bf16(precision, "cpu"), "fp16": False}


def model_dtype(lora: bool = False, precision: str = "auto"):
    """The dtype to load trainable weights in. Full fine-tuning keeps fp32 weights (bf16 autocast does
    the matmuls): pure-bf16 weights drop updates smaller than 2^-8 of a weight, i.e. most updates at
    lr 5e-6. Frozen LoRA base weights are bf16 on GPUs that have it (the adapters stay fp32); on CPU
    they stay fp32 (autocast still computes in bf16), so a merged LoRA checkpoint changes only the
    adapted weights."""
    import torch

    flags = hardware(precision)
    return torch.bfloat16 if lora and not flags["use_cpu"] and flags["bf16"] else torch.float32


def finish(out, metrics: dict) -> None:
    """The end of a training stage, on rank 0: the manifest says complete, then the resumable
    `checkpoint-*` folders go (a complete output is never resumed, and a 7B full fine-tune's
    optimizer state is ~56 GB per checkpoint)."""
    import shutil

    if not distributed.is_main():
        return
    out.finish(metrics)
    for ckpt in Path(out.path).glob("checkpoint-*"):
        if ckpt.is_dir():
            shutil.rmtree(ckpt, ignore_errors=True)


def trainer_args(config, output_dir: str | Path, config_class, **stage_specific):
    """The TRL config (SFTConfig, GRPOConfig, …) from the shared training options (a config with
    `TrainOptions`), plus the stage's own fields."""
    check_machine(config)
    report_to = ["tensorboard"] + (["wandb"] if config.wandb else [])
    # transformers' TensorBoard callback reads its folder from this variable; fix it under --output.
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(Path(output_dir) / TENSORBOARD_DIR)
    kwargs: dict[str, Any] = dict(
        output_dir=str(output_dir),
        seed=config.seed,
        data_seed=config.seed,
        max_steps=config.max_steps if config.max_steps is not None else -1,
        num_train_epochs=config.epochs,
        learning_rate=config.learning_rate,
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        # transformers 5 folded warmup_ratio into warmup_steps: a float below 1 is a ratio of all steps.
        warmup_steps=min(float(config.warmup_ratio), 0.999),
        lr_scheduler_type=LR_SCHEDULERS[config.lr_scheduler],
        max_grad_norm=config.max_grad_norm,
        # `activation_checkpointing` (transformers 5.23+; `gradient_checkpointing` is its deprecated alias)
        activation_checkpointing=config.gradient_checkpointing,
        logging_steps=config.logging_steps,
        save_steps=config.save_steps,
        save_total_limit=2,
        report_to=report_to,
        disable_tqdm=True,
        **hardware(getattr(config, "precision", "auto")),
    )
    kwargs.update(stage_specific)
    try:
        return config_class(**kwargs)
    except (ValueError, TypeError) as exc:  # TRL's __post_init__ explains impossible combinations
        raise UsageError(f"invalid training options: {exc}") from None


FLASH_ATTN_INSTALL = "pip install flash-attn --no-build-isolation"


def check_machine(config) -> None:
    """What the options ask of this machine (not of each other, see config.py): exit 2 before the
    output exists. A recipe naming flash_attention_2 still validates on a laptop."""
    import importlib.util


    if getattr(config, "attn_implementation", "sdpa") == "flash_attention_2":
        import torch

        if importlib.util.find_spec("flash_attn") is None or not torch.cuda.is_available():
            what = "the flash-attn package" if importlib.util.find_spec("flash_attn") is None else "a CUDA GPU"
            raise UsageError(f"--attn-implementation flash_attention_2 needs {what}, which this machine lacks: "
                             f"`{FLASH_ATTN_INSTALL}` on a CUDA machine, or use --attn-implementation sdpa")
    if getattr(config, "auto_batch_size", False) and distributed.world_size() > 1:
        raise UsageError(f"--auto-batch-size works in one process (this is one of {distributed.world_size()} ranks, "
                         f"which would not run out of memory together); set --batch-size / --grad-accum instead")


def load_trainable(ref, config):
    """The model a training stage trains: fp32 weights unless LoRA (see `model_dtype`), with
    --attn-implementation passed to from_pretrained."""
    from chainforge.models import load_model

    return load_model(ref, dtype=model_dtype(lora=config.lora, precision=config.precision), attn_implementation=config.attn_implementation)


def is_out_of_memory(exc: Optional[BaseException]) -> bool:
    """The errors accelerate's find_executable_batch_size halves on (CUDA, cuDNN, CPU allocator)."""
    if exc is None:
        return False
    from accelerate.utils.memory import should_reduce_batch_size

    return bool(should_reduce_batch_size(exc))


def halved(args):
    """`args` with half the per-device batch and twice the accumulation (the same effective batch,
    and for GRPO the same generation batch), or None at batch size 1."""
    import dataclasses

    batch = args.per_device_train_batch_size
    if batch <= 1:
        return None
    fields = dict(per_device_train_batch_size=batch // 2,
                  gradient_accumulation_steps=args.gradient_accumulation_steps * 2)
    for derived in ("generation_batch_size", "steps_per_generation"):  # GRPOConfig derives these again
        if hasattr(args, derived):
            fields[derived] = None
    return dataclasses.replace(args, **fields)


def train_fitting(config, out, args, model, make_trainer):
    """`make_trainer(args, model)`, trained with `train` (resuming from the last checkpoint).

    With --auto-batch-size an out-of-memory error halves the per-device batch and doubles the
    accumulation, reloads the model as it was loaded (the failed attempt may have updated it, or
    wrapped it in adapters) and tries again, down to batch size 1: accelerate's
    find_executable_batch_size, keeping the effective batch. Returns (trainer, train result)."""
    source, dtype = model.name_or_path, model.dtype
    attn = getattr(model.config, "_attn_implementation", None)
    while True:
        trainer = make_trainer(args, model)
        _warn_unsharded(trainer)
        try:
            return trainer, train(trainer, out)
        except RunFailed as exc:
            smaller = halved(args) if getattr(config, "auto_batch_size", False) and is_out_of_memory(exc.__cause__) \
                else None
            if smaller is None:
                raise
        info(f"out of memory at --batch-size {args.per_device_train_batch_size}: retrying with "
             f"{smaller.per_device_train_batch_size} x grad-accum {smaller.gradient_accumulation_steps}")
        del trainer, model
        _free_memory()
        args = smaller
        model = _reload(source, dtype, attn)


def _warn_unsharded(trainer) -> None:
    """accelerate (1.15) turns FSDP on for GPU process groups only: launched on CPU with an FSDP
    config, a run trains plain data parallel, each rank holding the whole model. Say so."""
    asked = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    if asked and not getattr(trainer, "is_fsdp_enabled", False) and distributed.is_main():
        info("warning: FSDP was asked for (ACCELERATE_USE_FSDP) but accelerate shards on GPUs only; this run "
             "is plain data parallel (every rank holds the whole model and optimizer state)")


def _free_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _reload(source: str, dtype, attn: Optional[str]):
    from transformers import AutoModelForCausalLM

    kwargs = {"attn_implementation": attn} if attn else {}
    return AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **kwargs)


def last_checkpoint(output_dir: str | Path) -> Optional[str]:
    """The newest complete `checkpoint-N` folder in `output_dir`, or None.

    The Trainer writes a checkpoint in place (weights, optimizer.pt, scheduler.pt, rng_state*.pth,
    trainer_state.json last), so a run killed mid-save leaves a folder that is missing its last
    files or holds truncated ones, and resuming from it crashes. Such a folder is skipped, with a
    warning naming it, in favour of the previous complete one (save_total_limit keeps two)."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return None
    found = []
    for child in folder.iterdir():
        match = _CHECKPOINT.fullmatch(child.name)
        if match and child.is_dir():
            found.append((int(match.group(1)), child))
    for _, ckpt in sorted(found, reverse=True):
        problem = checkpoint_problem(ckpt)
        if problem is None:
            return str(ckpt)
        info(f"warning: skipping {ckpt.name}: {problem} (the run was likely stopped while saving it); "
             f"resuming from an earlier checkpoint")
    return None


_CHECKPOINT = re.compile(r"checkpoint-(\d+)")
_WEIGHTS = ("model.safetensors", "adapter_model.safetensors", "pytorch_model.bin", "adapter_model.bin")
_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def checkpoint_problem(ckpt: Path) -> Optional[str]:
    """Why a Trainer checkpoint folder cannot be resumed from, or None when it is complete.

    Cheap checks only (no tensor is loaded): trainer_state.json (written last) parses; the weights
    are there (single file or every shard of an index); each safetensors file is as long as its
    header says; each torch.save file (optimizer, scheduler, rng state, training args) ends with
    its zip directory, which a truncated file lacks."""
    state = ckpt / "trainer_state.json"
    if not state.is_file():
        return "trainer_state.json is missing"
    try:
        json.loads(state.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return "trainer_state.json is truncated or unreadable"
    weights = [ckpt / n for n in _WEIGHTS if (ckpt / n).is_file()]
    for index in (ckpt / n for n in _INDEXES):
        if index.is_file():
            try:
                shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
            except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError):
                return f"{index.name} is truncated or unreadable"
            missing = [s for s in shards if not (ckpt / s).is_file()]
            if missing:
                return f"weight shard {missing[0]} is missing"
            weights += [ckpt / s for s in shards]
    if not weights and not any(p.is_dir() and p.name.startswith(("global_step", "pytorch_model_fsdp"))
                               for p in ckpt.iterdir()):
        return "no model weights"
    for f in sorted(ckpt.iterdir()):
        if not f.is_file():
            continue
        if f.suffix == ".safetensors":
            why = _safetensors_problem(f)
            if why:
                return f"{f.name} {why}"
        elif f.suffix in (".pt", ".pth", ".bin") and not zipfile.is_zipfile(f):
            return f"{f.name} is truncated or unreadable"
    return None


def _safetensors_problem(path: Path) -> Optional[str]:
    """A safetensors file is an 8-byte header length, a JSON header, then the tensors' bytes: its
    size must be exactly what the header describes."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return "is truncated"
            n = int.from_bytes(head, "little")
            if n > size - 8:
                return "is truncated"
            header = json.loads(f.read(n))
        end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, IndexError, AttributeError):
        return "has an unreadable header"
    if size != 8 + n + end:
        return "is truncated"
    return None


def lora_config(config, model, task_type: str = "CAUSAL_LM"):
    """A peft LoraConfig from --lora-r/--lora-alpha/--lora-targets, or None without --lora.
    Target modules that the model doesn't have are exit 2, naming the ones it has."""
    if not config.lora:
        return None
    from peft import LoraConfig

    targets = config.lora_targets.strip()
    if targets != "all-linear":
        wanted = [t.strip() for t in targets.split(",") if t.strip()]
        leaf_names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules() if name}
        missing = [t for t in wanted if t not in leaf_names]
        if missing:
            linear = sorted({name.rsplit(".", 1)[-1] for name, mod in model.named_modules()
                             if type(mod).__name__ == "Linear"})
            raise UsageError(f"--lora-targets {', '.join(missing)} not found in the model; its linear "
                             f"modules are: {', '.join(linear)} (or use all-linear)")
        target_modules: Any = wanted
    else:
        target_modules = "all-linear"
    return LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=0.05,
                      target_modules=target_modules, task_type=task_type)


def train(trainer, out) -> Any:
    """Run `trainer.train()`, resuming from the last `checkpoint-*` in the output folder.
    Ctrl-C → exit 130 and a crash → exit 1, both with the manifest left `incomplete` so the same
    command resumes."""
    resume = last_checkpoint(out.path)
    if resume and distributed.is_main():
        info(f"resuming from {Path(resume).name}")
    main = distributed.is_main()  # only rank 0 writes the manifest
    try:
        return trainer.train(resume_from_checkpoint=resume)
    except KeyboardInterrupt:
        if main:
            out.mark_incomplete()
        raise Interrupted("training interrupted; checkpoints are kept, resume with the same command") from None
    except (UsageError, RunFailed):
        if main:
            out.mark_incomplete()
        raise
    except Exception as exc:
        if main:
            out.mark_incomplete()
        raise RunFailed(f"training stopped: {type(exc).__name__}: {exc}; resume with the same command") from exc


def save_trained(trainer, out, tokenizer, merge: bool = True):
    """Write the trained model into the output folder so that from_pretrained(out) loads it.
    LoRA adapters are merged into the base weights unless merge=False (then the adapter is saved).
    Returns the model that was saved (use it afterwards: merging unloads the adapters), None on
    ranks other than 0."""
    if getattr(trainer, "is_fsdp_enabled", False) or getattr(trainer, "is_deepspeed_enabled", False):
        # Sharded weights (FSDP, ZeRO): every rank takes part in gathering them; rank 0 writes.
        # (Not exercised here: no GPUs. LoRA adapters are saved unmerged on this path.)
        tmp = Path(out.path) / ".partial-checkpoint"
        trainer.save_model(str(tmp))
        if not trainer.is_world_process_zero():
            return None
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        out._move_in(tmp, last=["config.json"])
        return trainer.accelerator.unwrap_model(trainer.model)
    if not trainer.is_world_process_zero():
        return None
    model = trainer.accelerator.unwrap_model(trainer.model) if hasattr(trainer, "accelerator") else trainer.model
    if merge and hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    out.save_checkpoint(model, tokenizer)
    return model


def train_metrics(trainer, result, started: Optional[float] = None) -> dict:
    """train_loss, tokens and tokens_per_s from the trainer's own accounting."""
    metrics = dict(getattr(result, "metrics", {}) or {})
    logs = [h for h in trainer.state.log_history if "loss" in h]
    # SFTTrainer counts the non-pad tokens of every rank in `_total_train_tokens` (this session only;
    # a resumed run's earlier tokens are in the logged `num_tokens`); other trainers may fill
    # `num_input_tokens_seen`.
    session = int(getattr(trainer, "_total_train_tokens", 0) or getattr(trainer.state, "num_input_tokens_seen", 0) or 0)
    logged = int(max((h.get("num_tokens", 0) for h in trainer.state.log_history), default=0))
    tokens = max(session, logged)
    runtime = metrics.get("train_runtime") or ((time.time() - started) if started else None)
    out = {
        "train_loss": metrics.get("train_loss", logs[-1]["loss"] if logs else None),
        "final_loss": logs[-1]["loss"] if logs else None,
        "steps": trainer.state.global_step,
        "tokens": tokens,
        "tokens_per_s": ((session or tokens) / runtime) if (session or tokens) and runtime else None,
    }
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in out.items()}


def format_rate(model, tokenizer, prompts: Sequence, max_new_tokens: int = 128, seed: int = 0,
                system_prompt: Optional[str] = None) -> Optional[float]:
    """Fraction of greedy generations on `prompts` that parse as Super CoT (None without prompts)."""
    from chainforge.formats import is_super_cot
    from chainforge.sampling import generate

    if not prompts:
        return None
    outs = generate(model, tokenizer, list(prompts), n=1, temperature=0, max_new_tokens=max_new_tokens,
                    seed=seed, system_prompt=system_prompt)
    return sum(is_super_cot(c[0].text) for c in outs) / len(outs)


# ---- the SFT trainer (sft, and distill --method traces) --------------------------------------------

def sft_args(config, output_dir, **overrides):
    """The SFTConfig for `config` (`TrainOptions` + `SftTrainOptions`); a bad combination is exit 2.
    Call it before the output folder is created."""
    from trl import SFTConfig

    packing = config.packing
    fields = dict(
        max_length=config.max_length,
        assistant_only_loss=True,
        packing=packing,
        packing_strategy="bfd",
        # Without packing, put rows of similar length into the same batch so little padding is computed.
        train_sampling_strategy="random" if packing else "group_by_length",
        optim=config.optim,
        dataset_num_proc=None,
        save_only_model=False,
    )
    fields.update(overrides)
    return trainer_args(config, output_dir, SFTConfig, **fields)


def train_sft(config, out, model, tokenizer, dataset, args=None, peft_config=None,
              format_prompts: Sequence = (), callbacks: Sequence = ()) -> dict:
    """Fine-tune `model` on `dataset` (a `messages` column, see `sft_dataset`) into the open
    StageOutput `out`, and return the metrics (train_loss, tokens, tokens_per_s, format_rate, …).

    Inputs are already validated: the tokenizer carries a template with generation markers
    (`models.training_template`), `args` comes from `sft_args` (built here from `config` when None)
    and `peft_config` from `lora_config`. Resumes from the last `checkpoint-*` in `out.path`,
    writes the trained model (LoRA merged unless --no-merge) and tokenizer into `out.path` on rank 0,
    then measures `format_rate` on `format_prompts`. It does not finish the manifest: the caller
    adds its own metrics and calls `out.finish`. distill --method traces trains through here.
    """
    if args is None:
        args = sft_args(config, out.path)
    started = time.time()
    def make_trainer(args, model):
        return sft_trainer_class()(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                                   peft_config=peft_config, callbacks=list(callbacks) or None)

    trainer, result = train_fitting(config, out, args, model, make_trainer)
    trained = save_trained(trainer, out, tokenizer, merge=config.merge)
    metrics = train_metrics(trainer, result, started)
    metrics["world_size"] = trainer.args.world_size
    metrics["batch_size"] = trainer.args.per_device_train_batch_size  # after --auto-batch-size
    metrics["grad_accum"] = trainer.args.gradient_accumulation_steps
    metrics["format_rate"] = None
    metrics["format_prompts"] = len(format_prompts)
    if trained is not None and format_prompts:
        metrics["format_rate"] = format_rate(trained, tokenizer, format_prompts,
                                             max_new_tokens=config.max_new_tokens, seed=config.seed)
    return metrics


def sft_trainer_class():
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
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if return_outputs or not labelled_positions_loss_applies(self):
                return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                            num_items_in_batch=num_items_in_batch)
            return labelled_positions_loss(self, model, inputs, num_items_in_batch)

        def train(self, *args, **kwargs):
            with packed_attention(self.model, self.args):
                return super().train(*args, **kwargs)

        def _get_train_sampler(self, train_dataset=None):
            dataset = train_dataset if train_dataset is not None else self.train_dataset
            if self.args.train_sampling_strategy != "group_by_length" or "input_ids" not in dataset.column_names:
                return super()._get_train_sampler(train_dataset)
            seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
            return SeededLengthGroupedSampler(self.args.train_batch_size * self.args.gradient_accumulation_steps,
                                              [len(ids) for ids in dataset["input_ids"]], seed)

    return ChainforgeSFTTrainer


# ---- the SFT step on CPU: attention within each packed row, the LM head on labelled positions only ----

PACKED_ATTENTION = "chainforge_packed_sdpa"


def labelled_positions_loss_applies(trainer) -> bool:
    """Whether `labelled_positions_loss` replaces TRL's fused LM-head loss: on CPU, for the plain
    token loss (no custom loss, label smoothing, DFT, MoE auxiliary loss or sequence parallelism).
    Off Triton devices TRL's fused head projects EVERY position (prompt and system turn included)
    through the 49k-vocabulary head, forward and again in the backward, and accumulates the head's
    gradient GEMMs in fp32."""
    args = trainer.args
    return (trainer.accelerator.device.type == "cpu" and trainer.compute_loss_func is None
            and trainer.label_smoother is None and getattr(args, "loss_type", "nll") == "nll"
            and not getattr(trainer, "aux_loss_enabled", False)
            and getattr(getattr(trainer.accelerator, "parallelism_config", None), "sp_enabled", False) is not True)


def labelled_positions_loss(trainer, model, inputs, num_items_in_batch=None):
    """TRL's SFT loss and metrics (mean token NLL over the labelled positions, entropy, token
    accuracy, tokens seen), with the model asked for the logits of the labelled positions only
    (`logits_to_keep` as a mask): the LM head, its softmax and its gradient run on the assistant
    tokens, under the trainer's autocast like the rest of the model."""
    import torch
    import torch.nn.functional as F

    mode = "train" if trainer.model.training else "eval"
    labels = inputs["labels"]
    forward = {k: v for k, v in inputs.items() if k != "labels"}
    forward["use_cache"] = False
    targets = labels[:, 1:]
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = targets != -100
    logits = model(**forward, logits_to_keep=keep).logits  # [labelled positions, vocab]
    wanted = targets[keep[:, :-1]]
    logits = logits.reshape(-1, logits.size(-1)).float()
    nll = F.cross_entropy(logits, wanted, reduction="sum")
    count = wanted.numel() if num_items_in_batch is None else num_items_in_batch
    loss = nll / torch.as_tensor(count, device=nll.device).clamp(min=1)
    if trainer.args.average_tokens_across_devices and num_items_in_batch is not None:
        loss = loss * (trainer.accelerator.num_processes // trainer.get_tp_size())

    with torch.no_grad():  # TRL's logged metrics, from the same logits
        logp = torch.log_softmax(logits, -1)
        entropy = -(logp.exp() * logp).sum(-1)
        correct = logits.argmax(-1) == wanted
    gather = trainer.accelerator.gather_for_metrics
    valid = gather(torch.tensor(wanted.numel(), device=loss.device)).sum()
    entropy_sum = gather(entropy.sum()).sum()
    num_correct = gather(correct.sum()).sum()
    trainer._metrics[mode]["entropy"].append((entropy_sum / valid).item() if valid > 0 else 0.0)
    trainer._metrics[mode]["mean_token_accuracy"].append((num_correct / valid).item() if valid > 0 else 0.0)
    if mode == "train":
        if "attention_mask" in inputs:
            seen = gather(inputs["attention_mask"].sum()).sum().item()
        else:
            seen = gather(torch.tensor(inputs["position_ids"].size(1), device=loss.device)).sum().item()
        trainer._total_train_tokens += seen // trainer._tp_size
    trainer._metrics[mode]["num_tokens"] = [trainer._total_train_tokens]
    return loss


def _packed_sdpa(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs):
    """SDPA over each packed row on its own (`cu_seq_lens_q`, which TRL's padding-free collator
    passes): causal attention within a row, none across rows, the same result as the
    block-diagonal mask transformers builds from the position ids, without computing the
    (batch × max length)² scores that mask throws away. Anything else goes to transformers' SDPA."""
    import torch
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    bounds = kwargs.get("cu_seq_lens_q")
    if bounds is None or query.shape[0] != 1 or query.shape[2] != key.shape[2] or dropout:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    groups = getattr(module, "num_key_value_groups", 1)
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    cuts = bounds.tolist()
    parts = [torch.nn.functional.scaled_dot_product_attention(query[:, :, a:b], key[:, :, a:b], value[:, :, a:b],
                                                              is_causal=True, scale=scaling)
             for a, b in zip(cuts[:-1], cuts[1:]) if b > a]
    return torch.cat(parts, dim=2).transpose(1, 2).contiguous(), None


@contextlib.contextmanager
def packed_attention(model, args):
    """While training on CPU with padding-free packing and SDPA, attention runs row by row
    (`_packed_sdpa`); the model's own attention is restored afterwards (it is what gets saved)."""
    config = getattr(model, "config", None)
    current = getattr(config, "_attn_implementation", None)
    params = next(iter(model.parameters()), None)
    applies = (current == "sdpa" and getattr(args, "packing", False) and hasattr(model, "set_attn_implementation")
               and params is not None and params.device.type == "cpu")
    if not applies:
        yield
        return
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    AttentionInterface.register(PACKED_ATTENTION, _packed_sdpa)
    AttentionMaskInterface.register(PACKED_ATTENTION, sdpa_mask)
    model.set_attn_implementation(PACKED_ATTENTION)
    try:
        yield
    finally:
        model.set_attn_implementation(current)


def check_prompt_lengths(tokenizer, dataset, max_length: int) -> int:
    """Exit 2 when a prompt alone fills --max-length (its answer would be cut away entirely).
    Returns how many rows will be truncated (prompt fits, answer does not)."""
    from chainforge.traces import prompt_messages

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
