"""One OpenAI-compatible chat-completions call (DeepSeek, vLLM, SGLang, Ollama), with retries.

Each prompt is its own conversation: the messages sent are the optional system prompt and one
user turn. The reasoner's `reasoning_content` is read from the reply and never sent back. Nothing
the reasoner rejects is sent: no `logprobs`, and `temperature` only when asked for (DeepSeek
ignores it in thinking mode). The fields that pick thinking and its effort (`thinking`,
`reasoning_effort`) come from `resolve.teacher_extra`.

Replies are streamed (`stream: true`, `stream_options: {include_usage: true}`): the reasoning and
the answer arrive as `reasoning_content` / `content` deltas and the token counts in the last event,
so a stalled request is caught by the client's idle timeout instead of hanging for minutes. A
server that ignores `stream` and answers with one JSON body is read as before.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any, Optional

from chainforge.providers.http import TransportError
from chainforge.providers.retry import backoff_seconds, classify
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


class StreamReply:
    """Assembles a streamed chat completion from its SSE events: `feed_all` takes the data of the
    events one network read brought (bytes or str), `feed` one event's."""

    def __init__(self):
        self.content: list[str] = []
        self.reasoning: list[str] = []
        self.usage: Optional[dict] = None
        self.finish_reason: Optional[str] = None
        self.done = False  # `data: [DONE]` seen
        self.events = 0
        self.error: Optional[str] = None

    def feed(self, data) -> None:
        self.feed_all([data])

    def feed_all(self, events: list) -> None:
        """The events of one read. Their JSON is parsed in one call (`[e1,e2,…]`): the per-event cost
        of a reply is what its throughput pays most for. Should that not give one object per event
        (a malformed event), each is parsed alone, so the error names the one that is wrong."""
        datas = []
        for data in events:
            if isinstance(data, str):
                data = data.encode()
            if data == b"[DONE]" or data.strip() == b"[DONE]":
                self.done = True
            else:
                datas.append(data)
        if not datas:
            return
        self.events += len(datas)
        try:
            chunks = json.loads(b"[" + b",".join(datas) + b"]") if len(datas) > 1 else [json.loads(datas[0])]
        except ValueError:
            chunks = None
        if chunks is None or len(chunks) != len(datas):
            chunks = []
            for data in datas:
                try:
                    chunks.append(json.loads(data))
                except ValueError:
                    text = data[:80].decode("utf-8", "replace")
                    self.error = self.error or f"an event that is not JSON: {text!r}"
                    return
        for chunk, data in zip(chunks, datas):
            if not isinstance(chunk, dict):
                text = data[:80].decode("utf-8", "replace")
                self.error = self.error or f"an event that is not a JSON object: {text!r}"
                return
            self._take(chunk)

    def _take(self, chunk: dict) -> None:
        if chunk.get("error"):  # vLLM and others report a failure mid-stream this way
            err = chunk["error"]
            self.error = str(err.get("message") if isinstance(err, dict) else err)[:300]
            return
        if chunk.get("usage"):
            self.usage = chunk  # usage_of reads chunk["usage"]
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            # vLLM >= 0.9 names it `reasoning`; DeepSeek and older servers `reasoning_content`.
            piece = delta.get("reasoning_content") or delta.get("reasoning")
            if piece:
                self.reasoning.append(piece)
            content = delta.get("content")
            if content:
                self.content.append(content)
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]

    def reply(self) -> ChatReply:
        """The assembled reply; ValueError (retried) when the stream was empty, failed or cut short."""
        if self.error:
            raise ValueError(f"the server reported an error mid-stream: {self.error}")
        if not self.events:
            raise ValueError("the stream was empty")
        if not (self.done or self.finish_reason):
            raise ValueError("the stream ended before the reply was complete")
        return ChatReply(content="".join(self.content), reasoning="".join(self.reasoning) or None,
                         usage=usage_of(self.usage or {}), finish_reason=self.finish_reason)


def _error_text(body: bytes) -> str:
    try:
        data = json.loads(body)
        err = data.get("error", data) if isinstance(data, dict) else data
        msg = err.get("message") if isinstance(err, dict) else None
        return str(msg or err)[:300]
    except (ValueError, AttributeError):
        return body[:300].decode("utf-8", "replace").strip()


class ChatAPI:
    """POST {base}/chat/completions for one model; retries per `chainforge.providers.retry`."""

    def __init__(self, client, model: str, name: str, key_env: str, max_retries: int,
                 counters: Counters, max_tokens: Optional[int] = None,
                 temperature: Optional[float] = None, limiter=None, stream: bool = True,
                 extra: Optional[dict] = None):
        self.client, self.model, self.name, self.key_env = client, model, name, key_env
        self.max_retries, self.counters, self.limiter = max_retries, counters, limiter
        self.max_tokens, self.temperature, self.stream = max_tokens, temperature, stream
        self.extra = dict(extra or {})  # further body fields: thinking, reasoning_effort

    def payload(self, messages: list[dict]) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "messages": messages, "stream": self.stream}
        if self.stream:
            body["stream_options"] = {"include_usage": True}  # usage in the last event
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens  # for the reasoner it counts the reasoning too
        if self.temperature is not None:
            body["temperature"] = self.temperature
        body.update(self.extra)
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
            stream = StreamReply() if self.stream else None
            try:
                resp = await self.client.post("/chat/completions", body, on_events=stream.feed_all if stream else None)
            except TransportError as exc:
                why, status = str(exc), None
            else:
                status, kind = resp.status, classify(resp.status)
                if kind == "ok" and resp.streamed:
                    try:
                        return stream.reply()
                    except ValueError as exc:
                        why = f"HTTP 200, but {exc}"
                elif kind == "ok":
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
