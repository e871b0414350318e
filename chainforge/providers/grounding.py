"""The one grounding path for uncertain steps: collect, reject and distill all come through here.

- `Grounder.setup(config)` resolves the expander (keys and models checked before --output exists),
  the uncertainty rule and the price of a grounding (half of it with --expander-batch).
- `ground_steps` grounds one trace's chosen steps with a live expander (collect calls it per row as
  the teacher's replies arrive).
- `ground_traces` grounds many traces at once, journaled in `expansions.jsonl` (one line per trace,
  written once all its chosen steps are answered): a crash and the same command never ask for a
  journaled trace again. Requests go one trace at a time through the live expander, or, with
  --expander-batch, as Anthropic Message Batches (`chainforge.providers.batches`).
- `trace_parts` / `rewrite` turn a kept completion into steps and back into Super CoT text with the
  groundings in its uncertain steps (reject's kept candidates, distill's kept teacher traces).
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

from chainforge.providers.expander import USAGE_FIELDS, Grounded, zero_usage
from chainforge.steps import UncertaintyRule, choose_expansions, split_steps

JOURNAL = "expansions.jsonl"
BATCH_DISCOUNT = 0.5  # Message Batches cost half the Messages API's price


@dataclass
class Target:
    """One trace to ground: `key` is stable across runs (it names the trace in the journal)."""

    key: str
    question: str
    steps: list[str]
    chosen: list[int]  # indices of the steps to ground


@dataclass
class Stats:
    """What the manifests report about the groundings of a run (journaled ones included)."""

    traces: int = 0
    uncertain_steps: int = 0
    expanded_steps: int = 0
    failures: int = 0
    usage: dict = field(default_factory=zero_usage)
    cost_usd: float = 0.0
    requests: int = 0  # sent by this process
    batches: int = 0  # submitted, over every run of this output

    def add(self, g: Grounded) -> None:
        self.expanded_steps += g.expanded
        self.failures += g.failures
        self.cost_usd += g.cost_usd
        for k in USAGE_FIELDS:
            self.usage[k] += int(g.usage.get(k, 0))

    def metrics(self) -> dict:
        return {"expansion_traces": self.traces, "uncertain_steps": self.uncertain_steps,
                "expanded_steps": self.expanded_steps, "expansion_failures": self.failures,
                "expansion_input_tokens": self.usage["prompt"], "expansion_output_tokens": self.usage["completion"],
                "expansion_cost_usd": round(self.cost_usd, 6), "expansion_requests": self.requests,
                "expansion_batches": self.batches}


def trace_key(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()[:24]


async def ground_steps(expander, question: str, steps: Sequence[str], chosen: Sequence[int],
                       price) -> Grounded:
    """Ground the chosen steps of one trace with a live expander; failures stay unexpanded."""
    results = await expander.expand_many(question, [steps[i] for i in chosen])
    out = Grounded([None] * len(steps))
    for i, exp in zip(chosen, results):
        out.expansions[i] = exp.text
        out.failures += bool(exp.failed)
        for k in USAGE_FIELDS:
            out.usage[k] += int(exp.usage.get(k, 0))
    out.cost_usd = price.cost(out.usage) if price else 0.0
    return out


# ---- completions ↔ steps ---------------------------------------------------------------------------

def trace_parts(text: str) -> Optional[tuple[list[str], list[Optional[str]], str]]:
    """(steps, the model's own explanations, summary) of a completion, or None when it has no step.

    Super CoT is read as such; any other completion is split like a teacher's reply (a leading
    <think> block or the whole text is the reasoning, its last \\boxed{} or last line the answer).
    """
    from chainforge.providers.teachers import split_think
    from chainforge.formats import parse_super_cot

    try:
        parsed = parse_super_cot(text)
        return parsed.steps, parsed.expansions, parsed.summary
    except ValueError:
        pass
    reasoning, answer = split_think(text)
    steps = split_steps(reasoning)
    if not steps or not answer.strip():
        return None
    return steps, [None] * len(steps), answer


def rewrite(steps: Sequence[str], own: Sequence[Optional[str]], flagged: Sequence[bool],
            grounded: Optional[Grounded], summary: str) -> str:
    """Super CoT with `<explanation>` only in uncertain steps: the grounding where there is one, else
    the model's own explanation of that step; a certain step carries none."""
    from chainforge.formats import write_super_cot

    new = grounded.expansions if grounded else [None] * len(steps)
    expansions = [(new[i] or own[i]) if flagged[i] else None for i in range(len(steps))]
    return write_super_cot(steps, expansions, summary)


# ---- the expander of a run -------------------------------------------------------------------------

