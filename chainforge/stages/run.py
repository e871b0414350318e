"""`chainforge run RECIPE.yaml [--from NAME] [--until NAME]`: every stage of a recipe, in order.

    chainforge run configs/demo.yaml
    torchrun --nproc_per_node 2 -m chainforge run configs/qwen2.5-0.5b-single-gpu.yaml

A recipe (docs/reference.md, "Recipes"):

    run_dir: runs/demo
    model: smollm2            # base model for the first stage that needs one
    prompts: data/toy/train.jsonl
    eval_data: data/toy/test.jsonl
    eval: {limit: 24, num_samples: 2}      # options of the evaluations after each training stage
    stages:
      - {name: collect, command: collect, teacher: local, teacher_model: smollm2}
      - {name: sft-cold, command: sft, config: sft-cpu-small.yaml, max_steps: 20}
      ...

Stage i writes `run_dir/NN-name` (NN = i from 00). Each stage's config is built from its config
class (`chainforge.stages.<module>.CONFIG`): an option file named by `config:` (relative to the
recipe), then the stage's own keys, then defaults for the inputs it does not set, taken from its
SPEC: the latest EARLIER output of the right kind in recipe order (a dataset from collect/reject, a
checkpoint from sft/grpo/distill), or the recipe's `prompts` / `eval_data`. Every config is built
(and so validated) before the first stage runs; then each stage's `run(config)` is called here.

With `eval_data` (and `eval_every_stage`, default true), the base model is evaluated into
`run_dir/evals/00-base` and every training stage's result into `run_dir/evals/NN-name`, each with
`compare` set to the evaluation of that stage's input checkpoint (distill: of the student before
training, `evals/NN-name-student-start`), by eval's own `run(config)` with the `eval:` options.

Skipping and resuming: a stage whose output says `complete` with the options this recipe gives it
and unchanged inputs is skipped; a changed option (or an input that was redone) re-runs it with
overwrite, and so everything after it; an unfinished stage (crash, Ctrl-C) is resumed by the
stage itself. `run_dir/run.json` records each stage's status and wall time.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import gc
import json
import re
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from chainforge.config import REDACTED, cli_args, load_yaml_config, mask_url_credentials
from chainforge.outputs import atomic_write_text, read_manifest
from chainforge.errors import ChainforgeError, Interrupted, RunFailed, UsageError
from chainforge.log import info
from chainforge.stages import STAGE_MODULES, run_stage, stage_module

RECIPE_KEYS = {"run_dir", "model", "prompts", "eval_data", "stages", "eval", "eval_every_stage", "decontaminate",
               "custom_rewards", "extra_evals"}
RUN_STATE = "run.json"
EVALS = "evals"
STAGE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# Set by the recipe for each stage, never by its keys.
NOT_RECIPE_OPTIONS = ("output", "overwrite")


@dataclass
class Stage:
    index: int
    name: str
    command: str
    options: dict  # what the recipe gives the stage (option files, keys, input defaults)
    output: Path
    config: Any = None  # the stage's config, built from `options`
    before: Optional[str] = None  # the automatic decontamination: the stage it runs before

    @property
    def folder(self) -> str:
        return self.output.name

    @property
    def spec(self):
        return stage_module(self.command).SPEC


# ---- the recipe -----------------------------------------------------------------------------------

def load_recipe(path: str | Path) -> dict:
    """The recipe with every stage's options typed and checked (exit 2 before anything runs)."""
    if not Path(path).is_file():
        raise UsageError(f"recipe not found: {path} (see configs/demo.yaml for an example)")
    recipe = load_yaml_config(path)
    unknown = set(recipe) - RECIPE_KEYS
    if unknown:
        raise UsageError(f"recipe {path}: unknown key(s) {', '.join(sorted(unknown))}; "
                         f"known: {', '.join(sorted(RECIPE_KEYS))}")
    if not recipe.get("run_dir"):
        raise UsageError(f"recipe {path}: `run_dir` is required (where stage folders go)")
    for key in ("eval_every_stage", "decontaminate", "custom_rewards"):
        if recipe.get(key) is not None and not isinstance(recipe[key], bool):
            raise UsageError(f"recipe {path}: `{key}` must be true or false, got {recipe[key]!r}")
    stages = recipe.get("stages")
    if not isinstance(stages, list) or not stages:
        raise UsageError(f"recipe {path}: `stages` must be a non-empty list of {{name, command, …}}")
    eval_cls = stage_module("eval").CONFIG
    if recipe.get("eval") is not None:
        if not isinstance(recipe["eval"], dict):
            raise UsageError(f"recipe {path}: `eval` must be a mapping of eval options (num_samples, limit, …)")
        recipe["eval"] = _stage_options(eval_cls, recipe["eval"], f"recipe {path}: eval",
                                        skip=("model", "data", "compare"))
    extra = recipe.get("extra_evals")
    if extra is not None:
        if not isinstance(extra, dict) or not all(isinstance(v, dict) and v.get("data") for v in extra.values()):
            raise UsageError(f"recipe {path}: `extra_evals` must map a name to eval options with `data`, e.g. "
                             f"{{reworded: {{data: data/toy-2digit/test-reworded.jsonl, temperature: 0}}}}")
        if not recipe.get("eval_data"):
            raise UsageError(f"recipe {path}: `extra_evals` go beside the main evaluation: set `eval_data` too")
        for name, options in extra.items():
            if not STAGE_NAME.match(str(name)):
                raise UsageError(f"recipe {path}: extra_evals name '{name}' must match [A-Za-z0-9][A-Za-z0-9._-]* "
                                 f"(it names the folder run_dir/{EVALS}-{name})")
            data = options["data"]
            extra[name] = {**_stage_options(eval_cls, {k: v for k, v in options.items() if k != "data"},
                                            f"recipe {path}: extra_evals {name}", skip=("model", "data", "compare")),
                           "data": data}
    seen: set[str] = set()
    for i, st in enumerate(stages):
        if not isinstance(st, dict) or not st.get("name") or not st.get("command"):
            raise UsageError(f"recipe {path}: stage {i} needs `name` and `command`")
        name, command = str(st["name"]), str(st["command"])
        if not STAGE_NAME.match(name):
            raise UsageError(f"recipe {path}: stage name '{name}' must match [A-Za-z0-9][A-Za-z0-9._-]* (it names "
                             f"the stage's folder under run_dir)")
        if name in seen:
            raise UsageError(f"recipe {path}: stage name '{name}' is used twice; names must be unique")
        seen.add(name)
        if command not in STAGE_MODULES:
            raise UsageError(f"recipe {path}: stage '{name}' has unknown command '{command}'; "
                             f"known: {', '.join(sorted(STAGE_MODULES))}")
        cls = stage_module(command).CONFIG
        where = f"recipe {path}: stage '{name}'"
        options: dict = {}
        if st.get("config") is not None:  # an option file, relative to the recipe
            file = Path(str(st["config"]))
            file = file if file.is_absolute() else Path(path).resolve().parent / file
            options.update(_stage_options(cls, load_yaml_config(file), f"{where}: {file.name}", command))
        keys = {k: v for k, v in st.items() if k not in ("name", "command", "config")}
        options.update(_stage_options(cls, keys, where, command))
        st.clear()
        st.update(name=name, command=command, **options)
    return recipe


