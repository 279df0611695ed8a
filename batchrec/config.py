"""Typed configs from YAML and `--set key=value`: one dataclass field = one YAML key.

Each stage defines its own config dataclass beside its code; this module turns dicts into
them. Every problem — unknown keys, wrong types — is collected and reported at once, the
way torchtune and litgpt do, so a bad job file needs one edit cycle, not five.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, TypeVar, Union

import yaml

from batchrec import storage
from batchrec.errors import UserError

T = TypeVar("T")


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce(value: Any, tp: Any, key: str, problems: list[str]) -> Any:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        if len(args) == 1:
            return _coerce(value, args[0], key, problems)
        for a in args:
            sub: list[str] = []
            out = _coerce(value, a, key, sub)
            if not sub:
                return out
        problems.append(f"{key}: {value!r} is not a {tp}")
        return value
    if typing.get_origin(tp) is typing.Literal:
        if value not in typing.get_args(tp):
            choices = ", ".join(repr(a) for a in typing.get_args(tp))
            problems.append(f"{key}: {value!r} is not one of {choices}")
        return value
    if _is_dataclass_type(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            problems.append(f"{key}: expected a mapping, got {value!r}")
            return value
        return _build(tp, value, key + ".", problems)
    if origin in (list, tuple):
        (inner, *_) = typing.get_args(tp) or (Any,)
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, list | tuple):
            problems.append(f"{key}: expected a list, got {value!r}")
            return value
        out = [_coerce(v, inner, f"{key}[{i}]", problems) for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            problems.append(f"{key}: expected a mapping, got {value!r}")
        return value
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        problems.append(f"{key}: {value!r} is not a boolean")
        return value
    if tp in (int, float):
        if isinstance(value, bool):
            problems.append(f"{key}: {value!r} is not a number")
            return value
        try:
            if tp is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
            return tp(value)
        except (TypeError, ValueError):
            problems.append(f"{key}: {value!r} is not {'an integer' if tp is int else 'a number'}")
            return value
    if tp is str:
        if not isinstance(value, str | int | float):
            problems.append(f"{key}: {value!r} is not a string")
            return value
        return str(value)
    return value


def _build(cls: type[T], data: dict[str, Any], prefix: str, problems: list[str]) -> T:
    # Problems of this section only decide whether it can be built: a bad key in one section
    # must not hide the problems of the sections after it.
    mine: list[str] = []
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        # Still built and checked from the known keys below, so their problems are listed too.
        problems.extend(
            f"{prefix}{k}: unknown key (valid keys: {', '.join(sorted(fields))})" for k in unknown
        )
    # A key whose value is refused is left at its default, so the section is still built and
    # its own checks report their problems beside the refusal (unless a required key is lacking).
    kwargs = {}
    for k, v in data.items():
        if k in fields:
            before = len(mine)
            value = _coerce(v, hints[k], prefix + k, mine)
            if len(mine) == before:
                kwargs[k] = value
    lacking = [name for name, f in fields.items() if name not in kwargs and _required(f)]
    mine += [f"{prefix}{name}: required key is missing" for name in lacking if name not in data]
    problems.extend(mine)
    if lacking:
        return None  # type: ignore[return-value]
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if validate:
        problems.extend(f"{prefix}{e}" for e in validate())
    return obj


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def from_dict(cls: type[T], data: dict[str, Any] | None, *, where: str = "config") -> T:
    """Build `cls` from a plain dict; raise one UserError listing every problem."""
    problems: list[str] = []
    obj = _build(cls, dict(data or {}), "", problems)
    if problems:
        raise UserError(
            f"invalid configuration: {'; '.join(problems)}",
            where=where,
            fix="fix or remove the keys named above",
        )
    return obj


def parse_overrides(pairs: list[str] | None) -> dict[str, Any]:
    """`["train.epochs=3", "model.dim=64"]` → nested dict; values parsed as YAML scalars."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise UserError(f"--set expects key=value, got {pair!r}", fix="e.g. --set train.epochs=3")
        key, raw = pair.split("=", 1)
        value = yaml.safe_load(raw) if raw != "" else ""
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise UserError(f"--set {key}: {p} is not a section")
        node[parts[-1]] = value
    return out


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def load_yaml(url: str) -> dict[str, Any]:
    if not storage.exists(url):
        raise UserError("config file not found", where=url, fix="check the path")
    try:
        data = yaml.safe_load(storage.read_bytes(url).decode())
    except yaml.YAMLError as e:
        raise UserError(f"config file is not valid YAML: {e}", where=url) from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError("config file must hold a mapping at the top level", where=url)
    return data


def to_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)
