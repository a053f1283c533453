"""mldropd: drag-and-drop deployment of batch-scoring ML models."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "save_model"]


def save_model(path: Any, **kwargs: Any) -> Any:
    """Check a model object and save it with dill (see mldropd.notebook.save_model)."""
    from mldropd.notebook import save_model as _save

    return _save(path, **kwargs)