def _stage_options(cls, values: dict, where: str, command: str = "eval", skip: tuple = ()) -> dict:
    # typed as the stage's manifest will record them (YAML reads 1e-5 as a string)
    return cls.coerce_mapping(values, where, skip=NOT_RECIPE_OPTIONS + skip,
                              unknown="{source} (" + command + ") has unknown option '{key}'; known: {known}")


def plan_stages(recipe: dict) -> list[Stage]:
    """Each stage's folder and config, inputs defaulted from earlier stages; every config is built
    (so checked) here. Relative paths in a recipe resolve from the current folder."""
    return plan_run(recipe)[0]


def plan_run(recipe: dict) -> tuple[list[Stage], Optional[Stage]]:
    """`plan_stages`, and the automatic decontamination step (None when there is none): when it
    runs, every stage that takes the recipe's `prompts` reads its kept rows instead."""
    run_dir = _path(recipe["run_dir"])
    clean = decontamination_step(recipe, run_dir)
    sources: dict[str, Optional[str]] = {
        "checkpoint": str(_model(recipe["model"])) if recipe.get("model") else None,
        "dataset": None,
        "prompts": _data(recipe["prompts"]) if recipe.get("prompts") else None,
        "eval_data": _data(recipe["eval_data"]) if recipe.get("eval_data") else None,
    }
    if clean is not None:
        sources["prompts"] = str(clean.output)
    plan = []
    for i, raw in enumerate(recipe["stages"]):
        command = raw["command"]
        module = stage_module(command)
        options = {k: v for k, v in raw.items() if k not in ("name", "command")}
        for key in ("data", "prompts", "eval_data"):
            if isinstance(options.get(key), str):
                options[key] = _data(options[key])
        for key in ("model", "teacher", "student", "teacher_model"):
            if isinstance(options.get(key), str):
                options[key] = str(_model(options[key]))
        for key, source in module.SPEC.inputs.items():
            value = sources.get(source) or (sources["prompts"] if source == "eval_data" else None)
            if key not in options and value is not None:
                options[key] = value
                if source == "prompts" and clean is not None:
                    # the subset and split picked the rows the decontamination read; its kept rows
                    # are one dataset
                    options.pop("subset", None)
                    options.pop("split", None)
        if recipe.get("custom_rewards") is not None and "custom_rewards" in module.CONFIG.option_names():
            options.setdefault("custom_rewards", recipe["custom_rewards"])
        out = run_dir / f"{i:02d}-{raw['name']}"
        stage = Stage(i, str(raw["name"]), command, options, out)
        try:
            stage.config = module.CONFIG(**options, output=str(out))
        except UsageError as exc:
            raise UsageError(f"stage '{stage.name}' ({command}): {exc.message}") from None
        plan.append(stage)
        if module.SPEC.produces:
            sources[module.SPEC.produces] = str(out)
    return plan, clean


