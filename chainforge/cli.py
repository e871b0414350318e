"""The `chainforge` command: wiring only. Each stage command's options are generated from its
config dataclass (`chainforge.stages.<name>.<Name>Config`), and the command builds that config
(`--config FILE.yaml` under the command line) and calls the stage's `run(config)`. Heavy libraries
are imported inside the stages, never here, so `--help` is instant (a test checks that torch is
not imported).
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import sys
import traceback
from typing import Annotated, Any, Optional

import typer

from chainforge import __version__
from chainforge.config import StageConfig, base_type, field_types, literal_choices, load_yaml_config
from chainforge.errors import ChainforgeError, UsageError
from chainforge.stages import STAGE_MODULES, run_stage

app = typer.Typer(
    name="chainforge",
    help="DeepSeek-R1-style reasoning for your own models: collect Super CoT data, SFT, GRPO, "
         "rejection sampling, distillation, evaluation.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

INTERRUPTED = "Interrupted: finished work is kept; resume with the same command."
CONFIG_HELP = "YAML file of options (keys are option names in snake_case); the command line wins."


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


def call_stage(fn) -> None:
    """Run a stage and turn its outcome into an exit code: ChainforgeError → its code with one
    `Error:` line, Ctrl-C → 130, any other exception → its traceback, one `Error:` line, exit 1."""
    try:
        fn()
    except ChainforgeError as exc:
        typer.echo(f"Error: {exc.message}", err=True)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        typer.echo(INTERRUPTED, err=True)
        raise typer.Exit(130) from None
    except Exception as exc:  # a bug or a library failure: show where, keep the work
        traceback.print_exc(file=sys.stderr)
        typer.echo(f"Error: {type(exc).__name__}: {exc} (finished work is kept; fix the cause and rerun "
                   f"the same command)", err=True)
        raise typer.Exit(1) from None


def build_config(cls: type[StageConfig], ctx: typer.Context, values: dict) -> StageConfig:
    """The stage config from the command line and `--config` (the command line wins)."""
    config_path = values.pop("config", None)
    if config_path:
        from_file = cls.coerce_mapping(load_yaml_config(config_path), str(config_path))
        for key, value in from_file.items():
            source = ctx.get_parameter_source(key)
            if source is None or source.name not in ("COMMANDLINE", "ENVIRONMENT", "PROMPT"):
                values[key] = value
    return cls(**values)


def _cli_annotation(f: dataclasses.Field, hint: Any) -> Any:
    meta = f.metadata
    flags = meta.get("flags")
    if not flags:
        dashed = "--" + f.name.replace("_", "-")
        flags = (f"{dashed}/--no-{f.name.replace('_', '-')}",) if f.default is True else (dashed,)
    # Bounds are checked by the config (one message for the command line, YAML and Python), and
    # shown here.
    bounds = [f"{sign} {meta[key]:g}" for key, sign in (("min", ">="), ("above", ">"), ("max", "<="))
              if meta.get(key) is not None]
    text = (meta.get("help") or "") + (f" [{', '.join(bounds)}]" if bounds else "")
    # Fixed choices are validated by the config too (one message for the command line, YAML and
    # Python); here they are shown beside the option's name in --help (`--backend [hf|vllm]`, where
    # click puts an enum's choices) and offered by shell completion.
    choices = literal_choices(hint) or meta.get("choices")
    extra: dict = {}
    if choices:
        extra["metavar"] = f"[{'|'.join(choices)}]"
        extra["autocompletion"] = lambda: list(choices)
        hint = Optional[list[str]] if base_type(hint) is list else Optional[str]
    return Annotated[hint, typer.Option(*flags, help=text or None, **extra)]


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory()  # type: ignore[misc]


def stage_command(command: str, module_name: str, doc: str) -> None:
    """Register `chainforge COMMAND`, its options generated from the stage's config class."""
    module = importlib.import_module(f"chainforge.stages.{module_name}")
    cls = module.CONFIG
    hints = field_types(cls)
    params = [inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)]
    # what a stage reads and writes first; then the stage's own options, then each group's, in the
    # order the config lists its groups
    first = ("model", "teacher", "student", "prompts", "data", "output")

    def place(f: dataclasses.Field) -> tuple:
        owner = next(i for i, c in enumerate(cls.__mro__) if f.name in c.__dict__.get("__annotations__", {}))
        return (first.index(f.name) if f.name in first else len(first), owner)

    ordered = sorted(dataclasses.fields(cls), key=place)
    for f in ordered:
        if f.metadata.get("cli", True):
            params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=_default(f),
                                            annotation=_cli_annotation(f, hints[f.name])))
    params.append(inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, default=None,
                                    annotation=Annotated[Optional[str], typer.Option("--config", help=CONFIG_HELP)]))

    def command_fn(ctx: typer.Context, **values: Any) -> None:
        call_stage(lambda: run_stage(command, build_config(cls, ctx, values)))

    command_fn.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command_fn.__annotations__ = {p.name: p.annotation for p in params}
    command_fn.__doc__ = doc
    command_fn.__name__ = command
    app.command(command)(command_fn)


