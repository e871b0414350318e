"""Stage 0: collect hybrid chain-of-thought (Super CoT) data.

    chainforge collect --prompts data/toy/train.jsonl --output runs/collect             # DeepSeek + Claude
    chainforge collect --prompts P --output O --teacher local --teacher-model smollm2   # no key, no network

Reads top to bottom: options → teacher/expander (keys, URLs, models) → --output plan → prompts →
preflight (each API's model list: key and model checked before anything is paid) → create the
output → recover the journal → collect what is left → dataset from the journal → manifest. Every finished prompt is in `journal.jsonl` before it counts; the same command on the
same --output sends nothing for journaled prompts and finishes the rest.
"""

from __future__ import annotations

import asyncio
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Iterator, Literal, Optional

from chainforge import distributed
from chainforge.collect.journal import FAILED, JOURNAL, AppendLog, compact_failed
from chainforge.collect.progress import Tally, print_summary
from chainforge.config import (AnswerOptions, DataOptions, ExpanderOptions, GenerationOptions, OutputOptions,
                               StageSpec, default, option)
from chainforge.errors import RunFailed, UsageError
from chainforge.inputs import answer_column, load_rows, require_columns
from chainforge.log import info
from chainforge.outputs import plan_output
from chainforge.providers.chat import Counters, RunStopped
from chainforge.providers.grounding import Grounder, Stats, Target, trace_key
from chainforge.providers.pricing import price_for, price_table
from chainforge.providers.resolve import HttpOptions, build_expander, build_teacher, resolve_teacher
from chainforge.providers.teachers import PromptItem
from chainforge.sampling import row_id

@dataclass(kw_only=True)
class CollectConfig(AnswerOptions, OutputOptions, ExpanderOptions):
    REQUIRED = ("prompts",)

    prompts: Optional[str] = option(
        None, "Prompt dataset: a save_to_disk folder or .jsonl/.json/.csv/.parquet with a prompt column (an `id` "
              "column is used as the row id, else a hash of the prompt).")
    # the data options of every stage, for --prompts (collect has no --data)
    prompt_column: str = default(DataOptions, "prompt_column", "prompt")
    limit: Optional[int] = default(DataOptions, "limit", None)
    split: Optional[str] = default(DataOptions, "split", None)
    subset: Optional[str] = default(DataOptions, "subset", None)
    # teacher: who reasons
    teacher: Literal["deepseek", "openai", "local"] = option(
        "deepseek", "deepseek (DEEPSEEK_API_KEY), openai (any OpenAI-compatible server: vLLM, SGLang, Ollama) or "
                    "local (an in-process model, no key). Local and <think>-style servers: a leading "
                    "<think>...</think> is the reasoning, the rest the answer; with no <think> block the whole "
                    "completion is the reasoning and its last \\boxed{} (else last line) the answer.")
    teacher_model: Optional[str] = option(
        None, "deepseek-flash (deepseek; or deepseek-v4-pro), the served model name (openai), or a checkpoint "
              "folder / hub id / .gguf / `smollm2` (local; the default).")
    thinking: Optional[bool] = option(
        None, "Ask the teacher for its chain of thought, sent as `thinking: {type: enabled|disabled}` (deepseek: "
              "on unless --no-thinking; openai: sent only when given).", flags=("--thinking/--no-thinking",))
    reasoning_effort: Optional[Literal["high", "max"]] = option(
        None, "How long the teacher thinks, sent as `reasoning_effort` (DeepSeek's default: high).")
    teacher_base_url: Optional[str] = option(
        None, "API base URL (default DEEPSEEK_BASE_URL or https://api.deepseek.com; OPENAI_BASE_URL for openai).")
    system_prompt: Optional[str] = option(None, "A system turn sent before each prompt (default: none).")
    max_new_tokens: Optional[int] = default(GenerationOptions, "max_new_tokens", None)
    temperature: Optional[float] = default(GenerationOptions, "temperature", None)
    keep_incorrect: bool = option(
        True, "Keep rows whose answer does not match the reference (flagged correct=false).",
        flags=("--keep-incorrect/--drop-incorrect",))
    # throughput, retries, cost
    concurrency: int = option(32, "Requests in flight.", min=1)
    requests_per_minute: Optional[int] = option(None, "Pace requests to at most this many per minute.", min=1)
    tokens_per_minute: Optional[int] = option(
        None, "Pace requests to at most this many (estimated) tokens per minute.", min=1)
    max_retries: int = option(6, "Retries per request (backoff capped at 30 s; Retry-After honoured up to 60 s).",
                              min=0)
    fail_fast: int = option(
        8, "Stop the run (exit 1, nothing lost, resumable) when its first N replies are all the same 4xx error "
           "(an unknown model, a refused parameter); 0: never.", min=0)
    retry_failed: bool = option(
        False, "On an existing output: try again the prompts listed in failed.jsonl.", flags=("--retry-failed",))
    # how the HTTP client treats slow, huge or non-streaming replies (chainforge.providers.http)
    # (unset: the client's defaults, 60 s, 1800 s and 32 MiB)
    idle_timeout: Optional[float] = option(
        None, "Seconds of silence mid-reply before a request is dropped and retried, reported as a timeout "
              "(default 60).", above=0.0)
    request_timeout: Optional[float] = option(
        None, "Seconds a whole request may take, however slowly it arrives (default 1800).", above=0.0)
    max_response_mb: Optional[float] = option(
        None, "Largest reply accepted after gzip is decoded, in MiB; a larger one fails that request "
              "(default 32).", above=0.0)
    stream: bool = option(True, "Stream teacher replies; --no-stream for a server that rejects stream_options.")

    def check(self) -> None:
        given = [flag for flag, value in (("--thinking/--no-thinking", self.thinking is not None),
                                          ("--reasoning-effort", self.reasoning_effort is not None)) if value]
        if self.teacher == "local" and given:
            raise UsageError(f"{' and '.join(given)}: sent to an API teacher; --teacher local has no such "
                             f"setting: drop it")
        if self.thinking is False and self.reasoning_effort is not None:
            raise UsageError("--reasoning-effort sets how long the teacher thinks, and --no-thinking turns thinking "
                             "off: drop one of them")
        super().check()


