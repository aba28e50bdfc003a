"""``-p key=value`` parameters of the ``daglite`` command, typed by annotations.

Text is converted with the target function's annotations: ``bool``, numbers,
``Literal``, enums, ``Optional``/unions, lists, tuples and sets of those, or
any class built from a string; a wrong value raises ``_CliError`` naming the
parameter and the type expected.
"""

from __future__ import annotations

import difflib
import enum
import inspect
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import PurePath
from typing import Any, Final

_TRUE: Final = frozenset({"1", "true", "yes", "y", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "n", "off"})
_NONE: Final = frozenset({"none", "null"})


class _CliError(Exception):
    """An error reported as one line; ``code`` is the exit status."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def _parse_params(pairs: Sequence[str]) -> dict[str, str]:
    params: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise _CliError(f"parameters must look like key=value, got {pair!r}")
        params[key] = value
    return params


def _type_name(annotation: Any) -> str:
    # On 3.10, ``isinstance(list[int], type)`` is true: look at the origin first.
    if isinstance(annotation, type) and typing.get_origin(annotation) is None:
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def _convert_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(text)


def _convert_union(text: str, args: tuple[Any, ...]) -> Any:
    options = [a for a in args if a is not type(None)]
    if len(options) < len(args) and text.strip().lower() in (_NONE | {""}):
        return None
    for option in options:
        try:
            return _convert(text, option)
        except (ValueError, TypeError):
            continue
    raise ValueError(text)


def _convert_sequence(text: str, origin: Any, args: tuple[Any, ...]) -> Any:
    parts = [p.strip() for p in text.split(",")] if text.strip() else []
    if origin is tuple and args and args[-1] is not Ellipsis:
        if len(parts) != len(args):
            raise ValueError(text)
        return tuple(_convert(p, a) for p, a in zip(parts, args))
    item = args[0] if args else str
    values = [_convert(p, item) for p in parts]
    if origin in (set, frozenset):
        return origin(values)
    return tuple(values) if origin is tuple else values


def _convert(text: str, annotation: Any) -> Any:
    """Turn ``text`` into a value of type ``annotation`` (str when it says nothing).

    Raises:
        ValueError: If ``text`` is not a valid value of that type.
    """
    if annotation in (inspect.Parameter.empty, Any, str, object) or isinstance(annotation, str):
        return text
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return _convert_union(text, args)
    if origin is typing.Literal:
        return _convert_literal(text, args)
    if origin in (list, tuple, set, frozenset) or (
        origin is not None and getattr(origin, "__name__", "") in ("Sequence", "Iterable")
    ):
        return _convert_sequence(text, origin if origin in (tuple, set, frozenset) else list, args)
    if annotation is bool:
        return _convert_bool(text)
    return _convert_class(text, annotation)


def _convert_literal(text: str, choices: tuple[Any, ...]) -> Any:
    """The choice of a ``Literal`` whose text is ``text``."""
    for choice in choices:
        if str(choice) == text:
            return choice
    raise ValueError(text)


def _convert_class(text: str, annotation: Any) -> Any:
    """``text`` as an enum member or through the class's constructor; else ``text`` itself."""
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return _convert_enum(text, annotation)
    if isinstance(annotation, type) and (
        issubclass(annotation, (int, float, complex, PurePath))
        or annotation.__module__ != "builtins"
    ):
        return annotation(text)
    return text


def _convert_enum(text: str, annotation: type[enum.Enum]) -> Any:
    """The member of enum ``annotation`` whose name or value reads ``text``."""
    for member in annotation:
        if text in (member.name, str(member.value)):
            return member
    raise ValueError(text)


def _annotations(func: Callable[..., Any]) -> dict[str, Any]:
    try:
        return typing.get_type_hints(func)
    except Exception:  # unresolvable names: fall back to plain strings
        return {}


def _signature(func: Callable[..., Any], what: str) -> inspect.Signature:
    try:
        return inspect.signature(func)
    except (TypeError, ValueError) as exc:
        raise _CliError(f"cannot read the parameters of {what}: {exc}") from exc


def _check_names(sig: inspect.Signature, given: dict[str, str], fixed: set[str], what: str) -> None:
    kinds = inspect.Parameter
    accepted = {
        n
        for n, p in sig.parameters.items()
        if p.kind in (kinds.POSITIONAL_OR_KEYWORD, kinds.KEYWORD_ONLY) and n not in fixed
    }
    takes_any = any(p.kind is kinds.VAR_KEYWORD for p in sig.parameters.values())
    for name in given:
        if name not in accepted and not takes_any:
            close = difflib.get_close_matches(name, sorted(accepted), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            known = ", ".join(sorted(accepted)) or "none"
            raise _CliError(f"{what} has no parameter {name!r}{hint} (parameters: {known})")
    missing = [
        n
        for n, p in sig.parameters.items()
        if p.default is kinds.empty
        and p.kind in (kinds.POSITIONAL_OR_KEYWORD, kinds.KEYWORD_ONLY)
        and n not in given
        and n not in fixed
    ]
    if missing:
        shown = ", ".join(f"-p {n}=..." for n in missing)
        raise _CliError(f"{what} needs parameter {missing[0]!r}; give {shown}")


def _convert_params(
    func: Callable[..., Any], given: dict[str, str], fixed: set[str], what: str
) -> dict[str, Any]:
    sig = _signature(func, what)
    _check_names(sig, given, fixed, what)
    hints = _annotations(func)
    out: dict[str, Any] = {}
    for name, text in given.items():
        param = sig.parameters.get(name)
        annotation = hints.get(
            name, param.annotation if param is not None else inspect.Parameter.empty
        )
        try:
            out[name] = _convert(text, annotation)
        except (ValueError, TypeError):
            raise _CliError(
                f"parameter {name!r} of {what} expects {_type_name(annotation)}, got {text!r}"
            ) from None
    return out
