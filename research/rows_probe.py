"""Table 3 rows of candidate toy backbones, scored on training images the demo never scores.

``python -m research.rows_probe --root runs/demo/data --clip FILE [--dino FILE] [overrides]``

Choosing backbones, layers or thresholds on the scored images would be tuning on them (issue
11's rule), so this scores the Table 3 seed rows (initial CAM, + CLIP attention, + DINO
attention, + SGC, + PAR; the demo's definitions in :data:`ssrseg.protocol.cam_rows.TABLE3_ROWS`)
on train images ``--first``..``--first + --n - 1`` (default 100..299; the demo scores 0..99) of
a rendered toy world, with the toy preset and the given backbones. Prints one JSON line: each
row's mIoU, precision and recall (in %), and the per-class IoU of the initial CAM.
``--mask-shares`` prints instead where the box and SGC column masks lie (on the home context's
background or on the object); ``--cam-figure`` draws one class's initial CAM per CLIP.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from ssrseg.config import load_config
from ssrseg.data import build_dataset
from ssrseg.protocol.cam_rows import TABLE3_ROWS, label_samples, row_labeler, score_labeler
from ssrseg.protocol.demo import default_config_path
from ssrseg.pseudo.labeler import build_pseudo_labeler
from ssrseg.toy.diagnostics import caption_contexts, home_contexts
from ssrseg.viz import make_panel

if TYPE_CHECKING:
    from ssrseg.config import SSRConfig
    from ssrseg.pseudo.labeler import PseudoLabeler


def preset_labeler(config: str | None, overrides: Sequence[str]) -> tuple[SSRConfig, PseudoLabeler]:
    """(the preset ``config`` (default configs/toy.yaml) with ``overrides``, its pseudo
    labeller on the CPU): the base every probe here derives its rows' labellers from."""
    cfg = load_config(config or default_config_path(), list(overrides))
    return cfg, build_pseudo_labeler(cfg, "cpu")


def score_candidate(
    root: str,
    overrides: Sequence[str],
    indices: Sequence[int],
    rows: Sequence[str] = (),
    config: str | None = None,
    batch: int = 16,
) -> dict[str, Any]:
    """mIoU / P / R (%) of each Table 3 row (all, or those whose name contains one of
    ``rows``) on ``indices`` of the toy ``train`` split under ``root``."""
    cfg, base = preset_labeler(config, overrides)
    dataset = build_dataset("toy", root, "train")
    out: dict[str, Any] = {"images": f"train {indices[0]}..{indices[-1]}", "rows": {}}
    for name, row in TABLE3_ROWS:
        if rows and not any(r in name for r in rows):
            continue
        labeler = row_labeler(base, cfg, row)
        result = score_labeler(labeler, dataset, indices, batch, progress=False).compute()
        out["rows"][name] = {
            k: round(100 * float(result[k]), 2) for k in ("miou", "precision", "recall")
        }
        if name == "initial CAM":
            out["initial_cam_class_iou"] = [round(100 * float(v), 1) for v in result["iou"]]
    return out


def mask_shares(
    mask: np.ndarray,
    gt: np.ndarray,
    labels: Sequence[int],
    context: str | None,
    homes: dict[int, str | None],
) -> dict[str, np.ndarray]:
    """One image's column masks against its truth: per place ("home": the image shows the
    class's home context, "elsewhere"), the sums over its classes of (mask weight on
    ground-truth background, mask weight, mask weight on the class's own pixels, the class's
    pixels), each in patch units.

    mask: ``K x h x w`` (one column mask per class, ``labels`` order, on the patch grid); gt:
    ``H x W`` (0 background, c + 1 class c; H, W multiples of h, w); classes without a home
    are skipped."""
    k, h, w = mask.shape
    height, width = gt.shape
    ph, pw = height // h, width // w

    def per_patch(binary: np.ndarray) -> np.ndarray:  # H x W -> h x w share of each patch
        return binary.reshape(h, ph, w, pw).mean(axis=(1, 3))

    background = per_patch(gt == 0)
    out = {"home": np.zeros(4), "elsewhere": np.zeros(4)}
    for j, c in enumerate(labels[:k]):
        home = homes.get(c)
        if home is None:
            continue
        own = per_patch(gt == c + 1)
        m = mask[j].astype(np.float64)
        where = "home" if context == home else "elsewhere"
        out[where] += [(m * background).sum(), m.sum(), (m * own).sum(), own.sum()]
    return out


