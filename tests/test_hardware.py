"""What this machine is, unmocked: native bf16 detection against the CPU's own flags, and gradient
checkpointing in a real CPU training run."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers.files import manifest, write_jsonl
from helpers.rows import collect_rows

CPUINFO = Path("/proc/cpuinfo")


def cpu_flags() -> set[str]:
    for line in CPUINFO.read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


@pytest.mark.skipif(not CPUINFO.is_file(), reason="no /proc/cpuinfo on this system")
def test_native_bf16_is_what_the_cpu_flags_say():
    """AVX512-BF16 or AMX-BF16 in the kernel's flags ⇔ native_bf16 on CPU (the dev machine has
    avx512_bf16: --precision auto trains under bf16 autocast and samples in bf16 there)."""
    import torch

    from chainforge import models, training

    native = bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})
    assert models.native_bf16("cpu") is native
    assert models.use_bf16("auto", "cpu") is native
    assert models.sampling_dtype("auto", "cpu") == (torch.bfloat16 if native else torch.float32)
    if not torch.cuda.is_available():
        assert training.hardware("auto") == {"use_cpu": True, "bf16": native, "fp16": False}
    assert models.use_bf16("fp32", "cpu") is False and models.use_bf16("bf16", "cpu") is True


@pytest.mark.skipif(not CPUINFO.is_file(), reason="no /proc/cpuinfo on this system")
def test_manifest_records_the_precision_that_auto_resolved_to(cli, tiny_model, tmp_path):
    """The same command computes in bf16 on a CPU with native bf16 and in fp32 on one without, and
    the numbers differ: the manifest says which (`precision_used`), a forced one says itself, and a
    stage without the option, or sampling in vLLM (whose dtype vLLM picks), records nothing."""
    import torch

    from chainforge.outputs import _precision_used

    if torch.cuda.is_available():
        pytest.skip("auto resolves against the GPU here")
    native = bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})
    data = write_jsonl(tmp_path / "q.jsonl", [{"id": "a", "prompt": "What is 2 + 3?", "answer": "5"}])
    for precision, expected in (("auto", "bf16" if native else "fp32"), ("fp32", "fp32"), ("bf16", "bf16")):
        out = tmp_path / precision
        r = cli("eval", "--model", tiny_model, "--data", data, "--output", out, "--max-new-tokens", "4",
                "--precision", precision)
        assert r.exit_code == 0, r.stderr
        assert manifest(out)["precision_used"] == expected, precision
    assert _precision_used({"input": "x"}) is None
    assert _precision_used({"precision": "auto", "backend": "vllm"}) is None


def test_gradient_checkpointing_recomputes_on_cpu_and_trains_the_same_weights(cli, tiny_model, tmp_path,
                                                                              monkeypatch):
    """--gradient-checkpointing on a CPU run: the model has it on while training, a decoder layer's
    MLP runs twice per micro-batch (once more in the backward pass, recomputing what was not kept),
    and the weights come out as without it."""
    import transformers.trainer as hf_trainer
    from safetensors.torch import load_file
    from transformers import TrainerCallback

    seen: dict[str, dict] = {}

    class Probe(TrainerCallback):
        name = None

        def on_train_begin(self, args, state, control, model=None, **kw):
            record = seen[Probe.name] = {"on": model.is_gradient_checkpointing, "calls": 0}

            def count(*_):
                record["calls"] += 1
            # on the first layer's MLP, before its forward: the layer's own hooks run once (the
            # recomputation re-enters below them), and it stops early once it has what the
            # gradients need, so a hook at the end of a forward may not see it
            self.hook = model.model.layers[0].mlp.register_forward_pre_hook(count)

        def on_train_end(self, args, state, control, **kw):
            self.hook.remove()

    monkeypatch.setattr(hf_trainer, "DEFAULT_CALLBACKS", hf_trainer.DEFAULT_CALLBACKS + [Probe])
    data = write_jsonl(tmp_path / "d.jsonl", collect_rows(8))
    for name, flag in (("plain", "--no-gradient-checkpointing"), ("checkpointed", "--gradient-checkpointing")):
        Probe.name = name
        r = cli("sft", "--model", tiny_model, "--data", data, "--output", tmp_path / name, "--max-steps", "2",
                "--batch-size", "4", "--max-new-tokens", "4", "--seed", "0", flag)
        assert r.exit_code == 0, r.stderr
        assert manifest(tmp_path / name)["config"]["gradient_checkpointing"] is (name == "checkpointed")
    assert seen["plain"]["on"] is False and seen["checkpointed"]["on"] is True
    assert seen["plain"]["calls"] >= 2  # one forward per micro-batch, two steps
    assert seen["checkpointed"]["calls"] == 2 * seen["plain"]["calls"]
    plain, checkpointed = (load_file(str(tmp_path / n / "model.safetensors")) for n in ("plain", "checkpointed"))
    start = load_file(str(tiny_model / "model.safetensors"))
    assert any(not plain[k].equal(start[k]) for k in start)
    for key, value in plain.items():
        assert checkpointed[key].allclose(value, atol=1e-6), key
