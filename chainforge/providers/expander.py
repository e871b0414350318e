"""Expanders: a short factual grounding for each uncertain step (the Super CoT `<explanation>`).

- `anthropic` (default when ANTHROPIC_API_KEY is set): the official SDK's Messages API. The SDK
  retries by itself (408/409/429/5xx, connection errors, `retry-after`); its `max_retries` is set
  once to --max-retries and no second loop is wrapped around it. It reads ANTHROPIC_BASE_URL.
  The request (`anthropic_request`, the same for Message Batches) carries no sampling parameter
  (Claude 5.x answers 400 to a non-default temperature, top_p or top_k) and keeps thinking out of
  the way of the grounding (`thinking_fields`): off where the model allows it, else at the lowest
  effort with room for it in `max_tokens`, since thinking blocks come first and count against it.
  A reply whose text is empty because it stopped at `max_tokens`, or a `refusal`, is a failed
  grounding whose tokens are still paid for and counted.
- `openai`: any OpenAI-compatible chat-completions server (OPENAI_BASE_URL, OPENAI_API_KEY).
- `local`: an in-process model through `chainforge.sampling.generate`.
- `none`: nothing is grounded; uncertain steps are still flagged.

Every grounding is validated (`validate_expansion`): non-empty, not a refusal, and cut to
`MAX_EXPANSION_WORDS` at a sentence end. One that fails leaves its step unexpanded and is counted
(the run's summary shows how many). A 401/402 from the expander stops the run like the teacher's.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from typing import Optional

from chainforge.providers.chat import ChatAPI, Counters, PromptFailed, RunStopped

# The current Sonnet (platform.claude.com models overview, read 2026-12-06): $2/$10 per 1M tokens,
# half Opus 5.5's price; Claude Sonnet 4.6, the previous default, is a legacy model.
DEFAULT_ANTHROPIC_MODEL = "claude-sonnet-5-5"
EXPANDER_MAX_TOKENS = 512  # the grounding's text (three sentences, MAX_EXPANSION_WORDS at most)
THINKING_ROOM = 1536  # added to max_tokens when the model may think before it answers
MAX_EXPANSION_WORDS = 150

PROMPT = """A solver is working on this question:

{question}

One step of their reasoning reads:

{step}

In at most three sentences, give a concise factual grounding for this step: the fact, rule or \
calculation that shows why it is or is not valid. Reply with the grounding only."""

_REFUSAL = re.compile(r"^\W*(i'?m sorry|i am sorry|sorry,|i cannot|i can'?t|i can not|i am unable|"
                      r"i'?m unable|i won'?t|as an ai)\b", re.IGNORECASE)


@dataclass
class Expansion:
    text: Optional[str]  # None: not grounded (failed or rejected)
    usage: dict = field(default_factory=dict)  # prompt, completion, reasoning, cache_hit
    failed: bool = False


USAGE_FIELDS = ("prompt", "completion", "reasoning", "cache_hit")


def zero_usage() -> dict:
    return dict.fromkeys(USAGE_FIELDS, 0)


@dataclass
class Grounded:
    expansions: list[Optional[str]]  # one per step; None = not grounded
    usage: dict = field(default_factory=zero_usage)
    failures: int = 0  # chosen steps left unexpanded (error, refusal, expired…)
    cost_usd: float = 0.0

    @property
    def expanded(self) -> int:
        return sum(e is not None for e in self.expansions)


def validate_expansion(text: Optional[str]) -> Optional[str]:
    """The grounding to keep, or None for an empty reply or a refusal. Long ones are cut."""
    text = (text or "").strip()
    if not text or _REFUSAL.match(text):
        return None
    words = text.split()
    if len(words) > MAX_EXPANSION_WORDS:
        cut = " ".join(words[:MAX_EXPANSION_WORDS])
        end = max(cut.rfind(". "), cut.rfind("! "), cut.rfind("? "))
        text = cut[:end + 1] if end > len(cut) // 2 else cut + " …"
    return text


def _zero() -> dict:
    return {"prompt": 0, "completion": 0, "reasoning": 0, "cache_hit": 0}


# What keeps a model's thinking out of a grounding, from the models' pages (docs/grounding.md),
# for when the preflight did not read the model's capabilities: longest matching name wins.
THINKING_OFF = {"type": "disabled"}
THINKING_TABLE = {
    "claude-sonnet-5-5": {"thinking": {"type": "between_tools"}},  # `disabled` is a 400 here
    "claude-opus-5-5": {"output_config": {"effort": "low"}},  # thinking cannot be turned off
    "claude-fable": {"output_config": {"effort": "low"}},  # adaptive, always on
    "claude-mythos": {"output_config": {"effort": "low"}},
    "claude-haiku-5-5": {"output_config": {"effort": "low"}},
    "claude-sonnet-5": {"thinking": THINKING_OFF},
    "claude-opus-5": {"thinking": THINKING_OFF},  # allowed at effort high (its default) or lower
    "claude-opus-4": {"thinking": THINKING_OFF},
    "claude-sonnet-4": {"thinking": THINKING_OFF},
    "claude-haiku-4": {"thinking": THINKING_OFF},
}


def thinking_fields(model: str, capabilities: Optional[dict] = None) -> dict:
    """The request fields that keep thinking off, or as short as `model` allows.

    `capabilities`: the model's `capabilities` from the Models API (the preflight reads them),
    whose `thinking.types.X.supported` is false exactly when a request sending type X gets a 400.
    Without them, `THINKING_TABLE`; a model in neither gets no field (its default) and the
    room for thinking in `max_tokens`."""
    if capabilities:
        thinking = capabilities.get("thinking") or {}
        types = thinking.get("types") or {}
        if not thinking.get("supported", True) or (types.get("disabled") or {}).get("supported"):
            return {"thinking": THINKING_OFF}
        if (types.get("between_tools") or {}).get("supported"):
            return {"thinking": {"type": "between_tools"}}
        effort = capabilities.get("effort") or {}
        if effort.get("supported") and (effort.get("low") or {}).get("supported"):
            return {"output_config": {"effort": "low"}}
        return {}
    names = [name for name in THINKING_TABLE if model == name or model.startswith(name + "-")]
    return dict(THINKING_TABLE[max(names, key=len)]) if names else {}


def max_tokens_for(fields: dict) -> int:
    """Thinking turned off: the grounding's own budget; otherwise room for thinking too."""
    off = (fields.get("thinking") or {}).get("type") in ("disabled", "between_tools")
    return EXPANDER_MAX_TOKENS if off else EXPANDER_MAX_TOKENS + THINKING_ROOM


