"""``ssrseg tags``: write an image-level tag file from a dataset's annotations.

VOC: the ``<object>`` names of ``Annotations/<id>.xml``; COCO: the categories of the instances
JSON. Never from segmentation masks. Output: JSON ``{image_id: [class names]}`` or CSV (by the
``--out`` suffix), readable by every dataset's ``tag_file``.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from ssrseg.commands.common import refuse_overlap

if TYPE_CHECKING:
    from ssrseg.data.base import SkipLog

# lazy: `ssrseg --help` imports every command module, so the library (and torch) is imported
# inside the functions that run a command.


def add_parser(sub: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(name, help=help_text, description=help_text)
    p.add_argument("--dataset", choices=("voc", "coco"), default="voc")
    p.add_argument("--root", required=True, help="dataset root (see docs/datasets.md)")
    p.add_argument("--split", default="train_aug", help="split whose ids get tags")
    p.add_argument("--out", required=True, help="tag file to write (.json or .csv)")
    p.add_argument("--instances", default=None, help="COCO instances JSON (default: derived)")
    p.add_argument(
        "--no-difficult", action="store_true", help="VOC: leave out objects marked difficult"
    )
    p.add_argument(
        "--allow-skipped", action="store_true", help="exit 0 even if some images got no tags"
    )
    return p


def collect_tags(args: argparse.Namespace, skip_log: SkipLog) -> dict[str, list[str]]:
    """``{image_id: [class names]}`` for the split; images without tags go to ``skip_log``."""
    from ssrseg.data import BadInputError, build_dataset

    kwargs: dict[str, Any] = {"require_labels": True, "with_masks": False}
    if args.dataset == "voc":
        kwargs["include_difficult"] = not args.no_difficult
    else:
        kwargs["instances"] = args.instances
    dataset = build_dataset(args.dataset, args.root, args.split, **kwargs)
    tags: dict[str, list[str]] = {}
    for index, image_id in enumerate(dataset.ids):
        try:
            labels = dataset.labels(index)  # validates the id, names and non-empty tags
        except BadInputError as exc:
            skip_log.skip(image_id, exc)
            continue
        tags[image_id] = [dataset.class_names[c] for c in labels]
    return tags


def run(args: argparse.Namespace) -> int:
    from ssrseg.data.base import SkipLog
    from ssrseg.data.tags import write_tag_file

    # the tag file never goes into the dataset (it could replace the dataset's own tags.json)
    refuse_overlap(args.out, "--out", [("dataset folder (--root)", args.root)])
    skip_log = SkipLog()
    tags = collect_tags(args, skip_log)  # a dataset that cannot be opened: one line, exit 2
    write_tag_file(args.out, tags)
    print(f"wrote tags of {len(tags)} images to {args.out}")
    skip_log.report()
    return skip_log.exit_code(args.allow_skipped)
