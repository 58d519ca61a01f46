"""Backbone tests never touch the user's cache or the network."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Never touch the user's cache or the network from tests."""
    monkeypatch.setenv("SSRSEG_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    torch.manual_seed(0)