def mask_share_table(
    root: str,
    overrides: Sequence[str],
    indices: Sequence[int],
    rows: Sequence[str] = ("+ DINO attention (box mask)", "+ SGC mask"),
    config: str | None = None,
    batch: int = 16,
) -> dict[str, dict[str, dict[str, float]]]:
    """For each masked Table 3 row: per place (home context / elsewhere), the share (%) of its
    column masks' area on ground-truth background (``background``) and the share of the
    class's own pixels they keep (``object_kept``), on ``indices`` of the toy ``train`` split
    under ``root``. What SGC is for: less of the mask on the home context, the object kept."""
    cfg, base = preset_labeler(config, overrides)
    dataset = build_dataset("toy", root, "train")
    homes = home_contexts(dataset.class_names)
    context = caption_contexts(root)
    table: dict[str, dict[str, dict[str, float]]] = {}
    for name in rows:
        labeler = row_labeler(base, cfg, dict(TABLE3_ROWS)[name])
        acc = {"home": np.zeros(4), "elsewhere": np.zeros(4)}
        for lo in range(0, len(indices), batch):
            samples = [dataset[i] for i in indices[lo : lo + batch]]
            for sample, (_, out, j) in zip(
                samples, label_samples(labeler, samples, None, 1024), strict=True
            ):
                if sample.mask is None:
                    raise ValueError(f"{sample.image_id}: no ground-truth mask under {root}")
                mask = out.masks[j].detach().float().cpu().numpy()
                one = mask_shares(mask, sample.mask, sample.labels, context(sample.image_id), homes)
                for k in acc:
                    acc[k] += one[k]
        table[name] = {
            k: {
                "background": round(100 * v[0] / max(v[1], 1e-9), 1),
                "object_kept": round(100 * v[2] / max(v[3], 1e-9), 1),
            }
            for k, v in acc.items()
        }
    return table


def class_cam_figure(
    root: str,
    clips: Sequence[str],
    class_name: str,
    indices: Sequence[int],
    path: str,
    n_images: int = 5,
    config: str | None = None,
    overrides: Sequence[str] = (),
) -> list[int]:
    """Write a PNG: for the first ``n_images`` of ``indices`` whose only tag is ``class_name``,
    one row (image | its ground-truth mask | the class's initial CAM under each CLIP). Returns
    the image indices shown."""
    dataset = build_dataset("toy", root, "train")
    c = list(dataset.class_names).index(class_name)
    shown: dict[int, Any] = {}  # index -> sample: one read per image, up to the last match
    for i in indices:
        sample = dataset[i]
        if tuple(sample.labels) == (c,):
            shown[i] = sample
            if len(shown) == n_images:
                break
    if not shown:
        raise ValueError(
            f"no image among train {indices[0]}..{indices[-1]} shows only {class_name}"
        )
    labelers = []
    for clip in clips:
        cfg, base = preset_labeler(config, [*overrides, f"backbone.clip={clip}"])
        labelers.append(row_labeler(base, cfg, dict(TABLE3_ROWS)["initial CAM"]))
    rows = []
    for i, sample in shown.items():
        items: list[tuple[str, Any]] = [(f"train {i}", sample.image), ("truth", sample.mask)]
        for clip, labeler in zip(clips, labelers, strict=True):
            ((_, out, _),) = label_samples(labeler, [sample], None, 1024)
            cam = out.cams[0][0].detach().float().cpu().numpy()  # the only tag's CAM, h x w
            items.append((f"CAM {Path(clip).parent.name or clip}"[:24], cam))
        rows.append(make_panel(items))
    Image.fromarray(np.concatenate(rows, axis=0)).save(path)
    return list(shown)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--root", default="runs/demo/data", help="rendered toy world")
    parser.add_argument("--clip", default="toy_clip", help="CLIP weights (default: toy_clip)")
    parser.add_argument("--dino", default="toy_dino", help="DINO weights (default: toy_dino)")
    parser.add_argument("--first", type=int, default=100, help="first scored image (100)")
    parser.add_argument("--n", type=int, default=200, help="number of scored images (200)")
    # action="append" (one value per flag) so that a trailing key=value override is never
    # swallowed as a row name or a CLIP.
    parser.add_argument(
        "--rows", action="append", default=[], help="only rows naming this (repeatable)"
    )
    parser.add_argument("--config", default=None, help="preset (default: configs/toy.yaml)")
    parser.add_argument(
        "--cam-figure",
        default=None,
        metavar="PNG",
        help="instead of scoring: write the initial CAM of --cam-class under --clip and each "
        "--compare CLIP on images showing only that class",
    )
    parser.add_argument("--cam-class", default="plane", help="class of --cam-figure (plane)")
    parser.add_argument(
        "--compare", action="append", default=[], help="another CLIP for --cam-figure (repeatable)"
    )
    parser.add_argument(
        "--mask-shares",
        action="store_true",
        help="instead of scoring: the box and SGC masks' share on ground-truth background "
        "and of the object kept, on home contexts and elsewhere",
    )
    parser.add_argument("overrides", nargs="*", help="config overrides key.path=value")
    args = parser.parse_intermixed_args(argv)
    indices = range(args.first, args.first + args.n)
    if args.cam_figure is not None:
        shown = class_cam_figure(
            args.root, [args.clip, *args.compare], args.cam_class, indices, args.cam_figure,
            config=args.config, overrides=args.overrides,
        )  # fmt: skip
        print(f"wrote {args.cam_figure}: train images {shown}")
        return 0
    overrides = [f"backbone.clip={args.clip}", f"backbone.dino={args.dino}", *args.overrides]
    start = time.monotonic()
    if args.mask_shares:
        shares = mask_share_table(args.root, overrides, list(indices), config=args.config)
        print(json.dumps({"images": f"train {args.first}..{args.first + args.n - 1}", **shares}))
        return 0
    out = score_candidate(args.root, overrides, indices, args.rows, args.config)
    out.update(clip=args.clip, dino=args.dino, overrides=args.overrides)
    out["seconds"] = round(time.monotonic() - start, 1)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
