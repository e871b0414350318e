"""A small HTTP/1.1 client on plain asyncio streams, for JSON POSTs to chat-completion APIs.

Why not httpx: measured on a 2-core machine against a loopback server answering in 200 ms, one
httpx 0.28 AsyncClient reached 0.87 of the ideal rate with 32 connections but 0.17 with 64 and 0.07
with 128 (its pool degrades); httpx2 2.16 reached 0.72 with 128; these streams 0.95.
`scripts/bench_collect.py --client asyncio|httpx|httpx2` measures it again.

What it does: one keep-alive connection per request in flight (an idle pool, no cap: the caller's
concurrency is the cap), TLS for https, `Content-Length`, chunked and read-until-close bodies.
DeepSeek holds a queued request open by sending blank lines before the JSON body; those arrive as
part of the body and are stripped by the JSON parse (`json.loads` skips leading whitespace).
A reused idle connection that the server had already closed is retried once on a fresh one before
the request counts as failed (the request never reached the server).
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from dataclasses import dataclass, field
from typing import Optional
from urllib.parse import urlsplit

CONNECT_TIMEOUT_S = 30.0
# The longest silence we accept while waiting on a response: reasoner requests queue for minutes,
# but DeepSeek sends a blank line now and then while they do, and each one resets this.
READ_TIMEOUT_S = 600.0


class TransportError(Exception):
    """The request got no complete response: refused, timed out, or dropped mid-response."""


@dataclass
class Response:
    status: int
    headers: dict[str, str] = field(default_factory=dict)  # lower-case names
    body: bytes = b""


@dataclass(frozen=True)
class Endpoint:
    scheme: str
    host: str
    port: int
    base_path: str

    @classmethod
    def parse(cls, base_url: str) -> "Endpoint":
        """`https://api.deepseek.com/v1` → parts; ValueError for anything that is not http(s)."""
        parts = urlsplit(base_url.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise ValueError(f"bad port in {base_url!r}") from None
        if parts.query or parts.fragment:
            raise ValueError(f"a base URL takes no query or fragment: {base_url!r}")
        return cls(parts.scheme, parts.hostname, port, parts.path.rstrip("/"))

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        return self.host if self.port == default else f"{self.host}:{self.port}"


class _Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer

    def close(self) -> None:
        try:
            self.writer.close()
        except Exception:  # already gone
            pass


class StreamsClient:
    """POST JSON bodies to one endpoint over pooled keep-alive connections."""

    def __init__(self, base_url: str, headers: Optional[dict[str, str]] = None,
                 read_timeout: float = READ_TIMEOUT_S):
        self.endpoint = Endpoint.parse(base_url)
        self.headers = dict(headers or {})
        self.read_timeout = read_timeout
        self._idle: deque[_Conn] = deque()
        self._ssl = ssl.create_default_context() if self.endpoint.scheme == "https" else None

    async def post(self, path: str, body: bytes) -> Response:
        conn, reused = await self._checkout()
        try:
            return await self._exchange(conn, path, body)
        except _StaleConnection:
            if not reused:
                raise TransportError("connection closed before any response") from None
            conn = (await self._checkout(fresh=True))[0]
            try:
                return await self._exchange(conn, path, body)
            except _StaleConnection:
                raise TransportError("connection closed before any response") from None

    async def aclose(self) -> None:
        while self._idle:
            self._idle.pop().close()

    async def _checkout(self, fresh: bool = False) -> tuple[_Conn, bool]:
        while self._idle and not fresh:
            conn = self._idle.pop()
            if not conn.reader.at_eof() and not conn.writer.is_closing():
                return conn, True
            conn.close()
        e = self.endpoint
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(e.host, e.port, ssl=self._ssl,
                                        server_hostname=e.host if self._ssl else None, limit=2 ** 20),
                CONNECT_TIMEOUT_S)
        except (OSError, asyncio.TimeoutError, ssl.SSLError) as exc:
            raise TransportError(f"cannot connect to {e.host}:{e.port}: {exc or type(exc).__name__}") from None
        return _Conn(reader, writer), False

    async def _exchange(self, conn: _Conn, path: str, body: bytes) -> Response:
        e = self.endpoint
        head = [f"POST {e.base_path}{path} HTTP/1.1", f"Host: {e.host_header}",
                "Content-Type: application/json", "Accept: application/json",
                "Accept-Encoding: identity", f"Content-Length: {len(body)}"]
        head += [f"{k}: {v}" for k, v in self.headers.items()]
        ok = False
        try:
            conn.writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
            await conn.writer.drain()
            response, keep = await self._read_response(conn.reader)
            ok = keep
            return response
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError) as exc:
            raise TransportError(f"connection dropped: {exc or type(exc).__name__}") from None
        except asyncio.TimeoutError:
            raise TransportError(f"no data for {self.read_timeout:.0f} s") from None
        finally:
            if ok:
                self._idle.append(conn)
            else:
                conn.close()

    async def _readline(self, reader: asyncio.StreamReader) -> bytes:
        return await asyncio.wait_for(reader.readline(), self.read_timeout)

    async def _read_response(self, reader: asyncio.StreamReader) -> tuple[Response, bool]:
        status_line = await self._readline(reader)
        if not status_line:
            raise _StaleConnection()
        parts = status_line.decode("latin-1").split(None, 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
            raise TransportError(f"not an HTTP response: {status_line[:80]!r}")
        status = int(parts[1])
        headers: dict[str, str] = {}
        while True:
            line = await self._readline(reader)
            if not line:
                raise asyncio.IncompleteReadError(b"", None)
            if line in (b"\r\n", b"\n"):
                break
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        keep = headers.get("connection", "").lower() != "close" and not parts[0].endswith("1.0")
        if headers.get("transfer-encoding", "").lower().endswith("chunked"):
            body = await self._read_chunked(reader)
        elif "content-length" in headers:
            body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), self.read_timeout)
        elif status in (204, 304) or 100 <= status < 200:
            body = b""
        else:  # no framing: the body runs to the end of the connection
            body = await self._read_to_eof(reader)
            keep = False
        return Response(status, headers, body), keep

    async def _read_chunked(self, reader: asyncio.StreamReader) -> bytes:
        out = bytearray()
        while True:
            size_line = await self._readline(reader)
            if not size_line:
                raise asyncio.IncompleteReadError(bytes(out), None)
            size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while (await self._readline(reader)) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return bytes(out)
            out += await asyncio.wait_for(reader.readexactly(size), self.read_timeout)
            await self._readline(reader)  # the CRLF after each chunk

    async def _read_to_eof(self, reader: asyncio.StreamReader) -> bytes:
        out = bytearray()
        while chunk := await asyncio.wait_for(reader.read(65536), self.read_timeout):
            out += chunk
        return bytes(out)


class _StaleConnection(Exception):
    """A pooled connection closed by the server while idle: the request never reached it."""


class HttpxClient:
    """The same interface on httpx or httpx2, kept for `scripts/bench_collect.py` comparisons."""

    def __init__(self, base_url: str, headers: Optional[dict[str, str]] = None, module: str = "httpx",
                 max_connections: int = 1024, read_timeout: float = READ_TIMEOUT_S):
        import importlib

        self._httpx = importlib.import_module(module)
        limits = self._httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        timeout = self._httpx.Timeout(read_timeout, connect=CONNECT_TIMEOUT_S)
        self.base_url = base_url.rstrip("/")
        self._client = self._httpx.AsyncClient(headers=headers, limits=limits, timeout=timeout)

    async def post(self, path: str, body: bytes) -> Response:
        try:
            r = await self._client.post(self.base_url + path, content=body,
                                        headers={"Content-Type": "application/json"})
        except self._httpx.HTTPError as exc:
            raise TransportError(f"{type(exc).__name__}: {exc}") from None
        return Response(r.status_code, {k.lower(): v for k, v in r.headers.items()}, r.content)

    async def aclose(self) -> None:
        await self._client.aclose()


def make_client(base_url: str, headers: Optional[dict[str, str]] = None, kind: str = "asyncio"):
    """The client `collect` uses (`asyncio`, chosen by measurement) or one of the httpx ones."""
    if kind == "asyncio":
        return StreamsClient(base_url, headers)
    return HttpxClient(base_url, headers, module=kind)
