"""``ssrseg toy``: render the toy world to disk, train its tiny CLIP and DINO, score zero-shot.

ssrseg toy render --root data/toy --split train --n 2000
ssrseg toy train-clip --minutes 20          # -> runs/toy_backbones/clip.safetensors
ssrseg toy train-dino --minutes 12          # -> runs/toy_backbones/dino.safetensors
ssrseg toy install-weights runs/toy_backbones/clip.safetensors   # into the package
ssrseg toy zero-shot --weights toy_clip --n 500

Training never writes into the package: the weights and a ``manifest.json`` go to an output
folder, and ``install-weights`` is the one step that replaces the packaged ``toy_clip`` /
``toy_dino`` (which every toy config then uses).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from ssrseg.commands.common import (
    command_parser,
    plain_doc,
    positive_float,
    positive_int,
    seed_int,
    unit_float,
)
from ssrseg.toy import POOLS

# lazy: `ssrseg --help` imports every command module, so the library (and torch) is imported
# inside the functions that run a command.

DEFAULT_OUT_DIR = Path("runs") / "toy_backbones"
# kind -> (what, default minutes, default batch size)
TRAINERS: dict[str, tuple[str, float, int]] = {
    "clip": ("contrastive tiny CLIP", 20.0, 128),
    "dino": ("self-distilled tiny DINO ViT", 12.0, 32),
}


class ToyCommandError(ValueError):
    """A toy action cannot go ahead; the message names the file and the way forward."""


def asset_dir() -> Path:
    """The package folder holding ``toy_clip`` / ``toy_dino`` (looked up at call time)."""
    from ssrseg.toy import common

    return Path(common.ASSET_DIR)


def add_parser(sub: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    parser = command_parser(sub, name, help_text, plain_doc(__doc__), raw=True)
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
        help="train | val (biased; settings are chosen on it) | debiased (held-out, no "
        "context or pair bias) | in_distribution (held-out, drawn like train: the paper's "
        "protocol; only scored) | any name (default: train)",
    )
    p.add_argument("--n", type=positive_int, default=1000, help="number of scenes (default: 1000)")
    p.add_argument("--seed", type=seed_int, default=0, help="world seed (default: 0)")
    p.add_argument(
        "--image-size", type=positive_int, default=128, help="side in pixels (default: 128)"
    )

    for kind, (what, minutes, batch) in TRAINERS.items():
        _add_train_parser(toy, kind, what, minutes, batch)

    p = toy.add_parser(
        "install-weights",
        help="copy trained toy weights (and their manifest entry) into the package",
        description="Replace the packaged toy_clip / toy_dino with FILE. FILE must have an "
        "entry in the manifest.json beside it (written by train-clip / train-dino) whose sha256 "
        "matches; the entry is copied into the package manifest.",
    )
    p.add_argument("file", help="weights written by `ssrseg toy train-clip|train-dino`")
    p.add_argument(
        "--kind",
        choices=("auto", *TRAINERS),
        default="auto",
        help="which packaged backbone to replace (auto: the file's own kind)",
    )

    p = toy.add_parser("zero-shot", help="zero-shot tag accuracy of a CLIP on a toy split")
    p.add_argument(
        "--weights", default="toy_clip", help="registry name or file (default: toy_clip)"
    )
    p.add_argument("--split", default="debiased")
    p.add_argument("--n", type=positive_int, default=500)
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument(
        "--pool",
        choices=POOLS,
        default="mean",
        help="image embedding scored: mean of the projected patch tokens (default; what the "
        "CAM scores) or the class token (a --pool cls CLIP's training embedding)",
    )
    parser.set_defaults(_toy_parser=parser)
    return parser


def _add_train_parser(toy: Any, kind: str, what: str, minutes: float, batch: int) -> None:
    p = toy.add_parser(f"train-{kind}", help=f"train the {what} on freshly rendered scenes")
    p.add_argument(
        "--out",
        default=str(DEFAULT_OUT_DIR / f"{kind}.safetensors"),
        help="weights file; manifest.json beside it is updated (default: "
        f"{DEFAULT_OUT_DIR / kind}.safetensors). Never the package: install trained weights "
        "with `ssrseg toy install-weights FILE`",
    )
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument(
        "--steps",
        type=positive_int,
        default=None,
        help="number of steps (default: as many as --minutes allow)",
    )
    p.add_argument(
        "--minutes",
        type=positive_float,
        default=minutes,
        help=f"wall-clock budget in minutes (default: {minutes:g})",
    )
    p.add_argument("--batch-size", type=positive_int, default=batch)
    p.add_argument("--lr", type=positive_float, default=1e-3)
    p.add_argument("--threads", type=positive_int, default=1, help="torch CPU threads (default: 1)")
    p.add_argument(
        "--workers", type=positive_int, default=1, help="processes rendering scenes (default: 1)"
    )
    p.add_argument("--width", type=positive_int, default=128)
    p.add_argument("--layers", type=positive_int, default=4)
    if kind == "clip":
        p.add_argument(
            "--init",
            default=None,
            help="continue from these weights (same shape), fresh schedule",
        )
        p.add_argument(
            "--bias-scale",
            type=unit_float,
            default=1.0,
            help="context / pair bias of the pre-training scenes, 0 (none) to 1 (the scored "
            "world's, default); below 1 the scenes come from a separate 'corpus' stream",
        )
        p.add_argument(
            "--caption-background",
            type=unit_float,
            default=1.0,
            help="probability that a pre-training caption names the background (default 1, "
            "as the scored world; below 1 the scenes come from the 'corpus' stream)",
        )
        p.add_argument(
            "--pool",
            choices=POOLS,
            default="mean",
            help="image embedding trained: mean of the projected patch tokens (default; what "
            "the CAM scores) or the class token (as OpenAI CLIP is trained)",
        )
    p.add_argument(
        "--eval-images",
        type=positive_int,
        default=500,
        help="held-out scenes scored at the end (default: 500)",
    )


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


def check_out_path(out: str | Path) -> Path:
    """The training output file; refuses any path inside the package's toy assets."""
    path = Path(out)
    if _inside(path, asset_dir()):
        raise ToyCommandError(
            f"--out {path}: training never writes into the package ({asset_dir()}); train into "
            f"a run folder (default {DEFAULT_OUT_DIR}/) and install the result with "
            "`ssrseg toy install-weights FILE`"
        )
    if path.is_dir():
        raise ToyCommandError(f"--out {path}: is a folder; give the weights file to write")
    return path


