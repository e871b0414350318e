"""`chainforge distill`: teach a smaller student the reasoning of a trained teacher (stage 5).

    chainforge distill --teacher runs/demo/05-rl-final --student smollm2-half \\
        --data data/toy/train.jsonl --output runs/demo/06-distill              # traces (default)
    chainforge distill ... --method logits --lambda 0.5 --beta 0.5            # logit-level (GKD)
    accelerate launch -m chainforge distill ...                               # several GPUs

Two methods:
- `traces` (default), the way the R1 paper built R1-Distill-Qwen: the teacher samples --num-samples
  completions per prompt with the shared sampling engine (journaled, so a resumed run draws only
  what is missing); where a reference answer exists, only correct, well-formed Super CoT
  completions are kept (the reward registry decides). They are saved as a dataset under
  `--output/traces` (reusable: `chainforge sft --data OUT/traces`) and the student trains on them
  through the SFT trainer path sft uses (`training.train_sft`), under the Super CoT system turn it
  is sampled with. Teacher and student may use different tokenizers. With `--expander`, the
  uncertain steps of the kept traces are grounded first (chainforge/providers/grounding.py, journaled in
  `expansions.jsonl`; counts, tokens and cost in the manifest).
- `logits`: generalized knowledge distillation (GKD, Agarwal et al. 2024, TRL's GKDTrainer): the
  student matches the teacher's whole next-token distribution (generalized JSD, --beta) on a mix of
  its own samples (--lambda, the on-policy fraction) and teacher sequences. One vocabulary needed:
  checked before anything is created.

Held-out check: --eval-data (default: a seeded --eval-fraction of --data, kept out of training) is
scored with eval's metric code before and after training; the manifest records both
(`eval_before/<metric>`, `eval_after/<metric>`).

Working files in --output: `teacher-samples.jsonl` (the teacher's completions, journaled: a
resumed run draws only what is missing), `traces/` (the filtered teacher traces),
`eval_before.json`, `checkpoint-*` and `runs/` (the trainer's).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional

from chainforge import distributed, training
from chainforge.compat import check_tested_versions
from chainforge.config import (AnswerOptions, DataOptions, ExpanderOptions, GenerationOptions, LoraOptions,
                               OutputOptions, SftTrainOptions, StageSpec, TrainOptions, default, option)
from chainforge.inputs import answer_column, load_rows, require_columns
from chainforge.outputs import atomic_write_text, create_output, plan_output
from chainforge.errors import RunFailed, UsageError
from chainforge.formats import SUPER_COT_SYSTEM_PROMPT
from chainforge.log import info
from chainforge.models import (ModelRef, checkpoint_path, default_device, load_model, sampling_dtype,
                               load_tokenizer, resolve_model, resolve_student, training_template)
from chainforge.traces import sft_dataset, trace_row

TRACES_DIR = "traces"
TEACHER_JOURNAL = "teacher-samples.jsonl"
EVAL_BEFORE = "eval_before.json"
FILTER_REWARDS = ("accuracy", "format", "expansion")  # the contract's defaults: `reward` in traces
FORMAT_PROMPTS = 4  # training prompts for format_rate when there are no held-out rows


@dataclass(kw_only=True)
class DistillConfig(ExpanderOptions, DataOptions, AnswerOptions, OutputOptions, SftTrainOptions, TrainOptions,
                    LoraOptions):
    REQUIRED = ("teacher", "student", "data")

    teacher: Optional[str] = option(None, "The trained model to learn from: checkpoint folder, hub id, .gguf or "
                                          "`smollm2`.")
    student: Optional[str] = option(
        None, "The model to train: pruned:N (the teacher with N of its decoder layers, those whose removal costs "
              "least on the teacher's completions of the first 8 training prompts), a checkpoint folder, hub id, .gguf, or `smollm2-half`.")
    method: Literal["traces", "logits"] = option(
        "traces", "traces: SFT on the teacher's filtered samples (any tokenizers); logits: GKD on the teacher's "
                  "next-token distributions (one vocabulary).")
    # the held-out check
    eval_data: Optional[str] = option(None, "Held-out prompts scored before and after (default: --eval-fraction "
                                            "of --data).")
    eval_fraction: float = option(0.1, "Seeded share of --data held out when there is no --eval-data (0: no "
                                       "before/after check).", min=0.0, max=0.5)
    # generation (traces: the teacher's samples; logits: the on-policy samples)
    num_samples: int = option(1, "traces: teacher completions drawn per prompt.", min=1)
    temperature: Optional[float] = default(GenerationOptions, "temperature", 0.7)
    max_new_tokens: Optional[int] = default(GenerationOptions, "max_new_tokens", 256)
    expander: Optional[Literal["anthropic", "openai", "local", "none"]] = default(
        ExpanderOptions, "expander", "none", "traces: ground the uncertain steps of the kept teacher traces before "
                                             "the student trains: anthropic (ANTHROPIC_API_KEY), openai "
                                             "(OPENAI_BASE_URL), local or none.")
    # logit distillation
    backend: Literal["hf", "vllm"] = option(
        "hf", "traces: the teacher samples with hf (in-process, any device) or vllm (its offline engine; "
              "needs `pip install 'chainforge-r1[vllm]'` and a GPU).")
    lmbda: float = option(0.5, "logits: on-policy fraction (batches the student samples itself).",
                          flags=("--lambda", "--lmbda"), min=0.0, max=1.0)
    beta: float = option(0.5, "logits: generalized JSD interpolation (0 = forward KL, 1 = reverse KL).",
                         min=0.0, max=1.0)

    def check(self) -> None:
        if self.method == "logits" and self.temperature == 0:
            raise UsageError("--method logits samples on-policy completions, so --temperature must be above 0 "
                             "(try 0.7); greedy decoding is only for eval")
        super().check()


CONFIG = DistillConfig
SPEC = StageSpec("distill", produces="checkpoint", inputs={"teacher": "checkpoint", "data": "prompts"},
                 trains=True, resumable=("max_cost", "poll_interval", "preflight"))


def run(config: DistillConfig) -> None:
    if config.backend == "vllm":  # the machine, not the options: checked at run time (a recipe still validates)
        from chainforge.sampling.vllm_backend import _import_vllm

        _import_vllm()  # names the extra when vLLM is missing, before anything is created
    check_tested_versions()  # trl/transformers internals this stage relies on
    method = config.method
    plan = plan_output(config.output, "distill", config, overwrite=config.overwrite, ignore=SPEC.resumable)
    grounder = expansion_setup(config)

    # ---- data: train rows and the held-out rows
    data = load_rows(config.data, config.limit, split=config.split, subset=config.subset)
    require_columns(data, [config.prompt_column])
    answers = answer_column(data, config.answer_column, required=False)
    train_rows, eval_rows = held_out_split(data, config, answers)

    # ---- models and trainer config: validated (vocabularies included) before --output exists
    teacher_ref = resolve_model(config.teacher, "--teacher")
    # pruned:N: the layers to drop are measured on the teacher's completions of the first training prompts
    student_ref = resolve_student(config.student, teacher_ref,
                                  probe=[r["prompt"] for r in train_rows if isinstance(r["prompt"], str)])
    tokenizer = load_tokenizer(student_ref)
    if method == "logits":
        check_vocabulary(teacher_ref, student_ref, tokenizer)
        args = gkd_args(config, plan.path, train_rows)
    else:
        args = traces_args(config, plan.path, tokenizer, train_rows)

    inputs = [config.data] + ([config.eval_data] if config.eval_data else []) + [config.teacher, config.student]
    out = create_output(plan, inputs=inputs)
    main = distributed.is_main()
    started = time.time()
    _seed(config.seed)

    # ---- the student before, the training, the student after
    student = training.load_trainable(student_ref, config)
    before = eval_before(out, student, tokenizer, eval_rows, config) if main else None
    if method == "traces":
        traces = load_or_make_traces(out, teacher_ref, train_rows, config, answers, grounder=grounder)
        # the student learns under the system turn it is sampled with (the traces hold none, see traces.py)
        conversations = sft_dataset(traces, system_prompt=SUPER_COT_SYSTEM_PROMPT)
        metrics = training.train_sft(config, out, student, tokenizer, conversations, args=args,
                                     peft_config=training.lora_config(config, student))
        metrics.update(traces=len(traces), trace_prompts=len(set(traces["id"])), **expansion_metrics(out))
    else:
        metrics = train_on_logits(config, out, teacher_ref, student, tokenizer, train_rows, args, started)
    if not main:
        return
    trained = load_trained(out, student_ref)
    after = held_out_metrics(trained, tokenizer, eval_rows, config)
    if after is not None:
        metrics["format_rate"] = after.get("format_rate")
    else:  # no held-out rows: a few training prompts, as sft does on small data
        metrics["format_rate"] = training.format_rate(
            trained, tokenizer, [_messages(r["prompt"]) for r in train_rows[:FORMAT_PROMPTS]],
            max_new_tokens=config.max_new_tokens, seed=config.seed)
    metrics.update(method=method, train_prompts=len(train_rows), eval_prompts=len(eval_rows),
                   student_parameters=_parameters(trained), teacher_parameters=_parameters(teacher_ref),
                   student_start=str(checkpoint_path(student_ref)))
    metrics.update({f"eval_before/{k}": v for k, v in (before or {}).items()})
    metrics.update({f"eval_after/{k}": v for k, v in (after or {}).items()})
    training.finish(out, metrics)
    info(f"distill ({method}): {metrics.get('steps')} steps, train_loss {metrics.get('train_loss')}, "
         f"format_rate {metrics.get('format_rate')} -> {out.path}")


def _parameters(model) -> Optional[int]:
    """Parameter count of a loaded model, or of a checkpoint (read from its safetensors headers)."""
    if hasattr(model, "parameters"):
        return sum(p.numel() for p in model.parameters())
    try:
        from safetensors import safe_open

        folder = Path(checkpoint_path(model))
        total = 0
        for f in sorted(folder.glob("*.safetensors")):
            with safe_open(str(f), "pt") as st:
                for key in st.keys():
                    total += _product(st.get_slice(key).get_shape())
        return total or None
    except Exception:  # a hub id not on disk, or weights in another format: the card just lacks the figure
        return None


def _product(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def load_trained(out, student_ref: ModelRef):
    """The student as saved in --output (the after-check scores what a user gets): a full checkpoint,
    or with --lora --no-merge the student with the saved adapter on top."""
    if (out.path / "config.json").is_file():
        return load_model(resolve_model(str(out.path)), device=default_device())
    from peft import PeftModel

    return PeftModel.from_pretrained(load_model(student_ref), str(out.path)).to(default_device())


# ---- data ---------------------------------------------------------------------------------------

def _rows(ds, config: DistillConfig, answers: Optional[str]) -> list[dict]:
    """Plain rows: `id`, `prompt`, `answer` (None without a reference) and `completion` (the
    assistant text a collect/reject output already carries, else None)."""
    from chainforge.sampling import row_id  # the id collect gives rows

    out = []
    for row in ds:
        prompt = row[config.prompt_column]
        out.append({"id": row_id(row.get("id"), prompt),
                     "prompt": prompt, "answer": row.get(answers) if answers else None,
                     "completion": _completion(row)})
    return out


def held_out_split(data, config: DistillConfig, answers: Optional[str]) -> tuple[list[dict], list[dict]]:
    """(train rows, held-out rows): --eval-data when given, else a seeded --eval-fraction of --data."""
    rows = _rows(data, config, answers)
    if config.eval_data:
        eval_ds = load_rows(config.eval_data, what="--eval-data")
        require_columns(eval_ds, [config.prompt_column], what="--eval-data")
        eval_answers = answer_column(eval_ds, config.answer_column, required=False, what="--eval-data")
        return rows, _rows(eval_ds, config, eval_answers)
    fraction = config.eval_fraction
    if fraction <= 0:
        return rows, []
    n_eval = max(1, round(len(rows) * fraction))
    if n_eval >= len(rows):
        raise UsageError(f"--data has {len(rows)} row(s): too few to hold out {fraction:.0%} for the "
                         f"before/after check; add rows, pass --eval-data PATH, or --eval-fraction 0")
    order = list(range(len(rows)))
    random.Random(config.seed).shuffle(order)
    held = set(order[:n_eval])
    return [r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held]


def check_vocabulary(teacher_ref: ModelRef, student_ref: ModelRef, student_tok) -> None:
    """Logit distillation compares distributions token by token: one vocabulary, or exit 2."""
    from transformers import AutoConfig

    def size(ref: ModelRef) -> int:
        return AutoConfig.from_pretrained(checkpoint_path(ref)).get_text_config().vocab_size

    t_size, s_size = size(teacher_ref), size(student_ref)
    hint = ("use --method traces (it distils through generated text, so any tokenizers work) or a student "
            "that shares the teacher's tokenizer")
    if t_size != s_size:
        raise UsageError(f"--method logits needs one vocabulary, but the teacher's has {t_size} tokens and "
                         f"the student's {s_size}; {hint}")
    teacher_vocab = load_tokenizer(teacher_ref).get_vocab()
    if teacher_vocab != student_tok.get_vocab():
        raise UsageError(f"--method logits needs one vocabulary: both have {t_size} logits, but the teacher's "
                         f"tokenizer ({len(teacher_vocab)} tokens) and the student's ({len(student_tok)} tokens) "
                         f"map tokens differently; {hint}")


# ---- the held-out check (eval's metric code) -------------------------------------------------------

def held_out_metrics(model, tokenizer, rows: list[dict], config: DistillConfig) -> Optional[dict]:
    """Greedy pass@1 / format rate of `model` on the held-out rows, by eval's own code."""
    if not rows:
        return None
    from chainforge.metrics import evaluate_model

    model.to(default_device())
    # Greedy, one sample: the check compares the same student before and after, cheaply.
    metrics, _ = evaluate_model(model, tokenizer, [{k: r[k] for k in ("id", "prompt", "answer")} for r in rows],
                                num_samples=1, temperature=0.0, max_new_tokens=config.max_new_tokens,
                                seed=config.seed)
    return metrics


