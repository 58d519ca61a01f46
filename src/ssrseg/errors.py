"""Errors every layer may raise: a leaf module (imports nothing from ssrseg), so that
``data.base``, ``data.classes`` and ``data.tags`` share one exception without importing each
other in a circle."""

from __future__ import annotations

import os


class BadInputError(Exception):
    """A user file that cannot be used: ``path`` names the file, ``reason`` says what is wrong."""

    def __init__(self, path: str | os.PathLike[str], reason: str, image_id: str | None = None):
        self.path = str(path)
        self.reason = reason
        self.image_id = image_id
        super().__init__(f"{self.path}: {reason}")
