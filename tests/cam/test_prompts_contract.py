"""Prompt contracts the mutation run found untested (docs/mutation/cam.prompts.md): the exact
error messages, class-file sections and headers, the COCO source, the dataset-vs-prompt class
check, and where ``encode_texts`` puts an empty result."""

from __future__ import annotations

import locale
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

from ssrseg.backbones.clip import CLIP, CLIPConfig
from ssrseg.backbones.tokenizer import WordTokenizer
from ssrseg.backbones.toy_shapes import word_text_config
from ssrseg.backbones.vit import ViTConfig
from ssrseg.cam.prompts import (
    COCO_BACKGROUND,
    ClassPrompts,
    PromptError,
    check_prompt_classes,
    encode_prompts,
    encode_texts,
    prompts_from_config,
)


def _message(exc: pytest.ExceptionInfo[PromptError]) -> str:
    return str(exc.value)


def test_class_prompts_refusals_name_the_problem() -> None:
    with pytest.raises(PromptError) as info:
        ClassPrompts(names=("a", "b"), prompts=("a",), background=())
    assert _message(info) == "2 class names but 1 prompts"
    with pytest.raises(PromptError) as info:
        ClassPrompts(names=(), prompts=(), background=("sky",))
    assert _message(info) == "no foreground classes"


def test_class_file_sections_header_and_default_background(tmp_path: Path) -> None:
    f = tmp_path / "c.txt"
    # a first background entry is dropped like in dataset class files; every word after
    # [background] is kept, not only the first
    f.write_text("background\ncat\ndog: dog puppy\n[Background]\nsky\nsea\n# end\nroad\n")
    p = ClassPrompts.from_file(f)
    assert p.names == ("cat", "dog") and p.prompts == ("cat", "dog puppy")
    assert p.background == ("sky", "sea", "road")
    # no [background] section: the generic COCO list (23 words)
    g = tmp_path / "g.txt"
    g.write_text("cat\ndog\n")
    assert ClassPrompts.from_file(g).background == COCO_BACKGROUND
    assert len(COCO_BACKGROUND) == 23


def test_class_file_errors_name_the_file(tmp_path: Path) -> None:
    dup = tmp_path / "dup.txt"
    dup.write_text("cat\ndog\ncat: a cat\n")
    with pytest.raises(PromptError) as info:
        ClassPrompts.from_file(dup)
    assert _message(info) == f"{dup}: duplicate class names"
    empty = tmp_path / "empty.txt"
    empty.write_text("# only a comment\n\n   \n")
    with pytest.raises(PromptError) as info:
        ClassPrompts.from_file(empty)
    assert _message(info) == f"{empty}: file is empty"
    latin = tmp_path / "latin.txt"
    latin.write_bytes(b"caf\xe9\n")  # Latin-1, not UTF-8
    with pytest.raises(PromptError) as info:
        ClassPrompts.from_file(latin)
    assert _message(info).startswith(f"{latin}: cannot read (")
    assert "utf-8" in _message(info)


def test_class_files_are_read_as_utf8_whatever_the_locale(tmp_path: Path) -> None:
    f = tmp_path / "c.txt"
    f.write_text("café\nnaïve: naïve thing\n", encoding="utf-8")
    before = locale.setlocale(locale.LC_CTYPE)
    try:
        locale.setlocale(locale.LC_CTYPE, "C")  # an ASCII locale: the default would fail
        p = ClassPrompts.from_file(f)
    finally:
        locale.setlocale(locale.LC_CTYPE, before)
    assert p.names == ("café", "naïve") and p.prompts == ("café", "naïve thing")


def test_toy_root_without_backgrounds_file(tmp_path: Path) -> None:
    (tmp_path / "classes.txt").write_text("circle\nsquare\n")
    toy = ClassPrompts.from_toy_root(tmp_path)
    assert toy.names == ("circle", "square") and toy.background == ()
    # and prompts_from_config says which file would have given them
    with pytest.raises(PromptError) as info:
        prompts_from_config("toy", data_root=tmp_path)
    where = tmp_path / "backgrounds.txt"
    assert _message(info) == (
        f"prompts.dataset=toy: no background words ({where} gives none); write them "
        "(backgrounds.txt, one per line, or a [background] section in a class file), set "
        "prompts.background_words=[...], or prompts.use_background_words=false"
    )


