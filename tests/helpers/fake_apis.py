"""Real HTTP servers on 127.0.0.1 standing in for DeepSeek chat completions and Anthropic messages.

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
        self.requests: list[dict] = []  # {path, headers, json, t}
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
                line = await reader.readline()
                if not line.strip():
                    break
                method, path = line.decode("latin-1").split(" ")[:2]
                headers = {}
                while (h := await reader.readline()) not in (b"\r\n", b"\n", b""):
                    k, _, v = h.decode("latin-1").partition(":")
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

    async def _respond(self, method: str, path: str, headers: dict, body: bytes, writer, reader) -> bool:
        try:
            payload = json.loads(body or b"{}")
        except ValueError:
            payload = {}
        if self.record:
            self.requests.append({"path": path, "headers": headers, "json": payload, "t": time.monotonic()})
        if not self.authorised(headers):
            return await self._send(writer, 401, {"error": {"message": "invalid api key", "type": "auth"}})
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
        return await self._send(writer, int(status), {"error": {"message": f"fake {status}", "type": "fake"}},
                                headers_out)

    async def _send_events(self, writer, events: list[bytes], keepalives: int = 0) -> bool:
        """A streamed reply, chunked as SSE servers send it; `keepalives` comment lines first."""
        writer.write(self._head(200, None, "text/event-stream"))
        for _ in range(keepalives):
            writer.write(_chunk(b": keep-alive\n\n"))
            await writer.drain()
            await asyncio.sleep(max(self.latency, 0.02) / keepalives)
        writer.write(_chunk(b"".join(events)) + b"0\r\n\r\n")
        await writer.drain()
        return True

    def events(self, payload: dict, key: str) -> list[bytes]:
        """The SSE events of a streamed reply: deltas of `success`, then usage, then [DONE]."""
        full = self.success(payload, key)
        message = full["choices"][0]["message"]
        base = {"id": full["id"], "object": "chat.completion.chunk", "model": full.get("model")}

        def event(choices, usage=None) -> bytes:
            return b"data: " + json.dumps({**base, "choices": choices, "usage": usage}).encode() + b"\n\n"

        out = [event([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])]
        for field in ("reasoning_content", "content"):
            text = message.get(field) or ""
            for piece in _pieces(text):
                out.append(event([{"index": 0, "delta": {field: piece}, "finish_reason": None}]))
        out.append(event([{"index": 0, "delta": {}, "finish_reason": full["choices"][0]["finish_reason"]}]))
        out.append(event([], full["usage"]))
        out.append(b"data: [DONE]\n\n")
        return out

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
    """POST /chat/completions → a deepseek-reasoner reply (reasoning_content, content, usage)."""

    def __init__(self, latency: float = 0.0, record: bool = True, port: int = 0,
                 answer: Callable[[str], tuple[str, str]] = default_deepseek_answer, host: str = "127.0.0.1"):
        super().__init__(latency, record, port, host)
        self.answer = answer

    def match(self, payload: dict) -> str:
        users = [m.get("content", "") for m in payload.get("messages", []) if m.get("role") == "user"]
        return users[-1] if users else ""

    def success(self, payload: dict, prompt: str) -> dict:
        reasoning, content = self.answer(prompt)
        p, r, c = len(prompt.split()) + 8, len(reasoning.split()), len(content.split())
        return {
            "id": f"fake-{self.served}", "object": "chat.completion", "model": payload.get("model"),
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": content, "reasoning_content": reasoning}}],
            "usage": {"prompt_tokens": p, "completion_tokens": r + c, "total_tokens": p + r + c,
                      "prompt_cache_hit_tokens": 4, "prompt_cache_miss_tokens": p - 4,
                      "completion_tokens_details": {"reasoning_tokens": r}},
        }


class FakeAnthropic(FakeServer):
    """POST /v1/messages → a Messages API reply. Accepts `x-api-key` or `Authorization: Bearer`
    (the installed SDK 2.x sends the key as a Bearer token)."""

    def __init__(self, latency: float = 0.0, record: bool = True, port: int = 0,
                 answer: Callable[[str], str] = default_anthropic_answer):
        super().__init__(latency, record, port)
        self.answer = answer

    def authorised(self, headers: dict) -> bool:
        return super().authorised(headers) or headers.get("x-api-key") == self.api_key

    def match(self, payload: dict) -> str:
        msgs = payload.get("messages", [])
        content = msgs[-1].get("content", "") if msgs else ""
        if isinstance(content, list):
            content = "".join(b.get("text", "") for b in content if isinstance(b, dict))
        return content

    def plan_key(self, text: str) -> str:
        return next((k for k in self.plans if k in text), text)

    def success(self, payload: dict, text: str) -> dict:
        reply = self.answer(text)
        return {"id": f"msg_fake{self.served}", "type": "message", "role": "assistant",
                "model": payload.get("model"), "content": [{"type": "text", "text": reply}],
                "stop_reason": "end_turn", "stop_sequence": None,
                "usage": {"input_tokens": len(text.split()), "output_tokens": len(reply.split()),
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
            return await self._send(writer, 401, {"error": {"message": "invalid api key", "type": "auth"}})
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

    def _outcome(self, batch: dict, text: str) -> str:
        if batch["n"] in self.expire:
            return "expired"
        return next((f for k, f in self.item_faults.items() if k in text), "succeeded")

    def _result(self, batch: dict, request: dict) -> dict:
        text = self.match(request.get("params", {}))
        kind = self._outcome(batch, text)
        if kind == "succeeded":
            self.served += 1
            return {"custom_id": request["custom_id"],
                    "result": {"type": "succeeded", "message": self.success(request["params"], text)}}
        if kind == "errored":
            return {"custom_id": request["custom_id"], "result": {"type": "errored", "error": {
                "type": "error", "error": {"type": "invalid_request_error", "message": "fake error"}}}}
        return {"custom_id": request["custom_id"], "result": {"type": kind}}

    def _batch(self, bid: str) -> dict:
        batch = self.batches[bid]
        counts = dict.fromkeys(("processing", "succeeded", "errored", "canceled", "expired"), 0)
        if batch["ended"]:
            for r in batch["requests"]:
                counts[self._outcome(batch, self.match(r.get("params", {})))] += 1
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
