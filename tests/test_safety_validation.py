"""Issue 22 point 4 (files read back): every field of a checkpoint's state.json, a run record,
a config's base: chain and a tag file is checked on read; a damaged or hand-edited file is
one line naming the file and the field, never a traceback."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from ssrseg.config import ConfigError, load_config
from ssrseg.data.base import BadInputError
from ssrseg.data.tags import read_tag_file
from ssrseg.engine.checkpoint import (
    CheckpointError,
    backbone_identity,
    read_state,
    resolve_checkpoint,
    rng_state,
    save_checkpoint,
    state_from,
)
from ssrseg.runrecord import RunMismatchError, make_record, read_record


def _state() -> dict[str, Any]:
    cfg = load_config(None, ["backbone.clip=toy_clip", "backbone.dino=toy_dino"])
    state = state_from(4, cfg, 3, [rng_state()])
    state.extra["log"] = [{"sums": {"loss": 1.5}, "count": 1}]
    state.extra["backbones"] = backbone_identity(cfg)
    return dict(state.__dict__)


def _set(data: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    out = copy.deepcopy(data)
    node = out
    keys = path.split("/")
    for key in keys[:-1]:
        node = node[int(key)] if isinstance(node, list) else node[key]
    last = keys[-1]
    if value is DELETE:
        del node[last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return out


DELETE = object()
BAD_STATES = [
    ("step", "-1"),
    ("step", "2.5"),
    ("step", "true"),
    ("step", DELETE),
    ("config", "[]"),
    ("config", DELETE),
    ("num_classes", "1"),
    ("num_classes", '"3"'),
    ("rng", "{}"),
    ("rng/0", "7"),
    ("rng/0/torch", "null"),
    ("extra", "[]"),
    ("extra/log", "{}"),
    ("extra/log/0/count", "-2"),
    ("extra/log/0/sums", '{"loss": "x"}'),
    ("extra/backbones/clip", '"toy_clip"'),
    ("extra/backbones/clip/sha256", "12"),
    ("surprise", "1"),
]


@pytest.mark.parametrize(("field", "value"), BAD_STATES)
def test_every_state_field_is_checked_on_read(tmp_path: Path, field: str, value: Any) -> None:
    good = _state()
    save_checkpoint(tmp_path, 4, {}, {}, state_from(4, load_config(None, []), 3, []))
    path = tmp_path / "ckpt_4" / "state.json"
    path.write_text(json.dumps(good))
    read_state(tmp_path / "ckpt_4")  # the untouched state reads
    bad = _set(good, field, DELETE if value is DELETE else json.loads(value))
    path.write_text(json.dumps(bad))
    with pytest.raises(CheckpointError) as err:
        read_state(tmp_path / "ckpt_4")
    text = str(err.value)
    assert text.startswith(str(path)) and "\n" not in text
    assert field.split("/")[-1] in text or field.split("/")[0] in text


def test_a_last_file_naming_another_path_is_refused(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "run", 2, {}, {}, state_from(2, load_config(None, []), 3, []))
    save_checkpoint(tmp_path / "other", 9, {}, {}, state_from(9, load_config(None, []), 3, []))
    assert resolve_checkpoint(tmp_path / "run").name == "ckpt_2"
    (tmp_path / "run" / "last").write_text("../other/ckpt_9\n")
    with pytest.raises(CheckpointError, match="not a ckpt_<step> folder of this run"):
        resolve_checkpoint(tmp_path / "run")


BAD_RECORDS = [
    ("version", "2"),
    ("version", DELETE),
    ("config", "[]"),
    ("options", "null"),
    ("options", DELETE),
    ("surprise", "1"),
]


@pytest.mark.parametrize(("field", "value"), BAD_RECORDS)
def test_every_run_record_field_is_checked_on_read(tmp_path: Path, field: str, value: Any) -> None:
    good = make_record(load_config(None, []), {"split": "train"})
    (tmp_path / "run.json").write_text(json.dumps(good))
    assert read_record(tmp_path) == good
    bad = _set(good, field, DELETE if value is DELETE else json.loads(value))
    (tmp_path / "run.json").write_text(json.dumps(bad))
    with pytest.raises(RunMismatchError) as err:
        read_record(tmp_path)
    text = str(err.value)
    assert text.startswith(str(tmp_path / "run.json")) and field in text and "\n" not in text


def test_a_base_chain_that_loops_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("base: b.yaml\ntrain:\n  lr: 0.1\n")
    (tmp_path / "b.yaml").write_text("base: c.yaml\n")
    (tmp_path / "c.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "a.yaml")
    text = str(err.value)
    assert "loops (a.yaml -> b.yaml -> c.yaml -> a.yaml)" in text and "\n" not in text
    (tmp_path / "self.yaml").write_text("base: self.yaml\n")
    with pytest.raises(ConfigError, match="loops"):
        load_config(tmp_path / "self.yaml")
    (tmp_path / "c.yaml").write_text("base: 3\n")
    with pytest.raises(ConfigError, match="base: must name another YAML file"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("base: gone.yaml\n")
    with pytest.raises(ConfigError, match=r"gone.yaml: config file not found \(named by base:"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("data:\n  crop_size: 64\n")  # a chain that ends: read
    assert load_config(tmp_path / "a.yaml").data.crop_size == 64


@pytest.mark.parametrize(
    "text",
    ['{"a": 3}', '{"a": [1, 2]}', '{"a": {"b": 1}}', "[1, 2]", '"tags"', "{", "{}"],
)
def test_every_tag_json_shape_is_checked_on_read(tmp_path: Path, text: str) -> None:
    path = tmp_path / "tags.json"
    path.write_text(text)
    with pytest.raises(BadInputError) as err:
        read_tag_file(path)
    assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)
