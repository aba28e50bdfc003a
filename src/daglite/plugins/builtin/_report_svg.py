"""The two drawings of the run report, as inline SVG: the timeline and the DAG.

Both are plain strings built from a ``RunTimeline``; nothing here runs JavaScript
or reaches the network. Every bar and node carries ``data-*`` attributes (key,
task, worker, state, ...) that the page's script and the tests read.

Large runs stay small: above ``DETAIL_LIMIT`` attempts the timeline draws, per
worker and per time bucket, one bar per task with the number of attempts it
stands for; above ``DAG_NODE_LIMIT`` nodes the DAG is drawn per task.
"""

from __future__ import annotations

import math
import operator
import zlib
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from html import escape
from itertools import compress
from typing import TYPE_CHECKING, Any, Final, final

from daglite.plugins.builtin.timeline import AttemptColumns

if TYPE_CHECKING:
    from daglite.plugins.builtin.timeline import Attempt, RunTimeline

# Attempts drawn one bar each; above this, bars are aggregated per bucket. A
# bar costs ~300 bytes of HTML, so the detailed timeline stays under ~1 MB.
DETAIL_LIMIT: Final = 3000
# Time buckets of the aggregated timeline: one per ~4 px of the plot, fewer when
# there are many workers, so that workers x buckets stays near AGGREGATED_CELLS
# (an aggregated bar costs ~350 bytes: a few MB at most).
BUCKETS: Final = 250
MIN_BUCKETS: Final = 1
AGGREGATED_CELLS: Final = 6000
# Nodes drawn one box each; above this the DAG is drawn one box per task.
DAG_NODE_LIMIT: Final = 300
# Groups of attempts (per task, per worker) picked out by C-level passes, one
# per group; above this many, one Python loop is cheaper.
_FEW_GROUPS: Final = 8
# Where an attempt whose result came from a cache "ran" (``Attempt.cached``).
CACHE_WORKER: Final = "cache"

_LABEL_W: Final = 170
_PLOT_W: Final = 1000
_ROW_H: Final = 22
_BAR_H: Final = 16
_AXIS_H: Final = 26
_BOX_W: Final = 170
_BOX_H: Final = 42
_GAP_X: Final = 60
_GAP_Y: Final = 16


# A cell of the aggregated timeline: (worker, time bucket, task).
_Cell = tuple[str, int, str]


def colour(task: str) -> str:
    """A stable colour for a task name (the same in every report)."""
    digest = zlib.crc32(task.encode("utf-8"))
    hue, lightness = digest % 360, (52, 62, 72)[(digest >> 9) % 3]
    return f"hsl({hue},62%,{lightness}%)"


def seconds(value: float) -> str:
    """A duration for people: ``850 µs``, ``12.3 ms``, ``4.56 s``."""
    if value < 1e-3:
        return f"{value * 1e6:.3g} µs"
    if value < 1:
        return f"{value * 1e3:.3g} ms"
    return f"{value:.3g} s" if value < 100 else f"{value:.0f} s"


def _attr(text: object) -> str:
    return escape(str(text), quote=True)


# -- timeline -------------------------------------------------------------------------


def _worker_sort_key(worker: str) -> tuple[int, str, int]:
    """Caller first, then threads, processes and Dask workers in natural order; cache last."""
    head = worker.rstrip("0123456789")
    number = int(worker[len(head) :]) if len(head) < len(worker) else -1
    rank = 0 if worker == "caller" else 2 if worker == "cache" else 1
    return rank, head, number


def placed_columns(columns: AttemptColumns) -> AttemptColumns:
    """The attempts that ran somewhere known (a worker lost before reporting is not drawn)."""
    started, names = columns.started, columns.workers
    if not started or (min(started) > 0 and "" not in names):  # the common case: all
        return columns
    keep = [i for i, (t, w) in enumerate(zip(started, names)) if t > 0 and w]
    return AttemptColumns._make([column[i] for i in keep] for column in columns)


