"""Options: `--config FILE.yaml` merged under the command line, validated, redacted for manifests.

Every command declares its options once, in its Typer signature (the shared ones are the
`Annotated` aliases at the bottom of this module). A YAML file's keys are those option names in
snake_case; each value is checked against the option's declared type and bounds, so a wrong type in
the file fails with a line naming the key. An option given on the command line
wins over the file.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Iterable, Optional, Union, get_args, get_origin, get_type_hints

import typer

from chainforge.errors import UsageError

SECRET_KEY = re.compile(r"key|token(?!s)|secret|password", re.IGNORECASE)  # not max_new_tokens
REDACTED = "***"


class Options(dict):
    """The resolved options of one command: a dict with attribute access."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def require(self, *names: str) -> None:
        for name in names:
            if self.get(name) in (None, ""):
                flag = "--" + name.replace("_", "-")
                raise UsageError(f"missing {flag}: give it on the command line or as `{name}:` in --config")

    def redacted(self) -> dict:
        """What goes into a manifest: secrets masked, the --config path itself left out."""
        return {k: (REDACTED if SECRET_KEY.search(k) and v is not None else _plain(v))
                for k, v in sorted(self.items()) if k != "config"}


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    return value


def load_yaml_config(path: str | Path) -> dict:
    import yaml

    p = Path(path)
    if not p.is_file():
        raise UsageError(f"config file not found: {p} (pass an existing YAML file to --config)")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise UsageError(f"malformed YAML in {p}{where}: {exc.problem}; fix the file and retry") from None
    except (yaml.YAMLError, UnicodeDecodeError, OSError) as exc:
        raise UsageError(f"cannot read config {p}: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"config {p} must be a mapping of option names to values, got {type(data).__name__}")
    return data


def _base_type(annotation: Any) -> Any:
    """`Annotated[Optional[int], ...]` → int; `Optional[list[str]]` → list."""
    if get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    if get_origin(annotation) is Union:
        args = [a for a in get_args(annotation) if a is not type(None)]
        annotation = args[0] if len(args) == 1 else str
    if get_origin(annotation) in (list, tuple):
        return list
    return annotation


def coerce_value(name: str, value: Any, annotation: Any, param: Any, source: str) -> Any:
    """Convert a YAML value to the option's declared type and bounds; one-line error on failure."""
    if value is None:
        return None
    kind = _base_type(annotation)
    expected = getattr(kind, "__name__", str(kind))

    def bad(why: str) -> UsageError:
        return UsageError(f"{source}: key '{name}' expects {expected}, {why}")

    if kind is bool:
        if not isinstance(value, bool):
            raise bad(f"got {value!r}")
        return value
    if isinstance(value, bool):
        raise bad(f"got a boolean ({value})")
    if kind is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, str):
            try:
                value = int(value.strip())
            except ValueError:
                raise bad(f"got {value!r}") from None
        if not isinstance(value, int):
            raise bad(f"got {value!r}")
    elif kind is float:
        if isinstance(value, str):
            try:
                value = float(value.strip())
            except ValueError:
                raise bad(f"got {value!r}") from None
        if not isinstance(value, (int, float)):
            raise bad(f"got {value!r}")
        value = float(value)
    elif kind is list:
        items = value if isinstance(value, list) else [value]
        if not all(isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in items):
            raise bad(f"got {value!r}")
        return [str(v) for v in items]
    else:  # str, Path and friends
        if isinstance(value, (list, dict)):
            raise bad(f"got a {type(value).__name__}")
        value = str(value)
    low, high = getattr(param, "min", None), getattr(param, "max", None)
    if isinstance(value, (int, float)):
        if low is not None and value < low:
            raise UsageError(f"{source}: key '{name}' must be at least {low}, got {value}")
        if high is not None and value > high:
            raise UsageError(f"{source}: key '{name}' must be at most {high}, got {value}")
    return value


def resolve_options(ctx: Any, values: dict) -> Options:
    """Merge the command's `--config` file under what was given on the command line.

    `ctx` is the Typer context of the command, `values` its parameters as Typer passed them.
    """
    params = {p.name: p for p in ctx.command.params if p.name}
    resolved = Options({k: v for k, v in values.items() if k in params})
    cfg_path = resolved.get("config")
    if not cfg_path:
        return resolved
    callback = ctx.command.callback
    hints = get_type_hints(getattr(callback, "__wrapped__", callback), include_extras=True)
    file_values = load_yaml_config(cfg_path)
    known = set(params) - {"config"}
    for raw_key, value in file_values.items():
        key = str(raw_key).replace("-", "_")
        if key not in known:
            raise UsageError(
                f"unknown key '{raw_key}' in {cfg_path}; known keys: {', '.join(sorted(known))}"
            )
        source = ctx.get_parameter_source(key)
        if source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT", "PROMPT"):
            continue  # the command line wins
        resolved[key] = coerce_value(key, value, hints.get(key, str), params[key], str(cfg_path))
    return resolved


