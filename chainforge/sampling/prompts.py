"""Prompts as the models see them: chat messages, the system turn, the rendered text, and the
stable id of a prompt (the row id every stage gives a row)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Optional, Sequence, Union

Prompt = Union[str, Sequence[dict]]
# Written next to every checkpoint (chainforge.cards): the system prompt it was trained with.
SYSTEM_PROMPT_FILE = "system_prompt.txt"


def as_messages(prompt: Prompt, system_prompt: Optional[str] = None) -> list[dict]:
    """A prompt as chat messages (role and content only): a string becomes one user turn; the
    system prompt goes first unless the prompt has its own system turn."""
    if isinstance(prompt, str):
        messages = [{"role": "user", "content": prompt}]
    else:
        messages = [{"role": m["role"], "content": m["content"]} for m in prompt]
    if system_prompt and not (messages and messages[0].get("role") == "system"):
        messages.insert(0, {"role": "system", "content": system_prompt})
    return messages


def render_prompt(tokenizer, prompt: Prompt, system_prompt: Optional[str] = None) -> str:
    """The text the model sees: the chat template with the assistant turn opened."""
    return tokenizer.apply_chat_template(as_messages(prompt, system_prompt), tokenize=False,
                                         add_generation_prompt=True)


def resolve_system_prompt(value: Optional[str], model=None, quiet: bool = False) -> Optional[str]:
    """`--system-prompt`: unset means the one `model` (a ChainForge checkpoint) was trained with,
    else the Super CoT instructions; an empty string means none."""
    from chainforge.formats import SUPER_COT_SYSTEM_PROMPT

    if value is None and model is not None:
        saved = saved_system_prompt(model)
        if saved is not None:
            if not quiet:
                from chainforge.log import info

                info(f"system prompt: the one {model} was trained with ({SYSTEM_PROMPT_FILE}"
                     f"{', none' if not saved else ''}); --system-prompt to change it")
            value = saved
    if value is None:
        return SUPER_COT_SYSTEM_PROMPT
    return value or None


def saved_system_prompt(model) -> Optional[str]:
    """The system prompt saved with a ChainForge checkpoint (None: not a checkpoint folder or none
    saved; '' means trained with no system turn)."""
    if not isinstance(model, (str, Path)):
        return None
    path = Path(str(model)).expanduser() / SYSTEM_PROMPT_FILE
    try:
        return path.read_text(encoding="utf-8") if path.is_file() else None
    except OSError:
        return None


def prompt_id(prompt: Prompt) -> str:
    """A prompt's stable id (the one collect gives rows without an `id`): a hash of its text."""
    body = prompt if isinstance(prompt, str) else json.dumps(list(prompt), sort_keys=True, ensure_ascii=False,
                                                              default=str)
    return hashlib.sha256(body.encode("utf-8")).hexdigest()[:16]


def row_id(given, prompt: Prompt) -> str:
    """A row's id everywhere (collect, reject, eval, distill): its `id` value when it has a
    non-empty one, else `prompt_id(prompt)`."""
    return str(given) if given not in (None, "") else prompt_id(prompt)
