"""`chainforge reject`: rejection sampling — draw N candidates per question, keep the best that pass.

    chainforge reject --model runs/demo/02-rl --data data/toy/train.jsonl --output runs/reject
    chainforge reject --model M --data D -o OUT --num-samples 16 --rewards accuracy,format,expansion \\
        --min-reward 1.2 --keep all-passing

Stage 3 of the R1 recipe: the RL checkpoint answers every training question `--num-samples` times
(temperature 0.7, the Super CoT system prompt); each candidate is scored with the grpo reward
registry (`--rewards`, default accuracy+format); identical completions count once; candidates with
reward ≥ `--min-reward` (default 1.0, i.e. correct) pass; `--keep best` keeps the top one per
question, `--keep all-passing` every distinct passing one (`kept_rank` 0 = the best; ties go to the
one drawn first). Completions are kept exactly as generated, expansions and all — unless
`--expander` is given: then the uncertain steps of the KEPT candidates (never the discarded ones)
are grounded through chainforge/providers/grounding.py and each kept row is rewritten as Super CoT
(journaled in `expansions.jsonl`; counts, tokens and cost in the manifest).

The output is a dataset `chainforge sft` takes unchanged: `id`, `prompt`, `reference`, `text`,
`messages` ([user prompt, assistant text] — the system prompt used for sampling is not part of the
training conversation, so the model learns the format without being asked), `reward`,
`candidates`, `kept_rank`. Sampling is journaled in `candidates.jsonl`: an interrupted run resumes,
and when nothing passes (exit 1) the same command with another `--min-reward` or `--keep` reuses the
candidates already drawn.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from chainforge import distributed
from chainforge.config import (AnswerOptions, DataOptions, EngineOptions, ExpanderOptions, GenerationOptions,
                               ModelOptions, OutputOptions, RewardOptions, StageSpec, default, option)
from chainforge.inputs import load_prompt_rows
from chainforge.outputs import create_output, plan_output
from chainforge.errors import RunFailed, UsageError
from chainforge.log import info
from chainforge.metrics import pass_at_k, passes, score_rows, select_candidates
from chainforge.rewards import NEEDS_ANSWER, resolve_rewards
from chainforge.sampling import engine_spec, generate_journaled, load_engine, resolve_system_prompt, row_id
from chainforge.traces import trace_row

REJECT_REWARDS = ("accuracy", "format")
JOURNAL = "candidates.jsonl"


@dataclass(kw_only=True)
class RejectConfig(ExpanderOptions, ModelOptions, DataOptions, AnswerOptions, OutputOptions, RewardOptions,
                   GenerationOptions, EngineOptions):
    REQUIRED = ("model", "data", "output")

    min_reward: float = option(1.0, "Keep candidates with total reward >= this (inclusive).")
    keep: Literal["best", "all-passing"] = option(
        "best", "best: one per prompt (the highest reward); all-passing: every distinct passing one.")
    num_samples: int = default(EngineOptions, "num_samples", 8, "Candidates drawn per prompt.")
    temperature: Optional[float] = default(GenerationOptions, "temperature", 0.7)
    expander: Optional[Literal["anthropic", "openai", "local", "none"]] = default(
        ExpanderOptions, "expander", "none", "Ground the uncertain steps of the KEPT candidates: anthropic "
                                             "(ANTHROPIC_API_KEY), openai (OPENAI_BASE_URL), local or none.")


CONFIG = RejectConfig
# The drawn candidates are kept, so a new filter (or batch size) reuses them on resume.
SPEC = StageSpec("reject", produces="dataset", inputs={"model": "checkpoint", "data": "prompts"},
                 resumable=("min_reward", "keep", "batch_size", "max_cost", "poll_interval", "preflight"))
RESUMABLE_CHANGES = SPEC.resumable


def run(config: RejectConfig) -> None:
    # ---- options and data, validated before anything is created
    engine = engine_spec(config)
    grounder = expansion_setup(config)
    names, weights = resolve_rewards(config.rewards, default=REJECT_REWARDS, custom=config.custom_rewards)
    plan = plan_output(config.output, "reject", config, overwrite=config.overwrite, ignore=SPEC.resumable)
    ds, answers = load_prompt_rows(config.data, config.prompt_column, config.answer_column, limit=config.limit,
                                   split=config.split, subset=config.subset)
    needs = [n for n in names if n in NEEDS_ANSWER]
    if needs and answers is None:
        raise UsageError(f"--rewards {', '.join(needs)} needs reference answers but --data has no column "
                         f"'{config.answer_column}' (nor 'reference'); columns found: {', '.join(ds.column_names)} "
                         f"(pass --answer-column NAME, or use rewards that need no answer, e.g. --rewards format)")
    rows = [dict(r) for r in ds]
    prompts = [r[config.prompt_column] for r in rows]
    refs = [r.get(answers) if answers else None for r in rows]

    # ---- sample and score (the output exists from here on)
    out = create_output(plan, inputs=[config.data, config.model])
    model, tokenizer = load_engine(engine)
    info(f"reject: {len(rows)} prompts x {config.num_samples} candidates, temperature {config.temperature}, "
         f"rewards {', '.join(f'{n}={w:g}' for n, w in zip(names, weights))}, min reward {config.min_reward}")
    drawn = generate_journaled(
        out.path / JOURNAL, model, tokenizer, prompts, n=config.num_samples, temperature=config.temperature,
        top_p=config.top_p, max_new_tokens=config.max_new_tokens, seed=config.seed, batch_size=engine.batch_size,
        system_prompt=resolve_system_prompt(config.system_prompt, config.model), progress=True)
    if not distributed.is_main():
        return  # each rank drew its share of the candidates; rank 0 filters and writes once
    texts = [[c.text for c in comps] for comps in drawn]
    rewards = score_rows(rows, texts, refs, names, weights, prompts=prompts, params=config.reward_params())

    # ---- filter
    kept: list[dict] = []
    passing_counts = []
    for row, prompt, ref, cands, scores in zip(rows, prompts, refs, texts, rewards):
        passing_counts.append(sum(passes(s, config.min_reward) for s in scores))
        for rank, (text, reward) in enumerate(select_candidates(cands, scores, config.min_reward, config.keep)):
            kept.append(trace_row(row_id(row.get("id"), prompt), prompt, ref, text, reward,
                                  candidates=len(cands), kept_rank=rank))
    n = config.num_samples
    all_scores = [s for scores in rewards for s in scores]
    metrics = {
        "prompts": len(rows),
        "candidates": len(all_scores),
        "kept": len(kept),
        "pass@1": sum(c / n for c in passing_counts) / len(rows),
        "pass@k": sum(pass_at_k(n, c, n) for c in passing_counts) / len(rows),
        "mean_reward_all": sum(all_scores) / len(all_scores),
        "mean_reward_kept": (sum(r["reward"] for r in kept) / len(kept)) if kept else None,
    }
    if not kept:
        out.mark_incomplete(metrics)
        raise RunFailed(f"no candidate reached --min-reward {config.min_reward} (best reward "
                        f"{max(all_scores):.3g} over {len(all_scores)} candidates); nothing to keep. Rerun "
                        f"with a lower --min-reward (the candidates drawn are reused), or draw more with "
                        f"--num-samples / a longer --max-new-tokens after --overwrite")

    if grounder is not None:
        metrics.update(ground_kept(grounder, kept, out, metrics))

    import datasets

    out.save_dataset(datasets.Dataset.from_list(kept))
    out.finish(metrics)
    info(f"reject: kept {len(kept)} of {len(all_scores)} candidates from {len(rows)} prompts "
         f"(pass@1 {metrics['pass@1']:.3f}, pass@{n} {metrics['pass@k']:.3f}) -> {out.path}")


def expansion_setup(config: RejectConfig):
    """The expander of --expander (checked before --output exists), or None for `none`."""
    from chainforge.providers.grounding import Grounder

    grounder = Grounder.setup(config, "reject")
    if not grounder.active:
        return None
    grounder.preflight()  # a refused key or an unknown model, before the sampling
    return grounder


def ground_kept(grounder, kept: list[dict], out, metrics: dict) -> dict:
    """Ground the uncertain steps of the kept candidates only (discarded ones cost nothing);
    journaled in --output/expansions.jsonl. A stop keeps the journal and marks the output incomplete."""
    from chainforge.providers.grounding import ground_rows

    try:
        return ground_rows(grounder, kept, out.path, "reject")
    except BaseException:
        out.mark_incomplete(metrics)
        raise
