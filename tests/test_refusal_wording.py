"""Issue 12 defect 7: a refused pickle or TorchScript archive is described by what it holds,
with the safe way forward (never torch's ``weights_only=False`` advice, never an option the
command at hand does not have)."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import pytest

from ssrseg.backbones.weights import WeightsError, load_clip_model, load_dino
from ssrseg.cli import main
from ssrseg.pickles import found_phrase, refused_global


class Evil:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (print, ("executed",))


def test_refused_global_is_read_from_torch_and_our_own_messages() -> None:
    torch_text = "WeightsUnpickler error: Unsupported global: GLOBAL builtins.print was not"
    assert refused_global(pickle.UnpicklingError(torch_text)) == "builtins.print"
    ours = pickle.UnpicklingError("refusing to load os.system (not a tensor)")
    assert found_phrase(ours) == "a reference to the Python object 'os.system'"
    assert "other than tensors" in found_phrase(pickle.UnpicklingError("odd"))


def test_crafted_pickle_as_weights(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    evil = tmp_path / "evil.pth"
    evil.write_bytes(pickle.dumps({"x": Evil()}, protocol=2))
    with pytest.raises(WeightsError) as err:
        load_dino(str(evil))
    text = str(err.value)
    assert text.startswith(f"{evil}: refused to load: the file holds a reference to")
    assert "print" in text and "could run code" in text and "docs/weights.md" in text
    assert "weights_only" not in text and "truncated" not in text
    assert main(["toy", "zero-shot", "--weights", str(evil)]) == 2
    line = capsys.readouterr().err
    assert "refused to load" in line and line.count("\n") == 1


def _script_archive(path: Path) -> Path:
    """A zip shaped like a TorchScript archive whose data.pkl names ``builtins.print``."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("ts/data.pkl", pickle.dumps(Evil(), protocol=2))
        archive.writestr("ts/constants.pkl", pickle.dumps((), protocol=2))
        archive.writestr("ts/code/__torch__.py", "")
    return path


def test_torchscript_refusal_names_the_convert_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ts = _script_archive(tmp_path / "ViT-B-16.pt")
    with pytest.raises(WeightsError) as err:
        load_clip_model(str(ts))
    text = str(err.value)
    assert "refused to load: the TorchScript archive holds a reference to" in text
    assert f"ssrseg weights convert {ts} OUT.safetensors --trust-torchscript" in text
    assert "CLI: --trust-torchscript" not in text  # no option other commands lack
    assert main(["toy", "zero-shot", "--weights", str(ts)]) == 2
    assert "ssrseg weights convert" in capsys.readouterr().err
