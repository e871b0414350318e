"""Word n-gram overlap between training prompts and eval prompts: the decontamination algorithm.

A training prompt is contaminated when it shares a run of `n` consecutive words (default 8, as in
open-r1 and s1) with an eval prompt, after both are normalised the same way:

- the prompt's text: a string as it is; chat messages (a list of {role, content}) by their user
  turns only, because system prompts and earlier assistant turns are shared boilerplate, not the
  question;
- NFKC, case-folded ("Ｘ" and "x", "Straße" and "STRASSE" are the same word);
- words are runs of letters and digits: every other character (whitespace, punctuation, math
  symbols, underscores) only separates words, so "x^2+1=0," and "X ^ 2 + 1 = 0" are the same four
  words. open-r1 lower-cases and splits on whitespace only; dropping punctuation as well catches
  copies that differ in spacing around symbols or in trailing punctuation;
- CJK ideographs and kana are one word each: those scripts have no spaces, so without this a whole
  clause would be one "word" and an 8-gram would span a paragraph.

Prompts shorter than `n` words cannot share an n-gram with anything, so an eval prompt of k < n
words is compared whole: a training prompt that contains all k words as a consecutive run (equal
to it, or with words around it) is contaminated by it. A training prompt shorter than `n` words
is only ever removed that way, by containing a whole short eval prompt; a short fragment shared
with a longer eval question is the kind of common phrase ("what is the value of") the n-gram rule
deliberately ignores. An eval prompt with no words at all matches nothing.

When a training prompt matches several eval prompts, the reported match is the one from the
earliest eval file (in the order given), and within that file the earliest overlap in the
training prompt's text.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

from chainforge.errors import UsageError

# Letters and digits; `_` is excluded so that fill-in blanks ("___") are not words.
_WORD = re.compile(r"[^\W_]+")
# Ideographs, kana and compatibility ideographs: scripts written without spaces between words.
_CJK = re.compile(r"([\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ffff])")


def prompt_text(prompt: Any) -> str:
    """The text a prompt is compared by: a string itself; chat messages their user turns' text.

    A message's content may be a string or a list of parts ({"type": "text", "text": ...}); non-text
    parts are ignored. Raises ValueError for anything that is neither text nor chat messages.
    """
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, (list, tuple)) and all(isinstance(m, dict) for m in prompt):
        texts = []
        for message in prompt:
            if message.get("role") != "user":
                continue
            content = message.get("content")
            if isinstance(content, str):
                texts.append(content)
            elif isinstance(content, (list, tuple)):
                texts.extend(part["text"] for part in content
                             if isinstance(part, dict) and isinstance(part.get("text"), str))
        return "\n".join(texts)
    raise ValueError(f"expected text or a list of chat messages, got {type(prompt).__name__}")


def normalise(text: str) -> list[str]:
    """The words of `text` after the normalisation described above."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = _CJK.sub(r" \1 ", text)
    return _WORD.findall(text)


def ngrams(words: Sequence[str], n: int) -> list[str]:
    """Every run of `n` consecutive words, joined by single spaces, in text order."""
    return [" ".join(words[i:i + n]) for i in range(len(words) - n + 1)]


@dataclass(frozen=True)
class Match:
    """Where a training prompt overlaps an eval set: `file` and `row` index the eval prompt (in
    the order they were added), `ngram` is the shared words (the whole eval prompt when it is
    shorter than n words)."""

    file: int
    row: int
    ngram: str


class EvalIndex:
    """The n-grams of every eval prompt, mapped to the first eval row that has each.

    Eval prompts shorter than n words are kept whole, grouped by length, so a training prompt is
    checked against them with one lookup per position and length.
    """

    def __init__(self, n: int = 8):
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        self.n = n
        self._ngrams: dict[str, tuple[int, int]] = {}
        self._whole: dict[int, dict[str, tuple[int, int]]] = {}
        self.prompts = 0
        self.short = 0

    def add(self, file: int, row: int, words: Sequence[str]) -> None:
        """Index one eval prompt (already normalised). Earlier (file, row) keep precedence."""
        self.prompts += 1
        if not words:
            return
        if len(words) < self.n:
            self.short += 1
            self._whole.setdefault(len(words), {}).setdefault(" ".join(words), (file, row))
            return
        table = self._ngrams
        for gram in ngrams(words, self.n):
            table.setdefault(gram, (file, row))

    def first_match(self, words: Sequence[str]) -> Optional[Match]:
        """The match to report for one training prompt (already normalised), or None."""
        best: Optional[tuple[int, int, int, str]] = None  # (file, position, row, ngram)
        lookups = [(self.n, self._ngrams)] if len(words) >= self.n else []
        lookups += [(k, table) for k, table in self._whole.items() if k <= len(words)]
        for length, table in lookups:
            get = table.get
            for pos, gram in enumerate(ngrams(words, length)):
                if best is not None and best[0] == 0 and pos >= best[1]:
                    break  # nothing from here on can beat an earlier hit in the first file
                hit = get(gram)
                if hit is not None and (best is None or (hit[0], pos) < best[:2]):
                    best = (hit[0], pos, hit[1], gram)
        return None if best is None else Match(file=best[0], row=best[2], ngram=best[3])


