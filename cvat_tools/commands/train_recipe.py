"""What every ``cvat-tools train`` command shares: ``--config``, ``--resume``, and the one-line
``--resume`` hint after Ctrl-C."""
from __future__ import annotations

import shlex
from pathlib import Path

import click


def recipe_options(recipe: str):
    """--config FILE and --resume; ``recipe`` names the shipped recipe for the help."""
    def decorate(command):
        command = click.option("--resume", is_flag=True, default=None,
                               help="Continue from OUT.ckpt/last.pt (an error when there is none).")(command)
        return click.option("--config", "config", type=click.Path(dir_okay=False, path_type=Path), default=None,
                            help=f"YAML recipe (e.g. {recipe}): its keys are the trainer's settings; "
                                 "options given here override it.")(command)
    return decorate


def resume_command() -> str:
    """This very command line with --resume (as typed: the CLI keeps its arguments in ctx.obj)."""
    ctx = click.get_current_context(silent=True)
    argv = ((ctx.find_object(dict) or {}).get("argv") if ctx else None) or []
    if not argv:
        return "the same command with --resume"
    return "cvat-tools " + shlex.join([*argv, *([] if "--resume" in argv else ["--resume"])])


def train(fn, cfg):
    """Run a trainer; after Ctrl-C the error names the checkpoint and the --resume command."""
    from ..train.engine import TrainingInterrupted, run_folder

    try:
        return fn(cfg)
    except TrainingInterrupted as exc:
        exc.command = resume_command()
        raise
    except KeyboardInterrupt:  # while the data is read, or the bundle written after the last epoch
        folder = Path(getattr(cfg, "checkpoint_dir", None) or run_folder(cfg.out))
        exc = TrainingInterrupted(folder / "last.pt", None)
        exc.command = resume_command()
        raise exc from None
