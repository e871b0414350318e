"""The Super CoT format — the one writer and the one parser — and final-answer checking.

A Super CoT completion (the assistant turn):

    <reasoning_process>
    <think>a step</think>
    <think>an uncertain step
    <explanation>the grounding for it</explanation>
    </think>
    </reasoning_process>
    <summary>
    the final concise answer
    </summary>

Escaping: only the reserved tag strings are touched. A reserved tag met inside a text is written
with one backslash after its `<` (`<think>` → `<\\think>`, `</summary>` → `<\\/summary>`); one that
already has k backslashes gets k+1, so the mapping is reversible for every text and the parser only
ever sees raw reserved tags where the writer put them.
"""

from __future__ import annotations

import logging
import re
import threading
import unicodedata
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from typing import Optional, Sequence

# The system prompt that asks a model for the Super CoT format (grpo, reject, eval, distill).
SUPER_COT_SYSTEM_PROMPT = (
    "Think step by step. Write your reasoning inside <reasoning_process>...</reasoning_process>, one "
    "step per <think>...</think> block. When a step is uncertain, add a short factual check inside "
    "that step as <explanation>...</explanation>. Then give only the final answer inside "
    "<summary>...</summary>."
)

TAG_NAMES = ("reasoning_process", "think", "explanation", "summary")
RESERVED_TAGS = tuple(f"<{slash}{name}>" for name in TAG_NAMES for slash in ("", "/"))

_ESCAPABLE = re.compile(r"<(\\*)(/?)(" + "|".join(TAG_NAMES) + r")>")
_ESCAPED = re.compile(r"<(\\+)(/?)(" + "|".join(TAG_NAMES) + r")>")
_RAW_TAG = re.compile(r"</?(?:" + "|".join(TAG_NAMES) + r")>")


def escape(text: str) -> str:
    return _ESCAPABLE.sub(lambda m: f"<\\{m.group(1)}{m.group(2)}{m.group(3)}>", text)


def unescape(text: str) -> str:
    return _ESCAPED.sub(lambda m: f"<{m.group(1)[1:]}{m.group(2)}{m.group(3)}>", text)


@dataclass
class SuperCoT:
    steps: list[str]
    expansions: list[Optional[str]]
    summary: str
    # derived
    expanded: int = field(init=False)

    def __post_init__(self) -> None:
        self.expanded = sum(e is not None for e in self.expansions)


def _clean(text: str, what: str) -> str:
    if not isinstance(text, str):
        raise ValueError(f"{what} must be a string, got {type(text).__name__}")
    text = text.strip()
    if not text:
        raise ValueError(f"{what} is empty")
    return text


def write_super_cot(steps: Sequence[str], expansions: Optional[Sequence[Optional[str]]], summary: str) -> str:
    """The assistant content for these steps, their expansions (None = not expanded) and summary."""
    if not steps:
        raise ValueError("a Super CoT completion needs at least one step")
    expansions = list(expansions) if expansions is not None else [None] * len(steps)
    if len(expansions) != len(steps):
        raise ValueError(f"{len(steps)} steps but {len(expansions)} expansions")
    lines = ["<reasoning_process>"]
    for i, (step, exp) in enumerate(zip(steps, expansions)):
        body = escape(_clean(step, f"step {i}"))
        if exp is None:
            lines.append(f"<think>{body}</think>")
        else:
            lines.append(f"<think>{body}\n<explanation>{escape(_clean(exp, f'expansion {i}'))}</explanation>\n</think>")
    lines += ["</reasoning_process>", "<summary>", escape(_clean(summary, "summary")), "</summary>"]
    return "\n".join(lines)


_WHOLE = re.compile(r"\A\s*<reasoning_process>(.*?)</reasoning_process>\s*<summary>(.*?)</summary>\s*\Z", re.S)
_THINK = re.compile(r"\s*<think>(.*?)</think>", re.S)
_EXPLAINED = re.compile(r"\A(.*?)<explanation>(.*?)</explanation>\s*\Z", re.S)


