"""Which teacher and expander a run uses: names, models, keys, base URLs — checked before --output
exists (exit 2 with the fix), then built once the output is created.

Keys come only from the environment (DEEPSEEK_API_KEY, ANTHROPIC_API_KEY, OPENAI_API_KEY); they
are never options, so they never reach the manifest, the journal or a log line. A key holding a
control character is refused before anything is sent: it would end the Authorization header and
start another. A base URL may carry `user:password@` for an OpenAI-compatible server behind Basic
auth (sent as such, shown and recorded as `user:***@`); with an API key as well, both would claim
the Authorization header, so that is refused. A key or password sent over plain http:// to a host
that is not this machine gets a warning.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional

from chainforge.providers.chat import ChatAPI, Counters
from chainforge.providers.http import Endpoint, env_proxy, make_client
from chainforge.errors import UsageError

TEACHERS = ("deepseek", "openai", "local")
EXPANDERS = ("anthropic", "openai", "local", "none")
DEEPSEEK_URL = "https://api.deepseek.com"
# deepseek-flash: the model DeepSeek's pricing page names (DeepSeek-V4.1-Flash). The retired
# deepseek-reasoner was V4-Flash with thinking on; Flash is also the one with 4x the concurrency
# limit (2500 vs 500) at about a quarter of deepseek-v4-pro's price per token.
DEEPSEEK_MODEL = "deepseek-flash"
# Names DeepSeek no longer serves (inaccessible since 2026-07-24 15:59 UTC) → what replaces them.
DEEPSEEK_RETIRED = {"deepseek-reasoner": "deepseek-flash (thinking is on by default)",
                    "deepseek-chat": "deepseek-flash with --no-thinking"}
# Names DeepSeek still accepts, served by another model: name → the model that answers.
DEEPSEEK_LEGACY = {"deepseek-v4-flash": "deepseek-flash", "deepseek-v4-flash-vision-exp": "deepseek-flash"}
LOCAL_MODEL = "smollm2"
LOCAL_MAX_NEW_TOKENS = 512
LOCAL_TEMPERATURE = 0.6  # the R1 paper's sampling temperature


@dataclass
class HttpOptions:
    """How the API clients talk; None takes `chainforge.providers.http`'s default."""

    idle_timeout: Optional[float] = None  # seconds of silence mid-reply
    deadline: Optional[float] = None  # seconds for a whole request
    max_response_bytes: Optional[int] = None
    stream: bool = True  # False: one JSON body per reply, for a server that rejects `stream_options`


@dataclass
class Source:
    """A resolved remote or local model: `kind` is deepseek/openai/anthropic/local/none."""

    kind: str
    model: Optional[str] = None
    base_url: Optional[str] = None  # as shown: credentials masked
    key: Optional[str] = field(default=None, repr=False)
    key_env: Optional[str] = None
    model_ref: object = None  # chainforge.models.ModelRef for local
    endpoint: Optional[Endpoint] = field(default=None, repr=False)  # with the credentials, if any
    proxy: Optional[str] = None  # from HTTP(S)_PROXY, credentials left out
    capabilities: Optional[dict] = field(default=None, repr=False)  # Anthropic's, read by the preflight

    def describe(self) -> str:
        if self.kind == "none":
            return "none"
        where = f" at {self.base_url}" if self.base_url else ""
        via = f" via proxy {self.proxy}" if self.proxy else ""
        return f"{self.kind} ({self.model}{where}{via})"


def api_key(env: str) -> Optional[str]:
    """The key in `env` (surrounding whitespace dropped), or None; UsageError for one that holds a
    control character or a non-ASCII one. The message never shows the key."""
    key = os.environ.get(env, "").strip()
    for i, ch in enumerate(key):
        if ord(ch) < 32 or ord(ch) == 127:
            raise UsageError(f"{env} holds a control character ({ch!r}) at position {i}; a key is one line "
                             f"of printable text: export it again without it")
        if ord(ch) > 126:
            raise UsageError(f"{env} holds a non-ASCII character at position {i}; API keys are plain ASCII: "
                             f"export it again (copied from a rich-text page?)")
    return key or None


def _check_url(url: str, what: str) -> Endpoint:
    try:
        return Endpoint.parse(url)
    except ValueError as exc:
        raise UsageError(f"{what}: {exc}; give a base URL like https://api.deepseek.com or "
                         f"http://127.0.0.1:8000/v1") from None


