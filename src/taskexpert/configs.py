"""Each verb's settings written once: a pydantic model, from which the verb's CLI options, its
config file (`--config FILE.yaml`) and its `--print-config` output are all generated.

Why: a setting such as select-experts' tolerance used to be written four times (the typer
default and help, the keyword forwarding, the library config and a field-by-field copy), and
copies drift. Now the model field is the one place: its name, type, default and
`Field(description=...)` give the option's flag, type, default and help, the YAML key and the
YAML comment. A verb's data (what it reads and writes: --base, --kshot, --out, ...) stays
ordinary options: a config file says how to run, and is reused across inputs.

How: typer builds a command from a function's signature, so `verb_command(Model)` wraps the
verb function and gives the wrapper a generated `inspect.Signature` (as `cli.with_quiet` adds
--quiet): the verb's own options, then one `typer.Option` per model field (Annotated types),
then --config and --print-config. Only typer's public API is used. When the command runs,
the wrapper builds the model once from the file's values and the options given on the command
line (`ctx.get_parameter_source`), validated together by pydantic; a bad value fails the same
way from a file or a flag, as one InputError naming the key (and the file when it came from
one). The verb is called with `config=` the model.

Mapping from a field to its option:
  * flag `--field-name`; help from the description;
  * bool: a plain flag, `--x` for a False default; a True default is turned off by `--no-x`
    (or the flag `Cli(flag=..., help=...)` names, with help for the flag, since the
    description says what the field means);
  * a True-default bool with `Cli(on="--x", flag="--y")`: the pair `--x/--y`, so an old
    explicit on flag keeps working;
  * `X | None` with a None default: no default shown;
  * Literal: a text option whose metavar lists the choices; the model checks the value, so a
    bad choice is the same InputError from the file and the command line;
  * `Cli(option=False)`: config file only; `Cli(option=False, file=False)`: neither (set by
    the program, e.g. `progress`, which --quiet drives).
"""

from __future__ import annotations

import difflib
import functools
import inspect
import textwrap
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from taskexpert.errors import InputError


@dataclass(frozen=True)
class Cli:
    """How a field appears on the command line, when the defaults above do not fit.

    Put it in the field's `Annotated[...]` metadata: `Annotated[bool, Cli(flag="--no-mc")]`.
    """

    flag: str | None = None  # the option's name; for a bool, the flag that sets the opposite
    help: str | None = None  # the flag's help, when it is not the field's description
    on: str | None = None  # a True-default bool: also a flag that sets it (an --on/--off pair)
    option: bool = True  # a command-line option
    file: bool = True  # a key of the config file (and of --print-config)


def _cli(info: FieldInfo) -> Cli:
    return next((m for m in info.metadata if isinstance(m, Cli)), Cli())


def option_fields(model: type[BaseModel]) -> dict[str, FieldInfo]:
    """The fields that are command-line options, in the model's order."""
    return {name: info for name, info in model.model_fields.items() if _cli(info).option}


def file_fields(model: type[BaseModel]) -> dict[str, FieldInfo]:
    """The fields a config file may set, in the model's order."""
    return {name: info for name, info in model.model_fields.items() if _cli(info).file}


def _inverted(info: FieldInfo) -> bool:
    """A bool defaulting to True with one flag, which turns it off."""
    return info.annotation is bool and info.default is True and not _cli(info).on


def flag_of(name: str, info: FieldInfo) -> str:
    """The option's name: `--field-name`, `--no-field-name` for a bool that defaults to True."""
    cli = _cli(info)
    if cli.flag:
        return cli.flag
    dashed = name.replace("_", "-")
    return f"--no-{dashed}" if _inverted(info) else f"--{dashed}"


def _optional(annotation: Any) -> tuple[Any, bool]:
    """(X, True) for `X | None`, else (annotation, False)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(annotation)) == 2:
            return args[0], True
    return annotation, False


def choices_of(info: FieldInfo) -> tuple[str, ...] | None:
    """A Literal field's choices, else None."""
    inner, _ = _optional(info.annotation)
    if typing.get_origin(inner) is Literal:
        return tuple(str(c) for c in typing.get_args(inner))
    return None


def cli_type(info: FieldInfo) -> Any:
    """The Python type typer parses the option as (a Literal as text, checked by the model)."""
    inner, optional = _optional(info.annotation)
    if typing.get_origin(inner) is Literal:
        inner = str
    return inner | None if optional else inner


def _parameter(name: str, info: FieldInfo) -> inspect.Parameter:
    import typer

    cli = _cli(info)
    help_text = cli.help or info.description
    kind = inspect.Parameter.KEYWORD_ONLY
    if info.annotation is bool and cli.on:
        option = typer.Option(f"{cli.on}/{flag_of(name, info)}", help=help_text)
        return inspect.Parameter(name, kind, default=True, annotation=Annotated[bool, option])
    if info.annotation is bool:
        option = typer.Option(flag_of(name, info), help=help_text)
        return inspect.Parameter(name, kind, default=False, annotation=Annotated[bool, option])
    choices = choices_of(info)
    metavar = f"[{'|'.join(choices)}]" if choices else None
    option = typer.Option(flag_of(name, info), help=help_text, metavar=metavar)
    annotation = Annotated[cli_type(info), option]
    return inspect.Parameter(name, kind, default=info.default, annotation=annotation)


