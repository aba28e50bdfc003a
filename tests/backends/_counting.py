"""A processes backend that records how many calls each job it is handed carries."""

from __future__ import annotations

from daglite.backends import ProcessBackend


class CountingProcesses(ProcessBackend):
    """Two worker processes; ``jobs`` lists each submitted job's number of calls."""

    def __init__(self) -> None:
        super().__init__(max_workers=2)
        self.jobs: list[int] = []

    def submit(self, fn, /, *args, **kwargs):
        self.jobs.append(len(fn.calls))
        return super().submit(fn, *args, **kwargs)
