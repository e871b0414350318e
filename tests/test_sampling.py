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
    out = generate(model, tok, PROMPTS, n=3, temperature=0.8, max_new_tokens=10, seed=1, batch_size=4)
    assert [len(c) for c in out] == [3, 3, 3]
    for comps in out:
        for c in comps:
            assert 1 <= c.tokens <= 10
            assert c.finished == (c.tokens < 10) or c.finished


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
