"""unimm: unified multimodal models that see and draw, on one backbone, judged exactly.

`from unimm import Pipeline` is the Python API (loaded lazily so that importing the data and
evaluation modules does not pull in torch)."""

__version__ = "0.1.0"


def __getattr__(name):
    if name == "Pipeline":
        from .pipeline import Pipeline
        return Pipeline
    raise AttributeError(f"module 'unimm' has no attribute {name!r}")


__all__ = ["Pipeline", "__version__"]
