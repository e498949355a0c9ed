"""One CLI, one verb per stage (litgpt style): each verb is `main` in `taskexpert.commands.<verb>`.

Verbs stay thin: they parse options, call the Python API and print a summary. Heavy imports
(torch, transformers, faiss) happen inside the verbs, so `taskexpert --help` stays instant.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import sys
from collections.abc import Callable

import typer

from taskexpert.errors import TaskexpertError
from taskexpert.progress import configure_logging, set_quiet

app = typer.Typer(
    help="Build task experts from a K-shot set, a LoRA bank and open instruction data.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
testbed_app = typer.Typer(
    help="The offline tiny model, LoRA bank, pool and target tasks.", rich_markup_mode=None
)
app.add_typer(testbed_app, name="testbed")
config_app = typer.Typer(help="Run config files for `taskexpert run`.", rich_markup_mode=None)
app.add_typer(config_app, name="config")
bank_app = typer.Typer(help="A real LoRA bank: one adapter per source.", rich_markup_mode=None)
app.add_typer(bank_app, name="bank")
targets_app = typer.Typer(help="Real target tasks: K-shot and test files.", rich_markup_mode=None)
app.add_typer(targets_app, name="targets")

# verb name -> module under taskexpert.commands; a module missing here is a verb not built yet.
VERBS = {
    "import": "import_records",
    "select-data": "select_data",
    "kcenter": "kcenter",
    "demo": "demo",
    "select-experts": "select_experts",
    "train-moe": "train_moe",
    "evaluate": "evaluate",
    "export-task": "export_task",
    "diverseevol": "diverseevol",
    "run": "run",
    "export": "export",
    "report": "report",
}
TESTBED_VERBS = {"build": "testbed_build"}
CONFIG_VERBS = {"example": "config_example"}
BANK_VERBS = {"build": "bank"}
TARGETS_VERBS = {"make": "targets"}


def _set_quiet(value: bool) -> None:
    if value:
        set_quiet(True)
        configure_logging()


QUIET = typer.Option(
    False,
    "--quiet",
    "-q",
    is_eager=True,
    callback=_set_quiet,
    help="No progress bars or progress log lines (also: TASKEXPERT_QUIET=1).",
)


def with_quiet(verb: Callable) -> Callable:
    """The verb with a `--quiet` option added: one switch for every verb, defined here once."""

    @functools.wraps(verb)
    def run(*args, quiet: bool = False, **kwargs):
        return verb(*args, **kwargs)

    signature = inspect.signature(verb, eval_str=True)
    keyword = inspect.Parameter.KEYWORD_ONLY
    extra = inspect.Parameter("quiet", keyword, default=QUIET, annotation=bool)
    run.__signature__ = signature.replace(parameters=[*signature.parameters.values(), extra])
    run.__annotations__ = {**verb.__annotations__, "quiet": bool}
    return run


def _register(target: typer.Typer, verbs: dict[str, str]) -> None:
    for verb, module_name in verbs.items():
        try:
            module = importlib.import_module(f"taskexpert.commands.{module_name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"taskexpert.commands.{module_name}":
                continue
            raise
        doc = (module.main.__doc__ or "").strip()
        target.command(verb, help=doc)(with_quiet(module.main))


_register(app, VERBS)
_register(testbed_app, TESTBED_VERBS)
_register(config_app, CONFIG_VERBS)
_register(bank_app, BANK_VERBS)
_register(targets_app, TARGETS_VERBS)


# typer ships its own copy of click (or uses click itself, in older versions): find the error
# classes through an exported one, so either works.
_CLICK_ERRORS = {c.__name__: c for c in typer.BadParameter.__mro__}
ClickException = _CLICK_ERRORS["ClickException"]
UsageError = _CLICK_ERRORS["UsageError"]


def main() -> None:
    """Console entry point: every user-facing error is one `error:` line on stderr, no traceback.

    Bad input (TaskexpertError) exits 1; a bad command line (unknown option, a value of the wrong
    type) exits 2, as click does, but is reported on one line too instead of a framed panel.
    """
    configure_logging()
    try:
        code = app(prog_name="taskexpert", standalone_mode=False)
    except TaskexpertError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    except UsageError as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # the help is the message (or was printed)
            if exc.format_message().strip():
                exc.show()
            sys.exit(exc.exit_code)
        ctx = getattr(exc, "ctx", None)
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        print(f"error: {_one_line(exc.format_message())}{hint}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except ClickException as exc:
        print(f"error: {_one_line(exc.format_message())}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except typer.Abort:
        print("error: aborted", file=sys.stderr)
        sys.exit(1)
    if isinstance(code, int) and code:  # an explicit exit code (130 after Ctrl-C, say)
        sys.exit(code)


def _one_line(message: str) -> str:
    return " ".join(message.split())
