"""mldropd: drag-and-drop deployment of batch-scoring ML models."""

from __future__ import annotations

__version__ = "0.1.0"