def test_no_background_words_message_names_the_source(tmp_path: Path) -> None:
    # the toy constants with an empty override and no data root: the working directory's file
    with pytest.raises(PromptError, match=r"^prompts\.dataset=toy: no background words \(") as a:
        prompts_from_config("toy", background_words=())
    assert f"({Path('.') / 'backgrounds.txt'} gives none)" in _message(a)
    # a class file with an empty [background] section: the file itself is named
    f = tmp_path / "c.txt"
    f.write_text("cat\n[background]\n")
    with pytest.raises(PromptError) as info:
        prompts_from_config(str(f))
    assert _message(info).startswith(f"prompts.dataset={f}: no background words ({f} gives none);")


def test_coco_dataset_gives_the_coco_prompts() -> None:
    coco = prompts_from_config("coco", "a photo of {}.")
    assert coco == ClassPrompts.coco().__class__(
        names=ClassPrompts.coco().names,
        prompts=ClassPrompts.coco().prompts,
        background=COCO_BACKGROUND,
        template="a photo of {}.",
    )


VOC4 = ("aeroplane", "bicycle", "bird", "potted plant")


def _check(prompt_names: Sequence[str], data_names: Sequence[str]) -> str:
    prompts = ClassPrompts(tuple(prompt_names), tuple(prompt_names), ())
    with pytest.raises(PromptError) as info:
        check_prompt_classes(prompts, data_names, "P", "D")
    return _message(info)


def test_check_prompt_classes_accepts_the_same_names_in_any_spelling() -> None:
    prompts = ClassPrompts(("Aeroplane", "Bicycle", "Bird", "Potted_Plant"), VOC4, ())
    check_prompt_classes(prompts, VOC4, "voc", "VOC2012")  # no error


def test_check_prompt_classes_names_the_first_difference() -> None:
    msg = _check(("aeroplane", "bird", "bicycle", "potted plant"), VOC4)
    assert msg == (
        "prompts.dataset=P names 4 classes but the dataset (D) has 4, and class 2 is 'bird' in "
        "the prompts but 'bicycle' in the dataset; set prompts.dataset to the dataset's class "
        "list (a folder dataset: prompts.dataset=ROOT/classes.txt)"
    )
    # one list a prefix of the other: the first index past the shorter one, '<none>' there
    longer = _check(VOC4, VOC4[:3])
    assert "has 3, and class 4 is 'potted plant' in the prompts but '<none>' in the dataset" in (
        longer
    )
    shorter = _check(VOC4[:2], VOC4)
    assert "names 2 classes but the dataset (D) has 4, and class 3 is '<none>' in the prompts " in (
        shorter
    )
    assert shorter.endswith(
        "but 'bird' in the dataset; set prompts.dataset to the dataset's "
        "class list (a folder dataset: prompts.dataset=ROOT/classes.txt)"
    )


def _tiny_clip() -> tuple[CLIP, WordTokenizer]:
    tok = WordTokenizer(["a", "photo", "of", "cat", "dog", "sky"], context_length=8)
    text = word_text_config(tok, width=32, layers=1, heads=4)
    vision = ViTConfig(image_size=16, patch_size=8, width=16, layers=1, heads=2, output_dim=8)
    return CLIP(CLIPConfig(vision=vision, text=text, embed_dim=8)), tok


def test_an_empty_text_list_lives_on_the_model_device() -> None:
    clip, tok = _tiny_clip()
    with torch.device("meta"):  # another default device must not leak into the result
        empty = encode_texts(clip, tok, [])
    assert empty.shape == (0, 8) and empty.device == clip.logit_scale.device


def test_a_word_the_tokenizer_lacks_is_one_prompt_error() -> None:
    clip, tok = _tiny_clip()
    prompts = ClassPrompts(("zebra",), ("zebra",), ("sky",), "a photo of {}")
    with pytest.raises(PromptError) as info:
        encode_prompts(clip, tok, prompts)
    assert _message(info) == (
        "word 'zebra' (in 'a photo of zebra') is not in the tokenizer vocabulary: this CLIP "
        "(backbone.clip) cannot encode it; change prompts.template, prompts.background_words "
        "or the class names"
    )

    def bare(texts: Sequence[str]) -> torch.Tensor:
        raise KeyError  # a KeyError without arguments: the message keeps its own text

    with pytest.raises(PromptError) as info:
        encode_prompts(clip, bare, prompts)  # type: ignore[arg-type]
    assert _message(info).startswith(": this CLIP (backbone.clip) cannot encode it;")
