"""Options: one typed dataclass per stage, built from the small groups below.

Every option is declared once, as a dataclass field with its type, its one default, its bounds
and its help text (`option(...)`). Everything else reads that field: the Typer command
(`chainforge.cli` generates its parameters from it), `--config FILE.yaml` and recipe stage keys
(`coerce_mapping`), the manifest (`redacted()`) and the stage itself (`config.learning_rate`,
where 0 is a value, never "unset"). `__post_init__` checks types, bounds and choices, and then the
stage's own rules (`check()`), so a config that exists is a valid one.

    from chainforge.stages.sft import SftConfig, run
    run(SftConfig(model="smollm2", data="runs/demo/00-collect", output="runs/sft", max_steps=20))
"""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal, Optional, Union, get_args, get_origin

from chainforge.steps import DOMAIN_MARKERS  # plain data (re only): the --marker-domain choices
from chainforge.errors import UsageError

SECRET_KEY = re.compile(r"key|token(?!s)|secret|password", re.IGNORECASE)  # not max_new_tokens
REDACTED = "***"
# `scheme://user:password@host`: the password part, whatever option or recipe key holds the URL
URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^/@:\s]*:)[^/@\s]*@")


def mask_url_credentials(value: Any) -> Any:
    """A string (or list of strings) with any URL password replaced by ***; other values as they are."""
    if isinstance(value, str):
        return URL_PASSWORD.sub(lambda m: m.group("head") + REDACTED + "@", value)
    if isinstance(value, (list, tuple)):
        return [mask_url_credentials(v) for v in value]
    if isinstance(value, dict):
        return {k: mask_url_credentials(v) for k, v in value.items()}
    return value


def redact(options: dict) -> dict:
    """The manifest view of resolved options: sorted, plain values, secret-named options and URL
    passwords masked, the --config path left out."""
    return {k: (REDACTED if SECRET_KEY.search(k) and v is not None else mask_url_credentials(_plain(v)))
            for k, v in sorted(options.items()) if k != "config"}


def option(default: Any = None, help: str = "", *, flags: Optional[tuple[str, ...]] = None,
           min: Optional[float] = None, max: Optional[float] = None, above: Optional[float] = None,
           choices: Optional[tuple[str, ...]] = None, cli: bool = True) -> Any:
    """A config field: `default`, `help`, command-line `flags` (default `--name-with-dashes`, and
    `--x/--no-x` for a boolean that defaults to true), inclusive bounds `min`/`max`, an exclusive
    lower bound `above`, `choices` for list items (single choices are `Literal` types)."""
    meta = {"help": help, "flags": flags, "min": min, "max": max, "above": above, "choices": choices,
            "cli": cli}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


def default(group: type, name: str, value: Any, help: Optional[str] = None) -> Any:
    """The field `name` of `group` with another default (and help): a stage overrides a shared
    option's default in one visible line, keeping its bounds."""
    meta = dict(group.__dataclass_fields__[name].metadata)
    if help is not None:
        meta["help"] = help
    return field(default=value, metadata=meta)


@dataclass(frozen=True)
class StageSpec:
    """What `chainforge run` needs to know about a stage, declared next to its config.

    `produces`: "dataset", "checkpoint" or None. `inputs`: option → where its default comes from
    in a recipe: "checkpoint"/"dataset" (the latest earlier output of that kind), "prompts" or
    "eval_data" (the recipe's keys). `resumable`: options that may change between a run and its
    resumption without redoing the work."""

    command: str
    produces: Optional[str]
    inputs: dict = field(default_factory=dict)
    resumable: tuple = ()
    trains: bool = False  # sft, grpo, distill: `eval_every_stage` evaluates after it


# ---- the base: checks, manifest view, YAML coercion ---------------------------------------------