def parse_super_cot(text: str) -> SuperCoT:
    """Parse a Super CoT completion; `ValueError` says what is malformed."""
    if not isinstance(text, str):
        raise ValueError(f"expected a string, got {type(text).__name__}")
    m = _WHOLE.match(text)
    if not m:
        raise ValueError("not a Super CoT completion: expected <reasoning_process>…</reasoning_process> "
                         "followed by <summary>…</summary> and nothing else")
    body, summary_raw = m.group(1), m.group(2)
    if _RAW_TAG.search(summary_raw):
        raise ValueError("a reserved tag inside <summary>")
    steps, expansions = [], []
    pos = 0
    for t in _THINK.finditer(body):
        if t.start() != pos:
            raise ValueError("text outside <think> blocks inside <reasoning_process>")
        pos = t.end()
        inner = t.group(1)
        e = _EXPLAINED.match(inner)
        step_raw, exp_raw = (e.group(1), e.group(2)) if e else (inner, None)
        if _RAW_TAG.search(step_raw) or (exp_raw is not None and _RAW_TAG.search(exp_raw)):
            raise ValueError("misplaced reserved tag inside a <think> block")
        step = unescape(step_raw.strip())
        if not step:
            raise ValueError("an empty <think> step")
        steps.append(step)
        expansions.append(None if exp_raw is None else unescape(exp_raw.strip()))
    if body[pos:].strip():
        raise ValueError("text outside <think> blocks inside <reasoning_process>")
    if not steps:
        raise ValueError("<reasoning_process> holds no <think> step")
    summary = unescape(summary_raw.strip())
    if not summary:
        raise ValueError("empty <summary>")
    return SuperCoT(steps, expansions, summary)


def is_super_cot(text: str) -> bool:
    try:
        parse_super_cot(text)
        return True
    except ValueError:
        return False


# ---- answers ------------------------------------------------------------------------------------

