"""collect's HTTP client (chainforge.providers.http) against real sockets on loopback: streaming, gzip,
proxies from the environment, IPv6 and base URLs with a query, and replies that are broken or hostile
(each fails one request, never the run)."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

import pytest
from helpers.files import manifest, write_jsonl
from helpers.fake_apis import FakeDeepSeek, RecordingProxy

import chainforge.providers.http as http
from chainforge.providers.chat import ChatAPI, Counters
from chainforge.providers.http import Endpoint, HttpClient, TransportError


@pytest.fixture
def fast(monkeypatch, fast_backoff):
    """Quick backoff and short limits, so stalls and trickles fail in seconds. The fake trickles a
    byte every 0.05 s, twenty times inside the idle timeout, so a trickle can only hit the deadline."""
    monkeypatch.setattr(http, "IDLE_TIMEOUT_S", 1.0)
    monkeypatch.setattr(http, "DEADLINE_S", 3.0)
    monkeypatch.setattr(http, "MAX_RESPONSE_BYTES", 256 * 1024)
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "NO_PROXY", "no_proxy",
                 "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def deepseek(deepseek, fast):
    """The fake DeepSeek of conftest.py, with this file's short limits."""
    return deepseek


def prompts(tmp_path: Path, n: int) -> Path:
    return write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"Q{i}: what is 6 times 7?", "answer": "42"}
                                              for i in range(n)])


def q(i: int) -> str:
    return f"Q{i}: what is 6 times 7?"


def metrics(out: Path) -> dict:
    return manifest(out)["metrics"]


def failed(out: Path) -> list[dict]:
    p = out / "failed.jsonl"
    return [json.loads(line) for line in p.read_text().splitlines()] if p.exists() else []


def chat(url: str, key: str, stream: bool = True) -> ChatAPI:
    client = HttpClient(url, {"Authorization": f"Bearer {key}"}, limit=4)
    return ChatAPI(client, "deepseek-flash", "DeepSeek", "DEEPSEEK_API_KEY", 0, Counters(), stream=stream)


def complete(api: ChatAPI, prompt: str):
    async def go():
        try:
            return await api.complete([{"role": "user", "content": prompt}])
        finally:
            await api.client.aclose()
    return asyncio.run(go())


# ---- streaming --------------------------------------------------------------------------------------

def test_streamed_reply_is_assembled_with_usage_from_the_last_event(deepseek):
    reply = complete(chat(deepseek.url, deepseek.api_key), "What is 6 times 7?")
    reasoning, content = deepseek.answer("What is 6 times 7?")
    assert reply.reasoning == reasoning and reply.content == content and reply.finish_reason == "stop"
    assert reply.usage["reasoning"] == len(reasoning.split()) and reply.usage["cache_hit"] == 4
    assert reply.usage["prompt"] > 0 and reply.usage["completion"] > reply.usage["reasoning"]
    (req,) = deepseek.requests
    assert req["json"]["stream"] is True and req["json"]["stream_options"] == {"include_usage": True}


def test_a_server_that_ignores_stream_is_read_as_one_json_body(deepseek):
    deepseek.ignore_stream = True
    reply = complete(chat(deepseek.url, deepseek.api_key), "What is 6 times 7?")
    assert reply.content == "42" and reply.reasoning.startswith("First, restate")
    assert reply.usage["cache_hit"] == 4


def test_a_stream_cut_short_is_a_retryable_failure(deepseek, cli, tmp_path):
    deepseek.plan(q(0), "drop")
    out = tmp_path / "out"
    r = cli("collect", "--prompts", prompts(tmp_path, 2), "--output", out, "--expander", "none")
    assert r.exit_code == 0, r.stderr
    assert metrics(out)["rows"] == 2 and metrics(out)["retries"] == 1


def test_a_stalled_stream_is_retried_and_reported_as_a_timeout(deepseek, cli, tmp_path):
    deepseek.plan(q(0), "stall")  # headers and one event, then silence
    deepseek.plan(q(1), "stall", "stall", "stall")
    out = tmp_path / "out"
    r = cli("collect", "--prompts", prompts(tmp_path, 3), "--output", out, "--expander", "none",
            "--max-retries", 2)
    assert r.exit_code == 0, r.stderr
    m = metrics(out)
    assert m["rows"] == 2 and m["failed"] == 1 and deepseek.attempts[q(0)] == 2
    (f,) = failed(out)
    assert f["prompt"] == q(1) and "timed out: no data for 1 s" in f["reason"]


# ---- gzip, IPv6, base URLs ----------------------------------------------------------------------------

def test_a_gzip_reply_is_parsed_without_a_retry(deepseek, cli, tmp_path):
    deepseek.plan(q(0), "gzip")
    out = tmp_path / "out"
    r = cli("collect", "--prompts", prompts(tmp_path, 2), "--output", out, "--expander", "none")
    assert r.exit_code == 0, r.stderr
    assert metrics(out)["rows"] == 2 and metrics(out)["retries"] == 0 and deepseek.attempts[q(0)] == 1
    assert all("gzip" in req["headers"].get("accept-encoding", "") for req in deepseek.requests)


