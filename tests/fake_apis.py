"""Real HTTP servers on 127.0.0.1 standing in for DeepSeek chat completions and Anthropic messages.

The real clients (collect's asyncio client, the anthropic SDK) are pointed at them by base URL.
Each server runs an asyncio HTTP/1.1 loop (keep-alive, Content-Length or chunked bodies) in a
background thread, records every request, and can be told to misbehave per prompt:

    with FakeDeepSeek(latency=0.05) as ds, FakeAnthropic() as an:
        ds.plan("What is 2+2?", "429:retry-after=1", "500", "ok")   # attempt 1, 2, 3
        env = {"DEEPSEEK_API_KEY": ds.api_key, "DEEPSEEK_BASE_URL": ds.url,
               "ANTHROPIC_API_KEY": an.api_key, "ANTHROPIC_BASE_URL": an.url}

Faults (one per attempt; attempts past the plan succeed): "ok"; a status code ("429", "500",
"503", "529", "402", "400", …) optionally with ":retry-after=N"; "empty" (200, empty body);
"nonjson" (200, an HTML page); "blank" (200 chunked, keep-alive blank lines before the JSON, as
DeepSeek does while a request queues); "drop" (headers and half the body, then the connection
closes). `server.always = "402"` applies a fault to every request until reset to None.

DeepSeek plans match the last user turn exactly; Anthropic plans match when their key is a
substring of the request's text (the expander prompt embeds the step).

`python tests/fake_apis.py deepseek --latency 0.2` serves one in the foreground (for the benchmark,
so the server does not share a GIL with the client) and prints `PORT <n>`.
"""

from __future__ import annotations

import asyncio
import collections
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

    def __init__(self, latency: float = 0.0, record: bool = True, port: int = 0):
        self.latency, self.record, self._port = latency, record, port
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
            asyncio.start_server(self._handle, "127.0.0.1", self._port, backlog=4096), self._loop).result()
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        async def shutdown():
            self._server.close()
            for w in list(self._writers):
                w.close()
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
        return f"http://127.0.0.1:{self.port}"

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
                if not await self._respond(method, path, headers, body, writer):
                    break
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    def authorised(self, headers: dict) -> bool:
        return headers.get("authorization") == f"Bearer {self.api_key}"

    async def _respond(self, method: str, path: str, headers: dict, body: bytes, writer) -> bool:
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
        if fault == "ok":
            self.served += 1
            return await self._send(writer, 200, self.success(payload, key))
        if fault == "empty":
            return await self._send_raw(writer, 200, b"")
        if fault == "nonjson":
            return await self._send_raw(writer, 200, b"<html><body>502 Bad Gateway</body></html>", "text/html")
        if fault == "blank":
            return await self._send_blank_lines(writer, self.success(payload, key))
        if fault == "drop":
            data = json.dumps(self.success(payload, key)).encode()
            writer.write(self._head(200, len(data)) + data[:len(data) // 2])
            await writer.drain()
            return False
        status, _, extra = fault.partition(":")
        headers_out = {}
        if extra.startswith("retry-after="):
            headers_out["Retry-After"] = extra.split("=", 1)[1]
        return await self._send(writer, int(status), {"error": {"message": f"fake {status}", "type": "fake"}},
                                headers_out)

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


class FakeDeepSeek(FakeServer):
    """POST /chat/completions → a deepseek-reasoner reply (reasoning_content, content, usage)."""

    def __init__(self, latency: float = 0.0, record: bool = True, port: int = 0,
                 answer: Callable[[str], tuple[str, str]] = default_deepseek_answer):
        super().__init__(latency, record, port)
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
