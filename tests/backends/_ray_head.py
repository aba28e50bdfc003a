"""A Ray head node in a process of its own (``ray start --head --block``), for tests.

Started on free ports in a private temp dir, so xdist workers and other users of
the machine each have their own. Stopped by ending the processes it started, by
pid: ``ray stop`` would end every Ray process of the user on the machine.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psutil

# Generous: the head starts in seconds, slower on a loaded 2-core machine.
START_TIMEOUT = 90.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def connect_env() -> dict[str, str]:
    """Token authentication with a token of our own (not ``~/.ray/auth_token``).

    A driver needs both variables to connect by address, and Ray reads them
    when it is imported: set them in the test process before that.
    """
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": uuid.uuid4().hex * 2}


class RayHead:
    """One head node: ``address`` to connect to, ``stop()`` to end it."""

    def __init__(self, connect_env: dict[str, str], num_cpus: int = 2) -> None:
        ray_cli = Path(sys.executable).with_name("ray")
        self.temp_dir = tempfile.mkdtemp(prefix="dgr")  # short: socket paths have a limit
        port = _free_port()
        self.address = f"127.0.0.1:{port}"
        env = dict(os.environ)
        # Workers import what the tests import (test modules by reference).
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        env["RAY_USAGE_STATS_ENABLED"] = "0"
        env.update(connect_env)
        args = [
            str(ray_cli),
            "start",
            "--head",
            "--block",
            f"--port={port}",
            "--node-ip-address=127.0.0.1",
            f"--num-cpus={num_cpus}",
            "--include-dashboard=false",
            f"--dashboard-agent-listen-port={_free_port()}",
            f"--dashboard-agent-grpc-port={_free_port()}",
            f"--runtime-env-agent-port={_free_port()}",
            f"--metrics-export-port={_free_port()}",
            f"--temp-dir={self.temp_dir}",
            "--disable-usage-stats",
        ]
        self.log = open(Path(self.temp_dir) / "head.log", "wb")  # noqa: SIM115
        self.process = subprocess.Popen(args, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self._wait_ready()

    def _wait_ready(self) -> None:
        """Poll (bounded) until the GCS answers: ``ray start --block`` never returns."""
        deadline = time.monotonic() + START_TIMEOUT
        host, port = self.address.split(":")
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = self._log_tail()
                self.stop()
                raise RuntimeError(f"ray start exited: {tail}")
            raylet = any(
                "raylet" in (p.name() or "")
                for p in psutil.Process(self.process.pid).children(recursive=True)
            )
            if raylet and _answers(host, int(port)):
                return
            time.sleep(0.2)  # a bounded readiness poll, not a synchronisation
        tail = self._log_tail()
        self.stop()
        raise RuntimeError(f"the Ray head did not start in {START_TIMEOUT}s: {tail}")

    def _log_tail(self) -> str:
        self.log.flush()
        return (Path(self.temp_dir) / "head.log").read_text(errors="replace")[-2000:]

    def pids(self) -> list[int]:
        """The ``ray start`` process and every process under it (GCS, raylet, workers)."""
        try:
            root = psutil.Process(self.process.pid)
            return [root.pid] + [p.pid for p in root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def stop(self) -> None:
        """End the head's processes (ours, by pid) and remove its temp dir."""
        procs = []
        for pid in self.pids():
            try:
                procs.append(psutil.Process(pid))
            except psutil.NoSuchProcess:
                pass
        # ``ray start --block`` ends the processes it started when it is asked to:
        # seconds, where terminating them all at once leaves the raylet waiting.
        self.process.terminate()
        _, alive = psutil.wait_procs(procs, timeout=20)
        for p in alive:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=15)
        self.process.wait(timeout=15)
        self.log.close()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False