@dataclass(kw_only=True)
class StageConfig:
    """Base of every stage config. Subclasses list the options a stage requires in REQUIRED."""

    REQUIRED: typing.ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        hints = field_types(type(self))
        for f in dataclasses.fields(self):
            setattr(self, f.name, _check(f, hints[f.name], getattr(self, f.name), flag(f)))
        for name in self.REQUIRED:
            if getattr(self, name) in (None, ""):
                raise UsageError(f"missing {'--' + name.replace('_', '-')}: give it on the command line "
                                 f"or as `{name}:` in --config")
        self.check()

    def check(self) -> None:
        """A stage's (or group's) rules about combinations of options (exit 2 saying what and how
        to fix). Overrides call `super().check()` so every group's rules run."""

    def redacted(self) -> dict:
        """What goes into a manifest: option name → plain value, secrets masked."""
        return redact(dataclasses.asdict(self))

    def __repr__(self) -> str:  # the manifest's view: no key or URL password in a log or traceback
        shown = ", ".join(f"{k}={v!r}" for k, v in self.redacted().items())
        return f"{type(self).__name__}({shown})"

    def __init_subclass__(cls, **kwargs):
        # @dataclass writes a field-by-field __repr__ unless the class defines one itself
        super().__init_subclass__(**kwargs)
        cls.__repr__ = StageConfig.__repr__

    @classmethod
    def option_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def coerce_mapping(cls, values: dict, source: str, skip: Iterable[str] = (),
                       unknown: str = "unknown key '{key}' in {source}; known keys: {known}") -> dict:
        """YAML keys (snake_case or dashed) → typed values; an unknown key (`unknown` says it) or a
        wrong type is exit 2."""
        fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in set(skip)}
        hints = field_types(cls)
        out = {}
        for raw_key, value in values.items():
            key = str(raw_key).replace("-", "_")
            if key not in fields:
                raise UsageError(unknown.format(key=raw_key, source=source, known=", ".join(sorted(fields))))
            out[key] = coerce_value(key, value, hints[key], fields[key].metadata, source)
        return out


def field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def cli_flags(f: dataclasses.Field) -> tuple[str, ...]:
    """A field's command-line flags: its declared ones, else `--name` (`--name/--no-name` for a
    boolean that defaults to true)."""
    if f.metadata.get("flags"):
        return tuple(f.metadata["flags"])
    dashed = f.name.replace("_", "-")
    return (f"--{dashed}/--no-{dashed}",) if f.default is True else (f"--{dashed}",)


def flag(f: dataclasses.Field) -> str:
    return cli_flags(f)[0].split("/")[0]


def cli_args(f: dataclasses.Field, value: Any) -> list[str]:
    """The command-line words that give field `f` the value `value` (quoted for a shell)."""
    import shlex

    flag_ = cli_flags(f)[0]
    if isinstance(value, bool):
        on, _, off = flag_.partition("/")
        return [on if value else (off or f"--no-{f.name.replace('_', '-')}")]
    if isinstance(value, (list, tuple)):
        return [x for v in value for x in (flag_, shlex.quote(str(v)))]
    return [flag_, shlex.quote(str(value))]


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    return value


def base_type(annotation: Any) -> Any:
    """`Optional[int]` → int; `Optional[list[str]]` → list; `Literal['a', 'b']` → str."""
    if get_origin(annotation) is Union:
        args = [a for a in get_args(annotation) if a is not type(None)]
        annotation = args[0] if len(args) == 1 else str
    if get_origin(annotation) is Literal:
        return type(get_args(annotation)[0])
    if get_origin(annotation) in (list, tuple):
        return list
    return annotation


def literal_choices(annotation: Any) -> Optional[tuple]:
    if get_origin(annotation) is Union:
        args = [a for a in get_args(annotation) if a is not type(None)]
        annotation = args[0] if len(args) == 1 else annotation
    return get_args(annotation) if get_origin(annotation) is Literal else None


def _check(f: dataclasses.Field, annotation: Any, value: Any, name: str) -> Any:
    """A field's value checked (and int → float widened) where it is set from Python."""
    if value is None:
        return None
    kind = base_type(annotation)
    expected = getattr(kind, "__name__", str(kind))
    if kind is list and isinstance(value, (str, Path)):
        value = [str(value)]  # one item, as a recipe key or a single repeatable flag gives it
    ok = {bool: lambda v: isinstance(v, bool),
          int: lambda v: isinstance(v, int) and not isinstance(v, bool),
          float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
          str: lambda v: isinstance(v, str),
          list: lambda v: isinstance(v, (list, tuple))}.get(kind, lambda v: True)
    if not ok(value):
        raise UsageError(f"{name} expects {expected}, got {value!r}")
    if kind is float:
        value = float(value)
    if kind is list:
        value = list(value)
    _bounds(f.metadata, annotation, value, lambda why: UsageError(f"{name} {why}"))
    return value


