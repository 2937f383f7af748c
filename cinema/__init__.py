"""CineMA: a foundation-model toolkit for cine cardiac MRI."""

__version__ = "0.1.0"

__all__ = ["load_model", "save_model", "__version__"]


def __getattr__(name: str):
    # Lazy so that `import cinema` stays cheap for the I/O-only user and the CLI start-up.
    if name in ("load_model", "save_model"):
        from cinema.models import checkpoint

        return getattr(checkpoint, name)
    raise AttributeError(f"module 'cinema' has no attribute {name!r}")
