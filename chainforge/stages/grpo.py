"""Stages 2 and 4 of the pipeline: reasoning-oriented RL with TRL's GRPOTrainer.

    chainforge grpo --model runs/demo/01-sft-cold --data data/toy/train.jsonl --output runs/demo/02-rl
    accelerate launch --config_file configs/accelerate/<launcher>.yaml -m chainforge grpo \\
        --config configs/grpo-qwen2.5-7b.yaml --model ... --data ... --output ...

For every prompt the policy samples a group of `--num-generations` completions; each is scored by
the `--rewards` functions (weighted sum), and its advantage is its reward relative to its group.
The loss is TRL's clipped surrogate (`--epsilon`) plus a KL penalty to the frozen starting model
(`--beta`, default 0.04 as in DeepSeekMath; TRL's own default 0.0 loads no reference model).

Prompts become chats through `sampling.as_messages`, as in sft/reject/eval/distill: the Super CoT
instructions (`--system-prompt`, '' for none) go first unless a prompt has its own system turn.
The reference answer reaches the rewards as `answer`.

Batching: TRL counts `--batch-size` in completions, and each generation round must hold whole
groups: batch-size × grad-accum × processes must be a multiple of num-generations. Left unset, the
batch is derived as `--prompts-per-step` × `--num-generations`.

Metrics (manifest and TensorBoard under runs/): TRL's `reward`, `rewards/<name>/mean`, `kl`,
`clip_ratio/*`, `completions/mean_length`, plus ours: `format_rate` and `expansion_rate` (shares of
the rollouts that parse as Super CoT / that parse and hold an `<explanation>`), and
`generation_time_share` (wall time inside the trainer's `_generate`, which we wrap, over the
training wall time). Every rollout (prompt, completion, each reward, advantage) goes to
`rollouts.jsonl`, and a KL jump past 0.1 is a one-line warning (chainforge.rollouts).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Literal, Optional

from chainforge.compat import cache_kwarg, check_tested_versions
from chainforge.config import (AnswerOptions, DataOptions, GenerationOptions, LoraOptions, ModelOptions,
                               OutputOptions, RewardOptions, StageSpec, TrainOptions, default, option)
from chainforge.inputs import load_prompt_rows
from chainforge.outputs import create_output, plan_output
from chainforge.errors import UsageError
from chainforge.formats import completion_text, parse_super_cot
from chainforge.log import fmt_value, info
from chainforge.models import load_tokenizer, resolve_model
from chainforge.rewards import NEEDS_ANSWER, get_reward, resolve_rewards
from chainforge.rollouts import (GRPO_WARMUP_RATIO, EngineRollouts, GrpoHealth, KLGuard, RolloutLog,
                                 applied_lr_callback, record_trainer_rollouts, truncated_flags,
                                 truncated_share, zero_spread_share)
from chainforge.sampling import VLLM_INSTALL, as_messages, resolve_system_prompt, vllm_available
from chainforge import distributed, training

STAGE = "grpo"
LossType = Literal["dapo", "grpo", "dr_grpo", "bnpo", "cispo", "sapo", "luspo", "vespo"]
# Keywords TRL itself passes to reward functions: a data column of the same name would collide.
RESERVED_COLUMNS = ("prompts", "completions", "completion_ids", "trainer_state", "log_extra", "log_metric",
                    "environments")


@dataclass(kw_only=True)
class GrpoConfig(ModelOptions, DataOptions, AnswerOptions, OutputOptions, RewardOptions, GenerationOptions,
                 TrainOptions, LoraOptions):
    REQUIRED = ("model", "data", "output")

    rewards: Optional[str] = default(
        RewardOptions, "rewards", None,
        "Comma-separated rewards with optional weights (accuracy,format=0.5), registered names or dotted paths "
        "to your own (my_pkg.rewards:fn). Default: accuracy,format,expansion.")
    # generation
    num_generations: int = option(8, "Completions per prompt (the group size, at least 2).")
    temperature: Optional[float] = default(GenerationOptions, "temperature", 1.0)
    use_vllm: bool = option(False, "Generate with vLLM (colocated unless --vllm-mode server; needs the vllm extra).",
                            flags=("--use-vllm",))
    vllm_mode: Optional[Literal["colocate", "server"]] = option(
        None, "colocate: vLLM shares each training GPU; server: generation goes to a `trl vllm-serve` on GPUs of its "
              "own (--vllm-server-url). Implies --use-vllm.")
    vllm_server_url: Optional[str] = option(
        None, "server mode: the `trl vllm-serve` base URL (default http://localhost:8000 on the first node).")
    rollout_sampler: Literal["engine", "trl"] = option(
        "engine", "Without vLLM: engine = chainforge's sampling engine through TRL's rollout hook (one prefill per "
                  "group, finished rows leave the batch and queued rows take their slots, the live policy under "
                  "the run's bf16 autocast; one process only, else trl); trl = TRL's model.generate.")
    vllm_gpu_memory: float = option(
        0.3, "colocate mode: share of each GPU's memory vLLM takes (the rest trains).", above=0.0, max=1.0)
    # GRPO objective
    beta: float = option(0.04, "KL penalty to the reference model (0 loads none; TRL's default is 0).")
    epsilon: float = option(0.2, "Clip range of the policy ratio.")
    loss_type: LossType = option(
        "dapo", "TRL loss: dapo (token-level, no length bias), grpo, dr_grpo, bnpo, cispo, sapo, luspo, vespo.")
    # optimisation
    learning_rate: float = default(TrainOptions, "learning_rate", 1e-6)
    prompts_per_step: int = option(
        2, "Prompts per device per micro-step: --batch-size (counted in completions for grpo) defaults to "
           "this × --num-generations.", min=1)
    batch_size: Optional[int] = default(TrainOptions, "batch_size", None)
    # prompts worth training on (chainforge.prompt_filter)
    filter_samples: int = option(
        0, "Before training, draw this many completions per prompt from --model (at grpo's own sampling settings) "
           "and train only on the prompts it sometimes solves: an all-right or all-wrong group carries no "
           "gradient. Pass rates in OUT/prompt_pass_rates.jsonl. 0: off.", min=0)
    warmup_ratio: float = default(TrainOptions, "warmup_ratio", GRPO_WARMUP_RATIO)  # see chainforge.rollouts
    # A linear decay to 0 spends half of a short RL run's learning rate: over 16 steps with 2 of
    # warmup its mean multiplier is 0.50. RL keeps the rate once warmed up.
    lr_scheduler: Literal["linear", "constant", "cosine"] = default(TrainOptions, "lr_scheduler", "constant")

    def check(self) -> None:
        check_sampling(self)
        check_vllm(self)
        super().check()


CONFIG = GrpoConfig
SPEC = StageSpec("grpo", produces="checkpoint", inputs={"model": "checkpoint", "data": "prompts"}, trains=True)


def run(config: GrpoConfig) -> None:
    check_tested_versions()  # trl/transformers internals this stage relies on
    if (config.use_vllm or config.vllm_mode) and not vllm_available():  # the machine: checked at run time
        flag = f"--vllm-mode {config.vllm_mode}" if config.vllm_mode else "--use-vllm"
        raise UsageError(f"{flag} needs vLLM, which is not installed: {VLLM_INSTALL} "
                         f"(or drop {flag} to generate with transformers)")
    reward_names, reward_weights = resolve_rewards(config.rewards, custom=config.custom_rewards)
    params = config.reward_params()
    reward_fns = [get_reward(name, **params.get(name, {})) for name in reward_names]
    batch_size, grad_accum = resolve_batch(config)
    ref = resolve_model(config.model)
    plan = plan_output(config.output, STAGE, config, overwrite=config.overwrite)

    needs_answer = sorted(set(reward_names) & NEEDS_ANSWER)
    ds = load_prompts(config, needs_answer)
    prompts_per_round = batch_size * grad_accum * distributed.world_size() // config.num_generations
    if len(ds) < prompts_per_round:
        raise UsageError(f"--data has {len(ds)} prompt(s) but each generation round takes {prompts_per_round} "
                         f"(batch-size {batch_size} × grad-accum {grad_accum} / num-generations "
                         f"{config.num_generations}); add prompts or lower --prompts-per-step/--batch-size")

    from trl import GRPOConfig

    tokenizer = load_tokenizer(ref)
    # fp32 weights under bf16 autocast for full fine-tuning: at lr 1e-6 bf16 weights would drop the updates.
    model = training.load_trainable(ref, config)
    peft_config = training.lora_config(config, model)
    args = training.trainer_args(
        config, plan.path, GRPOConfig,
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=grad_accum,
        num_generations=config.num_generations,
        max_completion_length=config.max_new_tokens,
        temperature=config.temperature,
        beta=config.beta,
        epsilon=config.epsilon,
        loss_type=config.loss_type,
        reward_weights=reward_weights,
        **vllm_fields(config),
    )
    out = create_output(plan, inputs=[config.data, config.model])
    main = distributed.is_main()
    kept = None
    if config.filter_samples:
        ds, kept = keep_learnable(config, ds, model, tokenizer, out.path, args, prompts_per_round)
    if main:
        weighted = ", ".join(f"{n}×{w:g}" for n, w in zip(reward_names, reward_weights))
        info(f"grpo: {len(ds)} prompts, rewards {weighted}, {config.num_generations} generations per prompt, "
             f"batch {batch_size} completions × grad-accum {grad_accum}, beta {config.beta}, loss {config.loss_type}")
    rollouts = engine_rollouts(config, args)
    trainer, result = training.train_fitting(
        config, out, args, model, lambda a, m: make_trainer(m, reward_fns, a, ds, tokenizer, peft_config, rollouts))
    training.save_trained(trainer, out, tokenizer, merge=config.merge)
    if main:
        metrics = {**grpo_metrics(trainer, result), **(kept.metrics() if kept else {})}
        training.finish(out, metrics)
        info(f"grpo: {metrics['steps']} steps, reward {fmt_value(metrics['first_reward'])} -> {fmt_value(metrics['reward'])}, "
             f"format_rate {fmt_value(metrics['format_rate'])}, generation {fmt_value(metrics['generation_time_share'])} "
             f"of the time -> {out.path}")


# ---- options ------------------------------------------------------------------------------------

def check_sampling(config) -> None:
    if config.num_generations < 2:
        raise UsageError(f"--num-generations must be at least 2, got {config.num_generations}: GRPO scores each "
                         f"completion against the others of its group (8 is the usual choice)")
    if config.beta < 0:
        raise UsageError(f"--beta must be ≥ 0, got {config.beta}: it weighs the KL penalty to the reference model "
                         f"(0 turns it off, 0.04 is the default)")
    if config.epsilon <= 0:
        raise UsageError(f"--epsilon must be > 0, got {config.epsilon} (the clip range; 0.2 is the default)")
    if config.temperature is None or config.temperature <= 0:
        raise UsageError("--temperature must be > 0 for GRPO: a group of greedy completions is identical and "
                         "teaches nothing (1.0 is the default)")


def check_vllm(config) -> None:
    url = config.vllm_server_url
    if url and config.vllm_mode != "server":
        raise UsageError("--vllm-server-url is for --vllm-mode server (a `trl vllm-serve` on its own GPUs); "
                         "add --vllm-mode server, or drop the URL to colocate")
    if url:
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UsageError(f"--vllm-server-url must be http(s)://HOST:PORT, e.g. http://10.0.0.8:8000 "
                             f"(got {url!r})")
        if parts.username or parts.password:
            # the URL is recorded in the manifest: a credential in it would be written to disk
            raise UsageError("--vllm-server-url must not carry credentials (user:password@); trl vllm-serve "
                             "takes none: give http(s)://HOST:PORT")


def vllm_fields(config) -> dict:
    """GRPOConfig's vLLM fields (TRL 1.x names) from --use-vllm / --vllm-mode / --vllm-server-url."""
    if not (config.use_vllm or config.vllm_mode):
        return {"use_vllm": False}
    mode = config.vllm_mode or "colocate"
    fields: dict = {"use_vllm": True, "vllm_mode": mode}
    if mode == "server":
        if config.vllm_server_url:
            fields["vllm_server_base_url"] = config.vllm_server_url.rstrip("/")
    else:
        fields["vllm_gpu_memory_utilization"] = config.vllm_gpu_memory
    return fields