def anthropic_request(model: str, fields: dict, question: str, step: str) -> dict:
    """The Messages API request of one grounding (a Message Batches item's `params` as well)."""
    return {"model": model, "max_tokens": max_tokens_for(fields),
            "messages": [{"role": "user", "content": PROMPT.format(question=question, step=step)}], **fields}


_SENTENCE_END = re.compile(r"[.!?](?=\s|$)")


def expansion_from_message(msg) -> Expansion:
    """An Anthropic Messages reply (synchronous, or one succeeded Message Batches item) as an
    Expansion: the text of its text blocks (thinking blocks come first and are skipped), checked by
    `validate_expansion`, and its token counts. Cut at `max_tokens`: an empty text fails, a partial
    one keeps its whole sentences; a `refusal` fails. A failed one keeps its usage: it was paid for."""
    text = "".join(getattr(b, "text", "") or "" for b in msg.content if getattr(b, "type", "") == "text")
    u = msg.usage
    cached = getattr(u, "cache_read_input_tokens", 0) or 0
    written = getattr(u, "cache_creation_input_tokens", 0) or 0
    # input_tokens leaves out the cached part of the prompt; `prompt` counts all of it
    usage = {"prompt": (u.input_tokens or 0) + cached + written, "completion": u.output_tokens or 0,
             "reasoning": 0, "cache_hit": cached}
    stop = getattr(msg, "stop_reason", None)
    if stop == "refusal":
        return Expansion(None, usage, failed=True)
    if stop in ("max_tokens", "model_context_window_exceeded"):
        ends = [m.end() for m in _SENTENCE_END.finditer(text)]
        text = text[:ends[-1]] if ends else ""
    kept = validate_expansion(text)
    return Expansion(kept, usage, failed=kept is None)


class NoExpander:
    name, model = "none", None

    async def expand_many(self, question: str, steps: list[str]) -> list[Expansion]:
        return [Expansion(None) for _ in steps]

    async def aclose(self) -> None:
        return None