CONFIG = CollectConfig
# Options that may change when a run is resumed: they change how fast or how far it goes, not
# what a row is.
SPEC = StageSpec("collect", produces="dataset", inputs={"prompts": "prompts"},
                 resumable=("concurrency", "max_retries", "max_cost", "poll_interval", "requests_per_minute",
                            "tokens_per_minute", "retry_failed", "idle_timeout", "request_timeout",
                            "max_response_mb", "stream", "fail_fast", "preflight"))
RESUMABLE_CHANGES = SPEC.resumable


def run(config: CollectConfig) -> None:
    # Paid API calls and the dataset: once, on global rank 0; other ranks of a launcher wait for it.
    distributed.on_main(lambda: _collect(config), "collect")


def _collect(config: CollectConfig) -> None:
    # ---- options ---------------------------------------------------------------------------------
    teacher_src = resolve_teacher(config)
    expander_given = config.expander
    grounder = Grounder.setup(config, "collect", teacher_src)
    expander_src = grounder.source
    # the manifest records the models actually used (a default resolved here)
    config = replace(config, teacher_model=teacher_src.model, expander=expander_src.kind,
                   expander_model=expander_src.model)
    prices = price_table(config.price)
    rule = grounder.rule
    defer = bool(config.expander_batch) and expander_src.kind == "anthropic"
    # what an expansion costs: the batch price (half) when they go as Message Batches
    exp_price = grounder.price if defer else price_for(prices, expander_src.model)

    # ---- output plan and prompts (nothing is created before both are valid) ------------------------
    plan = plan_output(config.output, "collect", config, overwrite=config.overwrite, ignore=RESUMABLE_CHANGES,
                       allow_complete=bool(config.retry_failed))
    if config.retry_failed and not plan.resuming:
        raise UsageError(f"--retry-failed needs an existing collect output at --output {config.output}; "
                         f"run without it first")
    ds = load_rows(config.prompts, config.limit, what="--prompts", split=config.split, subset=config.subset)
    require_columns(ds, [config.prompt_column], what="--prompts")
    ref_col = answer_column(ds, config.answer_column, required=False, what="--prompts")
    ids = _prompt_ids(ds, config.prompt_column)
    # one look-up per API (no tokens): a refused key (exit 1) or an unknown model (exit 2) stops here
    grounder.preflight(teacher_src)
    expander_src = grounder.source  # with the capabilities the preflight read

    # ---- output, journal ---------------------------------------------------------------------------
    out = plan.create(inputs=[config.prompts])
    journal, failed = AppendLog(out.path / JOURNAL), AppendLog(out.path / FAILED)
    if config.retry_failed:
        (out.path / FAILED).unlink(missing_ok=True)  # those prompts are pending again
    done = {rid: cost for _, (rid, cost) in journal.recover(lambda r: (r["id"], r["usage"]["cost_usd"]))}
    failed_ids = {rid for _, rid in failed.recover(lambda r: r["id"])}
    skip = set(done) | failed_ids
    pending = sum(1 for i in ids.unique if i not in skip)
    tally = Tally(total=pending)
    counters = Counters()
    exp_counters = Counters()
    previous = plan.previous.get("metrics", {}) if plan.resuming and plan.previous else {}

    why = "" if expander_given else (" (the default: ANTHROPIC_API_KEY is set)" if expander_src.kind != "none"
                                     else " (the default: ANTHROPIC_API_KEY is not set; nothing is grounded)")
    info(f"collect: teacher {teacher_src.describe()}, expander {grounder.describe()}{why}")
    info(f"collect: {len(ids.unique)} prompts, {len(done)} done, {len(failed_ids)} failed, {pending} to go"
         + (f" ({ids.duplicates} duplicate prompts skipped)" if ids.duplicates else ""))
    for src in (teacher_src, expander_src):
        if src.kind in ("deepseek", "openai", "anthropic") and price_for(prices, src.model) is None:
            info(f"collect: no price for {src.model}; its cost counts as 0 (add --price {src.model}=IN,HIT,OUT)")

    # ---- collect -----------------------------------------------------------------------------------
    from chainforge.collect.engine import Collector
    from chainforge.providers.limits import CostBudget, RateLimiter

    budget = CostBudget(config.max_cost, spent=sum(done.values()), rows=len(done))
    limiter = RateLimiter(config.requests_per_minute, config.tokens_per_minute)

    expander_obj = None  # built inside the event loop; metrics_now may run before that
    exp_stats = Stats()

    def metrics_now() -> dict:
        return _metrics(journal, failed, ids, config.keep_incorrect, previous, counters, exp_counters,
                        expander_obj, exp_price=exp_price, exp_stats=exp_stats if defer else None)[0]

    async def collect() -> str:
        nonlocal expander_obj
        cap = None if config.max_response_mb is None else int(config.max_response_mb * 2 ** 20)
        http = HttpOptions(config.idle_timeout, config.request_timeout, cap, config.stream)
        teacher = build_teacher(teacher_src, config, counters, limiter if limiter.active else None, http=http)
        # --expander-batch: nothing is grounded while the teacher works (see _ground_deferred)
        expander_obj = build_expander(expander_src if not defer else replace(expander_src, kind="none"), config,
                                      exp_counters, teacher, http=http)
        concurrency = 1 if teacher_src.kind == "local" else config.concurrency
        collector = Collector(teacher, expander_obj, rule, config.max_expansions, journal, failed, budget, tally,
                              concurrency, price_for(prices, teacher_src.model),
                              exp_price, defer=defer, fail_fast=config.fail_fast)
        try:
            return await collector.run(_pending_items(ds, config.prompt_column, ref_col, ids, skip))
        finally:
            await teacher.aclose()
            await expander_obj.aclose()

    try:
        with _long_lived_objects_frozen():
            outcome = asyncio.run(collect())
        if defer and outcome == "done":
            _ground_deferred(out.path, journal, grounder, exp_stats, tally)
    except (KeyboardInterrupt, RunStopped, Exception):
        journal.close()
        failed.close()
        out.mark_incomplete(metrics_now())
        raise
    journal.close()
    failed.close()

    # ---- dataset from the journal, manifest --------------------------------------------------------
    metrics, keep = _metrics(journal, failed, ids, config.keep_incorrect, previous, counters, exp_counters,
                             expander_obj, compact=True, exp_price=exp_price, exp_stats=exp_stats if defer else None)
    if outcome == "budget":
        out.mark_incomplete(metrics)
        raise RunFailed(f"--max-cost ${config.max_cost:g} reached (spent ${metrics['cost_usd']:.4f}); "
                        f"raise --max-cost and rerun the same command to continue")
    if not keep:
        out.mark_incomplete(metrics)
        why = "every kept row was incorrect (--drop-incorrect)" if metrics["failed"] < metrics["prompts"] \
            else f"all {metrics['prompts']} prompts failed (see {out.path / FAILED})"
        raise RunFailed(f"no rows to write: {why}; fix the cause, then rerun with --retry-failed")
    from chainforge.collect.rows import build_dataset

    cache = out.path / ".dataset-cache"
    shutil.rmtree(cache, ignore_errors=True)
    try:
        out.save_dataset(build_dataset(out.path / JOURNAL, keep, cache))
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    out.finish(metrics)
    print_summary(metrics, tally.expansion_failures)
    info(f"collect: wrote {metrics['rows']} rows to {out.path}")


