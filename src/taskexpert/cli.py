"""One CLI, one verb per stage (litgpt style): each verb is `main` in `taskexpert.commands.<verb>`.

Verbs stay thin: they parse options, call the Python API and print a summary. Heavy imports
(torch, transformers, faiss) happen inside the verbs, so `taskexpert --help` stays instant.
"""

from __future__ import annotations

import importlib
import sys

import typer

from taskexpert.errors import TaskexpertError

app = typer.Typer(
    help="Build task experts from a K-shot set, a LoRA bank and open instruction data.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
testbed_app = typer.Typer(help="The offline tiny model, LoRA bank, pool and target tasks.")
app.add_typer(testbed_app, name="testbed")

# verb name -> module under taskexpert.commands; a module missing here is a verb not built yet.
VERBS = {
    "import": "import_records",
    "select-data": "select_data",
    "kcenter": "kcenter",
    "demo": "demo",
    "select-experts": "select_experts",
    "train-moe": "train_moe",
    "evaluate": "evaluate",
    "diverseevol": "diverseevol",
}
TESTBED_VERBS = {"build": "testbed_build"}


def _register(target: typer.Typer, verbs: dict[str, str]) -> None:
    for verb, module_name in verbs.items():
        try:
            module = importlib.import_module(f"taskexpert.commands.{module_name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"taskexpert.commands.{module_name}":
                continue
            raise
        target.command(verb, help=(module.main.__doc__ or "").strip())(module.main)


_register(app, VERBS)
_register(testbed_app, TESTBED_VERBS)


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