@dataclass
class Grounder:
    """The resolved expander options of a stage (nothing built, nothing sent yet)."""

    config: object
    source: object  # providers.resolve.Source
    rule: UncertaintyRule
    price: object  # providers.pricing.Price (batch-discounted) or None
    stage: str

    @classmethod
    def setup(cls, config, stage: str, teacher=None) -> "Grounder":
        """Checks every expander option (exit 2 before --output exists)."""
        from chainforge.providers.pricing import price_for, price_table
        from chainforge.providers.resolve import Source, resolve_expander

        source = resolve_expander(config, teacher or Source("none"))
        if config.expander_batch and source.kind != "anthropic":
            from chainforge.errors import UsageError

            raise UsageError("--expander-batch sends Anthropic Message Batches, but no Anthropic expander is in use "
                             "(ANTHROPIC_API_KEY is not set and --expander was not given); export "
                             "ANTHROPIC_API_KEY and pass --expander anthropic, or drop --expander-batch")
        prices = price_table(config.price)
        rule = UncertaintyRule.build(config.uncertain_marker or (), config.marker_domain or (),
                                     config.long_step_words)
        price = price_for(prices, source.model) if source.kind in ("anthropic", "openai") else None
        if price is not None and config.expander_batch:
            price = discounted(price)
        return cls(config, source, rule, price, stage)

    def preflight(self, teacher=None) -> None:
        """The preflight (`providers.preflight`) of the expander and of `teacher` (a remote Source,
        collect's), unless --no-preflight: exit 1 for a refused key, 2 for an unknown model, before
        anything is created. The expander's Anthropic capabilities are kept for its requests."""
        from dataclasses import replace

        from chainforge.providers.preflight import Preflight, preflight, remote
        from chainforge.providers.resolve import DEEPSEEK_LEGACY

        if not getattr(self.config, "preflight", True):
            return
        checks = []
        if remote(teacher):
            checks.append(Preflight(self.stage, "teacher", teacher, "--teacher-model",
                                    DEEPSEEK_LEGACY if teacher.kind == "deepseek" else None))
        if remote(self.source):
            checks.append(Preflight(self.stage, "expander", self.source, "--expander-model"))
        infos = preflight(self.stage, checks)
        if remote(self.source) and self.source.kind == "anthropic" and infos and isinstance(infos[-1], dict):
            self.source = replace(self.source, capabilities=infos[-1].get("capabilities") or None)

    @property
    def active(self) -> bool:
        return self.source.kind != "none"

    def describe(self) -> str:
        return self.source.describe() + (" via Message Batches (half price)" if self.config.expander_batch else "")

    def target(self, key: str, question: str, steps: Sequence[str]) -> tuple[list[bool], Target]:
        flagged, chosen = choose_expansions(steps, self.rule, self.config.max_expansions)
        return flagged, Target(key, question, list(steps), chosen)

    def ground(self, targets: Sequence[Target], folder: Path, stats: Stats,
               on_done: Optional[Callable[[Target, Grounded], None]] = None) -> dict[str, Grounded]:
        """Ground every target (journaled in folder/expansions.jsonl) → key → Grounded."""
        return ground_traces(self, targets, Path(folder), stats, on_done)


def discounted(price):
    return price.scaled(BATCH_DISCOUNT)


class _ClientOptions:
    """What the expander's client needs from a stage that has no teacher options of its own."""

    def __init__(self, config):
        self.max_retries = getattr(config, "max_retries", 6)
        self.concurrency = getattr(config, "concurrency", 8)
        self.seed = getattr(config, "seed", 0)
        self.max_new_tokens = getattr(config, "max_new_tokens", None)
        self.max_expansions = config.max_expansions


