"""``ssrseg weights list|fetch|convert``: see, download and convert backbone weights."""

from __future__ import annotations

import argparse
from typing import Any

from ssrseg.commands.common import positive_int

DESCRIPTION = """\
Backbone weights.

  list                 registry names, their files, and whether they are on this machine
  fetch NAME...        download registry entries to the cache (needs network)
  convert SRC DST      any supported CLIP / DINO file (OpenAI TorchScript or state dict,
                       open_clip, transformers CLIPModel / ViTModel, timm, official DINO,
                       registry name, hub id) -> ssrseg native safetensors

Cache: $SSRSEG_CACHE, else $XDG_CACHE_HOME/ssrseg, else ~/.cache/ssrseg.
Offline (HF_HUB_OFFLINE=1 or no network), a missing file fails at once with the URL to get it
from and the path to put it at.
from ssrseg.commands.common import positive_int
"""


def add_parser(sub: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        name,
        help=help_text,
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    actions.add_parser("list", help="list registry names and whether their files are present")
    fetch = actions.add_parser("fetch", help="download registry entries to the cache")
    fetch.add_argument("names", nargs="+", metavar="NAME", help="registry name(s)")
    conv = actions.add_parser(
        "convert",
        help="convert weights to ssrseg native safetensors",
        description="Convert any supported CLIP / DINO weights to a native safetensors file "
        "(config and tokenizer in its metadata).",
    )
    conv.add_argument("src", help="registry name, local file or folder, or hub id")
    conv.add_argument("dst", help="output .safetensors path")
    conv.add_argument(
        "--kind",
        choices=("auto", "clip", "dino"),
        default="auto",
        help="what SRC holds (auto: registry kind, else CLIP when a text tower is present)",
    )
    conv.add_argument("--heads", type=positive_int, default=None, help="image-tower heads override")
    conv.add_argument(
        "--text-heads", type=positive_int, default=None, help="text-tower heads override"
    )
    conv.add_argument(
        "--trust-torchscript",
        action="store_true",
        help="allow torch.jit.load (executes code from the file) if the tensor-only "
        "TorchScript reader fails; only for files you trust",
    )
    return p


def _list() -> int:
    from ssrseg.backbones.weights import REGISTRY, local_path

    rows = []
    for name, entry in sorted(REGISTRY.items()):
        path = local_path(entry)
        status = "present" if path.is_file() else "missing"
        rows.append((name, entry.kind, status, str(path), entry.description))
        if entry.vocab is not None:
            vpath = path.parent / entry.vocab.filename
            vstat = "present" if vpath.is_file() else "missing"
            rows.append(("", "vocab", vstat, str(vpath), "BPE vocabulary"))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        print(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}  ({r[4]})")
    return 0


def _fetch(names: list[str]) -> int:
    from ssrseg.backbones.weights import fetch

    for name in names:
        for path in fetch(name):
            print(f"{name}: {path}")
    return 0


def _convert(args: argparse.Namespace) -> int:
    from ssrseg.backbones.convert import detect_layout
    from ssrseg.backbones.weights import (
        REGISTRY,
        clip_tokenizer_for,
        load_clip_model,
        load_dino,
        read_weights,
        resolve,
        save_native,
    )

    kind = args.kind
    if kind == "auto":
        if args.src in REGISTRY:
            kind = REGISTRY[args.src].kind
        else:
            path, _ = resolve(args.src)
            raw = read_weights(path, args.trust_torchscript)
            if raw.metadata.get("kind") in ("clip", "dino"):
                kind = raw.metadata["kind"]
            else:
                kind = "clip" if detect_layout(raw.tensors) in ("openai", "hf_clip") else "dino"
    extra = {"converted_from": args.src}
    if kind == "clip":
        model, raw = load_clip_model(
            args.src,
            vision_heads=args.heads,
            text_heads=args.text_heads,
            trust_torchscript=args.trust_torchscript,
        )
        tok = clip_tokenizer_for(raw, model.cfg)
        out = save_native(args.dst, model, "clip", model.cfg, tok, extra)
    else:
        vit = load_dino(args.src, heads=args.heads)
        out = save_native(args.dst, vit, "dino", vit.cfg, None, extra)
    print(f"wrote {out} ({kind})")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.action == "list":
        return _list()
    if args.action == "fetch":
        return _fetch(args.names)
    return _convert(args)
