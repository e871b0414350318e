"""`chainforge run RECIPE.yaml [--from NAME] [--until NAME]`: every stage of a recipe, in order.

    chainforge run configs/demo.yaml
    torchrun --nproc_per_node 2 -m chainforge run configs/qwen2.5-0.5b-single-gpu.yaml

A recipe (../shared/CONTRACT.md, "Recipes"):

    run_dir: runs/demo
    model: smollm2            # base model for the first stage that needs one
    prompts: data/toy/train.jsonl
    eval_data: data/toy/test.jsonl
    stages:
      - {name: collect, command: collect, teacher: local, teacher_model: smollm2}
      - {name: sft-cold, command: sft, max_steps: 20}
      ...

Stage i writes `run_dir/NN-name` (NN = i from 00). Inputs a stage does not set default to the
latest EARLIER stage's output of the right kind in recipe order (a dataset from collect/reject, a
checkpoint from sft/grpo/distill); grpo, reject and distill read the recipe's `prompts`, eval its
`eval_data`. Each stage runs through the same code as its command, in this process.

Skipping and resuming: a stage whose output says `complete` with the options this recipe gives it
and unchanged inputs is skipped; a changed option (or an input that was redone) re-runs it with
--overwrite, and so everything after it; an unfinished stage (crash, Ctrl-C) is resumed by the
stage itself. `run_dir/run.json` records each stage's status and wall time.
"""

from __future__ import annotations

import datetime as _dt
import gc
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from chainforge.config import REDACTED
from chainforge.data import atomic_write_text, read_manifest
from chainforge.errors import Interrupted, RunFailed, UsageError
from chainforge.log import info

RECIPE_KEYS = {"run_dir", "model", "prompts", "eval_data", "stages"}
# What each command's result is, for "latest earlier output of the right kind".
PRODUCES = {"collect": "dataset", "reject": "dataset", "sft": "checkpoint", "grpo": "checkpoint",
            "distill": "checkpoint", "eval": None}
RUN_STATE = "run.json"
STAGE_MODULES = {"eval": "evaluate"}


@dataclass
class Stage:
    index: int
    name: str
    command: str
    options: dict
    output: Path
    args: list[str] = field(default_factory=list)

    @property
    def folder(self) -> str:
        return self.output.name


def command_params(command: str) -> dict[str, Any]:
    """The options a command takes, by snake_case name (from the CLI's own declarations)."""
    import typer

    from chainforge.cli import app

    group = typer.main.get_command(app)
    cmd = group.commands.get(command)  # type: ignore[attr-defined]
    if cmd is None:
        return {}
    return {p.name: p for p in cmd.params if p.name}


def load_recipe(path: str | Path) -> dict:
    from chainforge.config import coerce_value, load_yaml_config

    if not Path(path).is_file():
        raise UsageError(f"recipe not found: {path} (see configs/demo.yaml for an example)")
    recipe = load_yaml_config(path)
    unknown = set(recipe) - RECIPE_KEYS
    if unknown:
        raise UsageError(f"recipe {path}: unknown key(s) {', '.join(sorted(unknown))}; "
                         f"known: {', '.join(sorted(RECIPE_KEYS))}")
    if not recipe.get("run_dir"):
        raise UsageError(f"recipe {path}: `run_dir` is required (where stage folders go)")
    stages = recipe.get("stages")
    if not isinstance(stages, list) or not stages:
        raise UsageError(f"recipe {path}: `stages` must be a non-empty list of {{name, command, …}}")
    seen: set[str] = set()
    hints = {c: _hints(c) for c in PRODUCES}
    for i, st in enumerate(stages):
        if not isinstance(st, dict) or not st.get("name") or not st.get("command"):
            raise UsageError(f"recipe {path}: stage {i} needs `name` and `command`")
        name, command = str(st["name"]), str(st["command"])
        if name in seen:
            raise UsageError(f"recipe {path}: stage name '{name}' is used twice; names must be unique")
        seen.add(name)
        if command not in PRODUCES:
            raise UsageError(f"recipe {path}: stage '{name}' has unknown command '{command}'; "
                             f"known: {', '.join(sorted(PRODUCES))}")
        params = command_params(command)
        for key in st:
            k = str(key).replace("-", "_")
            if key in ("name", "command"):
                continue
            if k not in params or k in ("output", "config", "overwrite"):
                allowed = sorted(set(params) - {"output", "config", "overwrite"})
                raise UsageError(f"recipe {path}: stage '{name}' ({command}) has unknown option '{key}'; "
                                 f"known: {', '.join(allowed)}")
            # keep the typed value: it is what the stage's manifest will record (YAML reads 1e-5 as a string)
            st[key] = coerce_value(k, st[key], hints[command].get(k, str), params[k], f"recipe {path}: stage '{name}'")
    return recipe


