"""HTTP for the chat-completion APIs, on aiohttp: one session per API, replies read with hard limits.

One `HttpClient` per API holds one aiohttp session whose connection pool is capped at the run's
concurrency (keep-alive, gzip, IPv6 literals, base URLs with a path or a query). A streamed reply
(`text/event-stream`) is handed to the caller as SSE events, those of each read together; any other
body is read whole.

Limits, each a failure of that one request (`TransportError`, retried by `chat.ChatAPI`), never of
the run:
- `idle_timeout`: the longest silence mid-reply. Streamed replies send tokens (and DeepSeek a
  `: keep-alive` comment while a request queues), so a stall is caught in seconds, not minutes;
- `deadline`: the whole request, however it trickles (a reasoner writing 32k tokens at 30 tok/s
  takes ~18 min, hence 30 min);
- `max_response_bytes`: the decoded body (a gzip bomb counts at its inflated size);
- a status or header line over `MAX_HEADER_BYTES`, a malformed Content-Length or chunk size, a
  connection dropped mid-reply: aiohttp's parser rejects them.
Timeouts say "timed out" (`TransportError.timeout`), so failed.jsonl tells a slow API from a broken one.

Proxies: HTTP_PROXY / HTTPS_PROXY / NO_PROXY (either case) are read once, when the client is made,
with the standard library's rules (`urllib.request.getproxies` and `proxy_bypass`, the ones
aiohttp's `trust_env=True` applies). Not `trust_env=True` itself: it also looks ~/.netrc up on every
request, in a worker thread, and raises on each one when the file has an entry (or a `default`) for
the API host next to our `Authorization: Bearer` header.

Credentials in a base URL (`http://user:password@host/v1`) are sent as Basic auth and kept out of
every URL that is shown, logged or recorded (`Endpoint.display`).
"""

from __future__ import annotations

import ipaddress
import urllib.request
from dataclasses import dataclass, field
from typing import Callable, Optional
from urllib.parse import unquote, urlsplit

CONNECT_TIMEOUT_S = 30.0
IDLE_TIMEOUT_S = 60.0
DEADLINE_S = 1800.0
MAX_RESPONSE_BYTES = 32 * 2 ** 20
MAX_HEADER_BYTES = 64 * 2 ** 10
USER_AGENT = "chainforge"


class TransportError(Exception):
    """The request got no complete, well-formed response: refused, timed out, cut short, too big."""

    def __init__(self, message: str, timeout: bool = False):
        super().__init__(message)
        self.timeout = timeout


@dataclass
class Response:
    status: int
    headers: dict[str, str] = field(default_factory=dict)  # lower-case names
    body: bytes = b""
    streamed: bool = False  # the body went to `on_events`, as SSE events


