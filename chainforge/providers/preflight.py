"""The preflight: one cheap look-up per API before a paid run, so that a refused key or a model the
key cannot use is found before the first prompt, not after the first thousand.

Each remote teacher or expander is asked for its models (no tokens, no cost):
- DeepSeek and OpenAI-compatible servers: `GET {base}/models` (`{"data": [{"id": …}, …]}`);
- Anthropic: `GET /v1/models/{model}` (the model's lifecycle and capabilities, an alias resolved),
  and `GET /v1/models` for the list when the model is unknown.

What follows:
- 401 or 403: the key is refused → `RunFailed` at once (exit 1; nothing was created);
- the model is not in the list, or Anthropic has retired it → `UsageError` (exit 2) naming the
  models the key can use;
- 404 or 405 for the models endpoint itself (a server that has none): one note line, and the run
  goes on unchecked; so does any other failure of the look-up (a 5xx, a refused connection), which
  the run's own retries then meet;
- Anthropic's capabilities pick the request fields that keep a grounding's thinking off or short
  (`expander.thinking_fields`); without them a table from the models' documentation does.

`--no-preflight` skips all of it.
"""

from __future__ import annotations

import asyncio
import json
from typing import Optional
from urllib.parse import quote

from chainforge.errors import RunFailed, UsageError
from chainforge.log import info
from chainforge.providers.http import TransportError, make_client

ANTHROPIC_URL = "https://api.anthropic.com"
ANTHROPIC_VERSION = "2023-06-01"
KEY_REFUSED = frozenset({401, 403})
NO_ENDPOINT = frozenset({404, 405})
SHOWN = 20  # model names listed in an error, at most


def _error_text(body: bytes) -> str:
    try:
        data = json.loads(body)
        err = data.get("error", data) if isinstance(data, dict) else data
        return str(err.get("message") if isinstance(err, dict) else err)[:200]
    except (ValueError, AttributeError):
        return body[:200].decode("utf-8", "replace").strip()


def _ids(body: bytes) -> Optional[list[str]]:
    try:
        data = json.loads(body)
        return [str(m["id"]) for m in data["data"] if isinstance(m, dict) and "id" in m]
    except (ValueError, KeyError, TypeError):
        return None


def _names(ids: list[str]) -> str:
    shown = ", ".join(sorted(ids)[:SHOWN])
    return shown + (f" and {len(ids) - SHOWN} more" if len(ids) > SHOWN else "") if ids else "none"


class Preflight:
    """Checks one remote Source (`role`: teacher or expander, for the messages)."""

    def __init__(self, stage: str, role: str, source, flag: str, accepted: Optional[dict] = None):
        self.stage, self.role, self.source, self.flag = stage, role, source, flag
        self.accepted = accepted or {}  # names a server serves without listing them

    async def run(self) -> Optional[dict]:
        """The Anthropic model's info (capabilities) when there is one; raises on a refused key or
        an unknown model."""
        if self.source.kind == "anthropic":
            return await self._anthropic()
        await self._openai()
        return None

    def _client(self, headers: dict, base: Optional[str] = None):
        return make_client(self.source.endpoint if base is None else base, headers, limit=1,
                           idle_timeout=30.0, deadline=60.0, max_response_bytes=8 * 2 ** 20)

    def _refused(self, status: int, body: bytes, key_env: str) -> RunFailed:
        return RunFailed(f"the {self.role}'s API refused the key (HTTP {status}: {_error_text(body)}) when asked for "
                         f"its models, before any paid request; check {key_env} (or pass --no-preflight to skip "
                         f"this look-up)")

    def _unknown(self, where: str, ids: list[str]) -> UsageError:
        return UsageError(f"{self.flag} {self.source.model} is not a model this key can use at {where}; it can use: "
                          f"{_names(ids)}")

    def _note(self, where: str, why: str) -> None:
        info(f"{self.stage}: note: {where}/models {why}; the {self.role} model is not checked before the run")

    async def _get(self, client, path: str):
        try:
            return await client.get(path), None
        except TransportError as exc:
            return None, str(exc)

    async def _openai(self) -> None:
        src = self.source
        client = self._client({"Authorization": f"Bearer {src.key}"} if src.key else {})
        try:
            resp, failure = await self._get(client, "/models")
        finally:
            await client.aclose()
        where = src.base_url
        if resp is None:
            return self._note(where, f"could not be asked ({failure})")
        if resp.status in KEY_REFUSED:
            raise self._refused(resp.status, resp.body, src.key_env or "the server's credentials")
        if resp.status in NO_ENDPOINT:
            return self._note(where, f"answered HTTP {resp.status} (the server has no model list)")
        ids = _ids(resp.body) if resp.status == 200 else None
        if ids is None:
            return self._note(where, f"answered HTTP {resp.status} without a model list")
        if src.model in ids or self.accepted.get(src.model) in ids:
            return None
        raise self._unknown(where, ids)

    async def _anthropic(self) -> Optional[dict]:
        src = self.source
        base = None if src.endpoint is not None else ANTHROPIC_URL
        client = self._client({"x-api-key": src.key or "", "anthropic-version": ANTHROPIC_VERSION}, base)
        where = src.base_url or ANTHROPIC_URL
        try:
            resp, failure = await self._get(client, f"/v1/models/{quote(src.model, safe='')}")
            if resp is None:
                return self._note(where, f"could not be asked ({failure})")
            if resp.status in KEY_REFUSED:
                raise self._refused(resp.status, resp.body, "ANTHROPIC_API_KEY")
            if resp.status == 200:
                try:
                    model = json.loads(resp.body)
                except ValueError:
                    model = None
                if isinstance(model, dict) and model.get("lifecycle") == "retired":
                    listing, _ = await self._get(client, "/v1/models?limit=1000")
                    ids = _ids(listing.body) if listing is not None and listing.status == 200 else None
                    raise UsageError(f"{self.flag} {src.model} has been retired by Anthropic; this key can use: "
                                     f"{_names(ids or [])}")
                if isinstance(model, dict) and model.get("lifecycle") == "deprecated":
                    retires = f" (retires {model['retires_at']})" if model.get("retires_at") else ""
                    info(f"{self.stage}: note: {src.model} is deprecated by Anthropic{retires}")
                return model if isinstance(model, dict) else None
            if resp.status not in NO_ENDPOINT:
                return self._note(where, f"answered HTTP {resp.status}")
            listing, failure = await self._get(client, "/v1/models?limit=1000")
        finally:
            await client.aclose()
        if listing is None or listing.status in NO_ENDPOINT:
            return self._note(where, f"answered HTTP {resp.status} (the server has no model list)")
        if listing.status in KEY_REFUSED:
            raise self._refused(listing.status, listing.body, "ANTHROPIC_API_KEY")
        ids = _ids(listing.body) if listing.status == 200 else None
        if ids is None:
            return self._note(where, f"answered HTTP {listing.status} without a model list")
        raise self._unknown(where, ids)


def preflight(stage: str, checks: list[Preflight]) -> list[Optional[dict]]:
    """Run the checks (one request or two each, in turn); the Anthropic model info per check."""
    async def all_of():
        return [await c.run() for c in checks]

    return asyncio.run(all_of()) if checks else []


def remote(source) -> bool:
    return source is not None and source.kind in ("deepseek", "openai", "anthropic")