def _hints(command: str) -> dict:
    import typing

    from chainforge.cli import app

    for info_ in app.registered_commands:
        fn = info_.callback
        if fn is not None and (info_.name or fn.__name__.replace("_", "-")) == command:
            return typing.get_type_hints(fn, include_extras=True)
    return {}


def plan_stages(recipe: dict) -> list[Stage]:
    """Each stage's folder and command-line arguments, defaults filled from earlier stages.
    Relative paths in a recipe resolve from the current folder (run it from the repository root)."""
    run_dir = _path(recipe["run_dir"])
    latest: dict[str, str] = {}
    if recipe.get("model"):
        latest["checkpoint"] = str(_model(recipe["model"]))
    prompts = str(_path(recipe["prompts"])) if recipe.get("prompts") else None
    eval_data = str(_path(recipe["eval_data"])) if recipe.get("eval_data") else None
    plan = []
    for i, raw in enumerate(recipe["stages"]):
        command = raw["command"]
        options = {str(k).replace("-", "_"): v for k, v in raw.items() if k not in ("name", "command")}
        defaults: dict[str, Optional[str]] = {}
        if command == "collect":
            defaults["prompts"] = prompts
        elif command == "sft":
            defaults["model"] = latest.get("checkpoint")
            defaults["data"] = latest.get("dataset")
        elif command in ("grpo", "reject"):
            defaults["model"] = latest.get("checkpoint")
            defaults["data"] = prompts
        elif command == "distill":
            defaults["teacher"] = latest.get("checkpoint")
            defaults["data"] = prompts
        elif command == "eval":
            defaults["model"] = latest.get("checkpoint")
            defaults["data"] = eval_data or prompts
        for key, value in defaults.items():
            if key not in options and value is not None:
                options[key] = value
        for key in ("data", "prompts", "eval_data"):
            if key in raw and isinstance(options.get(key), str):
                options[key] = str(_path(options[key]))
        for key in ("model", "teacher", "student", "teacher_model"):
            if key in raw and isinstance(options.get(key), str):
                options[key] = str(_model(options[key]))
        out = run_dir / f"{i:02d}-{raw['name']}"
        stage = Stage(i, str(raw["name"]), command, options, out)
        stage.args = [command, *_as_args(command, options), "--output", str(out)]
        plan.append(stage)
        kind = PRODUCES[command]
        if kind:
            latest[kind] = str(out)
    return plan


def _path(value: Any) -> Path:
    p = Path(str(value)).expanduser()
    return p if p.is_absolute() else (Path.cwd() / p)


def _model(value: Any) -> str:
    # Embedded names and hub ids stay as they are; relative folders resolve from the cwd.
    text = str(value)
    p = Path(text).expanduser()
    if p.exists() or text.startswith((".", "/", "~")):
        return str(_path(text))
    return text


def _as_args(command: str, options: dict) -> list[str]:
    params = command_params(command)
    args: list[str] = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is None:
            continue
        if isinstance(value, bool):
            secondary = getattr(params.get(key), "secondary_opts", None)
            args.append(flag if value else (secondary[0] if secondary else "--no-" + key.replace("_", "-")))
        elif isinstance(value, (list, tuple)):
            for v in value:
                args += [flag, str(v)]
        else:
            args += [flag, str(value)]
    return args


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
    skip = set(_resumable_changes(stage.command))
    if any(k not in stage.options and k not in skip for k in (previous or {})):
        return True
    return any(_norm(recorded.get(k)) != _norm(v) for k, v in stage.options.items()
               if k not in skip and recorded.get(k) != REDACTED)