# ---- decontamination before training (recipe key `decontaminate`) ------------------------------------

DECONTAMINATED = "decontaminate"  # run_dir/decontaminate: the recipe's prompts minus eval overlaps


def decontamination_step(recipe: dict, run_dir: Path) -> Optional[Stage]:
    """The automatic `decontaminate` of the recipe's `prompts` against every eval set it evaluates
    on, run before the first stage that reads `prompts` (so nothing trains on, or collects traces
    for, an eval question). On by default when `eval_data` is set; `decontaminate: false` turns it
    off. A recipe with its own `command: decontaminate` stage is left to it.

    Each eval set is read as its evaluation reads it (`eval_sets`); the prompts as the first stage
    that reads them would (its prompt column, subset and split), and the stages after it read the
    kept rows, a dataset of one split."""
    wanted = recipe.get("decontaminate")
    if wanted is None:
        wanted = bool(recipe.get("eval_data"))
    if not wanted:
        return None
    against = eval_sets(recipe)
    if not against:
        raise UsageError("recipe: `decontaminate: true` needs `eval_data` or an eval stage with its own `data` "
                         "(the eval prompts that must not be trained on)")
    if not recipe.get("prompts") or any(st["command"] == "decontaminate" for st in recipe["stages"]):
        return None
    readers = prompt_readers(recipe)
    if not readers:
        return None
    first = readers[0]
    options = {"data": _data(recipe["prompts"]), "against": against,
               "prompt_column": first.get("prompt_column", "prompt"),
               "subset": first.get("subset"), "split": first.get("split")}
    out = run_dir / DECONTAMINATED
    stage = Stage(-1, DECONTAMINATED, "decontaminate", options, out)
    stage.config = stage_module("decontaminate").CONFIG(**options, output=str(out))
    stage.before = first["name"]
    return stage


def prompt_readers(recipe: dict) -> list[dict]:
    """The recipe's stages that read its `prompts` (no data of their own), in order."""
    return [st for st in recipe["stages"]
            if any(src == "prompts" and key not in st for key, src in stage_module(st["command"]).SPEC.inputs.items())]


