"""Several processes on one command (torchrun, accelerate launch: WORLD_SIZE > 1).

The rule every stage follows: paid work and anything written to disk happens once, on global rank
0, while the other ranks wait (`on_main`); generation is split across ranks (`shard`) and the
shards are put back together on disk by rank 0 (see sampling/journaled.py). Without a launcher
every helper here is a no-op, and nothing imports torch until a process group is needed.
"""

from __future__ import annotations

import datetime as _dt
import os
from typing import Any, Callable, Sequence, TypeVar

from chainforge.errors import ChainforgeError, RunFailed

T = TypeVar("T")

# Rank 0 may spend hours on paid API calls (collect) while the others wait in a collective; the
# default 30 min timeout would kill them. Override with CHAINFORGE_DIST_TIMEOUT (seconds).
DEFAULT_TIMEOUT_S = 48 * 3600


def world_size() -> int:
    return max(int(os.environ.get("WORLD_SIZE", "1") or 1), 1)


def rank() -> int:
    return int(os.environ.get("RANK", "0") or 0)


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0") or 0)


def is_main() -> bool:
    """Global rank 0 (or no launcher)."""
    return rank() == 0


def init() -> bool:
    """Start the process group a launcher asked for (gloo on CPU, nccl on GPUs), once; pin this
    process to its own GPU so that `.to("cuda")` lands on it. False when there is no launcher."""
    if world_size() <= 1:
        return False
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return True
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local_rank() % torch.cuda.device_count())
    timeout = _dt.timedelta(seconds=int(os.environ.get("CHAINFORGE_DIST_TIMEOUT", DEFAULT_TIMEOUT_S)))
    dist.init_process_group(backend="nccl" if cuda else "gloo", timeout=timeout)
    return True


def barrier() -> None:
    if init():
        import torch.distributed as dist

        dist.barrier()


def broadcast(value: Any) -> Any:
    """Rank 0's `value` on every rank (picklable objects)."""
    if not init():
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def on_main(fn: Callable[[], T], what: str) -> T | None:
    """Run `fn` on rank 0 only; the other ranks wait for it and get None. When it fails on rank 0
    the other ranks stop too (RunFailed), instead of waiting forever; rank 0 raises the original
    error (so its exit code is the one the command would give alone)."""
    if world_size() <= 1:
        return fn()
    init()
    if is_main():
        try:
            result = fn()
        except BaseException as exc:
            broadcast(("failed", _describe(exc)))
            raise
        broadcast(("ok", None))
        return result
    status, message = broadcast(None)
    if status != "ok":
        raise RunFailed(f"{what} stopped on rank 0 ({message}); see rank 0's error")
    return None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ChainforgeError):
        return exc.message
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    return f"{type(exc).__name__}: {exc}"


def shard(items: Sequence[T]) -> list[int]:
    """The positions of `items` this rank handles: every world_size-th one, from its rank
    (interleaved, so each rank gets a similar mix of short and long prompts)."""
    return list(range(rank() % world_size(), len(items), world_size()))
