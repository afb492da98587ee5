"""Run `python -m searchsvc serve` as a child process (bench and tests): start, wait for the port, stop, kill -9."""

from __future__ import annotations

import collections
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path


class ServerProcess:
    def __init__(self, index_dir: Path, env: dict[str, str] | None = None) -> None:
        self.index_dir = index_dir
        self.env = env or {}
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.output: collections.deque[str] = collections.deque(maxlen=10_000)  # the child's latest output lines

    def start(self, timeout: float = 180) -> "ServerProcess":
        env = {**os.environ, "SEARCHSVC_LOG_LEVEL": "WARNING", **self.env}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "searchsvc", "serve", "--port", "0", "--index-dir", str(self.index_dir)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        )
        deadline = time.monotonic() + timeout
        output = []
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            output.append(line)
            self.output.append(line)
            match = re.search(r"listening on \S+:(\d+)", line)
            if match:
                self.port = int(match.group(1))
                # Keep reading the child's output, or a full pipe would block its logging (and the server).
                threading.Thread(target=self._drain, daemon=True).start()
                return self
        self.proc.kill()
        raise RuntimeError("server did not start:\n" + "".join(output))

    def _drain(self) -> None:
        for line in self.proc.stdout:
            self.output.append(line)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def peak_rss_mb(self) -> float:
        """VmHWM: the process's peak resident set size so far."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=120)

    def kill9(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=30)

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        if self.proc and self.proc.poll() is None:
            self.stop()