def config_differences(recorded: dict, current: dict, ignore: Iterable[str] = ()) -> list[str]:
    """Names of options whose values differ between two resolved configs."""
    skip = set(ignore) | {"overwrite", "config"}
    keys = (set(recorded) | set(current)) - skip
    return sorted(k for k in keys if _plain(recorded.get(k)) != _plain(current.get(k)))


# ---- options shared by every command: declared once, used in every signature -----------------

ConfigFile = Annotated[Optional[str], typer.Option(
    "--config", help="YAML file of options (keys are option names in snake_case); the command line wins.")]
Output = Annotated[Optional[str], typer.Option(
    "--output", "-o", help="Output folder (created once the input is validated).")]
Data = Annotated[Optional[str], typer.Option(
    "--data", help="A save_to_disk folder or a .jsonl/.json/.csv/.parquet file.")]
Model = Annotated[Optional[str], typer.Option(
    "--model", help="Checkpoint folder, hub id, .gguf file, or the embedded `smollm2`.")]
Limit = Annotated[Optional[int], typer.Option("--limit", min=1, help="Use only the first N rows.")]
Seed = Annotated[int, typer.Option("--seed", help="Seed for sampling, shuffling and init.")]
PromptColumn = Annotated[str, typer.Option("--prompt-column", help="Column holding the prompt.")]
AnswerColumn = Annotated[str, typer.Option(
    "--answer-column", help="Column holding the reference answer (falls back to `reference`).")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace a non-empty --output.")]
MaxNewTokens = Annotated[Optional[int], typer.Option(
    "--max-new-tokens", min=1, help="Completion length cap in tokens.")]
Temperature = Annotated[Optional[float], typer.Option(
    "--temperature", min=0.0, help="Sampling temperature (0 = greedy).")]
MaxSteps = Annotated[Optional[int], typer.Option(
    "--max-steps", min=1, help="Stop after N optimizer steps (overrides epochs).")]

# ---- options shared by the training stages (sft, grpo, distill) ------------------------------------

LearningRate = Annotated[Optional[float], typer.Option("--learning-rate", "--lr", min=0.0, help="Peak learning rate.")]
Epochs = Annotated[float, typer.Option("--epochs", min=0.0, help="Training epochs (ignored when --max-steps is set).")]
BatchSize = Annotated[Optional[int], typer.Option("--batch-size", min=1, help="Per-device batch size.")]
GradAccum = Annotated[int, typer.Option("--grad-accum", min=1, help="Gradient accumulation steps.")]
WarmupRatio = Annotated[float, typer.Option("--warmup-ratio", min=0.0, max=1.0, help="Fraction of steps spent warming up.")]
MaxGradNorm = Annotated[float, typer.Option("--max-grad-norm", min=0.0, help="Gradient clipping norm.")]
GradientCheckpointing = Annotated[bool, typer.Option(
    "--gradient-checkpointing/--no-gradient-checkpointing", help="Trade compute for memory.")]
SaveSteps = Annotated[int, typer.Option("--save-steps", min=1, help="Write a resumable checkpoint-* every N steps.")]
LoggingSteps = Annotated[int, typer.Option("--logging-steps", min=1, help="Log metrics every N steps.")]
Lora = Annotated[bool, typer.Option("--lora/--no-lora", help="Train LoRA adapters (peft) instead of all weights.")]
LoraR = Annotated[int, typer.Option("--lora-r", min=1, help="LoRA rank.")]
LoraAlpha = Annotated[int, typer.Option("--lora-alpha", min=1, help="LoRA alpha.")]
LoraTargets = Annotated[str, typer.Option(
    "--lora-targets", help="Comma-separated module names to adapt, or all-linear.")]
Merge = Annotated[bool, typer.Option("--merge/--no-merge", help="Merge LoRA adapters into the saved checkpoint.")]
Wandb = Annotated[bool, typer.Option("--wandb/--no-wandb", help="Also log to Weights & Biases (TensorBoard always).")]
