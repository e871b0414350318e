"""The `chainforge` command: wiring only. One Typer command per stage, each calling its stage's
`run(opts)` in `chainforge.stages`; heavy libraries are imported there, never here, so `--help`
is instant (a test checks that torch is not imported).
"""

from __future__ import annotations

import importlib
import sys
from typing import Annotated, Optional

import typer

try:  # typer >= 0.29 vendors click
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover - older typer uses click itself
    from click import exceptions as click_exceptions

from chainforge import __version__
from chainforge.config import (
    AnswerColumn, BatchSize, ConfigFile, Data, Epochs, GradAccum, GradientCheckpointing,
    LearningRate, Limit, LoggingSteps, Lora, LoraAlpha, LoraR, LoraTargets, MaxGradNorm,
    MaxNewTokens, MaxSteps, Merge, Model, Output, Overwrite, PromptColumn, SaveSteps, Seed,
    Temperature, Wandb, WarmupRatio,
)
from chainforge.config import resolve_options
from chainforge.errors import ChainforgeError

app = typer.Typer(
    name="chainforge",
    help="DeepSeek-R1-style reasoning for your own models: collect Super CoT data, SFT, GRPO, "
         "rejection sampling, distillation, evaluation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"chainforge {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Optional[bool] = typer.Option(None, "--version", callback=_version, is_eager=True,
                                           help="Print the version and exit."),
) -> None:
    """ChainForge."""


def run_stage(stage: str, ctx: typer.Context, values: dict) -> None:
    """Resolve the options (--config under the command line) and run `chainforge.stages.<stage>`."""
    try:
        opts = resolve_options(ctx, values)
        module = importlib.import_module(f"chainforge.stages.{stage}")
        module.run(opts)
    except ChainforgeError as exc:
        typer.echo(f"Error: {exc.message}", err=True)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        typer.echo("Interrupted: finished work is kept; resume with the same command.", err=True)
        raise typer.Exit(130) from None




# ---- stage commands, in pipeline order (each: options, then run_stage) --------------------------


@app.command()
def collect(
    ctx: typer.Context,
    prompts: Annotated[Optional[str], typer.Option(
        "--prompts", help="Prompt dataset: a save_to_disk folder or .jsonl/.json/.csv/.parquet with a prompt "
                          "column (an `id` column is used as the row id, else a hash of the prompt).")] = None,
    output: Output = None,
    # teacher: who reasons
    teacher: Annotated[str, typer.Option(
        "--teacher", help="deepseek (DEEPSEEK_API_KEY), openai (any OpenAI-compatible server: vLLM, SGLang, "
                          "Ollama) or local (an in-process model, no key). Local and <think>-style servers: a "
                          "leading <think>...</think> is the reasoning, the rest the answer; with no <think> "
                          "block the whole completion is the reasoning and its last \\boxed{} (else last "
                          "line) the answer.")] = "deepseek",
    teacher_model: Annotated[Optional[str], typer.Option(
        "--teacher-model", help="deepseek-reasoner (deepseek), the served model name (openai), or a checkpoint "
                                "folder / hub id / .gguf / `smollm2` (local; the default).")] = None,
    teacher_base_url: Annotated[Optional[str], typer.Option(
        "--teacher-base-url", help="API base URL (default DEEPSEEK_BASE_URL or https://api.deepseek.com; "
                                   "OPENAI_BASE_URL for openai).")] = None,
    system_prompt: Annotated[Optional[str], typer.Option(
        "--system-prompt", help="A system turn sent before each prompt (default: none).")] = None,
    max_new_tokens: MaxNewTokens = None,
    temperature: Temperature = None,
    # expander: who grounds uncertain steps
    expander: Annotated[Optional[str], typer.Option(
        "--expander", help="anthropic (ANTHROPIC_API_KEY), openai (OPENAI_BASE_URL), local or none. Default: "
                           "anthropic when ANTHROPIC_API_KEY is set, else none.")] = None,
    expander_model: Annotated[Optional[str], typer.Option(
        "--expander-model", help="Default claude-sonnet-4-6 (anthropic); the teacher's model (local).")] = None,
    max_expansions: Annotated[int, typer.Option(
        "--max-expansions", help="Uncertain steps grounded per trace, at most (bounds the cost).")] = 3,
    uncertain_marker: Annotated[Optional[list[str]], typer.Option(
        "--uncertain-marker", help="Extra hedging phrase that flags a step (repeatable).")] = None,
    marker_domain: Annotated[Optional[list[str]], typer.Option(
        "--marker-domain", help="Add a domain's marker list: math, code, science, facts (repeatable).")] = None,
    long_step_words: Annotated[int, typer.Option(
        "--long-step-words", help="A step longer than this many words counts as uncertain.")] = 120,
    keep_incorrect: Annotated[bool, typer.Option(
        "--keep-incorrect/--drop-incorrect", help="Keep rows whose answer does not match the reference "
                                                  "(flagged correct=false).")] = True,
    # throughput, retries, cost
    concurrency: Annotated[int, typer.Option("--concurrency", help="Requests in flight.")] = 32,
    requests_per_minute: Annotated[Optional[int], typer.Option(
        "--requests-per-minute", help="Pace requests to at most this many per minute.")] = None,
    tokens_per_minute: Annotated[Optional[int], typer.Option(
        "--tokens-per-minute", help="Pace requests to at most this many (estimated) tokens per minute.")] = None,
    max_retries: Annotated[int, typer.Option(
        "--max-retries", help="Retries per request (backoff capped at 30 s; Retry-After honoured up to 60 s).")] = 6,
    max_cost: Annotated[Optional[float], typer.Option(
        "--max-cost", help="Stop sending once spent + in-flight estimate reaches this many USD (exit 1; "
                           "raise it and rerun to continue).")] = None,
    price: Annotated[Optional[list[str]], typer.Option(
        "--price", help="MODEL=INPUT,CACHE_HIT,OUTPUT in USD per 1M tokens (repeatable; overrides the "
                        "built-in table).")] = None,
    retry_failed: Annotated[bool, typer.Option(
        "--retry-failed", help="On an existing output: try again the prompts listed in failed.jsonl.")] = False,
    # data and runtime
    prompt_column: PromptColumn = "prompt",
    answer_column: AnswerColumn = "answer",
    limit: Limit = None,
    seed: Seed = 0,
    overwrite: Overwrite = False,
    config: ConfigFile = None,
) -> None:
    """Stage 0: collect Super CoT data. A reasoner (DeepSeek, an OpenAI-compatible server, or a local
    model) answers each prompt; its uncertain steps get a short grounding from Claude. Journaled as it
    goes: rerun the same command to resume after a crash, a 402 or Ctrl-C."""
    run_stage("collect", ctx, locals())



# options shared by the commands that train or sample (sft, reject, eval)
SamplingRewards = Annotated[Optional[str], typer.Option(
    "--rewards", help="Comma-separated rewards with optional weights (accuracy,format=0.5): registered names "
                      "or dotted paths to your own (my_pkg.rewards:fn). Default: accuracy,format.")]
SystemPrompt = Annotated[Optional[str], typer.Option(
    "--system-prompt", help="System turn added to prompts that have none (default: the Super CoT "
                            "instructions, as grpo/reject/eval/distill use; '' for none).")]
TopP = Annotated[float, typer.Option("--top-p", min=0.0, max=1.0, help="Nucleus sampling mass (0 < p <= 1).")]
Backend = Annotated[str, typer.Option(
    "--backend", help="hf (in-process, any device) or vllm (needs `pip install 'chainforge[vllm]'` and a GPU).")]
SamplingBatchSize = Annotated[str, typer.Option(
    "--batch-size", help="Candidates decoded together, or auto (sized from free memory).")]


@app.command()
def sft(
    ctx: typer.Context,
    model: Model = None,
    data: Data = None,
    output: Output = None,
    # data
    prompt_column: PromptColumn = "prompt",
    system_prompt: SystemPrompt = None,
    only_correct: Annotated[bool, typer.Option(
        "--only-correct/--all-rows", help="Train only on rows whose `correct` is not false.")] = True,
    limit: Limit = None,
    max_length: Annotated[int, typer.Option(
        "--max-length", min=16, help="Longest training sequence in tokens (longer answers are cut).")] = 2048,
    packing: Annotated[bool, typer.Option(
        "--packing/--no-packing", help="Pack rows padding-free (TRL bfd; --batch-size then counts packed rows "
                                       "of --max-length). Off: batches of similar-length rows (GPUs without "
                                       "flash-attention).")] = True,
    # optimisation
    learning_rate: LearningRate = 1e-5,
    epochs: Epochs = 1.0,
    max_steps: MaxSteps = None,
    batch_size: BatchSize = 8,
    grad_accum: GradAccum = 1,
    warmup_ratio: WarmupRatio = 0.1,
    max_grad_norm: MaxGradNorm = 1.0,
    optim: Annotated[str, typer.Option(
        "--optim", help="transformers optimizer name: adamw_torch, adamw_torch_fused, adamw_8bit "
                        "(needs bitsandbytes), …")] = "adamw_torch",
    gradient_checkpointing: GradientCheckpointing = False,
    lora: Lora = False,
    lora_r: LoraR = 16,
    lora_alpha: LoraAlpha = 32,
    lora_targets: LoraTargets = "all-linear",
    merge: Merge = True,
    # logging and runtime
    max_new_tokens: MaxNewTokens = 256,
    save_steps: SaveSteps = 50,
    logging_steps: LoggingSteps = 1,
    wandb: Wandb = False,
    seed: Seed = 0,
    overwrite: Overwrite = False,
    config: ConfigFile = None,
) -> None:
    """SFT (stages 1 and 3b): fine-tune on Super CoT traces (a collect or reject output, or
    prompt/completion rows) with the loss on the assistant turn only. --max-new-tokens caps the
    held-out generations behind the format_rate metric."""
    run_stage("sft", ctx, locals())


@app.command()
def grpo(
    ctx: typer.Context,
    model: Model = None,
    data: Data = None,
    output: Output = None,
    # rewards and prompts
    rewards: Annotated[Optional[str], typer.Option(
        "--rewards", help="Comma-separated rewards with optional weights (accuracy,format=0.5), registered "
                          "names or dotted paths to your own (my_pkg.rewards:fn). "
                          "Default: accuracy,format,expansion.")] = None,
    system_prompt: SystemPrompt = None,
    prompt_column: PromptColumn = "prompt",
    answer_column: AnswerColumn = "answer",
    limit: Limit = None,
    # generation
    num_generations: Annotated[int, typer.Option(
        "--num-generations", help="Completions per prompt (the group size, at least 2).")] = 8,
    max_new_tokens: MaxNewTokens = 512,
    temperature: Temperature = 1.0,
    use_vllm: Annotated[bool, typer.Option(
        "--use-vllm", help="Generate with vLLM (colocated; needs the vllm extra).")] = False,
    # GRPO objective
    beta: Annotated[float, typer.Option(
        "--beta", help="KL penalty to the reference model (0 loads none; TRL's default is 0).")] = 0.04,
    epsilon: Annotated[float, typer.Option("--epsilon", help="Clip range of the policy ratio.")] = 0.2,
    loss_type: Annotated[str, typer.Option(
        "--loss-type", help="TRL loss: dapo (token-level, no length bias), grpo, dr_grpo, bnpo, cispo, sapo, "
                            "luspo, vespo.")] = "dapo",
    # optimisation
    learning_rate: LearningRate = 1e-6,
    max_steps: MaxSteps = None,
    epochs: Epochs = 1.0,
    prompts_per_step: Annotated[int, typer.Option(
        "--prompts-per-step", min=1, help="Prompts per device per micro-step: --batch-size (counted in "
                                          "completions for grpo) defaults to this × --num-generations.")] = 2,
    batch_size: BatchSize = None,
    grad_accum: GradAccum = 1,
    warmup_ratio: WarmupRatio = 0.1,  # grpo: chainforge.rollouts.GRPO_WARMUP_RATIO (an lr 1e-4 start collapsed in one update)
    max_grad_norm: MaxGradNorm = 1.0,
    gradient_checkpointing: GradientCheckpointing = False,
    lora: Lora = False,
    lora_r: LoraR = 16,
    lora_alpha: LoraAlpha = 32,
    lora_targets: LoraTargets = "all-linear",
    merge: Merge = True,
    # logging and runtime
    save_steps: SaveSteps = 50,
    logging_steps: LoggingSteps = 1,
    wandb: Wandb = False,
    seed: Seed = 0,
    overwrite: Overwrite = False,
    config: ConfigFile = None,
) -> None:
    """GRPO (stages 2 and 4): sample groups of completions, score them with verifiable rewards, and move
    the policy towards the better ones of each group, with a KL leash to the starting model."""
    run_stage("grpo", ctx, locals())


@app.command()
def reject(
    ctx: typer.Context,
    model: Model = None,
    data: Data = None,
    output: Output = None,
    # what to keep
    rewards: SamplingRewards = None,
    min_reward: Annotated[float, typer.Option(
        "--min-reward", help="Keep candidates with total reward >= this (inclusive).")] = 1.0,
    keep: Annotated[str, typer.Option(
        "--keep", help="best: one per prompt (the highest reward); all-passing: every distinct passing one.")] = "best",
    # data
    prompt_column: PromptColumn = "prompt",
    answer_column: AnswerColumn = "answer",
    limit: Limit = None,
    # sampling
    num_samples: Annotated[int, typer.Option("--num-samples", min=1, help="Candidates drawn per prompt.")] = 8,
    temperature: Temperature = 0.7,
    top_p: TopP = 1.0,
    max_new_tokens: MaxNewTokens = 512,
    system_prompt: SystemPrompt = None,
    # runtime
    backend: Backend = "hf",
    batch_size: SamplingBatchSize = "auto",
    seed: Seed = 0,
    overwrite: Overwrite = False,
    config: ConfigFile = None,
) -> None:
    """Rejection sampling (stage 3): draw N candidates per prompt, score them with the reward registry,
    keep the best that reach --min-reward, as an SFT-ready dataset."""
    run_stage("reject", ctx, locals())


@app.command()
def distill(
    ctx: typer.Context,
    teacher: Annotated[Optional[str], typer.Option(
        "--teacher", help="The trained model to learn from: checkpoint folder, hub id, .gguf or `smollm2`.")] = None,
    student: Annotated[Optional[str], typer.Option(
        "--student", help="The model to train: checkpoint folder, hub id, .gguf or `smollm2-half`.")] = None,
    data: Data = None,
    output: Output = None,
    method: Annotated[str, typer.Option(
        "--method", help="traces: SFT on the teacher's filtered samples (any tokenizers); logits: GKD on the "
                         "teacher's next-token distributions (one vocabulary).")] = "traces",
    # data and the held-out check
    prompt_column: PromptColumn = "prompt",
    answer_column: AnswerColumn = "answer",
    limit: Limit = None,
    eval_data: Annotated[Optional[str], typer.Option(
        "--eval-data", help="Held-out prompts scored before and after (default: --eval-fraction of --data).")] = None,
    eval_fraction: Annotated[float, typer.Option(
        "--eval-fraction", min=0.0, max=0.5, help="Seeded share of --data held out when there is no "
                                                  "--eval-data (0: no before/after check).")] = 0.1,
    # generation (traces: the teacher's samples; logits: the on-policy samples)
    num_samples: Annotated[int, typer.Option(
        "--num-samples", min=1, help="traces: teacher completions drawn per prompt.")] = 1,
    temperature: Temperature = 0.7,
    max_new_tokens: MaxNewTokens = 256,
    # logit distillation
    lmbda: Annotated[float, typer.Option(
        "--lambda", "--lmbda", min=0.0, max=1.0, help="logits: on-policy fraction (batches the student "
                                                      "samples itself).")] = 0.5,
    beta: Annotated[float, typer.Option(
        "--beta", min=0.0, max=1.0, help="logits: generalized JSD interpolation (0 = forward KL, 1 = reverse "
                                         "KL).")] = 0.5,
    # optimisation
    learning_rate: LearningRate = 1e-5,
    epochs: Epochs = 1.0,
    max_steps: MaxSteps = None,
    batch_size: BatchSize = 8,
    grad_accum: GradAccum = 1,
    warmup_ratio: WarmupRatio = 0.1,
    max_grad_norm: MaxGradNorm = 1.0,
    max_length: Annotated[int, typer.Option(
        "--max-length", min=16, help="Longest training sequence in tokens (longer answers are cut).")] = 2048,
    gradient_checkpointing: GradientCheckpointing = False,
    lora: Lora = False,
    lora_r: LoraR = 16,
    lora_alpha: LoraAlpha = 32,
    lora_targets: LoraTargets = "all-linear",
    merge: Merge = True,
    # logging and runtime
    save_steps: SaveSteps = 50,
    logging_steps: LoggingSteps = 1,
    wandb: Wandb = False,
    seed: Seed = 0,
    overwrite: Overwrite = False,
    config: ConfigFile = None,
) -> None:
    """Distillation (stage 5): teach a smaller student the teacher's reasoning, from its filtered
    samples (--method traces) or its next-token distributions (--method logits, GKD); the student's
    held-out metrics before and after go into the manifest."""
    run_stage("distill", ctx, locals())


@app.command("eval")
def evaluate(
    ctx: typer.Context,
    model: Model = None,
    data: Data = None,
    output: Output = None,
    compare: Annotated[Optional[str], typer.Option(
        "--compare", help="Another eval output folder: print a side-by-side delta table.")] = None,
    # data and scoring
    prompt_column: PromptColumn = "prompt",
    answer_column: AnswerColumn = "answer",
    limit: Limit = None,
    rewards: SamplingRewards = None,
    # sampling (R1 paper evaluation settings)
    num_samples: Annotated[int, typer.Option("--num-samples", min=1, help="Completions per question (k).")] = 4,
    temperature: Temperature = 0.6,
    top_p: TopP = 0.95,
    max_new_tokens: MaxNewTokens = 512,
    system_prompt: SystemPrompt = None,
    # runtime
    backend: Backend = "hf",
    batch_size: SamplingBatchSize = "auto",
    seed: Seed = 0,
    overwrite: Overwrite = False,
    config: ConfigFile = None,
) -> None:
    """Evaluate a model: pass@1, pass@k, maj@k and format rate over k samples per question, written to
    results.jsonl and the manifest (--temperature 0: greedy, k = 1)."""
    run_stage("evaluate", ctx, locals())


@app.command("run")
def run_recipe(
    ctx: typer.Context,
    recipe: Annotated[str, typer.Argument(help="Recipe YAML: run_dir, model, prompts, eval_data, stages.")],
    start: Annotated[Optional[str], typer.Option("--from", help="Start at this stage (earlier outputs must be complete).")] = None,
    until: Annotated[Optional[str], typer.Option("--until", help="Stop after this stage.")] = None,
    config: ConfigFile = None,
) -> None:
    """Run every stage of a recipe in order, skipping stages already complete with the same options."""
    run_stage("run", ctx, locals())


@app.command()
def report(
    ctx: typer.Context,
    run_dir: Annotated[str, typer.Argument(help="The run_dir of a `chainforge run` recipe.")],
    config: ConfigFile = None,
) -> None:
    """Write RUN_DIR/report.md (a row per stage, eval before/after) and PNG plots."""
    run_stage("report", ctx, locals())


def main() -> None:
    """Console entry point: click's own usage errors also become one `Error:` line with exit 2."""
    try:
        rv = app(standalone_mode=False)
    except click_exceptions.NoArgsIsHelpError as exc:
        typer.echo(exc.ctx.get_help() if exc.ctx else "", err=False)
        sys.exit(0)
    except click_exceptions.ClickException as exc:
        where = f" (see `{exc.ctx.command_path} --help`)" if getattr(exc, "ctx", None) else ""
        typer.echo(f"Error: {exc.format_message()}{where}", err=True)
        sys.exit(exc.exit_code)
    except click_exceptions.Abort:
        typer.echo("Interrupted: finished work is kept; resume with the same command.", err=True)
        sys.exit(130)
    sys.exit(rv if isinstance(rv, int) else 0)
