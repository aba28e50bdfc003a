"""Run one benchmark case in this (fresh) interpreter and print its outcome as JSON.

Usage: ``python benchmarks/_case.py WORKLOAD SYSTEM MODE SIZE PARAM``

The last line of stdout is ``RESULT {json}`` with ``measured``, ``startup``,
``verified``, ``result``, ``expected``, ``extra``, or ``skipped``/``error``.
"""

from __future__ import annotations

import json
import os
import sys
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import workloads  # noqa: E402


def _jsonable(value: object) -> object:
    try:
        json.dumps(value)
        return value
    except TypeError:
        return repr(value)


def main(argv: list[str]) -> int:
    workload, system, mode, size_s, param_s = argv
    size, param = int(size_s), int(param_s)
    out: dict[str, object] = {"workload": workload, "system": system, "mode": mode}
    fn = workloads.CASES[(workload, system, mode)]
    try:
        timing = fn(size, param)
    except workloads.Skip as exc:
        out["skipped"] = str(exc)
    except BaseException as exc:
        traceback.print_exc()
        out["error"] = f"{type(exc).__name__}: {exc}"
    else:
        want = workloads.expected(workload, size, param)
        got = _jsonable(timing.result)
        out.update(
            measured=timing.measured,
            startup=timing.startup,
            result=got,
            expected=want,
            verified=got == want,
            extra=timing.extra,
        )
    sys.stdout.write("RESULT " + json.dumps(out) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
