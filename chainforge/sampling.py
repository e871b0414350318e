"""The one generation engine: model + prompts → n completions per prompt.

Used by collect's local teacher, the structure check after sft, reject, eval and distill.

    generate(model, tokenizer, prompts, n=8, temperature=0.7, max_new_tokens=256, seed=0)

How it is fast (on a Hugging Face model; the loop is ours, not `model.generate`):
- Length-sorted batching: (prompt, sample) rows are sorted by prompt length, so a batch holds
  prompts of similar length (little padding; short prompts don't wait on long ones).
- n candidates per prompt in one pass: a batch prefills each distinct prompt once and copies its
  KV cache to its n rows (`model.generate(num_return_sequences=n)` prefills every copy).
- Finished rows leave the batch: once a quarter of the rows have stopped, the cache is compacted,
  so the batch does not keep paying for completions that ended early.
- Batch size fits memory: `batch_size="auto"` sizes the batch from the KV-cache bytes per row and
  the free memory (GPU) or available RAM (CPU).

Determinism: every (prompt, sample) row draws from its own generator, seeded from (seed, the
prompt's key, the sample's index), so the completions do not depend on the batch size, the batch
a row landed in, or how a long run was split into chunks (up to float round-off in padded
batches). A prompt's key is its position in `prompts` unless `keys=` says otherwise.
`temperature=0` is greedy: the prompt is decoded once and the completion repeated n times.

A vLLM backend (`load_vllm`, the optional extra `chainforge[vllm]`) serves the same call: pass the
`VLLMModel` it returns as `model`.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

Prompt = Union[str, Sequence[dict]]
BatchSize = Union[int, str, None]  # an int, or "auto"/None: sized from free memory

VLLM_INSTALL = "pip install 'chainforge[vllm]'"
# Compact the cache once this fraction of a batch's rows have stopped (copying it costs a step).
_COMPACT_AT = 0.25


@dataclass
class Completion:
    text: str
    tokens: int  # generated tokens, EOS included
    finished: bool  # True when it stopped at EOS rather than at max_new_tokens


def as_messages(prompt: Prompt, system_prompt: Optional[str] = None) -> list[dict]:
    """A prompt as chat messages (role and content only): a string becomes one user turn; the
    system prompt goes first unless the prompt has its own system turn."""
    if isinstance(prompt, str):
        messages = [{"role": "user", "content": prompt}]
    else:
        messages = [{"role": m["role"], "content": m["content"]} for m in prompt]
    if system_prompt and not (messages and messages[0].get("role") == "system"):
        messages.insert(0, {"role": "system", "content": system_prompt})
    return messages


def render_prompt(tokenizer, prompt: Prompt, system_prompt: Optional[str] = None) -> str:
    """The text the model sees: the chat template with the assistant turn opened."""
    return tokenizer.apply_chat_template(as_messages(prompt, system_prompt), tokenize=False,
                                         add_generation_prompt=True)


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


# ---- the entry point -----------------------------------------------------------------------------

def generate(
    model,
    tokenizer,
    prompts: Sequence[Prompt],
    n: int = 1,
    temperature: float = 0.7,
    top_p: float = 1.0,
    max_new_tokens: int = 256,
    seed: int = 0,
    batch_size: BatchSize = "auto",
    system_prompt: Optional[str] = None,
    on_batch: Optional[Callable[[int], None]] = None,
    keys: Optional[Sequence[int]] = None,
    progress: bool = False,
) -> list[list[Completion]]:
    """`n` completions for each prompt, in prompt order. `temperature=0` is greedy.

    `batch_size`: rows (candidates) decoded together, or "auto" to fit memory. `on_batch(k)` is
    called as k more completions are done. `keys`: per prompt, what seeds its rows (default: its
    position). `progress`: a progress bar with completions/s on stderr.
    """
    if n < 1:
        raise ValueError("n must be at least 1")
    if keys is not None and len(keys) != len(prompts):
        raise ValueError(f"{len(keys)} keys for {len(prompts)} prompts")
    if not prompts:
        return []
    keys = list(range(len(prompts))) if keys is None else [int(k) for k in keys]
    greedy = temperature <= 0
    draws = 1 if greedy else n  # greedy: every sample would be the same
    with _Progress(len(prompts) * n, progress, on_batch) as report:
        if isinstance(model, VLLMModel):
            drawn = _generate_vllm(model, tokenizer, prompts, draws, temperature, top_p, max_new_tokens,
                                   seed, keys, system_prompt, lambda k: report(k * n // draws))
        else:
            drawn = _generate_hf(model, tokenizer, prompts, draws, temperature, top_p, max_new_tokens,
                                 seed, keys, batch_size, system_prompt, lambda k: report(k * n // draws))
    if greedy and n > 1:
        return [[Completion(c[0].text, c[0].tokens, c[0].finished) for _ in range(n)] for c in drawn]
    return drawn


# ---- Hugging Face models: our own decode loop ------------------------------------------------------

def _generate_hf(model, tokenizer, prompts, draws, temperature, top_p, max_new_tokens, seed, keys,
                 batch_size, system_prompt, report) -> list[list[Completion]]:
    import torch

    texts = [render_prompt(tokenizer, p, system_prompt) for p in prompts]
    encoded = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    rows = [(i, j) for i in range(len(prompts)) for j in range(draws)]
    rows.sort(key=lambda r: (len(encoded[r[0]]), r[0], r[1]))
    if batch_size in (None, "auto"):
        longest = max(len(e) for e in encoded)
        batch_size = auto_batch_size(model, longest + max_new_tokens)
    batch_size = int(batch_size)
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")

    stops = stop_token_ids(tokenizer, model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    results: list[list[Optional[Completion]]] = [[None] * draws for _ in prompts]
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(rows), batch_size):
            batch = rows[start:start + batch_size]
            new_ids = _decode_batch(model, [encoded[i] for i, _ in batch],
                                    [row_seed(seed, keys[i], j) for i, j in batch], temperature, top_p,
                                    max_new_tokens, stops, pad_id)
            for (i, j), ids in zip(batch, new_ids):
                results[i][j] = _completion(tokenizer, ids, stops)
            report(len(batch))
    finally:
        if was_training:
            model.train()
    return results  # type: ignore[return-value]


def _decode_batch(model, prompt_ids: list[list[int]], seeds: list[int], temperature: float, top_p: float,
                  max_new_tokens: int, stops: list[int], pad_id: int) -> list[list[int]]:
    """Decode one batch of rows; rows with the same prompt (adjacent after sorting) share a prefill."""
    import torch
    from transformers import DynamicCache

    device = next(model.parameters()).device
    # Distinct prompts of the batch, and for each row which of them it continues.
    uniques: list[list[int]] = []
    owner: list[int] = []
    for ids in prompt_ids:
        if not uniques or uniques[-1] is not ids:
            uniques.append(ids)
        owner.append(len(uniques) - 1)
    width = max(len(u) for u in uniques)
    input_ids = torch.full((len(uniques), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(uniques), width), dtype=torch.long)
    for r, ids in enumerate(uniques):
        input_ids[r, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
        attention[r, width - len(ids):] = 1
    input_ids, attention = input_ids.to(device), attention.to(device)
    positions = (attention.cumsum(-1) - 1).clamp(min=0)

    generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]
    stop_set = torch.tensor(stops, device=device)
    rows = len(prompt_ids)
    out: list[list[int]] = [[] for _ in range(rows)]
    active = list(range(rows))  # batch position -> row
    done = [False] * rows

    with torch.inference_mode():
        cache = DynamicCache()
        logits = _forward(model, input_ids, attention, positions, cache)
        expand = torch.tensor(owner, device=device)
        if len(uniques) != rows:
            cache.batch_select_indices(expand)
        logits, attention = logits[expand], attention[expand]
        next_pos = positions[expand, -1:] + 1
        for step in range(max_new_tokens):
            tokens = _pick(logits, [generators[r] for r in active], temperature, top_p)
            stopped = torch.isin(tokens, stop_set).tolist()
            for b, (r, t) in enumerate(zip(active, tokens.tolist())):
                if not done[r]:
                    out[r].append(t)
                    done[r] = stopped[b]
            if all(done[r] for r in active) or step == max_new_tokens - 1:
                break
            finished = [b for b, r in enumerate(active) if done[r]]
            if finished and len(finished) >= _COMPACT_AT * len(active):
                keep = torch.tensor([b for b, r in enumerate(active) if not done[r]], device=device)
                cache.batch_select_indices(keep)
                tokens, attention, next_pos = tokens[keep], attention[keep], next_pos[keep]
                active = [r for r in active if not done[r]]
            attention = torch.cat([attention, attention.new_ones((len(active), 1))], dim=1)
            logits = _forward(model, tokens[:, None], attention, next_pos, cache)
            next_pos = next_pos + 1
    return out


def _forward(model, input_ids, attention, positions, cache):
    """Logits of the last position only (the full-vocabulary projection of a prefill is waste)."""
    try:
        out = model(input_ids=input_ids, attention_mask=attention, position_ids=positions,
                    past_key_values=cache, use_cache=True, logits_to_keep=1)
    except TypeError:  # a model class without logits_to_keep
        out = model(input_ids=input_ids, attention_mask=attention, position_ids=positions,
                    past_key_values=cache, use_cache=True)
    return out.logits[:, -1, :].float()


def _pick(logits, generators, temperature: float, top_p: float):
    """Next token per row: argmax when greedy, else a draw from the row's own generator.

    The draw is the exponential race (argmax of p / E, E ~ Exp(1)), which picks token v with
    probability p_v — it needs one uniform vector per row, taken from that row's generator."""
    import torch

    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        # keep the smallest prefix whose mass reaches top_p (the first token always stays)
        drop = (sorted_p.cumsum(-1) - sorted_p) >= top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_p)
    vocab = probs.shape[-1]
    uniform = torch.stack([torch.rand(vocab, generator=g, device=probs.device) for g in generators])
    race = probs / (-torch.log(uniform.clamp_min(1e-12)))
    return race.argmax(-1)


