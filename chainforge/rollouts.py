"""What GRPO did, step by step: every rollout logged, and a warning when the policy lurches.

`RolloutLog` appends one line per completion to `--output/rollouts.jsonl` (what TRL's
`log_completions` shows in its console/W&B table, kept on disk):

    {"step": 3, "prompt": "What is 6 - 5? …", "answer": "1", "completion": "<reasoning_process>…",
     "rewards": {"accuracy": 1.0, "format": 0.2}, "reward": 1.2, "advantage": 0.71}

`step` is the optimizer step the completions were drawn at (0 = from the starting model). A user
can audit what was rewarded: a reward that pays for restating the question shows up here first.
On resume from checkpoint-N the lines of steps ≥ N are dropped before new ones are written, so
every step appears once.

`KLGuard` prints one line when the logged KL to the reference crosses a threshold: at learning
rate 1e-4 with no warmup the 135M policy collapsed in ONE update (KL 0.36, format rate 0.125,
accuracy 0), and nothing said so. GRPO's warmup default is `GRPO_WARMUP_RATIO` for the same
reason: the first updates, made with Adam's moment estimates still empty, are the largest.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

ROLLOUTS = "rollouts.jsonl"
GRPO_WARMUP_RATIO = 0.1
KL_WARN = 0.1  # healthy runs of the learn recipe stay below ~0.02; the collapse logged 0.36


def _prompt_text(prompt: Any) -> str:
    """The user's question of a chat prompt (the system turn is the same on every line)."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, (list, tuple)):
        users = [m.get("content", "") for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
        if users:
            return str(users[-1])
        return "\n".join(str(m.get("content", "")) if isinstance(m, dict) else str(m) for m in prompt)
    return str(prompt)


def _number(value: Any) -> Optional[float]:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


def rollout_records(step: int, prompts: Sequence[Any], completions: Sequence[Any], rewards: dict[str, Sequence[Any]],
                    weights: Sequence[float], advantages: Optional[Sequence[Any]] = None,
                    answers: Optional[Sequence[Any]] = None, group_size: Optional[int] = None,
                    truncated: Optional[Sequence[Any]] = None) -> list[dict]:
    """One record per completion: the reward of every function (None where it gave no signal), the
    weighted total as TRL sums it, and the advantage TRL derived from the group. With `group_size`
    (the completions of a prompt come in a row), `zero_spread` says whether its whole group scored
    the same total (no gradient); `truncated` whether it was cut at the token limit."""
    from chainforge.formats import completion_text
    from chainforge.rewards import weighted_total

    names = list(rewards)
    if len(weights) != len(names):
        raise ValueError(f"{len(names)} reward functions but {len(weights)} weights")
    out = []
    for i, (prompt, completion) in enumerate(zip(prompts, completions)):
        values = {name: _number(rewards[name][i]) for name in names}
        total = weighted_total(list(values.values()), weights)
        out.append({
            "step": int(step),
            "prompt": _prompt_text(prompt),
            "answer": None if answers is None or answers[i] is None else str(answers[i]),
            "completion": completion_text(completion),
            "rewards": values,
            "reward": total,
            "advantage": None if advantages is None else _number(advantages[i]),
        })
        if truncated is not None:
            out[-1]["truncated"] = None if truncated[i] is None else bool(truncated[i])
    if group_size and group_size > 1 and len(out) % group_size == 0:
        for start in range(0, len(out), group_size):
            group = out[start:start + group_size]
            totals = {None if r["reward"] is None else round(r["reward"], 9) for r in group}
            for r in group:
                r["zero_spread"] = len(totals) == 1
    return out


class RolloutLog:
    """Append-only `rollouts.jsonl`; the first write after a resume drops the steps to be redone."""

    def __init__(self, folder: str | Path):
        self.path = Path(folder) / ROLLOUTS
        self._checked = False

    def _drop_from(self, step: int) -> None:
        if not self.path.is_file():
            return
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line)["step"] < step:
                    kept.append(line)
            except (ValueError, KeyError, TypeError):
                continue  # a torn last line from a killed run
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        os.replace(tmp, self.path)

    def write(self, records: list[dict]) -> None:
        if not records:
            return
        if not self._checked:
            self._drop_from(min(r["step"] for r in records))
            self._checked = True
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def record_trainer_rollouts(trainer, log: RolloutLog, inputs: list[dict], output: Optional[dict] = None,
                            cut: Optional[list] = None) -> None:
    """Write the rollouts TRL has just generated and scored for `inputs` (this process's share of the
    generation batch). TRL keeps the gathered prompts, completions, rewards per function and
    advantages of its latest generation batch in `trainer._logs` for its own completion table; the
    newest len(inputs) × processes entries are this call's. `output` (what TRL's
    `_generate_and_score_completions` returned) tells which completions hit the token limit. Every
    process must call this (the answers are gathered); only the main one writes."""
    from accelerate.utils import gather_object

    answers = gather_object([x.get("answer") for x in inputs])
    if cut is None:
        cut = truncated_flags(trainer, output, len(inputs))
    if not trainer.accelerator.is_main_process:
        return
    logs = trainer._logs
    n = len(answers)

    def newest(seq):
        items = list(seq)
        return items[-n:] if len(items) >= n else [None] * (n - len(items)) + items

    rewards = {name: newest(logs["rewards"][name]) for name in trainer.reward_func_names}
    weights = trainer.reward_weights.tolist()
    log.write(rollout_records(trainer.state.global_step, newest(logs["prompt"]), newest(logs["completion"]),
                              rewards, weights, newest(logs["advantages"]), answers,
                              group_size=getattr(trainer, "num_generations", None), truncated=cut))


