"""SSRModel and loss contracts that test_ssr.py / test_losses.py leave open (issue 26, mutation
triage; docs/mutation/model.ssr.md and model.losses.md list what each test kills).

CMPA sized for the foreground classes, the error texts of a disabled CMPA and of a mismatched
checkpoint (the first five keys of each kind), and affinity targets built on the labels'
device (the meta device checks placement without data).
"""

from __future__ import annotations

import re

import pytest
import torch
from tests_model_fakes import (  # one_thread: autouse fixture
    one_thread,  # noqa: F401
    proto_inputs,
    synthetic_batch,
    tiny_config,
    tiny_ssr_model,
)

from ssrseg.model.losses import affinity_targets


def test_cmpa_holds_one_prototype_per_foreground_class() -> None:
    model = tiny_ssr_model(tiny_config(), 0)  # 4 classes: background + 3
    assert model.cmpa is not None and model.cmpa.num_classes == 3
    assert model.cmpa.visual_protos.shape[0] == 3


def test_prototype_inputs_without_cmpa_message() -> None:
    with_cmpa = tiny_ssr_model(tiny_config(), 0)
    x = proto_inputs(with_cmpa, synthetic_batch(2))
    model = tiny_ssr_model(tiny_config(cmpa__enabled="false"), 0)
    with pytest.raises(ValueError, match=r"^prototype inputs given but CMPA is disabled$"):
        model.losses(x["tokens"], x["grid"], x["pseudo"], x["proto"])


def test_checkpoint_mismatch_names_the_first_five_keys_of_each_kind() -> None:
    model = tiny_ssr_model(tiny_config(), 0)
    state = model.trainable_state_dict()
    keys = sorted(state)
    assert len(keys) >= 6
    extra = [f"zz.extra{i}" for i in range(6)]
    broken = {k: v for k, v in state.items() if k not in keys[:6]}
    broken.update({k: torch.zeros(1) for k in extra})
    msg = f"trainable weights mismatch: missing {keys[:5]}, extra {extra[:5]}"
    with pytest.raises(KeyError, match=re.escape(msg)):
        model.load_trainable_state_dict(broken)


def test_affinity_targets_stay_on_the_labels_device() -> None:
    labels = torch.zeros(2, 16, 16, dtype=torch.long, device="meta")
    assert affinity_targets(labels, 8, (2, 2), radius=1).device.type == "meta"