def build_index(eval_sets: Iterable[Iterable[str]], n: int = 8) -> EvalIndex:
    """An index over eval prompt texts: `eval_sets[f][r]` is the text of row r of eval file f."""
    index = EvalIndex(n)
    for f, texts in enumerate(eval_sets):
        for r, text in enumerate(texts):
            index.add(f, r, normalise(text))
    return index


def find_matches(train_texts: Iterable[str], index: EvalIndex) -> list[Optional[Match]]:
    """The first match (or None) of every training prompt text, in order."""
    return [index.first_match(normalise(text)) for text in train_texts]


# ---- eval sets: `--against PATH[:column=NAME][:subset=NAME][:split=NAME]` ----------------------------
# Each eval set names its own prompt column, subset and split, because eval sets rarely share them
# with the training data (GSM8K: column `question`, subset `main`, split `test`). The settings trail
# the path as `:key=value`: no quoting in a shell, a plain scalar in YAML (flow lists too), and a
# hub id or a path never ends in `:split=…`. Parsed from the right, so a path may hold colons.

EVAL_SET_KEYS = ("column", "subset", "split")
EVAL_SET_FORM = "PATH[:column=NAME][:subset=NAME][:split=NAME]"
EVAL_SET_EXAMPLE = "openai/gsm8k:subset=main:split=test:column=question"
_SETTING = re.compile(r"\A([A-Za-z_][\w-]*)=(.*)\Z", re.S)


@dataclass(frozen=True)
class EvalSet:
    """One `--against` value: where the eval prompts are and how to read them (None: the default
    --prompt-column for `column`; the loader's default for `subset` and `split`)."""

    given: str
    path: str
    column: Optional[str] = None
    subset: Optional[str] = None
    split: Optional[str] = None


def parse_eval_set(value: str, flag: str = "--against") -> EvalSet:
    """`openai/gsm8k:subset=main:split=test:column=question` → EvalSet; a malformed value is a
    UsageError (exit 2) that shows the form and an example."""
    text = str(value).strip()
    parts = text.split(":")
    settings: dict[str, str] = {}

    def bad(why: str) -> UsageError:
        return UsageError(f"{flag} {text}: {why}; an eval set is {EVAL_SET_FORM}, e.g. {flag} {EVAL_SET_EXAMPLE}")

    while len(parts) > 1:
        m = _SETTING.match(parts[-1])
        if not m:
            break
        key, val = m.group(1).replace("-", "_"), m.group(2).strip()
        if key not in EVAL_SET_KEYS:
            raise bad(f"unknown setting '{m.group(1)}' (known: {', '.join(EVAL_SET_KEYS)})")
        if key in settings:
            raise bad(f"'{key}' is given twice")
        if not val:
            raise bad(f"'{key}=' has no value")
        settings[key] = val
        parts.pop()
    path = ":".join(parts).strip()
    if not path:
        raise bad("no path or hub id before the settings")
    if len(parts) > 1 and not Path(path).expanduser().exists():  # `openai/gsm8k:main:test`
        raise bad(f"'{parts[-1]}' is not a key=value setting")
    return EvalSet(given=text, path=path, **settings)


def eval_set_path(value: Any) -> Any:
    """The path part of an `--against` value (the value itself when it is not a well-formed one)."""
    try:
        return parse_eval_set(value).path if isinstance(value, str) else value
    except UsageError:
        return value


def format_eval_set(path: str, column: Optional[str] = None, subset: Optional[str] = None,
                    split: Optional[str] = None) -> str:
    """The `--against` value for these settings (the inverse of parse_eval_set)."""
    settings = {"column": column, "subset": subset, "split": split}
    return path + "".join(f":{k}={v}" for k, v in settings.items() if v is not None)