def eval_before(out, student, tokenizer, rows: list[dict], config: DistillConfig) -> Optional[dict]:
    """The student's held-out metrics before training; kept in a file so a resumed run reuses them."""
    path = out.path / EVAL_BEFORE
    if not rows:
        return None
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    metrics = held_out_metrics(student, tokenizer, rows, config)
    atomic_write_text(path, json.dumps(metrics) + "\n")
    return metrics


# ---- traces --------------------------------------------------------------------------------------

def make_traces(teacher, tokenizer, rows: list[dict], config: DistillConfig, journal: Path) -> list[dict]:
    """Sample --num-samples completions per prompt from the teacher (journaled: a resumed run draws
    only what is missing); keep the correct, well-formed ones where a reference exists (all
    non-empty ones elsewhere), one row per distinct completion."""
    from chainforge.rewards import ACCURACY, parse_reward_spec, score
    from chainforge.sampling import generate_journaled, resolve_system_prompt

    samples = generate_journaled(journal, teacher, tokenizer, [r["prompt"] for r in rows], n=config.num_samples,
                                 temperature=config.temperature, max_new_tokens=config.max_new_tokens,
                                 seed=config.seed, system_prompt=resolve_system_prompt(None, config.teacher))
    names, weights = parse_reward_spec(None, FILTER_REWARDS)
    kept: list[dict] = []
    for row, completions in zip(rows, samples):
        texts = list(dict.fromkeys(c.text.strip() for c in completions if c.text.strip()))
        if not texts:
            continue
        totals, values = score(texts, {"answer": [row["answer"]] * len(texts)}, names, weights)
        for k, text in enumerate(texts):
            accuracy = values["accuracy"][k]
            if accuracy is not None and not (accuracy == ACCURACY and values["format"][k] > 0):
                continue
            kept.append(trace_row(row["id"], row["prompt"], row["answer"], text, totals[k],
                                  correct=None if accuracy is None else True))
    return kept


