"""Text side of Grad-CAM: class prompt strings, background words and the template, as data.

A :class:`ClassPrompts` holds, for C foreground classes, the display ``names`` (what tables
print), the ``prompts`` fed to the template (a class string with its synonyms merged, CLIP-ES
style: ``"person with clothes,people,human"``) and G background words that join the softmax
(SSR_SPEC section 2). :func:`encode_prompts` turns them into L2-normalised embeddings.

Sources: :meth:`ClassPrompts.voc`, :meth:`ClassPrompts.coco`, :meth:`ClassPrompts.from_toy_root`
(a toy-world root's ``classes.txt`` / ``backgrounds.txt``) and :meth:`ClassPrompts.from_file`
(a user's class list). :func:`prompts_from_config` picks one from ``cfg.prompts``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from ssrseg.backbones.clip import CLIP
from ssrseg.backbones.tokenizer import Tokenizer
from ssrseg.data.classes import background_header_length, normalize_class_name
from ssrseg.data.toy import BACKGROUNDS, CLASS_NAMES

DEFAULT_TEMPLATE = "a clean origami {}."  # [CLIP-ES]

# [CLIP-ES] VOC class strings with synonyms merged, in VOC order (display name, prompt string).
VOC_PROMPTS: tuple[tuple[str, str], ...] = (
    ("aeroplane", "aeroplane"),
    ("bicycle", "bicycle"),
    ("bird", "bird avian"),
    ("boat", "boat"),
    ("bottle", "bottle"),
    ("bus", "bus"),
    ("car", "car"),
    ("cat", "cat"),
    ("chair", "chair seat"),
    ("cow", "cow"),
    ("diningtable", "diningtable"),
    ("dog", "dog"),
    ("horse", "horse"),
    ("motorbike", "motorbike"),
    ("person", "person with clothes,people,human"),
    ("pottedplant", "pottedplant"),
    ("sheep", "sheep"),
    ("sofa", "sofa"),
    ("train", "train"),
    ("tvmonitor", "tvmonitor screen"),
)

# [CLIP-ES] the 25 VOC background words.
VOC_BACKGROUND: tuple[str, ...] = (
    "ground", "land", "grass", "tree", "building", "wall", "sky", "lake", "water", "river",
    "sea", "railway", "railroad", "keyboard", "helmet", "cloud", "house", "mountain", "ocean",
    "road", "rock", "street", "valley", "bridge", "sign",
)  # fmt: skip

# [CLIP-ES] COCO drops "keyboard" (a COCO class) and "sign": 23 words.
COCO_BACKGROUND: tuple[str, ...] = tuple(w for w in VOC_BACKGROUND if w not in ("keyboard", "sign"))

# [CLIP-ES] the 80 COCO classes in the standard order; synonyms merged for a few.
_COCO_SYNONYMS = {
    "person": "person with clothes,people,human",
    "bird": "bird avian",
    "backpack": "backpack,bag",
    "umbrella": "umbrella,parasol",
    "handbag": "handbag,purse",
    "tie": "necktie",
    "chair": "chair seat",
    "couch": "sofa",
    "potted plant": "pottedplant",
    "dining table": "diningtable",
    "tv": "tvmonitor screen",
    "motorcycle": "motorbike",
    "airplane": "aeroplane",
    "hair drier": "hairdrier,blowdrier",
    "spoon": "dessertspoon",
    "remote": "remote control",
    "baseball glove": "glove",
}
_COCO_NAMES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich",
    "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote",
    "keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book",
    "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip
COCO_PROMPTS: tuple[tuple[str, str], ...] = tuple(
    (n, _COCO_SYNONYMS.get(n, n)) for n in _COCO_NAMES
)


class PromptError(ValueError):
    """A prompt file is missing or malformed (the message names the file)."""


@dataclass(frozen=True)
class ClassPrompts:
    """Class prompt strings, background words and the template.

    names: C display names. prompts: C strings put into the template (synonyms merged with
    commas or spaces, as CLIP-ES writes them). background: G background words (may be empty).
    """

    names: tuple[str, ...]
    prompts: tuple[str, ...]
    background: tuple[str, ...]
    template: str = DEFAULT_TEMPLATE

    def __post_init__(self) -> None:
        if len(self.names) != len(self.prompts):
            raise PromptError(f"{len(self.names)} class names but {len(self.prompts)} prompts")
        if not self.names:
            raise PromptError("no foreground classes")
        if "{}" not in self.template:
            raise PromptError(f"template {self.template!r} has no '{{}}' placeholder")

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def class_texts(self) -> list[str]:
        """The C template-filled class sentences."""
        return [self.template.format(p) for p in self.prompts]

    def background_texts(self) -> list[str]:
        """The G template-filled background sentences."""
        return [self.template.format(w) for w in self.background]

    @classmethod
    def from_table(
        cls, table: Sequence[tuple[str, str]], background: Sequence[str]
    ) -> ClassPrompts:
        """From ``(class name, prompt)`` pairs and the background words."""
        return cls(
            names=tuple(n for n, _ in table),
            prompts=tuple(p for _, p in table),
            background=tuple(background),
        )

    @classmethod
    def voc(cls) -> ClassPrompts:
        return cls.from_table(VOC_PROMPTS, VOC_BACKGROUND)

    @classmethod
    def coco(cls) -> ClassPrompts:
        return cls.from_table(COCO_PROMPTS, COCO_BACKGROUND)

    @classmethod
    def from_toy_root(cls, root: str | os.PathLike[str]) -> ClassPrompts:
        """A toy-world root: ``classes.txt`` (required) and ``backgrounds.txt`` (optional)."""
        root = Path(root)
        classes = _read_lines(root / "classes.txt")
        classes = classes[background_header_length(classes) :]
        bg_path = root / "backgrounds.txt"
        background = tuple(_read_lines(bg_path)) if bg_path.is_file() else ()
        return cls(names=tuple(classes), prompts=tuple(classes), background=background)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> ClassPrompts:
        """A user class list: one class per line, ``name`` or ``name: prompt string``.

        Lines after a line ``[background]`` are background words; without that section the
        generic COCO list (23 words) is used. Blank lines and lines starting with ``#`` are
        skipped.
        """
        path = Path(path)
        names: list[str] = []
        prompts: list[str] = []
        background: list[str] = []
        in_background = False
        for number, line in enumerate(_read_lines(path, keep_sections=True), start=1):
            if line.lower() == "[background]":
                in_background = True
                continue
            if in_background:
                background.append(line)
                continue
            name, sep, prompt = line.partition(":")
            name, prompt = name.strip(), prompt.strip()
            if not name or (sep and not prompt):
                raise PromptError(f"{path}: line {number} {line!r} is not 'name' or 'name: prompt'")
            names.append(name)
            prompts.append(prompt or name)
        # the same header rule as dataset class files (``_background_`` first, labelme)
        skip = background_header_length(names)
        names, prompts = names[skip:], prompts[skip:]
        if len(set(names)) != len(names):
            raise PromptError(f"{path}: duplicate class names")
        bg = tuple(background) if in_background else COCO_BACKGROUND
        return cls(names=tuple(names), prompts=tuple(prompts), background=bg)


def _read_lines(path: Path, keep_sections: bool = False) -> list[str]:
    if not path.is_file():
        raise PromptError(f"{path}: prompt file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PromptError(f"{path}: cannot read ({exc})") from None
    lines = [ln.strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    if not lines:
        raise PromptError(f"{path}: file is empty")
    return lines


def prompts_from_config(
    dataset: str,
    template: str = DEFAULT_TEMPLATE,
    background_words: Sequence[str] | None = None,
    use_background_words: bool = True,
    data_root: str | os.PathLike[str] | None = None,
) -> ClassPrompts:
    """Build prompts from the ``cfg.prompts`` fields.

    dataset: ``voc`` | ``coco`` | ``toy`` (reads ``data_root``'s classes.txt/backgrounds.txt,
    else ``ssrseg.data.toy`` constants) | a path to a class file (:meth:`ClassPrompts.from_file`).
    background_words: overrides the dataset's list; ``use_background_words=False`` empties it.
    """
    if dataset == "voc":
        prompts = ClassPrompts.voc()
    elif dataset == "coco":
        prompts = ClassPrompts.coco()
    elif dataset == "toy":
        prompts = _toy_prompts(data_root)
    else:
        prompts = ClassPrompts.from_file(dataset)
    if background_words is not None:
        prompts = replace(prompts, background=tuple(background_words))
    if not use_background_words:
        prompts = replace(prompts, background=())
    elif not prompts.background:
        where = Path(data_root or ".") / "backgrounds.txt" if dataset == "toy" else dataset
        raise PromptError(
            f"prompts.dataset={dataset}: no background words ({where} gives none); write them "
            "(backgrounds.txt, one per line, or a [background] section in a class file), set "
            "prompts.background_words=[...], or prompts.use_background_words=false"
        )
    return replace(prompts, template=template)


def check_prompt_classes(
    prompts: ClassPrompts, class_names: Sequence[str], prompt_source: str, data_source: str
) -> None:
    """Refuse prompts whose classes are not the dataset's, by name and order (a count alone
    would let a run label one class's pixels with another class's prompt)."""
    mine = [normalize_class_name(n) for n in prompts.names]
    theirs = [normalize_class_name(n) for n in class_names]
    if mine == theirs:
        return
    differ = next(
        (i for i, (a, b) in enumerate(zip(mine, theirs, strict=False)) if a != b),
        min(len(mine), len(theirs)),
    )
    a = prompts.names[differ] if differ < len(mine) else "<none>"
    b = class_names[differ] if differ < len(theirs) else "<none>"
    raise PromptError(
        f"prompts.dataset={prompt_source} names {len(mine)} classes but the dataset "
        f"({data_source}) has {len(theirs)}, and class {differ + 1} is {a!r} in the prompts but "
        f"{b!r} in the dataset; set prompts.dataset to the dataset's class list (a folder "
        "dataset: prompts.dataset=ROOT/classes.txt)"
    )


def _toy_prompts(data_root: str | os.PathLike[str] | None) -> ClassPrompts:
    """The toy world's classes: the root's files when present, else the generator's constants."""
    if data_root is not None and (Path(data_root) / "classes.txt").is_file():
        return ClassPrompts.from_toy_root(data_root)

    return ClassPrompts(names=CLASS_NAMES, prompts=CLASS_NAMES, background=BACKGROUNDS)