def resolve_batch(config) -> tuple[int, int]:
    """(per-device batch in completions, grad accum). Derived from --prompts-per-step unless
    --batch-size is given; an explicit batch that splits a group is exit 2 with numbers that fit."""
    g, accum, world = config.num_generations, config.grad_accum, distributed.world_size()
    if config.batch_size is None:
        return config.prompts_per_step * g, accum
    batch = config.batch_size
    total = batch * accum * world
    if total % g == 0:
        return batch, accum
    step = g // math.gcd(g, accum * world)  # the batch sizes that fit are the multiples of this
    lower, upper = (batch // step) * step, (batch // step + 1) * step
    sizes = " or ".join(str(b) for b in (lower, upper) if b > 0)
    groups = [d for d in range(2, total + 1) if total % d == 0][:6]
    procs = f" × {world} processes" if world > 1 else ""
    fix_g = f", or --num-generations {' / '.join(map(str, groups))}" if groups else ""
    raise UsageError(f"--batch-size {batch} × --grad-accum {accum}{procs} = {total} completions per generation "
                     f"round, which is not a multiple of --num-generations {g} (each round must hold whole "
                     f"groups): use --batch-size {sizes}{fix_g}, or leave --batch-size unset to derive it")


# ---- data ---------------------------------------------------------------------------------------

def load_prompts(config, needs_answer: list[str]):
    """The prompt dataset with the columns TRL and our rewards expect: `prompt` (chat messages) and
    `answer`; other columns pass through to the reward functions."""
    prompt_col, requested = config.prompt_column, config.answer_column
    try:
        ds, ans_col = load_prompt_rows(config.data, prompt_col, requested,
                                       answer_required=bool(needs_answer or config.filter_samples),
                                       limit=config.limit, split=config.split, subset=config.subset)
    except UsageError as exc:
        if "answer column" not in exc.message:
            raise
        users = ([f"the rewards {', '.join(needs_answer)}"] if needs_answer else []) + \
            (["--filter-samples"] if config.filter_samples else [])
        raise UsageError(f"{exc.message}; {' and '.join(users)} compare against it (or drop "
                         f"{'them' if len(users) > 1 or needs_answer else 'it'})") from None
    renames = {c: n for c, n in ((prompt_col, "prompt"), (ans_col, "answer")) if c and c != n}
    drop = [c for c in ds.column_names if (c in renames.values() and c not in renames) or c in RESERVED_COLUMNS]
    if drop:
        info(f"grpo: dropping column(s) {', '.join(drop)} (replaced or reserved by TRL)")
        ds = ds.remove_columns(drop)
    if renames:
        ds = ds.rename_columns(renames)
    system = resolve_system_prompt(config.system_prompt, config.model)
    chats = [as_messages(p, system) for p in ds["prompt"]]  # not .map(): no progress bar on stderr
    return ds.remove_columns("prompt").add_column("prompt", chats)


def keep_learnable(config, ds, model, tokenizer, folder, args, prompts_per_round: int):
    """--filter-samples: the prompts `model` sometimes solves (chainforge.prompt_filter)."""
    from chainforge.errors import RunFailed
    from chainforge.prompt_filter import PASS_RATES, score_prompts

    info(f"grpo: scoring {len(ds)} prompts with {config.filter_samples} samples each (temperature "
         f"{config.temperature}, top_p {args.top_p}) to keep those the model sometimes solves")
    ids = ds["id"] if "id" in ds.column_names else None
    result = score_prompts(model, tokenizer, ds["prompt"], ds["answer"], ids, folder, samples=config.filter_samples,
                           temperature=config.temperature, top_p=args.top_p, max_new_tokens=config.max_new_tokens,
                           seed=config.seed, autocast=bool(args.bf16))
    info(f"grpo: {result.summary()}; pass rates in {folder}/{PASS_RATES}")
    if len(result.kept) < prompts_per_round:
        raise RunFailed(f"only {len(result.kept)} prompt(s) are sometimes solved ({result.summary()}) but a "
                        f"generation round takes {prompts_per_round}: add prompts of the right difficulty, or "
                        f"drop --filter-samples")
    return ds.select(result.kept), result


# ---- trainer ------------------------------------------------------------------------------------

def engine_rollouts(config, args) -> Optional[EngineRollouts]:
    """The rollout hook for --rollout-sampler engine: one process without vLLM (under FSDP/DeepSpeed
    or several ranks the weights live sharded, and TRL's own path gathers them)."""
    if config.rollout_sampler != "engine" or args.use_vllm or distributed.world_size() > 1:
        return None
    import os

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # TRL marks rollout_func experimental
    return EngineRollouts(config.num_generations, config.temperature, args.top_p, config.max_new_tokens, config.seed,
                          bf16=bool(args.bf16))


def make_trainer(model, reward_fns, args, ds, tokenizer, peft_config, rollouts=None):
    """TRL's GRPOTrainer with three measurements added (see the module docstring)."""
    import torch
    from trl import GRPOTrainer

    class Trainer(GRPOTrainer):
        generation_seconds = 0.0
        train_seconds = 0.0
        _window_generation = 0.0
        _window_start: Optional[float] = None

        def train(self, *a, **kw):
            started = self._window_start = time.perf_counter()
            try:
                return super().train(*a, **kw)
            finally:
                self.train_seconds += time.perf_counter() - started

        def _generate(self, prompts):
            started = time.perf_counter()
            try:
                return super()._generate(prompts)
            finally:
                spent = time.perf_counter() - started
                self.generation_seconds += spent
                self._window_generation += spent

        def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
            rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
            parsed = [_parse(completion_text(c)) for c in completions]
            flags = torch.tensor([[p is not None, p is not None and p.expanded > 0] for p in parsed],
                                 dtype=torch.float32, device=self.accelerator.device)
            flags = self.accelerator.gather(flags)
            mode = "train" if self.model.training else "eval"
            self._metrics[mode]["format_rate"].append(flags[:, 0].mean().item())
            self._metrics[mode]["expansion_rate"].append(flags[:, 1].mean().item())
            return rewards

        def log(self, logs, start_time=None):
            if "loss" in logs and self._window_start is not None:
                now = time.perf_counter()
                window = now - self._window_start
                logs["generation_time_share"] = self._window_generation / window if window > 0 else None
                self._window_start, self._window_generation = now, 0.0
            super().log(logs, start_time)
            if self.accelerator.is_main_process:  # rollouts: TRL's log() has added "kl" to logs by now
                self.kl_guard.check(self.state.global_step, logs.get("kl"))
                self.health.record(self.state.global_step, logs)

        def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep,
                                               batch_size=None, compute_entropy=False, compute_aux_loss=False,
                                               **extra):
            if not completion_only_logps_apply(self.accelerator.device, compute_aux_loss, extra):
                return super()._get_per_token_logps_and_entropies(
                    model, input_ids, attention_mask, logits_to_keep, batch_size=batch_size,
                    compute_entropy=compute_entropy, compute_aux_loss=compute_aux_loss, **extra)
            return completion_logps(self, model, input_ids, attention_mask, logits_to_keep, batch_size,
                                    compute_entropy)

        # ---- rollouts (chainforge.rollouts): every rollout to rollouts.jsonl
        def _generate_and_score_completions(self, inputs):
            output = super()._generate_and_score_completions(inputs)
            mode = "train" if self.model.training else "eval"
            share = zero_spread_share(self, len(inputs) * self.accelerator.num_processes)
            if share is not None:  # TRL's frac_reward_zero_std misses groups of equal non-integer totals
                self._metrics[mode]["zero_spread_groups"].append(share)
            cut = truncated_flags(self, output, len(inputs))  # every process gathers
            if truncated_share(cut) is not None:  # the rows rollouts.jsonl marks, counted the same way
                self._metrics[mode]["truncated"].append(truncated_share(cut))
            if self.model.training:
                record_trainer_rollouts(self, self.rollout_log, inputs, output, cut=cut)
            return output
        # ---- end rollouts

    health = GrpoHealth((), args.max_completion_length)
    trainer = Trainer(model=model, reward_funcs=reward_fns, args=args, train_dataset=ds,
                      processing_class=tokenizer, peft_config=peft_config, rollout_func=rollouts,
                      callbacks=[applied_lr_callback(health)])
    trainer.rollout_log, trainer.kl_guard, trainer.health = RolloutLog(args.output_dir), KLGuard(), health  # rollouts
    health.reward_names = list(trainer.reward_func_names)
    return trainer