def _bounds(meta: Any, annotation: Any, value: Any, error) -> None:
    low, high, above = meta.get("min"), meta.get("max"), meta.get("above")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if low is not None and value < low:
            raise error(f"must be at least {low}, got {value}")
        if high is not None and value > high:
            raise error(f"must be at most {high}, got {value}")
        if above is not None and value <= above:
            raise error(f"must be above {above}, got {value}")
    choices = literal_choices(annotation)
    if choices and value not in choices:
        raise error(f"{value!r} is not one of {', '.join(map(str, choices))}")
    item_choices = meta.get("choices")
    if item_choices and isinstance(value, list):
        for v in value:
            if v not in item_choices:
                raise error(f"{v!r} is not one of {', '.join(item_choices)}")


def coerce_value(name: str, value: Any, annotation: Any, meta: Any, source: str) -> Any:
    """Convert a YAML value to the option's declared type and bounds; one-line error on failure."""
    if value is None:
        return None
    kind = base_type(annotation)
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
        value = [str(v) for v in items]
    else:  # str, Path and friends
        if isinstance(value, (list, dict)):
            raise bad(f"got a {type(value).__name__}")
        value = str(value)
    _bounds(meta, annotation, value, lambda why: UsageError(f"{source}: key '{name}' {why}"))
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


def config_differences(recorded: dict, current: dict, ignore: Iterable[str] = ()) -> list[str]:
    """Names of options whose values differ between two resolved configs."""
    skip = set(ignore) | {"overwrite", "config"}
    keys = (set(recorded) | set(current)) - skip
    return sorted(k for k in keys if _plain(recorded.get(k)) != _plain(current.get(k)))


