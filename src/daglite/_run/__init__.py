"""The caller side of one evaluation: its state, its messages and its loop.

Never imported by workers. ``state`` is the run's bookkeeping as plain code
(no threads, queues, backends or plugins); ``loop`` drives it.
"""

from daglite._run.loop import _Run
from daglite._run.unit import OnError

__all__ = ["OnError", "_Run"]
