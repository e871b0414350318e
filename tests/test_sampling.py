import pytest

from chainforge.models import load_model, load_tokenizer, resolve_model
from chainforge.sampling import as_messages, generate, render_prompt


@pytest.fixture(scope="module")
def loaded(tiny_model):
    ref = resolve_model(str(tiny_model))
    return load_model(ref), load_tokenizer(ref)


PROMPTS = ["What is 1 + 1?", "Hi", [{"role": "user", "content": "A longer prompt about the quick brown fox"}]]


def test_n_completions_per_prompt_in_order(loaded):
    model, tok = loaded
    from chainforge.sampling.core import stop_token_ids

    stops = stop_token_ids(tok, model)
    out = generate(model, tok, PROMPTS, n=3, temperature=0.8, max_new_tokens=10, seed=1, batch_size=4)
    assert [len(c) for c in out] == [3, 3, 3]
    for comps in out:
        for c in comps:
            # `tokens` counts the generated ids, a stop token included; `finished` says the last one is
            # a stop token, and only the last one can be; otherwise the budget ran out
            assert c.tokens == len(c.ids) and 1 <= c.tokens <= 10
            assert not any(t in stops for t in c.ids[:-1])
            assert c.finished == (c.ids[-1] in stops)
            assert c.finished or c.tokens == 10
            assert c.text == tok.decode([t for t in c.ids if t not in stops], skip_special_tokens=True)
    # (the scripted model of test_scripted_teacher.py stops at EOS: finished, 6 tokens)


def test_deterministic_under_a_seed(loaded):
    model, tok = loaded
    a = generate(model, tok, PROMPTS, n=2, temperature=1.0, max_new_tokens=12, seed=7)
    b = generate(model, tok, PROMPTS, n=2, temperature=1.0, max_new_tokens=12, seed=7)
    c = generate(model, tok, PROMPTS, n=2, temperature=1.0, max_new_tokens=12, seed=8)
    assert a == b
    assert a != c


def test_batched_greedy_equals_one_at_a_time(loaded):
    model, tok = loaded
    batched = generate(model, tok, PROMPTS, n=1, temperature=0, max_new_tokens=16, batch_size=8)
    single = [generate(model, tok, [p], n=1, temperature=0, max_new_tokens=16)[0] for p in PROMPTS]
    assert [b[0].text for b in batched] == [s[0].text for s in single]


def test_prompt_rendering(loaded):
    _, tok = loaded
    assert as_messages("hi", "sys")[0] == {"role": "system", "content": "sys"}
    assert render_prompt(tok, "hi").endswith("<|im_start|>assistant\n")


# ---- the fast engine ---------------------------------------------------------------------------------

import json
from types import SimpleNamespace

from chainforge.errors import UsageError
from chainforge.sampling import (
    VLLMModel, auto_batch_size, bytes_per_row, engine_spec, generate_journaled, stop_token_ids,
)
from helpers.vllm_stand_ins import StandInLLM


def test_samples_do_not_depend_on_batch_size_or_position(loaded):
    model, tok = loaded
    kw = dict(n=3, temperature=1.0, max_new_tokens=10, seed=3)
    big = generate(model, tok, PROMPTS, batch_size=16, **kw)
    one = generate(model, tok, PROMPTS, batch_size=1, **kw)
    assert [[c.text for c in p] for p in big] == [[c.text for c in p] for p in one]
    # a prompt keeps its draws when it is sampled alone, given its key
    alone = generate(model, tok, PROMPTS[2:], keys=[2], **kw)
    assert alone[0] == big[2]
    # the n samples of a prompt differ from each other (each row has its own generator)
    assert len({c.text for c in big[0]}) > 1


def test_greedy_repeats_one_decode_and_tiny_top_p_is_greedy(loaded):
    model, tok = loaded
    greedy = generate(model, tok, PROMPTS, n=3, temperature=0, max_new_tokens=12)
    assert all(len({c.text for c in p}) == 1 for p in greedy)
    nucleus = generate(model, tok, PROMPTS, n=2, temperature=1.0, top_p=1e-6, max_new_tokens=12, seed=5)
    assert [[c.text for c in p] for p in nucleus] == [[p[0].text] * 2 for p in greedy]


