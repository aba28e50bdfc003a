"""``python -m daglite``: the same as the ``daglite`` command."""

from __future__ import annotations

# The guard keeps the command from running when this module is imported rather
# than executed (e.g. by multiprocessing machinery outside daglite's own pools).
if __name__ == "__main__":
    from daglite.cli import main

    raise SystemExit(main())