def eval_sets(recipe: dict) -> list[str]:
    """Every eval set the recipe evaluates on, as `decontaminate --against` values, each read as
    its evaluation reads it: `eval_data` with the recipe's `eval` options (the evaluation after
    every training stage), each `extra_evals` set with its own, and each eval stage's own data,
    prompt column, subset and split."""
    from chainforge.decontam import format_eval_set

    readings = []
    if recipe.get("eval_data"):
        readings.append({**(recipe.get("eval") or {}), "data": recipe["eval_data"]})
        for extra in (recipe.get("extra_evals") or {}).values():
            readings.append({**(recipe.get("eval") or {}), **extra})
    for st in recipe["stages"]:
        if st["command"] == "eval" and (st.get("data") or recipe.get("eval_data")):
            readings.append({**st, "data": st.get("data") or recipe["eval_data"]})
    sets = [format_eval_set(_data(r["data"]), r.get("prompt_column") or "prompt", r.get("subset"), r.get("split"))
            for r in readings]
    return list(dict.fromkeys(sets))  # once each, in recipe order


def run_decontamination(stage: Stage, redone: set[str], state_path: Path, state: dict) -> None:
    """Run (or skip, when current) the automatic step; run.json records how many rows it removed."""
    record = state.setdefault("decontaminated", {})
    execute(stage, redone, record, state_path, state)
    metrics = (read_manifest(stage.output) or {}).get("metrics", {})
    record.update({k: metrics.get(k) for k in ("rows", "kept", "removed")})
    info(f"[{record['folder']}] {metrics.get('removed')} of {metrics.get('rows')} prompts overlap eval_data: "
         f"removed before '{stage.before}'")
    _save_state(state_path, state)


def _path(value: Any) -> Path:
    p = Path(str(value)).expanduser()
    return p if p.is_absolute() else (Path.cwd() / p)


def _data(value: Any) -> str:
    """A data path resolved from the cwd, or a hub dataset id (`owner/name` that is no path here,
    as data.load_rows reads it) kept as it is."""
    from chainforge.inputs import _HUB_ID, DATA_SUFFIXES

    text = str(value)
    p = Path(text).expanduser()
    if (not p.exists() and not text.startswith((".", "/", "~")) and _HUB_ID.fullmatch(text)
            and p.suffix not in DATA_SUFFIXES and not Path(text.split("/")[0]).exists()):
        return text
    return str(_path(text))


def _model(value: Any) -> str:
    # Embedded names and hub ids stay as they are; relative folders resolve from the cwd.
    text = str(value)
    p = Path(text).expanduser()
    if p.exists() or text.startswith((".", "/", "~")):
        return str(_path(text))
    return text


# ---- skip, resume or redo -------------------------------------------------------------------------

def stage_is_current(stage: Stage, manifest: Optional[dict], redone: set[str],
                     previous: Optional[dict] = None) -> bool:
    """Complete, with the options the recipe gives it, and no input redone or changed since."""
    return bool(manifest) and manifest.get("status") == "complete" and manifest.get("stage") == stage.command \
        and not _differs(stage, manifest, previous) and not _inputs_changed(manifest, redone)


def _differs(stage: Stage, manifest: dict, previous: Optional[dict] = None) -> bool:
    """Does the recorded config differ from what this stage would run with? Compared: the options
    the recipe gives (typed as the stage records them), and — from run.json — options an earlier
    run gave that the recipe no longer does (removing `max_steps: 20` is a change). Options the stage
    lets change on resume (collect's --max-cost, say) are not compared."""
    recorded = manifest.get("config", {})
    skip = set(stage.spec.resumable)
    if any(k not in stage.options and k not in skip for k in (previous or {})):
        return True
    # the manifest holds URLs with their password masked: compare them masked
    return any(_norm(recorded.get(k)) != _norm(mask_url_credentials(v)) for k, v in stage.options.items()
               if k not in skip and recorded.get(k) != REDACTED)


def _inputs_changed(manifest: dict, redone: set[str]) -> bool:
    """An input redone in this run, or one whose fingerprint is no longer the one recorded."""
    for rec in manifest.get("inputs", []):
        path = rec.get("path")
        if path in redone:
            return True
        if rec.get("fingerprint"):
            current = read_manifest(path) if path and Path(path).is_dir() else None
            if current and current.get("fingerprint") != rec["fingerprint"]:
                return True
    return False


def _norm(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_norm(v) for v in value]
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, (int, float)):
        return float(value)
    return str(value)