def completion_text(completion) -> str:
    """A completion as TRL passes it: a string, or a list of chat messages (take the last one)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return str(completion.get("content", ""))
    if isinstance(completion, (list, tuple)) and completion:
        last = completion[-1]
        return str(last.get("content", "")) if isinstance(last, dict) else str(last)
    return ""


def last_boxed(text: str) -> Optional[str]:
    """Content of the last `\\boxed{…}` (or `\\fbox{…}`), braces matched; None if there is none."""
    best = None
    for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            best = text[m.end():i - 1]
    return best


def extract_final_answer(completion) -> Optional[str]:
    """The `<summary>` of a well-formed Super CoT completion, else the last `\\boxed{}`, else None."""
    text = completion_text(completion)
    try:
        return parse_super_cot(text).summary
    except ValueError:
        return last_boxed(text)


def _normalise(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).lower().strip()
    text = re.sub(r"^(the\s+)?(final\s+)?answer\s*(is|:)\s*", "", text)
    text = re.sub(r"[\s$]+", " ", text)
    return text.strip(" .,;:!\"'`")


def _reference_text(reference) -> Optional[str]:
    if reference is None:
        return None
    ref = str(reference).strip()
    if "####" in ref:  # GSM8K: the final answer follows '####'
        ref = ref.rsplit("####", 1)[1].strip().replace(",", "")
    return ref or None


def _mv_timeouts() -> tuple[Optional[int], Optional[int]]:
    # math-verify bounds its work with signal.alarm, which only the main thread may set. Elsewhere
    # (TRL reward workers, collect's threads) run without it; inputs are length-capped instead.
    if threading.current_thread() is threading.main_thread():
        return 5, 5
    # math-verify warns on every call without a timeout; that is this module's choice, not news.
    for name in ("math_verify.parser", "math_verify.grader"):
        logging.getLogger(name).setLevel(logging.ERROR)
    return None, None


_MAX_MATH_CHARS = 2000

# ---- single numeric values --------------------------------------------------------------------
# A numeric reference is matched only by a candidate that states ONE value. math-verify evaluates
# expressions, so "6 - 5" used to match the reference 1: a GRPO policy at lr 3e-5 learned to restate
# the question in its <summary> (73 of 200 eval summaries), and pass@1 read 0.725 where the stated
# numbers were right 0.36 of the time.
#
# How a candidate is read: wrappers that do not change a value are peeled off, one at a time and in
# any order, until none is left (`_peel`): the last \boxed{}, math delimiters ($…$, $$…$$, \(…\),
# \[…\]), brackets around the whole text ((…), [[…]], {…}, with or without \left/\right), "the
# answer is"/"Answer:", leading words ("Answer \[ 9 \]"), a left-hand side ("x = 7", "6 - 5 = 1")
# and end punctuation. What is left must be one number, with only currency, thousands commas,
# percent/degree signs and unit words around it ("12 cm", "12\\text{ cm}"). Peeling never drops an
# operator between two numbers, so "6 - 5", "(6) - (5)" and "\left(6 - 5\right)" still state no value.
_MATH_DELIMS = ((r"\(", r"\)"), (r"\[", r"\]"), ("$$", "$$"), ("$", "$"))
_BRACKETS = {"(": ")", "[": "]", "{": "}"}
# \left( … \right), \bigl[ … \bigr]: sizing commands change how a bracket looks, not what it means
_SIZED = re.compile(r"\\(?:left|right|[bB]igg?[lr]?)\s*(?=[()\[\]])|\\(?:left|right)\s*\.")
_LATEX_WRAPPERS = re.compile(r"\\(?:text|mathrm|textbf|mathbf|mbox|operatorname)\s*\{([^{}]*)\}")
_LATEX_SPACES = re.compile(r"\\[,;:! ]|\\quad|\\qquad|~")
_CURRENCY = re.compile(r"\A(-?)\s*(?:\\\$|\$|€|£|¥|usd\b|eur\b|gbp\b)\s*", re.I)
_DEGREES = re.compile(r"\^\s*\{?\\circ\}?|°|\\%|%|\\degree")
# unit words after the number; whitespace between words keeps the split unambiguous (no backtracking blow-up)
_UNIT = r"[A-Za-z]+\.?(?:\^\{?-?\d\}?|[²³])?(?:\s*/\s*[A-Za-z]+(?:\^\{?-?\d\}?|[²³])?)?"
_UNITS = re.compile(rf"(?:\s*{_UNIT}(?:\s+{_UNIT})*)?\s*")
_ANSWER_IS = re.compile(r"\A(?:the\s+)?(?:final\s+)?answer\s*(?:is|:)\s*", re.I)
_LEAD_WORDS = re.compile(r"\A(?:[A-Za-z][A-Za-z']*[\s,:]+)+")
_NEGATING = re.compile(r"\b(?:minus|negative|not|no|than|except|between|from|of)\b", re.I)
_DECIMAL = re.compile(r"\A([+-]?)(\d{1,3}(?:,\d{3})+|\d+)?(?:\.(\d+))?")
_FRACTION = re.compile(r"\A([+-]?)\s*(?:\\[dt]?frac\s*\{\s*(\d+)\s*\}\s*\{\s*(\d+)\s*\}|\\[dt]?frac(\d)(\d)"
                       r"|(\d+)\s*/\s*(\d+))")


def _enclosed(text: str, left: str, right: str) -> Optional[str]:
    """The inside of `text` when `left … right` encloses all of it (the opener's own closer is the
    last character: "(6) - (5)" is not enclosed); else None."""
    if len(text) < len(left) + len(right) or not (text.startswith(left) and text.endswith(right)):
        return None
    inner = text[len(left):len(text) - len(right)]
    if left in _BRACKETS:
        depth = 0
        for ch in inner:
            depth += 1 if ch == left else -1 if ch == right else 0
            if depth < 0:
                return None
        return inner if depth == 0 else None
    # math delimiters do not nest: enclosed only when no other delimiter is inside
    return None if left in inner or right in inner else inner


def _peel_once(text: str) -> Optional[str]:
    """`text` with one value-preserving wrapper taken off; `text` itself when there is none; None
    when leading words change the value ("minus 5", "not 5")."""
    boxed = last_boxed(text)
    if boxed is not None and boxed.strip() != text:
        return boxed.strip()
    for left, right in (*_MATH_DELIMS, *_BRACKETS.items()):
        inner = _enclosed(text, left, right)
        if inner is not None:
            return inner.strip()
    m = _ANSWER_IS.match(text)
    if m and m.end() < len(text):
        return text[m.end():]
    if "=" in text:  # "x = 7", "6 - 5 = 1": the value is what follows the last "="
        return text.rsplit("=", 1)[1].strip()
    lead = _LEAD_WORDS.match(text)  # "The result is 1", "so the total is $5", "Answer \[ 9 \]"
    if lead and lead.end() < len(text):
        if _NEGATING.search(lead.group(0)):
            return None
        return text[lead.end():]
    return text.rstrip(" .;!")


def _peel(text: str) -> Optional[str]:
    """What `text` states once every wrapper is off (see above); None when words negate it."""
    text = unicodedata.normalize("NFKC", text).replace("\u2212", "-")
    text = _SIZED.sub("", text).strip()
    for _ in range(len(text) + 1):  # each step shortens the text, so this ends
        peeled = _peel_once(text)
        if peeled is None or peeled == text:
            return peeled
        text = peeled.strip()
    return text


def numeric_value(text) -> Optional[Fraction]:
    """The one number `text` states, as an exact Fraction; None when it is not a single value.

    Accepted: integers, decimals, thousands commas (1,000), fractions in lowest terms (1/2,
    \\frac{1}{2}) and the wrappers above ("Answer \\[ 9 \\]", "$\\left( \\frac{1}{3} \\right)$").
    Refused: anything with an operator between numbers ("6 - 5", "2 + 3 = 5 - 1"), lists ("1, 2"),
    and fractions not in lowest terms ("6/3" is a division restated, not an answer)."""
    if text is None:
        return None
    s = _peel(str(text))
    if s is None:
        return None
    s = s.replace("{,}", ",")
    s = _LATEX_SPACES.sub(" ", s)
    s = _LATEX_WRAPPERS.sub(lambda m: f" {m.group(1)} ", s)
    s = _DEGREES.sub(" ", s).strip()
    sign = ""
    m = _CURRENCY.match(s)
    if m:
        sign, s = m.group(1), s[m.end():]
    m = _FRACTION.match(s)
    if m:
        neg = m.group(1) == "-"
        num, den = next((m.group(i), m.group(i + 1)) for i in (2, 4, 6) if m.group(i) is not None)
        value = Fraction(int(num), int(den)) if int(den) else None
        if value is None or value.denominator != int(den) or value.denominator == 1:
            return None
    else:
        m = _DECIMAL.match(s)
        if not m or (m.group(2) is None and m.group(3) is None):
            return None
        neg = m.group(1) == "-"
        value = Fraction(Decimal((m.group(2) or "0").replace(",", "") + "." + (m.group(3) or "0")))
    if not _UNITS.fullmatch(s[m.end():]):
        return None
    if sign == "-":
        neg = not neg
    return -value if neg else value


def answers_match(reference, candidate) -> Optional[bool]:
    """Does `candidate` give the reference answer? None when there is no usable reference.

    A reference that is one number is matched only by a candidate stating one equal number
    (`numeric_value`: so `1/2`, `0.5` and `\\frac{1}{2}` agree, `$1,000` is 1000, and `6 - 5` never
    matches 1). Other answers are compared with math-verify, falling back to a normalised string
    comparison. A candidate that lists several answers does not match.
    """
    ref = _reference_text(reference)
    if ref is None:
        return None
    if candidate is None:
        return False
    cand = str(candidate).strip()
    boxed = last_boxed(cand)
    if boxed is not None:
        cand = boxed
    if not cand:
        return False
    ref_value = numeric_value(ref)
    if ref_value is not None:
        return numeric_value(cand) == ref_value
    if _normalise(ref) == _normalise(cand):
        return True
    if len(ref) > _MAX_MATH_CHARS or len(cand) > _MAX_MATH_CHARS:
        return False
    try:
        from math_verify import parse, verify
        parse_t, verify_t = _mv_timeouts()
        gold = parse(_as_math(ref), parsing_timeout=parse_t)
        if not gold:
            return False
        pred = parse(_as_math(cand), parsing_timeout=parse_t, extraction_mode="first_match")
        if not pred:
            return False
        return bool(verify(gold[:1], pred[:1], timeout_seconds=verify_t))
    except Exception:  # math-verify raises on pathological input; such an answer does not match
        return False


def _as_math(text: str) -> str:
    # math-verify anchors LaTeX extraction on $…$ or \boxed{}; a bare "42" or "x^2" parses best
    # when given to it as inline math.
    if "$" in text or "\\boxed" in text or "\\(" in text or "\\[" in text:
        return text
    return f"${text}$"