def test_on_batch_counts_every_completion(loaded):
    model, tok = loaded
    seen = []
    generate(model, tok, PROMPTS, n=2, temperature=0.5, max_new_tokens=4, batch_size=4, on_batch=seen.append)
    assert sum(seen) == 6 and len(seen) == 2
    seen.clear()
    generate(model, tok, PROMPTS, n=4, temperature=0, max_new_tokens=4, on_batch=seen.append)
    assert sum(seen) == 12


def test_journal_resumes_where_it_stopped(loaded, tmp_path):
    model, tok = loaded
    kw = dict(n=2, temperature=1.0, max_new_tokens=8, seed=11)
    journal = tmp_path / "j.jsonl"
    full = generate_journaled(journal, model, tok, PROMPTS, chunk=1, **kw)
    assert full == generate(model, tok, PROMPTS, **kw)
    lines = journal.read_text().splitlines()
    assert sorted(json.loads(line)["index"] for line in lines) == [0, 1, 2]  # in the order prompts finished
    # a crash after the first prompt's line, mid-way through writing the second
    journal.write_text(lines[0] + "\n" + lines[1][:20])
    drawn = []
    resumed = generate_journaled(journal, model, tok, PROMPTS, chunk=1, on_batch=drawn.append, **kw)
    assert resumed == full
    assert sum(drawn) == 4  # prompts 1 and 2 only, two samples each


def test_auto_batch_size_fits_the_budget(loaded):
    model, _ = loaded
    per_row = bytes_per_row(model, 100)
    assert per_row > 2 * 2 * 2 * 16 * 4 * 100  # at least the KV cache: 2 layers, 2 kv heads, head_dim 16
    assert auto_batch_size(model, 100, budget_bytes=per_row * 5, ceiling=64) == 5
    assert auto_batch_size(model, 100, budget_bytes=1, ceiling=64) == 1
    assert auto_batch_size(model, 100, budget_bytes=per_row * 1000, ceiling=64) == 64


def test_vllm_adapter_with_a_stand_in(loaded):
    _, tok = loaded
    llm = StandInLLM()
    engine = VLLMModel(llm, sampling_params=SimpleNamespace)
    out = generate(engine, tok, PROMPTS, n=3, temperature=0.6, top_p=0.9, max_new_tokens=32, seed=4,
                   system_prompt="sys")
    (requests, params), = llm.calls
    expected_ids = [tok(render_prompt(tok, p, "sys"), add_special_tokens=False)["input_ids"] for p in PROMPTS]
    assert [r["prompt_token_ids"] for r in requests] == expected_ids
    assert all(p.n == 3 and p.temperature == 0.6 and p.top_p == 0.9 and p.max_tokens == 32 for p in params)
    assert all(p.stop_token_ids == stop_token_ids(tok) and p.skip_special_tokens for p in params)
    assert len({p.seed for p in params}) == 3  # one seed per request: independent of engine batching
    assert [[c.text for c in row] for row in out] == [[f"len{len(ids)}-s{j}" for j in range(3)] for ids in expected_ids]
    assert [(c.tokens, c.finished) for c in out[0]] == [(2, True), (3, False), (4, True)]
    # greedy: one draw per prompt at temperature 0, repeated n times
    llm.calls.clear()
    greedy = generate(engine, tok, PROMPTS, n=2, temperature=0, max_new_tokens=8)
    assert all(p.n == 1 and p.temperature == 0 for p in llm.calls[0][1])
    assert [len(row) for row in greedy] == [2, 2, 2] and greedy[0][0] == greedy[0][1]


def test_vllm_backend_without_vllm_names_the_extra(monkeypatch, tiny_model):
    import sys

    from chainforge.stages.evaluate import EvalConfig

    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm raises ImportError
    with pytest.raises(UsageError) as err:
        engine_spec(EvalConfig(model=str(tiny_model), data="d", output="o", backend="vllm"))
    assert "pip install 'chainforge-r1[vllm]'" in err.value.message
    # the config refuses bad sampling options itself, before any engine is considered
    for bad, what in (({"backend": "tpu"}, "--backend"), ({"batch_size": "lots"}, "--batch-size"),
                      ({"num_samples": 0}, "--num-samples"), ({"top_p": 0.0}, "--top-p")):
        with pytest.raises(UsageError) as err:
            EvalConfig(model=str(tiny_model), data="d", output="o", **bad)
        assert what in err.value.message
