"""`chainforge eval`: pass@1 / pass@k / maj@k / format rate of a model on a prompt set.

    chainforge eval --model smollm2 --data data/toy/test.jsonl --output runs/eval-base
    chainforge eval --model runs/demo/02-rl --data data/toy/test.jsonl --output runs/eval-rl \\
        --compare runs/eval-base
    # GSM8K: its `answer` column ends in "#### 42"; answers_match reads the number after ####
    chainforge eval --model M --data gsm8k_test.jsonl --prompt-column question --answer-column answer -o OUT

Samples `--num-samples` completions per question at `--temperature` 0.6 / top_p 0.95 (the R1
paper's evaluation settings). `--temperature 0` is greedy: the samples would all be the same, so
one is drawn and k is 1. The output folder holds `results.jsonl` (one line per question) and the
manifest with the metrics; sampling is journaled in `samples.jsonl`, so an interrupted run resumes.
The metric code lives in `chainforge.metrics` (`evaluate_model`), reused by other stages.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from chainforge import distributed
from chainforge.config import (AnswerOptions, DataOptions, EngineOptions, GenerationOptions, ModelOptions,
                               OutputOptions, RewardOptions, StageSpec, default, option)
from chainforge.inputs import load_prompt_rows
from chainforge.outputs import MANIFEST, atomic_write_text, create_output, plan_output, read_manifest
from chainforge.log import console, fmt_value, info
from chainforge.errors import UsageError
from chainforge.metrics import (EVAL_REWARDS, compare_metrics, evaluate_model,  # evaluate_model: other stages
                                format_interval)                                  # import it from here
from chainforge.rewards import resolve_rewards
from chainforge.sampling import engine_spec, load_engine, resolve_system_prompt, row_id

RESULTS = "results.jsonl"
JOURNAL = "samples.jsonl"
METRIC_ORDER = ("pass@1", "pass@k", "maj@k", "format_rate", "mean_completion_tokens", "k")


@dataclass(kw_only=True)
class EvalConfig(ModelOptions, DataOptions, AnswerOptions, OutputOptions, RewardOptions, GenerationOptions,
                 EngineOptions):
    REQUIRED = ("model", "data", "output")

    compare: Optional[str] = option(None, "Another eval output folder: print a side-by-side delta table.")
    # sampling: the R1 paper's evaluation settings
    num_samples: int = default(EngineOptions, "num_samples", 4, "Completions per question (k).")
    temperature: Optional[float] = default(GenerationOptions, "temperature", 0.6)
    top_p: float = default(EngineOptions, "top_p", 0.95)


CONFIG = EvalConfig
SPEC = StageSpec("eval", produces=None, inputs={"model": "checkpoint", "data": "eval_data"},
                 resumable=("compare", "batch_size"))
RESUMABLE_CHANGES = SPEC.resumable


def run(config: EvalConfig) -> None:
    # ---- options, data and model checked before anything is created
    engine = engine_spec(config)
    rewards = resolve_rewards(config.rewards, default=EVAL_REWARDS, custom=config.custom_rewards)
    other = _compare_target(config.compare) if config.compare else None
    plan = plan_output(config.output, "eval", config, overwrite=config.overwrite, ignore=SPEC.resumable)
    ds, answers = load_prompt_rows(config.data, config.prompt_column, config.answer_column, answer_required=True,
                                   limit=config.limit, split=config.split, subset=config.subset)
    rows = [dict(r) for r in ds]
    # --compare needs questions in common: checked before --output exists
    if other is not None and not {row_id(r.get("id"), r[config.prompt_column]) for r in rows} & {
            r.get("id") for r in other["results"]}:
        raise UsageError(f"--compare {config.compare} shares no question with --data (matched by id); compare "
                         f"evals of the same prompt set")
    greedy = config.temperature is not None and config.temperature <= 0
    k = 1 if greedy else config.num_samples
    if greedy and config.num_samples > 1:
        info(f"--temperature 0 is greedy: every sample would be the same, so 1 is drawn per question (k=1)")

    # ---- sample and score (the output exists from here on)
    out = create_output(plan, inputs=[config.data, config.model])
    model, tokenizer = load_engine(engine)
    info(f"eval: {len(rows)} questions x {k} samples, temperature {config.temperature}, "
         f"top_p {config.top_p}, backend {engine.backend}")
    metrics, results = evaluate_model(
        model, tokenizer, rows, prompt_column=config.prompt_column, answer_column=answers,
        num_samples=k, temperature=config.temperature, top_p=config.top_p, max_new_tokens=config.max_new_tokens,
        seed=config.seed, system_prompt=resolve_system_prompt(config.system_prompt, config.model), rewards=rewards,
        reward_params=config.reward_params(), batch_size=engine.batch_size, progress=True, journal=str(out.path / JOURNAL))
    if not distributed.is_main():
        return  # each rank drew its share of the samples; rank 0 writes the results once

    atomic_write_text(out.path / RESULTS, "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n"
                                                  for r in results))
    # the paired delta to --compare on the shared questions
    if other is not None:
        metrics.update(compare_metrics(results, other["results"]))
    out.finish(metrics)
    print_metrics(metrics, str(out.path))
    if other is not None:
        print_comparison(metrics, results, other)
    info(f"eval: pass@1 {metrics['pass@1']:.3f} {format_interval(metrics)}, pass@{k} {metrics['pass@k']:.3f}, maj@{k} "
         f"{metrics['maj@k']:.3f}, format_rate {metrics['format_rate']:.3f} -> {out.path}")


def _compare_target(folder: str) -> dict:
    """The manifest (+ results) of another eval output; exit 2 when it is not one."""
    p = Path(folder)
    manifest = read_manifest(p) if p.is_dir() else None
    if manifest is None or manifest.get("stage") != "eval":
        found = f"a '{manifest.get('stage')}' output" if manifest else f"no {MANIFEST} from chainforge"
        raise UsageError(f"--compare {folder} is not an eval output ({found}); point it at a folder "
                         f"written by `chainforge eval`")
    if manifest.get("status") != "complete" or not (p / RESULTS).is_file():
        raise UsageError(f"--compare {folder} is an unfinished eval output; finish it (rerun its command) "
                         f"or compare with a complete one")
    results = []
    for line in (p / RESULTS).read_text(encoding="utf-8").splitlines():
        if line.strip():
            results.append(json.loads(line))
    return {"path": str(p), "metrics": manifest.get("metrics") or {}, "results": results}


def print_metrics(metrics: dict, title: str) -> None:
    from rich.table import Table

    table = Table(title=f"eval: {title}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name in METRIC_ORDER:
        table.add_row(name, fmt_value(metrics.get(name)))
    console.print(table)


def comparison_rows(mine: dict, theirs: dict) -> list[tuple[str, Optional[float], Optional[float], Optional[float]]]:
    """(metric, this run, other run, this − other) for every eval metric."""
    rows = []
    for name in METRIC_ORDER:
        a, b = mine.get(name), theirs.get(name)
        delta = a - b if isinstance(a, (int, float)) and isinstance(b, (int, float)) else None
        rows.append((name, a, b, delta))
    return rows


def print_comparison(metrics: dict, results: list[dict], other: dict) -> None:
    from rich.table import Table

    table = Table(title=f"this run vs {other['path']}")
    for col, justify in (("metric", "left"), ("this", "right"), ("other", "right"), ("delta", "right")):
        table.add_column(col, justify=justify)
    for name, a, b, delta in comparison_rows(metrics, other["metrics"]):
        table.add_row(name, fmt_value(a), fmt_value(b), "-" if delta is None else f"{delta:+.3f}")
    console.print(table)
    theirs = {r.get("id"): r for r in other["results"]}
    shared = [r for r in results if r["id"] in theirs]
    if shared:
        gained = sum(r["pass_at_1"] > 0 and theirs[r["id"]].get("pass_at_1", 0) == 0 for r in shared)
        lost = sum(r["pass_at_1"] == 0 and theirs[r["id"]].get("pass_at_1", 0) > 0 for r in shared)
        info(f"on {len(shared)} shared questions: solved here only {gained}, solved there only {lost}")
