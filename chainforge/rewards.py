"""Reward functions: plain functions with TRL's reward signature, registered by name.

    fn(completions, **columns) -> list[float | None]

A completion is a string or a list of chat messages; the reference answer arrives in the `answer`
column (TRL passes every dataset column as a keyword, plus `prompts`, `completion_ids`,
`trainer_state`, … — all accepted and ignored when unused). `None` means "no signal" (TRL turns it
into NaN and leaves it out of the sum).

Values (docs/reference.md):
- `accuracy`  1.0 when the final answer matches `answer`, else 0.0; None when there is no usable
  reference. The final answer is the `<summary>` of a well-formed Super CoT completion; a completion
  that is not one is scored from its last `\\boxed{}`, else 0.0.
- `format`    0.2 for a well-formed Super CoT completion, else 0.0.
- `expansion` 0.1 when the completion is correct AND holds at least one `<explanation>` of ≥ 5
  words, else 0.0 — guarded by correctness so that padding a wrong answer with explanations earns
  nothing.
- off by default: `length` (cosine-scaled, after "Demystifying Long Chain-of-Thought Reasoning",
  Yeo et al. 2025: short correct answers earn most, short wrong answers are punished most),
  `repetition` (n-gram repetition penalty, ≤ 0), `overlong` (DAPO's soft overlong punishment, ≤ 0),
  `language` (DeepSeek-R1's language consistency: the share of the reasoning's words written in
  the target language, 0..1; `get_reward("language", language="zh")`, default each prompt's own
  language; words are told apart by Unicode script, see `chainforge.language`).

`get_reward("module.path:function")` (or `module.path.function`) loads a user's own function.
"""

from __future__ import annotations

import importlib
import math
import re
from typing import Any, Callable, Optional, Sequence

from chainforge import language as lang
from chainforge.formats import answers_match, completion_text, extract_final_answer, parse_super_cot

RewardFn = Callable[..., list[Optional[float]]]

ACCURACY = 1.0
FORMAT = 0.2
EXPANSION = 0.1
EXPANSION_MIN_WORDS = 5


def _texts(completions: Sequence[Any]) -> list[str]:
    return [completion_text(c) for c in completions]


def _answers(answer: Optional[Sequence[Any]], n: int) -> list[Any]:
    if answer is None:
        return [None] * n
    if isinstance(answer, (str, int, float)):
        return [answer] * n
    return list(answer)


def _correct(text: str, reference: Any) -> Optional[bool]:
    return answers_match(reference, extract_final_answer(text))


def accuracy(completions, answer=None, **_) -> list[Optional[float]]:
    out: list[Optional[float]] = []
    for text, ref in zip(_texts(completions), _answers(answer, len(completions))):
        ok = _correct(text, ref)
        out.append(None if ok is None else (ACCURACY if ok else 0.0))
    return out


def format(completions, **_) -> list[Optional[float]]:  # noqa: A001 - the contract's name
    out: list[Optional[float]] = []
    for text in _texts(completions):
        try:
            parse_super_cot(text)
            out.append(FORMAT)
        except ValueError:
            out.append(0.0)
    return out


def expansion(completions, answer=None, **_) -> list[Optional[float]]:
    out: list[Optional[float]] = []
    for text, ref in zip(_texts(completions), _answers(answer, len(completions))):
        try:
            parsed = parse_super_cot(text)
        except ValueError:
            out.append(0.0)
            continue
        grounded = any(e is not None and len(e.split()) >= EXPANSION_MIN_WORDS for e in parsed.expansions)
        out.append(EXPANSION if grounded and answers_match(ref, parsed.summary) else 0.0)
    return out


def _lengths(texts: list[str], completion_ids: Optional[Sequence[Sequence[int]]]) -> list[int]:
    if completion_ids is not None and len(completion_ids) == len(texts):
        return [len(ids) for ids in completion_ids]
    return [len(t.split()) for t in texts]