def _read_manifest(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    from ssrseg.atomic import read_json_object

    try:
        return read_json_object(path)
    except ValueError as exc:
        raise ToyCommandError(f"manifest {exc}") from None


def _write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    from ssrseg.atomic import atomic_write_text

    atomic_write_text(path, json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def _update_manifest(weights: Path, key: str, record: dict[str, Any], argv: list[str]) -> Path:
    from ssrseg.toy.common import sha256_file

    path = weights.parent / "manifest.json"
    manifest = _read_manifest(path)
    entry = dict(record)
    entry["command"] = "ssrseg toy " + " ".join(shlex.quote(a) for a in argv)
    entry["file"] = weights.name
    entry["sha256"] = sha256_file(weights)
    entry["bytes"] = weights.stat().st_size
    manifest[key] = entry
    _write_manifest(path, manifest)
    return path


def _file_kind(path: Path) -> str:
    """``clip`` / ``dino`` from a native weights file's metadata."""
    from ssrseg.backbones.native import is_native
    from ssrseg.backbones.weights import read_weights

    raw = read_weights(path)
    kind = raw.metadata.get("kind")
    if not is_native(raw.metadata) or kind not in TRAINERS:
        raise ToyCommandError(
            f"{path}: not a native toy CLIP / DINO file (written by `ssrseg toy train-clip` "
            "or `train-dino`)"
        )
    return str(kind)


def install_weights(file: str | Path, kind: str = "auto") -> Path:
    """Copy ``file`` into the package as ``toy_<kind>`` and its manifest entry into the package
    manifest. The entry beside ``file`` must name it and match its sha256. Returns the new path."""
    from ssrseg.atomic import atomic_copy_file
    from ssrseg.toy.common import sha256_file

    src = Path(file)
    if not src.is_file():
        raise ToyCommandError(f"{src}: no such file")
    file_kind = _file_kind(src)
    if kind != "auto" and kind != file_kind:
        raise ToyCommandError(f"{src}: holds a {file_kind} backbone, not {kind}")
    side = src.parent / "manifest.json"
    entry = _read_manifest(side).get(file_kind)
    digest = sha256_file(src)
    if not isinstance(entry, dict) or entry.get("file") != src.name:
        raise ToyCommandError(
            f"{side}: has no '{file_kind}' entry for {src.name}; only weights trained by "
            f"`ssrseg toy train-{file_kind}` (which records how they were made) can be installed"
        )
    if entry.get("sha256") != digest:
        raise ToyCommandError(
            f"{src}: its sha256 {digest[:12]}... differs from its manifest entry in {side}; "
            "the file changed after training"
        )
    dest_dir = asset_dir()
    dest = dest_dir / f"{file_kind}.safetensors"
    atomic_copy_file(src, dest)
    manifest_path = dest_dir / "manifest.json"
    manifest = _read_manifest(manifest_path)
    manifest[file_kind] = {**entry, "file": dest.name, "installed_from": str(src.resolve())}
    _write_manifest(manifest_path, manifest)
    return dest


def _train_args(cls: type, args: argparse.Namespace, out: Path) -> Any:
    """The trainer's argument dataclass from the command line (fields both have)."""
    names = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in vars(args).items() if k in names and k != "out"}
    return cls(out=str(out), **values)


def _train(kind: str, args: argparse.Namespace, argv: list[str]) -> int:
    out = check_out_path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if kind == "clip":
        from ssrseg.toy.train_clip import ClipTrainArgs, train_clip

        record = train_clip(_train_args(ClipTrainArgs, args, out))
        if args.init is not None:
            from ssrseg.toy.common import sha256_file

            record["init_sha256"] = sha256_file(args.init)
        summary = record["zero_shot_debiased"]
    else:
        from ssrseg.toy.train_dino import DinoTrainArgs, train_dino

        record = train_dino(_train_args(DinoTrainArgs, args, out))
        summary = record.get("attention", {})
    manifest = _update_manifest(out, kind, record, argv)
    print(json.dumps(summary), f"\nwrote {out}\nmanifest: {manifest}")
    print(f"to use it as the packaged toy_{kind}: ssrseg toy install-weights {out}")
    return 0


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
        scores = zero_shot_scores(clip, tokenizer, args.split, args.n, args.seed, pool=args.pool)  # type: ignore[arg-type]
        print(json.dumps(scores, indent=2))
        return 0
    if action == "install-weights":
        dest = install_weights(args.file, args.kind)
        print(f"installed {args.file} as {dest} (manifest: {dest.parent / 'manifest.json'})")
        return 0
    if action.startswith("train-") and action[len("train-") :] in TRAINERS:
        return _train(action[len("train-") :], args, argv)
    print(f"ssrseg toy: unknown action '{action}'", file=sys.stderr)
    return 2