# ---- stage commands, in pipeline order --------------------------------------------------------------

STAGE_HELP = {
    "collect": """Stage 0: collect Super CoT data. A reasoner (DeepSeek, an OpenAI-compatible server, or a local
    model) answers each prompt; its uncertain steps get a short grounding from Claude. Journaled as it
    goes: rerun the same command to resume after a crash, a 402 or Ctrl-C.""",
    "sft": """SFT (stages 1 and 3b): fine-tune on Super CoT traces (a collect or reject output, or
    prompt/completion rows) with the loss on the assistant turn only. --max-new-tokens caps the
    held-out generations behind the format_rate metric.""",
    "grpo": """GRPO (stages 2 and 4): sample groups of completions, score them with verifiable rewards, and move
    the policy towards the better ones of each group, with a KL leash to the starting model.""",
    "reject": """Rejection sampling (stage 3): draw N candidates per prompt, score them with the reward registry,
    keep the best that reach --min-reward, as an SFT-ready dataset.""",
    "distill": """Distillation (stage 5): teach a smaller student the teacher's reasoning, from its filtered
    samples (--method traces) or its next-token distributions (--method logits, GKD); the student's
    held-out metrics before and after go into the manifest.""",
    "decontaminate": """Drop training rows whose prompt shares an --ngram word run with any --against eval prompt
    (repeat --against for several eval sets); writes the kept rows and removed.jsonl.""",
    "eval": """Evaluate a model: pass@1, pass@k, maj@k and format rate over k samples per question, written to
    results.jsonl and the manifest (--temperature 0: greedy, k = 1).""",
}

for _command, _module in STAGE_MODULES.items():
    if _command in STAGE_HELP:
        stage_command(_command, _module, STAGE_HELP[_command])


ConfigFile = Annotated[Optional[str], typer.Option("--config", help=CONFIG_HELP)]


def _from_file(ctx: typer.Context, config: Optional[str], values: dict) -> dict:
    """`--config` for the commands without a stage config: its keys are the option names."""
    if not config:
        return values
    for raw_key, value in load_yaml_config(config).items():
        key = {"from": "start"}.get(str(raw_key), str(raw_key).replace("-", "_"))
        if key not in values:
            raise UsageError(f"unknown key '{raw_key}' in {config}; known keys: "
                             f"{', '.join(sorted({'start': 'from'}.get(k, k) for k in values))}")
        source = ctx.get_parameter_source(key)
        if source is None or source.name != "COMMANDLINE":
            values[key] = None if value is None else str(value)
    return values


