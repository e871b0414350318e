"""Stand-ins for vLLM where it cannot run (no GPU here): its `LLM.generate(prompts, sampling_params)`
interface, scripted or answered by the tiny HF model."""

from __future__ import annotations

from types import SimpleNamespace


class StandInLLM:
    """vLLM's `LLM.generate(prompts, sampling_params)` interface with scripted completions; every
    call is kept in `calls`. With a `script`, each request is answered by the next list of texts in
    it (finish: stop). Without one, request p's completion j is `len{prompt tokens}-s{j}`, j+2 tokens,
    stopped for even j and cut at the length for odd j, `n` of them per its sampling params."""

    def __init__(self, script=None):
        self.script = None if script is None else list(script)
        self.calls = []

    def generate(self, prompts, sampling_params):
        self.calls.append((prompts, sampling_params))
        outs = []
        if self.script is not None:
            for _ in prompts:
                texts = self.script.pop(0)
                outs.append(SimpleNamespace(outputs=[
                    SimpleNamespace(text=t, token_ids=[0] * (i + 1), finish_reason="stop")
                    for i, t in enumerate(texts)]))
            return outs
        for p, sp in zip(prompts, sampling_params):
            outs.append(SimpleNamespace(outputs=[
                SimpleNamespace(text=f"len{len(p['prompt_token_ids'])}-s{j}", token_ids=[1] * (j + 2),
                                finish_reason="stop" if j % 2 == 0 else "length") for j in range(sp.n)]))
        return outs


class StandInVLLM:
    """A stand-in `vllm` module (put it in sys.modules["vllm"]): LLM answers with the tiny HF model's
    greedy output (via transformers)."""

    class SamplingParams(SimpleNamespace):
        pass

    class LLM:
        def __init__(self, model, seed=0, **kwargs):
            from transformers import AutoModelForCausalLM, AutoTokenizer

            self.model = AutoModelForCausalLM.from_pretrained(model)
            self.tok = AutoTokenizer.from_pretrained(model)
            self.kwargs = kwargs

        def generate(self, prompts, sampling_params):
            import torch

            outs = []
            for p, sp in zip(prompts, sampling_params):
                ids = torch.tensor([p["prompt_token_ids"]])
                gen = self.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=sp.max_tokens,
                                          do_sample=False, eos_token_id=sp.stop_token_ids,
                                          pad_token_id=self.tok.pad_token_id)[0, ids.shape[1]:].tolist()
                text = self.tok.decode([t for t in gen if t not in sp.stop_token_ids], skip_special_tokens=True)
                finished = any(t in sp.stop_token_ids for t in gen)
                outs.append(SimpleNamespace(outputs=[SimpleNamespace(text=text, token_ids=gen,
                                                                     finish_reason="stop" if finished else "length")
                                                     for _ in range(sp.n)]))
            return outs
