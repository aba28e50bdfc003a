"""What travels to a worker and back.

Everything here may run in a worker process: the records of calls and
outcomes and their pickling, running a call (with its timeout), and the
channel home (events, early outcomes). Nothing here imports the caller-side
engine (``daglite._run``).
"""