def truncated_flags(trainer, output: Optional[dict], n: int) -> list:
    """`_truncated` for every process's completions, gathered (every process must call it)."""
    from accelerate.utils import gather_object

    return gather_object(_truncated(trainer, output, n))


def truncated_share(flags: Sequence[Any]) -> Optional[float]:
    """The share of completions cut at the token limit, among those known (None when none is)."""
    known = [bool(f) for f in flags if f is not None]
    return sum(known) / len(known) if known else None


def _truncated(trainer, output: Optional[dict], n: int) -> list:
    """Per local completion: True when its last token is not an end token (TRL's own test for
    `completions/clipped_ratio`), None when unknown."""
    if not output or "completion_ids" not in output or "completion_mask" not in output:
        return [None] * n
    ends = set(getattr(trainer, "eos_token_ids", []) or [])
    pad = getattr(getattr(trainer, "processing_class", None), "pad_token_id", None)
    ids, mask = output["completion_ids"], output["completion_mask"]
    lengths = mask.sum(dim=1).tolist()
    flags = []
    for row, length in zip(ids.tolist(), lengths):
        last = row[int(length) - 1] if length else None
        flags.append(last is not None and last not in ends and last != pad)
    return flags if len(flags) == n else [None] * n


class KLGuard:
    """Warn (one line, via `warn`) each time the logged KL rises past `threshold` from below it."""

    def __init__(self, threshold: Optional[float] = None, warn: Optional[Callable[[str], None]] = None):
        self.threshold = KL_WARN if threshold is None else threshold
        self._above = False
        if warn is None:
            from chainforge.log import info as warn
        self.warn = warn

    def check(self, step: int, kl: Any) -> bool:
        value = _number(kl)
        if value is None:
            return False
        jumped = value > self.threshold and not self._above
        self._above = value > self.threshold
        if jumped:
            self.warn(f"warning: grpo step {step}: KL to the reference {value:.3g} > {self.threshold:g}; the policy "
                      f"moved far in one step (a collapse looks like this): lower --learning-rate or raise "
                      f"--warmup-ratio, and check rollouts.jsonl")
        return jumped


# ---- health: is each step teaching? ----------------------------------------------------------------

# A group whose completions all score the same has zero advantage everywhere: no gradient. Above
# half of the groups, most of a step is spent for nothing (the learn recipe before --filter-samples:
# 39 %). A completion cut at --max-new-tokens usually loses its format and answer rewards: past a
# fifth of them the reward mostly measures the cap (the commonest "reward stuck at 0" cause in TRL's
# issue tracker).
ZERO_SPREAD_WARN = 0.5
TRUNCATED_WARN = 0.2


