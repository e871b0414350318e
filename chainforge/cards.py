"""Model and dataset cards: the README.md of every checkpoint and dataset a stage writes.

Written by `StageOutput.finish` just before the manifest says `complete` (the stage registry,
`chainforge.stages`, hands it this writer and the command that makes the output again), from what
the manifest records (the config, the inputs, the metrics) and from the manifests of the inputs, so
a card says what the folder is without the run that made it:

- a checkpoint's card: the base model and the chain of stages that led to it, the data (fingerprint
  and size), the training options, the evaluations known so far, the system prompt it was trained
  with, and the command that makes it again. Next to it, `system_prompt.txt` holds that system
  prompt (empty: none), the default `--system-prompt` of later stages that load the checkpoint; and
  a ChatML model's generation_config.json stops at `<|im_end|>` as well as at its eos token.
- a dataset's card: its columns and row counts, the models that wrote it, the cost, and the
  filtering applied.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Optional

from chainforge.outputs import atomic_write_text, output_kind, read_manifest
from chainforge.sampling.prompts import SYSTEM_PROMPT_FILE, resolve_system_prompt

CARD = "README.md"
CHATML_END = "<|im_end|>"
TRAINING_STAGES = ("sft", "grpo", "distill")
# The option holding the model a training stage starts from.
MODEL_KEY = {"sft": "model", "grpo": "model", "distill": "student"}
# Options that say where things are or how the run was driven, not what was trained: left out of the
# card's option table (the command line still has what it needs).
NOT_TRAINING_OPTIONS = ("output", "overwrite", "model", "student", "teacher", "data", "prompts", "eval_data")
EVAL_METRICS = ("pass@1", "pass@k", "maj@k", "format_rate", "k")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


# ---- the system prompt a checkpoint was trained with ----------------------------------------------

def training_system_prompt(stage: str, config: dict) -> Optional[str]:
    """The system prompt a training stage used, by the rule the stage itself follows."""
    from chainforge.formats import SUPER_COT_SYSTEM_PROMPT

    if stage == "distill":  # the student learns the teacher's Super CoT turns
        return SUPER_COT_SYSTEM_PROMPT
    return resolve_system_prompt(config.get("system_prompt"), config.get(MODEL_KEY.get(stage, "model")), quiet=True)


# ---- what a card is built from -----------------------------------------------------------------

def _manifest(path: Any) -> Optional[dict]:
    if not isinstance(path, (str, Path)) or not Path(str(path)).is_dir():
        return None
    try:
        return read_manifest(path)
    except Exception:  # an unreadable input manifest leaves a card line out, never the stage
        return None


def lineage(model: Any) -> tuple[str, list[dict]]:
    """(base model, the training stages from it to `model`, oldest first), following the inputs'
    manifests back to a model ChainForge did not train."""
    chain: list[dict] = []
    seen = set()
    current = model
    while True:
        m = _manifest(current)
        if not m or m.get("stage") not in TRAINING_STAGES or str(current) in seen:
            break
        seen.add(str(current))
        chain.insert(0, {"stage": m["stage"], "path": str(current), "fingerprint": m.get("fingerprint")})
        current = (m.get("config") or {}).get(MODEL_KEY[m["stage"]])
    return str(current), chain


def known_evals(output: Path, models: list[str]) -> list[dict]:
    """Complete evaluations of any of `models` next to `output` (a recipe's stage folders and its
    evals/ folder)."""
    wanted = {str(Path(m).resolve()) if Path(str(m)).exists() else str(m) for m in models}
    found = []
    run_dir = Path(output).resolve().parent
    for folder in sorted(list(run_dir.iterdir()) + (sorted((run_dir / "evals").iterdir())
                                                     if (run_dir / "evals").is_dir() else [])):
        m = _manifest(folder) if folder.is_dir() else None
        if not m or m.get("stage") != "eval" or m.get("status") != "complete":
            continue
        model = str((m.get("config") or {}).get("model"))
        key = str(Path(model).resolve()) if Path(model).exists() else model
        if key in wanted:
            found.append({"eval": folder.name, "model": model,
                          **{k: m["metrics"].get(k) for k in EVAL_METRICS if k in (m.get("metrics") or {})}})
    return found


def data_record(config: dict, inputs: list) -> Optional[dict]:
    """The training data: path, fingerprint (a ChainForge output's, else the file's sha256)."""
    path = config.get("data") or config.get("prompts")
    if not path:
        return None
    rec = {"path": str(path)}
    for inp in inputs:
        if inp.get("path") == str(path) and inp.get("fingerprint"):
            rec.update(fingerprint=inp["fingerprint"], stage=inp.get("stage"))
            return rec
    p = Path(str(path))
    if p.is_file():
        import hashlib

        h = hashlib.sha256()
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        rec["fingerprint"] = "sha256:" + h.hexdigest()[:16]
    return rec


def _table(rows: dict) -> str:
    lines = ["| | |", "|---|---|"]
    for k, v in rows.items():
        text = json.dumps(v, default=str) if isinstance(v, (dict, list)) else str(v)
        text = text.replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {k} | {text} |")
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


# ---- the cards ----------------------------------------------------------------------------------

def model_card(stage: str, path: Path, config: dict, inputs: list, metrics: dict,
               system_prompt: Optional[str], reproduce: str) -> str:
    start = config.get(MODEL_KEY.get(stage, "model"))
    base, chain = lineage(start)
    here = chain + [{"stage": stage, "path": str(path)}]
    data = data_record(config, inputs)
    # The hub reads `base_model` as a hub id: a local folder or the embedded name stays out of it.
    hub_id = bool(HUB_ID.match(base)) and not Path(base).expanduser().exists()
    lines = [
        "---",
        "library_name: transformers",
        *([f"base_model: {json.dumps(base)}"] if hub_id else []),
        "tags: [chainforge, reasoning, " + stage + "]",
        "---",
        "",
        f"# {Path(path).name}",
        "",
        f"A reasoning model trained by ChainForge's `{stage}` stage from `{start}`.",
        "",
        f"- **Base model:** `{base}`",
        f"- **Stages:** base → " + " → ".join(f"`{c['stage']}` ({Path(c['path']).name})" for c in here),
    ]
    if stage == "distill" and config.get("teacher"):
        lines.append(f"- **Teacher:** `{config['teacher']}`")
    if data:
        size = next((metrics[k] for k in ("rows", "traces", "train_prompts", "prompts") if metrics.get(k) is not None),
                    None)
        lines.append(f"- **Data:** `{data['path']}`" + (f", fingerprint `{data['fingerprint']}`" if data.get("fingerprint")
                                                         else "") + (f", {size} rows" if size is not None else ""))
    lines.append("- **System prompt:** " + ("none" if not system_prompt else
                                            f"see `{SYSTEM_PROMPT_FILE}` (the default `--system-prompt` of "
                                            f"later stages that load this checkpoint)"))
    lines += ["", "## Training options", "",
              _table({k: v for k, v in sorted(config.items()) if k not in NOT_TRAINING_OPTIONS})]
    results = {k: v for k, v in metrics.items() if not isinstance(v, (dict, list))}
    if results:
        lines += ["", "## Results of this stage", "", _table({k: _fmt(v) for k, v in results.items()})]
    evals = known_evals(path, [base] + [c["path"] for c in here])
    if evals:
        lines += ["", "## Evaluations known when this was written", "",
                  "| eval | model | " + " | ".join(EVAL_METRICS) + " |",
                  "|---|---|" + "---|" * len(EVAL_METRICS)]
        for e in evals:
            lines.append(f"| {e['eval']} | `{e['model']}` | " + " | ".join(_fmt(e.get(k, '')) for k in EVAL_METRICS)
                         + " |")
    lines += ["", "## Reproduce", "", "```bash", reproduce, "```", "",
              "Every option and input is recorded in `chainforge.json` next to this file.", ""]
    return "\n".join(lines)


def dataset_card(stage: str, path: Path, config: dict, inputs: list, metrics: dict, reproduce: str) -> str:
    info = _dataset_info(path)
    lines = ["---", "tags: [chainforge, reasoning, " + stage + "]", "---", "",
             f"# {Path(path).name}", "",
             f"A dataset written by ChainForge's `{stage}` stage. Load it with "
             f"`datasets.load_from_disk(\"{path}\")` or `--data {path}`.", "",
             f"- **Rows:** {info.get('rows', '?')}"]
    source = config.get("prompts") or config.get("data")
    if source:
        lines.append(f"- **From:** `{source}`" + (f" ({metrics['prompts']} prompts)" if "prompts" in metrics else ""))
    models = {k: config.get(k) for k in ("teacher", "teacher_model", "expander", "expander_model", "model")
              if config.get(k)}
    if models:
        lines.append("- **Models:** " + ", ".join(f"{k} `{v}`" for k, v in models.items()))
    if "cost_usd" in metrics:
        lines.append(f"- **Cost:** ${metrics['cost_usd']:.4f} ({metrics.get('requests', '?')} API requests)")
    lines.append("- **Filtering:** " + _filtering(stage, config, metrics))
    if info.get("columns"):
        lines += ["", "## Columns", "", "| column | type |", "|---|---|"]
        lines += [f"| {name} | {kind} |" for name, kind in info["columns"].items()]
    counts = {k: _fmt(v) for k, v in metrics.items() if not isinstance(v, list)}
    if counts:
        lines += ["", "## Counts", "", _table(counts)]
    lines += ["", "## Options", "", _table({k: v for k, v in sorted(config.items()) if k not in ("overwrite",)}),
              "", "## Reproduce", "", "```bash", reproduce, "```", ""]
    return "\n".join(lines)


def _filtering(stage: str, config: dict, metrics: dict) -> str:
    if stage == "collect":
        kept = "all answers kept (--keep-incorrect)" if config.get("keep_incorrect") else \
            "rows whose final answer did not match the reference dropped (--drop-incorrect)"
        return f"{kept}; {metrics.get('failed', 0)} prompts failed"
    if stage == "reject":
        return (f"best of {config.get('num_samples')} candidates per prompt, kept when its reward reaches "
                f"--min-reward {config.get('min_reward')} ({metrics.get('kept')} of {metrics.get('prompts')} prompts)")
    if stage == "decontaminate":
        return (f"rows sharing a {config.get('ngram')}-word run with a prompt of "
                f"{', '.join(map(str, config.get('against') or []))} removed ({metrics.get('removed')} of "
                f"{metrics.get('rows')}; listed in removed.jsonl)")
    return "none"


def _dataset_info(path: Path) -> dict:
    """Rows and column types from what save_to_disk wrote (no need to load the data)."""
    out: dict = {}
    try:
        info = json.loads((Path(path) / "dataset_info.json").read_text())
        out["columns"] = {k: _feature(v) for k, v in (info.get("features") or {}).items()}
        state = json.loads((Path(path) / "state.json").read_text())
        rows = 0
        for f in state.get("_data_files", []):
            import pyarrow as pa

            with pa.memory_map(str(Path(path) / f["filename"])) as src:
                rows += pa.ipc.open_stream(src).read_all().num_rows
        out["rows"] = rows
    except Exception:  # a card with fewer facts, never a failed stage
        pass
    return out


def _feature(spec: Any) -> str:
    if isinstance(spec, dict):
        if spec.get("_type") == "Value":
            return str(spec.get("dtype"))
        if spec.get("_type") in ("List", "Sequence", "LargeList"):
            return f"list[{_feature(spec.get('feature'))}]"
        if "_type" not in spec:
            return "{" + ", ".join(f"{k}: {_feature(v)}" for k, v in spec.items()) + "}"
        return str(spec.get("_type"))
    if isinstance(spec, list):
        return f"list[{_feature(spec[0])}]" if spec else "list"
    return str(spec)


# ---- the checkpoint's files -----------------------------------------------------------------------

def stop_at_chatml_end(path: Path) -> Optional[int]:
    """Add `<|im_end|>` to generation_config.json's eos_token_id when the tokenizer has it (a ChatML
    model otherwise runs on past the end of its turn). Returns the token id added, if any."""
    tok_file = Path(path) / "tokenizer.json"
    if not tok_file.is_file():
        return None
    vocab = json.loads(tok_file.read_text(encoding="utf-8"))
    token_id = next((t["id"] for t in vocab.get("added_tokens", []) if t.get("content") == CHATML_END), None)
    if token_id is None:
        token_id = (vocab.get("model") or {}).get("vocab", {}).get(CHATML_END) \
            if isinstance((vocab.get("model") or {}).get("vocab"), dict) else None
    if token_id is None:
        return None
    gen_file = Path(path) / "generation_config.json"
    gen = json.loads(gen_file.read_text()) if gen_file.is_file() else {}
    if not gen:
        cfg = json.loads((Path(path) / "config.json").read_text()) if (Path(path) / "config.json").is_file() else {}
        gen = {k: cfg[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if cfg.get(k) is not None}
    eos = gen.get("eos_token_id")
    ids = [] if eos is None else (list(eos) if isinstance(eos, list) else [eos])
    if token_id in ids:
        return token_id
    gen["eos_token_id"] = ids + [token_id] if ids else token_id
    atomic_write_text(gen_file, json.dumps(gen, indent=2) + "\n")
    return token_id


def write_card(out, metrics: dict, reproduce: str) -> dict:
    """The card for a finished output (and a checkpoint's system prompt and stop token). Returns the
    fields the manifest adds (`system_prompt` for a checkpoint). `reproduce`: the command that makes
    the output again (the stage registry builds it: cards never look stages up)."""
    path = Path(out.path)
    kind = output_kind(path)
    if kind == "checkpoint":
        system = training_system_prompt(out.stage, out.config)
        atomic_write_text(path / SYSTEM_PROMPT_FILE, system or "")
        stop_at_chatml_end(path)
        atomic_write_text(path / CARD, model_card(out.stage, path, out.config, out.inputs, metrics, system, reproduce))
        return {"system_prompt": system or ""}
    if kind == "dataset":
        atomic_write_text(path / CARD, dataset_card(out.stage, path, out.config, out.inputs, metrics, reproduce))
    return {}
