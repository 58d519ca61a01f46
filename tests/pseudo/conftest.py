"""Labeller factory fixture."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from pseudo_models import PROMPTS, small_config, tiny_models

from ssrseg.pseudo.labeler import PseudoLabeler


@pytest.fixture
def make_labeler() -> Callable[..., PseudoLabeler]:
    def make(*overrides: str) -> PseudoLabeler:
        clip, tok, dino = tiny_models()
        return PseudoLabeler(clip, tok, dino, PROMPTS, small_config(*overrides))

    return make