def command_line(stage: Stage, overwrite: bool) -> str:
    """The command that does what this stage does (shown in the log, to rerun a stage by hand)."""
    fields = {f.name: f for f in dataclasses.fields(stage.config)}
    args = [stage.command]
    shown = stage.config.redacted()  # secrets and URL passwords masked, as in the manifest
    for key, value in {**stage.options, "output": str(stage.output)}.items():
        if value is None or key not in fields:
            continue
        if shown.get(key) == REDACTED or isinstance(value, str):
            value = shown.get(key, value)
        args += cli_args(fields[key], value)
    return "chainforge " + " ".join(args + (["--overwrite"] if overwrite else []))


def execute(stage: Stage, redone: set[str], record: dict, state_path: Path, state: dict) -> None:
    """Skip, resume or redo one stage (its outcome goes into run.json); raise when it stops."""
    m = read_manifest(stage.output)
    previous = record.get("options")  # what the last run of this recipe gave the stage
    record.update(folder=str(stage.output.relative_to(state_path.parent)), command=stage.command)
    label = record["folder"]
    if stage_is_current(stage, m, redone, previous):
        info(f"[{label}] complete with the same options: skipped")
        record["status"] = "skipped (complete)"
        _save_state(state_path, state)
        return
    overwrite = bool(m) and (m.get("status") == "complete" or m.get("stage") != stage.command
                             or _differs(stage, m, previous) or _inputs_changed(m, redone))
    if overwrite:
        # an unfinished stage whose inputs were redone must not resume on stale partial work
        info(f"[{label}] options or inputs changed: redoing it")
    elif m:
        info(f"[{label}] unfinished: resuming")
    info(f"[{label}] {command_line(stage, overwrite)}")
    record.update(status="running", started=_now(), options=mask_url_credentials(stage.options))
    _save_state(state_path, state)
    t0 = time.time()
    code = _call(stage.command, dataclasses.replace(stage.config, overwrite=overwrite))
    gc.collect()
    record.update(status="complete" if code == 0 else f"failed (exit {code})",
                  wall_s=round(time.time() - t0, 1), finished=_now())
    _save_state(state_path, state)
    if code == 130:
        raise Interrupted(f"stage '{stage.name}' interrupted; rerun the same `chainforge run` to resume")
    if code == 2:
        raise RunFailed(f"stage '{stage.name}' refused its input (see the error above); fix the "
                        f"recipe and rerun: finished stages are kept")
    if code != 0:
        raise RunFailed(f"stage '{stage.name}' stopped (exit {code}); rerun the same `chainforge run` "
                        f"to resume it")
    redone.add(str(stage.output))


def _call(command: str, config) -> int:
    """The stage's run(config), its outcome as the exit code its command would give."""
    try:
        run_stage(command, config)
    except ChainforgeError as exc:
        info(f"Error: {exc.message}")
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a crash: show it, keep what was finished
        traceback.print_exc()
        info(f"Error: {type(exc).__name__}: {exc}")
        return 1
    return 0


# ---- evaluation after every training stage --------------------------------------------------------

