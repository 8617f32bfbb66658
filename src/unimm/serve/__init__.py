"""Serving: an OpenAI-compatible HTTP server and a web page over the Python API (`Pipeline`).

    from unimm.serve import ServeSettings, create_app
    app = create_app(Pipeline.load(), ServeSettings())     # any ASGI server runs it

`unimm serve` runs it with uvicorn; `unimm bench serve` (bench/serve_load.py) is the load check.
"""

from .settings import ServeSettings

__all__ = ["ServeSettings", "create_app"]


def create_app(*args, **kwargs):
    # Imported lazily: fastapi is the optional `serve` extra.
    from .app import create_app as make
    return make(*args, **kwargs)