def grouped(keys: Sequence[str], values: Sequence[float]) -> dict[str, list[float]]:
    """``values`` by their ``keys``, each group in its original order.

    A run has few tasks and workers and many attempts: for up to
    ``_FEW_GROUPS`` distinct keys each group is picked out with C-level passes
    (``compress``, ~40 ns an attempt a group), else in one Python loop.
    """
    distinct = list(dict.fromkeys(keys))
    if len(distinct) == 1:
        return {distinct[0]: list(values)}
    if len(distinct) <= _FEW_GROUPS:
        return {k: list(compress(values, map(k.__eq__, keys))) for k in distinct}
    out: dict[str, list[float]] = {k: [] for k in distinct}
    for key, value in zip(keys, values):
        out[key].append(value)
    return out


def workers(names: Iterable[str]) -> list[str]:
    """The distinct worker names of ``names``, in display order."""
    return sorted(set(names), key=_worker_sort_key)


@final
@dataclass(slots=True)
class _Scale:
    origin: float
    span: float

    def x(self, t: float) -> float:
        return _LABEL_W + max(0.0, min(1.0, (t - self.origin) / self.span)) * _PLOT_W


def _scale(run: RunTimeline, placed: AttemptColumns) -> _Scale:
    origin, end = run.started, run.ended or run.started
    if placed.started:
        origin = min(origin, min(placed.started))
        end = max(end, max(map(operator.add, placed.started, placed.durations)))
    return _Scale(origin, max(end - origin, 1e-6))


def _state(a: Attempt) -> str:
    if a.cached:
        return "cached"
    if a.error is None:
        return "ok"
    return "retried" if a.retried else "failed"


def _detail_bar(a: Attempt, row: int, scale: _Scale) -> str:
    x = scale.x(a.started)
    state = _state(a)
    width = max(scale.x(a.started + a.duration) - x, 1.0 if state in ("ok", "cached") else 4.0)
    tip = f"{a.key} · {seconds(a.duration)} · {a.worker} · attempt {a.attempt}"
    if a.error:
        tip += f"\n{a.error}" + (" (retried)" if a.retried else "")
    return (
        f'<rect class="bar {state}" x="{x:.1f}" y="{_bar_y(row)}" width="{width:.1f}" '
        f'height="{_BAR_H}" fill="{colour(a.task)}" data-key="{_attr(a.key)}" '
        f'data-task="{_attr(a.task)}" data-worker="{_attr(a.worker)}" '
        f'data-start="{a.started - scale.origin:.6f}" data-duration="{a.duration:.6f}" '
        f'data-attempt="{a.attempt}" data-state="{state}"><title>{escape(tip)}</title></rect>'
    )


def _bar_y(row: int) -> int:
    return _AXIS_H + row * _ROW_H + (_ROW_H - _BAR_H) // 2


@final
@dataclass(slots=True)
class _Bucket:
    started: int = 0
    busy: float = 0.0
    failed: int = 0
    retried: int = 0


