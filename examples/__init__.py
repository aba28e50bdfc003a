"""Example pipelines for daglite (importable from the repository root).

* ``examples.primes``: CPU-bound fan-out (counting primes in chunks).
* ``examples.etl``: generate, clean and aggregate a sales dataset, with a plugin
  and events reported from tasks.

Run one with the CLI, e.g. ``daglite run examples.etl:pipeline --backend processes
--progress -p rows=100000``, or run both with ``python examples/run_all.py``.
"""
