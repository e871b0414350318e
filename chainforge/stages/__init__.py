"""The stages. Each module `chainforge.stages.<name>` exposes its config dataclass (`CONFIG`, also
under its own name, e.g. `SftConfig`), `SPEC` (what it produces, its default inputs in a recipe,
which option changes are safe to resume) and `run(config)`; the CLI and `chainforge run` both call
that."""

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

    from chainforge.data import StageOutput, read_manifest

    m = read_manifest(output) if output and Path(output).is_dir() else None
    if m and m.get("status") == "running":
        StageOutput(Path(output), m["stage"], m.get("config", {}), m.get("inputs", []),
                    m.get("created", "")).mark_incomplete(m.get("metrics"))
