"""The run report's page: figures from a ``RunTimeline``, tables, and the HTML around them.

``render_report(run, peak_memory)`` returns one self-contained HTML document:
inline CSS, inline SVG (``_report_svg``) and a small inline script that adds
highlighting and table sorting. A Content-Security-Policy forbids every request,
so the page provably works offline.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from html import escape
from itertools import compress
from typing import TYPE_CHECKING, Final, final

from daglite.plugins.builtin._report_svg import (
    CACHE_WORKER,
    DAG_NODE_LIMIT,
    DagBox,
    colour,
    dag_svg,
    grouped,
    placed_columns,
    seconds,
    timeline_svg,
    workers,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    from daglite.describe import GraphDescription, NodeDescription
    from daglite.plugins.builtin.timeline import AttemptColumns, RunTimeline

__all__ = ["TaskStats", "node_states", "render_report", "task_stats"]

_STATE_RANK: Final = {"failed": 3, "skipped": 2, "not-run": 1, "ok": 0}


# -- figures --------------------------------------------------------------------------


@final
@dataclass(slots=True)
class TaskStats:
    """What one task's attempts add up to (cache hits are not calls).

    ``cached_time`` is the time of its cache hits (0.0 from the engine), so
    ``total + cached_time`` is all the time its nodes took.
    """

    calls: int = 0
    total: float = 0.0
    max: float = 0.0
    failures: int = 0
    retries: int = 0
    cache_hits: int = 0
    cached_time: float = 0.0

    @property
    def mean(self) -> float:
        """Mean duration of a call (0.0 without calls)."""
        return self.total / self.calls if self.calls else 0.0


def task_stats(columns: AttemptColumns) -> dict[str, TaskStats]:
    """Per task name, its figures; tasks ordered by total time, largest first.

    Calls, total and max come from each task's run times (``grouped``: C-level
    passes for a few tasks); failures and retries from the failed attempts
    alone, cache hits from the attempts of the ``cache`` worker alone.
    """
    stats: dict[str, TaskStats] = {task: TaskStats() for task in dict.fromkeys(columns.tasks)}
    tasks, durations = _calls(columns, stats)
    for task, times in grouped(tasks, durations).items():
        s = stats[task]
        s.calls, s.total, s.max = len(times), sum(times), max(times)
    errors = columns.errors
    if errors.count(None) != len(errors):
        rows = zip(columns.tasks, columns.workers, errors, columns.retried)
        for task, worker, error, retried in rows:
            if error is not None and worker != CACHE_WORKER:
                if retried:
                    stats[task].retries += 1
                else:
                    stats[task].failures += 1
    return dict(sorted(stats.items(), key=lambda kv: -kv[1].total))


def _calls(
    columns: AttemptColumns, stats: dict[str, TaskStats]
) -> tuple[Sequence[str], Sequence[float]]:
    """The tasks and run times of the attempts that ran; cache hits are counted in ``stats``."""
    tasks, workers_, durations = columns.tasks, columns.workers, columns.durations
    if CACHE_WORKER not in workers_:
        return tasks, durations
    for task, worker, duration in zip(tasks, workers_, durations):
        if worker == CACHE_WORKER:
            stats[task].cache_hits += 1
            stats[task].cached_time += duration
    ran = [w != CACHE_WORKER for w in workers_]
    return list(compress(tasks, ran)), list(compress(durations, ran))


@final
@dataclass(slots=True)
class _NodeRun:
    ok: int = 0
    failed: int = 0
    total: float = 0.0


def _node_runs(columns: AttemptColumns, graph: GraphDescription) -> dict[str, _NodeRun]:
    """Per node key: its attempts that succeeded, failed for good, and their time."""
    out: dict[str, _NodeRun] = {n.key: _NodeRun() for n in graph.nodes}
    rows = zip(columns.keys, columns.durations, columns.errors, columns.retried)
    for key, duration, error, retried in rows:
        node = out.get(key)
        if node is None:  # an element: its node is the key before ``[``
            node = out.get(key.rsplit("[", 1)[0])
            if node is None:
                continue
        node.total += duration
        if error is None:
            node.ok += 1
        elif not retried:
            node.failed += 1
    return out


def node_states(
    run: RunTimeline, graph: GraphDescription, runs: dict[str, _NodeRun] | None = None
) -> dict[str, str]:
    """Each node's state: ``ok``, ``failed``, ``skipped`` (after a failure) or ``not-run``."""
    if runs is None:
        runs = _node_runs(run.columns(), graph)
    states: dict[str, str] = {}
    for node in graph.nodes:
        r = runs[node.key]
        complete = node.width is None or r.ok >= node.width
        if run.error is None or (r.failed == 0 and r.ok > 0 and complete):
            states[node.key] = "ok"
        elif r.failed:
            states[node.key] = "failed"
        elif any(states.get(d) in ("failed", "skipped") for d in node.deps):
            states[node.key] = "skipped"
        else:
            states[node.key] = "not-run"
    return states