def completion_only_logps_apply(device, compute_aux_loss: bool, extra: dict) -> bool:
    """Whether `completion_logps` replaces TRL's fused LM-head path: on CPU, text-only, no MoE loss.
    Off Triton devices TRL's fused path projects EVERY position (prompt included) through the
    LM head, and its backward runs in fp32: with the learn recipe's ~130-token system prompt that
    was more than half of a step's backward."""
    return device.type == "cpu" and not compute_aux_loss and all(v is None for v in extra.values())


def completion_logps(trainer, model, input_ids, attention_mask, logits_to_keep: int, batch_size, compute_entropy):
    """Per-token log-probs (and entropies) of the last `logits_to_keep` tokens: the model projects
    only those positions (`logits_to_keep`), at the trainer's temperature, under its autocast —
    the same quantity as TRL's fused path, computed on the completion alone. Rows whose prompts
    are the same (a group, wherever TRL's shuffle put its rows) run their prompt through the model
    once (see `_shared_prompt_logits`), and the forward stops after the last completion column any
    row needs (`_trimmed_logits`); the columns after it come back as 0, masked out of the loss."""
    import torch
    from trl.trainer.utils import selective_log_softmax, selective_log_softmax_and_entropy

    batch_size = batch_size or input_ids.size(0)
    # Sharing makes two forward calls per micro-batch, and how many rows share depends on the rank's
    # prompts: under DDP (several processes) each rank must make the same calls, once, so it is off
    share = (not getattr(getattr(trainer, "args", None), "gradient_checkpointing", False)
             and getattr(getattr(trainer, "accelerator", None), "num_processes", 1) == 1)
    logps, entropies = [], []
    for start in range(0, input_ids.size(0), batch_size):
        ids, mask = input_ids[start:start + batch_size], attention_mask[start:start + batch_size]
        with trainer.accelerator.autocast():
            logits, keep = _trimmed_logits(model, ids, mask, logits_to_keep, share)
        logits = logits.float()
        first = ids.size(1) - logits_to_keep  # the first completion column
        targets = ids[:, first:first + keep]
        pad = logits_to_keep - keep  # columns after every completion ended: padding, masked out of the loss
        if compute_entropy:
            # the entropy needs a gradient only for TRL's entropy bonus (off by default); without one
            # its softmax is not kept for the backward pass (GBs for a batch of 32 rollouts)
            needs_grad = torch.is_grad_enabled() and getattr(trainer, "_entropy_bonus_enabled", True)
            lp, ent = selective_log_softmax_and_entropy(logits, targets, entropy_requires_grad=needs_grad,
                                                        temperature=trainer.temperature)
            entropies.append(torch.nn.functional.pad(ent, (0, pad)))
        else:
            lp = selective_log_softmax(logits, targets, temperature=trainer.temperature)
        logps.append(torch.nn.functional.pad(lp, (0, pad)))
    return torch.cat(logps), (torch.cat(entropies) if compute_entropy else None), None