class Options(dict):
    """A plain mapping of option values with attribute access and the manifest view (for callers
    that plan an output without a stage config)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def redacted(self) -> dict:
        return redact(self)


# ---- option groups shared by several stages -------------------------------------------------------

@dataclass(kw_only=True)
class OutputOptions(StageConfig):
    output: Optional[str] = option(None, "Output folder (created once the input is validated).",
                                   flags=("--output", "-o"))
    seed: int = option(0, "Seed for sampling, shuffling and init.")
    overwrite: bool = option(False, "Replace an --output that chainforge made (never another folder, an input, "
                                     "the current or home directory).", flags=("--overwrite",))


@dataclass(kw_only=True)
class DataOptions(StageConfig):
    data: Optional[str] = option(None, "A save_to_disk folder or a .jsonl/.json/.csv/.parquet file.")
    prompt_column: str = option("prompt", "Column holding the prompt.")
    limit: Optional[int] = option(None, "Use only the first N rows.", min=1)
    split: Optional[str] = option(None, "Split to read from a dataset dict, a dataset repository or a hub id "
                                        "(default: train, or the only one).")
    subset: Optional[str] = option(None, "Subset (config) of a dataset repository or hub id (default: the "
                                         "repository's default, or its only one).")


@dataclass(kw_only=True)
class AnswerOptions(StageConfig):
    answer_column: str = option("answer", "Column holding the reference answer (falls back to `reference`).")


@dataclass(kw_only=True)
class ModelOptions(StageConfig):
    model: Optional[str] = option(None, "Checkpoint folder, hub id, .gguf file, or the embedded `smollm2`.")


@dataclass(kw_only=True)
class GenerationOptions(StageConfig):
    max_new_tokens: Optional[int] = option(512, "Completion length cap in tokens.", min=1)
    temperature: Optional[float] = option(None, "Sampling temperature (0 = greedy).", min=0.0)
    system_prompt: Optional[str] = option(
        None, "System turn added to prompts that have none (default: the Super CoT instructions, as "
              "grpo/reject/eval/distill use; '' for none).")


@dataclass(kw_only=True)
class RewardOptions(StageConfig):
    rewards: Optional[str] = option(
        None, "Comma-separated rewards with optional weights (accuracy,format=0.5): registered names or "
              "dotted paths to your own (my_pkg.rewards:fn). Default: accuracy,format.")
    custom_rewards: bool = option(
        True, "Allow --rewards entries that are dotted paths (they import and run that code); "
              "--no-custom-rewards allows only the registered rewards.",
        flags=("--custom-rewards/--no-custom-rewards",))
    language: Optional[str] = option(
        None, "Target language of the `language` reward (R1's language consistency), a code: en, zh, ja, ko, "
              "ru, … (words are told apart by Unicode script). Default: each prompt's own language.")

    def check(self) -> None:
        from chainforge.language import scripts_of
        from chainforge.rewards import resolve_rewards

        names, _ = resolve_rewards(self.rewards, custom=self.custom_rewards)  # names, weights, custom-code rule
        if self.language is not None:
            try:
                scripts_of(self.language)
            except ValueError as exc:
                raise UsageError(f"--language: {exc}") from None
            if "language" not in names:
                raise UsageError(f"--language {self.language} sets the target of the `language` reward, which "
                                 f"--rewards does not include; add it (e.g. --rewards accuracy,format,language=0.5) "
                                 f"or drop --language")
        super().check()

    def reward_params(self) -> dict[str, dict]:
        """Options of the rewards by name, for `rewards.get_reward(name, **params)`."""
        return {"language": {"language": self.language}} if self.language else {}


Precision = Literal["auto", "fp32", "bf16"]  # chainforge.models.use_bf16
PRECISION_HELP = ("auto: bf16 where the hardware computes it natively (CUDA GPUs with bf16, CPUs with AVX512-BF16 "
                  "or AMX), fp32 elsewhere; training keeps fp32 weights under bf16 autocast. fp32 / bf16 force it.")


@dataclass(kw_only=True)
class EngineOptions(StageConfig):
    """The sampling engine behind reject and eval."""

    num_samples: int = option(4, "Completions drawn per prompt.", min=1)
    top_p: float = option(1.0, "Nucleus sampling mass (0 < p <= 1).", above=0.0, max=1.0)
    backend: Literal["hf", "vllm"] = option(
        "hf", "hf (in-process, any device) or vllm (needs `pip install 'chainforge-r1[vllm]'` and a GPU).")
    batch_size: str = option("auto", "Candidates decoded together, or auto (sized from free memory).")
    precision: Precision = option("auto", "Sampling precision. " + PRECISION_HELP)

    def check(self) -> None:
        if self.batch_size != "auto":
            try:
                ok = int(self.batch_size) >= 1
            except ValueError:
                ok = False
            if not ok:
                raise UsageError(f"--batch-size must be a positive number of rows or `auto`, got {self.batch_size!r}")
        super().check()


@dataclass(kw_only=True)
class TrainOptions(StageConfig):
    """Shared by sft, grpo and distill."""

    learning_rate: float = option(1e-5, "Peak learning rate.", flags=("--learning-rate", "--lr"), min=0.0)
    epochs: float = option(1.0, "Training epochs (ignored when --max-steps is set).", min=0.0)
    max_steps: Optional[int] = option(None, "Stop after N optimizer steps (overrides epochs).", min=1)
    batch_size: Optional[int] = option(8, "Per-device batch size.", min=1)
    grad_accum: int = option(1, "Gradient accumulation steps.", min=1)
    warmup_ratio: float = option(0.1, "Fraction of steps spent warming up.", min=0.0, max=1.0)
    lr_scheduler: Literal["linear", "constant", "cosine"] = option(
        "linear", "Learning rate after warmup: linear (decays to 0 at the last step), constant, or cosine.")
    max_grad_norm: float = option(1.0, "Gradient clipping norm.", min=0.0)
    precision: Precision = option("auto", "Training (and rollout) precision. " + PRECISION_HELP)
    gradient_checkpointing: bool = option(
        False, "Trade compute for memory.", flags=("--gradient-checkpointing/--no-gradient-checkpointing",))
    save_steps: int = option(50, "Write a resumable checkpoint-* every N steps.", min=1)
    logging_steps: int = option(1, "Log metrics every N steps.", min=1)
    wandb: bool = option(False, "Also log to Weights & Biases (TensorBoard always).", flags=("--wandb/--no-wandb",))
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = option(
        "sdpa", "Attention kernel the model is loaded with: sdpa (PyTorch's, any device), eager, or "
                "flash_attention_2 (needs the flash-attn package and a CUDA GPU).")
    auto_batch_size: bool = option(
        False, "On out-of-memory, halve --batch-size and double --grad-accum (the effective batch stays), then "
               "resume from the last checkpoint; down to 1 (one process: ranks would not halve together).",
        flags=("--auto-batch-size",))


@dataclass(kw_only=True)
class LoraOptions(StageConfig):
    lora: bool = option(False, "Train LoRA adapters (peft) instead of all weights.", flags=("--lora/--no-lora",))
    lora_r: int = option(16, "LoRA rank.", min=1)
    lora_alpha: int = option(32, "LoRA alpha.", min=1)
    lora_targets: str = option("all-linear", "Comma-separated module names to adapt, or all-linear.")
    merge: bool = option(True, "Merge LoRA adapters into the saved checkpoint.")


@dataclass(kw_only=True)
class SftTrainOptions(StageConfig):
    """The SFT trainer's own options (sft, and distill --method traces which trains through it)."""

    max_length: int = option(2048, "Longest training sequence in tokens (longer answers are cut).", min=16)
    packing: bool = option(
        True, "Pack rows padding-free (TRL bfd; --batch-size then counts packed rows of --max-length). Off: "
              "batches of similar-length rows (GPUs without flash-attention).")
    optim: str = option("adamw_torch", "transformers optimizer name: adamw_torch, adamw_torch_fused, adamw_8bit "
                                       "(needs bitsandbytes), …")


