"""Resumable sampling: `generate` a chunk at a time, each chunk appended to a journal."""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import Sequence, Union

from chainforge.sampling.core import Completion, _Progress
from chainforge.sampling.engine import generate
from chainforge.sampling.prompts import Prompt, prompt_id


def generate_journaled(journal: Union[str, os.PathLike], model, tokenizer, prompts: Sequence[Prompt],
                       chunk: int = 64, progress: bool = False, **kwargs) -> list[list[Completion]]:
    """`generate`, `chunk` prompts at a time, each chunk appended to a JSON Lines journal.

    A rerun reads the journal and draws only what is missing; because every row is seeded by its
    prompt's position, the result is the one an uninterrupted run gives. A journal line whose prompt
    changed since (`prompt_sha`) is drawn again."""
    path = Path(journal)
    shas = [prompt_id(p) for p in prompts]
    done: dict[int, list[Completion]] = {}
    from chainforge.journal import Journal  # the one journal rule: torn last line cut, bad lines skipped

    log = Journal(path, key="index")
    for _, (i, sha, comps) in log.recover(
            lambda r: (int(r["index"]), r.get("prompt_sha"), [Completion(**c) for c in r["completions"]])):
        if 0 <= i < len(prompts) and sha == shas[i]:
            done[i] = comps
    todo = [i for i in range(len(prompts)) if i not in done]
    n = kwargs.get("n", 1)
    with _Progress(len(todo) * n, progress, kwargs.pop("on_batch", None)) as report, log:
        for start in range(0, len(todo), chunk):
            part = todo[start:start + chunk]
            drawn = generate(model, tokenizer, [prompts[i] for i in part], keys=part, on_batch=report, **kwargs)
            for i, comps in zip(part, drawn):
                done[i] = comps
                log.append({"index": i, "prompt_sha": shas[i], "completions": [asdict(c) for c in comps]})
            log.sync()
    return [done[i] for i in range(len(prompts))]