def _trimmed_logits(model, ids, mask, logits_to_keep: int, share: bool):
    """(logits predicting the completion tokens up to the last column any row still needs, how many
    columns that is): the columns after every row's completion ended, or was masked out, are not
    computed. Completions are padded to the longest of the whole generation batch, so this trims a
    micro-batch of it (grad-accum > 1) or one whose longest rows `mask_truncated_completions` masked;
    with grad-accum 1 and no masking it keeps every column. Causal attention makes the kept
    columns' logits those of the full rows."""
    width = ids.size(1) - logits_to_keep
    real = mask[:, width:].any(0).nonzero()
    keep = int(real[-1]) + 1 if real.numel() else 1
    ids, mask = ids[:, :width + keep], mask[:, :width + keep]
    logits = _shared_prompt_logits(model, ids, mask, keep) if share else None
    if logits is None:
        logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=keep + 1).logits[:, :-1]
    return logits, keep


def _shared_prompt_logits(model, ids, mask, keep: int):
    """The logits that predict the last `keep` tokens of each row, [rows, keep, vocab], with each
    distinct prompt (the columns before them) run once: its KV cache (gradients kept) is repeated
    for its rows, then only the completions run. The positions are the column indices, as in a
    forward over the whole rows, so the result is that forward's. None when no two rows share a
    prompt (nothing to save)."""
    import torch
    from transformers import DynamicCache

    width = ids.size(1) - keep
    if width < 1 or ids.size(0) < 2:
        return None
    prompt, prompt_mask = ids[:, :width], mask[:, :width]
    groups = _prompt_groups(prompt, prompt_mask)
    if groups is None:
        return None
    owner, heads = groups
    positions = torch.arange(ids.size(1), device=ids.device)[None]
    cache = DynamicCache()
    kv = {cache_kwarg(model): cache}
    first = model(input_ids=prompt[heads], attention_mask=prompt_mask[heads], position_ids=positions[:, :width],
                  use_cache=True, logits_to_keep=1, **kv).logits
    cache.batch_select_indices(owner)
    rest = model(input_ids=ids[:, width:], attention_mask=mask, position_ids=positions[:, width:],
                 use_cache=True, **kv).logits
    return torch.cat([first[owner], rest[:, :-1]], dim=1)