@app.command("run")
def run_recipe(
    ctx: typer.Context,
    recipe: Annotated[str, typer.Argument(help="Recipe YAML (run_dir, model, prompts, eval_data, stages), or the "
                                                "name of a packaged recipe (e.g. demo; `chainforge init` lists them as files).")],
    start: Annotated[Optional[str], typer.Option("--from", help="Start at this stage (earlier outputs must be complete).")] = None,
    until: Annotated[Optional[str], typer.Option("--until", help="Stop after this stage.")] = None,
    config: ConfigFile = None,
) -> None:
    """Run every stage of a recipe in order, skipping stages already complete with the same options."""
    from chainforge.stages import run

    call_stage(lambda: run.run(**_from_file(ctx, config, {"recipe": recipe, "start": start, "until": until})))


@app.command()
def init(
    directory: Annotated[str, typer.Argument(help="Folder to write configs/ and data/ into (created if needed).")],
) -> None:
    """Write editable copies of the packaged recipes (configs/) and toy tasks (data/) into DIRECTORY;
    then `cd DIRECTORY && chainforge run configs/demo.yaml`. Existing files are never overwritten."""
    from chainforge.packaged import init_project

    def write() -> None:
        files = init_project(directory)
        typer.echo(f"Wrote {len(files)} files to {directory}/configs and {directory}/data; next: "
                   f"cd {directory} && chainforge run configs/demo.yaml")

    call_stage(write)


@app.command()
def report(
    ctx: typer.Context,
    run_dir: Annotated[str, typer.Argument(help="The run_dir of a `chainforge run` recipe.")],
    config: ConfigFile = None,
) -> None:
    """Write RUN_DIR/report.md (a row per stage, eval before/after) and PNG plots."""
    from chainforge.stages import report as report_stage

    call_stage(lambda: report_stage.run(**_from_file(ctx, config, {"run_dir": run_dir})))


# libgomp's default for GOMP_SPINCOUNT; see _openmp_wait()
_GOMP_DEFAULT_SPIN, _GOMP_BUSY_SPIN = 300_000, 1_000


def _openmp_wait() -> None:
    """On a machine other processes keep busy, OpenMP threads (torch's CPU kernels) wait for each
    other without spinning. By default a libgomp thread spins 300,000 times at every barrier; when
    a core is shared, the spinning thread holds the core its partner needs to finish, and each op
    of a decode step waits for the scheduler: on the 2-core dev machine under a load of 5-7, a
    bf16 64×576×1536 matmul took 16-20 ms with 2 threads spinning, 1.9 ms with GOMP_SPINCOUNT=1000
    and 1.6-2 ms on 1 thread (scripts/bench_roofline.py --threads). An idle machine (1-minute load
    average below 1) keeps libgomp's default; GOMP_SPINCOUNT or OMP_WAIT_POLICY set by the user
    win. Read by libgomp when torch loads, so it is set before any stage imports torch."""
    import os

    if "GOMP_SPINCOUNT" in os.environ or "OMP_WAIT_POLICY" in os.environ or "torch" in sys.modules:
        return
    try:
        busy = os.getloadavg()[0] >= 1.0
    except (AttributeError, OSError):  # no load average on this platform
        return
    if busy:
        os.environ["GOMP_SPINCOUNT"] = str(_GOMP_BUSY_SPIN)


def main() -> None:
    """Console entry point: usage errors become one `Error:` line with exit 2, Ctrl-C exit 130."""
    _openmp_wait()
    try:
        rv = app(standalone_mode=False)
    except typer.TyperException as exc:  # the base of every usage error typer raises
        ctx = getattr(exc, "ctx", None)
        if type(exc).__name__ == "NoArgsIsHelpError":  # `chainforge` alone: the help, exit 0
            typer.echo(ctx.get_help() if ctx else "")
            sys.exit(0)
        where = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        typer.echo(f"Error: {exc.format_message()}{where}", err=True)
        sys.exit(getattr(exc, "exit_code", 2))
    except (typer.Abort, KeyboardInterrupt):  # Ctrl-C outside a stage (click turns it into Abort)
        typer.echo(INTERRUPTED, err=True)
        sys.exit(130)
    sys.exit(rv if isinstance(rv, int) else 0)