class AnthropicExpander:
    name = "anthropic"

    def __init__(self, api_key: str, model: str, max_retries: int, counters: Counters,
                 capabilities: Optional[dict] = None):
        import anthropic

        async def count(_request) -> None:  # every attempt, the SDK's own retries included
            counters.requests += 1

        # The SDK retries inside one call, so retries = attempts seen by the hook - calls made.
        self.model, self.counters, self.calls = model, counters, 0
        self.fields = thinking_fields(model, capabilities)
        self._anthropic = anthropic
        self._client = anthropic.AsyncAnthropic(
            api_key=api_key, max_retries=max_retries,
            http_client=anthropic.DefaultAsyncHttpxClient(event_hooks={"request": [count]}))

    async def expand(self, question: str, step: str) -> Expansion:
        a = self._anthropic
        self.calls += 1
        try:
            request = anthropic_request(self.model, self.fields, question, step)
            # thinking / output_config go as plain body fields: older SDKs lack the keyword arguments
            extra = {k: request.pop(k) for k in list(request) if k not in ("model", "max_tokens", "messages")}
            msg = await self._client.messages.create(**request, extra_body=extra or None)
        except a.APIStatusError as exc:
            if exc.status_code in (401, 402):
                raise RunStopped(f"the Anthropic API refused the expander request (HTTP {exc.status_code}); "
                                 f"check ANTHROPIC_API_KEY and the account balance, then rerun the same "
                                 f"command: finished prompts are kept") from None
            return Expansion(None, _zero(), failed=True)
        except a.APIError:
            return Expansion(None, _zero(), failed=True)
        return expansion_from_message(msg)

    async def expand_many(self, question: str, steps: list[str]) -> list[Expansion]:
        return list(await asyncio.gather(*(self.expand(question, s) for s in steps)))

    @property
    def retries(self) -> int:
        return max(0, self.counters.requests - self.calls)

    async def aclose(self) -> None:
        await self._client.close()


class ChatExpander:
    """`openai`: chat completions on an OpenAI-compatible server, with chat.ChatAPI's retries."""

    name = "openai"

    def __init__(self, chat: ChatAPI):
        self.chat, self.model = chat, chat.model

    async def expand(self, question: str, step: str) -> Expansion:
        try:
            reply = await self.chat.complete([{"role": "user", "content": PROMPT.format(question=question, step=step)}])
        except PromptFailed:
            return Expansion(None, _zero(), failed=True)
        kept = validate_expansion(reply.content)
        return Expansion(kept, reply.usage, failed=kept is None)

    async def expand_many(self, question: str, steps: list[str]) -> list[Expansion]:
        return list(await asyncio.gather(*(self.expand(question, s) for s in steps)))

    async def aclose(self) -> None:
        await self.chat.client.aclose()


class LocalExpander:
    """An in-process model (`teachers.LocalModel`, shared with a local teacher of the same name).

    Rows in flight ask for groundings at the same time; they queue here and one worker feeds the
    model a batch at a time — every step asked for while the previous batch decoded, up to
    `max_batch` — instead of one thread per row decoding on the one model at once. Greedy decoding,
    so a step's grounding does not depend on which batch it lands in.
    """

    name = "local"

    def __init__(self, shared, model_name: str, seed: int, max_new_tokens: int = 96, max_batch: int = 32):
        self.shared, self.model, self.seed = shared, model_name, seed
        self.max_new_tokens, self.max_batch = max_new_tokens, max_batch
        self._queue: list[tuple[str, asyncio.Future]] = []
        self._worker: Optional[asyncio.Task] = None
        self.batches: list[int] = []  # prompts per generate call, in order

    def _generate(self, prompts: list[str]) -> list[Expansion]:
        from chainforge.sampling import generate

        with self.shared.generate_lock:
            model, tok = self.shared.load()
            comps = generate(model, tok, prompts, n=1, temperature=0, max_new_tokens=self.max_new_tokens,
                             seed=self.seed, batch_size=len(prompts))
        out = []
        for (c,) in comps:
            kept = validate_expansion(c.text)
            out.append(Expansion(kept, {"prompt": 0, "completion": c.tokens, "reasoning": 0, "cache_hit": 0},
                                 failed=kept is None))
        return out

    async def expand_many(self, question: str, steps: list[str]) -> list[Expansion]:
        if not steps:
            return []
        loop = asyncio.get_running_loop()
        futures = []
        for step in steps:
            future = loop.create_future()
            self._queue.append((PROMPT.format(question=question, step=step), future))
            futures.append(future)
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._drain())
        return list(await asyncio.gather(*futures))

    async def _drain(self) -> None:
        while self._queue:
            batch, self._queue = self._queue[:self.max_batch], self._queue[self.max_batch:]
            batch = [(p, f) for p, f in batch if not f.done()]  # rows cancelled meanwhile
            if not batch:
                continue
            self.batches.append(len(batch))
            try:
                results = await asyncio.to_thread(self._generate, [p for p, _ in batch])
            except Exception as exc:  # a crash in generate: every row waiting on it learns of it
                for _, f in batch:
                    if not f.done():
                        f.set_exception(exc)
                continue
            for (_, f), result in zip(batch, results):
                if not f.done():
                    f.set_result(result)

    async def aclose(self) -> None:
        if self._worker is not None and not self._worker.done():
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
