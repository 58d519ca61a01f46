"""``ssrseg predict`` end to end with a small stand-in model (checkpoint loading patched out)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torch import Tensor, nn

from ssrseg.cli import main
from ssrseg.commands import predict as predict_cmd
from ssrseg.config import InferConfig, SSRConfig
from ssrseg.engine.infer import Segmenter

PATCH = 8
K = 6


class CountingNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.conv = nn.Conv2d(3, K, PATCH, stride=PATCH)
        with torch.no_grad():
            self.conv.weight.mul_(20.0)
        self.images = 0

    def forward(self, x: Tensor) -> Tensor:
        self.images += x.shape[0]
        return self.conv(x)


@pytest.fixture
def fake_model(monkeypatch: pytest.MonkeyPatch) -> CountingNet:
    net = CountingNet().eval()

    def load(checkpoint: str, device: str) -> Segmenter:
        assert checkpoint == "CKPT" and device == "cpu"
        seg = Segmenter(net, K, PATCH, InferConfig(long_side=40))
        seg.config = SSRConfig()
        return seg

    def describe(checkpoint: str) -> tuple[SSRConfig, dict[str, str]]:
        assert checkpoint == "CKPT"
        return SSRConfig(infer=InferConfig(long_side=40)), {"path": "CKPT"}

    monkeypatch.setattr(predict_cmd, "load_segmenter", load)
    monkeypatch.setattr(predict_cmd, "describe_checkpoint", describe)
    return net


def save_image(path: Path, h: int, w: int, seed: int) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(image).save(path)
    return image


def predict(*args: str) -> int:
    return main(["predict", *args, "--checkpoint", "CKPT", "--device", "cpu", "--no-progress"])


def reference_mask(image: np.ndarray, scales: tuple[float, ...]) -> np.ndarray:
    torch.manual_seed(2)
    net = CountingNet().eval()
    return Segmenter(net, K, PATCH, InferConfig(long_side=40, scales=scales)).predict(image)


@pytest.fixture
def inputs(tmp_path: Path) -> dict[str, np.ndarray]:
    images = {
        "single": save_image(tmp_path / "in" / "single.png", 30, 45, 0),
        "sub/deep": save_image(tmp_path / "folder" / "sub" / "deep.png", 21, 17, 1),
        "top": save_image(tmp_path / "folder" / "top.png", 40, 40, 2),
        "listed": save_image(tmp_path / "lists" / "imgs" / "listed.png", 25, 60, 3),
    }
    (tmp_path / "folder" / "notes.txt").write_text("not an image")  # ignored in folders
    (tmp_path / "lists" / "files.txt").write_text("# a comment\nimgs/listed.png\n\n")
    return images


def test_files_folders_and_list_files(
    tmp_path: Path, fake_model: CountingNet, inputs: dict[str, np.ndarray]
) -> None:
    out = tmp_path / "out"
    args = [str(tmp_path / "in" / "single.png"), str(tmp_path / "folder")]
    code = predict(*args, str(tmp_path / "lists" / "files.txt"), "--out", str(out))
    code_scales = ["--scales", "1.0", "0.5", "--panels", "--overlays"]
    assert code == 0
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert written == ["listed.png", "single.png", "sub/deep.png", "top.png"]
    for name, image in inputs.items():
        png = Image.open(out / f"{name}.png")
        assert png.mode == "P" and png.size == (image.shape[1], image.shape[0])
        pal = np.asarray(png.getpalette(), dtype=np.uint8).reshape(-1, 3)
        assert tuple(pal[1]) == (128, 0, 0) and tuple(pal[15]) == (192, 128, 128)
        np.testing.assert_array_equal(np.asarray(png), reference_mask(image, (1.0, 0.75)))
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["infer"]["scales"] == [1.0, 0.75]

    # A second run with overlays/panels redoes everything (new outputs are missing) ...
    out2 = tmp_path / "out2"
    assert predict(str(tmp_path / "folder"), "--out", str(out2), *code_scales) == 0
    for name in ("top", "sub/deep"):
        image = inputs[name]
        overlay = np.asarray(Image.open(out2 / "overlays" / f"{name}.jpg"))
        assert overlay.shape == image.shape
        assert (out2 / "panels" / f"{name}.png").is_file()
        mask = np.asarray(Image.open(out2 / f"{name}.png"))
        np.testing.assert_array_equal(mask, reference_mask(image, (1.0, 0.5)))
    saved = yaml.safe_load((out2 / "config.yaml").read_text())
    assert saved["infer"]["scales"] == [1.0, 0.5]


def test_resume_skips_finished_images(
    tmp_path: Path,
    fake_model: CountingNet,
    inputs: dict[str, np.ndarray],
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "out"
    folder = str(tmp_path / "folder")
    assert predict(folder, "--out", str(out), "--no-flip", "--scales", "1") == 0
    assert fake_model.images == 2
    before = (out / "top.png").stat().st_mtime_ns
    (out / "sub" / "deep.png").unlink()
    capsys.readouterr()
    assert predict(folder, "--out", str(out), "--no-flip", "--scales", "1") == 0
    assert fake_model.images == 3  # only the deleted one ran again
    assert (out / "top.png").stat().st_mtime_ns == before
    assert "1 of 2 images already done" in capsys.readouterr().out
    assert predict(folder, "--out", str(out), "--no-flip", "--scales", "1", "--overwrite") == 0
    assert fake_model.images == 5


def test_bad_images_are_skipped_and_listed(
    tmp_path: Path,
    fake_model: CountingNet,
    inputs: dict[str, np.ndarray],
    capsys: pytest.CaptureFixture[str],
) -> None:
    bad = tmp_path / "folder" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    missing = tmp_path / "nowhere.png"
    out = tmp_path / "out"
    capsys.readouterr()
    code = predict(str(tmp_path / "folder"), str(missing), "--out", str(out))
    err = capsys.readouterr().err
    assert code == 3
    assert "2 item(s) were SKIPPED" in err
    assert str(bad) in err and str(missing) in err and "not found" in err
    assert (out / "top.png").is_file() and (out / "sub" / "deep.png").is_file()
    assert not (out / "broken.png").exists()
    out2 = tmp_path / "out2"
    assert predict(str(bad), "--out", str(out2), "--allow-skipped") == 0


def test_usage_errors(
    tmp_path: Path,
    fake_model: CountingNet,
    inputs: dict[str, np.ndarray],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = str(tmp_path / "out")
    # Two inputs that would both write out/top.png.
    save_image(tmp_path / "other" / "top.png", 10, 10, 5)
    code = predict(str(tmp_path / "folder" / "top.png"), str(tmp_path / "other"), "--out", out)
    assert code == 2 and "top.png <- " in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert predict(str(empty), "--out", out) == 2
    assert "no images found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # argparse checks the number
        predict(str(empty), "--out", out, "--scales", "0")
    assert exc.value.code == 2 and "--scales: must be > 0" in capsys.readouterr().err
    # CRF requested without pydensecrf2: stop before any work, say how to install.
    for name in ("pydensecrf", "pydensecrf.densecrf"):
        monkeypatch.setitem(sys.modules, name, None)
    assert predict(str(tmp_path / "folder"), "--out", out, "--crf") == 2
    assert "pip install" in capsys.readouterr().err
    assert fake_model.images == 0


def test_bad_checkpoint_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    save_image(tmp_path / "a.png", 8, 8, 0)
    ckpt = tmp_path / "no_such_run"
    code = main(
        [
            "predict",
            str(tmp_path / "a.png"),
            "--checkpoint",
            str(ckpt),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert code == 2
    assert str(ckpt) in capsys.readouterr().err


# ------------------------------------------------------------------ evaluate --checkpoint


@pytest.fixture
def tiny_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A real (tiny, random) SSR checkpoint with 21 classes, saved by the training code."""
    sys.path.insert(0, str(Path(__file__).parent / "model"))
    from tests_model_fakes import FakeLabeler, tiny_clip, tiny_config

    from ssrseg.engine.checkpoint import rng_state, save_checkpoint, state_from
    from ssrseg.model.ssr import SSRModel

    def build(cfg: SSRConfig, num_classes: int, device: str = "cpu") -> SSRModel:
        return SSRModel(cfg, FakeLabeler(tiny_clip(), num_classes - 1), num_classes).to(device)

    torch.manual_seed(7)
    model = build(tiny_config(), 21).eval()
    run = tmp_path / "run"
    state = state_from(2, model.cfg, 21, [rng_state()])
    save_checkpoint(run, 2, model.trainable_state_dict(), {}, state)
    monkeypatch.setattr("ssrseg.engine.checkpoint.build_ssr_model", build)
    return run