def _completion(tokenizer, ids: list[int], stops: list[int]) -> Completion:
    stop_at = next((k for k, t in enumerate(ids) if t in stops), None)
    kept = ids if stop_at is None else ids[:stop_at]
    return Completion(
        text=tokenizer.decode(kept, skip_special_tokens=True),
        tokens=len(ids) if stop_at is None else stop_at + 1,
        finished=stop_at is not None,
    )


def auto_batch_size(model, tokens_per_row: int, budget_bytes: Optional[int] = None,
                    ceiling: Optional[int] = None) -> int:
    """Rows per batch that fit: KV cache + logits per row against a share of free memory.

    GPU: 60% of the free device memory, up to 512 rows. CPU: 25% of available RAM, up to 64 rows
    (past that a CPU is compute-bound and larger batches only cost cache copies)."""
    import torch

    device = next(model.parameters()).device
    if budget_bytes is None:
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            budget_bytes = int(free * 0.6)
        else:
            budget_bytes = int(_available_ram() * 0.25)
    if ceiling is None:
        ceiling = 512 if device.type == "cuda" else 64
    per_row = bytes_per_row(model, tokens_per_row)
    return max(1, min(ceiling, budget_bytes // max(per_row, 1)))


def bytes_per_row(model, tokens_per_row: int) -> int:
    """Memory one decoding row needs: its KV cache at full length plus a few vocab-sized vectors."""
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    layers = getattr(cfg, "num_hidden_layers", 24)
    heads = getattr(cfg, "num_attention_heads", 16)
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    elem = next(model.parameters()).element_size()
    kv = 2 * layers * kv_heads * head_dim * elem * tokens_per_row
    vocab = 4 * 4 * getattr(cfg, "vocab_size", 32000)  # logits, probs, noise, sort (float32)
    activations = 8 * elem * (cfg.hidden_size + getattr(cfg, "intermediate_size", 4 * cfg.hidden_size))
    return kv + vocab + activations


def _available_ram() -> int:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 << 30


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


# ---- vLLM ------------------------------------------------------------------------------------------

class VLLMModel:
    """A vLLM `LLM`, or any object with its `generate(prompts, sampling_params)` interface.

    `sampling_params` builds one request's parameters (vLLM's `SamplingParams` by default).
    Prompts go in as token ids (`{"prompt_token_ids": [...]}`) rendered with our chat template,
    so vLLM adds no second BOS and both backends see the same text."""

    def __init__(self, llm: Any, sampling_params: Optional[Callable[..., Any]] = None):
        self.llm = llm
        if sampling_params is None:
            sampling_params = _import_vllm().SamplingParams
        self.sampling_params = sampling_params


def vllm_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def _import_vllm():
    from chainforge.errors import UsageError

    try:
        import vllm
    except ImportError:
        raise UsageError(f"--backend vllm needs vLLM, which is not installed: run `{VLLM_INSTALL}` "
                         f"(Linux with a CUDA GPU), or use --backend hf") from None
    return vllm


def load_vllm(path: str, seed: int = 0, dtype: str = "auto", gpu_memory_utilization: float = 0.85,
              max_model_len: Optional[int] = None) -> VLLMModel:
    """A vLLM engine for a checkpoint folder or hub id (UsageError naming the extra if missing)."""
    vllm = _import_vllm()
    kwargs = {"model": path, "seed": seed, "dtype": dtype, "gpu_memory_utilization": gpu_memory_utilization}
    if max_model_len:
        kwargs["max_model_len"] = max_model_len
    return VLLMModel(vllm.LLM(**kwargs), vllm.SamplingParams)


def _generate_vllm(model: VLLMModel, tokenizer, prompts, draws, temperature, top_p, max_new_tokens, seed,
                   keys, system_prompt, report) -> list[list[Completion]]:
    stops = stop_token_ids(tokenizer)
    requests = [{"prompt_token_ids": tokenizer(render_prompt(tokenizer, p, system_prompt),
                                               add_special_tokens=False)["input_ids"]} for p in prompts]
    # One parameter set per request, each with its own seed: a prompt's samples do not depend on
    # which other prompts share the engine's batch.
    params = [model.sampling_params(n=draws, temperature=max(temperature, 0.0),
                                    top_p=top_p if temperature > 0 else 1.0, max_tokens=max_new_tokens,
                                    seed=row_seed(seed, k, 0) % (2 ** 31), stop_token_ids=stops,
                                    skip_special_tokens=True)
              for k in keys]
    outputs = model.llm.generate(requests, params)
    if len(outputs) != len(prompts):
        raise RuntimeError(f"vLLM returned {len(outputs)} outputs for {len(prompts)} prompts")
    results = []
    for out in outputs:
        comps = [Completion(text=o.text, tokens=len(o.token_ids), finished=o.finish_reason == "stop")
                 for o in list(out.outputs)[:draws]]
        if len(comps) != draws:
            raise RuntimeError(f"vLLM returned {len(comps)} completions for a prompt, expected {draws}")
        results.append(comps)
    report(len(prompts) * draws)
    return results


# ---- the engine behind a command's options -----------------------------------------------------------

BACKENDS = ("hf", "vllm")


@dataclass
class EngineSpec:
    """What `load_engine` loads: validated before a stage creates its output."""

    ref: Any  # chainforge.models.ModelRef
    backend: str
    batch_size: BatchSize
    seed: int


def engine_spec(opts, model_option: str = "model") -> EngineSpec:
    """Check a sampling command's shared options (exit 2 on a bad one); no weights are read."""
    from chainforge.errors import UsageError
    from chainforge.models import resolve_model

    if opts.get("num_samples") is not None and opts.num_samples < 1:
        raise UsageError(f"--num-samples must be at least 1, got {opts.num_samples}")
    if opts.get("temperature") is not None and opts.temperature < 0:
        raise UsageError(f"--temperature must be 0 (greedy) or more, got {opts.temperature}")
    top_p = opts.get("top_p")
    if top_p is not None and not 0 < top_p <= 1:
        raise UsageError(f"--top-p must be in (0, 1], got {top_p}")
    backend = str(opts.get("backend") or "hf").lower()
    if backend not in BACKENDS:
        raise UsageError(f"--backend {backend!r} is not one of {', '.join(BACKENDS)}")
    raw = opts.get("batch_size")
    batch_size: BatchSize = "auto"
    if raw not in (None, "", "auto"):
        try:
            batch_size = int(raw)
        except (TypeError, ValueError):
            batch_size = 0
        if batch_size < 1:
            raise UsageError(f"--batch-size must be a positive number of rows or `auto`, got {raw!r}")
    if backend == "vllm":
        _import_vllm()  # names the extra when vLLM is missing
    ref = resolve_model(opts.get(model_option), what="--" + model_option.replace("_", "-"))
    return EngineSpec(ref, backend, batch_size, int(opts.get("seed") or 0))


def load_engine(spec: EngineSpec):
    """(model, tokenizer) for `generate`: a Hugging Face model on the best device, or vLLM."""
    from chainforge.models import checkpoint_path, default_device, load_model, load_tokenizer

    tokenizer = load_tokenizer(spec.ref)
    if spec.backend == "vllm":
        return load_vllm(checkpoint_path(spec.ref), seed=spec.seed), tokenizer
    import torch

    device = default_device()
    dtype = torch.bfloat16 if device == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    return load_model(spec.ref, dtype=dtype, device=device), tokenizer


def resolve_system_prompt(value: Optional[str]) -> Optional[str]:
    """`--system-prompt`: unset means the Super CoT instructions; an empty string means none."""
    from chainforge.formats import SUPER_COT_SYSTEM_PROMPT

    if value is None:
        return SUPER_COT_SYSTEM_PROMPT
    return value or None


# ---- resumable sampling -----------------------------------------------------------------------------

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


def prompt_id(prompt: Prompt) -> str:
    """A prompt's stable id (the one collect gives rows without an `id`): a hash of its text."""
    body = prompt if isinstance(prompt, str) else json.dumps(list(prompt), sort_keys=True, ensure_ascii=False,
                                                              default=str)
    return hashlib.sha256(body.encode("utf-8")).hexdigest()[:16]


def row_id(given, prompt: Prompt) -> str:
    """A row's id everywhere (collect, reject, eval, distill): its `id` value when it has a
    non-empty one, else `prompt_id(prompt)`."""
    return str(given) if given not in (None, "") else prompt_id(prompt)
