"""Running the app under uvicorn: the socket, the shutdown on SIGTERM / SIGINT.

The listening socket is bound here (127.0.0.1 unless told otherwise; port 0 picks a free one),
so the line announcing the address names the real port before the first request. On SIGTERM or
SIGINT the engine loop stops taking requests at once (a 503 for any that still arrive), uvicorn
stops accepting connections and waits up to ``shutdown_timeout`` seconds for the requests in
flight to finish; what is still running then is cancelled (and so aborted, its KV blocks freed),
the engine loop stops, and the process exits 0.
"""

from __future__ import annotations

import signal
import socket
import sys

import uvicorn


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, engine_loop) -> None:
        super().__init__(config)
        self.engine_loop = engine_loop

    def handle_exit(self, sig, frame) -> None:
        self.engine_loop.stop_admitting()
        super().handle_exit(sig, frame)


def _after_shutdown(sig, frame) -> None:
    """The signal uvicorn raises again after its graceful shutdown: already handled."""


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def serve(app, *, host: str = "127.0.0.1", port: int = 8000, shutdown_timeout: float = 30.0, announce=None) -> int:
    """Serve ``app`` until SIGTERM / SIGINT; returns the exit code (0)."""
    sock = bind(host, port)
    real_port = sock.getsockname()[1]
    state = app.state.steer
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=shutdown_timeout, access_log=False,
                            lifespan="off")  # fmt: skip
    server = _Server(config, state.loop)
    shown = f"[{host}]" if ":" in host else host
    print(f"steer serve: {state.settings.model_name} on http://{shown}:{real_port}/v1 (Ctrl-C or SIGTERM stops it)",
          file=announce or sys.stdout, flush=True)  # fmt: skip
    # uvicorn catches SIGTERM / SIGINT for its graceful shutdown and, once done, raises the signal
    # again for the handler that was there before: a no-op one, so that the process exits 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _after_shutdown)
    try:
        server.run(sockets=[sock])
    finally:
        state.loop.stop()
        sock.close()
    return 0