@contextmanager
def _long_lived_objects_frozen():
    """While the requests run, the garbage collector leaves alone the objects that exist when they
    start (imported modules, the prompt dataset) and collects young objects every 20,000
    allocations instead of 700. Measured in a run of 5000 streamed requests at 128 in flight: a full
    collection walked those objects and stopped every request for ~0.11 s, three times (339 ms in
    all), and the young ones cost 309 + 28 small collections (236 ms); afterwards, 1 collection of
    10 ms. Objects made during the requests are still collected (reference counting frees most at
    once); the frozen ones and the thresholds go back as they were afterwards."""
    import gc

    gc.collect()
    gc.freeze()
    thresholds = gc.get_threshold()
    gc.set_threshold(max(thresholds[0], 20_000), *thresholds[1:])
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()


@dataclass
class PromptIds:
    per_row: list[str]  # the id of every input row
    unique: dict[str, int]  # id → first row index
    duplicates: int


def _question(value, row: int) -> tuple[str, Optional[str]]:
    """(question, system turn) of a prompt cell: a string, or chat messages (the last user turn)."""
    if isinstance(value, str) and value.strip():
        return value, None
    if isinstance(value, list) and value and all(isinstance(m, dict) for m in value):
        users = [m.get("content") for m in value if m.get("role") == "user"]
        system = next((m.get("content") for m in value if m.get("role") == "system"), None)
        if users and isinstance(users[-1], str) and users[-1].strip():
            return users[-1], system
    raise UsageError(f"--prompts row {row}: the prompt must be a non-empty string or chat messages with a "
                     f"user turn, got {str(value)[:60]!r}; fix or remove that row")


