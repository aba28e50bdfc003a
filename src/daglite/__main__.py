"""``python -m daglite``: the same as the ``daglite`` command."""

from __future__ import annotations

# The guard matters: worker processes (spawn, forkserver) import the parent's
# main module under another name, and must not run the command again.
if __name__ == "__main__":
    from daglite.cli import main

    raise SystemExit(main())
