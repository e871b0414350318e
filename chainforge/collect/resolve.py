"""Which teacher and expander a run uses: names, models, keys, base URLs — checked before --output
exists (exit 2 with the fix), then built once the output is created.

Keys come only from the environment (DEEPSEEK_API_KEY, ANTHROPIC_API_KEY, OPENAI_API_KEY); they
are never options, so they never reach the manifest, the journal or a log line.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

from chainforge.collect.chat import ChatAPI, Counters
from chainforge.collect.http import Endpoint, make_client
from chainforge.errors import UsageError

TEACHERS = ("deepseek", "openai", "local")
EXPANDERS = ("anthropic", "openai", "local", "none")
DEEPSEEK_URL = "https://api.deepseek.com"
DEEPSEEK_MODEL = "deepseek-reasoner"
LOCAL_MODEL = "smollm2"
LOCAL_MAX_NEW_TOKENS = 512
LOCAL_TEMPERATURE = 0.6  # the R1 paper's sampling temperature


@dataclass
class Source:
    """A resolved remote or local model: `kind` is deepseek/openai/anthropic/local/none."""

    kind: str
    model: Optional[str] = None
    base_url: Optional[str] = None
    key: Optional[str] = None
    key_env: Optional[str] = None
    model_ref: object = None  # chainforge.models.ModelRef for local

    def describe(self) -> str:
        if self.kind == "none":
            return "none"
        where = f" at {self.base_url}" if self.base_url else ""
        return f"{self.kind} ({self.model}{where})"


def _check_url(url: str, what: str) -> str:
    try:
        Endpoint.parse(url)
    except ValueError as exc:
        raise UsageError(f"{what}: {exc}; give a base URL like https://api.deepseek.com or "
                         f"http://127.0.0.1:8000/v1") from None
    return url.strip().rstrip("/")


def resolve_teacher(opts) -> Source:
    kind = opts.teacher
    if kind not in TEACHERS:
        raise UsageError(f"--teacher {kind!r} is not one of {', '.join(TEACHERS)}")
    if kind == "local":
        from chainforge.models import resolve_model

        model = opts.teacher_model or LOCAL_MODEL
        return Source("local", model, model_ref=resolve_model(model, "--teacher-model"))
    if kind == "deepseek":
        key = os.environ.get("DEEPSEEK_API_KEY", "").strip()
        if not key:
            raise UsageError("DEEPSEEK_API_KEY is not set: export your DeepSeek API key, or use "
                             "--teacher local (an in-process model, no key, no network)")
        if opts.teacher_base_url:
            url = _check_url(opts.teacher_base_url, "--teacher-base-url")
        else:
            url = _check_url(os.environ.get("DEEPSEEK_BASE_URL") or DEEPSEEK_URL, "DEEPSEEK_BASE_URL")
        return Source("deepseek", opts.teacher_model or DEEPSEEK_MODEL, url, key, "DEEPSEEK_API_KEY")
    raw = opts.teacher_base_url or os.environ.get("OPENAI_BASE_URL")
    if not raw:
        raise UsageError("--teacher openai needs a server: pass --teacher-base-url "
                         "(e.g. http://127.0.0.1:8000/v1) or set OPENAI_BASE_URL")
    url = _check_url(raw, "--teacher-base-url" if opts.teacher_base_url else "OPENAI_BASE_URL")
    if not opts.teacher_model:
        raise UsageError("--teacher openai needs --teacher-model: the model name the server serves")
    return Source("openai", opts.teacher_model, url, os.environ.get("OPENAI_API_KEY") or None, "OPENAI_API_KEY")


def resolve_expander(opts, teacher: Source) -> Source:
    kind = opts.expander
    if kind is None:  # the default depends on the environment; the resolved name is recorded
        kind = "anthropic" if os.environ.get("ANTHROPIC_API_KEY", "").strip() else "none"
    if kind not in EXPANDERS:
        raise UsageError(f"--expander {kind!r} is not one of {', '.join(EXPANDERS)}")
    if kind == "none":
        return Source("none")
    if kind == "anthropic":
        from chainforge.collect.expander import DEFAULT_ANTHROPIC_MODEL

        key = os.environ.get("ANTHROPIC_API_KEY", "").strip()
        if not key:
            raise UsageError("ANTHROPIC_API_KEY is not set: export your Anthropic API key, or pass "
                             "--expander none (no grounding) or --expander local")
        base = os.environ.get("ANTHROPIC_BASE_URL")
        if base:
            _check_url(base, "ANTHROPIC_BASE_URL")
        return Source("anthropic", opts.expander_model or DEFAULT_ANTHROPIC_MODEL, base, key, "ANTHROPIC_API_KEY")
    if kind == "local":
        from chainforge.models import resolve_model

        model = opts.expander_model or (teacher.model if teacher.kind == "local" else LOCAL_MODEL)
        return Source("local", model, model_ref=resolve_model(model, "--expander-model"))
    raw = os.environ.get("OPENAI_BASE_URL")
    if not raw:
        raise UsageError("--expander openai needs OPENAI_BASE_URL (the server's base URL, e.g. "
                         "http://127.0.0.1:8000/v1)")
    if not opts.expander_model:
        raise UsageError("--expander openai needs --expander-model: the model name the server serves")
    return Source("openai", opts.expander_model, _check_url(raw, "OPENAI_BASE_URL"),
                     os.environ.get("OPENAI_API_KEY") or None, "OPENAI_API_KEY")


def _chat(ep: Source, name: str, opts, counters: Counters, limiter=None, max_tokens=None,
          temperature=None) -> ChatAPI:
    headers = {"Authorization": f"Bearer {ep.key}"} if ep.key else {}
    return ChatAPI(make_client(ep.base_url, headers), ep.model, name, ep.key_env or "", opts.max_retries,
                   counters, max_tokens=max_tokens, temperature=temperature, limiter=limiter)


def build_teacher(ep: Source, opts, counters: Counters, limiter):
    from chainforge.collect.teachers import ApiTeacher, LocalTeacher

    if ep.kind == "local":
        return LocalTeacher(ep.model_ref, opts.max_new_tokens or LOCAL_MAX_NEW_TOKENS,
                            LOCAL_TEMPERATURE if opts.temperature is None else opts.temperature,
                            opts.seed, opts.system_prompt)
    name = "DeepSeek" if ep.kind == "deepseek" else "OpenAI-compatible"
    # deepseek-reasoner ignores temperature; send it only when the user asked for one.
    chat = _chat(ep, name, opts, counters, limiter, opts.max_new_tokens, opts.temperature)
    return ApiTeacher(chat, opts.system_prompt)


def build_expander(ep: Source, opts, counters: Counters, teacher):
    from chainforge.collect import expander as ex

    if ep.kind == "none":
        return ex.NoExpander()
    if ep.kind == "anthropic":
        return ex.AnthropicExpander(ep.key, ep.model, opts.max_retries, counters)
    if ep.kind == "openai":
        return ex.ChatExpander(_chat(ep, "OpenAI-compatible expander", opts, counters,
                                     max_tokens=ex.EXPANDER_MAX_TOKENS))
    same = getattr(teacher, "ref", None) is not None and str(teacher.ref) == str(ep.model_ref)
    if same:
        load = teacher.load
    else:
        from chainforge.collect.teachers import LocalTeacher

        load = LocalTeacher(ep.model_ref, 0, 0.0, opts.seed).load
    return ex.LocalExpander(load, ep.model, opts.seed, max_new_tokens=min(96, opts.max_new_tokens or 96))
