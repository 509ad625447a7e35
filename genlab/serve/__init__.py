"""Serving a trained classifier run: a REST API, a web page, micro-batching (genlab serve)."""
from __future__ import annotations


def create_app(*args, **kwargs):
    """See genlab.serve.app.create_app (imported lazily: FastAPI is only needed to serve)."""
    from genlab.serve.app import create_app as _create

    return _create(*args, **kwargs)


__all__ = ["create_app"]
