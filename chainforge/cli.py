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
from chainforge.config import ConfigFile, resolve_options
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


# ---- stage commands (each: options, then run_stage) ----------------------------------------------


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