@dataclass(kw_only=True)
class ExpanderOptions(StageConfig):
    """Grounding of uncertain steps (the Super CoT `<explanation>`): collect, reject and distill."""

    expander: Optional[Literal["anthropic", "openai", "local", "none"]] = option(
        None, "anthropic (ANTHROPIC_API_KEY), openai (OPENAI_BASE_URL), local or none. Default: anthropic when "
              "ANTHROPIC_API_KEY is set, else none.")
    expander_model: Optional[str] = option(
        None, "Default claude-sonnet-5-5 (anthropic); the teacher's model (local).")
    max_expansions: int = option(3, "Uncertain steps grounded per trace, at most (bounds the cost).", min=0)
    uncertain_marker: Optional[list[str]] = option(None, "Extra hedging phrase that flags a step (repeatable).")
    marker_domain: Optional[list[str]] = option(
        None, "Add a domain's marker list: math, code, science, facts (repeatable).",
        choices=tuple(DOMAIN_MARKERS))
    long_step_words: int = option(120, "A step longer than this many words counts as uncertain.", min=1)
    max_cost: Optional[float] = option(
        None, "Stop sending once spent + in-flight estimate reaches this many USD (exit 1; raise it and rerun to "
              "continue).", above=0.0)
    price: Optional[list[str]] = option(
        None, "MODEL=INPUT,CACHE_HIT,OUTPUT in USD per 1M tokens (repeatable; overrides the built-in table).")
    expander_batch: bool = option(
        False, "Send the expansions as Anthropic Message Batches (half price, results within 24 h) once the "
               "other requests are done; a rerun polls the batches already submitted.",
        flags=("--expander-batch",))
    poll_interval: float = option(30.0, "--expander-batch: seconds between two status checks of a batch.",
                                  above=0.0)
    preflight: bool = option(
        True, "Before a paid run, list each API's models (GET /models, no tokens): a refused key stops at once "
              "(exit 1), an unknown model is exit 2; --no-preflight skips the look-up.")

    def check(self) -> None:
        if self.expander_batch and self.expander not in (None, "anthropic"):
            raise UsageError(f"--expander-batch sends Anthropic Message Batches, but --expander is "
                             f"{self.expander}; use --expander anthropic or drop --expander-batch")
        super().check()
