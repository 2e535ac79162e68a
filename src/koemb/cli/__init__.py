"""The `koemb` command line: a thin layer over documented Python functions.

Each sub-command group lives in its own module of this package and is registered below. A
`UserError` becomes a one-paragraph message and exit code 2, without a traceback.
"""

from __future__ import annotations

import logging
import sys

import typer
from rich.console import Console

from koemb.errors import UserError

app = typer.Typer(
    name="koemb",
    help="Teach a multilingual embedding model a language's own vocabulary.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
err_console = Console(stderr=True)


@app.callback()
def _root(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")


def _register() -> None:
    # Imported here so that each group module can import `app` helpers without cycles.
    from koemb.cli import vocab  # noqa: F401

    for name in ("model", "data", "evaluate", "train"):
        try:
            __import__(f"koemb.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"koemb.cli.{name}":
                raise


def main(argv: list[str] | None = None) -> int:
    _register()
    try:
        app(args=argv, standalone_mode=False)
    except UserError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, markup=True, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        err_console.print("interrupted")
        return 130
    except typer.Exit as exc:
        return exc.exit_code
    except SystemExit as exc:  # click's usage errors
        return int(exc.code or 0)
    except Exception as exc:  # click.ClickException and friends carry their own message
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            return exc.exit_code
        raise
    return 0


def entry() -> None:
    sys.exit(main())
