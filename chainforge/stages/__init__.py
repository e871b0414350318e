"""The stages. Each module `chainforge.stages.<name>` exposes its config dataclass (`CONFIG`, also
under its own name, e.g. `SftConfig`), `SPEC` (what it produces, its default inputs in a recipe,
which option changes are safe to resume) and `run(config)`; the CLI and `chainforge run` both call
that.

This registry is also where a finished output gets its card: `chainforge.outputs` calls the writer
set here, and the card's reproduce command comes from the stage's own config class (cards never
look stages up)."""

from chainforge import outputs

# command → module (the eval command's module is `evaluate`: `eval` is a builtin)
STAGE_MODULES = {"collect": "collect", "sft": "sft", "grpo": "grpo", "reject": "reject",
                 "distill": "distill", "eval": "evaluate", "decontaminate": "decontaminate"}


def stage_module(command: str):
    import importlib

    return importlib.import_module(f"chainforge.stages.{STAGE_MODULES[command]}")


def run_stage(command: str, config) -> None:
    """`run(config)` of a stage, as the CLI and `chainforge run` call it: when the stage stops on
    an unexpected exception or Ctrl-C, an output it left `running` is marked `incomplete` (its
    finished work is kept and the same command resumes it)."""
    from chainforge.errors import ChainforgeError

    try:
        stage_module(command).run(config)
        from chainforge import distributed

        # under a launcher: no rank goes on before rank 0 has written this stage's output
        distributed.barrier()
    except ChainforgeError:
        raise  # the stage said what happened and left its output as it should be
    except BaseException:
        mark_unfinished(getattr(config, "output", None))
        raise


def mark_unfinished(output) -> None:
    """Mark a `running` manifest `incomplete` through the output's own manifest writer."""
    from pathlib import Path

    m = outputs.read_manifest(output) if output and Path(output).is_dir() else None
    if m and m.get("status") == "running":
        outputs.StageOutput(Path(output), m["stage"], m.get("config", {}), m.get("inputs", []),
                            m.get("created", "")).mark_incomplete(m.get("metrics"))


def reproduce_command(stage: str, config: dict) -> str:
    """`chainforge STAGE …` with every option the manifest records that differs from its default
    (secrets are already redacted in the manifest, and a redacted value is left out)."""
    import dataclasses

    from chainforge.config import REDACTED, cli_args

    if stage not in STAGE_MODULES:
        return ""
    cls = stage_module(stage).CONFIG
    args = [stage]
    first = ("model", "teacher", "student", "prompts", "data", "output")  # as `--help` lists them
    fields = sorted(dataclasses.fields(cls), key=lambda f: first.index(f.name) if f.name in first else len(first))
    for f in fields:
        if f.name not in config or f.name == "overwrite" or not f.metadata.get("cli", True):
            continue
        value = config[f.name]
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)  # type: ignore[misc]
        if value is None or value == REDACTED or value == default or (isinstance(value, list) and not value
                                                                       and not default):
            continue
        args += cli_args(f, value)
    return "chainforge " + " ".join(args)


def write_card(out, metrics: dict) -> dict:
    """The card of a finished output (README.md, and a checkpoint's system prompt), with the command
    that makes it again."""
    from chainforge.cards import write_card as card

    return card(out, metrics, reproduce_command(out.stage, out.config))


outputs.set_card_writer(write_card)
