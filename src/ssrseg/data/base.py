"""Dataset base: samples, robust image/mask reading, bad-input errors and the skip log.

Every problem a user's files can have becomes a :class:`BadInputError` naming the file and the
problem. Batch jobs iterate with :func:`iter_valid`, which logs such errors in a :class:`SkipLog`
and goes on; at the end ``skip_log.report()`` lists what was skipped and
``skip_log.exit_code(allow_skipped)`` makes the job fail unless skipping was allowed.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ssrseg.data.classes import normalize_class_name
from ssrseg.data.tags import Tags, read_tag_file
from ssrseg.errors import BadInputError
from ssrseg.viz import palette

log = logging.getLogger("ssrseg.data")

IGNORE_INDEX = 255
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG")
# Exit status of a job that skipped inputs without --allow-skipped.
EXIT_SKIPPED = 3


@dataclass
class Sample:
    """One dataset item.

    image: H x W x 3 uint8 RGB; labels: 0-based foreground class indices (sorted, unique);
    mask: H x W uint8 (0 background, c + 1 class c, 255 ignore) or None when the split has none;
    notes: conversions applied while reading (e.g. "converted CMYK to RGB").
    """

    image_id: str
    image: np.ndarray
    labels: tuple[int, ...]
    mask: np.ndarray | None
    path: str
    notes: tuple[str, ...] = ()


# ----------------------------------------------------------------------------------------------
# Reading images and masks


def _check_file(path: str | os.PathLike[str], what: str) -> None:
    """Missing and 0-byte files get their own words (PIL says "cannot identify image file")."""
    if not os.path.isfile(path):
        raise BadInputError(path, f"{what} file not found")
    if os.path.getsize(path) == 0:
        raise BadInputError(path, f"empty file (0 bytes), not an {what}: replace or remove it")


def _open(path: str | os.PathLike[str], what: str) -> Image.Image:
    _check_file(path, what)
    try:
        img = Image.open(path)
        img.load()  # decode now so truncated files fail here, not later in a worker
    except (
        OSError,
        UnidentifiedImageError,
        SyntaxError,
        ValueError,
        Image.DecompressionBombError,
    ) as exc:
        raise BadInputError(path, f"cannot read {what} ({type(exc).__name__}: {exc})") from None
    return img


def _to_uint8_gray(arr: np.ndarray) -> tuple[np.ndarray, str | None]:
    """Map a high-bit-depth single-channel array to uint8 (16-bit: divide by 257)."""
    if arr.dtype == np.uint8:
        return arr, None
    if np.issubdtype(arr.dtype, np.floating):
        finite = np.nan_to_num(arr.astype(np.float64))
        scale = 255.0 if finite.max(initial=0.0) <= 1.0 else 1.0
        return np.clip(finite * scale, 0, 255).round().astype(np.uint8), "float image"
    # PIL reports 16-bit PNGs as mode "I;16" or "I"; values up to 65535.
    big = arr.astype(np.int64)
    if big.max(initial=0) > 255 or arr.dtype == np.uint16:
        return np.clip(big / 257.0, 0, 255).round().astype(np.uint8), "16-bit image"
    return np.clip(big, 0, 255).astype(np.uint8), "32-bit integer image"


def read_image(path: str | os.PathLike[str], notes: list[str] | None = None) -> np.ndarray:
    """Read an image as H x W x 3 uint8 RGB.

    Grayscale, palette, RGBA/LA (alpha dropped), CMYK, YCbCr and 16-bit / float images are
    converted; each conversion appends a note to ``notes`` (if given) and is logged at INFO.
    Raises :class:`BadInputError` for missing, unreadable or truncated files.
    """
    img = _open(path, "image")
    mode = img.mode
    note: str | None = None
    if mode == "RGB":
        arr = np.asarray(img, dtype=np.uint8)
    elif mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        gray, kind = _to_uint8_gray(np.asarray(img))
        arr = np.repeat(gray[:, :, None], 3, axis=2)
        note = f"converted {kind or mode} (mode {mode}) to 8-bit RGB"
    else:
        if mode in ("P", "PA") and "transparency" in img.info:
            img = img.convert("RGBA")
        arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
        if mode != "RGB":
            kinds = {"L": "grayscale", "1": "1-bit", "P": "palette", "RGBA": "RGBA", "LA": "LA"}
            detail = " (alpha dropped)" if "A" in mode else ""
            note = f"converted {kinds.get(mode, mode)} image to RGB{detail}"
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise BadInputError(path, f"image has unusable shape {arr.shape}")
    if note:
        log.info("%s: %s", path, note)
        if notes is not None:
            notes.append(note)
    # np.asarray over a PIL image is read-only, and torch.from_numpy warns about such arrays
    return np.ascontiguousarray(arr) if arr.flags.writeable else np.array(arr, order="C")


def image_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """(height, width) from the file header, without decoding the pixels."""
    _check_file(path, "image")
    try:
        with Image.open(path) as img:
            width, height = img.size
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
        raise BadInputError(path, f"cannot read image ({type(exc).__name__}: {exc})") from None
    return height, width


def read_mask(
    path: str | os.PathLike[str],
    num_classes: int | None = None,
    palette: np.ndarray | None = None,
) -> np.ndarray:
    """Read a label PNG as H x W uint8 class indices (palette PNG or plain index PNG).

    An RGB colour mask is mapped back to indices through ``palette`` (256 x 3; colours not in
    the palette are an error). With ``num_classes``, values other than ``0..num_classes-1`` and
    255 are an error naming the file.
    """
    img = _open(path, "mask")
    if img.mode in ("P", "L"):
        arr = np.asarray(img, dtype=np.uint8)
    elif img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        raw = np.asarray(img).astype(np.int64)
        if raw.max(initial=0) > 255 or raw.min(initial=0) < 0:
            raise BadInputError(path, f"mask values {raw.min()}..{raw.max()} do not fit 0..255")
        arr = raw.astype(np.uint8)
    elif img.mode in ("RGB", "RGBA"):
        if palette is None:
            raise BadInputError(path, "colour (RGB) mask given but no palette to decode it")
        arr = _decode_colour_mask(np.asarray(img.convert("RGB")), palette, str(path))
    else:
        raise BadInputError(path, f"mask has unsupported PNG mode {img.mode}")
    if num_classes is not None:
        bad = (arr >= num_classes) & (arr != IGNORE_INDEX)
        if bad.any():
            values = sorted({int(v) for v in np.unique(arr[bad])})[:8]
            raise BadInputError(
                path,
                f"mask holds values {values} outside 0..{num_classes - 1} and {IGNORE_INDEX}",
            )
    return np.ascontiguousarray(arr)


def _decode_colour_mask(rgb: np.ndarray, palette: np.ndarray, where: str) -> np.ndarray:
    """H x W x 3 colours -> H x W indices; the first palette entry of a colour wins."""
    codes = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    pal = palette.astype(np.int64)
    pal_codes = (pal[:, 0] << 16) | (pal[:, 1] << 8) | pal[:, 2]
    lookup: dict[int, int] = {}
    for index in range(len(pal_codes) - 1, -1, -1):
        lookup[int(pal_codes[index])] = index
    uniq, inverse = np.unique(codes, return_inverse=True)
    out = np.empty(len(uniq), dtype=np.uint8)
    for k, code in enumerate(uniq):
        if int(code) not in lookup:
            colour = ((code >> 16) & 255, (code >> 8) & 255, code & 255)
            raise BadInputError(where, f"colour mask holds colour {colour} not in the palette")
        out[k] = lookup[int(code)]
    return out[inverse.reshape(codes.shape)]


# ----------------------------------------------------------------------------------------------
# Ids and list files


def check_image_id(image_id: str, list_file: str | os.PathLike[str]) -> None:
    """Reject ids that could leave the dataset root (``..``, absolute paths, separators)."""
    if (
        not image_id
        or image_id in (".", "..")
        or ".." in image_id
        or "/" in image_id
        or "\\" in image_id
        or "\x00" in image_id
        or os.path.isabs(image_id)
        or (len(image_id) > 1 and image_id[1] == ":")
    ):
        raise BadInputError(
            list_file,
            f"id {image_id!r} is not a plain file name (path separators, '..' or absolute paths "
            "would leave the dataset root)",
            image_id=image_id,
        )


def read_id_list(path: str | os.PathLike[str]) -> list[str]:
    """Ids from a list file: one per line, first whitespace-separated field (VOC style);
    blank lines and ``#`` comments are skipped. Ids are *not* validated here (see
    :func:`check_image_id`): one bad line skips one item, not the whole split."""
    if not os.path.isfile(path):
        raise BadInputError(path, "split list file not found")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInputError(path, f"cannot read split list ({exc})") from None
    ids: list[str] = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            ids.append(line.split()[0])
    return ids


def first_file(candidates: Iterable[Path]) -> Path | None:
    """The first of ``candidates`` that is a file (list files are looked up in several places)."""
    return next((path for path in candidates if path.is_file()), None)


def open_tags(
    tag_file: str | os.PathLike[str] | None,
    class_names: Sequence[str],
    own_source: str | os.PathLike[str],
    *,
    need_own: bool,
    missing: str,
) -> tuple[Tags | None, str]:
    """The tags of a dataset: ``(tags read from tag_file, its path)`` when a tag file is given,
    else ``(None, own_source)`` (the dataset's own annotations, read by the dataset). With
    ``need_own`` (labels required, no tag file) a missing ``own_source`` is bad input saying
    ``missing``."""
    if tag_file is not None:
        return read_tag_file(tag_file, class_names), str(tag_file)
    if need_own and not Path(own_source).exists():
        raise BadInputError(own_source, missing)
    return None, str(own_source)


def find_image(folder: Path, image_id: str) -> Path:
    """``folder/<id>.<ext>`` for the first existing extension in :data:`IMAGE_EXTENSIONS`
    (an id that already ends in an extension is taken as is); the ``.jpg`` path if none."""
    if Path(image_id).suffix in IMAGE_EXTENSIONS:
        return folder / image_id
    for ext in IMAGE_EXTENSIONS:
        candidate = folder / f"{image_id}{ext}"
        if candidate.is_file():
            return candidate
    return folder / f"{image_id}.jpg"


# ----------------------------------------------------------------------------------------------
# Datasets


def resolve_labels(
    names: Sequence[str] | None,
    class_names: Sequence[str],
    where: str,
    image_id: str,
) -> tuple[int, ...]:
    """Tag names -> sorted unique 0-based foreground indices; unknown names raise."""
    if names is None:
        raise BadInputError(where, f"image {image_id!r} has no entry in the tags", image_id)
    index = {normalize_class_name(n): i for i, n in enumerate(class_names)}
    out: set[int] = set()
    unknown = []
    for name in names:
        key = normalize_class_name(str(name))
        if key == "background" or not key:
            continue
        if key not in index:
            unknown.append(str(name))
        else:
            out.add(index[key])
    if unknown:
        raise BadInputError(
            where,
            f"image {image_id!r} is tagged with unknown class(es) {unknown} "
            f"(known: {', '.join(class_names)})",
            image_id,
        )
    return tuple(sorted(out))


class SegDataset(torch.utils.data.Dataset[Sample]):
    """Base of all datasets: ids, class names, tags, optional masks.

    Subclasses set ``root``, ``split``, ``class_names``, ``ids``, ``list_file`` and implement
    :meth:`image_path`, :meth:`mask_path` and :meth:`raw_tags`. ``__getitem__`` raises
    :class:`BadInputError` for any bad input; wrap loops in :func:`iter_valid`.

    Args (common to subclasses):
        min_size: images whose shorter side is below this (e.g. the backbone's patch size) are
            bad input; 0 disables the check.
        require_labels: images without tags (or with an empty tag list) are bad input. Off for
            evaluation / inference, where only pixels matter.
    """

    name = "dataset"
    palette_name = "voc"
    # True: a missing mask is bad input; None: masks where present; False: no masks
    with_masks: bool | None = None

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str,
        class_names: Sequence[str],
        ids: list[str],
        list_file: str | os.PathLike[str],
        *,
        min_size: int = 0,
        require_labels: bool = True,
        tag_source: str = "",
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.class_names: tuple[str, ...] = tuple(class_names)
        self.ids: list[str] = list(ids)
        self.list_file = str(list_file)
        self.min_size = int(min_size)
        self.require_labels = require_labels
        self.tag_source = tag_source

    @property
    def num_classes(self) -> int:
        """Foreground classes + background."""
        return len(self.class_names) + 1

    def __len__(self) -> int:
        return len(self.ids)

    # hooks ------------------------------------------------------------------------------------
    def image_path(self, image_id: str) -> Path:
        raise NotImplementedError

    def mask_path(self, image_id: str) -> Path | None:
        """Path of the ground-truth mask, or None when this split has no masks."""
        raise NotImplementedError

    def raw_tags(self, image_id: str) -> list[str] | None:
        """Tag names of an image (None: the tag source has no entry for it)."""
        raise NotImplementedError

    @property
    def has_masks(self) -> bool:
        return bool(self.ids) and self.mask_path(self.ids[0]) is not None

    def mask_in(self, path: Path) -> Path | None:
        """``path`` as the mask of an item under :attr:`with_masks`: None when masks are off,
        or when the file is absent and masks are optional."""
        if self.with_masks is False:
            return None
        return path if path.is_file() or self.with_masks else None

    def tag_location(self, image_id: str) -> str:
        """The file named in tag errors for ``image_id``."""
        return self.tag_source

    # shared logic -----------------------------------------------------------------------------
    def no_tags_reason(self, image_id: str) -> str:
        """What to say of an image that the tags leave out."""
        return f"image {image_id!r} has no entry in the tags"

    def checked_id(self, index: int) -> str:
        image_id = self.ids[index]
        check_image_id(image_id, self.list_file)
        return image_id

    def labels(self, index: int) -> tuple[int, ...]:
        """Validated 0-based foreground labels of item ``index`` (BadInputError if unusable)."""
        image_id = self.checked_id(index)
        names = self.raw_tags(image_id)
        if names is None and not self.require_labels:
            return ()
        where = self.tag_location(image_id)
        if names is None:
            raise BadInputError(where, self.no_tags_reason(image_id), image_id)
        labels = resolve_labels(names, self.class_names, where, image_id)
        if not labels and self.require_labels:
            raise BadInputError(where, f"image {image_id!r} has no (foreground) tags", image_id)
        return labels

    def load_mask(self, index: int) -> np.ndarray | None:
        """Ground-truth mask of item ``index`` (H x W uint8) or None if the split has none."""
        image_id = self.checked_id(index)
        path = self.mask_path(image_id)
        if path is None:
            return None
        try:
            return read_mask(path, self.num_classes, palette(self.palette_name))
        except BadInputError as exc:
            exc.image_id = image_id
            raise

    def image_size(self, index: int) -> tuple[int, int]:
        """(H, W) of item ``index`` read from the file header."""
        return image_size(self.image_path(self.checked_id(index)))

    def __getitem__(self, index: int) -> Sample:
        image_id = self.checked_id(index)
        path = self.image_path(image_id)
        notes: list[str] = []
        try:
            if not path.is_file():  # before the tags: a missing image is not a tag problem
                raise BadInputError(path, "image file not found")
            labels = self.labels(index)
            image = read_image(path, notes)
            h, w = image.shape[:2]
            if self.min_size and min(h, w) < self.min_size:
                raise BadInputError(
                    path, f"image is {w}x{h} pixels, smaller than one patch ({self.min_size} px)"
                )
            mask = self.load_mask(index)
            if mask is not None and mask.shape != (h, w):
                raise BadInputError(
                    str(self.mask_path(image_id)),
                    f"mask is {mask.shape[1]}x{mask.shape[0]} but its image {path.name} is {w}x{h}",
                )
        except BadInputError as exc:
            exc.image_id = image_id
            raise
        return Sample(image_id, image, labels, mask, str(path), tuple(notes))


# ----------------------------------------------------------------------------------------------
# Skipping bad inputs


@dataclass
class SkipLog:
    """Collects inputs a job skipped (and conversion notes) and reports them at the end."""

    skipped: list[tuple[str, str]] = field(default_factory=list)  # (image id, message)
    notes: list[tuple[str, str]] = field(default_factory=list)  # (path, note)

    def skip(self, image_id: str, error: BadInputError | str) -> None:
        message = str(error)
        self.skipped.append((image_id, message))
        log.warning("skipped %s: %s", image_id, message)

    def note(self, path: str, note: str) -> None:
        self.notes.append((path, note))

    def __len__(self) -> int:
        return len(self.skipped)

    def report(self, stream: TextIO | None = None) -> str:
        """Print (to stderr by default) and return the summary of skipped items and notes."""
        lines: list[str] = []
        if self.notes:
            lines.append(f"{len(self.notes)} image(s) were converted while reading:")
            lines += [f"  {path}: {note}" for path, note in self.notes[:50]]
            if len(self.notes) > 50:
                lines.append(f"  ... and {len(self.notes) - 50} more")
        if self.skipped:
            lines.append(f"{len(self.skipped)} item(s) were SKIPPED because of bad input:")
            lines += [f"  {image_id}: {message}" for image_id, message in self.skipped]
        text = "\n".join(lines)
        if text:
            print(text, file=stream if stream is not None else sys.stderr)
        return text

    def exit_code(self, allow_skipped: bool) -> int:
        """0 if nothing was skipped or skipping is allowed, else :data:`EXIT_SKIPPED`."""
        if self.skipped and not allow_skipped:
            print(
                f"error: {len(self.skipped)} item(s) skipped; fix them or pass --allow-skipped "
                "(config data.allow_skipped=true) to accept the result",
                file=sys.stderr,
            )
            return EXIT_SKIPPED
        return 0


def iter_valid(
    dataset: SegDataset,
    skip_log: SkipLog,
    indices: Iterable[int] | None = None,
    progress: bool = False,
    desc: str | None = None,
) -> Iterator[Sample]:
    """Yield the samples of ``dataset`` that load; log the others in ``skip_log``."""
    order: Iterable[int] = range(len(dataset)) if indices is None else indices
    if progress:
        from tqdm import tqdm

        order = tqdm(list(order), desc=desc or f"{dataset.name} {dataset.split}")
    for index in order:
        try:
            sample = dataset[index]
        except BadInputError as exc:
            skip_log.skip(exc.image_id or dataset.ids[index], exc)
            continue
        for note in sample.notes:
            skip_log.note(sample.path, note)
        yield sample


@dataclass
class Skipped:
    """Placeholder a :class:`SafeDataset` returns for a bad item (picklable for workers)."""

    image_id: str
    message: str


class SafeDataset(torch.utils.data.Dataset[Any]):
    """Wraps a dataset for DataLoader workers: bad items come back as :class:`Skipped`
    instead of raising, optionally after ``transform(sample)``; collate functions drop them
    and report them under ``"skipped"``."""

    def __init__(self, dataset: SegDataset, transform: Callable[[Sample], Any] | None = None):
        self.dataset = dataset
        self.transform = transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        try:
            sample = self.dataset[index]
        except BadInputError as exc:
            return Skipped(exc.image_id or self.dataset.ids[index], str(exc))
        return self.transform(sample) if self.transform is not None else sample
