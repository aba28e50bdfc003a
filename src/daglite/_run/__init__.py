"""The caller side of one evaluation: its state, its messages and its loop.

Never imported by workers. ``state`` is the run's bookkeeping as plain code
(no threads, queues, backends or plugins); ``loop`` drives it.
"""

from daglite._run.loop import OnError, _Run

__all__ = ["OnError", "_Run"]
