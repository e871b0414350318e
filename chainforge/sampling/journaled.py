"""Resumable sampling: `generate` over every prompt still to draw, each prompt appended to a
journal as soon as its completions are done (synced every `chunk` prompts and at the end).

Under a launcher (WORLD_SIZE > 1) the prompts are split across ranks: rank r draws every
world_size-th prompt from r and appends to its own journal (`NAME.rank<r>.jsonl` next to the main
one; rank 0 writes the main one), so no two processes write one file. When every rank is done,
each reads all the journals and returns the whole result, and rank 0 merges the other ranks' lines
into the main journal. Rows are seeded by their prompt's position in the whole list, so N ranks
draw what one process draws, and a run resumed with another number of ranks reuses every line.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import Sequence, Union

from chainforge import distributed
from chainforge.sampling.core import Completion, _Progress
from chainforge.sampling.engine import generate
from chainforge.sampling.prompts import Prompt, prompt_id


def shard_journal(journal: Path, rank: int) -> Path:
    """Where rank `rank` journals its shard (rank 0: the main journal)."""
    return journal if rank == 0 else journal.with_name(f"{journal.stem}.rank{rank}{journal.suffix}")


def _shard_journals(journal: Path) -> list[Path]:
    """The other ranks' journals next to `journal`, whatever the number of ranks that wrote them."""
    return sorted(journal.parent.glob(f"{journal.stem}.rank*{journal.suffix}"))


def _recover(paths: Sequence[Path], shas: list[str]) -> dict[int, list[Completion]]:
    from chainforge.journal import Journal  # the one journal rule: torn last line cut, bad lines skipped

    done: dict[int, list[Completion]] = {}
    for path in paths:
        log = Journal(path, key="index")
        for _, (i, sha, comps) in log.recover(
                lambda r: (int(r["index"]), r.get("prompt_sha"), [Completion(**c) for c in r["completions"]])):
            if 0 <= i < len(shas) and sha == shas[i]:
                done[i] = comps
    return done


def generate_journaled(journal: Union[str, os.PathLike], model, tokenizer, prompts: Sequence[Prompt],
                       chunk: int = 64, progress: bool = False, **kwargs) -> list[list[Completion]]:
    """`generate` over the prompts not yet in the JSON Lines journal, in one call (the engine keeps
    its batch full across all of them), each prompt's line appended as soon as its completions are
    done; the journal is synced every `chunk` prompts and at the end.

    A rerun reads the journal and draws only what is missing; because every row is seeded by its
    prompt's position, the result is the one an uninterrupted run gives. A journal line whose prompt
    changed since (`prompt_sha`) is drawn again. Every rank of a launcher calls this with the same
    prompts and gets the same whole result (see the module docstring)."""
    from chainforge.journal import Journal

    path = Path(journal)
    shas = [prompt_id(p) for p in prompts]
    ranks = distributed.world_size()
    done = _recover([path] + _shard_journals(path), shas)
    # nobody writes before every rank has read what is there (a read cuts a torn last line)
    distributed.barrier()
    mine = set(distributed.shard(prompts)) if ranks > 1 else set(range(len(prompts)))
    todo = [i for i in range(len(prompts)) if i not in done and i in mine]
    n = kwargs.get("n", 1)
    log = Journal(shard_journal(path, distributed.rank()) if ranks > 1 else path, key="index")
    with _Progress(len(todo) * n, progress, kwargs.pop("on_batch", None)) as report, log:
        written = 0

        def finished(k: int, comps: list[Completion]) -> None:
            nonlocal written
            i = todo[k]
            done[i] = comps
            log.append({"index": i, "prompt_sha": shas[i], "completions": [_record(c) for c in comps]})
            written += 1
            if written % max(chunk, 1) == 0:
                log.sync()

        if todo:
            generate(model, tokenizer, [prompts[i] for i in todo], keys=todo, on_batch=report, on_prompt=finished,
                     **kwargs)
        log.sync()
    if ranks > 1 or _shard_journals(path):
        distributed.barrier()  # every shard is on disk
        done.update(_recover([path] + _shard_journals(path), shas))
        distributed.barrier()  # every rank has read the shards
        if distributed.is_main():
            _merge(path, shas)
    missing = [i for i in range(len(prompts)) if i not in done]
    if missing:
        from chainforge.errors import RunFailed

        raise RunFailed(f"{len(missing)} prompts have no samples in {path} or its rank journals "
                        f"(first: #{missing[0]}); rerun the same command to draw them")
    return [done[i] for i in range(len(prompts))]


def _merge(path: Path, shas: list[str]) -> None:
    """Rank 0: the other ranks' lines into the main journal (synced), then their files go. A crash
    in between leaves lines in both places; a rerun reads both and merges again."""
    from chainforge.journal import Journal

    log = Journal(path, key="index")
    have = {i for _, i in log.recover(lambda r: int(r["index"]))}
    shards = _shard_journals(path)
    with log:
        for shard in shards:
            for _, rec in Journal(shard, key="index").recover():
                i = int(rec["index"])
                if i not in have and 0 <= i < len(shas) and rec.get("prompt_sha") == shas[i]:
                    log.append(rec)
                    have.add(i)
        log.sync()
    for shard in shards:
        shard.unlink(missing_ok=True)


def _record(completion: Completion) -> dict:
    """A completion as the journal keeps it: text, length and whether it finished (no token ids)."""
    record = asdict(completion)
    record.pop("ids", None)
    return record