def _relax_required(ctx, value: bool) -> bool:  # typer passes (ctx, value) by position
    """--print-config needs none of the verb's inputs: let the required options be missing.

    Typer builds the click command afresh on every call; the change is undone on close anyway.
    """
    if value:
        relaxed = [p for p in ctx.command.params if p.required]
        for param in relaxed:
            param.required = False
        ctx.call_on_close(lambda: [setattr(p, "required", True) for p in relaxed])
    return value


def _config_parameters() -> list[inspect.Parameter]:
    import typer

    kind = inspect.Parameter.KEYWORD_ONLY
    config = typer.Option(
        "--config",
        help="Settings from a YAML file (see --print-config); options given here override it.",
    )
    show = typer.Option(
        "--print-config",
        is_eager=True,
        callback=_relax_required,
        help="Print the effective settings as commented YAML (a --config file) and exit.",
    )
    return [
        inspect.Parameter(
            "config_file", kind, default=None, annotation=Annotated[Path | None, config]
        ),
        inspect.Parameter("print_config", kind, default=False, annotation=Annotated[bool, show]),
    ]


def verb_command(model: type[BaseModel]) -> Callable[[Callable], Callable]:
    """Decorate a verb `main(<its data options>, *, config: Model)`: typer sees its own
    options, one option per field of `model`, --config and --print-config."""

    def decorate(verb: Callable) -> Callable:
        import typer

        fields = option_fields(model)
        own = inspect.signature(verb, eval_str=True)
        kept = [p for p in own.parameters.values() if p.name != "config"]
        clash = {p.name for p in kept} & {*fields, "ctx", "config_file", "print_config"}
        if clash:
            raise TypeError(f"{verb.__module__}: {sorted(clash)} are both options and fields")

        @functools.wraps(verb)
        def command(ctx: typer.Context, **kwargs):
            path = kwargs.pop("config_file")
            show = kwargs.pop("print_config")
            given = {}
            for name, info in fields.items():
                value = kwargs.pop(name)
                source = ctx.get_parameter_source(name)
                if source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP"):
                    given[name] = (not value) if _inverted(info) else value
            config = build_config(model, path, given)
            if show:
                typer.echo(dump_config(config, ctx.command_path), nl=False)
                raise typer.Exit()
            return verb(**kwargs, config=config)

        context = inspect.Parameter(
            "ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context
        )
        generated = [_parameter(name, info) for name, info in fields.items()]
        parameters = [context, *kept, *generated, *_config_parameters()]
        command.__signature__ = own.replace(parameters=parameters)
        command.__annotations__ = {p.name: p.annotation for p in parameters} | {"return": None}
        del command.__wrapped__  # typer reads the generated signature, not the verb's
        command.config_model = model
        return command

    return decorate


def read_yaml_mapping(path: str | Path) -> tuple[dict[str, Any], str]:
    """A YAML file's top-level mapping (empty for an empty file) and its text; an unreadable
    file, bad YAML or a non-mapping is an InputError naming the file (and line)."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read: {exc}", path) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        line = mark.line + 1 if mark is not None else None
        raise InputError(f"not valid YAML: {problem}", path, line) from None
    if data is None:
        return {}, text
    if not isinstance(data, dict):
        raise InputError(f"expected a mapping of settings, got {type(data).__name__}", path)
    return data, text


def read_config_file(model: type[BaseModel], path: str | Path) -> dict[str, Any]:
    """The settings a YAML file holds; an unreadable file or an unknown key is an InputError."""
    path = Path(path)
    data, _ = read_yaml_mapping(path)
    known = file_fields(model)
    for key in data:
        if key not in known:
            close = difflib.get_close_matches(str(key), list(known), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(known)}"
            raise InputError(f"unknown setting{hint}", path, field=str(key))
    return data


def build_config(
    model: type[BaseModel],
    path: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
):
    """The model from a config file (if any), `overrides` (command-line values) winning.

    A bad value is an InputError naming its key, and the file when the value came from it.
    """
    overrides = dict(overrides or {})
    values = read_config_file(model, path) if path is not None else {}
    values.update(overrides)
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = [str(part) for part in err["loc"]]
        message = err["msg"]
        if "input" in err and not isinstance(err["input"], dict | BaseModel):
            message += f", got {err['input']!r}"
        if loc and loc[0] in overrides or path is None:
            field = ".".join(loc).replace("_", "-") or None
            raise InputError(message, field=field) from None
        raise InputError(message, path, field=".".join(loc) or None) from None


def dump_config(config: BaseModel, title: str = "") -> str:
    """Commented YAML of every file setting: each key under its description."""
    import yaml

    data = config.model_dump(mode="json")
    lines = []
    if title:
        lines.append(f"# {title}: load with --config FILE; options given with it override it.")
    for name, info in file_fields(type(config)).items():
        lines.append("")
        about = info.description or ""
        choices = choices_of(info)
        if choices and not all(choice in about for choice in choices):
            about += f" (one of: {', '.join(choices)})"
        for line in textwrap.wrap(about.strip(), 96):
            lines.append(f"# {line}")
        lines.append(yaml.safe_dump({name: data[name]}, sort_keys=False).rstrip())
    return "\n".join(lines).lstrip("\n") + "\n"


def shared_field(option: Any) -> Any:
    """A field for one of `recipes.common_options`' shared settings (default and help kept there).

    Anything with `default` and `help` will do (a `SharedOption`, or a typer option)."""
    from pydantic import Field

    return Field(option.default, description=option.help)


def own_settings(model: type[BaseModel], config: BaseModel):
    """The part of a verb's config that is `model`'s own settings (a library config inside a
    verb config that adds how to run it), validated as `model`."""
    return model.model_validate(config.model_dump(include=set(model.model_fields)))