def _prompt_groups(prompt, prompt_mask):
    """(owner: each row's group, heads: one row per group) for the rows with identical prompt columns
    (ids and padding), wherever they sit: TRL shuffles a step's rollouts before the loss, and a
    grouping of adjacent rows only ran the prompt of every row whose neighbour had another prompt
    (in the learn recipe's 8 × 4, about 25 of the 32 prompts where 4 would do). None when every row's
    prompt is its own."""
    import torch

    _, owner = torch.unique(torch.cat([prompt, prompt_mask], 1), dim=0, return_inverse=True)
    count = int(owner.max()) + 1
    if count == prompt.size(0):
        return None
    rows = torch.arange(prompt.size(0), device=prompt.device)
    heads = torch.full((count,), prompt.size(0), device=prompt.device).scatter_reduce(0, owner, rows, "amin")
    return owner, heads


def _parse(text: str):
    try:
        return parse_super_cot(text)
    except ValueError:
        return None


def grpo_metrics(trainer, result) -> dict:
    """The contract's grpo metrics: rollout metrics from the last logging window, the time share
    over the whole run (this process), and the trainer's own loss/steps/tokens."""
    logs = [h for h in trainer.state.log_history if "reward" in h]
    last = logs[-1] if logs else {}
    trained = trainer.train_seconds
    metrics = {
        "reward": last.get("reward"),
        **{f"reward/{name}": last.get(f"rewards/{name}/mean") for name in trainer.reward_func_names},
        "reward_std": last.get("reward_std"),
        "kl": last.get("kl"),
        "clip_ratio": last.get("clip_ratio/region_mean"),
        "format_rate": last.get("format_rate"),
        "expansion_rate": last.get("expansion_rate"),
        "completion_tokens": last.get("completions/mean_length"),
        "generation_time_share": (trainer.generation_seconds / trained) if trained else None,
        "train_seconds": trained,
        "seconds_per_step": (trained / trainer.state.global_step) if trained and trainer.state.global_step else None,
        "first_reward": logs[0].get("reward") if logs else None,
        **training.train_metrics(trainer, result),
        **trainer.health.summary(),
    }
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()}
