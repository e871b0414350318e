"""Real HTTP servers on 127.0.0.1 standing in for DeepSeek chat completions and Anthropic messages,
answering as those APIs do today (2026-12-06; docs/collect-http.md and docs/grounding.md cite the
pages): DeepSeek V4 (`deepseek-flash`, `deepseek-v4-pro`; the `thinking` and `reasoning_effort`
fields; 400 "Model Not Exist" for the retired `deepseek-chat` / `deepseek-reasoner`; `GET /models`)
and Claude 5.x (adaptive thinking on by default, a thinking block before the text that counts
against `max_tokens`; 400 for a non-default temperature/top_p/top_k, for thinking budgets, and for
`thinking: disabled` where the model refuses it; 404 for an unknown model; `GET /v1/models` with
each model's capabilities). `FakeOpenAI` is an OpenAI-compatible server (vLLM-like) whose model
names are its own.

The real clients (collect's aiohttp client, the anthropic SDK) are pointed at them by base URL.
Each server runs an asyncio HTTP/1.1 loop on raw sockets (keep-alive, Content-Length or chunked
bodies, `Connection: close` honoured) in a background thread, records every request, and can be
told to misbehave per prompt. A request with `"stream": true` gets server-sent events, as DeepSeek
sends them (`reasoning_content` and `content` deltas, usage in the last event, `data: [DONE]`):

    with FakeDeepSeek(latency=0.05) as ds, FakeAnthropic() as an:
        ds.plan("What is 2+2?", "429:retry-after=1", "500", "ok")   # attempt 1, 2, 3
        env = {"DEEPSEEK_API_KEY": ds.api_key, "DEEPSEEK_BASE_URL": ds.url,
               "ANTHROPIC_API_KEY": an.api_key, "ANTHROPIC_BASE_URL": an.url}

Faults (one per attempt; attempts past the plan succeed): "ok"; a status code ("429", "500",
"503", "529", "402", "400", …) optionally with ":retry-after=N"; "empty" (200, empty body);
"nonjson" (200, an HTML page); "blank" (200 chunked, keep-alive blank lines — `: keep-alive`
comments when streaming — before the reply, as DeepSeek does while a request queues); "drop"
(headers and half the body, then the connection closes); "gzip" (the reply gzip-encoded).
Hostile ones: "stall" (headers and the first event, then silence until the client hangs up);
"trickle" (one byte of keep-alive every `trickle_s`, for ever); "badlength" (`Content-Length: 12x`);
"badchunk" (a chunk size that is not hex); "longheader" (a 70 KiB header line); "huge" (a streamed
reply padded past `huge_bytes`). `server.always = "402"` applies a fault to every request until
reset to None.

DeepSeek plans match the last user turn exactly; Anthropic plans match when their key is a
substring of the request's text (the expander prompt embeds the step).

`python tests/helpers/fake_apis.py deepseek --latency 0.2` serves one in the foreground (for the
benchmark, so the server does not share a GIL with the client) and prints `PORT <n>`.

`RecordingProxy` is a plain HTTP forward proxy on 127.0.0.1 that records each request it relays.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import gzip
import json
import threading
import time
from typing import Callable, Optional


def default_deepseek_answer(prompt: str) -> tuple[str, str]:
    """(reasoning_content, content): three paragraphs, the middle one hedged, answer 42."""
    return (f"First, restate the question: {prompt}\n\n"
            f"Maybe the result is 6 times 7, but I am not sure about that.\n\n"
            f"Computing 6 * 7 gives 42, so the answer is 42.", "42")


def default_anthropic_answer(text: str) -> str:
    return "The step is valid: 6 * 7 = 42 by the multiplication table, so the hedge is unnecessary."


class FakeServer:
    api_key = "sk-test-fake-key-0123456789"

    huge_bytes = 1 << 20
    trickle_s = 0.05

    def __init__(self, latency: float = 0.0, record: bool = True, port: int = 0, host: str = "127.0.0.1"):
        self.latency, self.record, self._port, self.host = latency, record, port, host
        self.basic_auth: Optional[tuple[str, str]] = None  # (user, password) accepted besides the key
        self.ignore_stream = False  # answer `"stream": true` with one JSON body, as some servers do
        self.requests: list[dict] = []  # {path, headers, json, t}: the POSTs (chat, messages)
        self.lookups: list[dict] = []  # {path, headers}: the GETs (model lists, batch polls)
        self.models_status: Optional[int] = None  # e.g. 404/405: a server without a models endpoint
        self.attempts: collections.Counter = collections.Counter()
        self.plans: dict[str, list[str]] = {}
        self.always: Optional[str] = None
        self.served = 0
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._thread: Optional[threading.Thread] = None
        self._server = None
        self._writers: set = set()

    # ---- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> "FakeServer":
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, self.host, self._port, backlog=4096), self._loop).result()
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        async def shutdown():
            self._server.close()
            for w in list(self._writers):
                w.close()
            pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._loop:
            asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(5)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
            self._loop = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def plan(self, key: str, *faults: str) -> None:
        self.plans[key] = list(faults)

    # ---- HTTP ----------------------------------------------------------------------------------------
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                try:  # the request line and headers in one read
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.LimitOverrunError:
                    break
                lines = head.decode("latin-1").split("\r\n")
                if not lines[0].strip():
                    break
                method, path = lines[0].split(" ")[:2]
                headers = {}
                for h in lines[1:]:
                    if h:
                        k, _, v = h.partition(":")
                        headers[k.strip().lower()] = v.strip()
                body = await reader.readexactly(int(headers.get("content-length", 0)))
                if not await self._respond(method, path, headers, body, writer, reader):
                    break
                if headers.get("connection", "").lower() == "close":
                    break
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    def authorised(self, headers: dict) -> bool:
        if self.basic_auth:
            token = base64.b64encode(":".join(self.basic_auth).encode()).decode()
            if headers.get("authorization") == f"Basic {token}":
                return True
        return headers.get("authorization") == f"Bearer {self.api_key}"

    def error(self, status: int, message: str, kind: str = "invalid_request_error") -> dict:
        """An error body as this API shapes it."""
        return {"error": {"message": message, "type": kind, "param": None, "code": kind}}

    def refuse(self, payload: dict) -> Optional[tuple[int, dict]]:
        """(status, body) for a request this API refuses (a model it does not serve, a parameter it
        rejects), else None."""
        return None

    def models(self) -> list[dict]:
        """The entries of the model list."""
        return []

    async def _lookup(self, path: str, headers: dict, writer) -> bool:
        """GET: the model list (`…/models`), as the API lists it."""
        self.lookups.append({"path": path, "headers": headers, "t": time.monotonic()})
        if not self.authorised(headers):
            return await self._send(writer, 401, self.error(401, "invalid api key", "authentication_error"))
        if self.models_status is not None or not path.split("?")[0].endswith("/models"):
            status = self.models_status or 404
            return await self._send(writer, status, self.error(status, "not found", "not_found_error"))
        return await self._send(writer, 200, {"object": "list", "data": self.models()})

    async def _respond(self, method: str, path: str, headers: dict, body: bytes, writer, reader) -> bool:
        if method == "GET":
            return await self._lookup(path, headers, writer)
        try:
            payload = json.loads(body or b"{}")
        except ValueError:
            payload = {}
        if self.record:
            self.requests.append({"path": path, "headers": headers, "json": payload, "t": time.monotonic()})
        if not self.authorised(headers):
            return await self._send(writer, 401, self.error(401, "invalid api key", "authentication_error"))
        refused = self.refuse(payload)
        if refused is not None:
            return await self._send(writer, *refused)
        key = self.match(payload)
        fault = self.always
        if fault is None:
            n = self.attempts[key]
            self.attempts[key] += 1
            plan = self.plans.get(self.plan_key(key), [])
            fault = plan[n] if n < len(plan) else "ok"
        if self.latency and fault != "blank":
            await asyncio.sleep(self.latency)
        stream = bool(payload.get("stream")) and not self.ignore_stream
        if fault == "ok":
            self.served += 1
            if stream:
                return await self._send_events(writer, self.events(payload, key))
            return await self._send(writer, 200, self.success(payload, key))
        if fault == "empty":
            return await self._send_raw(writer, 200, b"")
        if fault == "nonjson":
            return await self._send_raw(writer, 200, b"<html><body>502 Bad Gateway</body></html>", "text/html")
        if fault == "blank":
            if stream:
                return await self._send_events(writer, self.events(payload, key), keepalives=3)
            return await self._send_blank_lines(writer, self.success(payload, key))
        if fault == "gzip":
            self.served += 1
            if stream:
                data, ctype = b"".join(self.events(payload, key)), "text/event-stream"
            else:
                data, ctype = json.dumps(self.success(payload, key)).encode(), "application/json"
            packed = gzip.compress(data)
            writer.write(self._head(200, len(packed), ctype, {"Content-Encoding": "gzip"}) + packed)
            await writer.drain()
            return True
        if fault == "drop":
            data = b"".join(self.events(payload, key)) if stream else json.dumps(self.success(payload, key)).encode()
            writer.write(self._head(200, len(data), "text/event-stream" if stream else "application/json")
                         + data[:len(data) // 2])
            await writer.drain()
            return False
        if fault in HOSTILE:
            await HOSTILE[fault](self, writer, reader, self.events(payload, key))
            return False
        status, _, extra = fault.partition(":")
        headers_out = {}
        if extra.startswith("retry-after="):
            headers_out["Retry-After"] = extra.split("=", 1)[1]
        return await self._send(writer, int(status), self.error(int(status), f"fake {status}", "fake"), headers_out)

    async def _send_events(self, writer, events: list[bytes], keepalives: int = 0) -> bool:
        """A streamed reply, chunked as SSE servers send it; `keepalives` comment lines first. A reply
        that is all there goes out in one write: headers and events (one send, not two)."""
        head = self._head(200, None, "text/event-stream")
        for _ in range(keepalives):
            writer.write(head + _chunk(b": keep-alive\n\n"))
            head = b""
            await writer.drain()
            await asyncio.sleep(max(self.latency, 0.02) / keepalives)
        writer.write(head + _chunk(b"".join(events)) + b"0\r\n\r\n")
        await writer.drain()
        return True

    def events(self, payload: dict, key: str) -> list[bytes]:
        """The SSE events of a streamed reply: deltas of `success`, then usage, then [DONE]."""
        full = self.success(payload, key)
        message = full["choices"][0]["message"]
        # Every chunk is `{"id":…,"object":"chat.completion.chunk","model":…,"choices":[…],"usage":…}`;
        # the parts around a delta are serialised once per reply, the delta's text once per piece.
        base = json.dumps({"id": full["id"], "object": "chat.completion.chunk", "model": full.get("model")},
                          separators=(",", ":"))[:-1]
        opening = f'data: {base},"choices":[{{"index":0,"delta":{{'
        closing = '},"finish_reason":null}],"usage":null}\n\n'

        def event(choices, usage=None) -> str:
            body = json.dumps({"choices": choices, "usage": usage}, separators=(",", ":"))
            return f"data: {base},{body[1:]}\n\n"

        out = [opening + '"role":"assistant","content":""' + closing]
        for field in ("reasoning_content", "content"):
            head = f'{opening}"{field}":'
            out.extend(head + json.dumps(piece) + closing for piece in _pieces(message.get(field) or ""))
        out.append(event([{"index": 0, "delta": {}, "finish_reason": full["choices"][0]["finish_reason"]}]))
        out.append(event([], full["usage"]))
        out.append("data: [DONE]\n\n")
        return [e.encode() for e in out]

    def _head(self, status: int, length: Optional[int], ctype: str = "application/json",
              extra: Optional[dict] = None) -> bytes:
        lines = [f"HTTP/1.1 {status} {'OK' if status == 200 else 'Error'}", f"Content-Type: {ctype}"]
        lines.append(f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked")
        lines += [f"{k}: {v}" for k, v in (extra or {}).items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def _send(self, writer, status: int, obj, extra: Optional[dict] = None) -> bool:
        data = json.dumps(obj).encode()
        writer.write(self._head(status, len(data), extra=extra) + data)
        await writer.drain()
        return True

    async def _send_raw(self, writer, status: int, data: bytes, ctype: str = "application/json") -> bool:
        writer.write(self._head(status, len(data), ctype) + data)
        await writer.drain()
        return True

    async def _send_blank_lines(self, writer, obj, lines: int = 3) -> bool:
        writer.write(self._head(200, None))
        for _ in range(lines):
            writer.write(b"1\r\n\n\r\n")
            await writer.drain()
            await asyncio.sleep(max(self.latency, 0.02) / lines)
        data = json.dumps(obj).encode()
        writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n0\r\n\r\n")
        await writer.drain()
        return True

    # ---- per-API parts -------------------------------------------------------------------------------
    def match(self, payload: dict) -> str:
        raise NotImplementedError

    def plan_key(self, key: str) -> str:
        return key

    def success(self, payload: dict, key: str) -> dict:
        raise NotImplementedError


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def _pieces(text: str, size: int = 40) -> list[str]:
    return [text[i:i + size] for i in range(0, len(text), size)]


async def _until_hung_up(reader, seconds: float = 60.0) -> None:
    try:
        await asyncio.wait_for(reader.read(), seconds)
    except (asyncio.TimeoutError, ConnectionError):
        pass


async def _stall(server, writer, reader, events) -> None:
    writer.write(server._head(200, None, "text/event-stream") + _chunk(events[0]))
    await writer.drain()
    await _until_hung_up(reader)


async def _trickle(server, writer, reader, events) -> None:
    writer.write(server._head(200, None, "text/event-stream"))
    try:
        for _ in range(int(60 / server.trickle_s)):
            writer.write(_chunk(b":"))
            await writer.drain()
            await asyncio.sleep(server.trickle_s)
    except ConnectionError:
        pass


async def _raw(server, writer, reader, data: bytes) -> None:
    writer.write(data)
    await writer.drain()
    await _until_hung_up(reader, 10)


async def _bad_length(server, writer, reader, events) -> None:
    await _raw(server, writer, reader, b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                       b"Content-Length: 12x\r\n\r\n{\"a\": 1}")


async def _bad_chunk(server, writer, reader, events) -> None:
    await _raw(server, writer, reader, server._head(200, None, "text/event-stream") + b"zz\r\n" + events[0])


async def _long_header(server, writer, reader, events) -> None:
    junk = b"X-Padding: " + b"a" * (70 * 1024) + b"\r\n"
    await _raw(server, writer, reader, b"HTTP/1.1 200 OK\r\n" + junk + b"Content-Length: 2\r\n\r\n{}")


async def _huge(server, writer, reader, events) -> None:
    writer.write(server._head(200, None, "text/event-stream"))
    pad = b": " + b"x" * 65533 + b"\n"
    try:
        for _ in range(server.huge_bytes // len(pad) + 2):
            writer.write(_chunk(pad))
            await writer.drain()
        writer.write(_chunk(b"".join(events)) + b"0\r\n\r\n")
        await writer.drain()
    except ConnectionError:
        return
    await _until_hung_up(reader, 10)


HOSTILE = {"stall": _stall, "trickle": _trickle, "badlength": _bad_length, "badchunk": _bad_chunk,
           "longheader": _long_header, "huge": _huge}


class FakeDeepSeek(FakeServer):
    """DeepSeek's chat completions as of 2026-12-06 (api-docs.deepseek.com): POST /chat/completions
    and GET /models.

    - models: `deepseek-flash` and `deepseek-v4-pro` are listed; the legacy `deepseek-v4-flash` and
      `deepseek-v4-flash-vision-exp` are accepted (answered by Flash) but not listed; any other name,
      the retired `deepseek-chat` / `deepseek-reasoner` included, is 400 "Model Not Exist";
    - `thinking: {type: enabled|disabled}` (enabled by default): enabled, the chain of thought comes
      as `reasoning_content` (streamed as `delta.reasoning_content`); disabled, only `content`;
      another type is a 400. `reasoning_effort` takes low/high/max (and the names DeepSeek maps onto
      them); `max` thinks longer. temperature and the penalties are accepted and ignored in thinking mode;
    - usage: prompt_tokens, completion_tokens (reasoning included), total_tokens,
      prompt_cache_hit_tokens, prompt_cache_miss_tokens, completion_tokens_details.reasoning_tokens.
    """

    MODELS = ("deepseek-flash", "deepseek-v4-pro")
    LEGACY = ("deepseek-v4-flash", "deepseek-v4-flash-vision-exp")
    EFFORTS = ("minimal", "low", "medium", "high", "xhigh", "max", "ultra")

    def __init__(self, latency: float = 0.0, record: bool = True, port: int = 0,
                 answer: Callable[[str], tuple[str, str]] = default_deepseek_answer, host: str = "127.0.0.1"):
        super().__init__(latency, record, port, host)
        self.answer = answer

    def models(self) -> list[dict]:
        return [{"id": m, "object": "model", "owned_by": "deepseek"} for m in self.MODELS]

    def refuse(self, payload: dict) -> Optional[tuple[int, dict]]:
        if payload.get("model") not in self.MODELS + self.LEGACY:
            return 400, self.error(400, "Model Not Exist")
        thinking = payload.get("thinking")
        if thinking is not None and (not isinstance(thinking, dict) or thinking.get("type") not in ("enabled",
                                                                                                     "disabled")):
            return 400, self.error(400, f"invalid thinking type: {thinking!r}")
        effort = payload.get("reasoning_effort")
        if effort is not None and effort not in self.EFFORTS:
            return 400, self.error(400, f"invalid reasoning_effort: {effort!r}")
        return None

    def match(self, payload: dict) -> str:
        users = [m.get("content", "") for m in payload.get("messages", []) if m.get("role") == "user"]
        return users[-1] if users else ""

    def thinks(self, payload: dict) -> bool:
        return (payload.get("thinking") or {}).get("type", "enabled") == "enabled"

    def success(self, payload: dict, prompt: str) -> dict:
        reasoning, content = self.answer(prompt)
        if self.thinks(payload):
            if payload.get("reasoning_effort") in ("max", "ultra"):
                reasoning += "\n\nChecking once more: 7 * 6 = 42 as well."
            message = {"role": "assistant", "content": content, "reasoning_content": reasoning}
        else:  # no chain of thought: the working, if any, is in the answer
            reasoning, message = "", {"role": "assistant", "content": f"{content}"}
        p, r, c = len(prompt.split()) + 8, len(reasoning.split()), len(message["content"].split())
        return {
            "id": f"fake-{self.served}", "object": "chat.completion", "model": payload.get("model"),
            "choices": [{"index": 0, "finish_reason": "stop", "message": message}],
            "usage": {"prompt_tokens": p, "completion_tokens": r + c, "total_tokens": p + r + c,
                      "prompt_cache_hit_tokens": 4, "prompt_cache_miss_tokens": p - 4,
                      "completion_tokens_details": {"reasoning_tokens": r}},
        }


class FakeOpenAI(FakeDeepSeek):
    """An OpenAI-compatible server (vLLM-like) whose model names are its own (`served`): GET /models
    lists them, another name is a 404 as vLLM answers it. It takes no `thinking` field of its own:
    the fields are ignored, the chain of thought comes as `reasoning_content`."""

    def __init__(self, served: tuple = ("r1", "r1-distill"), **kw):
        super().__init__(**kw)
        self.served_models = tuple(served)

    def models(self) -> list[dict]:
        return [{"id": m, "object": "model", "owned_by": "vllm"} for m in self.served_models]

    def refuse(self, payload: dict) -> Optional[tuple[int, dict]]:
        if payload.get("model") not in self.served_models:
            return 404, {"error": {"message": f"The model `{payload.get('model')}` does not exist.",
                                   "type": "NotFoundError", "param": "model", "code": 404}}
        return None

    def thinks(self, payload: dict) -> bool:
        return True


# Claude models as platform.claude.com describes them (2026-12-06) and as the Models API reports
# their capabilities: thinking "adaptive" (on by default, `effort` sets its depth; "always" = cannot
# be turned off), the thinking types a request may send (any other is a 400), whether the effort
# parameter is taken, whether a non-default temperature/top_p/top_k is a 400, the default effort.
CLAUDE = {
    "claude-sonnet-5-5": dict(name="Claude Sonnet 5.5", adaptive=True, types=("adaptive", "between_tools"),
                              effort=True, sampling=False, default_effort="high"),
    "claude-opus-5-5": dict(name="Claude Opus 5.5", adaptive=True, types=("adaptive",), effort=True,
                            sampling=False, default_effort="medium"),
    "claude-haiku-5-5": dict(name="Claude Haiku 5.5", adaptive=True, types=("adaptive",), effort=True,
                             sampling=False, default_effort="medium"),
    "claude-fable-5-1": dict(name="Claude Fable 5.1", adaptive=True, types=("adaptive",), effort=True,
                             sampling=False, default_effort="high"),
    "claude-sonnet-5": dict(name="Claude Sonnet 5", adaptive=True, types=("adaptive", "disabled"), effort=True,
                            sampling=False, default_effort="high", lifecycle="active"),
    "claude-opus-5": dict(name="Claude Opus 5", adaptive=True, types=("adaptive", "disabled"), effort=True,
                          sampling=False, default_effort="high"),
    "claude-haiku-4-5-20251001": dict(name="Claude Haiku 4.5", adaptive=False, types=("enabled", "disabled"),
                                      effort=False, sampling=True, default_effort=None, alias="claude-haiku-4-5"),
    "claude-sonnet-4-6": dict(name="Claude Sonnet 4.6", adaptive=False, types=("adaptive", "enabled", "disabled"),
                              effort=True, sampling=True, default_effort="high"),
}
# Output tokens a thinking block takes at each effort (what the fake spends before the text).
THINKING_TOKENS = {"low": 60, "medium": 350, "high": 800, "xhigh": 1100, "max": 1500}


def _capabilities(spec: dict) -> dict:
    yes, no = {"supported": True}, {"supported": False}
    types = {t: (yes if t in spec["types"] else no) for t in ("adaptive", "between_tools", "disabled", "enabled")}
    effort = {level: (yes if spec["effort"] else no) for level in ("low", "medium", "high", "xhigh", "max")}
    return {"batch": yes, "thinking": {"supported": True, "types": types},
            "effort": {"supported": spec["effort"], **effort}}


class FakeAnthropic(FakeServer):
    """The Messages API (POST /v1/messages) and the Models API (GET /v1/models, GET
    /v1/models/{id}) as Claude 5.x answers them; see `CLAUDE`. Accepts `x-api-key` or
    `Authorization: Bearer` (the installed SDK 2.x sends the key as a Bearer token).

    A model that thinks (adaptive by default, or `thinking` sent) answers with a thinking block
    first, `THINKING_TOKENS[effort]` long, then the text; both count against `max_tokens`. When
    thinking uses it all up, the reply is the thinking block alone with `stop_reason: max_tokens`.
    `models_listed` limits what GET /v1/models shows; `claude` maps more ids to specs."""

    def __init__(self, latency: float = 0.0, record: bool = True, port: int = 0,
                 answer: Callable[[str], str] = default_anthropic_answer):
        super().__init__(latency, record, port)
        self.answer = answer
        self.claude = dict(CLAUDE)
        self.shapes: list[list[str]] = []  # the content block types of each reply, in order

    def error(self, status: int, message: str, kind: str = "invalid_request_error") -> dict:
        return {"type": "error", "error": {"type": kind, "message": message}}

    def authorised(self, headers: dict) -> bool:
        return super().authorised(headers) or headers.get("x-api-key") == self.api_key

    def spec(self, model: str) -> Optional[tuple[str, dict]]:
        for mid, spec in self.claude.items():
            if model in (mid, spec.get("alias")):
                return mid, spec
        return None

    def info(self, mid: str, spec: dict) -> dict:
        return {"type": "model", "id": mid, "display_name": spec["name"], "created_at": "2026-06-30T00:00:00Z",
                "lifecycle": spec.get("lifecycle", "active"), "capabilities": _capabilities(spec),
                "max_input_tokens": 1_000_000, "max_tokens": 128_000}

    async def _lookup(self, path: str, headers: dict, writer) -> bool:
        parts = path.split("?")[0].rstrip("/").split("/")
        if parts[:3] != ["", "v1", "models"] or self.models_status is not None or not self.authorised(headers):
            return await super()._lookup(path, headers, writer)
        self.lookups.append({"path": path, "headers": headers, "t": time.monotonic()})
        if len(parts) == 4:
            found = self.spec(parts[3])
            if found is None:
                return await self._send(writer, 404, self.error(404, f"model: {parts[3]}", "not_found_error"))
            return await self._send(writer, 200, self.info(*found))
        data = [self.info(mid, spec) for mid, spec in self.claude.items()]
        return await self._send(writer, 200, {"data": data, "has_more": False, "first_id": data[0]["id"],
                                              "last_id": data[-1]["id"]})

    def refuse(self, payload: dict) -> Optional[tuple[int, dict]]:
        model = payload.get("model")
        found = self.spec(str(model))
        if found is None:
            return 404, self.error(404, f"model: {model}", "not_found_error")
        _, spec = found
        if not spec["sampling"]:
            for name, default in (("temperature", 1.0), ("top_p", 1.0), ("top_k", None)):
                if name in payload and payload[name] != default:
                    return 400, self.error(400, f"`{name}` is not supported for this model; remove it")
        kind = (payload.get("thinking") or {}).get("type")
        if kind is not None and kind not in spec["types"]:
            return 400, self.error(400, f'"thinking.type.{kind}" is not supported for this model. Use '
                                        f'"thinking.type.adaptive" and "output_config.effort" to control thinking '
                                        f'behavior.')
        if (payload.get("output_config") or {}).get("effort") is not None and not spec["effort"]:
            return 400, self.error(400, "effort is not supported for this model")
        return None

    def match(self, payload: dict) -> str:
        msgs = payload.get("messages", [])
        content = msgs[-1].get("content", "") if msgs else ""
        if isinstance(content, list):
            content = "".join(b.get("text", "") for b in content if isinstance(b, dict))
        return content

    def plan_key(self, text: str) -> str:
        return next((k for k in self.plans if k in text), text)

    def thinking_tokens(self, payload: dict) -> int:
        found = self.spec(str(payload.get("model")))
        spec = found[1] if found else {"adaptive": False}
        kind = (payload.get("thinking") or {}).get("type")
        if kind in ("disabled", "between_tools") or (kind is None and not spec["adaptive"]):
            return 0
        if kind == "enabled":
            return int(payload["thinking"].get("budget_tokens", 1024))
        effort = (payload.get("output_config") or {}).get("effort") or spec.get("default_effort") or "high"
        return THINKING_TOKENS[effort]

    def success(self, payload: dict, text: str) -> dict:
        reply = self.answer(text)
        limit = int(payload.get("max_tokens", 0))
        thought, words = self.thinking_tokens(payload), reply.split()
        content, stop = [], "end_turn"
        if thought:
            content.append({"type": "thinking", "thinking": "Let me check the step against the question.",
                            "signature": f"sig-fake-{self.served}"})
        if thought >= limit:
            thought, words, stop = limit, [], "max_tokens"
        elif thought + len(words) > limit:
            words, stop = words[:limit - thought], "max_tokens"
        if words:
            content.append({"type": "text", "text": " ".join(words)})
        self.shapes.append([b["type"] for b in content])
        return {"id": f"msg_fake{self.served}", "type": "message", "role": "assistant",
                "model": payload.get("model"), "content": content, "stop_reason": stop, "stop_sequence": None,
                "usage": {"input_tokens": len(text.split()), "output_tokens": thought + len(words),
                          "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0}}


class FakeAnthropicBatches(FakeAnthropic):
    """FakeAnthropic plus the Message Batches endpoints, as the anthropic SDK calls them:
    POST /v1/messages/batches, GET /v1/messages/batches/{id}, GET /v1/messages/batches/{id}/results
    (JSON Lines). Each item is answered like a synchronous /v1/messages request (same text, same
    usage). A batch answers `in_progress` to its first `polls_to_end` retrievals, then `ended`
    (never while `hold` is set). `expire` holds batch numbers (0 = the first created) whose every
    item ends `expired`; `item_faults` maps a substring of an item's text to "errored" or
    "canceled". `created` lists the batch ids in creation order."""

    def __init__(self, latency: float = 0.0, record: bool = True, port: int = 0,
                 answer: Callable[[str], str] = default_anthropic_answer):
        super().__init__(latency, record, port, answer)
        self.batches: dict[str, dict] = {}
        self.created: list[str] = []
        self.polls_to_end = 1
        self.hold = False
        self.expire: set[int] = set()
        self.item_faults: dict[str, str] = {}

    async def _respond(self, method: str, path: str, headers: dict, body: bytes, writer, reader) -> bool:
        parts = path.split("?")[0].rstrip("/").split("/")
        if parts[:4] != ["", "v1", "messages", "batches"]:
            return await super()._respond(method, path, headers, body, writer, reader)
        try:
            payload = json.loads(body or b"{}")
        except ValueError:
            payload = {}
        if self.record:
            self.requests.append({"path": path, "headers": headers, "json": payload, "t": time.monotonic(),
                                  "method": method})
        if not self.authorised(headers):
            return await self._send(writer, 401, self.error(401, "invalid api key", "authentication_error"))
        if method == "POST" and len(parts) == 4:
            bid = f"msgbatch_fake{len(self.created)}"
            self.batches[bid] = {"n": len(self.created), "requests": payload.get("requests", []), "polls": 0,
                                 "ended": False}
            self.created.append(bid)
            return await self._send(writer, 200, self._batch(bid))
        batch = self.batches.get(parts[4]) if len(parts) > 4 else None
        if batch is None:
            return await self._send(writer, 404, {"error": {"message": "no such batch", "type": "not_found"}})
        if method == "GET" and len(parts) == 5:
            batch["polls"] += 1
            if not self.hold and batch["polls"] > self.polls_to_end:
                batch["ended"] = True
            return await self._send(writer, 200, self._batch(parts[4]))
        if method == "GET" and len(parts) == 6 and parts[5] == "results" and batch["ended"]:
            lines = b"".join(json.dumps(self._result(batch, r)).encode() + b"\n" for r in batch["requests"])
            return await self._send_raw(writer, 200, lines, "application/binary")
        return await self._send(writer, 404, {"error": {"message": "not found", "type": "not_found"}})

    def _outcome(self, batch: dict, text: str, params: Optional[dict] = None) -> str:
        if batch["n"] in self.expire:
            return "expired"
        if params is not None and self.refuse(params) is not None:
            return "errored"  # the API checks each item's params as it would a /v1/messages request
        return next((f for k, f in self.item_faults.items() if k in text), "succeeded")

    def _result(self, batch: dict, request: dict) -> dict:
        text = self.match(request.get("params", {}))
        kind = self._outcome(batch, text, request.get("params", {}))
        if kind == "succeeded":
            self.served += 1
            return {"custom_id": request["custom_id"],
                    "result": {"type": "succeeded", "message": self.success(request["params"], text)}}
        if kind == "errored":
            refused = self.refuse(request.get("params", {}))
            error = refused[1] if refused else self.error(400, "fake error")
            return {"custom_id": request["custom_id"], "result": {"type": "errored", "error": error}}
        return {"custom_id": request["custom_id"], "result": {"type": kind}}

    def _batch(self, bid: str) -> dict:
        batch = self.batches[bid]
        counts = dict.fromkeys(("processing", "succeeded", "errored", "canceled", "expired"), 0)
        if batch["ended"]:
            for r in batch["requests"]:
                counts[self._outcome(batch, self.match(r.get("params", {})), r.get("params", {}))] += 1
        else:
            counts["processing"] = len(batch["requests"])
        return {"id": bid, "type": "message_batch", "processing_status": "ended" if batch["ended"] else "in_progress",
                "request_counts": counts, "created_at": "2026-01-01T00:00:00Z", "expires_at": "2026-01-02T00:00:00Z",
                "ended_at": "2026-01-01T00:10:00Z" if batch["ended"] else None, "archived_at": None,
                "cancel_initiated_at": None,
                "results_url": f"{self.url}/v1/messages/batches/{bid}/results" if batch["ended"] else None}


class RecordingProxy:
    """A plain-HTTP forward proxy on 127.0.0.1: records each request line (`requests`, absolute
    URIs as clients send them to a proxy) and relays it to the origin, one request per connection."""

    def __init__(self):
        self.requests: list[str] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def __enter__(self) -> "RecordingProxy":
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, "127.0.0.1", 0), self._loop).result()
        self.port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        return self

    def __exit__(self, *exc) -> None:
        async def shutdown():
            self._server.close()
        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    async def _handle(self, reader, writer) -> None:
        from urllib.parse import urlsplit

        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, target, version = lines[0].split(" ")
            self.requests.append(f"{method} {target}")
            headers = [h for h in lines[1:] if h and not h.lower().startswith(("connection:", "proxy-"))]
            length = next((int(h.split(":", 1)[1]) for h in headers if h.lower().startswith("content-length:")), 0)
            body = await reader.readexactly(length)
            url = urlsplit(target)
            up_reader, up_writer = await asyncio.open_connection(url.hostname, url.port or 80)
            path = url.path + (f"?{url.query}" if url.query else "")
            up_writer.write(f"{method} {path} {version}\r\n".encode() + "\r\n".join(headers + ["Connection: close"]).encode()
                            + b"\r\n\r\n" + body)
            await up_writer.drain()
            reply_head = await up_reader.readuntil(b"\r\n\r\n")
            kept = [h for h in reply_head.decode("latin-1").split("\r\n") if h and not h.lower().startswith("connection:")]
            writer.write("\r\n".join(kept + ["Connection: close"]).encode() + b"\r\n\r\n")
            while data := await up_reader.read(65536):
                writer.write(data)
                await writer.drain()
            up_writer.close()
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            writer.close()


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Serve a fake API in the foreground.")
    parser.add_argument("api", choices=["deepseek", "anthropic"])
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    cls = FakeDeepSeek if args.api == "deepseek" else FakeAnthropic
    server = cls(latency=args.latency, record=False, port=args.port).start()
    print(f"PORT {server.port}", flush=True)
    threading.Event().wait()  # until SIGTERM/SIGKILL


if __name__ == "__main__":
    main()
