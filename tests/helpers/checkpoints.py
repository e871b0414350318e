"""Reading what a training stage saved: a checkpoint that really loads, and a model's loss."""

from __future__ import annotations

from pathlib import Path


def load_checkpoint(out: Path, start: Path, trained: bool = True):
    """Load the checkpoint at `out` and check it is a whole copy of the model at `start`:
    from_pretrained filled every weight from the files (a missing one would be silently random),
    the tensors have `start`'s names and shapes (nothing sharded, nothing left out), all finite, and
    (`trained`) training moved some of them. Returns (model, names of the weights that changed)."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    model, info = AutoModelForCausalLM.from_pretrained(str(out), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert not info.get("mismatched_keys"), info
    before = load_file(str(Path(start) / "model.safetensors"))
    after = {k: v for k, v in model.state_dict().items() if k in before}
    assert set(after) == set(before), sorted(set(before) ^ set(after))
    changed = set()
    for name, tensor in after.items():
        assert tensor.shape == before[name].shape, name
        assert torch.isfinite(tensor).all(), name
        if not torch.equal(tensor.float(), before[name].float()):
            changed.add(name)
    assert changed or not trained, "the saved model equals its start: nothing was trained"
    return model, changed


def assistant_loss(model_dir: Path, conversations: list[list[dict]]) -> float:
    """Mean next-token loss of a checkpoint on the assistant turns of `conversations`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    total, count = 0.0, 0
    for messages in conversations:
        prompt = tok.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
        full = tok.apply_chat_template(messages, tokenize=False)
        p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        ids = tok(full, add_special_tokens=False)["input_ids"]
        labels = [-100] * len(p_ids) + ids[len(p_ids):]
        with torch.no_grad():
            out = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels]))
        n = sum(1 for t in labels[1:] if t != -100)
        total += out.loss.item() * n
        count += n
    return total / count
