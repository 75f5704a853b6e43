"""``steer serve``: STEER behind an OpenAI-compatible HTTP API.

    protocol.py     the request bodies and their checks; OpenAI-style error bodies
    text.py         tokens to text as they arrive, stop strings
    pools.py        the named negative pools that grow with the completions drawn from them
    engine_loop.py  the thread that owns the engine: admit, step, hand out outputs, abort
    metrics.py      /metrics (Prometheus)
    app.py          the FastAPI routes: a request from body to engine requests to response
    server.py       uvicorn, the socket, SIGTERM

Needs the ``serve`` extra: ``pip install -e ".[serve]"`` (FastAPI, uvicorn, prometheus-client).
"""
