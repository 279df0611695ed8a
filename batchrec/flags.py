"""CLI commands made from a stage's config dataclass: the config is the signature (as in litgpt).

Every field of the config is a flag `--field-name`: its help is the field's comment in the
source, its default the field's default. Every such command also takes `--config FILE` (YAML of
the same keys) and `--set key=value` (repeatable). Precedence: field defaults < --config < flags
< --set; then the config is built and checked in one place (`config.from_dict`), so a problem
anywhere is reported with the others. Mapping fields (train's `model_config`) are set through
--config or --set (`--set model_config.n_layers=3`).
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import textwrap
import tokenize
import types
import typing
from collections.abc import Callable
from typing import Annotated, Any, Union

import typer

# Environment variables that fill a flag when it is not given, wherever the field appears: one
# variable per idea, the same in every command (what a CronJob sets).
ENVVARS = {"workspace": "BATCHREC_WORKSPACE", "date": "BATCHREC_DATE", "ray_address": "RAY_ADDRESS"}


def field_help(cls: type) -> dict[str, str]:
    """Each field's comment in the class source: the comment lines just above it and the one after it."""
    source = textwrap.dedent(inspect.getsource(cls))
    comments: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
    lines = source.splitlines()
    helps = {}
    for node in ast.parse(source).body[0].body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            above, row = [], node.lineno - 1
            while row >= 1 and lines[row - 1].strip().startswith("#"):
                above.insert(0, comments[row])
                row -= 1
            text = " ".join([*above, comments.get(node.end_lineno, "")]).strip()
            helps[node.target.id] = text
    return helps


def _flag_type(tp: Any) -> Any | None:
    """The type typer parses a field's flag as; None for a field that is no flag (a mapping)."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        inner = _flag_type(args[0]) if len(args) == 1 else str
        return None if inner is None else inner | None
    if origin is typing.Literal:
        return str  # its choices are the metavar; a value outside them is reported with the others
    if origin is dict:
        return None
    return tp


def _choices(tp: Any) -> tuple[str, ...] | None:
    """A Literal field's values (optional or not), shown in --help; config.from_dict checks them."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _choices(args[0]) if len(args) == 1 else None
    return typing.get_args(tp) if typing.get_origin(tp) is typing.Literal else None


def _default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return inspect.Parameter.empty if f.default is dataclasses.MISSING else f.default


def params(
    cls: type,
    *,
    arguments: tuple[str, ...] = (),
    names: dict[str, str] | None = None,
    envvars: dict[str, str] | None = None,
    hidden: tuple[str, ...] = (),
) -> list[inspect.Parameter]:
    """One typer parameter per flag-able field of `cls`, in field order (arguments first)."""
    hints, helps = typing.get_type_hints(cls), field_help(cls)
    names, envvars = names or {}, {**ENVVARS, **(envvars or {})}
    out = []
    for f in dataclasses.fields(cls):
        tp = _flag_type(hints[f.name])
        if tp is None:
            continue
        if f.name in arguments:
            info: Any = typer.Argument(help=helps.get(f.name, ""), show_default=False)
        else:
            flag = names.get(f.name, "--" + f.name.replace("_", "-"))
            if tp is bool:
                flag = f"{flag}/--no-{flag[2:]}"
            choices = _choices(hints[f.name])
            info = typer.Option(
                flag,
                help=helps.get(f.name, ""),
                envvar=envvars.get(f.name),
                hidden=f.name in hidden,
                metavar=f"<{'|'.join(choices)}>" if choices else None,
            )
        kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
        out.append(inspect.Parameter(f.name, kind, default=_default(f), annotation=Annotated[tp, info]))
    return sorted(out, key=lambda p: p.default is not inspect.Parameter.empty)


# `--json`, the same flag in every command that can print its result as JSON.
AS_JSON = Annotated[bool, typer.Option("--json", help="Print the result as one JSON object.")]

_CONFIG = Annotated[str | None, typer.Option("--config", help="YAML file of the same keys as the flags.")]
_SET = Annotated[
    list[str] | None,
    typer.Option("--set", help="key=value override, repeatable; wins over flags and --config."),
]


def command(
    cls: type,
    run: Callable[..., Any],
    *,
    doc: str,
    arguments: tuple[str, ...] = (),
    names: dict[str, str] | None = None,
    envvars: dict[str, str] | None = None,
    hidden: tuple[str, ...] = (),
    extras: dict[str, tuple[Any, Any]] | None = None,
) -> Callable[..., None]:
    """A typer command building `cls` from its flags, --config and --set, then calling
    `run(cfg, **extras)` and printing what it returns (a URL), if anything. `extras` (name →
    (Annotated type, default)) are flags that are not config keys, e.g. an output format.
    Commands pass `lambda cfg: stage.run(cfg)`, so the stage function is looked up when the
    command runs, not when the CLI is imported (a test can replace it)."""
    from batchrec import config

    extras = extras or {}
    fields = params(cls, arguments=arguments, names=names, envvars=envvars, hidden=hidden)
    kind = inspect.Parameter.KEYWORD_ONLY
    extra_params = [inspect.Parameter(n, kind, default=d, annotation=tp) for n, (tp, d) in extras.items()]
    own = [
        inspect.Parameter("ctx", kind, annotation=typer.Context),
        inspect.Parameter("config", kind, default=None, annotation=_CONFIG),
        inspect.Parameter("set_", kind, default=None, annotation=_SET),
    ]

    def cmd(**given: Any) -> None:
        file, overrides = given.pop("config"), config.parse_overrides(given.pop("set_"))
        rest = {n: given.pop(n) for n in extras}
        # Only what was typed (or set in the environment) overrides --config: a flag left at its
        # default must not undo the file.
        ctx = given.pop("ctx")
        typed = {k: v for k, v in given.items() if ctx.get_parameter_source(k).name != "DEFAULT"}
        values = config.merge(config.load_yaml(file) if file else {}, typed)
        result = run(config.from_dict(cls, config.merge(values, overrides), where="command line"), **rest)
        if result is not None:
            typer.echo(result)

    signature = [*fields, *extra_params, *own]
    cmd.__signature__ = inspect.Signature(signature)  # type: ignore[attr-defined]
    cmd.__annotations__ = {p.name: p.annotation for p in signature}
    cmd.__doc__ = doc
    return cmd
