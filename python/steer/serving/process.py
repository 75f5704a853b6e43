"""``steer serve`` in a child process, for tests, benchmarks and notebooks::

    with ServeProcess(["--max-new-tokens", "32"]) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="none")
        ...

It starts the server on a free port of 127.0.0.1 (``--port 0``), waits for the line announcing
the address, and on exit sends SIGTERM and waits for the exit code (``stop()`` returns it; a
server that does not exit in time is killed).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time

ANNOUNCED = re.compile(r" on (http://[^ ]+?)/v1 ")


class ServeProcess:
    def __init__(self, args: list[str] = (), *, start_timeout: float = 120.0, stop_timeout: float = 60.0,
                 threads: int | None = None) -> None:  # fmt: skip
        self.args, self.start_timeout, self.stop_timeout = list(args), start_timeout, stop_timeout
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if threads is not None:
            self.env["OMP_NUM_THREADS"] = str(threads)
        self.process: subprocess.Popen | None = None
        self.url = ""
        self._stderr: list[str] = []

    @property
    def base_url(self) -> str:
        """The openai client's base_url: http://127.0.0.1:PORT/v1."""
        return f"{self.url}/v1"

    @property
    def stderr(self) -> str:
        return "".join(self._stderr)

    def start(self) -> ServeProcess:
        command = [sys.executable, "-m", "steer.cli", "serve", "--port", "0", *self.args]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=self.env)
        threading.Thread(target=self._drain_stderr, daemon=True).start()  # a full pipe would stall the server
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            match = ANNOUNCED.search(line)
            if match:
                self.url = match.group(1)
                threading.Thread(target=self.process.stdout.read, daemon=True).start()
                return self
            if not line and self.process.poll() is not None:
                break
        self.process.kill()
        self.process.wait()
        raise RuntimeError(f"steer serve did not start (exit {self.process.returncode}): {self.stderr[-3000:]}")

    def _drain_stderr(self) -> None:
        for line in self.process.stderr:
            self._stderr.append(line)

    def terminate(self) -> None:
        """Send SIGTERM (the server drains and exits)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def stop(self) -> int:
        """SIGTERM, then the exit code (killed, and -9, if it does not exit in time)."""
        if self.process is None:
            return 0
        self.terminate()
        try:
            return self.process.wait(self.stop_timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def __enter__(self) -> ServeProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
