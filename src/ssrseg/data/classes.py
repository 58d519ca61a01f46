"""Class lists of the supported datasets (foreground only; index 0 of a mask is background).

A foreground class ``c`` (0-based) appears in masks as ``c + 1``; ``255`` is ignore.
"""

from __future__ import annotations

from collections.abc import Sequence

from ssrseg.errors import BadInputError

# PASCAL VOC 2012, in the order of the official devkit (mask value = index + 1).
VOC_CLASSES: tuple[str, ...] = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)

# MS COCO 2014: (category id in the instances JSON, name), sorted by category id. The 80 ids are
# not contiguous (12, 26, 29, 30, 45, 66, 68, 69, 71, 83 are unused); the converted masks of the
# field hold ``position in this list + 1``.
COCO_CATEGORIES: tuple[tuple[int, str], ...] = (
    (1, "person"),
    (2, "bicycle"),
    (3, "car"),
    (4, "motorcycle"),
    (5, "airplane"),
    (6, "bus"),
    (7, "train"),
    (8, "truck"),
    (9, "boat"),
    (10, "traffic light"),
    (11, "fire hydrant"),
    (13, "stop sign"),
    (14, "parking meter"),
    (15, "bench"),
    (16, "bird"),
    (17, "cat"),
    (18, "dog"),
    (19, "horse"),
    (20, "sheep"),
    (21, "cow"),
    (22, "elephant"),
    (23, "bear"),
    (24, "zebra"),
    (25, "giraffe"),
    (27, "backpack"),
    (28, "umbrella"),
    (31, "handbag"),
    (32, "tie"),
    (33, "suitcase"),
    (34, "frisbee"),
    (35, "skis"),
    (36, "snowboard"),
    (37, "sports ball"),
    (38, "kite"),
    (39, "baseball bat"),
    (40, "baseball glove"),
    (41, "skateboard"),
    (42, "surfboard"),
    (43, "tennis racket"),
    (44, "bottle"),
    (46, "wine glass"),
    (47, "cup"),
    (48, "fork"),
    (49, "knife"),
    (50, "spoon"),
    (51, "bowl"),
    (52, "banana"),
    (53, "apple"),
    (54, "sandwich"),
    (55, "orange"),
    (56, "broccoli"),
    (57, "carrot"),
    (58, "hot dog"),
    (59, "pizza"),
    (60, "donut"),
    (61, "cake"),
    (62, "chair"),
    (63, "couch"),
    (64, "potted plant"),
    (65, "bed"),
    (67, "dining table"),
    (70, "toilet"),
    (72, "tv"),
    (73, "laptop"),
    (74, "mouse"),
    (75, "remote"),
    (76, "keyboard"),
    (77, "cell phone"),
    (78, "microwave"),
    (79, "oven"),
    (80, "toaster"),
    (81, "sink"),
    (82, "refrigerator"),
    (84, "book"),
    (85, "clock"),
    (86, "vase"),
    (87, "scissors"),
    (88, "teddy bear"),
    (89, "hair drier"),
    (90, "toothbrush"),
)

COCO_CLASSES: tuple[str, ...] = tuple(name for _, name in COCO_CATEGORIES)

# category id -> 0-based foreground index
COCO_CATEGORY_TO_INDEX: dict[int, int] = {cid: i for i, (cid, _) in enumerate(COCO_CATEGORIES)}

BACKGROUND = "background"


def normalize_class_name(name: str) -> str:
    """Canonical form for matching tag names: lower case, ``_``/``-``/runs of spaces -> one space.

    So ``"Potted_Plant"`` matches ``"potted plant"``; ``"pottedplant"`` stays a different word.
    """
    return " ".join(name.replace("_", " ").replace("-", " ").lower().split())


# labelme's labels.txt begins with this line (then ``_background_``): not a class
IGNORE_LINE = "__ignore__"


def is_background_name(name: str) -> bool:
    """``background``, ``_background_`` (labelme), ``Background`` ...: the name of index 0."""
    return normalize_class_name(name) == BACKGROUND


def background_header_length(names: Sequence[str]) -> int:
    """How many leading entries of a class list are not foreground classes: any
    ``__ignore__`` lines, then one background entry. Every reader of class files (datasets,
    prompts) drops them, so one file counts the same classes everywhere."""
    k = 0
    while k < len(names) and names[k].strip() == IGNORE_LINE:
        k += 1
    if k < len(names) and is_background_name(names[k]):
        k += 1
    return k


def read_class_file(path: str) -> tuple[str, ...]:
    """Read foreground class names, one per line (blank lines and ``#`` comments skipped).

    Leading ``__ignore__`` lines and a first background entry (``background``,
    ``_background_``) are dropped: index 0 is always background.
    """
    try:
        with open(path, encoding="utf-8") as handle:
            lines = [line.split("#", 1)[0].strip() for line in handle]
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInputError(path, f"cannot read class-name file: {exc}") from None
    names = [line for line in lines if line]
    names = names[background_header_length(names) :]
    if not names:
        raise BadInputError(path, "class-name file lists no classes")
    canon = [normalize_class_name(n) for n in names]
    dupes = sorted({n for n in canon if canon.count(n) > 1})
    if dupes:
        raise BadInputError(path, f"class names listed twice: {', '.join(dupes)}")
    return tuple(names)