def make_length(max_len: int = 1000, min_value_wrong: float = -0.5, max_value_wrong: float = 0.0,
                min_value_correct: float = 0.5, max_value_correct: float = 1.0) -> RewardFn:
    """Cosine-scaled length reward. Length in completion tokens when TRL passes `completion_ids`,
    else in words. Correct: max_value_correct at length 0 falling to min_value_correct at max_len.
    Wrong: min_value_wrong at length 0 rising to max_value_wrong (longer thinking is punished less)."""

    def length(completions, answer=None, completion_ids=None, **_) -> list[Optional[float]]:
        texts = _texts(completions)
        out: list[Optional[float]] = []
        for text, ref, n in zip(texts, _answers(answer, len(texts)), _lengths(texts, completion_ids)):
            ok = _correct(text, ref)
            if ok is None:
                out.append(None)
                continue
            progress = min(n, max_len) / max_len
            cosine = math.cos(progress * math.pi)
            lo, hi = (min_value_correct, max_value_correct) if ok else (max_value_wrong, min_value_wrong)
            out.append(lo + 0.5 * (hi - lo) * (1.0 + cosine))
        return out

    return length


def make_repetition(ngram_size: int = 3, max_penalty: float = -1.0) -> RewardFn:
    """(1 - distinct n-grams / n-grams) × max_penalty: 0 for text that never repeats itself."""
    if max_penalty > 0:
        raise ValueError(f"max_penalty must be ≤ 0, got {max_penalty}")

    def repetition(completions, **_) -> list[Optional[float]]:
        out: list[Optional[float]] = []
        for text in _texts(completions):
            words = text.lower().split()
            grams = [tuple(words[i:i + ngram_size]) for i in range(len(words) - ngram_size + 1)]
            out.append(0.0 if not grams else (1 - len(set(grams)) / len(grams)) * max_penalty)
        return out

    return repetition


def make_overlong(max_len: int = 1024, cache: int = 256) -> RewardFn:
    """DAPO's soft overlong punishment: 0 up to max_len − cache, then a linear ramp to −1 at
    max_len, −1 beyond. Length as in `length`."""
    if not 0 < cache <= max_len:
        raise ValueError(f"need 0 < cache ≤ max_len, got cache={cache}, max_len={max_len}")

    def overlong(completions, completion_ids=None, **_) -> list[Optional[float]]:
        texts = _texts(completions)
        out: list[Optional[float]] = []
        for n in _lengths(texts, completion_ids):
            if n <= max_len - cache:
                out.append(0.0)
            elif n <= max_len:
                out.append(((max_len - cache) - n) / cache)
            else:
                out.append(-1.0)
        return out

    return overlong


_THINK = re.compile(r"<think>(.*?)</think>", re.S)


def reasoning_text(text: str) -> str:
    """The reasoning of a completion: a Super CoT completion's steps and explanations, else the
    first `<think>…</think>` (R1's own format), else the whole text."""
    try:
        parsed = parse_super_cot(text)
        return "\n".join([*parsed.steps, *(e for e in parsed.expansions if e)])
    except ValueError:
        pass
    m = _THINK.search(text)
    return m.group(1) if m else text


def make_language(language: Optional[str] = None) -> RewardFn:
    """DeepSeek-R1's language-consistency reward: the share of the reasoning's words written in
    the target language (0..1). `language` is a code (en, zh, ja, …; `chainforge.language`); None
    takes each prompt's own language, from the script of most of its words (None reward when the
    prompt has no words). Numbers, LaTeX, the Super CoT tags and one-letter variables are neutral;
    reasoning with no words at all scores 1.0 (nothing in another language)."""
    fixed = lang.scripts_of(language) if language else None

    def language_reward(completions, prompts=None, **_) -> list[Optional[float]]:
        texts = _texts(completions)
        given = list(prompts) if prompts is not None else [None] * len(texts)
        out: list[Optional[float]] = []
        for text, prompt in zip(texts, given):
            scripts = fixed or (lang.prompt_language(prompt) if prompt is not None else None)
            out.append(None if scripts is None else lang.target_share(reasoning_text(text), scripts))
        return out

    language_reward.__name__ = "language"
    return language_reward


# name -> factory(**params) -> reward function
_FACTORIES: dict[str, Callable[..., RewardFn]] = {
    "accuracy": lambda: accuracy,
    "format": lambda: format,
    "expansion": lambda: expansion,
    "length": make_length,
    "repetition": make_repetition,
    "overlong": make_overlong,
    "language": make_language,
}
DEFAULT_REWARDS = ("accuracy", "format", "expansion")
NEEDS_ANSWER = {"accuracy", "expansion", "length"}