def _resumable_changes(command: str) -> tuple:
    import importlib

    module = importlib.import_module(f"chainforge.stages.{STAGE_MODULES.get(command, command)}")
    return getattr(module, "RESUMABLE_CHANGES", ())


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


def invoke(args: list[str]) -> int:
    """Run `chainforge ARGS` in this process and return its exit code."""
    import typer

    from chainforge.cli import app

    try:
        rv = typer.main.get_command(app).main(args=args, prog_name="chainforge", standalone_mode=False)
    except SystemExit as exc:
        return int(exc.code or 0)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # click's usage errors in non-standalone mode
        code = getattr(exc, "exit_code", None)
        if code is None:
            raise
        msg = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        info(f"Error: {msg}")
        return int(code)
    return int(rv) if isinstance(rv, int) else 0


def run(opts) -> None:
    recipe_path = Path(opts.recipe)
    recipe = load_recipe(recipe_path)
    plan = plan_stages(recipe)
    names = [s.name for s in plan]
    for flag in ("start", "until"):
        value = opts.get(flag)
        if value and value not in names:
            raise UsageError(f"--{'from' if flag == 'start' else flag} {value}: no such stage; "
                             f"stages: {', '.join(names)}")
    first = names.index(opts.start) if opts.get("start") else 0
    last = names.index(opts.until) if opts.get("until") else len(plan) - 1
    if first > last:
        raise UsageError(f"--from {opts.start} comes after --until {opts.until}")
    for st in plan[:first]:
        m = read_manifest(st.output)
        if PRODUCES[st.command] and not (m and m.get("status") == "complete"):
            raise UsageError(f"--from {opts.start}: earlier stage '{st.name}' has no complete output at "
                             f"{st.output}; run it first (drop --from)")

    run_dir = plan[0].output.parent
    run_dir.mkdir(parents=True, exist_ok=True)
    state_path = run_dir / RUN_STATE
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    state.update(recipe=str(recipe_path), stages=state.get("stages", {}))

    redone: set[str] = set()
    for st in plan[first:last + 1]:
        record = state["stages"].setdefault(st.name, {})
        record.update(folder=st.folder, command=st.command)
        m = read_manifest(st.output)
        previous = record.get("options")  # what the last run of this recipe gave the stage
        if stage_is_current(st, m, redone, previous):
            info(f"[{st.folder}] complete with the same options: skipped")
            record["status"] = "skipped (complete)"
            _save_state(state_path, state)
            continue
        args = list(st.args)
        if m and (m.get("status") == "complete" or m.get("stage") != st.command or _differs(st, m, previous)
                  or _inputs_changed(m, redone)):
            # an unfinished stage whose inputs were redone must not resume on stale partial work
            args.append("--overwrite")
            info(f"[{st.folder}] options or inputs changed: redoing it")
        elif m:
            info(f"[{st.folder}] unfinished: resuming")
        info(f"[{st.folder}] chainforge {' '.join(args)}")
        record.update(status="running", started=_now(), options=st.options)
        _save_state(state_path, state)
        t0 = time.time()
        code = invoke(args)
        gc.collect()
        record.update(status="complete" if code == 0 else f"failed (exit {code})",
                      wall_s=round(time.time() - t0, 1), finished=_now())
        _save_state(state_path, state)
        if code != 0:
            if code == 130:
                raise Interrupted(f"stage '{st.name}' interrupted; rerun the same `chainforge run` to resume")
            if code == 2:
                raise RunFailed(f"stage '{st.name}' refused its input (see the error above); fix the "
                                f"recipe and rerun: finished stages are kept")
            raise RunFailed(f"stage '{st.name}' stopped (exit {code}); rerun the same `chainforge run` "
                            f"to resume it")
        redone.add(str(st.output))
    info(f"run complete: {run_dir} (report: chainforge report {run_dir})")


def _save_state(path: Path, state: dict) -> None:
    atomic_write_text(path, json.dumps(state, indent=2) + "\n")


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