def zero_spread_share(trainer, n: int) -> Optional[float]:
    """The share of groups, among the newest `n` completions TRL scored (every process's), whose
    completions all got the same weighted reward. TRL's own `frac_reward_zero_std` tests the group's
    float32 standard deviation with `torch.isclose(std, 0)` (atol 1e-8): eight rewards of 1.2
    (accuracy + format) have a std of 1.3e-7, so a group that is all right never counted, and a run
    whose rollouts held 1-2 dead groups of 4 at every step logged 0. Totals are compared rounded."""
    g = getattr(trainer, "num_generations", None)
    logs = getattr(trainer, "_logs", {}).get("rewards") or {}
    names = list(getattr(trainer, "reward_func_names", []))
    if not g or not names or n % g or any(len(logs.get(name, ())) < n for name in names):
        return None
    from chainforge.rewards import weighted_total

    weights = trainer.reward_weights.tolist()
    columns = [list(logs[name])[-n:] for name in names]
    totals = [weighted_total([_number(c[i]) for c in columns], weights) for i in range(n)]
    groups = [totals[i:i + g] for i in range(0, n, g)]
    dead = sum(len({None if t is None else round(t, 6) for t in group}) == 1 for group in groups)
    return dead / len(groups)


class GrpoHealth:
    """Per optimizer step: the share of zero-spread groups (`zero_spread_share`, logged as
    `zero_spread_groups`), of truncated completions (`truncated_share`, counted on the same rows rollouts.jsonl marks; TRL's
    `completions/clipped_ratio` when it is missing), the mean
    reward of each function, the KL to the reference and the learning rate the optimizer applied at
    that step. One warning line per kind, the first time a step crosses its line."""

    def __init__(self, reward_names: Sequence[str], max_new_tokens: Optional[int] = None,
                 warn: Optional[Callable[[str], None]] = None):
        self.reward_names = list(reward_names)
        self.max_new_tokens = max_new_tokens
        self.steps: list[dict] = []
        self.applied_lr: Optional[float] = None
        self._warned: set[str] = set()
        if warn is None:
            from chainforge.log import info as warn
        self.warn = warn

    def record(self, step: int, logs: dict) -> Optional[dict]:
        """The health of `step` from one logging window of TRL's (None when it logged no rollouts)."""
        if "zero_spread_groups" not in logs and "reward" not in logs:
            return None
        entry = {"step": int(step),
                 "zero_spread_groups": _number(logs.get("zero_spread_groups", logs.get("frac_reward_zero_std"))),
                 "truncated": _number(logs.get("truncated", logs.get("completions/clipped_ratio"))),
                 "reward": _number(logs.get("reward")),
                 **{f"reward/{n}": _number(logs.get(f"rewards/{n}/mean")) for n in self.reward_names},
                 "kl": _number(logs.get("kl")),
                 "learning_rate": self.applied_lr if self.applied_lr is not None else _number(logs.get("learning_rate"))}
        self.steps = [s for s in self.steps if s["step"] != entry["step"]] + [entry]  # a resumed step: last wins
        self._check(entry)
        return entry

    def _check(self, entry: dict) -> None:
        zero, cut = entry["zero_spread_groups"], entry["truncated"]
        if zero is not None and zero > ZERO_SPREAD_WARN and "zero" not in self._warned:
            self._warned.add("zero")
            self.warn(f"warning: grpo step {entry['step']}: {zero:.0%} of the groups scored the same reward on every "
                      f"completion and carry no gradient; train on prompts the model sometimes solves "
                      f"(--filter-samples 8) or raise --num-generations")
        if cut is not None and cut > TRUNCATED_WARN and "cut" not in self._warned:
            self._warned.add("cut")
            cap = f" {self.max_new_tokens}" if self.max_new_tokens else ""
            self.warn(f"warning: grpo step {entry['step']}: {cut:.0%} of the completions were cut off at "
                      f"--max-new-tokens{cap} (a cut completion rarely earns its format or answer reward); raise "
                      f"--max-new-tokens")

    def summary(self) -> dict:
        """Run-level means for the manifest, beside the per-step list."""
        def mean(key):
            values = [s[key] for s in self.steps if s.get(key) is not None]
            return sum(values) / len(values) if values else None

        return {"zero_spread_groups": mean("zero_spread_groups"), "truncated": mean("truncated"),
                "health": list(self.steps)}