def ground_traces(grounder: Grounder, targets: Sequence[Target], folder: Path, stats: Stats,
                  on_done: Optional[Callable[[Target, Grounded], None]] = None) -> dict[str, Grounded]:
    from chainforge.providers.chat import Counters
    from chainforge.providers.limits import CostBudget
    from chainforge.log import info
    from chainforge.errors import RunFailed
    from chainforge.journal import Journal

    journal = Journal(folder / JOURNAL, key="key")
    wanted = {t.key: t for t in targets}
    done: dict[str, Grounded] = {}
    for _, (key, g) in journal.recover(lambda r: (r["key"], Grounded(list(r["expansions"]), dict(r["usage"]),
                                                                       int(r["failures"]), float(r["cost_usd"])))):
        if key in wanted and len(g.expansions) == len(wanted[key].steps):
            done[key] = g
    stats.traces = len(targets)
    stats.uncertain_steps = sum(len(t.chosen) for t in targets)
    for key, g in done.items():
        stats.add(g)
        if on_done:
            on_done(wanted[key], g)
    todo = [t for t in targets if t.key not in done]
    nothing = [t for t in todo if not t.chosen or not grounder.active]
    for t in nothing:  # nothing to ask: journaled so the count of traces stays honest on resume
        g = Grounded([None] * len(t.steps))
        journal.append(_record(t.key, g))
        done[t.key] = g
        if on_done:
            on_done(t, g)
    todo = [t for t in todo if t.chosen and grounder.active]
    if not todo:
        journal.close()
        return done
    info(f"{grounder.stage}: grounding {sum(len(t.chosen) for t in todo)} uncertain steps of {len(todo)} traces "
        f"with {grounder.describe()} ({len(done)} traces journaled)")

    def finish(t: Target, g: Grounded) -> None:
        journal.append(_record(t.key, g))
        done[t.key] = g
        stats.add(g)
        if on_done:
            on_done(t, g)

    try:
        if grounder.config.expander_batch:
            from chainforge.providers.batches import run_batches

            run_batches(grounder, todo, folder, stats, finish)
        else:
            counters = Counters()
            budget = CostBudget(grounder.config.max_cost, spent=stats.cost_usd,
                                rows=sum(1 for g in done.values() if g.expanded or g.failures))
            stopped = asyncio.run(_live(grounder, todo, counters, budget, finish))
            stats.requests += counters.requests
            if stopped:
                raise RunFailed(f"--max-cost ${grounder.config.max_cost:g} reached (expansions spent "
                                f"${stats.cost_usd:.4f}); raise --max-cost and rerun the same command: grounded "
                                f"traces are journaled and not asked again")
    finally:
        journal.close()
    return done


async def _live(grounder: Grounder, todo: Sequence[Target], counters, budget, finish) -> bool:
    """Ground with a live expander, a few traces at a time; True when --max-cost stopped it."""
    from chainforge.providers.resolve import build_expander

    opts = _ClientOptions(grounder.config)
    expander = build_expander(grounder.source, opts, counters, None)
    slots = asyncio.Semaphore(max(1, opts.concurrency))
    bound = _bound(grounder)
    stopped = False

    async def one(t: Target) -> None:
        nonlocal stopped
        async with slots:
            estimate = budget.estimate(bound * len(t.chosen))
            if stopped or not budget.try_reserve(estimate):
                stopped = True
                return
            g = None
            try:
                g = await ground_steps(expander, t.question, t.steps, t.chosen, grounder.price)
                finish(t, g)
            finally:
                budget.settle(estimate, g.cost_usd if g else 0.0, g is not None)

    tasks = [asyncio.create_task(one(t)) for t in todo]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await expander.aclose()
    return stopped


def _bound(grounder: Grounder) -> float:
    """A pessimistic cost of one grounding before any has told us better."""
    from chainforge.providers.expander import EXPANDER_MAX_TOKENS, THINKING_ROOM

    return grounder.price.bound({"prompt": 1000, "completion": EXPANDER_MAX_TOKENS + THINKING_ROOM}) \
        if grounder.price else 0.0


def _record(key: str, g: Grounded) -> dict:
    return {"key": key, "expansions": g.expansions, "usage": g.usage, "failures": g.failures,
            "cost_usd": round(g.cost_usd, 8)}


def question_text(prompt) -> str:
    """The question a grounding request quotes: the prompt, or the last user turn of chat messages."""
    if isinstance(prompt, list):
        users = [m.get("content", "") for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
        return str(users[-1]) if users else ""
    return str(prompt)


def ground_rows(grounder: Grounder, rows: list[dict], folder: Path, stage: str) -> dict:
    """Ground the uncertain steps of kept training rows (`id`, `prompt`, `text`, `messages`) in place.

    Every row is rewritten as Super CoT (`rewrite`): the grounding goes into its chosen uncertain
    steps. A row whose completion has no step is left as it is. Returns the manifest's expansion
    metrics. The journal key is the row's id and text, so a resumed run with another filter reuses
    the groundings of the rows it keeps again.
    """
    stats = Stats()
    targets, parts = [], {}
    for n, row in enumerate(rows):
        split = trace_parts(row["text"])
        if split is None:
            continue
        steps, own, summary = split
        flagged, target = grounder.target(trace_key(stage, str(row["id"]), row["text"]), question_text(row["prompt"]),
                                          steps)
        targets.append(target)
        parts[target.key] = (n, steps, own, flagged, summary)

    def patch(target: Target, grounded: Grounded) -> None:
        n, steps, own, flagged, summary = parts[target.key]
        text = rewrite(steps, own, flagged, grounded, summary)
        row = rows[n]
        row["text"] = text
        row["messages"] = [dict(m) for m in row["messages"][:-1]] + [{"role": "assistant", "content": text}]

    grounder.ground(targets, folder, stats, on_done=patch)
    stats.uncertain_steps = sum(sum(p[3]) for p in parts.values())
    return stats.metrics()