@dataclass(frozen=True)
class Endpoint:
    """A base URL's parts. The credentials never appear in `repr`, `url` or `display`."""

    scheme: str
    host: str  # an IPv6 literal without its brackets
    port: int
    base_path: str
    query: str = ""
    username: Optional[str] = field(default=None, repr=False, compare=False)
    password: Optional[str] = field(default=None, repr=False, compare=False)

    @classmethod
    def parse(cls, base_url: str) -> "Endpoint":
        """`https://api.deepseek.com/v1` → parts; ValueError for anything that is not http(s)."""
        parts = urlsplit(base_url.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {_masked(base_url)!r}")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise ValueError(f"bad port in {_masked(base_url)!r}") from None
        if parts.fragment:
            raise ValueError(f"a base URL takes no #fragment: {_masked(base_url)!r}")
        user = unquote(parts.username) if parts.username is not None else None
        password = unquote(parts.password) if parts.password is not None else None
        return cls(parts.scheme, parts.hostname, port, parts.path.rstrip("/"), parts.query, user, password)

    @property
    def has_credentials(self) -> bool:
        return self.username is not None

    @property
    def netloc(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"

    def join(self, path: str) -> str:
        """The URL of `path` under the base path, the base URL's query kept (credentials never)."""
        query = f"?{self.query}" if self.query else ""
        return f"{self.scheme}://{self.netloc}{self.base_path}{path}{query}"

    @property
    def url(self) -> str:
        return self.join("")

    @property
    def display(self) -> str:
        """The base URL as shown and recorded: `user:***@` stands for credentials."""
        if not self.has_credentials:
            return self.url
        return self.url.replace("://", f"://{self.username}:***@", 1)

    @property
    def is_loopback(self) -> bool:
        if self.host == "localhost" or self.host.endswith(".localhost"):
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


def _masked(url: str) -> str:
    """`url` with any password replaced, for error messages."""
    parts = urlsplit(url.strip())
    if parts.password is None:
        return url.strip()
    user, _, host = parts.netloc.rpartition("@")
    return parts._replace(netloc=f"{user.split(':', 1)[0]}:***@{host}").geturl()


def env_proxy(endpoint: Endpoint) -> tuple[Optional[str], Optional[tuple[str, str]]]:
    """(proxy URL without credentials, (user, password) or None) for the endpoint, from the
    environment; (None, None) when there is none or NO_PROXY names the host."""
    proxies = urllib.request.getproxies()
    proxy = proxies.get(endpoint.scheme)
    if not proxy:
        return None, None
    host = endpoint.host if endpoint.port in (80, 443) else f"{endpoint.host}:{endpoint.port}"
    if urllib.request.proxy_bypass(endpoint.host) or urllib.request.proxy_bypass(host):
        return None, None
    try:
        parsed = Endpoint.parse(proxy if "://" in proxy else f"http://{proxy}")
    except ValueError as exc:
        name = f"{endpoint.scheme.upper()}_PROXY"
        raise ValueError(f"{name} (for {endpoint.netloc}): {exc}; give an http:// proxy URL, or name the "
                         f"host in NO_PROXY") from None
    auth = (parsed.username, parsed.password or "") if parsed.has_credentials else None
    return parsed.url, auth


class _TooLarge(Exception):
    pass


class HttpClient:
    """POST JSON bodies to one endpoint; at most `limit` connections (the run's concurrency)."""

    def __init__(self, base_url: "str | Endpoint", headers: Optional[dict[str, str]] = None, *, limit: int = 100,
                 idle_timeout: Optional[float] = None, deadline: Optional[float] = None,
                 max_response_bytes: Optional[int] = None, connect_timeout: Optional[float] = None):
        self.endpoint = base_url if isinstance(base_url, Endpoint) else Endpoint.parse(base_url)
        self._headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT, **(headers or {})}
        self.limit = limit
        # Module defaults are read here, not bound at definition, so a test can lower them.
        self.idle_timeout = IDLE_TIMEOUT_S if idle_timeout is None else idle_timeout
        self.deadline = DEADLINE_S if deadline is None else deadline
        self.max_response_bytes = MAX_RESPONSE_BYTES if max_response_bytes is None else max_response_bytes
        self.connect_timeout = CONNECT_TIMEOUT_S if connect_timeout is None else connect_timeout
        self.proxy, self._proxy_auth = env_proxy(self.endpoint)
        self._urls: dict = {}  # path → yarl.URL
        self._session = None
        self._aiohttp = None

    def __repr__(self) -> str:
        via = f" via {self.proxy}" if self.proxy else ""
        return f"HttpClient({self.endpoint.display}{via})"

    def _open(self):
        import aiohttp

        self._aiohttp = aiohttp
        e = self.endpoint
        self._auth = aiohttp.BasicAuth(e.username, e.password or "") if e.has_credentials else None
        self._proxy_basic = aiohttp.BasicAuth(*self._proxy_auth) if self._proxy_auth else None
        # sock_read is the idle timeout: it restarts with every read from the socket.
        timeout = aiohttp.ClientTimeout(total=self.deadline, sock_connect=self.connect_timeout,
                                        sock_read=self.idle_timeout)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.limit, limit_per_host=0),
            timeout=timeout, headers=self._headers, cookie_jar=aiohttp.DummyCookieJar(),
            max_line_size=MAX_HEADER_BYTES, max_field_size=MAX_HEADER_BYTES, trust_env=False)
        return self._session

    async def post(self, path: str, body: bytes, on_events: Optional[Callable[[list], None]] = None) -> Response:
        """POST `body`; a 2xx `text/event-stream` reply goes to `on_events`: the data (bytes) of the
        events each read from the socket completes, in order."""
        return await self.request("POST", path, body, on_events)

    async def get(self, path: str) -> Response:
        """GET `path` (the preflight's model list); the body is read whole, within the same limits."""
        return await self.request("GET", path)

    async def request(self, method: str, path: str, body: Optional[bytes] = None,
                      on_events: Optional[Callable[[list], None]] = None) -> Response:
        session = self._session or self._open()
        url = self._urls.get(path)
        if url is None:  # parsed once: yarl would otherwise parse the string on every request
            from yarl import URL

            url = self._urls[path] = URL(self.endpoint.join(path))
        a = self._aiohttp
        try:
            # No redirects: a POST would come back as a GET, and the key would follow it elsewhere.
            async with session.request(method, url, data=body, auth=self._auth, proxy=self.proxy,
                                       proxy_auth=self._proxy_basic, allow_redirects=False) as resp:
                headers = {k.lower(): v for k, v in resp.headers.items()}
                streamed = (on_events is not None and 200 <= resp.status < 300
                            and headers.get("content-type", "").startswith("text/event-stream"))
                if streamed:
                    await self._read_events(resp, on_events)
                    return Response(resp.status, headers, b"", streamed=True)
                return Response(resp.status, headers, await self._read_body(resp))
        except a.ConnectionTimeoutError:
            raise TransportError(f"timed out connecting to {self.endpoint.netloc} "
                                 f"(no connection in {self.connect_timeout:g} s)", timeout=True) from None
        except a.ServerTimeoutError:
            raise TransportError(f"timed out: no data for {self.idle_timeout:g} s", timeout=True) from None
        except TimeoutError:  # aiohttp's total timeout
            raise TransportError(f"timed out: no complete reply within {self.deadline:g} s", timeout=True) from None
        except _TooLarge:
            raise TransportError(f"reply larger than {self.max_response_bytes} bytes") from None
        except a.ClientPayloadError as exc:
            raise TransportError(f"reply cut short or malformed: {_why(exc)}") from None
        except a.ClientConnectorError as exc:
            raise TransportError(f"cannot connect to {exc.host}:{exc.port}: {_why(exc.os_error)}") from None
        except a.ServerDisconnectedError:
            raise TransportError("connection dropped: the server closed it before replying in full") from None
        except a.ClientResponseError as exc:  # raise_for_status is off: only a reply aiohttp cannot parse
            raise TransportError(f"malformed HTTP reply: {_why(exc.message)}") from None
        except (a.ClientError, OSError) as exc:
            raise TransportError(f"connection dropped: {_why(exc)}") from None

    async def _read_body(self, resp) -> bytes:
        out = bytearray()
        async for chunk in resp.content.iter_any():
            out += chunk
            if len(out) > self.max_response_bytes:
                raise _TooLarge()
        return bytes(out)

    async def _read_events(self, resp, on_events: Callable[[list], None]) -> None:
        """Server-sent events: `data:` lines up to a blank line make one event; `:` lines (comments,
        such as `: keep-alive`) and other fields are skipped. Lines end in LF or CRLF. The events a
        read completes go to `on_events` in one call."""
        size, pending, data = 0, b"", []
        async for chunk in resp.content.iter_any():
            size += len(chunk)
            if size > self.max_response_bytes:
                raise _TooLarge()
            buf = pending + chunk if pending else chunk
            crlf = b"\r" in buf
            *lines, pending = buf.split(b"\n")
            events = []
            for line in lines:
                if crlf:
                    line = line.rstrip(b"\r")
                if not line:
                    if data:
                        events.append(data[0] if len(data) == 1 else b"\n".join(data))
                        data = []
                elif line[:5] == b"data:":
                    data.append(line[6:] if line[5:6] == b" " else line[5:])
            if events:
                on_events(events)
        line = pending.rstrip(b"\r")
        if line[:5] == b"data:":  # the last event without its blank line
            data.append(line[6:] if line[5:6] == b" " else line[5:])
        if data:
            on_events([b"\n".join(data)])

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _why(exc) -> str:
    """One short line (aiohttp's parser errors span lines, with a caret under the bad byte)."""
    text = " ".join(str(exc).split()) if exc is not None else ""
    return text[:200] or type(exc).__name__


def make_client(base_url: "str | Endpoint", headers: Optional[dict[str, str]] = None, **limits) -> HttpClient:
    return HttpClient(base_url, headers, **limits)
