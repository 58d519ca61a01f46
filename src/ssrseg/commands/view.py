"""``ssrseg view PATH``: a static site to look at an output folder image by image.

Writes ``PATH/view/index.html`` (``--out`` elsewhere) with the images, their overlays
(ground truth, pseudo labels, predictions, errors against the ground truth, superpixels, each
class's CAM) as files beside it: it opens from ``file://`` without a server or network.
PATH is any folder ssrseg writes: a ``reproduce`` / ``demo`` run, a ``pseudo-labels``, ``cams``
or ``predict`` folder, an ``evaluate`` result (folder or JSON). Rebuilding redoes only the
images whose files changed. ``--serve`` serves the site on 127.0.0.1 (for a remote machine:
forward the port with ssh).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ssrseg.commands.common import command_parser, non_negative_int, plain_doc, positive_int

# lazy: `ssrseg --help` imports every command module; the view package loads numpy, torch and
# PIL, so it is imported inside the functions that build a page.


def port_number(text: str) -> int:
    """argparse type: a TCP port, 0 (any free one) to 65535."""
    value = non_negative_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"must be <= 65535, got {value}")
    return value


def add_parser(sub: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    p = command_parser(sub, name, help_text, plain_doc(__doc__))
    p.add_argument("path", metavar="PATH", help="an output folder (or evaluate JSON) of ssrseg")
    p.add_argument("--out", help="site folder (default: PATH/view)")
    p.add_argument("--images", help="predict folders: the source images given to `ssrseg predict`")
    p.add_argument(
        "--add",
        action="append",
        default=[],
        metavar="FOLDER",
        help="also show the layers of this output folder on the same images (e.g. the "
        "initial and refined `ssrseg cams` of a pseudo-label folder's split); repeatable",
    )
    p.add_argument("--thumb", type=positive_int, default=128, help="thumbnail long side (px)")
    p.add_argument("--display", type=positive_int, default=512, help="detail view long side (px)")
    p.add_argument(
        "--no-superpixels", action="store_true", help="no SLIC superpixel overlay (faster)"
    )
    p.add_argument("--serve", action="store_true", help="serve the site on 127.0.0.1")
    p.add_argument("--port", type=port_number, default=8000, help="--serve port (0: any free one)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def site_folder(path: Path, out: str | None) -> Path:
    """``--out``, else ``PATH/view`` (beside a JSON file: ``<folder>/view``)."""
    if out:
        return Path(out)
    return (path.parent if path.is_file() else path) / "view"


def build_page(
    path: str | Path,
    out: str | None = None,
    images: str | None = None,
    add: Sequence[str] = (),
    settings: Any = None,
    superpixels: bool = True,
    progress: bool = False,
) -> Path:
    """Build the site of ``path`` (see the module docstring), print what was done and the
    page's path; returns the site folder. ``ssrseg demo`` ends with it."""
    from ssrseg.view.build import build_site
    from ssrseg.view.discover import discover

    source = discover(path, images, add)
    site = site_folder(Path(path), out)

    def bar(items: Any) -> Any:
        from tqdm import tqdm

        return tqdm(items, desc="view", unit="img", disable=not progress)

    result = build_site(source, site, settings, superpixels=superpixels, progress=bar)
    print(
        f"{len(source.items)} images: rendered {result.rendered}, reused {result.reused}, "
        f"{result.placeholders} shown as placeholders ({result.seconds:.1f} s)"
    )
    for note in source.notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"page: {result.index.resolve()}")
    return site


def run(args: argparse.Namespace) -> int:
    from ssrseg.view.render import RenderSettings

    site = build_page(
        args.path,
        args.out,
        args.images,
        args.add,
        RenderSettings(display=args.display, thumb=args.thumb),
        superpixels=not args.no_superpixels,
        progress=not args.no_progress,
    )
    if args.serve:
        from ssrseg.view.serve import serve

        serve(site, args.port)
    return 0