def bucket_count(worker_count: int) -> int:
    """How many time buckets an aggregated timeline with ``worker_count`` rows uses."""
    return max(MIN_BUCKETS, min(BUCKETS, AGGREGATED_CELLS // max(worker_count, 1)))


def _buckets(placed: AttemptColumns, scale: _Scale, count: int) -> dict[_Cell, list[Any]]:
    """Per (worker, bucket, task): attempts started there, busy seconds, failures, retries.

    One pass over the columns, ~0.5 µs an attempt: an attempt within one
    bucket (the common case) adds to one cell; a longer one spreads its busy
    time over the buckets it covers.
    """
    width, origin = scale.span / count, scale.origin
    out: dict[_Cell, list[Any]] = {}
    rows = zip(
        placed.workers,
        placed.tasks,
        placed.started,
        placed.durations,
        placed.errors,
        placed.retried,
    )
    last, get = count - 1, out.get
    for worker, task, started, duration, error, retried in rows:
        start = started - origin
        if start < 0.0:
            start = 0.0
        first = int(start / width)
        if first > last:
            first = last
        at = (worker, first, task)
        cell = get(at)
        if cell is None:
            cell = out[at] = [0, 0.0, 0, 0]
        cell[0] += 1
        if error is not None:
            cell[3 if retried else 2] += 1
        end = start + duration
        if end <= (first + 1) * width:
            cell[1] += end - start
        else:
            _spread(out, at, start, end, width, count)
    return out


def _spread(
    out: dict[_Cell, list[Any]], at: _Cell, start: float, end: float, width: float, count: int
) -> None:
    """Add the busy time of an attempt from ``start`` to ``end`` to each bucket it covers."""
    worker, b, task = at
    while b < count and b * width < end:
        cell = out.get((worker, b, task))
        if cell is None:
            cell = out[worker, b, task] = [0, 0.0, 0, 0]
        cell[1] += min(end, (b + 1) * width) - max(start, b * width)
        b += 1


def _aggregated_bars(
    placed: AttemptColumns, rows: dict[str, int], scale: _Scale, count: int
) -> str:
    width = scale.span / count
    per_cell: dict[tuple[str, int], list[tuple[str, list[Any]]]] = defaultdict(list)
    for (worker, b, task), bucket in sorted(_buckets(placed, scale, count).items()):
        per_cell[worker, b].append((task, bucket))
    parts = []
    for (worker, b), cells in per_cell.items():
        busy = sum(c[1] for _, c in cells)
        started = sum(c[0] for _, c in cells)
        opacity = 0.3 + 0.7 * min(1.0, busy / width)  # how busy the worker was
        x0, x1 = scale.x(scale.origin + b * width), scale.x(scale.origin + (b + 1) * width)
        y = float(_bar_y(rows[worker]) + _BAR_H)
        for task, (n, spent, failed, retried) in cells:
            share = n / started if started else spent / busy if busy else 1 / len(cells)
            h = _BAR_H * share
            y -= h
            state = "failed" if failed else "retried" if retried else "ok"
            tip = (
                f"{task} on {worker}, {b * width:.3f} to {(b + 1) * width:.3f} s: "
                f"{n} started, busy {seconds(spent)}, {failed} failed, "
                f"{retried} retried"
            )
            parts.append(
                f'<rect class="bar agg {state}" x="{x0:.1f}" y="{y:.1f}" '
                f'width="{max(x1 - x0, 1.0):.1f}" height="{h:.2f}" fill="{colour(task)}" '
                f'data-task="{_attr(task)}" data-worker="{_attr(worker)}" '
                f'data-count="{n}" data-failed="{failed}" data-retried="{retried}" '
                f'data-state="{state}" fill-opacity="{opacity:.2f}">'
                f"<title>{escape(tip)}</title></rect>"
            )
    return "".join(parts)


def _nice_step(span: float) -> float:
    raw = span / 8
    power = 10.0 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= raw)


def _axis(scale: _Scale, height: int) -> str:
    step = _nice_step(scale.span)
    parts = [f'<g class="axis"><text class="unit" x="{_LABEL_W - 8}" y="{_AXIS_H - 9}">s</text>']
    for i in range(int(scale.span / step) + 1):
        t = i * step
        x = scale.x(scale.origin + t)
        parts.append(
            f'<line x1="{x:.1f}" y1="{_AXIS_H - 6}" x2="{x:.1f}" y2="{height}"/>'
            f'<text x="{x:.1f}" y="{_AXIS_H - 9}">{t:.6g}</text>'
        )
    return "".join(parts) + "</g>"


def _lanes(
    attempts: Sequence[Attempt], names: Sequence[str], tolerance: float
) -> tuple[list[int], dict[str, tuple[int, int]]]:
    """Each attempt's row, overlapping attempts of one worker packed into lanes.

    A Dask worker runs several tasks at once: its row gets as many lanes as it
    ran attempts at the same time. Overlaps below ``tolerance`` (clock noise)
    do not count.

    Returns:
        The row of each attempt (in order), and per worker its first row and
        its number of lanes.
    """
    by_worker: dict[str, list[int]] = defaultdict(list)
    for i, a in enumerate(attempts):
        by_worker[a.worker].append(i)
    row_of = [0] * len(attempts)
    spans: dict[str, tuple[int, int]] = {}
    first = 0
    for worker in names:
        ends: list[float] = []
        for i in sorted(by_worker[worker], key=lambda i: attempts[i].started):
            a = attempts[i]
            lane = next((k for k, e in enumerate(ends) if e <= a.started + tolerance), len(ends))
            if lane == len(ends):
                ends.append(0.0)
            ends[lane] = a.started + a.duration
            row_of[i] = first + lane
        spans[worker] = (first, max(len(ends), 1))
        first += spans[worker][1]
    return row_of, spans


def _worker_rows(spans: dict[str, tuple[int, int]]) -> str:
    """A band and a label per worker (a band spans the worker's lanes)."""
    parts = []
    for n, (worker, (first, lanes)) in enumerate(spans.items()):
        y = _AXIS_H + first * _ROW_H
        parts.append(
            f'<rect class="row{" odd" if n % 2 else ""}" x="0" y="{y}" '
            f'width="{_LABEL_W + _PLOT_W}" height="{lanes * _ROW_H}"/>'
            f'<text class="worker" x="{_LABEL_W - 8}" y="{_bar_y(first) + _BAR_H - 4}" '
            f'data-worker="{_attr(worker)}" data-lanes="{lanes}">{escape(worker)}</text>'
        )
    return "".join(parts)


def timeline_svg(run: RunTimeline, placed: AttemptColumns) -> tuple[str, int]:
    """The timeline of ``placed`` (``placed_columns``) as SVG, and its time buckets.

    Up to ``DETAIL_LIMIT`` attempts, one bar each (0 buckets); above, aggregated.
    """
    names = workers(placed.workers)
    scale = _scale(run, placed)
    count = len(placed.keys)
    buckets = bucket_count(len(names)) if count > DETAIL_LIMIT else 0
    if buckets:
        spans = {w: (i, 1) for i, w in enumerate(names)}
        bars = _aggregated_bars(placed, {w: i for i, w in enumerate(names)}, scale, buckets)
    else:
        attempts = [a for a in run.attempts if a.started > 0 and a.worker]
        row_of, spans = _lanes(attempts, names, tolerance=scale.span / _PLOT_W / 2)
        bars = "".join(_detail_bar(a, row, scale) for a, row in zip(attempts, row_of))
    height = _AXIS_H + max(sum(n for _, n in spans.values()), 1) * _ROW_H + 4
    mode = "aggregated" if buckets else "detail"
    svg = (
        f'<svg id="timeline" xmlns="http://www.w3.org/2000/svg" width="{_LABEL_W + _PLOT_W + 20}" '
        f'height="{height}" data-mode="{mode}" data-buckets="{buckets}" '
        f'data-attempts="{count}" '
        f'data-span="{scale.span:.6f}" role="img" aria-label="timeline">'
        f'{_worker_rows(spans)}{_axis(scale, height)}<g class="bars">{bars}</g></svg>'
    )
    return svg, buckets


# -- DAG ------------------------------------------------------------------------------


@final
@dataclass(slots=True)
class DagBox:
    """One box of the DAG drawing: a node, or every node of one task when grouped.

    Attributes:
        ident: The node's key (or the task's name when grouped).
        title: The first line of the box.
        detail: The second line (state, element count, total time).
        state: ``ok``, ``failed``, ``skipped`` or ``not-run``.
        deps: ``ident`` of the boxes it depends on.
        tip: The hover text.
        layer: Its column (longest path from a source).
        extra: More ``data-*`` attributes of the box (name without ``data-``).
    """

    ident: str
    title: str
    detail: str
    state: str
    deps: list[str]
    tip: str
    layer: int = 0
    extra: dict[str, str] = field(default_factory=dict)


def assign_layers(boxes: Sequence[DagBox]) -> None:
    """Longest-path layers, for boxes given dependencies first (a cycle keeps layer 0).

    A box is then moved right, up to the column just before its first
    dependent, so inputs sit next to the nodes that use them.
    """
    layer: dict[str, int] = {}
    for box in boxes:
        layer[box.ident] = 1 + max((layer[d] for d in box.deps if d in layer), default=-1)
    users: dict[str, int] = {}
    for box in reversed(boxes):
        if box.ident in users:
            layer[box.ident] = max(layer[box.ident], users[box.ident] - 1)
        for d in box.deps:
            if d != box.ident:
                users[d] = min(users.get(d, layer[box.ident]), layer[box.ident])
    for box in boxes:
        box.layer = layer[box.ident]


def _positions(boxes: Sequence[DagBox]) -> dict[str, tuple[float, float]]:
    """Column by layer; rows ordered by the mean row of each box's dependencies."""
    columns: dict[int, list[DagBox]] = defaultdict(list)
    for box in boxes:
        columns[box.layer].append(box)
    row: dict[str, float] = {}
    pos: dict[str, tuple[float, float]] = {}
    for layer in sorted(columns):
        column = columns[layer]
        column.sort(key=lambda b: _mean([row[d] for d in b.deps if d in row]))
        for i, box in enumerate(column):
            row[box.ident] = i
            pos[box.ident] = (10 + layer * (_BOX_W + _GAP_X), 10 + i * (_BOX_H + _GAP_Y))
    return pos


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _edge(a: tuple[float, float], b: tuple[float, float]) -> str:
    x1, y1 = a[0] + _BOX_W, a[1] + _BOX_H / 2
    x2, y2 = b[0], b[1] + _BOX_H / 2
    mid = (x1 + x2) / 2
    curve = f"M{x1:.0f},{y1:.0f} C{mid:.0f},{y1:.0f} {mid:.0f},{y2:.0f} {x2:.0f},{y2:.0f}"
    return f'<path class="edge" d="{curve}"/>'


def _box(box: DagBox, at: tuple[float, float]) -> str:
    x, y = at
    extra = "".join(f' data-{k}="{_attr(v)}"' for k, v in box.extra.items())
    return (
        f'<g class="node {box.state}" data-key="{_attr(box.ident)}" data-state="{box.state}"'
        f"{extra}><title>{escape(box.tip)}</title>"
        f'<rect x="{x:.0f}" y="{y:.0f}" width="{_BOX_W}" height="{_BOX_H}" rx="6"/>'
        f'<text x="{x + 8:.0f}" y="{y + 17:.0f}" class="name">{escape(_clip(box.title))}</text>'
        f'<text x="{x + 8:.0f}" y="{y + 33:.0f}">{escape(_clip(box.detail))}</text></g>'
    )


def _clip(text: str, limit: int = 24) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def dag_svg(boxes: Sequence[DagBox]) -> str:
    """The DAG as SVG: boxes in longest-path columns, edges as curves with arrows."""
    assign_layers(boxes)
    pos = _positions(boxes)
    edges = "".join(
        _edge(pos[d], pos[b.ident]) for b in boxes for d in b.deps if d in pos and d != b.ident
    )
    width = max((x for x, _ in pos.values()), default=0) + _BOX_W + 20
    height = max((y for _, y in pos.values()), default=0) + _BOX_H + 20
    return (
        f'<svg id="dag" xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" '
        f'height="{height:.0f}" data-nodes="{len(boxes)}" role="img" aria-label="DAG">'
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" '
        'markerHeight="7" orient="auto"><path d="M0,0 L10,5 L0,10 z"/></marker></defs>'
        f'<g class="edges">{edges}</g>{"".join(_box(b, pos[b.ident]) for b in boxes)}</svg>'
    )