def load_or_make_traces(out, teacher_ref: ModelRef, rows: list[dict], config: DistillConfig, answers: Optional[str],
                        grounder=None):
    """The filtered traces under --output/traces: made on rank 0 (other ranks wait and read them),
    reused when a resumed run already made them."""
    import datasets

    folder = out.path / TRACES_DIR
    if (folder / "state.json").is_file():
        traces = datasets.load_from_disk(str(folder))
        info(f"reusing {len(traces)} teacher traces from {folder}")
        return traces
    # every rank samples its share of the prompts (sampling/journaled.py); rank 0 writes the traces
    kept = make_filtered_traces(out, teacher_ref, rows, config, answers)
    if distributed.is_main():
        save_traces(folder, ground_traces(grounder, kept, out))
    distributed.barrier()
    if not (folder / "state.json").is_file():  # rank 0 failed
        raise RunFailed("no teacher traces were written; see rank 0's error")
    return datasets.load_from_disk(str(folder))


def make_filtered_traces(out, teacher_ref: ModelRef, rows: list[dict], config: DistillConfig, answers: Optional[str]):
    n = config.num_samples
    info(f"teacher {config.teacher}: sampling {n} completion(s) for each of {len(rows)} prompts")
    teacher, teacher_tok = teacher_engine(teacher_ref, config)
    kept = make_traces(teacher, teacher_tok, rows, config, out.path / TEACHER_JOURNAL)
    del teacher
    if not kept:
        if distributed.is_main():
            out.mark_incomplete()
        why = ("correct, well-formed Super CoT (checked against the reference answers)" if answers
               else "non-empty")
        raise RunFailed(f"zero traces left: none of the teacher's {n * len(rows)} completion(s) for "
                        f"{len(rows)} prompts was {why}; use a stronger teacher, more --num-samples or "
                        f"--max-new-tokens, then rerun")
    info(f"kept {len(kept)} of {n * len(rows)} teacher completions"
         + (" (correct and well-formed)" if answers else ""))
    return kept


