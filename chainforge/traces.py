"""Training conversations: the one place rows become chat messages with an answer.

- `trace_row`: a kept completion as a dataset row (reject's output, distill's traces): `id`,
  `prompt`, `reference`, `text`, `messages`, `reward`. One system-turn rule: the training
  conversation holds the user prompt (and the prompt's own system turn, if it has one), never
  the system prompt used for sampling; `sft_dataset` adds that one at training time.
- `sft_dataset`: rows with a `messages` column (collect/reject/distill outputs) or
  prompt/completion columns → one `messages` column ready for the SFT trainer.
"""

from __future__ import annotations

from typing import Any, Optional

from chainforge.errors import UsageError
from chainforge.log import info


def trace_row(row_id: str, prompt: Any, reference: Optional[Any], text: str, reward: float, **extra) -> dict:
    """A kept completion as a training row (see the module docstring for the system-turn rule)."""
    from chainforge.sampling import as_messages

    return {
        "id": row_id,
        "prompt": prompt,
        "reference": None if reference is None else str(reference),
        "text": text,
        "messages": as_messages(prompt) + [{"role": "assistant", "content": text}],
        "reward": float(reward),
        **extra,
    }


def sft_dataset(rows, prompt_column: str = "prompt", only_correct: bool = True,
                system_prompt: Optional[str] = None):
    """The training rows as one `messages` column (role/content dicts ending in an assistant turn).

    Accepts a `messages` column (collect and reject outputs, unchanged) or prompt/completion
    columns (either may be a string or a list of chat messages). With `only_correct`, rows whose
    `correct` is False are skipped; rows without a `correct` column all count. `system_prompt`
    is put before conversations that have no system turn: grpo, reject, eval and distill sample
    under the Super CoT system prompt by default, so the model is trained under it too (a small
    model that learnt the format without it does not produce it with it, and vice versa).
    """
    import datasets

    columns = rows.column_names
    if "messages" not in columns and not (prompt_column in columns and "completion" in columns):
        raise UsageError(f"--data needs a 'messages' column (a collect or reject output) or "
                         f"'{prompt_column}' and 'completion' columns; columns found: {', '.join(columns)}")
    if only_correct and "correct" in columns:
        before = len(rows)
        rows = rows.filter(lambda c: c is not False, input_columns=["correct"], keep_in_memory=True)
        if len(rows) == 0:
            raise UsageError(f"every one of the {before} rows has correct=false, so --only-correct leaves "
                             f"nothing to train on; pass --all-rows to train on them anyway")
        if len(rows) < before:
            info(f"--only-correct: skipped {before - len(rows)} of {before} rows with correct=false")
    conversations = []
    for i, row in enumerate(rows):
        if "messages" in columns:
            messages = _as_messages(row["messages"], i, "messages")
        else:
            messages = (_as_messages(row[prompt_column], i, prompt_column, role="user")
                        + _as_messages(row["completion"], i, "completion", role="assistant"))
        last = max((k for k, m in enumerate(messages) if m["role"] == "assistant"), default=None)
        if last is None or not messages[last]["content"].strip():
            raise UsageError(f"--data row {i} has no assistant turn with content in its messages; every row "
                             f"needs the answer to train on (fix the row or drop it)")
        if last == 0:
            raise UsageError(f"--data row {i} starts with the assistant turn: there is no prompt before it")
        if system_prompt and messages[0]["role"] != "system":
            messages = [{"role": "system", "content": system_prompt}] + messages
            last += 1
        conversations.append(messages[:last + 1])  # turns after the last answer carry no loss
    return datasets.Dataset.from_dict({"messages": conversations})


def _as_messages(value, i: int, column: str, role: Optional[str] = None) -> list[dict]:
    if isinstance(value, str) and role:
        return [{"role": role, "content": value}]
    if not isinstance(value, list) or not value:
        raise UsageError(f"--data row {i}: '{column}' must be a non-empty list of {{role, content}} messages"
                         + (" or a string" if role else "") + f", got {type(value).__name__}")
    messages = []
    for m in value:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise UsageError(f"--data row {i}: every message in '{column}' needs a string 'role' and 'content'")
        messages.append({"role": m["role"], "content": m["content"]})  # drop struct padding keys
    return messages


def prompt_messages(messages: list[dict]) -> list[dict]:
    """The turns before the (last) assistant answer: what the model is asked."""
    last = max(k for k, m in enumerate(messages) if m["role"] == "assistant")
    return messages[:last]