def make_voc(root: Path) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    from ssrseg.viz import save_label_png

    rng = np.random.default_rng(3)
    items: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
    for image_id, (h, w), split in [
        ("2007_000001", (30, 40), "val"),
        ("2007_000002", (36, 20), "val"),
        ("2008_000001", (25, 33), "test"),
        ("2008_000002", (40, 40), "test"),
    ]:
        image = save_image(root / "JPEGImages" / f"{image_id}.jpg", h, w, len(items))
        image = np.asarray(Image.open(root / "JPEGImages" / f"{image_id}.jpg"))  # after JPEG
        mask = None
        if split == "val":
            mask = rng.integers(0, 4, (h, w)).astype(np.uint8)
            mask[0] = 255
            save_label_png(root / "SegmentationClass" / f"{image_id}.png", mask)
        items[image_id] = (image, mask)
        lists = root / "ImageSets" / "Segmentation"
        lists.mkdir(parents=True, exist_ok=True)
        with (lists / f"{split}.txt").open("a") as handle:
            handle.write(image_id + "\n")
    return items


@pytest.mark.slow
def test_evaluate_checkpoint_end_to_end(
    tmp_path: Path, tiny_checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ssrseg.metrics import ConfusionMatrix

    root = tmp_path / "VOC2012"
    items = make_voc(root)
    out, export, preds = tmp_path / "m.json", tmp_path / "export", tmp_path / "preds"
    common = ["evaluate", "--checkpoint", str(tiny_checkpoint), "--dataset", "voc"]
    common += ["--root", str(root), "--long-side", "32", "--device", "cpu", "--quiet"]
    extra = ["--save-pred", str(preds), "--export-voc-test", str(export)]
    code = main([*common, "--split", "val", "--crf", "auto", "--out", str(out), *extra])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "without CRF" in captured.out and "mIoU" in captured.out
    result = json.loads(out.read_text())
    assert result["infer"]["long_side"] == 32 and result["infer"]["scales"] == [1.0, 0.75]
    # issue 12 defect 3: the predictions folder and the JSON say what made them
    saved = json.loads((preds / "run.json").read_text())
    assert saved["options"]["split"] == "val" and saved["config"]["infer"]["long_side"] == 32
    assert saved["options"]["checkpoint"]["step"] == 2
    assert result["record"] == saved
    # Same numbers as scoring Segmenter.predict by hand.
    seg = Segmenter.from_checkpoint(tiny_checkpoint, infer=InferConfig(long_side=32))
    cm = ConfusionMatrix(21)
    for image_id, (image, mask) in items.items():
        if mask is not None:
            pred = seg.predict(image)
            cm.update(pred, mask)
            np.testing.assert_array_equal(np.asarray(Image.open(preds / f"{image_id}.png")), pred)
    expected = cm.compute()
    assert result["no_crf"]["miou"] == pytest.approx(expected["miou"])
    assert result["no_crf"]["pixel_acc"] == pytest.approx(expected["pixel_acc"])
    with_crf = "crf" in result  # --crf auto: both when pydensecrf2 is installed
    if with_crf:
        cm_crf = ConfusionMatrix(21)
        for image, mask in items.values():
            if mask is not None:
                cm_crf.update(seg.predict(image, crf=True), mask)
        assert result["crf"]["miou"] == pytest.approx(cm_crf.compute()["miou"])
    else:
        assert "pip install" in captured.err  # auto without pydensecrf2 says why
    # The test split went to the server layout, one PNG per test image, image-sized.
    files = sorted(p.relative_to(export).as_posix() for p in export.rglob("*.png"))
    assert files == [
        "results/VOC2012/Segmentation/comp6_test_cls/2008_000001.png",
        "results/VOC2012/Segmentation/comp6_test_cls/2008_000002.png",
    ]
    png = Image.open(export / files[0])
    assert png.mode == "P" and png.size == (33, 25)
    exported = seg.predict(items["2008_000001"][0], crf=with_crf)
    np.testing.assert_array_equal(np.asarray(png), exported)
    assert (export / "results.tar.gz").is_file()


def test_evaluate_checkpoint_errors(
    tmp_path: Path,
    tiny_checkpoint: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root = tmp_path / "VOC2012"
    make_voc(root)
    common = ["evaluate", "--checkpoint", str(tiny_checkpoint), "--root", str(root)]
    for name in ("pydensecrf", "pydensecrf.densecrf"):
        monkeypatch.setitem(sys.modules, name, None)
    assert main([*common, "--crf", "both", "--device", "cpu"]) == 2
    assert "pip install" in capsys.readouterr().err
    assert main([*common, "--split", "test", "--crf", "off", "--device", "cpu"]) == 2
    assert "no ground-truth masks" in capsys.readouterr().err
    bad = ["evaluate", "--checkpoint", str(tmp_path / "nope"), "--root", str(root)]
    assert main(bad) == 2
    assert str(tmp_path / "nope") in capsys.readouterr().err


def test_image_conversions_are_listed(
    tmp_path: Path, fake_model: CountingNet, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 12 defect 10: predict lists conversions made while reading, as other jobs do."""
    gray = tmp_path / "in" / "gray.png"
    gray.parent.mkdir()
    Image.fromarray(np.full((16, 24), 90, np.uint8), mode="L").save(gray)
    assert predict(str(gray), "--out", str(tmp_path / "out")) == 0
    err = capsys.readouterr().err
    assert "1 image(s) were converted while reading" in err
    assert f"{gray}: converted grayscale image to RGB" in err


def test_rerun_with_other_settings_is_refused(
    tmp_path: Path,
    fake_model: CountingNet,
    inputs: dict[str, np.ndarray],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Issue 12 defect 3: a folder's masks and config.yaml never describe different runs."""
    out = tmp_path / "out"
    folder = str(tmp_path / "folder")
    assert predict(folder, "--out", str(out), "--scales", "1") == 0
    record = json.loads((out / "run.json").read_text())
    assert record["config"]["infer"]["scales"] == [1.0]
    assert record["options"] == {"checkpoint": {"path": "CKPT"}, "command": "predict"}
    capsys.readouterr()
    assert predict(folder, "--out", str(out), "--scales", "0.5") == 2
    assert "config.infer.scales: [1.0] -> [0.5]" in capsys.readouterr().err
    assert yaml.safe_load((out / "config.yaml").read_text())["infer"]["scales"] == [1.0]
    assert predict(folder, "--out", str(out), "--scales", "0.5", "--overwrite") == 0
    assert yaml.safe_load((out / "config.yaml").read_text())["infer"]["scales"] == [0.5]
