"""The ``mlsmith`` command: one Typer app, one module per verb.

Every verb module exposes ``command``, a plain function Typer turns into a subcommand. Heavy
libraries (torch, pandas, MLflow) are imported inside the commands, so ``mlsmith --help`` is
instant. User errors (:class:`mlsmith.errors.MlsmithError`) print one clear message and exit 2;
anything else is a bug and keeps its traceback. SIGINT and SIGTERM stop any verb as Ctrl-C
does (exit 130 and 143).
"""

from __future__ import annotations

import logging
import signal
import sys
from typing import Any

import typer

from mlsmith import interrupts
from mlsmith.cli import (
    check,
    compare,
    evaluate,
    export,
    lr_find,
    monitor,
    predict,
    promote,
    register,
    report,
    reproduce,
    serve,
    signals,
    train,
    tune,
)
from mlsmith.errors import MlsmithError

app = typer.Typer(
    name="mlsmith",
    help="A dataset and one YAML config in; a trained, evaluated, tracked model out.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.command("train", no_args_is_help=True)(train.command)
app.command("evaluate", no_args_is_help=True)(evaluate.command)
app.command("predict", no_args_is_help=True)(predict.command)
app.command("check", no_args_is_help=True)(check.command)
app.command("lr-find", no_args_is_help=True)(lr_find.command)
app.command("report", no_args_is_help=True)(report.command)
app.command("compare", no_args_is_help=True)(compare.command)
app.command("tune", no_args_is_help=True)(tune.command)
app.command("export", no_args_is_help=True)(export.command)
app.command("register", no_args_is_help=True)(register.command)
app.command("promote", no_args_is_help=True)(promote.command)
app.command("serve", no_args_is_help=True)(serve.command)
app.command("monitor", no_args_is_help=True)(monitor.command)
app.command("reproduce", no_args_is_help=True)(reproduce.command)


@app.callback(invoke_without_command=True)
def _root(
    version: bool = typer.Option(False, "--version", help="Print the version and exit."),
) -> None:
    if version:
        from mlsmith import __version__

        typer.echo(f"mlsmith {__version__}")
        raise typer.Exit()


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``mlsmith`` console script; exits with the command's status.

    ``argv`` None means this process's own command line: main then owns the process's signals
    to the end. With an explicit ``argv`` (tests, other programs) they are restored afterwards.
    """
    _configure_logging()
    with signals.interruptible(restore=argv is not None):
        try:
            code = _run(argv)
            stop = signals.received()
            signals.quiet()
        except BaseException as error:
            # A KeyboardInterrupt that landed between the command's end and quiet(), or an
            # error a library raised from the Interrupted it caught: either way, a stop.
            stop = interrupts.interruption(error)
            if stop is None:
                raise
            signals.quiet()
            code = 130
    if stop is not None or code == 130:
        # Typer turns KeyboardInterrupt into exit 130, and a library may swallow it and let the
        # command carry on: either way the signal that arrived decides how the command ends.
        signum = stop if stop is not None else signal.SIGINT
        typer.echo("terminated" if signum == signal.SIGTERM else "interrupted", err=True)
        code = signals.exit_code(signum)
    sys.exit(code)


def _run(argv: list[str] | None) -> int:
    """Run one command; its exit status, with user errors reported."""
    try:
        result = app(args=argv, standalone_mode=False)
    except MlsmithError as error:
        typer.secho(f"error: {error}", fg="red", err=True)
        return error.exit_code
    except typer.Abort:  # end of input at a prompt
        typer.echo("aborted", err=True)
        return 1
    except KeyboardInterrupt:
        return 130
    except typer.TyperException as error:
        # Typer (0.26+) bundles its own click: usage errors are TyperExceptions with show().
        show = getattr(error, "show", None)
        if show is not None:
            show()
        else:
            typer.echo(f"error: {error}", err=True)
        return int(getattr(error, "exit_code", 2))
    return result if isinstance(result, int) else 0


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.levelno >= logging.WARNING:
            return f"{record.levelname.lower()}: {message}"
        return message


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of each record, never a stale one.

    ``main`` may run many times in one process (tests capture and close stderr in between);
    a handler holding the first stream would write to a closed file.
    """

    def __init__(self) -> None:
        logging.Handler.__init__(self)

    @property
    def stream(self) -> Any:
        return sys.stderr


def _configure_logging() -> None:
    """mlsmith's warnings and progress lines go to stderr; stdout stays for results."""
    logger = logging.getLogger("mlsmith")
    if not any(getattr(h, "_mlsmith", False) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(_Formatter())
        handler._mlsmith = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
