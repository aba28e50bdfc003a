"""A small ETL pipeline: generate sales records, clean them, aggregate them.

The dataset is generated deterministically (no network, no files to ship): the
first task plans the shards, each shard is "extracted" as CSV text, parsed and
cleaned (bad rows are rejected and counted), aggregated per region and
product, and the partial aggregates are merged into one report.

Tasks report an event per shard (``get_reporter().report("rows", ...)``) and
the ``EtlReport`` plugin defined below collects them in the caller, together
with each task's run time, on every backend. Run it with::

    python examples/etl.py --rows 100000 --backend processes

or with the CLI (the plugin is optional)::

    daglite run examples.etl:pipeline --backend processes --progress -p rows=100000 \\
        --plugin examples.etl:EtlReport
"""

from __future__ import annotations

import argparse
import csv
import io
import random
import sys
from collections import defaultdict
from itertools import pairwise
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``examples`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from daglite import TaskFuture, evaluate, task
from daglite.plugins.hooks import hook_impl
from daglite.plugins.reporters import get_reporter

REGIONS = ("north", "south", "east", "west")
PRODUCTS = ("apples", "bread", "coffee", "dates", "eggs", "flour")
PRICES = {"apples": 0.5, "bread": 2.25, "coffee": 7.0, "dates": 4.5, "eggs": 0.3, "flour": 1.2}
FIELDS = ("order_id", "day", "region", "product", "quantity", "unit_price")
# About one row in REJECT_EVERY is corrupted on purpose, so cleaning has work to do.
REJECT_EVERY = 50


@task
def plan_shards(rows: int, shards: int, seed: int) -> list[dict[str, int]]:
    """Split ``rows`` records into ``shards`` pieces, each with its own seed."""
    if rows < 0 or shards < 1:
        raise ValueError(f"need rows >= 0 and shards >= 1, got {rows=} {shards=}")
    bounds = [rows * i // shards for i in range(shards + 1)]
    return [
        {"shard": i, "first": lo, "count": hi - lo, "seed": seed * 1_000_003 + i}
        for i, (lo, hi) in enumerate(pairwise(bounds))
    ]


def _row(rng: random.Random, order_id: int) -> list[str]:
    product = rng.choice(PRODUCTS)
    quantity = str(rng.randint(1, 20))
    price = f"{PRICES[product] * rng.uniform(0.9, 1.1):.2f}"
    if rng.randrange(REJECT_EVERY) == 0:  # corrupt one field
        quantity, price = rng.choice([("", price), ("-3", price), (quantity, "n/a")])
    return [str(order_id), str(rng.randint(1, 365)), rng.choice(REGIONS), product, quantity, price]


@task
def extract(shard: dict[str, int]) -> str:
    """Produce one shard of raw CSV text (stands in for reading a file)."""
    rng = random.Random(shard["seed"])
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(FIELDS)
    for order_id in range(shard["first"], shard["first"] + shard["count"]):
        writer.writerow(_row(rng, order_id))
    return out.getvalue()


def _clean(record: dict[str, str]) -> dict[str, Any] | None:
    try:
        quantity, price = int(record["quantity"]), float(record["unit_price"])
    except ValueError:
        return None
    if quantity <= 0 or price <= 0:
        return None
    return {"region": record["region"], "product": record["product"], "revenue": quantity * price}


@task
def transform(raw: str) -> dict[str, Any]:
    """Parse and clean one shard and aggregate it; report how many rows were kept."""
    good = rejected = 0
    revenue: dict[str, float] = defaultdict(float)
    units: dict[str, int] = defaultdict(int)
    for record in csv.DictReader(io.StringIO(raw)):
        row = _clean(record)
        if row is None:
            rejected += 1
            continue
        good += 1
        revenue[f"{row['region']}/{row['product']}"] += row["revenue"]
        units[row["product"]] += 1
    get_reporter().report("rows", {"good": good, "rejected": rejected})
    return {"good": good, "rejected": rejected, "revenue": dict(revenue), "orders": dict(units)}


@task
def load(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Merge the shard aggregates into the final report."""
    by_region: dict[str, float] = defaultdict(float)
    by_product: dict[str, float] = defaultdict(float)
    orders: dict[str, int] = defaultdict(int)
    for part in parts:
        for key, value in part["revenue"].items():
            region, product = key.split("/")
            by_region[region] += value
            by_product[product] += value
        for product, count in part["orders"].items():
            orders[product] += count
    return {
        "rows": sum(p["good"] + p["rejected"] for p in parts),
        "rejected": sum(p["rejected"] for p in parts),
        "revenue": round(sum(by_region.values()), 2),
        "revenue_by_region": {k: round(by_region[k], 2) for k in sorted(by_region)},
        "top_product": max(by_product, key=by_product.__getitem__) if by_product else None,
        "orders_by_product": dict(sorted(orders.items())),
    }


def pipeline(rows: int = 10_000, shards: int = 8, seed: int = 42) -> TaskFuture[dict[str, Any]]:
    """The DAG: plan -> extract each shard -> transform each shard -> load."""
    return plan_shards(rows=rows, shards=shards, seed=seed).map(extract).map(transform).join(load)


def run_directly(rows: int = 10_000, shards: int = 8, seed: int = 42) -> dict[str, Any]:
    """The same report computed without daglite, one shard after another (for checking)."""
    plans = plan_shards.func(rows, shards, seed)
    # Outside a task get_reporter() discards events, so the task functions run as is.
    return load.func([transform.func(extract.func(plan)) for plan in plans])


class EtlReport:
    """Collects per-shard row counts (events from tasks) and per-task run times.

    State stays in the caller's process on every backend, so after ``evaluate``
    returns, ``report.good``, ``report.rejected`` and ``report.seconds`` are filled.
    """

    def __init__(self, verbose: bool = True) -> None:
        self.verbose = verbose
        self.good = 0
        self.rejected = 0
        self.shards_seen = 0
        self.seconds: dict[str, float] = defaultdict(float)

    def register_event_handlers(self, registry: Any) -> None:
        registry.on("rows", self.on_rows)

    def on_rows(self, event: dict[str, Any]) -> None:
        self.shards_seen += 1
        self.good += event["good"]
        self.rejected += event["rejected"]

    @hook_impl
    def after_node_execute(self, metadata: Any, duration: float) -> None:
        self.seconds[metadata.name] += duration

    @hook_impl
    def after_graph_execute(self, duration: float) -> None:
        if self.verbose:
            print(self.summary(duration), file=sys.stderr)

    def summary(self, duration: float | None = None) -> str:
        """A few lines: rows kept and rejected, and where the time went."""
        lines = [
            f"etl: {self.shards_seen} shards, {self.good} rows kept, {self.rejected} rejected",
        ]
        for name, seconds in sorted(self.seconds.items(), key=lambda kv: -kv[1]):
            lines.append(f"  {name:<12} {seconds:8.3f}s of task time")
        if duration is not None:
            lines.append(f"  wall time    {duration:8.3f}s")
        return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--backend", default="processes")
    options = parser.parse_args()
    report = EtlReport()
    result = evaluate(
        pipeline(options.rows, options.shards),
        backend=options.backend,
        plugins=[report],
        progress=True,
    )
    for key, value in result.items():
        print(f"{key}: {value}")
