"""Which language a word is in, decided by its Unicode script: the `language` reward's measure.

DeepSeek-R1 adds a language-consistency reward during RL, "the proportion of target language
words in the CoT", because its chain of thought drifted between languages (Chinese and English
mostly). This module counts those words.

A word is a run of letters (digits, punctuation and symbols only separate words), except that
each CJK ideograph and kana is a word of its own (those scripts put no spaces between words, as
in `chainforge.decontam`). A word's script is the Unicode script of most of its letters (the first
word of the character's Unicode name: LATIN, CYRILLIC, CJK → Han, HIRAGANA, HANGUL, …). A language
is a set of scripts (`LANGUAGE_SCRIPTS`: en → Latin, zh → Han, ja → Han + Hiragana + Katakana,
ko → Hangul, ru → Cyrillic, …); a word is in the target language when its script is one of them.

Neutral (counted neither way): numbers, LaTeX (math between `$…$`, `$$…$$`, `\\(…\\)`, `\\[…\\]`
and `\\begin{…}…\\end{…}`, and every `\\command` elsewhere), the Super CoT tags and `<think>`,
and single Latin or Greek letters (maths variables: `x`, `n`, `α`).

What the script cannot tell apart: languages that share one (English and French are both Latin,
Chinese and the Han of Japanese are one script). Mixing across scripts is what R1 reports and
what this catches; a word-level detector for same-script languages is not used (docs/reference.md
says why).
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from typing import Any, Iterable, Optional

LATIN, HAN, HIRAGANA, KATAKANA = "Latin", "Han", "Hiragana", "Katakana"
JAPANESE = (HAN, HIRAGANA, KATAKANA)

# language code (ISO 639-1) → the scripts its words are written in
LANGUAGE_SCRIPTS: dict[str, tuple[str, ...]] = {
    **{code: (LATIN,) for code in ("en", "fr", "de", "es", "it", "pt", "nl", "sv", "da", "no", "fi", "pl", "cs",
                                   "ro", "hu", "tr", "vi", "id", "ms")},
    "zh": (HAN,), "ja": JAPANESE, "ko": ("Hangul",),
    **{code: ("Cyrillic",) for code in ("ru", "uk", "bg", "sr")},
    "el": ("Greek",), "ar": ("Arabic",), "fa": ("Arabic",), "ur": ("Arabic",), "he": ("Hebrew",),
    "hi": ("Devanagari",), "mr": ("Devanagari",), "ne": ("Devanagari",), "bn": ("Bengali",), "ta": ("Tamil",),
    "te": ("Telugu",), "th": ("Thai",), "ka": ("Georgian",), "hy": ("Armenian",),
}
# Unicode names that do not start with their script's name
_NAME_SCRIPTS = {"CJK": HAN, "HALFWIDTH": None, "FULLWIDTH": None}

_TAGS = re.compile(r"<\\*/?(?:reasoning_process|think|explanation|summary)>")
_MATH = re.compile(r"\$\$.*?\$\$|\$[^$]*\$|\\\(.*?\\\)|\\\[.*?\\\]|\\begin\{([^}]*)\}.*?\\end\{\1\}", re.S)
_COMMAND = re.compile(r"\\[A-Za-z]+")
_WORD = re.compile(r"[^\W\d_]+")
# scripts written without spaces between words: one character, one word
_SPLIT = re.compile(r"([\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ffff])")
_VARIABLE_SCRIPTS = (LATIN, "Greek")


def script(ch: str) -> Optional[str]:
    """The Unicode script of a letter (`Latin`, `Han`, `Cyrillic`, …), None for a non-letter."""
    name = unicodedata.name(ch, "")
    if not name or not ch.isalpha():
        return None
    first = name.split()[0]
    if first in _NAME_SCRIPTS:
        plain = unicodedata.normalize("NFKC", ch)[:1]
        return _NAME_SCRIPTS[first] or (script(plain) if plain != ch else None)
    return first.capitalize()


def words(text: str) -> list[str]:
    """The words of `text` that carry a language (neutral parts removed, see above)."""
    text = unicodedata.normalize("NFKC", text)
    text = _TAGS.sub(" ", text)
    text = _MATH.sub(" ", text)
    text = _COMMAND.sub(" ", text)
    text = _SPLIT.sub(r" \1 ", text)
    out = []
    for word in _WORD.findall(text):
        if len(word) == 1 and script(word) in _VARIABLE_SCRIPTS:
            continue  # x, n, α: maths, not language
        out.append(word)
    return out


def word_script(word: str) -> Optional[str]:
    counts = Counter(s for s in map(script, word) if s)
    return counts.most_common(1)[0][0] if counts else None


def scripts_of(code: str) -> tuple[str, ...]:
    """The scripts of a language code; ValueError naming the known codes for another one."""
    key = str(code).strip().lower()
    if key not in LANGUAGE_SCRIPTS:
        raise ValueError(f"unknown language {code!r}; known: {', '.join(sorted(LANGUAGE_SCRIPTS))}")
    return LANGUAGE_SCRIPTS[key]


def detect_scripts(text: str) -> Optional[tuple[str, ...]]:
    """The target scripts for a prompt: its most common script's language (Japanese when it holds
    kana), or None when it has no words (a prompt of numbers and symbols only)."""
    counts = Counter(s for s in map(word_script, words(text)) if s)
    if not counts:
        return None
    top = counts.most_common(1)[0][0]
    if top in JAPANESE and (counts[HIRAGANA] or counts[KATAKANA]):
        return JAPANESE
    return (top,)


def target_share(text: str, scripts: Iterable[str]) -> Optional[float]:
    """The share of `text`'s words written in one of `scripts`; 1.0 when it has no such words at
    all (nothing in another language either)."""
    wanted = set(scripts)
    found = [word_script(w) for w in words(text)]
    if not found:
        return 1.0
    return sum(s in wanted for s in found) / len(found)


def prompt_language(prompt: Any) -> Optional[tuple[str, ...]]:
    """detect_scripts of a prompt as TRL passes it: text, or chat messages (their user turns)."""
    from chainforge.decontam import prompt_text

    try:
        return detect_scripts(prompt_text(prompt))
    except ValueError:
        return None