def applied_lr_callback(health: GrpoHealth):
    """A transformers callback that notes the learning rate just before each optimizer step."""
    from transformers import TrainerCallback

    class AppliedLearningRate(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
            if optimizer is not None and optimizer.param_groups:
                health.applied_lr = float(optimizer.param_groups[0]["lr"])

    return AppliedLearningRate()


# ---- sampling the rollouts -----------------------------------------------------------------------

class EngineRollouts:
    """TRL's `rollout_func` hook backed by chainforge's sampling engine (chainforge.sampling), used
    when vLLM is off and the run is one process: the group of a prompt is prefilled once and its KV
    cache shared by its `num_generations` rows, finished rows leave the batch and queued rows take
    their slots. The engine samples the live policy, under the same bf16 autocast as the update
    (`--precision`), entered once around the whole rollout: autocast keeps the bf16 casts of the
    fp32 weights for as long as it stays entered, so they are made once per rollout, not once per
    decode step (TRL's wrapped forward enters and leaves autocast on every call).
    `python scripts/bench_grpo.py` measures it against TRL's own `model.generate` path.

    TRL hands over each process's prompts with every prompt repeated `num_generations` times in a
    row; the completions come back in the same order. Every row draws from its own generator seeded
    from (--seed, the call, the group, the row), so a run is reproducible and no two steps repeat
    their draws."""

    def __init__(self, num_generations: int, temperature: float, top_p: float, max_new_tokens: int, seed: int,
                 bf16: bool):
        self.num_generations, self.temperature, self.top_p = num_generations, temperature, top_p
        self.max_new_tokens, self.seed, self.bf16 = max_new_tokens, seed, bf16
        self.calls = 0

    def __call__(self, prompts: list, trainer) -> dict:
        from chainforge.sampling import generate
        from chainforge.sampling.prompts import render_prompt

        tokenizer = trainer.processing_class
        groups = _groups(prompts, self.num_generations)
        n = len(prompts) // len(groups)
        call = self.calls = self.calls + 1
        base = (trainer.state.global_step * 1_000 + call % 1_000) * 100_000  # distinct per step and call
        with self._sampling_model(trainer) as model:
            drawn = generate(model, tokenizer, groups, n=n, temperature=self.temperature, top_p=self.top_p,
                             max_new_tokens=self.max_new_tokens, seed=self.seed, batch_size=len(prompts),
                             keys=[base + g for g in range(len(groups))])
        prompt_ids = [tokenizer(render_prompt(tokenizer, p), add_special_tokens=False)["input_ids"] for p in groups]
        return {"prompt_ids": [prompt_ids[g] for g in range(len(groups)) for _ in range(n)],
                "completion_ids": [c.ids for comps in drawn for c in comps],
                "logprobs": None}

    @contextlib.contextmanager
    def _sampling_model(self, trainer):
        """The policy itself, under bf16 autocast when the run trains in bf16 (one autocast for the
        whole rollout). A bf16 copy of the weights would sample another policy: its log-probs
        differ from the autocast learner's by 0.04-0.06 per token on SmolLM2."""
        import torch

        model = trainer.accelerator.unwrap_model(trainer.model)
        device = next(model.parameters()).device.type
        if self.bf16 and device in ("cpu", "cuda"):
            with torch.autocast(device, dtype=torch.bfloat16):
                yield model
        else:
            yield model


@contextlib.contextmanager
def sampling_autocast(model, enabled: bool):
    """bf16 autocast around sampling from a model whose weights train in fp32 (GRPO's policy): the
    samples come from the weights being trained, computed as the update computes them."""
    if not enabled:
        yield
        return
    import torch

    with torch.autocast(next(model.parameters()).device.type, dtype=torch.bfloat16):
        yield


def _groups(prompts: list, num_generations: int) -> list:
    """The distinct prompts of a rollout batch when each comes `num_generations` times in a row
    (TRL's sampler), else every entry on its own (n = 1)."""
    g = num_generations
    if g > 1 and len(prompts) % g == 0:
        heads = prompts[::g]
        if all(prompts[i] == heads[i // g] for i in range(len(prompts))):
            return heads
    return list(prompts)
