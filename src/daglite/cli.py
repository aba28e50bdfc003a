"""The ``daglite`` command: run or describe a DAG function, list backends.

::

    daglite run package.module:function [--backend NAME] [--workers N] [--progress]
                [--report FILE] [--trace FILE] [-p key=value ...]
                [--plugin package.module:Class ...] [--cache PATH] [--traceback]
    daglite describe package.module:function [-p key=value ...] [--dot FILE]
    daglite cache info PATH
    daglite cache clear PATH [--task NAME]
    daglite backends
    daglite --version

The target is a function that returns a ``TaskFuture`` (or a list, tuple or
dict of them), a ``Task`` (called with the parameters), or a future itself.
``-p`` values are converted with the function's type annotations. Errors print
one ``daglite: error: ...`` line on stderr; exit status 2 means the command
line was wrong, 1 that the DAG failed.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import os
import sys
import traceback
import types
from collections.abc import Callable, Sequence
from typing import Any, Final

from daglite._cli_params import _CliError, _convert_params, _parse_params

__all__ = ["main"]

_PROG: Final = "daglite"
_BUILTIN_BACKENDS: Final = ("inline", "threads", "processes", "dask")


# -- parser ---------------------------------------------------------------------------


def _version() -> str:
    import daglite

    return str(daglite.__version__)


def _add_target_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", help="the DAG as package.module:function")
    parser.add_argument(
        "-p",
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a parameter of the DAG function (repeatable); converted with its annotation",
    )
    parser.add_argument("--backend", help="backend name (default: $DAGLITE_BACKEND or inline)")
    parser.add_argument(
        "--traceback", action="store_true", help="show the full traceback on errors"
    )


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=_PROG, description="Run and inspect daglite DAGs from the command line."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = commands.add_parser("run", help="build a DAG, run it and print its result")
    _add_target_options(run)
    run.add_argument("--workers", type=int, metavar="N", help="worker count (max_workers=)")
    run.add_argument("--progress", action="store_true", help="show a progress bar on a terminal")
    run.add_argument(
        "--report", metavar="FILE", help="write an HTML report of the run to FILE (also on failure)"
    )
    run.add_argument(
        "--trace", metavar="FILE", help="write a Chrome trace of the run to FILE (also on failure)"
    )
    run.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="MODULE:CLASS",
        help="a plugin class to instantiate with no arguments (repeatable)",
    )
    describe = commands.add_parser("describe", help="print a DAG's nodes and edges, run nothing")
    _add_target_options(describe)
    describe.add_argument(
        "--dot", metavar="FILE", help="also write Graphviz DOT to FILE ('-': stdout)"
    )
    run.add_argument(
        "--cache",
        metavar="PATH",
        help="cache results in PATH (a directory or fsspec URL); reruns skip finished tasks",
    )
    commands.add_parser("backends", help="list the backend names and whether they can be used")
    _add_cache_commands(commands)
    return parser


def _add_cache_commands(commands: Any) -> None:
    cache = commands.add_parser("cache", help="show or clear a result cache")
    actions = cache.add_subparsers(dest="cache_command", metavar="ACTION", required=True)
    info = actions.add_parser("info", help="entries and size per task")
    info.add_argument("path", help="the cache directory or fsspec URL")
    clear = actions.add_parser("clear", help="delete the entries (of one task with --task)")
    clear.add_argument("path", help="the cache directory or fsspec URL")
    clear.add_argument("--task", metavar="NAME", help="only this task's entries")


# -- importing ------------------------------------------------------------------------


def _ensure_cwd_importable() -> None:
    """Let ``daglite run mod:dag`` import modules of the current directory, like ``python -m``."""
    cwd = os.getcwd()
    if "" not in sys.path and cwd not in sys.path:
        sys.path.insert(0, cwd)


def _split_target(spec: str, what: str) -> tuple[str, str]:
    module, sep, attr = spec.partition(":")
    if not sep or not module or not attr:
        raise _CliError(f"{what} must look like 'package.module:name', got {spec!r}")
    return module, attr


def _import_module(name: str) -> types.ModuleType:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if name == missing or name.startswith(missing + "."):
            raise _CliError(f"module {name!r} not found (is it on sys.path?)") from exc
        raise _CliError(f"importing {name!r} failed: {_one_line(exc)}", code=1) from exc
    except Exception as exc:
        raise _CliError(f"importing {name!r} failed: {_one_line(exc)}", code=1) from exc


def _load(spec: str, what: str) -> Any:
    """The object named by ``package.module:attr`` (``attr`` may be dotted)."""
    module_name, attr = _split_target(spec, what)
    obj: Any = _import_module(module_name)
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            names = [n for n in dir(obj) if not n.startswith("_")]
            close = difflib.get_close_matches(part, names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise _CliError(f"module {module_name!r} has no attribute {attr!r}{hint}") from None
    return obj


# -- parameters -----------------------------------------------------------------------


# -- building the DAG -----------------------------------------------------------------


def _holds_futures(value: Any) -> bool:
    from daglite.graph.builder import iter_futures

    return next(iter(iter_futures(value)), None) is not None


def _build_dag(target: Any, spec: str, raw: dict[str, str]) -> Any:
    """Call the target with converted parameters and return what ``evaluate`` takes."""
    from daglite.tasks import Task

    if isinstance(target, Task):
        what = f"task {target.name!r}"
        params = _convert_params(target.func, raw, set(target.fixed), what)
        try:
            return target(**params)
        except TypeError as exc:
            raise _CliError(_one_line(exc)) from exc
    if _holds_futures(target):
        if raw:
            raise _CliError(f"{spec!r} is already a future; it takes no parameters")
        return target
    if not callable(target):
        raise _CliError(f"{spec!r} is neither a task nor a function, got {type(target).__name__}")
    what = f"{getattr(target, '__name__', spec)!r}"
    params = _convert_params(target, raw, set(), what)
    try:
        dag = target(**params)
    except Exception as exc:
        raise _CliError(f"building the DAG with {spec!r} failed: {_one_line(exc)}", 1) from exc
    if isinstance(dag, Task):
        raise _CliError(f"{spec!r} returned the task {dag.name!r} itself; call it to get a future")
    if not _holds_futures(dag):
        raise _CliError(
            f"{spec!r} must return a TaskFuture (or a list, tuple or dict of them), "
            f"got {type(dag).__name__}"
        )
    return dag


def _backend(name: str | None, workers: int | None) -> Any:
    from daglite.backends import get_backend
    from daglite.exceptions import BackendError
    from daglite.settings import default_backend_name

    options = {} if workers is None else {"max_workers": workers}
    try:
        return get_backend(name or default_backend_name(), **options)
    except (BackendError, TypeError, ValueError) as exc:
        raise _CliError(_one_line(exc)) from exc


def _plugins(specs: Sequence[str]) -> list[object]:
    plugins = []
    for spec in specs:
        obj = _load(spec, "--plugin")
        if isinstance(obj, type):
            try:
                obj = obj()
            except Exception as exc:
                raise _CliError(f"plugin {spec!r} could not be created: {_one_line(exc)}") from exc
        plugins.append(obj)
    return plugins


def _report(path: str | None) -> list[object]:
    """The ``--report`` plugin (none without the option)."""
    if path is None:
        return []
    from daglite.plugins.builtin.report import report_plugin

    try:
        return [report_plugin(path, "--report")]
    except (TypeError, ValueError) as exc:
        raise _CliError(_one_line(exc)) from exc


def _trace(path: str | None) -> list[object]:
    """The ``--trace`` plugin (none without the option)."""
    if path is None:
        return []
    from daglite.plugins.builtin.trace import trace_plugin

    try:
        return [trace_plugin(path, "--trace")]
    except (TypeError, ValueError) as exc:
        raise _CliError(_one_line(exc)) from exc


# -- commands -------------------------------------------------------------------------


def _show(value: Any) -> str:
    return value if isinstance(value, str) else repr(value)


def _cmd_run(args: argparse.Namespace) -> int:
    from daglite import evaluate
    from daglite.exceptions import EvaluationError, TaskError

    _ensure_cwd_importable()
    target = _load(args.target, "the target")
    raw = _parse_params(args.param)
    plugins = _plugins(args.plugin) + _report(args.report) + _trace(args.trace)
    backend = _backend(args.backend, args.workers)
    dag = _build_dag(target, args.target, raw)
    try:
        result = evaluate(
            dag, backend=backend, plugins=plugins, progress=args.progress, cache=args.cache
        )
    except (TaskError, EvaluationError) as exc:
        raise _CliError(_one_line(exc), code=1) from exc
    except Exception as exc:
        raise _CliError(f"{type(exc).__name__}: {_one_line(exc)}", code=1) from exc
    print(_show(result))
    return 0


def _cmd_describe(args: argparse.Namespace) -> int:
    from daglite.describe import describe

    _ensure_cwd_importable()
    target = _load(args.target, "the target")
    dag = _build_dag(target, args.target, _parse_params(args.param))
    backend = _backend(args.backend, None) if args.backend else None
    try:
        description = describe(dag, backend=backend)
    except Exception as exc:
        raise _CliError(f"{type(exc).__name__}: {_one_line(exc)}", code=1) from exc
    if args.dot == "-":
        print(description.to_dot(), end="")
        return 0
    print(description.to_text())
    if args.dot:
        try:
            with open(args.dot, "w", encoding="utf-8") as f:
                f.write(description.to_dot())
        except OSError as exc:
            raise _CliError(f"cannot write {args.dot!r}: {exc.strerror or exc}", code=1) from exc
    return 0


def _cmd_cache(args: argparse.Namespace) -> int:
    from daglite.plugins.builtin.cache import cache_summary, clear_cache

    try:
        if args.cache_command == "clear":
            count = clear_cache(args.path, args.task)
            print(f"deleted {count} entr{'y' if count == 1 else 'ies'} from {args.path}")
            return 0
        summary = cache_summary(args.path)
    except (OSError, ImportError) as exc:
        raise _CliError(_one_line(exc), code=1) from exc
    print(_cache_table(args.path, summary))
    return 0


def _cache_table(path: str, summary: dict[str, tuple[int, int]]) -> str:
    """``daglite cache info``'s output: one line per task version, then the total."""
    entries = sum(n for n, _ in summary.values())
    size = sum(b for _, b in summary.values())
    lines = [f"{path}: {entries} entr{'y' if entries == 1 else 'ies'}, {_size(size)}"]
    width = max((len(f) for f in summary), default=0)
    for folder, (count, total) in sorted(summary.items()):
        task, _, code = folder.rpartition("-")
        lines.append(f"  {task:<{width - 17}}  code {code}  {count:>7}  {_size(total):>9}")
    return "\n".join(lines)


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return f"{n} B"  # pragma: no cover


