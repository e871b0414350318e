"""Stage 0, `chainforge collect`: hybrid chain-of-thought data from a reasoner and a grounding model.

The parts, one job each:
- `http`: the aiohttp client: streamed replies, proxies, and per-request limits (idle, total, size);
- `retry`: which failures are retried, fail one prompt, or stop the run; backoff;
- `chat`: one OpenAI-compatible chat-completions call with retries (DeepSeek, vLLM, …);
- `teachers`: deepseek/openai over `chat`, local through `chainforge.sampling`; `<think>` parsing;
- `steps`: reasoning → steps, uncertainty markers, which steps to ground;
- `expander`: the grounding (`anthropic` SDK Messages API, openai, local, none);
- `batches`: the groundings as Anthropic Message Batches (`--expander-batch`);
- `pricing`: USD per 1M tokens and the cost of a request;
- `limits`: requests/tokens per minute and the --max-cost budget;
- `journal`: the append-only journal and failed.jsonl that make a run resumable;
- `rows`: the contract's columns and the dataset built from the journal;
- `engine`: the concurrent loop tying them together; `progress`: bar and summary.
"""
