"""``ssrseg weights list|fetch|convert|random``: see, download, convert or fake backbone
weights."""

from __future__ import annotations

import argparse
from typing import Any

from ssrseg.commands.common import command_parser, positive_int, seed_int

# lazy: `ssrseg --help` imports every command module, so the library (and torch) is imported
# inside the functions that run a command.

DESCRIPTION = """\
Backbone weights.

  list                 registry names, their files, and whether they are on this machine
  fetch NAME...        download registry entries to the cache (needs network)
  convert SRC DST      any supported CLIP / DINO file (OpenAI TorchScript or state dict,
                       open_clip, transformers CLIPModel / ViTModel, timm, official DINO,
                       registry name, hub id) -> ssrseg native safetensors
  random NAME --out F  random weights in the exact file layout of registry NAME (plus the
                       tokenizer files a CLIP needs beside F): run the real-size pipeline
                       with no download (the results mean nothing)

Cache: $SSRSEG_CACHE, else $XDG_CACHE_HOME/ssrseg, else ~/.cache/ssrseg.
Offline (HF_HUB_OFFLINE=1 or no network), a missing file fails at once with the URL to get it
from and the path to put it at.
"""


def add_parser(sub: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    p = command_parser(sub, name, help_text, DESCRIPTION, raw=True)
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
    rnd = actions.add_parser(
        "random",
        help="write random weights in the exact layout of a registry name",
        description="Write random weights in the exact file layout of a registry name (same "
        "keys, shapes, dtypes and format as the real download, read by the same loader), and "
        "for a CLIP the tokenizer files beside them: OpenAI's real vocabulary when one is on "
        "this machine (--vocab, the weights cache, an installed open_clip_torch), else a "
        "synthetic one of the real size. Point a config at the file "
        "(backbone.clip=FILE) or put it in $SSRSEG_CACHE under the real file name.",
    )
    rnd.add_argument("name", help="registry name (see `ssrseg weights list`)")
    rnd.add_argument("--out", required=True, help="weights file to write")
    rnd.add_argument(
        "--size",
        choices=("full", "tiny"),
        default="full",
        help="full: the real shapes; tiny: the same layout, blocks, vocabulary and patch size, "
        "narrow widths (seconds on a CPU)",
    )
    rnd.add_argument("--seed", type=seed_int, default=0, help="random seed (default: 0)")
    rnd.add_argument("--vocab", default=None, help="OpenAI BPE vocabulary file to put beside")
    return p


def _random(args: argparse.Namespace) -> int:
    from ssrseg.backbones.random_weights import write_random_weights

    files = write_random_weights(args.name, args.out, args.size, args.seed, args.vocab)
    for path in files:
        print(f"wrote {path}")
    return 0


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
    if args.action == "random":
        return _random(args)
    return _convert(args)
