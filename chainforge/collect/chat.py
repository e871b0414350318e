"""One OpenAI-compatible chat-completions call (DeepSeek, vLLM, SGLang, Ollama), with retries.

Each prompt is its own conversation: the messages sent are the optional system prompt and one
user turn. The reasoner's `reasoning_content` is read from the reply and never sent back (DeepSeek
answers 400 to a request that carries it). Nothing the reasoner rejects is sent: no `logprobs`,
and `temperature` only when asked for (deepseek-reasoner ignores it).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any, Optional

from chainforge.collect.http import TransportError
from chainforge.collect.retry import backoff_seconds, classify
from chainforge.errors import RunFailed


class RunStopped(RunFailed):
    """A 401/402 (or a dead API): every further request would fail too. Exit 1, resumable."""


class PromptFailed(Exception):
    """This prompt fails for good: it becomes a line of failed.jsonl."""

    def __init__(self, reason: str, status_code: Optional[int] = None, exhausted: bool = False):
        super().__init__(reason)
        self.reason, self.status_code, self.exhausted = reason, status_code, exhausted


@dataclass
class Counters:
    requests: int = 0  # HTTP requests sent, retries included
    retries: int = 0


@dataclass
class ChatReply:
    content: str
    reasoning: Optional[str]
    usage: dict = field(default_factory=dict)  # prompt, completion, reasoning, cache_hit
    finish_reason: Optional[str] = None


def usage_of(data: dict) -> dict:
    """Token counts from an OpenAI/DeepSeek `usage` object (missing fields are 0)."""
    u = data.get("usage") or {}
    details = u.get("completion_tokens_details") or {}
    prompt_details = u.get("prompt_tokens_details") or {}
    cache_hit = u.get("prompt_cache_hit_tokens", prompt_details.get("cached_tokens", 0))
    return {
        "prompt": int(u.get("prompt_tokens") or 0),
        "completion": int(u.get("completion_tokens") or 0),
        "reasoning": int(details.get("reasoning_tokens") or 0),
        "cache_hit": int(cache_hit or 0),
    }


def parse_reply(body: bytes) -> ChatReply:
    """The first choice of a chat-completions body; ValueError when it is not one."""
    data = json.loads(body)  # leading blank lines (DeepSeek keep-alive) are whitespace to JSON
    if not isinstance(data, dict) or not data.get("choices"):
        raise ValueError("a JSON body without choices")
    choice = data["choices"][0]
    message = choice.get("message") or {}
    # vLLM >= 0.9 names it `reasoning`; DeepSeek and older servers `reasoning_content`.
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    return ChatReply(content=message.get("content") or "", reasoning=reasoning,
                     usage=usage_of(data), finish_reason=choice.get("finish_reason"))


def _error_text(body: bytes) -> str:
    try:
        data = json.loads(body)
        err = data.get("error", data) if isinstance(data, dict) else data
        msg = err.get("message") if isinstance(err, dict) else None
        return str(msg or err)[:300]
    except (ValueError, AttributeError):
        return body[:300].decode("utf-8", "replace").strip()


class ChatAPI:
    """POST {base}/chat/completions for one model; retries per `chainforge.collect.retry`."""

    def __init__(self, client, model: str, name: str, key_env: str, max_retries: int,
                 counters: Counters, max_tokens: Optional[int] = None,
                 temperature: Optional[float] = None, limiter=None):
        self.client, self.model, self.name, self.key_env = client, model, name, key_env
        self.max_retries, self.counters, self.limiter = max_retries, counters, limiter
        self.max_tokens, self.temperature = max_tokens, temperature

    def payload(self, messages: list[dict]) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "messages": messages, "stream": False}
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens  # for the reasoner it counts the reasoning too
        if self.temperature is not None:
            body["temperature"] = self.temperature
        return body

    async def complete(self, messages: list[dict], token_estimate: int = 0) -> ChatReply:
        body = json.dumps(self.payload(messages)).encode()
        why, status = "", None
        for attempt in range(self.max_retries + 1):
            if self.limiter is not None:
                await self.limiter.wait(token_estimate)
            self.counters.requests += 1
            self.counters.retries += attempt > 0
            retry_after = None
            try:
                resp = await self.client.post("/chat/completions", body)
            except TransportError as exc:
                why, status = str(exc), None
            else:
                status, kind = resp.status, classify(resp.status)
                if kind == "ok":
                    try:
                        return parse_reply(resp.body)
                    except (ValueError, KeyError, TypeError, IndexError):
                        why = "HTTP 200 with an empty body" if not resp.body.strip() else \
                              "HTTP 200 with a body that is not a chat completion"
                elif kind == "stop":
                    raise RunStopped(self._stop_message(resp.status, _error_text(resp.body)))
                elif kind == "fail":
                    raise PromptFailed(f"HTTP {resp.status}: {_error_text(resp.body)}", resp.status)
                else:
                    why, retry_after = f"HTTP {resp.status}", resp.headers.get("retry-after")
            if attempt == self.max_retries:
                break
            await asyncio.sleep(backoff_seconds(attempt, retry_after))
        raise PromptFailed(f"retries exhausted ({self.max_retries}): {why}", status, exhausted=True)

    def _stop_message(self, status: int, detail: str) -> str:
        if status == 401:
            return (f"the {self.name} API refused the key (HTTP 401: {detail}); check {self.key_env}, "
                    f"then rerun the same command: finished prompts are kept")
        return (f"the {self.name} account is out of balance (HTTP 402: {detail}); top it up, then rerun "
                f"the same command: finished prompts are kept and not paid for again")