def _prompt_ids(ds, column: str) -> PromptIds:
    """An `id` column's values, else a hash of the prompt text; checks every prompt first."""
    has_id = "id" in ds.column_names
    per_row, unique = [], {}
    for n, row in enumerate(ds.select_columns([column] + (["id"] if has_id else [])).iter(batch_size=1000)):
        for k, value in enumerate(row[column]):
            question, _ = _question(value, n * 1000 + k)
            given = row["id"][k] if has_id else None
            rid = row_id(given, question)
            per_row.append(rid)
            unique.setdefault(rid, len(per_row) - 1)
    return PromptIds(per_row, unique, len(per_row) - len(unique))


def _pending_items(ds, column: str, ref_col: Optional[str], ids: PromptIds, skip: set,
                   batch: int = 256) -> Iterator[PromptItem]:
    """The prompts still to do, in input order (streamed from the dataset `batch` rows at a time:
    the generator runs on the event loop between replies, and a row at a time costs ~10x more)."""
    columns = [column] + ([ref_col] if ref_col and ref_col != column else [])
    index = 0
    for rows in ds.select_columns(columns).iter(batch_size=batch):
        refs = rows[ref_col] if ref_col else [None] * len(rows[column])
        for value, ref in zip(rows[column], refs):
            rid = ids.per_row[index]
            if rid not in skip and ids.unique[rid] == index:
                question, system = _question(value, index)
                yield PromptItem(index, rid, question, None if ref is None else str(ref), system)
            index += 1