def _backend_problem(name: str) -> str | None:
    """Why backend ``name`` cannot be used, or None when it can."""
    import importlib.util

    if name == "dask" and importlib.util.find_spec("distributed") is None:
        return "needs the 'distributed' package; install it with `pip install daglite[dask]`"
    if name in _BUILTIN_BACKENDS and importlib.util.find_spec(f"daglite.backends.{name}") is None:
        return "not part of this daglite installation"
    return None


def _cmd_backends(args: argparse.Namespace) -> int:
    from daglite.backends import available_backends, canonical_name
    from daglite.settings import default_backend_name

    try:
        default = canonical_name(default_backend_name())
    except Exception:
        default = ""
    names = available_backends()
    width = max(len(n) for n in names)
    for name in names:
        problem = _backend_problem(name)
        status = "available" if problem is None else f"unavailable: {problem}"
        mark = " (default)" if name == default else ""
        print(f"{name.ljust(width)}  {status}{mark}")
    return 0


_COMMANDS: Final[dict[str, Callable[[argparse.Namespace], int]]] = {
    "run": _cmd_run,
    "describe": _cmd_describe,
    "backends": _cmd_backends,
    "cache": _cmd_cache,
}


# -- entry point ----------------------------------------------------------------------


def _one_line(exc: BaseException | str) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _fail(message: str, code: int, exc: BaseException | None, show_traceback: bool) -> int:
    if show_traceback and exc is not None:
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    print(f"{_PROG}: error: {_one_line(message)}", file=sys.stderr)
    return code


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace | int:
    try:
        return parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``daglite`` command with ``argv`` (default: ``sys.argv[1:]``).

    Returns:
        The exit status: 0 on success, 1 when the DAG failed, 2 for a usage error.
    """
    parser = _build_parser()
    args = _parse(parser, argv)
    if isinstance(args, int):
        return args
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    show_traceback = bool(getattr(args, "traceback", False))
    try:
        return _COMMANDS[args.command](args)
    except _CliError as exc:
        cause = exc.__cause__ if exc.__cause__ is not None else exc
        return _fail(str(exc), exc.code, cause, show_traceback)
    except KeyboardInterrupt as exc:
        return _fail("interrupted", 130, exc, show_traceback)
