"""``ssrseg toy``: render the toy world to disk, train its tiny CLIP and DINO, score zero-shot.

ssrseg toy render --root data/toy --split train --n 2000
ssrseg toy train-clip --minutes 20
ssrseg toy train-dino --minutes 12
ssrseg toy zero-shot --weights toy_clip --n 500
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any


def _default_asset(name: str) -> str:
    return str(Path(__file__).resolve().parent.parent / "assets" / "toy" / name)


def add_parser(sub: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(name, help=help_text, description=help_text)
    toy = parser.add_subparsers(dest="toy_command", metavar="ACTION")

    p = toy.add_parser(
        "render",
        help="write scenes in the VOC-like layout (every dataset "
        "command reads it with dataset 'toy')",
    )
    p.add_argument("--root", required=True, help="output folder")
    p.add_argument(
        "--split",
        default="train",
        help="train | val | debiased (held-out, no "
        "context or pair bias) | any name (default: train)",
    )
    p.add_argument("--n", type=int, default=1000, help="number of scenes (default: 1000)")
    p.add_argument("--seed", type=int, default=0, help="world seed (default: 0)")
    p.add_argument("--image-size", type=int, default=128, help="side in pixels (default: 128)")

    for action, what, minutes in (
        ("train-clip", "contrastive tiny CLIP", 20.0),
        ("train-dino", "self-distilled tiny DINO ViT", 12.0),
    ):
        kind = action.split("-")[1]
        p = toy.add_parser(action, help=f"train the {what} on freshly rendered scenes")
        p.add_argument(
            "--out",
            default=_default_asset(f"{kind}.safetensors"),
            help="weights file; manifest.json beside it is updated (default: the packaged asset)",
        )
        p.add_argument("--seed", type=int, default=0)
        p.add_argument(
            "--steps",
            type=int,
            default=None,
            help="number of steps (default: as many as --minutes allow)",
        )
        p.add_argument(
            "--minutes",
            type=float,
            default=minutes,
            help=f"wall-clock budget in minutes (default: {minutes:g})",
        )
        p.add_argument("--batch-size", type=int, default=128 if kind == "clip" else 32)
        p.add_argument("--lr", type=float, default=1e-3)
        p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
        p.add_argument(
            "--workers", type=int, default=1, help="processes rendering scenes (default: 1)"
        )
        p.add_argument("--width", type=int, default=128)
        p.add_argument("--layers", type=int, default=4)
        if kind == "clip":
            p.add_argument(
                "--init",
                default=None,
                help="continue from these weights (same shape), fresh schedule",
            )
        p.add_argument(
            "--eval-images",
            type=int,
            default=500,
            help="held-out scenes scored at the end (default: 500)",
        )

    p = toy.add_parser("zero-shot", help="zero-shot tag accuracy of a CLIP on a toy split")
    p.add_argument(
        "--weights", default="toy_clip", help="registry name or file (default: toy_clip)"
    )
    p.add_argument("--split", default="debiased")
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    parser.set_defaults(_toy_parser=parser)
    return parser


def _update_manifest(weights: Path, key: str, record: dict[str, Any], argv: list[str]) -> Path:
    from ssrseg.config import atomic_write_text
    from ssrseg.toy.common import sha256_file

    path = weights.parent / "manifest.json"
    manifest = json.loads(path.read_text()) if path.exists() else {}
    entry = dict(record)
    entry["command"] = "ssrseg toy " + " ".join(shlex.quote(a) for a in argv)
    entry["file"] = weights.name
    entry["sha256"] = sha256_file(weights)
    entry["bytes"] = weights.stat().st_size
    manifest[key] = entry
    atomic_write_text(path, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return path


def run(args: argparse.Namespace) -> int:
    action = getattr(args, "toy_command", None)
    if action is None:
        args._toy_parser.print_help()
        return 2
    argv = sys.argv[sys.argv.index("toy") + 1 :] if "toy" in sys.argv else [action]
    if action == "render":
        from ssrseg.data.toy import write_toy_dataset

        ids = write_toy_dataset(
            args.root, args.n, args.split, args.seed, args.image_size, progress=True
        )
        print(f"wrote {len(ids)} scenes of split '{args.split}' to {args.root}")
        return 0
    if action == "zero-shot":
        from ssrseg.backbones.weights import load_clip
        from ssrseg.toy.common import zero_shot_scores

        clip, tokenizer = load_clip(args.weights)
        scores = zero_shot_scores(clip, tokenizer, args.split, args.n, args.seed)  # type: ignore[arg-type]
        print(json.dumps(scores, indent=2))
        return 0
    if action == "train-clip":
        from ssrseg.toy.train_clip import ClipTrainArgs, train_clip

        record = train_clip(
            ClipTrainArgs(
                out=args.out,
                seed=args.seed,
                steps=args.steps,
                minutes=args.minutes,
                batch_size=args.batch_size,
                lr=args.lr,
                threads=args.threads,
                workers=args.workers,
                width=args.width,
                layers=args.layers,
                eval_images=args.eval_images,
                init=args.init,
            )
        )
        if args.init is not None:
            from ssrseg.toy.common import sha256_file

            record["init_sha256"] = sha256_file(args.init)
        manifest = _update_manifest(Path(args.out), "clip", record, argv)
        print(json.dumps(record["zero_shot_debiased"]), f"\nmanifest: {manifest}")
        return 0
    if action == "train-dino":
        from ssrseg.toy.train_dino import DinoTrainArgs, train_dino

        record = train_dino(
            DinoTrainArgs(
                out=args.out,
                seed=args.seed,
                steps=args.steps,
                minutes=args.minutes,
                batch_size=args.batch_size,
                lr=args.lr,
                threads=args.threads,
                workers=args.workers,
                width=args.width,
                layers=args.layers,
                eval_images=args.eval_images,
            )
        )
        manifest = _update_manifest(Path(args.out), "dino", record, argv)
        print(json.dumps(record.get("attention", {})), f"\nmanifest: {manifest}")
        return 0
    print(f"ssrseg toy: unknown action '{action}'", file=sys.stderr)
    return 2
