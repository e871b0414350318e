"""What every generation backend shares: a completion, the stop tokens, the per-row seed, and the
progress report."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Callable, Optional


@dataclass
class Completion:
    text: str
    tokens: int  # generated tokens, EOS included
    finished: bool  # True when it stopped at EOS rather than at max_new_tokens
    # the generated token ids, stop token included (the HF engine; GRPO's rollouts train on them);
    # never journaled
    ids: Optional[list] = field(default=None, repr=False, compare=False)


def stop_token_ids(tokenizer, model=None) -> list[int]:
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(gen_eos, int):
        ids.add(gen_eos)
    elif isinstance(gen_eos, (list, tuple)):
        ids.update(int(i) for i in gen_eos)
    # Chat models end a turn with <|im_end|> even when their eos is another token.
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>") if "<|im_end|>" in tokenizer.get_vocab() else None
    if im_end is not None:
        ids.add(int(im_end))
    return sorted(ids)


def row_seed(seed: int, key: int, sample: int) -> int:
    """The generator seed of one (prompt, sample) row: a hash, so nearby seeds don't correlate."""
    digest = hashlib.blake2b(f"{seed}:{key}:{sample}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


class _Progress:
    """Counts completions for `on_batch` and, when asked, a rich bar with completions/s."""

    def __init__(self, total: int, show: bool, on_batch: Optional[Callable[[int], None]]):
        self.total, self.show, self.on_batch = total, show, on_batch
        self.done, self.bar, self.task = 0, None, None

    def __enter__(self):
        self.started = time.perf_counter()
        if self.show:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeElapsedColumn)

            from chainforge.log import console

            self.bar = Progress(TextColumn("sampling"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[rate]} completions/s"), TimeElapsedColumn(),
                                console=console, transient=True, disable=not console.is_terminal)
            self.bar.start()
            self.task = self.bar.add_task("sampling", total=self.total, rate="-")
        return self

    def __call__(self, k: int) -> None:
        self.done += k
        if self.on_batch:
            self.on_batch(k)
        if self.bar is not None:
            rate = self.done / max(time.perf_counter() - self.started, 1e-9)
            self.bar.update(self.task, advance=k, rate=f"{rate:.1f}")

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()
            if exc[0] is None:
                from chainforge.log import info

                took = time.perf_counter() - self.started
                info(f"sampled {self.done} completions in {took:.1f} s ({self.done / max(took, 1e-9):.1f}/s)")
