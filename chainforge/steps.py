"""Reasoning → steps, and which steps are uncertain enough to ground.

Splitting rule (`split_steps`): a step is a paragraph (text between blank lines), which is how R1
writes its chain of thought. Text with no blank line is split at line breaks; a single line is split
into sentences. Whitespace is stripped and empty pieces are dropped, so every step is non-empty.

Uncertainty (`UncertaintyRule`): a step is uncertain when it contains a hedging marker (whole words,
any case: the defaults below, plus `--uncertain-marker` and the `--marker-domain` lists) or when it
is longer than `--long-step-words` words (long steps are where reasoners wander). When more steps
are uncertain than `--max-expansions`, the ones with the most markers are expanded (long counts as
one marker; ties go to the earlier step): every uncertain step is flagged, only those are grounded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Sequence

DEFAULT_MARKERS = ("maybe", "not sure", "guess", "uncertain", "unsure", "perhaps", "might be",
                   "i think", "probably", "i believe", "hmm", "wait")

# Domain lists: phrases that, in that field, usually mean "this step needs checking".
DOMAIN_MARKERS = {
    "math": ("approximately", "roughly", "assume", "if i recall", "should be", "seems", "check"),
    "code": ("should work", "i assume", "probably returns", "edge case", "not tested", "deprecated"),
    "science": ("i recall", "typically", "usually", "around", "estimated", "according to"),
    "facts": ("i recall", "if i remember", "was born", "founded in", "capital of", "in the year"),
}

DEFAULT_LONG_STEP_WORDS = 120

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=\S)")


def split_steps(reasoning: str) -> list[str]:
    """Paragraphs; else lines; else sentences. Every step is stripped and non-empty."""
    text = (reasoning or "").strip()
    if not text:
        return []
    for pieces in (re.split(r"\n\s*\n", text), text.splitlines(), _SENTENCE_END.split(text)):
        steps = [p.strip() for p in pieces if p.strip()]
        if len(steps) > 1:
            return steps
    return [text]


@dataclass
class UncertaintyRule:
    markers: Sequence[str] = DEFAULT_MARKERS
    long_step_words: int = DEFAULT_LONG_STEP_WORDS
    pattern: re.Pattern = field(init=False, repr=False)

    def __post_init__(self) -> None:
        words = sorted({m.strip().lower() for m in self.markers if m.strip()}, key=len, reverse=True)
        body = "|".join(r"\s+".join(map(re.escape, w.split())) for w in words) or r"(?!)"
        self.pattern = re.compile(rf"(?<!\w)(?:{body})(?!\w)", re.IGNORECASE)

    @classmethod
    def build(cls, extra: Sequence[str] = (), domains: Sequence[str] = (),
              long_step_words: int = DEFAULT_LONG_STEP_WORDS) -> "UncertaintyRule":
        markers = list(DEFAULT_MARKERS) + list(extra)
        for d in domains:
            markers += DOMAIN_MARKERS[d]
        return cls(markers, long_step_words)

    def score(self, step: str) -> int:
        """0 for a certain step; otherwise how uncertain (markers found, +1 when long)."""
        return len(self.pattern.findall(step)) + (len(step.split()) > self.long_step_words)

    def is_uncertain(self, step: str) -> bool:
        return self.score(step) > 0


def choose_expansions(steps: Sequence[str], rule: UncertaintyRule, cap: int) -> tuple[list[bool], list[int]]:
    """Flags for every step and the indices (in order) of the at most `cap` steps to ground."""
    scores = [rule.score(s) for s in steps]
    flagged = [s > 0 for s in scores]
    ranked = sorted((i for i, s in enumerate(scores) if s > 0), key=lambda i: (-scores[i], i))
    return flagged, sorted(ranked[:max(cap, 0)])