def _node_box(node: NodeDescription, state: str, r: _NodeRun) -> DagBox:
    width = node.width if node.width is not None else r.ok + r.failed
    title = node.key if node.kind == "task" else f"{node.key} \u00d7{width}"
    ran = f"{r.ok + r.failed}/{node.width} ran · " if state == "not-run" and r.ok else ""
    tip = (
        f"{node.key}: task {node.task} on {node.backend}, {state}\n"
        f"{r.ok} ok, {r.failed} failed, total {seconds(r.total)}"
        + (f"\n{node.description}" if node.description else "")
    )
    detail = f"{ran}{state} · {seconds(r.total)}"
    extra = {"task": node.task, "kind": node.kind, "total": f"{r.total:.6f}"}
    return DagBox(node.key, title, detail, state, list(node.deps), tip, extra=extra)


def _worst_states(run: RunTimeline, graph: GraphDescription) -> dict[str, str]:
    """Per task, the worst state of its nodes (all ``ok`` when the run succeeded)."""
    tasks = graph._columns().tasks
    if run.error is None:
        return dict.fromkeys(tasks, "ok")
    worst: dict[str, str] = {}
    for task, state in zip(tasks, node_states(run, graph).values()):
        if _STATE_RANK[state] >= _STATE_RANK[worst.get(task, "ok")]:
            worst[task] = state
    return worst


def _task_boxes(
    run: RunTimeline, graph: GraphDescription, stats: dict[str, TaskStats]
) -> list[DagBox]:
    """One box per task, for DAGs too large to draw node by node.

    Read from the description's columns: no node object is made unless the
    run failed (the states of its nodes are needed then).
    """
    columns = graph._columns()
    tasks = columns.tasks
    counts = Counter(tasks)
    deps: dict[str, dict[str, None]] = {task: {} for task in counts}
    for task, node_deps in zip(tasks, columns.deps):
        if node_deps:
            deps[task].update(dict.fromkeys(map(tasks.__getitem__, node_deps)))
    worst = _worst_states(run, graph)
    boxes = []
    for task, count in counts.items():
        s = stats.get(task, _NO_STATS)
        total = s.total + s.cached_time
        box = DagBox(
            task, task, f"{count} nodes · {seconds(total)}", worst[task], list(deps[task]), ""
        )
        box.tip = f"task {task}: {count} nodes, worst state {box.state}"
        box.extra = {"task": task, "kind": "group"}
        boxes.append(box)
    return boxes


_NO_STATS: Final = TaskStats()


def _dag_section(run: RunTimeline, stats: dict[str, TaskStats]) -> str:
    graph = run.graph
    if graph is None:
        return "<p>The DAG was not described for this run.</p>"
    count = graph.node_count
    if count > DAG_NODE_LIMIT:
        note = (
            f'<p class="note" id="dag-grouped">{count} nodes: drawn one box per '
            "task (its worst state, its node count and total time).</p>"
        )
        return note + dag_svg(_task_boxes(run, graph, stats))
    runs = _node_runs(run.columns(), graph)
    states = node_states(run, graph, runs)
    boxes = [_node_box(n, states[n.key], runs[n.key]) for n in graph.nodes]
    return dag_svg(boxes)


# -- tables ---------------------------------------------------------------------------


def _cell(value: float, text: str) -> str:
    return f'<td data-v="{value:.9g}">{escape(text)}</td>'


