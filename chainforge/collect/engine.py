"""The collect loop: prompts in, journaled rows out, at most `concurrency` requests in flight.

Memory stays bounded: prompts are pulled from an iterator only as slots free up, and each row goes
to the journal as soon as it is finished; nothing accumulates but counters.

How it stops:
- every prompt is a row or a failure → "done";
- --max-cost: no new request once spent + the in-flight estimate would pass it → "budget";
- a 401/402 (teacher or expander) → `RunStopped` at once, in-flight requests cancelled;
- the API looks down: `OUTAGE_STREAK` prompts in a row exhaust their retries with no success in
  between → `RunStopped`; those prompts stay pending (not failed), so a rerun tries them again.
  A prompt that exhausts its retries while others succeed fails for good (failed.jsonl);
- a systematic 4xx (--fail-fast N, `FirstReplies`): the run's first N replies are all the same
  4xx error (status and message: an unknown model, a refused parameter) → `RunStopped`, the error
  quoted once; those prompts stay pending too. A 4xx that is not systematic fails its prompt only.
"""

from __future__ import annotations

import asyncio
from typing import Iterable, Iterator, Optional

from chainforge.providers.chat import PromptFailed, RunStopped
from chainforge.collect.journal import AppendLog
from chainforge.providers.limits import CostBudget
from chainforge.providers.pricing import FREE, Price
from chainforge.collect.progress import Progress, Tally
from chainforge.collect.rows import build_row
from chainforge.steps import UncertaintyRule, choose_expansions, split_steps
from chainforge.providers.teachers import PromptItem, TeacherReply

OUTAGE_STREAK = 5


def chunks(items: Iterable[PromptItem], size: int) -> Iterator[list[PromptItem]]:
    batch: list[PromptItem] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


class FirstReplies:
    """The start of a run, while every reply so far is the same 4xx error: those prompts are held
    back (neither rows nor failures). `limit` of them make the error systematic; any other reply
    closes the watch and the held prompts fail as usual. A limit under 2 watches nothing: one
    prompt's 4xx says nothing about the others."""

    def __init__(self, limit: int):
        self.limit = limit
        self.open = limit >= 2
        self.held: list[tuple[PromptItem, PromptFailed]] = []

    def hold(self, item: PromptItem, failure: PromptFailed) -> bool:
        """Whether `failure` joins the held ones (the watch is open and it is the same 4xx)."""
        if not self.open or failure.exhausted or not 400 <= (failure.status_code or 0) < 500:
            return False
        if self.held and (failure.status_code, failure.reason) != (self.held[0][1].status_code,
                                                                   self.held[0][1].reason):
            return False
        self.held.append((item, failure))
        return True

    @property
    def systematic(self) -> bool:
        return self.open and len(self.held) >= self.limit

    def close(self) -> list[tuple[PromptItem, PromptFailed]]:
        held, self.held, self.open = self.held, [], False
        return held


