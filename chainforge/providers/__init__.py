"""Talking to remote and local models: what collect, reject and distill use to reach a teacher or
an expander. Nothing here imports a stage, `chainforge.collect` or the CLI.

The parts, one job each:
- `http`: the aiohttp client: streamed replies, proxies, and per-request limits (idle, total, size);
- `retry`: which failures are retried, fail one prompt, or stop the run; backoff;
- `chat`: one OpenAI-compatible chat-completions call with retries (DeepSeek, vLLM, …);
- `teachers`: deepseek/openai over `chat`, local through `chainforge.sampling`; `<think>` parsing;
- `expander`: the grounding (`anthropic` SDK Messages API, openai, local, none);
- `batches`: the groundings as Anthropic Message Batches (`--expander-batch`);
- `pricing`: USD per 1M tokens and the cost of a request;
- `limits`: requests/tokens per minute and the --max-cost budget;
- `resolve`: which teacher and expander, from their names, models, keys and the environment;
- `grounding`: the one grounding path for uncertain steps (collect, reject and distill).

Splitting reasoning into steps and choosing the uncertain ones is `chainforge.steps`.
"""