def _metrics(journal: AppendLog, failed: AppendLog, ids: PromptIds, keep_incorrect: bool, previous: dict,
             counters: Counters, exp_counters: Counters, expander, compact: bool = False, exp_price=None,
             exp_stats: Optional[Stats] = None):
    """The contract's metrics and the (index, offset) pairs of the rows to write."""
    def project(r: dict):
        return (r["_index"], r["id"], r["correct"], sum(r["uncertain"]),
                sum(e is not None for e in r["expansions"]), r["usage"]["cost_usd"], r["usage"]["expander"])

    # The last record of an id wins: with --expander-batch a row is journaled again once grounded.
    latest = {}
    for offset, rec in journal.recover(project):
        if rec[1] in ids.unique:
            latest[rec[1]] = (offset, rec)
    seen, keep = set(latest), []
    rows = uncertain = expanded = correct = judged = 0
    cost = 0.0
    exp_usage = dict.fromkeys(("prompt", "completion", "reasoning", "cache_hit"), 0)
    for offset, (index, rid, ok, unc, exp, c, eu) in sorted(latest.values(), key=lambda v: v[0]):
        cost += c
        for k in exp_usage:
            exp_usage[k] += int(eu.get(k, 0))
        if ok is False and not keep_incorrect:
            continue
        keep.append((index, offset))
        rows += 1
        uncertain += unc
        expanded += exp
        if ok is not None:
            judged += 1
            correct += bool(ok)
    n_failed = compact_failed(failed.path, seen) if compact else \
        len({rid for _, rid in failed.recover(lambda r: r["id"]) if rid not in seen})
    exp_retries = getattr(expander, "retries", exp_counters.retries) if expander is not None else 0
    metrics = {
        "prompts": len(ids.unique), "rows": rows, "failed": n_failed,
        "expanded_steps": expanded, "uncertain_steps": uncertain,
        "correct_rate": round(correct / judged, 6) if judged else None,
        "cost_usd": round(cost, 6),
        "requests": int(previous.get("requests", 0)) + counters.requests + exp_counters.requests,
        "retries": int(previous.get("retries", 0)) + counters.retries + exp_retries,
        "expansion_input_tokens": exp_usage["prompt"], "expansion_output_tokens": exp_usage["completion"],
        "expansion_cost_usd": round(exp_price.cost(exp_usage), 6) if exp_price else 0.0,
    }
    if exp_stats is not None:
        metrics["expansion_batches"] = exp_stats.batches
        metrics["requests"] += exp_stats.requests
    return metrics, keep


def _ground_deferred(folder, journal: AppendLog, grounder: Grounder, stats: Stats, tally: Tally) -> None:
    """--expander-batch: ground the journaled rows' chosen steps as Message Batches, then journal
    each row again with its groundings (the last record of an id wins)."""
    import json

    from chainforge.formats import write_super_cot

    latest: dict[str, tuple[int, bool]] = {}
    for offset, (rid, pending) in journal.recover(lambda r: (r["id"], bool(r.get("_chosen")))):
        latest[rid] = (offset, pending)
    targets, rows = [], {}
    with open(journal.path, "rb") as f:
        for rid, (offset, pending) in latest.items():
            if not pending:
                continue
            f.seek(offset)
            row = json.loads(f.readline())
            key = trace_key("collect", rid)
            rows[key] = row
            targets.append(Target(key, row["prompt"], row["steps"], row["_chosen"]))
    if not targets:
        return

    def patch(target: Target, grounded) -> None:
        row = rows.pop(target.key)
        del row["_chosen"]
        text = write_super_cot(row["steps"], grounded.expansions, row["teacher_answer"])
        row.update(expansions=grounded.expansions, text=text,
                   messages=[{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": text}])
        row["usage"]["expander"] = {k: int(grounded.usage.get(k, 0)) for k in row["usage"]["expander"]}
        row["usage"]["cost_usd"] = round(row["usage"]["cost_usd"] + grounded.cost_usd, 8)
        journal.append(row)
        tally.expanded += grounded.expanded
        tally.expansion_failures += grounded.failures

    grounder.ground(targets, folder, stats, on_done=patch)
    journal.close()