class Collector:
    def __init__(self, teacher, expander, rule: UncertaintyRule, max_expansions: int, journal: AppendLog,
                 failed: AppendLog, budget: CostBudget, tally: Tally, concurrency: int,
                 teacher_price: Optional[Price], expander_price: Optional[Price], defer: bool = False,
                 fail_fast: int = 0):
        self.teacher, self.expander, self.rule, self.max_expansions = teacher, expander, rule, max_expansions
        self.journal, self.failed, self.budget, self.tally = journal, failed, budget, tally
        self.concurrency = concurrency
        self.defer = defer
        self.teacher_price, self.expander_price = teacher_price or FREE, expander_price or FREE
        self._fatal: Optional[BaseException] = None
        self._suspects: list[tuple[PromptItem, PromptFailed]] = []
        # the first N replies of this run (or all of them, in a run of fewer prompts)
        self._first = FirstReplies(min(fail_fast, tally.total))

    async def run(self, items: Iterable[PromptItem]) -> str:
        """'done' or 'budget'; raises RunStopped on a 401/402 or an outage."""
        slots = asyncio.Semaphore(self.concurrency)
        tasks: set[asyncio.Task] = set()
        stopped = "done"
        with Progress(self.tally) as progress:
            self.progress = progress
            try:
                for batch in chunks(items, self.teacher.batch_size):
                    await slots.acquire()
                    if self._fatal:
                        slots.release()
                        break
                    bound = sum(self._bound(i) for i in batch)
                    estimate = self.budget.estimate(bound / len(batch)) * len(batch)
                    if not self.budget.try_reserve(estimate):
                        slots.release()
                        stopped = "budget"
                        break
                    task = asyncio.create_task(self._process(batch, estimate))
                    tasks.add(task)
                    task.add_done_callback(lambda t: (tasks.discard(t), slots.release()))
                while tasks and not self._fatal:
                    await asyncio.wait(set(tasks), return_when=asyncio.FIRST_COMPLETED)
            finally:
                for t in tasks:
                    t.cancel()
                if tasks:
                    await asyncio.gather(*tasks, return_exceptions=True)
        if self._fatal:
            raise self._fatal
        self._flush_suspects()
        self._close_watch()
        return stopped

    def _bound(self, item: PromptItem) -> float:
        """A pessimistic cost for one prompt before any row has told us better."""
        tokens = self.teacher.token_estimate(item)
        return self.teacher_price.bound({"prompt": len(item.prompt) // 4,
                                         "completion": max(tokens - len(item.prompt) // 4, 0)})

    async def _process(self, batch: list[PromptItem], estimate: float) -> None:
        spent, rows = 0.0, 0
        try:
            results = await self.teacher.answer(batch)
            for item, result in zip(batch, results):
                if isinstance(result, PromptFailed):
                    spent += self._fail(item, result)
                    continue
                row = await self._row(item, result)
                self.journal.append({**row, "_index": item.index})
                spent += row["usage"]["cost_usd"]
                rows += 1
                self.tally.done += 1
                self.tally.cost += row["usage"]["cost_usd"]
                self._close_watch()
                self._flush_suspects()
                self.progress.update()
        except RunStopped as exc:
            self._fatal = self._fatal or exc
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # a bug or a crash in a worker: stop the run, keep the journal
            self._fatal = self._fatal or exc
        finally:
            self.budget.settle(estimate, spent, rows)

    async def _row(self, item: PromptItem, reply: TeacherReply) -> dict:
        from chainforge.providers.grounding import ground_steps

        steps = split_steps(reply.reasoning) or [reply.answer]
        flagged, chosen = choose_expansions(steps, self.rule, self.max_expansions)
        if self.defer:  # --expander-batch: grounded after the teacher's work, as batches
            row = build_row(item, reply, steps, flagged, [None] * len(steps), {},
                            self.teacher_price.cost(reply.usage))
            return {**row, "_chosen": chosen}
        if not chosen or self.expander.name == "none":  # nothing to ask: no request, no cost
            cost = self.teacher_price.cost(reply.usage)
            return build_row(item, reply, steps, flagged, [None] * len(steps), {}, cost)
        grounded = await ground_steps(self.expander, item.prompt, steps, chosen, self.expander_price)
        self.tally.expanded += grounded.expanded
        self.tally.expansion_failures += grounded.failures
        cost = self.teacher_price.cost(reply.usage) + grounded.cost_usd
        return build_row(item, reply, steps, flagged, grounded.expansions, grounded.usage, cost)

    def _fail(self, item: PromptItem, failure: PromptFailed) -> float:
        if self._first.hold(item, failure):
            if self._first.systematic:
                n = len(self._first.held)
                self._fatal = self._fatal or RunStopped(
                    f"the first {n} replies of this run were all the same error, {failure.reason}; every other "
                    f"prompt would get it too, so the run stops here and those {n} prompts stay pending (nothing "
                    f"is written to failed.jsonl). Fix the cause (the model name, a parameter the server "
                    f"refuses), then rerun the same command: finished prompts are kept")
            return 0.0
        self._close_watch()
        if failure.exhausted:
            # Held back until we know whether the API is down (then it stays pending) or not.
            self._suspects.append((item, failure))
            if len(self._suspects) >= OUTAGE_STREAK:
                self._fatal = self._fatal or RunStopped(
                    f"the API looks down: {len(self._suspects)} prompts in a row exhausted their retries "
                    f"(last: {failure.reason}); finished prompts are kept, rerun the same command later")
            return 0.0
        self._write_failure(item, failure)
        return 0.0

    def _close_watch(self) -> None:
        """Another kind of reply came: the held 4xx failures were not systematic after all."""
        if self._first.open:
            for item, failure in self._first.close():
                self._write_failure(item, failure)

    def _flush_suspects(self) -> None:
        for item, failure in self._suspects:
            self._write_failure(item, failure)
        self._suspects.clear()

    def _write_failure(self, item: PromptItem, failure: PromptFailed) -> None:
        self.failed.append({"id": item.id, "prompt": item.prompt, "reason": failure.reason,
                            "status_code": failure.status_code})
        self.tally.failed += 1
        self.progress.update()