def encode_texts(clip: CLIP, tokenizer: Tokenizer, texts: Sequence[str]) -> Tensor:
    """Template-filled texts -> L2-normalised text embeddings ``T x E`` (float32)."""
    # a `with` block, not the decorator: mutmut skips decorated functions (make mutants)
    with torch.no_grad():
        if not texts:
            return torch.zeros(0, clip.cfg.embed_dim, device=clip.logit_scale.device)
        tokens = tokenizer(list(texts)).to(clip.logit_scale.device)
        return F.normalize(clip.encode_text(tokens).float(), dim=-1)


def encode_prompts(
    clip: CLIP, tokenizer: Tokenizer, prompts: ClassPrompts
) -> tuple[Tensor, Tensor]:
    """One embedding per class from the template on the full class string (synonyms included,
    CLIP-ES), and one per background word: ``(C x E, G x E)``, L2-normalised."""
    try:
        return (
            encode_texts(clip, tokenizer, prompts.class_texts()),
            encode_texts(clip, tokenizer, prompts.background_texts()),
        )
    except KeyError as exc:
        # a tiny model's word vocabulary: one line naming the word and what to change
        raise PromptError(
            f"{exc.args[0] if exc.args else exc}: this CLIP (backbone.clip) cannot encode it; "
            "change prompts.template, prompts.background_words or the class names"
        ) from None