def _task_table(stats: dict[str, TaskStats]) -> str:
    head = "".join(
        f"<th>{h}</th>"
        for h in ("task", "calls", "total", "mean", "max", "failures", "retries", "cache hits")
    )
    rows = []
    for task, s in stats.items():
        rows.append(
            f'<tr data-task="{escape(task)}" data-calls="{s.calls}" data-total="{s.total:.6f}" '
            f'data-mean="{s.mean:.6f}" data-max="{s.max:.6f}" data-failures="{s.failures}" '
            f'data-retries="{s.retries}" data-cache-hits="{s.cache_hits}">'
            f'<td data-v="{escape(task)}"><span class="swatch" style="background:{colour(task)}">'
            f"</span>{escape(task)}</td>"
            + _cell(s.calls, str(s.calls))
            + _cell(s.total, seconds(s.total))
            + _cell(s.mean, seconds(s.mean))
            + _cell(s.max, seconds(s.max))
            + _cell(s.failures, str(s.failures))
            + _cell(s.retries, str(s.retries))
            + _cell(s.cache_hits, str(s.cache_hits))
            + "</tr>"
        )
    return (
        f'<table id="tasks" class="sortable"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _worker_table(placed: AttemptColumns, wall: float) -> str:
    times = grouped(placed.workers, placed.durations)
    times.pop(CACHE_WORKER, None)
    busy = {w: sum(t) for w, t in times.items()}
    count = {w: len(t) for w, t in times.items()}
    rows = []
    for w in workers(count):
        fraction = busy[w] / wall if wall > 0 else 0.0
        rows.append(
            f'<tr data-worker="{escape(w)}" data-attempts="{count[w]}" '
            f'data-busy="{busy[w]:.6f}" data-busy-fraction="{fraction:.6f}">'
            f'<td data-v="{escape(w)}">{escape(w)}</td>'
            + _cell(count[w], str(count[w]))
            + _cell(busy[w], seconds(busy[w]))
            + _cell(fraction, f"{fraction:.1%}")
            + "</tr>"
        )
    head = "<th>worker</th><th>attempts</th><th>busy</th><th>busy fraction</th>"
    return (
        f'<table id="workers" class="sortable"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _memory(peak: int | None) -> str:
    if peak is None:
        return '<dd id="peak-memory" data-bytes="">not available</dd>'
    return f'<dd id="peak-memory" data-bytes="{peak}">{peak / 2**20:.1f} MiB</dd>'


def _totals(run: RunTimeline, placed: AttemptColumns, peak: int | None) -> str:
    wall = run.wall_time
    status = "succeeded" if run.error is None else f"failed: {run.error}"
    nodes = run.graph.node_count if run.graph is not None else 0
    attempts = run.attempt_count
    return (
        '<dl id="totals">'
        f'<dt>status</dt><dd id="status" class="{"ok" if run.error is None else "failed"}">'
        f"{escape(status)}</dd>"
        f'<dt>wall time</dt><dd id="wall" data-seconds="{wall:.6f}">{seconds(wall)}</dd>'
        f'<dt>attempts</dt><dd id="attempts" data-count="{attempts}">{attempts}</dd>'
        f"<dt>DAG nodes</dt><dd>{nodes} (mapped nodes count once)</dd>"
        f"<dt>peak memory (caller and child processes, RSS)</dt>{_memory(peak)}"
        f"</dl>{_worker_table(placed, wall)}"
    )


# -- page -----------------------------------------------------------------------------


def _legend(stats: dict[str, TaskStats]) -> str:
    tasks = "".join(
        f'<span class="legend-task" data-task="{escape(t)}"><span class="swatch" '
        f'style="background:{colour(t)}"></span>{escape(t)}</span>'
        for t in stats
    )
    marks = (
        '<span><span class="swatch mark failed"></span>failed</span>'
        '<span><span class="swatch mark retried"></span>failed, retried</span>'
        '<span><span class="swatch mark cached"></span>from cache</span>'
    )
    return f'<div id="legend">{tasks}{marks}</div>'


def _timeline_section(run: RunTimeline, placed: AttemptColumns, stats: dict[str, TaskStats]) -> str:
    svg, buckets = timeline_svg(run, placed)
    note = ""
    if buckets:
        note = (
            f'<p class="note" id="aggregated">{len(placed.keys)} attempts: aggregated. '
            f"Each worker's row is cut into {buckets} time buckets; a bucket stacks one bar per "
            "task, as tall as its share of the attempts that started there and as opaque as "
            "the worker was busy; hover a bar for its counts.</p>"
        )
    return note + _legend(stats) + f'<div class="scroll">{svg}</div>'


def _backends(run: RunTimeline) -> str:
    return ", ".join(sorted(set(run.graph._columns().backends) if run.graph else ()))


def render_report(run: RunTimeline, peak_memory: int | None) -> str:
    """The HTML report of ``run`` (``peak_memory`` in bytes, or None if unknown).

    The attempts are read as columns (``RunTimeline.columns``), each figure
    in one pass over them; the DAG from its description's columns.
    """
    columns = run.columns()
    stats = task_stats(columns)
    placed = placed_columns(columns)
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(run.started))
    body = (
        f'<h1>daglite run report</h1><p class="sub">run {run.root_id} · started {when} · '
        f"{seconds(run.wall_time)} · {escape(_backends(run) or 'no nodes')}</p>"
        f"<h2>Totals</h2>{_totals(run, placed, peak_memory)}"
        f"<h2>Timeline</h2>{_timeline_section(run, placed, stats)}"
        f'<h2>DAG</h2><div class="scroll dag">{_dag_section(run, stats)}</div>'
        f"<h2>Tasks</h2>{_task_table(stats)}"
    )
    return _PAGE_HEAD + body + "<script>" + _SCRIPT + "</script></body></html>\n"


_CSS: Final = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;background:#fff}
h1{font-size:22px;margin:0}h2{font-size:17px;margin:26px 0 8px}
.sub,.note{color:#555}.note{background:#fff8dc;padding:6px 10px;border-radius:4px}
.scroll{overflow:auto;max-width:100%;border:1px solid #ddd;border-radius:4px}
.dag{max-height:640px}
table{border-collapse:collapse;margin:8px 0}
th,td{padding:3px 10px;border-bottom:1px solid #eee;text-align:right}
th{cursor:pointer;background:#f5f5f5;user-select:none}th:first-child,td:first-child{text-align:left}
dl{display:grid;grid-template-columns:max-content auto;gap:2px 16px;margin:0}dt{color:#555}
dd{margin:0}dd.failed{color:#b00}
.swatch{display:inline-block;width:12px;height:12px;border-radius:2px;margin-right:5px;
vertical-align:-1px}
#legend{display:flex;flex-wrap:wrap;gap:4px 16px;margin:6px 0}.legend-task{cursor:default}
.mark{background:#ddd}.mark.failed{outline:2px solid #d00}
.mark.retried{outline:2px dashed #d00}.mark.cached{outline:1px dotted #666;opacity:.5}
svg text{font:12px system-ui,sans-serif;fill:#333}
.row{fill:#fff}.row.odd{fill:#f7f7f7}
.axis line{stroke:#e4e4e4}.axis text{text-anchor:middle;fill:#777}
text.worker,.axis text.unit{text-anchor:end}
.bar.failed{stroke:#d00;stroke-width:2}
.bar.retried{stroke:#d00;stroke-width:1.5;stroke-dasharray:3 2}
.bar.cached{opacity:.45;stroke:#666;stroke-dasharray:1 1}
.dim{opacity:.12}
.edge{fill:none;stroke:#999;marker-end:url(#arrow)}marker path{fill:#999}
.node rect{stroke-width:1.5}.node text.name{font-weight:600}
.node.ok rect{fill:#e3f3e3;stroke:#3a8a3a}.node.failed rect{fill:#fbdede;stroke:#c00}
.node.skipped rect{fill:#f0f0f0;stroke:#999;stroke-dasharray:4 3}
.node.not-run rect{fill:#fff;stroke:#bbb;stroke-dasharray:2 3}
"""

_PAGE_HEAD: Final = (
    '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
    '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
    "style-src 'unsafe-inline'; script-src 'unsafe-inline'\">"
    '<meta name="viewport" content="width=device-width,initial-scale=1">'
    f"<title>daglite run report</title><style>{_CSS}</style></head>"
    '<body data-rendered="no">'
)

# The page's only script: hover a task (legend, table) to highlight its bars and
# nodes, click a column header to sort, then mark the page rendered with the
# number of bars drawn (the browser test reads these attributes).
_SCRIPT: Final = """
(function () {
  "use strict";
  var body = document.body;
  var marked = document.querySelectorAll("#timeline .bar, #dag .node");
  function highlight(task) {
    marked.forEach(function (el) {
      var other = task !== null && el.getAttribute("data-task") !== task;
      el.classList.toggle("dim", other);
    });
  }
  document.querySelectorAll(".legend-task, #tasks tbody tr").forEach(function (el) {
    el.addEventListener("mouseenter", function () { highlight(el.getAttribute("data-task")); });
    el.addEventListener("mouseleave", function () { highlight(null); });
  });
  function value(row, col) {
    var v = row.cells[col].getAttribute("data-v");
    var n = Number(v);
    return v !== "" && !isNaN(n) ? n : v;
  }
  document.querySelectorAll("table.sortable").forEach(function (table) {
    table.querySelectorAll("th").forEach(function (th, col) {
      th.addEventListener("click", function () {
        var tbody = table.tBodies[0];
        var rows = Array.prototype.slice.call(tbody.rows);
        var down = th.getAttribute("data-sort") !== "down";
        rows.sort(function (a, b) {
          var x = value(a, col), y = value(b, col);
          return (x < y ? -1 : x > y ? 1 : 0) * (down ? -1 : 1);
        });
        rows.forEach(function (r) { tbody.appendChild(r); });
        th.setAttribute("data-sort", down ? "down" : "up");
      });
    });
  });
  var drawn = 0;
  var bars = document.querySelectorAll("#timeline .bar");
  bars.forEach(function (b) { drawn += Number(b.getAttribute("data-count") || 1); });
  body.setAttribute("data-bars", String(bars.length));
  body.setAttribute("data-attempts-drawn", String(drawn));
  body.setAttribute("data-nodes", String(document.querySelectorAll("#dag .node").length));
  body.setAttribute("data-rendered", "ok");
})();
"""
