"""Prompts as data: VOC / COCO lists, toy root, user files, encoding."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ssrseg.backbones.clip import CLIP, CLIPConfig
from ssrseg.backbones.tokenizer import WordTokenizer
from ssrseg.backbones.toy_shapes import word_text_config
from ssrseg.backbones.vit import ViTConfig
from ssrseg.cam.prompts import ClassPrompts, PromptError, encode_prompts, prompts_from_config


def test_voc_and_coco_lists() -> None:
    voc = ClassPrompts.voc()
    assert voc.num_classes == 20 and len(voc.background) == 25
    assert voc.prompts[14] == "person with clothes,people,human"
    assert voc.class_texts()[2] == "a clean origami bird avian."
    coco = ClassPrompts.coco()
    assert coco.num_classes == 80 and len(coco.background) == 23
    assert "keyboard" not in coco.background and "sign" not in coco.background
    assert coco.prompts[coco.names.index("backpack")] == "backpack,bag"
    assert coco.prompts[coco.names.index("tie")] == "necktie"


def test_class_names_match_dataset_lists() -> None:
    from ssrseg.data.classes import COCO_CLASSES, VOC_CLASSES

    assert tuple(ClassPrompts.voc().names) == tuple(VOC_CLASSES)
    assert tuple(ClassPrompts.coco().names) == tuple(COCO_CLASSES)


def test_user_file_and_toy_root(tmp_path: Path) -> None:
    f = tmp_path / "classes.txt"
    f.write_text(
        "# my classes\ncat\nperson: person with clothes,people,human\n\n[background]\nsky\n"
    )
    p = ClassPrompts.from_file(f)
    assert p.names == ("cat", "person")
    assert p.prompts == ("cat", "person with clothes,people,human")
    assert p.background == ("sky",)
    root = tmp_path / "toy"
    root.mkdir()
    (root / "classes.txt").write_text("circle\nsquare\n")
    (root / "backgrounds.txt").write_text("water\ngrass\n")
    toy = prompts_from_config("toy", "a photo of {}", data_root=root)
    assert toy.names == ("circle", "square") and toy.prompts == toy.names
    assert toy.background == ("water", "grass") and toy.template == "a photo of {}"
    none = prompts_from_config(str(f), use_background_words=False)
    assert none.background == ()
    over = prompts_from_config("voc", background_words=("sky", "sea"))
    assert over.background == ("sky", "sea")


def test_prompt_errors(tmp_path: Path) -> None:
    with pytest.raises(PromptError, match="not found"):
        ClassPrompts.from_file(tmp_path / "missing.txt")
    bad = tmp_path / "bad.txt"
    bad.write_text("cat\ndog:\n")
    with pytest.raises(PromptError, match="line 2"):
        ClassPrompts.from_file(bad)
    with pytest.raises(PromptError, match="placeholder"):
        ClassPrompts(names=("a",), prompts=("a",), background=(), template="no slot")


def test_encode_prompts_equals_encode_text() -> None:
    torch.manual_seed(0)
    tok = WordTokenizer(["a", "photo", "of", "cat", "dog", "sky"], context_length=8)
    text = word_text_config(tok, width=32, layers=1, heads=4)
    vision = ViTConfig(image_size=16, patch_size=8, width=16, layers=1, heads=2, output_dim=8)
    clip = CLIP(CLIPConfig(vision=vision, text=text, embed_dim=8))
    prompts = ClassPrompts(("cat", "dog"), ("cat", "dog"), ("sky",), "a photo of {}")
    cls, bg = encode_prompts(clip, tok, prompts)
    assert cls.shape == (2, 8) and bg.shape == (1, 8)
    ref = F.normalize(clip.encode_text(tok(["a photo of cat", "a photo of dog"])), dim=-1)
    torch.testing.assert_close(cls, ref)
    empty = ClassPrompts(("cat",), ("cat",), (), "a photo of {}")
    assert encode_prompts(clip, tok, empty)[1].shape == (0, 8)


def test_toy_prompts_fall_back_to_generator_constants(tmp_path: Path) -> None:
    from ssrseg.data.toy import BACKGROUNDS, CLASS_NAMES

    toy = prompts_from_config("toy", data_root=tmp_path / "absent")
    assert toy.names == CLASS_NAMES and toy.background == BACKGROUNDS
