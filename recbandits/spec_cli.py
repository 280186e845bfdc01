"""One definition per option: a spec dataclass's fields, with their help, are its typer command's options.

A field declared with :func:`option` is the option ``--field-name`` (or ``flag``) of the command that
:func:`spec_command` builds: the field's type, help and default are written once, in the dataclass, which the
jobs, config files and Ray Serve's builder arguments use too. Typer was chosen over a second CLI library
(pydantic-settings, tyro) because every other ``recbandits`` command is a typer command: this keeps one
command-line framework and makes the spec the single place an option is defined.

The command passes only the options given on the command line (an option not given is left out), so the
caller can tell the settings a user asked for from the defaults (``serve`` needs that on a restart).

>>> from dataclasses import dataclass
>>> @dataclass
... class Spec:
...     steps: int = option(100, help="Env steps.")
...     wait_s: float = option(0.002, flag="--wait-ms", scale=1000, help="Wait, milliseconds.")
>>> command = spec_command(Spec, lambda settings: print(settings), doc="Run.")
>>> [name for name in inspect.signature(command).parameters]
['steps', 'wait_ms']
>>> command(steps=None, wait_ms=5.0)
{'wait_s': 0.005}
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from collections.abc import Callable, Sequence
from typing import Annotated, Any

import typer

from recbandits.console import fail

_CLI = "recbandits.cli"

# Options several commands share.
DATA_DIR_HELP = "MovieLens directory (default: $RECBANDITS_DATA_DIR or the embedded data)."
ADDRESS_HELP = "Ray cluster: auto, host:port or ray://host:port (default: a local Ray)."


def option(default: Any = dataclasses.MISSING, *, help: str, flag: str | None = None, scale: float = 1.0,
           parse: Callable[[str], Any] | None = None, default_text: str | None = None,
           default_factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field that is also a command-line option.

    ``flag``: the option's name when it is not ``--field-name`` (``--x/--no-x`` for a switch); ``scale``: the
    option's value is the field's times this (``--batch-wait-ms`` for ``batch_wait_timeout_s``); ``parse``: the
    option is text that this turns into the field's value (``"a,b"`` -> ``["a", "b"]``); ``default_text``: the
    help's ``[default: ...]`` when the field's default does not say it (``None`` meaning "port + 1").
    """
    metadata = {_CLI: {"help": help, "flag": flag, "scale": scale, "parse": parse, "default_text": default_text}}
    return dataclasses.field(default=default, default_factory=default_factory, metadata=metadata)


def cli_option(name: str, annotation: Any, default: Any, help: str, flag: str | None = None) -> inspect.Parameter:
    """A command's option that is not a spec field (``--config``, ``--address``)."""
    declarations = [flag] if flag else []
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default,
                             annotation=Annotated[annotation, typer.Option(*declarations, help=help)])


def _option_type(annotation: Any) -> Any:
    """The field's type without ``None`` (typer's options are all optional here)."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        members = [member for member in typing.get_args(annotation) if member is not type(None)]
        return members[0] if len(members) == 1 else str
    return annotation


def _parameter_name(item: dataclasses.Field) -> str:
    flag = item.metadata[_CLI]["flag"]
    if flag is None:
        return item.name
    return flag.split("/")[0].removeprefix("--").replace("-", "_")


def _default_text(item: dataclasses.Field) -> str:
    meta = item.metadata[_CLI]
    if meta["default_text"] is not None:
        value = meta["default_text"]
    elif item.default is not dataclasses.MISSING and item.default is not None:
        value = item.default
        if isinstance(value, float) and meta["scale"] != 1.0:
            value = round(value * meta["scale"], 6)
        value = {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value
    else:
        return ""
    # Typer's rich markup reads "[...]" as a style: the bracket is escaped.
    return f" \\[default: {value}]"


def spec_options(spec: type) -> list[tuple[dataclasses.Field, inspect.Parameter]]:
    """Each option field of ``spec`` with the typer parameter it is (default None: not given)."""
    hints = typing.get_type_hints(spec)
    options = []
    for item in dataclasses.fields(spec):
        if _CLI not in item.metadata:
            continue
        meta = item.metadata[_CLI]
        kind = str if meta["parse"] is not None else float if meta["scale"] != 1.0 else _option_type(hints[item.name])
        declarations = [meta["flag"]] if meta["flag"] else []
        if kind is bool and not declarations:
            declarations = [f"--{item.name.replace('_', '-')}/--no-{item.name.replace('_', '-')}"]
        annotation = Annotated[kind | None, typer.Option(*declarations, help=meta["help"] + _default_text(item))]
        options.append((item, inspect.Parameter(_parameter_name(item), inspect.Parameter.KEYWORD_ONLY, default=None,
                                                annotation=annotation)))
    return options


def spec_command(spec: type, run: Callable[..., Any], *, doc: str, extra: Sequence[inspect.Parameter] = (),
                 name: str | None = None) -> Callable[..., Any]:
    """A typer command whose options are ``spec``'s option fields, then ``extra``.

    It calls ``run(settings, **extra_values)``: ``settings`` maps each given option's field name to its value
    (parsed and scaled), leaving out the options not given.
    """
    options = spec_options(spec)

    def command(**values: Any) -> Any:
        settings = {}
        for item, parameter in options:
            value = values.pop(parameter.name)
            if value is None:
                continue
            meta = item.metadata[_CLI]
            if meta["parse"] is not None:
                try:
                    value = meta["parse"](value)
                except ValueError as error:  # the parser's message names the option
                    raise fail(str(error)) from None
            elif meta["scale"] != 1.0:
                value = value / meta["scale"]
            settings[item.name] = value
        return run(settings, **values)

    command.__signature__ = inspect.Signature([parameter for _, parameter in options] + list(extra))
    command.__doc__ = doc
    command.__name__ = name or f"{spec.__name__.lower()}_command"
    return command


def with_options(group: str, parameters: Sequence[inspect.Parameter]) -> Callable[[Callable], Callable]:
    """A command decorator: ``parameters`` (options several commands share, e.g. an env's settings) become
    options of the command, which receives them as one keyword ``group``: a dict of the given ones by name
    (a trailing ``_`` dropped: ``lambda_`` is ``"lambda"``)."""

    def decorate(function: Callable) -> Callable:
        signature = inspect.signature(function, eval_str=True)  # typer needs the types, not their text

        def command(**values: Any) -> Any:
            given = {parameter.name: values.pop(parameter.name) for parameter in parameters}
            values[group] = {key.rstrip("_"): value for key, value in given.items() if value is not None}
            return function(**values)

        own = [parameter for parameter in signature.parameters.values() if parameter.name != group]
        command.__signature__ = signature.replace(parameters=own + list(parameters))
        command.__doc__, command.__name__ = function.__doc__, function.__name__
        return command

    return decorate
