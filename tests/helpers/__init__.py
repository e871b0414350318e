"""What the tests share, each in one place (conftest.py holds the fixtures built on them):

- `cli`: the in-process CLI runner, the one exit-2 check, `sigint_default` for interrupted children;
- `files`: `write_jsonl`, and `manifest` through the package's own manifest reader;
- `rows`: rows shaped like the stages' inputs and outputs, and recipe files;
- `fake_apis`: loopback DeepSeek/OpenAI/Anthropic (Messages and Message Batches) servers, a proxy;
- `vllm_stand_ins`: vLLM's `LLM` interface, scripted or answered by the tiny HF model;
- `launch`: `torchrun` on this checkout's package, a run SIGKILLed at a training step;
- `probe_run`: `python -m chainforge` with a trainer callback that logs steps, kills, saves each rank's weights;
- `rewards`: reward functions loaded by dotted path (`--rewards helpers.rewards:fn`);
- `tiny`: the tiny random Qwen2 and its byte-level BPE tokenizer; a scripted one that always writes one text;
- `checkpoints`: a saved checkpoint checked whole and trained, the loss on assistant turns.
"""
