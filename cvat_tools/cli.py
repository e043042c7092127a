"""The ``cvat-tools`` command line. Each command lives in ``cvat_tools/commands/`` and is
imported only when called, so ``cvat-tools export`` never pays for importing torch."""
from __future__ import annotations

import importlib
import sys

import click

from . import __version__
from .errors import CvatToolsError, Interrupted

# name -> "module:attribute" of a click command, under cvat_tools.commands
COMMANDS = {
    "export": "export:export",
    "convert": "convert:convert",
    "crop": "crop:crop",
    "train": "train:train",
    "evaluate": "evaluate:evaluate",
    "predict": "predict:predict",
    "classify": "classify:classify",
    "annotate": "annotate:annotate",
    "explain": "explain:explain",
    "adapt": "adapt:adapt",
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on demand."""

    def __init__(self, *args, lazy: dict[str, str] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.lazy = lazy or {}

    def list_commands(self, ctx):
        return sorted(set(super().list_commands(ctx)) | set(self.lazy))

    def get_command(self, ctx, name):
        if name in self.lazy:
            module_name, attr = self.lazy[name].split(":")
            module = importlib.import_module(f"cvat_tools.commands.{module_name}")
            return getattr(module, attr)
        return super().get_command(ctx, name)


@click.group(cls=LazyGroup, lazy=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cvat-tools")
def cli():
    """Find, outline and name every white blood cell in blood smear images, for CVAT."""


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors become one line on stderr and exit code 2, never a traceback."""
    try:
        args = list(sys.argv[1:] if argv is None else argv)  # kept for hints such as train's --resume
        code = cli.main(args=args, prog_name="cvat-tools", standalone_mode=False, obj={"argv": args})
        if isinstance(code, int) and code:  # a command's ctx.exit(code) comes back as a value
            sys.exit(code)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except Interrupted as exc:  # Ctrl-C in training: the last checkpoint is kept, the message says how to go on
        click.echo(f"{exc}", err=True)
        sys.exit(130)
    except CvatToolsError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("Interrupted; no partial output was kept.", err=True)
        sys.exit(130)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