def test_a_gzip_json_body_is_parsed(deepseek):
    deepseek.ignore_stream = True
    deepseek.plan("gz", "gzip")
    assert complete(chat(deepseek.url, deepseek.api_key), "gz").content == "42"


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback here")
def test_an_ipv6_literal_base_url_gets_a_bracketed_host_header(cli, tmp_path, monkeypatch, fast):
    with FakeDeepSeek(host="::1") as server:
        monkeypatch.setenv("DEEPSEEK_API_KEY", server.api_key)
        out = tmp_path / "out"
        r = cli("collect", "--prompts", prompts(tmp_path, 2), "--output", out, "--expander", "none",
                "--teacher-base-url", f"http://[::1]:{server.port}/")
        assert r.exit_code == 0, r.stderr
        assert metrics(out)["rows"] == 2
        assert {req["headers"]["host"] for req in server.requests} == {f"[::1]:{server.port}"}


def test_a_base_url_with_a_path_and_a_query_keeps_both(openai_server, cli, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", openai_server.api_key)
    out = tmp_path / "out"
    r = cli("collect", "--prompts", prompts(tmp_path, 2), "--output", out, "--expander", "none",
            "--teacher", "openai", "--teacher-model", "r1", "--teacher-base-url",
            f"{openai_server.url}/openai/v1?api-version=2025-01-01")
    assert r.exit_code == 0, r.stderr
    assert {req["path"] for req in openai_server.requests} == {"/openai/v1/chat/completions?api-version=2025-01-01"}
    assert [q["path"] for q in openai_server.lookups] == ["/openai/v1/models?api-version=2025-01-01"]


def test_endpoint_parts_and_masking():
    e = Endpoint.parse("http://bob:pa%3Ass@[::1]:8000/v1/?x=1")
    assert (e.host, e.port, e.base_path, e.query) == ("::1", 8000, "/v1", "x=1")
    assert (e.username, e.password) == ("bob", "pa:ss")
    assert e.join("/chat/completions") == "http://[::1]:8000/v1/chat/completions?x=1"
    assert e.display == "http://bob:***@[::1]:8000/v1?x=1" and e.is_loopback
    assert "pa:ss" not in repr(e) and "pa%3Ass" not in repr(e)
    client = HttpClient(e, {"Authorization": "Bearer sk-hidden"})
    assert "pa:ss" not in repr(client) and "sk-hidden" not in repr(client)
    assert not Endpoint.parse("https://api.deepseek.com").is_loopback
    assert Endpoint.parse("https://api.deepseek.com").netloc == "api.deepseek.com"
    with pytest.raises(ValueError, match="fragment"):
        Endpoint.parse("http://127.0.0.1/v1#x")
    with pytest.raises(ValueError) as exc:
        Endpoint.parse("ftp://bob:topsecret@host/")
    assert "topsecret" not in str(exc.value)


# ---- proxies from the environment ---------------------------------------------------------------------

def test_http_proxy_relays_every_teacher_request(deepseek, cli, tmp_path, monkeypatch):
    with RecordingProxy() as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        out = tmp_path / "out"
        r = cli("collect", "--prompts", prompts(tmp_path, 3), "--output", out, "--expander", "none")
        assert r.exit_code == 0, r.stderr
    assert metrics(out)["rows"] == 3 and len(deepseek.requests) == 3
    assert proxy.requests == ([f"GET http://127.0.0.1:{deepseek.port}/models"]  # the preflight
                              + [f"POST http://127.0.0.1:{deepseek.port}/chat/completions"] * 3)
    assert f"via proxy {proxy.url}" in r.stderr.splitlines()[0]


def test_no_proxy_naming_the_host_bypasses_the_proxy(deepseek, cli, tmp_path, monkeypatch):
    with RecordingProxy() as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.setenv("NO_PROXY", "example.com,127.0.0.1")
        out = tmp_path / "out"
        r = cli("collect", "--prompts", prompts(tmp_path, 3), "--output", out, "--expander", "none")
        assert r.exit_code == 0, r.stderr
    assert metrics(out)["rows"] == 3 and len(deepseek.requests) == 3
    assert proxy.requests == [] and "via proxy" not in r.stderr


def test_a_proxy_that_is_not_http_is_bad_input(deepseek, cli, tmp_path, monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", "socks5://bob:pw-secret@127.0.0.1:1080")
    out = tmp_path / "out"
    r = cli("collect", "--prompts", prompts(tmp_path, 1), "--output", out, "--expander", "none")
    assert r.exit_code == 2
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: HTTP_PROXY") and "NO_PROXY" in lines[0]
    assert "pw-secret" not in r.stderr and not out.exists() and deepseek.requests == []


# ---- hostile and broken replies: one request fails, the run goes on ----------------------------------

HOSTILE = ["stall", "trickle", "badlength", "badchunk", "longheader", "huge", "drop"]
TIMEOUTS = {"stall": "no data for 1 s", "trickle": "no complete reply within 3 s"}


@pytest.mark.parametrize("fault", HOSTILE)
def test_a_hostile_reply_fails_one_request_and_every_other_prompt_is_collected(deepseek, cli, tmp_path, fault):
    deepseek.huge_bytes = 1 << 20  # four times the 256 KiB cap the fixture sets
    deepseek.plan(q(0), fault)  # once: retried, then a row
    deepseek.plan(q(1), fault, fault)  # every attempt: failed.jsonl
    out = tmp_path / "out"
    r = cli("collect", "--prompts", prompts(tmp_path, 4), "--output", out, "--expander", "none",
            "--max-retries", 1)
    assert r.exit_code == 0, r.stderr
    assert "Traceback" not in r.stderr
    m = metrics(out)
    assert m["rows"] == 3 and m["failed"] == 1 and m["retries"] == 2
    assert deepseek.attempts[q(0)] == 2 and deepseek.attempts[q(1)] == 2
    (f,) = failed(out)
    assert f["prompt"] == q(1) and f["status_code"] is None and "retries exhausted" in f["reason"]
    if fault in TIMEOUTS:
        assert "timed out" in f["reason"] and TIMEOUTS[fault] in f["reason"], f["reason"]
    else:
        assert "timed out" not in f["reason"], f["reason"]


def _serve_raw(reply: bytes):
    """A one-shot raw-socket server on loopback: reads a request head, writes `reply`, closes."""
    async def handle(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(reply)
        await writer.drain()
        writer.close()
    return asyncio.start_server(handle, "127.0.0.1", 0)


@pytest.mark.parametrize("reply,needle", [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 400000\r\n\r\n" + b" " * 400000, "reply larger than 262144 bytes"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n{}", "malformed HTTP reply"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{}", "cut short"),
    (b"HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\n{}", "malformed HTTP reply"),
    (b"NOT HTTP AT ALL\r\n\r\n", "malformed HTTP reply"),
    (b"HTTP/1.1 200 OK\r\nX-A: " + b"a" * (65 * 1024) + b"\r\nContent-Length: 2\r\n\r\n{}", "malformed HTTP reply"),
    (b"", "connection dropped"),
])
def test_the_client_turns_every_broken_reply_into_a_transport_error(fast, reply, needle):
    async def go():
        server = await _serve_raw(reply)
        port = server.sockets[0].getsockname()[1]
        client = HttpClient(f"http://127.0.0.1:{port}")
        try:
            with pytest.raises(TransportError) as exc:
                await client.post("/chat/completions", b"{}")
            return exc.value
        finally:
            await client.aclose()
            server.close()
    err = asyncio.run(go())
    assert needle in str(err) and not err.timeout


def test_the_response_cap_defaults_to_at_least_32_mib():
    assert HttpClient("http://127.0.0.1:9").max_response_bytes >= 32 * 2 ** 20


def test_a_redirect_is_not_followed_so_the_key_stays_with_the_api(fast):
    """A 307 to another server fails that prompt (HTTP 307) instead of sending the key there."""
    from chainforge.providers.chat import PromptFailed

    with FakeDeepSeek() as elsewhere:
        async def go():
            async def handle(reader, writer):
                await reader.readuntil(b"\r\n\r\n")
                writer.write(f"HTTP/1.1 307 Temporary Redirect\r\nLocation: {elsewhere.url}/chat/completions\r\n"
                             f"Content-Length: 0\r\n\r\n".encode())
                await writer.drain()
                writer.close()
            server = await asyncio.start_server(handle, "127.0.0.1", 0)
            api = chat(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", "sk-stays-here")
            try:
                with pytest.raises(PromptFailed) as exc:
                    await api.complete([{"role": "user", "content": "hi"}])
                return exc.value
            finally:
                await api.client.aclose()
                server.close()
        failure = asyncio.run(go())
    assert failure.status_code == 307 and elsewhere.requests == []


def test_the_http_limits_are_options(cli, tmp_path, monkeypatch, fast_backoff):
    """--idle-timeout and --max-response-mb reach the client (no monkeypatched defaults here)."""
    with FakeDeepSeek(latency=0.01) as server:
        monkeypatch.setenv("DEEPSEEK_API_KEY", server.api_key)
        monkeypatch.setenv("DEEPSEEK_BASE_URL", server.url)
        server.plan(q(0), "stall", "stall")
        server.plan(q(1), "huge", "huge")
        out = tmp_path / "out"
        r = cli("collect", "--prompts", prompts(tmp_path, 3), "--output", out, "--expander", "none",
                "--max-retries", 1, "--idle-timeout", 0.5, "--max-response-mb", 0.25)
        assert r.exit_code == 0, r.stderr
        reasons = {f["prompt"]: f["reason"] for f in failed(out)}
        assert "timed out: no data for 0.5 s" in reasons[q(0)]
        assert q(1) in reasons and metrics(out)["rows"] == 1
