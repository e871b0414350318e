"""Custom reward functions for the tests, loaded by dotted path (`--rewards helpers.rewards:fn`;
conftest puts tests/ on sys.path), exactly as a user's own reward module would be."""

from __future__ import annotations

import os
from difflib import SequenceMatcher

from chainforge.formats import completion_text

TARGET = "19"


def close_to_19(completions, **_) -> list[float]:
    """Similarity of the completion to the short fixed output "19" (0..1): a dense signal that a
    random tiny model can climb in a few dozen steps."""
    return [SequenceMatcher(None, completion_text(c).strip(), TARGET).ratio() for c in completions]


def crashes_after_step_2(completions, trainer_state=None, **kw) -> list[float]:
    """close_to_19, but raises once two optimizer steps are done while CHAINFORGE_TEST_CRASH is set:
    a run that dies mid-training (exit 1), to be resumed by the same command without the variable."""
    if os.environ.get("CHAINFORGE_TEST_CRASH") and trainer_state is not None and trainer_state.global_step >= 2:
        raise RuntimeError("injected crash")
    return close_to_19(completions, **kw)


def vowel_share(completions, **_):
    """A reward that only some candidates of the tiny model pass: the share of vowels, x10."""
    out = []
    for c in completions:
        letters = [ch for ch in c.lower() if ch.isalpha()]
        out.append(10 * sum(ch in "aeiou" for ch in letters) / len(letters) if letters else 0.0)
    return out


def close_to_19_logged(completions, **kw) -> list[float]:
    """close_to_19, and one line per call appended to $CHAINFORGE_TEST_REWARD_LOG: the calling
    process's RANK and the completions it scored (to see what each rank of a launch did)."""
    import json

    with open(os.environ["CHAINFORGE_TEST_REWARD_LOG"], "a", encoding="utf-8") as f:
        f.write(json.dumps({"rank": int(os.environ.get("RANK", "0")),
                            "completions": [completion_text(c) for c in completions]}) + "\n")
    return close_to_19(completions, **kw)