def _remote(kind: str, model: str, endpoint: Endpoint, what: str, key: Optional[str], key_env: str) -> Source:
    """A remote Source; refuses a key plus URL credentials and warns about secrets over plain http."""
    if endpoint.has_credentials and key:
        raise UsageError(f"{what} carries credentials ({endpoint.display}) and {key_env} is set: both would "
                         f"go in the Authorization header; drop one of them")
    secret = key_env if key else ("the base URL's password" if endpoint.has_credentials else None)
    if secret and endpoint.scheme == "http" and not endpoint.is_loopback:
        from chainforge.log import info

        info(f"collect: warning: {secret} goes to {endpoint.host} over plain http://, readable on the way; "
            f"use https:// unless that network is yours")
    try:
        proxy, _ = env_proxy(endpoint)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return Source(kind, model, endpoint.display, key, key_env, endpoint=endpoint, proxy=proxy)


def _record_url(opts, name: str, endpoint: Endpoint) -> None:
    """The option as the manifest records it: a password in the URL is masked."""
    if endpoint.has_credentials:
        try:
            opts[name] = endpoint.display
        except TypeError:  # an options object without item assignment
            setattr(opts, name, endpoint.display)


def resolve_teacher(opts) -> Source:
    kind = opts.teacher
    if kind not in TEACHERS:
        raise UsageError(f"--teacher {kind!r} is not one of {', '.join(TEACHERS)}")
    if kind == "local":
        from chainforge.models import resolve_model

        model = opts.teacher_model or LOCAL_MODEL
        return Source("local", model, model_ref=resolve_model(model, "--teacher-model"))
    if kind == "deepseek":
        key = api_key("DEEPSEEK_API_KEY")
        if not key:
            raise UsageError("DEEPSEEK_API_KEY is not set: export your DeepSeek API key, or use "
                             "--teacher local (an in-process model, no key, no network)")
        model = opts.teacher_model or DEEPSEEK_MODEL
        if model in DEEPSEEK_RETIRED:
            raise UsageError(f"--teacher-model {model} was retired by DeepSeek on 2026-07-24 and is no longer "
                             f"served; use --teacher-model {DEEPSEEK_RETIRED[model]}")
        if model in DEEPSEEK_LEGACY:
            from chainforge.log import info

            info(f"collect: note: {model} is a legacy DeepSeek name, answered and billed as "
                 f"{DEEPSEEK_LEGACY[model]}; --teacher-model {DEEPSEEK_LEGACY[model]} is the current name")
        what = "--teacher-base-url" if opts.teacher_base_url else "DEEPSEEK_BASE_URL"
        endpoint = _check_url(opts.teacher_base_url or os.environ.get("DEEPSEEK_BASE_URL") or DEEPSEEK_URL, what)
        source = _remote("deepseek", model, endpoint, what, key, "DEEPSEEK_API_KEY")
    else:
        raw = opts.teacher_base_url or os.environ.get("OPENAI_BASE_URL")
        if not raw:
            raise UsageError("--teacher openai needs a server: pass --teacher-base-url "
                             "(e.g. http://127.0.0.1:8000/v1) or set OPENAI_BASE_URL")
        what = "--teacher-base-url" if opts.teacher_base_url else "OPENAI_BASE_URL"
        endpoint = _check_url(raw, what)
        if not opts.teacher_model:
            raise UsageError("--teacher openai needs --teacher-model: the model name the server serves")
        source = _remote("openai", opts.teacher_model, endpoint, what, api_key("OPENAI_API_KEY"), "OPENAI_API_KEY")
    if opts.teacher_base_url:
        _record_url(opts, "teacher_base_url", endpoint)
    return source


def resolve_expander(opts, teacher: Source) -> Source:
    kind = opts.expander
    if kind is None:  # the default depends on the environment; the resolved name is recorded
        kind = "anthropic" if os.environ.get("ANTHROPIC_API_KEY", "").strip() else "none"
    if kind not in EXPANDERS:
        raise UsageError(f"--expander {kind!r} is not one of {', '.join(EXPANDERS)}")
    if kind == "none":
        return Source("none")
    if kind == "anthropic":
        from chainforge.providers.expander import DEFAULT_ANTHROPIC_MODEL

        key = api_key("ANTHROPIC_API_KEY")
        if not key:
            raise UsageError("ANTHROPIC_API_KEY is not set: export your Anthropic API key, or pass "
                             "--expander none (no grounding) or --expander local")
        base = os.environ.get("ANTHROPIC_BASE_URL")
        model = opts.expander_model or DEFAULT_ANTHROPIC_MODEL
        if not base:
            return Source("anthropic", model, None, key, "ANTHROPIC_API_KEY")
        # The SDK reads ANTHROPIC_BASE_URL itself and sends its own key header: credentials in the
        # URL would collide with it, so they are refused rather than passed along.
        return _remote("anthropic", model, _check_url(base, "ANTHROPIC_BASE_URL"), "ANTHROPIC_BASE_URL", key,
                       "ANTHROPIC_API_KEY")
    if kind == "local":
        from chainforge.models import resolve_model

        model = opts.expander_model or (teacher.model if teacher.kind == "local" else LOCAL_MODEL)
        return Source("local", model, model_ref=resolve_model(model, "--expander-model"))
    raw = os.environ.get("OPENAI_BASE_URL")
    if not raw:
        raise UsageError("--expander openai needs OPENAI_BASE_URL (the server's base URL, e.g. "
                         "http://127.0.0.1:8000/v1)")
    endpoint = _check_url(raw, "OPENAI_BASE_URL")
    if not opts.expander_model:
        raise UsageError("--expander openai needs --expander-model: the model name the server serves")
    return _remote("openai", opts.expander_model, endpoint, "OPENAI_BASE_URL", api_key("OPENAI_API_KEY"),
                   "OPENAI_API_KEY")


