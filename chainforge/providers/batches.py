"""Expansions as Anthropic Message Batches (`--expander-batch`): half the price, results within 24 h.

Flow, through the anthropic SDK's batches API (`client.messages.batches.create / retrieve /
results`; it reads ANTHROPIC_BASE_URL like the live expander):
1. every chosen step not yet grounded becomes one request, `custom_id` = `<trace key>-<step>`;
   requests already in a submitted batch are never sent again;
2. the rest are split at the API's per-batch limits (100,000 requests or 256 MB of request body,
   whichever comes first) and submitted; each batch id is journaled in `expander-batches.jsonl`
   (fsynced) as soon as the API returns it, so a crash or Ctrl-C while polling resumes by polling
   the same batches — nothing is submitted or paid twice;
3. each batch is polled every --poll-interval seconds until it ends; its results (JSONL at
   `results_url`) are read by custom_id. `succeeded` is validated like a live grounding;
   `errored`, `expired` and `canceled` requests (and any missing from the results) leave their
   step unexpanded, exactly like a failed live request;
4. a trace is journaled (expansions.jsonl) once all its steps are answered.

The one window left: the process dying between the API accepting a batch and its id reaching the
journal (one HTTP reply). That batch is then submitted again on the rerun.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, Iterator, Sequence

from chainforge.providers.chat import RunStopped
from chainforge.log import info
from chainforge.errors import RunFailed

BATCHES = "expander-batches.jsonl"
MAX_REQUESTS = 100_000  # per batch, the API's limit
MAX_BYTES = 256 * 1024 * 1024  # per batch, the API's limit on the request body
BODY_MARGIN = 1024 * 1024  # room for the envelope around the requests


def custom_id(key: str, step: int) -> str:
    return f"{key}-{step}"  # the API allows [a-zA-Z0-9_-]{1,64}; keys are 24 hex digits


def split_batches(requests: Sequence[dict], max_requests: int = MAX_REQUESTS,
                  max_bytes: int = MAX_BYTES - BODY_MARGIN) -> Iterator[list[dict]]:
    """Consecutive chunks, each within both per-batch limits (a JSON body of the chunk's requests)."""
    chunk: list[dict] = []
    size = 0
    for req in requests:
        n = len(json.dumps(req, ensure_ascii=False).encode("utf-8")) + 1
        if chunk and (len(chunk) >= max_requests or size + n > max_bytes):
            yield chunk
            chunk, size = [], 0
        chunk.append(req)
        size += n
    if chunk:
        yield chunk


def _stop(exc, what: str) -> Exception:
    code = getattr(exc, "status_code", None)
    if code in (401, 402):
        return RunStopped(f"the Anthropic API refused the batch {what} (HTTP {code}); check ANTHROPIC_API_KEY "
                          f"and the account balance, then rerun the same command: submitted batches are "
                          f"journaled and polled again, never resubmitted")
    return RunFailed(f"the Anthropic batches API failed to {what} ({type(exc).__name__}: {exc}); rerun the same "
                     f"command: submitted batches are journaled and polled again, never resubmitted")


def run_batches(grounder, todo, folder: Path, stats, finish: Callable) -> None:
    import anthropic

    from chainforge.providers.expander import (Expansion, Grounded, anthropic_request, expansion_from_message,
                                               thinking_fields, zero_usage)
    from chainforge.journal import Journal

    config = grounder.config
    client = anthropic.Anthropic(api_key=grounder.source.key, max_retries=getattr(config, "max_retries", 6))
    wanted = {custom_id(t.key, i): (t, i) for t in todo for i in t.chosen}
    journal = Journal(folder / BATCHES, key="batch")
    submitted = [(r["batch"], list(r["ids"])) for _, r in journal.recover(lambda r: r)]
    stats.batches = len(submitted)
    covered = {cid for _, ids in submitted for cid in ids}
    pending = {bid: ids for bid, ids in submitted if any(cid in wanted for cid in ids)}
    model = grounder.source.model
    fields = thinking_fields(model, grounder.source.capabilities)  # as the live expander sends them
    fresh = [{"custom_id": cid, "params": anthropic_request(model, fields, t.question, t.steps[i])}
             for cid, (t, i) in wanted.items() if cid not in covered]
    if fresh and config.max_cost is not None and stats.cost_usd >= config.max_cost:
        raise RunFailed(f"--max-cost ${config.max_cost:g} reached (expansions spent ${stats.cost_usd:.4f}); raise "
                        f"--max-cost and rerun the same command")
    try:
        for chunk in split_batches(fresh):
            try:
                batch = client.messages.batches.create(requests=chunk)
            except anthropic.APIError as exc:
                raise _stop(exc, "submission") from None
            stats.requests += 1
            ids = [r["custom_id"] for r in chunk]
            journal.append({"batch": batch.id, "ids": ids})
            journal.sync()  # the id is the only handle on what was paid for
            stats.batches += 1
            pending[batch.id] = ids
        if fresh:
            info(f"{grounder.stage}: submitted {len(fresh)} expansion requests")
    finally:
        journal.close()

    results: dict[str, Expansion] = {}
    remaining = {t.key: len(t.chosen) for t in todo}

    def settle(cid: str, exp: Expansion) -> None:
        if cid not in wanted or cid in results:
            return
        results[cid] = exp
        t, _ = wanted[cid]
        remaining[t.key] -= 1
        if remaining[t.key] == 0:
            g = Grounded([None] * len(t.steps))
            for i in t.chosen:
                e = results[custom_id(t.key, i)]
                g.expansions[i] = e.text
                g.failures += bool(e.failed)
                for k in g.usage:
                    g.usage[k] += int(e.usage.get(k, 0))
            g.cost_usd = grounder.price.cost(g.usage) if grounder.price else 0.0
            finish(t, g)

    ended = 0
    last_line = ""
    while pending:
        processing = 0
        for bid in list(pending):
            try:
                batch = client.messages.batches.retrieve(bid)
                stats.requests += 1
                if batch.processing_status != "ended":
                    processing += 1
                    continue
                for item in client.messages.batches.results(bid):
                    settle(item.custom_id, _expansion(item.result, Expansion, expansion_from_message, zero_usage))
                stats.requests += 1
            except anthropic.APIError as exc:
                raise _stop(exc, f"poll {bid}") from None
            for cid in pending.pop(bid):  # a request the results leave out counts as failed
                settle(cid, Expansion(None, zero_usage(), failed=True))
            ended += 1
        line = (f"{grounder.stage}: batches {stats.batches} submitted · {processing} processing · "
                f"{ended} ended this run")
        if line != last_line:
            info(line)
            last_line = line
        if pending:
            time.sleep(config.poll_interval)


def _expansion(result, Expansion, from_message, zero_usage):
    if getattr(result, "type", None) != "succeeded":  # errored, expired, canceled
        return Expansion(None, zero_usage(), failed=True)
    return from_message(result.message)
