"""Prompts worth a GRPO step: those the starting model sometimes solves.

GRPO's advantage is a completion's reward relative to its group. A prompt whose group is all right or
all wrong gives every completion the same reward, so it carries no gradient (TRL logs the share of
such groups as `frac_reward_zero_std`): in the learn recipe before this filter, 25 of 64 groups
(39 %) were dead. `grpo --filter-samples K` scores every prompt first: K completions from the model
GRPO starts from, at GRPO's own sampling settings (temperature, top-p, token limit, system prompt),
checked by the accuracy reward's `answers_match`. Prompts with 0 < pass rate < 1 are kept; the
always-right and always-wrong ones are counted in the manifest and listed in
`--output/prompt_pass_rates.jsonl` (one line per scored prompt: id, question, answer, pass rate,
kept). The samples are journaled (`prompt-filter.jsonl`), so a resumed run keeps the same prompts.

This is the off-line form of DAPO's dynamic sampling (Yu et al. 2025), which drops zero-spread
groups as they are drawn and draws more; TRL's rollout hook must return completions for exactly the
prompts it is given, so the on-line form does not fit it without replacing TRL's sampler.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

FILTER_JOURNAL = "prompt-filter.jsonl"
PASS_RATES = "prompt_pass_rates.jsonl"


@dataclass
class FilterResult:
    pass_rates: list[float]  # one per scored prompt, in input order
    kept: list[int]  # indices of the prompts with 0 < pass rate < 1

    @property
    def always_right(self) -> int:
        return sum(p >= 1.0 for p in self.pass_rates)

    @property
    def always_wrong(self) -> int:
        return sum(p <= 0.0 for p in self.pass_rates)

    def metrics(self) -> dict:
        return {"prompts_scored": len(self.pass_rates), "prompts_kept": len(self.kept),
                "prompts_always_right": self.always_right, "prompts_always_wrong": self.always_wrong,
                "prompts_mean_pass_rate": (sum(self.pass_rates) / len(self.pass_rates)) if self.pass_rates else None}

    def summary(self) -> str:
        return (f"{len(self.kept)} of {len(self.pass_rates)} prompts kept (always right {self.always_right}, "
                f"always wrong {self.always_wrong})")


def learnable(pass_rates: Sequence[float]) -> list[int]:
    """Indices of the prompts the model sometimes solves and sometimes not."""
    return [i for i, p in enumerate(pass_rates) if 0.0 < p < 1.0]


def score_prompts(model, tokenizer, prompts: Sequence[Any], answers: Sequence[Any], ids: Optional[Sequence[Any]],
                  folder: str | Path, *, samples: int, temperature: float, top_p: float, max_new_tokens: int,
                  seed: int, autocast: bool = False) -> FilterResult:
    """Draw `samples` completions per prompt (journaled in `folder`), score them, write the pass
    rates file (on the main process) and return which prompts to keep. `prompts` are what GRPO
    samples from (chat messages holding their system turn, or strings)."""
    from chainforge import distributed
    from chainforge.metrics import evaluate_model
    from chainforge.outputs import atomic_write_text
    from chainforge.rollouts import sampling_autocast

    rows = [{"id": None if ids is None else ids[i], "prompt": p, "answer": a}
            for i, (p, a) in enumerate(zip(prompts, answers))]
    with sampling_autocast(model, autocast):
        _, results = evaluate_model(model, tokenizer, rows, num_samples=samples, temperature=temperature,
                                    top_p=top_p, max_new_tokens=max_new_tokens, seed=seed, system_prompt=None,
                                    rewards=(["accuracy"], [1.0]), journal=str(Path(folder) / FILTER_JOURNAL))
    rates = [r["pass_at_1"] for r in results]
    result = FilterResult(rates, learnable(rates))
    if distributed.is_main():
        from chainforge.rollouts import _prompt_text

        keep = set(result.kept)
        lines = [json.dumps({"id": r["id"], "prompt": _prompt_text(p), "answer": r["answer"],
                             "pass_rate": rate, "kept": i in keep}, ensure_ascii=False)
                 for i, (r, p, rate) in enumerate(zip(results, prompts, rates))]
        atomic_write_text(Path(folder) / PASS_RATES, "".join(line + "\n" for line in lines))
    return result