def teacher_extra(ep: Source, opts) -> dict:
    """The request fields that choose thinking and its effort, as DeepSeek's chat completions take
    them: `thinking: {type: enabled|disabled}` (DeepSeek: always sent, on unless --no-thinking) and
    `reasoning_effort` when given. An openai server gets them only when given: its names are its own."""
    thinking = getattr(opts, "thinking", None)
    effort = getattr(opts, "reasoning_effort", None)
    if thinking is None and ep.kind == "deepseek":
        thinking = True
    extra: dict = {}
    if thinking is not None:
        extra["thinking"] = {"type": "enabled" if thinking else "disabled"}
    if effort:
        extra["reasoning_effort"] = effort
    return extra


def _chat(ep: Source, name: str, opts, counters: Counters, limiter=None, max_tokens=None,
          temperature=None, http: Optional[HttpOptions] = None, per_row: int = 1,
          extra: Optional[dict] = None) -> ChatAPI:
    headers = {"Authorization": f"Bearer {ep.key}"} if ep.key else {}
    http = http or HttpOptions()
    # One connection per request the engine lets through (`per_row` for the expander, which grounds
    # a row's steps at once): the pool never queues what the engine already admitted.
    client = make_client(ep.endpoint, headers, limit=max(1, int(opts.concurrency or 1)) * max(1, per_row),
                         idle_timeout=http.idle_timeout, deadline=http.deadline,
                         max_response_bytes=http.max_response_bytes)
    return ChatAPI(client, ep.model, name, ep.key_env or "", opts.max_retries,
                   counters, max_tokens=max_tokens, temperature=temperature, limiter=limiter, stream=http.stream,
                   extra=extra)


def build_teacher(ep: Source, opts, counters: Counters, limiter, http: Optional[HttpOptions] = None):
    from chainforge.providers.teachers import ApiTeacher, LocalTeacher

    if ep.kind == "local":
        return LocalTeacher(ep.model_ref, opts.max_new_tokens or LOCAL_MAX_NEW_TOKENS,
                            LOCAL_TEMPERATURE if opts.temperature is None else opts.temperature,
                            opts.seed, opts.system_prompt)
    name = "DeepSeek" if ep.kind == "deepseek" else "OpenAI-compatible"
    # DeepSeek ignores temperature in thinking mode; it is sent only when the user asked for one.
    chat = _chat(ep, name, opts, counters, limiter, opts.max_new_tokens, opts.temperature, http,
                 extra=teacher_extra(ep, opts))
    return ApiTeacher(chat, opts.system_prompt)


def build_expander(ep: Source, opts, counters: Counters, teacher, http: Optional[HttpOptions] = None):
    from chainforge.providers import expander as ex

    if ep.kind == "none":
        return ex.NoExpander()
    if ep.kind == "anthropic":
        return ex.AnthropicExpander(ep.key, ep.model, opts.max_retries, counters, ep.capabilities)
    if ep.kind == "openai":
        return ex.ChatExpander(_chat(ep, "OpenAI-compatible expander", opts, counters,
                                     max_tokens=ex.EXPANDER_MAX_TOKENS, http=http,
                                     per_row=int(opts.max_expansions or 1)))
    from chainforge.providers.teachers import LocalModel

    # One model in memory when the teacher is the same local model: both stages share its lock.
    shared = getattr(teacher, "shared", None)
    same = shared is not None and str(shared.ref) == str(ep.model_ref)
    return ex.LocalExpander(shared if same else LocalModel(ep.model_ref), ep.model, opts.seed,
                            max_new_tokens=min(96, opts.max_new_tokens or 96))
