"""Teachers: the reasoner that writes the chain of thought and the answer for each prompt.

- `deepseek` / `openai` (`ApiTeacher`): one chat-completions request per prompt. The reasoning is
  `reasoning_content` (or vLLM's `reasoning`); when a server sends none, it is the leading
  `<think>…</think>` of `content`, parsed like the local teacher's completion.
- `local` (`LocalTeacher`): an in-process model through `chainforge.sampling.generate`, a batch of
  prompts per call.

Parsing a completion (`split_think`): a leading `<think>…</think>` is the reasoning and what follows
is the answer (an unclosed `<think>`, cut by --max-new-tokens, runs to the end). Fallback, for
models that emit no `<think>` block (SmolLM2, a random test model) or nothing after it: the whole
completion is the reasoning (split into steps by `chainforge.steps.split_steps`) and the
answer is its last `\\boxed{…}`, else its last non-empty line — so the answer is also the last step.
A completion that is empty (or only whitespace) fails that prompt ("empty completion"); an API
reply with reasoning but an empty `content` (the reasoner ran out of `max_tokens` while thinking)
fails it too, with the finish reason: neither has an answer to learn from.
"""

from __future__ import annotations

import asyncio
import re
import threading
from dataclasses import dataclass, field
from typing import Optional, Union

from chainforge.providers.chat import ChatAPI, PromptFailed
from chainforge.formats import last_boxed

_THINK = re.compile(r"\A\s*<think>(.*?)(?:</think>|\Z)(.*)\Z", re.S)


@dataclass
class PromptItem:
    index: int  # position in the input
    id: str
    prompt: str  # the question (the last user turn)
    reference: Optional[str]
    system: Optional[str] = None  # a system turn given in the input's messages


@dataclass
class TeacherReply:
    reasoning: str
    answer: str
    usage: dict = field(default_factory=dict)  # prompt, completion, reasoning, cache_hit


Result = Union[TeacherReply, PromptFailed]


def split_think(text: str) -> tuple[str, str]:
    """(reasoning, answer) of a completion; see the module docstring for the fallback."""
    m = _THINK.match(text or "")
    if m:
        reasoning, answer = m.group(1).strip(), m.group(2).strip()
    else:
        reasoning, answer = (text or "").strip(), ""
    if not answer:
        lines = [ln.strip() for ln in reasoning.splitlines() if ln.strip()]
        boxed = last_boxed(reasoning)
        answer = boxed.strip() if boxed and boxed.strip() else (lines[-1] if lines else "")
    return reasoning or answer, answer


def reply_parts(content: str, reasoning: Optional[str], finish_reason: Optional[str] = None) -> tuple[str, str]:
    """(reasoning, answer) of an API reply; PromptFailed when there is no answer."""
    if reasoning and reasoning.strip():
        answer = (content or "").strip()
        if not answer:
            why = f" (finish_reason={finish_reason}: raise --max-new-tokens)" if finish_reason == "length" else ""
            raise PromptFailed(f"the teacher gave reasoning but no final answer{why}", 200)
        return reasoning.strip(), answer
    reasoning, answer = split_think(content)
    if not answer:
        raise PromptFailed("empty completion from the teacher", 200)
    return reasoning, answer


def messages_for(item: PromptItem, system_prompt: Optional[str]) -> list[dict]:
    """One conversation per prompt: an optional system turn and exactly one user turn."""
    system = item.system or system_prompt
    turns = [{"role": "system", "content": system}] if system else []
    return turns + [{"role": "user", "content": item.prompt}]


class ApiTeacher:
    """deepseek or openai: one request per prompt."""

    batch_size = 1

    def __init__(self, chat: ChatAPI, system_prompt: Optional[str] = None):
        self.chat, self.system_prompt = chat, system_prompt
        self.model = chat.model

    def token_estimate(self, item: PromptItem) -> int:
        return len(item.prompt) // 4 + (self.chat.max_tokens or 4096)

    async def answer(self, items: list[PromptItem]) -> list[Result]:
        out: list[Result] = []
        for item in items:
            try:
                reply = await self.chat.complete(messages_for(item, self.system_prompt), self.token_estimate(item))
                reasoning, answer = reply_parts(reply.content, reply.reasoning, reply.finish_reason)
                out.append(TeacherReply(reasoning, answer, reply.usage))
            except PromptFailed as exc:
                out.append(exc)
        return out

    async def aclose(self) -> None:
        await self.chat.client.aclose()


class LocalModel:
    """One in-process model shared by every request of a run (the teacher's and the expander's).

    Requests run in worker threads (`asyncio.to_thread`), so without these locks 32 rows in flight
    would load the model up to 32 times at once and decode on it concurrently — the fast tokenizer
    raises "Already borrowed" when two threads pad with it. Loading happens once, under `_load_lock`;
    `generate_lock` lets one generate call at a time use the model (callers batch instead).
    """

    def __init__(self, ref):
        self.ref = ref
        self._loaded = None
        self._load_lock = threading.Lock()
        self.generate_lock = threading.Lock()

    def load(self):
        with self._load_lock:
            if self._loaded is None:
                from chainforge.models import load_model, load_tokenizer

                self._loaded = (load_model(self.ref), load_tokenizer(self.ref))
        return self._loaded


class LocalTeacher:
    """An in-process model through the one sampling engine; `batch_size` prompts per call (decoding
    on CPU is memory-bound: 64 tokens for 16 SmolLM2 prompts took 9.5 s, for 8 prompts 9.0 s)."""

    def __init__(self, model_ref, max_new_tokens: int, temperature: float, seed: int,
                 system_prompt: Optional[str] = None, batch_size: int = 32):
        self.ref, self.max_new_tokens, self.temperature = model_ref, max_new_tokens, temperature
        self.seed, self.system_prompt, self.batch_size = seed, system_prompt, batch_size
        self.model = str(model_ref)
        self.shared = LocalModel(model_ref)

    def load(self):
        return self.shared.load()

    def generate(self, items: list[PromptItem]) -> list[Result]:
        from chainforge.sampling import generate, render_prompt

        convs = [messages_for(i, self.system_prompt) for i in items]
        with self.shared.generate_lock:  # the tokenizer is shared too: counting uses it
            model, tok = self.load()
            # Each prompt seeded by its input position (keys), not by the batch it lands in: a resumed
            # run, whose batches hold only the prompts left, draws what an uninterrupted one would have.
            comps = generate(model, tok, convs, n=1, temperature=self.temperature,
                             max_new_tokens=self.max_new_tokens, seed=self.seed,
                             keys=[item.index for item in items], batch_size=len(items))
            prompt_tokens = [len(tok(render_prompt(tok, conv), add_special_tokens=False)["input_ids"])
                             for conv in convs]
        out: list[Result] = []
        for (c,), n_prompt in zip(comps, prompt_tokens):
            reasoning, answer = split_think(c.text)
            if not answer:
                out.append(PromptFailed("empty completion from the local teacher", None))
                continue
            out.append(TeacherReply(reasoning, answer, {"prompt": n_prompt, "completion": c.tokens,
                                                        "reasoning": 0, "cache_hit": 0}))
        return out

    def token_estimate(self, item: PromptItem) -> int:
        return 0

    async def answer(self, items: list[PromptItem]) -> list[Result]:
        return await asyncio.to_thread(self.generate, items)

    async def aclose(self) -> None:
        return None