class Evaluations:
    """`run_dir/evals/*`: the base model, and each training stage's result compared with its input;
    with `extra_evals`, the same checkpoints on each extra set in `run_dir/evals-<name>/*`."""

    def __init__(self, recipe: dict, run_dir: Path):
        self.options = dict(recipe.get("eval") or {})
        self.data = _data(recipe["eval_data"])
        # each extra set: the main eval options, overridden by its own
        self.extra = {name: {**self.options, **opts, "data": _data(opts["data"])}
                      for name, opts in (recipe.get("extra_evals") or {}).items()}
        self.base = str(_model(recipe["model"])) if recipe.get("model") else None
        self.folder = run_dir / EVALS
        self.done: dict[str, Path] = {}  # model → its evaluation folder

    def stage(self, name: str, model: str, compare: Optional[Path], extra: Optional[str] = None) -> Stage:
        options = {**(self.extra[extra] if extra else self.options), "model": model}
        options.setdefault("data", self.data)
        if compare is not None:
            options["compare"] = str(compare)
        folder = self.folder.with_name(f"{EVALS}-{extra}") if extra else self.folder
        out = folder / name
        stage = Stage(-1, f"{name}@{extra}" if extra else name, "eval", options, out)
        stage.config = stage_module("eval").CONFIG(**options, output=str(out))
        return stage

    def after(self, st: Stage, run, redone: set[str]) -> None:
        """Evaluate stage `st`'s checkpoint, comparing with its starting model's evaluation."""
        cfg = st.config
        start = getattr(cfg, "model", None)  # distill has --teacher and --student instead
        if st.command == "distill":
            from chainforge.models import PRUNED

            start = cfg.student  # `pruned:N` is evaluated as the copy distill trained (its manifest says which)
            if PRUNED.match(str(start)):
                start = (read_manifest(st.output) or {}).get("metrics", {}).get("student_start")
                if not start:
                    raise RunFailed(f"{st.output}: distill's manifest does not name the pruned student it "
                                    f"trained; run the stage again")
            before = self._ensure(f"{st.folder}-student-start", start, None, run, redone)
        elif start == self.base:
            before = self._ensure("00-base", start, None, run, redone)
        else:
            before = self.done.get(start) or self._ensure(Path(start).name, start, None, run, redone)
        self._ensure(st.folder, str(st.output), before, run, redone)

    def _ensure(self, name: str, model: str, compare: Optional[Path], run, redone: set[str]) -> Path:
        stage = self.stage(name, model, compare)
        run(stage)
        for extra in self.extra:  # the same checkpoint, compared with the same input, on each extra set
            run(self.stage(name, model, compare and self.folder.with_name(f"{EVALS}-{extra}") / compare.name, extra))
        self.done[model] = stage.output
        return stage.output


# ---- the command ----------------------------------------------------------------------------------

def run(recipe: str, start: Optional[str] = None, until: Optional[str] = None) -> None:
    from chainforge.packaged import anchor_paths, find_recipe

    recipe_path, packaged_root = find_recipe(recipe)  # a file, else a packaged recipe's name
    spec = load_recipe(recipe_path)
    if packaged_root is not None:
        anchor_paths(spec, packaged_root)
    plan, clean = plan_run(spec)
    names = [s.name for s in plan]
    for flag, value in (("from", start), ("until", until)):
        if value and value not in names:
            raise UsageError(f"--{flag} {value}: no such stage; stages: {', '.join(names)}")
    first = names.index(start) if start else 0
    last = names.index(until) if until else len(plan) - 1
    if first > last:
        raise UsageError(f"--from {start} comes after --until {until}")
    for st in plan[:first]:
        m = read_manifest(st.output)
        if st.spec.produces and not (m and m.get("status") == "complete"):
            raise UsageError(f"--from {start}: earlier stage '{st.name}' has no complete output at "
                             f"{st.output}; run it first (drop --from)")
    has_eval_data = bool(spec.get("eval_data"))
    every = spec.get("eval_every_stage")
    every = has_eval_data if every is None else every
    if every and not has_eval_data:
        raise UsageError(f"recipe {recipe_path}: `eval_every_stage: true` needs `eval_data` (the held-out prompts)")
    evals = Evaluations(spec, plan[0].output.parent) if every else None

    run_dir = plan[0].output.parent
    run_dir.mkdir(parents=True, exist_ok=True)
    state_path = run_dir / RUN_STATE
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    decontaminate = spec.get("decontaminate")
    state.update(recipe=str(recipe_path), stages=state.get("stages", {}), evals=state.get("evals", {}),
                 eval_every_stage=bool(every),
                 decontaminate=has_eval_data if decontaminate is None else decontaminate)

    redone: set[str] = set()

    def run_eval(stage: Stage) -> None:
        execute(stage, redone, state["evals"].setdefault(stage.name, {}), state_path, state)

    for st in plan[first:last + 1]:
        if clean is not None and st.index >= names.index(clean.before):
            run_decontamination(clean, redone, state_path, state)
            clean = None
        execute(st, redone, state["stages"].setdefault(st.name, {}), state_path, state)
        if evals is not None and st.spec.trains:
            evals.after(st, run_eval, redone)
    info(f"run complete: {run_dir} (report: chainforge report {run_dir})")


def _save_state(path: Path, state: dict) -> None:
    from chainforge import distributed

    if not distributed.is_main():
        return  # under a launcher, rank 0 keeps run.json
    atomic_write_text(path, json.dumps(state, indent=2) + "\n")


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