REWARDS: dict[str, RewardFn] = {name: factory() for name, factory in _FACTORIES.items()}


def _named(fn: RewardFn, name: str) -> RewardFn:
    # TRL logs each reward under its function's __name__ (rewards/<name>/mean).
    if getattr(fn, "__name__", None) == name:
        return fn

    def named(*args, **kwargs):
        return fn(*args, **kwargs)

    named.__name__ = name
    named.__doc__ = fn.__doc__
    return named


def get_reward(name: str, **params) -> RewardFn:
    """The reward function registered as `name` (built with `params`), or a user's own function
    given as a dotted path (`my_pkg.rewards:brevity`). Unknown names raise KeyError."""
    if name in _FACTORIES:
        fn = _FACTORIES[name](**params) if params else REWARDS[name]
        return _named(fn, name)
    if ":" in name or "." in name:
        module_name, _, attr = name.partition(":") if ":" in name else name.rpartition(".")
        try:
            fn = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise KeyError(f"cannot load reward {name!r}: {exc}") from None
        if params:
            fn = fn(**params)
        return _named(fn, attr)
    raise KeyError(f"unknown reward {name!r}; known rewards: {', '.join(sorted(_FACTORIES))} "
                   f"(or a dotted path to your own function)")


def parse_reward_spec(spec: str | Sequence[str] | None, default: Sequence[str] = DEFAULT_REWARDS
                      ) -> tuple[list[str], list[float]]:
    """`"accuracy,format=0.5"` (or a list of such items) → (names, weights); weights default to 1.0.
    ValueError on a malformed item."""
    if spec is None or spec == "" or spec == []:
        items = list(default)
    else:
        raw = [spec] if isinstance(spec, str) else list(spec)
        items = [part.strip() for chunk in raw for part in str(chunk).split(",") if part.strip()]
    names, weights = [], []
    for item in items:
        name, _, weight = item.partition("=")
        name = name.strip()
        try:
            w = float(weight) if weight.strip() else 1.0
        except ValueError:
            raise ValueError(f"reward weight in {item!r} is not a number (use name=WEIGHT, e.g. format=0.5)") from None
        if name in names:
            raise ValueError(f"reward {name!r} is listed twice")
        names.append(name)
        weights.append(w)
    return names, weights


def weighted_total(values: Sequence[Optional[float]], weights: Sequence[float]) -> float:
    """One completion's total reward as TRL computes it: the weighted sum, None left out."""
    return float(sum(w * v for v, w in zip(values, weights) if v is not None and not math.isnan(v)))


def score(completions: Sequence[Any], columns: dict[str, Sequence[Any]], names: Sequence[str],
          weights: Sequence[float], params: Optional[dict[str, dict]] = None
          ) -> tuple[list[float], dict[str, list[Optional[float]]]]:
    """Score completions with several rewards: (total per completion, values per reward name).
    `params` gives a reward its options by name (`{"language": {"language": "zh"}}`)."""
    params = params or {}
    per_name = {name: get_reward(name, **params.get(name, {}))(list(completions), **columns) for name in names}
    totals = [weighted_total([per_name[n][i] for n in names], weights) for i in range(len(completions))]
    return totals, per_name


def resolve_rewards(spec: str | Sequence[str] | None, default: Sequence[str] = DEFAULT_REWARDS,
                    custom: bool = True) -> tuple[list[str], list[float]]:
    """`--rewards` checked for a command: (names, weights), or a UsageError (exit 2) naming the
    problem and the known rewards. grpo, reject and eval all resolve their option here."""
    from chainforge.errors import UsageError

    try:
        names, weights = parse_reward_spec(spec, default=default)
    except ValueError as exc:
        raise UsageError(f"--rewards: {exc}") from None
    if not names:
        raise UsageError("--rewards is empty: name at least one reward, e.g. accuracy,format")
    for name in names:
        if not custom and name not in REWARDS:  # a dotted path would import and run that code
            raise UsageError(f"--rewards {name}: custom rewards are turned off (--no-custom-rewards); "
                             f"use registered rewards: {', '.join(sorted(REWARDS))}")
        try:
            get_reward(name)
        except KeyError as exc:
            raise UsageError(f"--rewards: {exc.args[0]}") from None
    return names, weights