def teacher_engine(teacher_ref: ModelRef, config: DistillConfig):
    """(model, tokenizer) the teacher samples with: transformers on this rank's device, or vLLM's
    offline engine with --backend vllm."""
    if config.backend == "vllm":
        from chainforge.sampling import load_vllm

        return load_vllm(checkpoint_path(teacher_ref), seed=config.seed), load_tokenizer(teacher_ref)
    device = default_device()
    return (load_model(teacher_ref, dtype=sampling_dtype(config.precision, device), device=device),
            load_tokenizer(teacher_ref))


def save_traces(folder: Path, kept: list[dict]) -> None:
    """Written under a temporary name and renamed in: a crash never leaves half a dataset."""
    import datasets

    tmp = folder.with_name(f".partial-{folder.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    datasets.Dataset.from_list(kept).save_to_disk(str(tmp))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)


def traces_args(config: DistillConfig, output_dir, tokenizer, rows: list[dict]):
    """The SFT trainer's config and checks, run before --output exists: the student's chat template
    must carry the assistant-only loss, and no prompt may fill --max-length."""
    import datasets

    sample = [_messages(r["prompt"], "<summary>\n0\n</summary>") for r in rows]
    training_template(tokenizer, sample[0])
    training.check_prompt_lengths(tokenizer, datasets.Dataset.from_list([{"messages": m} for m in sample]),
                         config.max_length)
    return training.sft_args(config, output_dir)


# ---- logits (GKD) ---------------------------------------------------------------------------------

def gkd_trainer_class():
    """TRL's GKD trainer, the one place that touches `trl.experimental` (pinned: trl 1.16).

    Why GKD and not TRL's stable DistillationTrainer: only GKD mixes on-policy and off-policy batches
    (lmbda); DistillationTrainer is fully on-policy.

    A TRL trap fixed here: transformers' Trainer counts `num_items_in_batch` (the loss denominator)
    from the dataloader's labels *before* GKD swaps in freshly generated completions, so the loss
    would be divided by the placeholder's token count (trl#4719, trl#6478). With the count switched
    off, each micro-batch's loss is its mean over the generated tokens and the Trainer averages
    over gradient accumulation itself. Tokens are counted after generation (`tokens` metric).
    """
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    class ChainforgeGKD(GKDTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.model_accepts_loss_kwargs = False
            self.loss_is_scaled_for_ga = False

        def training_step(self, model, inputs, num_items_in_batch=None):
            loss = super().training_step(model, inputs, None)
            seen = self.accelerator.gather(inputs["attention_mask"].sum().reshape(1)).sum().item()
            self.state.num_input_tokens_seen += int(seen)
            return loss

    return GKDConfig, ChainforgeGKD


def _completion(row: dict) -> Optional[str]:
    """The completion a dataset row already carries (collect/reject outputs), if any."""
    messages = row.get("messages")
    if isinstance(messages, list) and messages and isinstance(messages[-1], dict) \
            and messages[-1].get("role") == "assistant" and str(messages[-1].get("content", "")).strip():
        return str(messages[-1]["content"])
    text = row.get("text")
    return text if isinstance(text, str) and text.strip() else None


def gkd_dataset(rows: list[dict]):
    """Conversations for GKD's ChatML collator: system + user + an assistant turn (the row's own
    completion, or an empty placeholder when every off-policy sequence is sampled). Only a
    `messages` column: the collator would take a `prompt` column for the rendered prompt."""
    import datasets

    return datasets.Dataset.from_list([{"messages": _messages(r["prompt"], r["completion"] or "")} for r in rows])


def gkd_args(config: DistillConfig, output_dir, rows: list[dict]):
    """The GKDConfig: shared training options plus temperature, lambda, beta (before --output exists)."""
    config_class, _ = gkd_trainer_class()
    # Off-policy batches (1 - lambda of them) use the data's own completions when every row has one
    # (a collect or reject output); otherwise the teacher samples them (GKD's sequence-level KD).
    seq_kd = not all(r["completion"] for r in rows)
    return training.trainer_args(
        config, output_dir, config_class, temperature=config.temperature, lmbda=config.lmbda, beta=config.beta,
        max_new_tokens=config.max_new_tokens, seq_kd=seq_kd, max_length=config.max_length)


def train_on_logits(config: DistillConfig, out, teacher_ref: ModelRef, student, tokenizer, rows: list[dict], args,
                    started: float) -> dict:
    _, trainer_class = gkd_trainer_class()
    info("logits: off-policy sequences " + ("sampled from the teacher" if args.seq_kd else "taken from --data"))
    teacher = load_model(teacher_ref)
    trainer = trainer_class(model=student, teacher_model=teacher, args=args, processing_class=tokenizer,
                            train_dataset=gkd_dataset(rows), peft_config=training.lora_config(config, student))
    result = training.train(trainer, out)
    training.save_trained(trainer, out, tokenizer, merge=config.merge)
    metrics = training.train_metrics(trainer, result, started)
    metrics.update(lmbda=args.lmbda, beta=args.beta, seq_kd=args.seq_kd, format_rate=None)
    return metrics


# ---- small helpers --------------------------------------------------------------------------------

def _messages(prompt: Any, answer: Optional[str] = None) -> list[dict]:
    """A prompt as the chat the models see (the Super CoT system turn first), with an answer if given."""
    from chainforge.sampling import as_messages

    messages = as_messages(prompt, SUPER_COT_SYSTEM_PROMPT)
    return messages + ([{"role": "assistant", "content": answer}] if answer is not None else [])


def _seed(seed: int) -> None:
    from transformers import set_seed

    set_seed(seed)


# ---- grounding of the kept traces (--expander) ---------------------------------------------------------

EXPANSION_METRICS = "expansions.json"


def expansion_setup(config: DistillConfig):
    """The expander of --expander (checked before --output exists), or None for `none`."""
    from chainforge.providers.grounding import Grounder

    if config.expander not in (None, "none") and config.method != "traces":
        raise UsageError(f"--expander grounds the teacher traces of --method traces; --method {config.method} "
                         f"trains on no traces: drop --expander or use --method traces")
    grounder = Grounder.setup(config, "distill")
    if not grounder.active:
        return None
    grounder.preflight()  # a refused key or an unknown model, before the sampling
    return grounder


def ground_traces(grounder, kept: list[dict], out) -> list[dict]:
    """The kept teacher traces with their uncertain steps grounded (journaled in
    --output/expansions.jsonl), before the student sees them; the counts go to expansions.json."""
    if grounder is None:
        return kept
    from chainforge.providers.grounding import ground_rows

    try:
        metrics = ground_rows(grounder, kept, out.path, "distill")
    except BaseException:
        out.mark_incomplete()
        raise
    atomic_write_text(out.path / EXPANSION_METRICS, json.dumps(metrics) + "\n")
    return kept


def expansion_metrics(out) -> dict:
    path = out.path / EXPANSION_METRICS
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
