"""The ``ssrseg`` command. Each subcommand lives in ``ssrseg.commands.<name>`` and exposes
``add_parser(subparsers) -> argparse.ArgumentParser`` and ``run(args) -> int``; modules are
imported only when their command runs so ``ssrseg --help`` stays fast."""

from __future__ import annotations

import argparse
import errno
import importlib
import sys
from collections.abc import Sequence

from ssrseg import __version__
from ssrseg.commands.common import plain_doc

# (command name, module under ssrseg.commands, one-line help)
COMMANDS: tuple[tuple[str, str, str], ...] = (
    ("cams", "cams", "write per-image CAMs (initial or refined) for a dataset split"),
    ("pseudo-labels", "pseudo_labels", "write pseudo-label PNGs for a dataset split"),
    ("train", "train", "train SSR (CMPA heads + decoder) from image-level tags"),
    ("evaluate", "evaluate", "score predictions or a checkpoint against ground-truth masks"),
    ("predict", "predict", "segment images with a trained checkpoint"),
    (
        "reproduce",
        "reproduce",
        "run the paper's whole protocol (seeds, train, eval, export) and report vs its numbers",
    ),
    ("demo", "demo", "run the whole SSR pipeline on the toy world and print the paper's tables"),
    ("weights", "weights", "list, fetch, convert or fake (random) backbone weights"),
    ("toy", "toy", "toy world: render data, train the tiny CLIP and DINO"),
    ("tags", "tags", "write an image-level tag file from dataset annotations"),
    ("view", "view", "write a static page to look at an output folder image by image"),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ssrseg",
        description="SSR weakly supervised semantic segmentation: image-level tags in, "
        "pixel masks out.",
    )
    parser.add_argument("--version", action="version", version=f"ssrseg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module, help_text in COMMANDS:
        mod = importlib.import_module(f"ssrseg.commands.{module}")
        p = mod.add_parser(sub, name, help_text)
        p.description = plain_doc(p.description)  # docstrings shown as help: no RST markup
        p.set_defaults(_module=module)
    return parser


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parse with config overrides (``key=value``) allowed anywhere among a command's options.

    argparse cannot intermix at the level holding the subcommands, so the chosen subcommand's
    own parser does it; commands with sub-subcommands (``weights``, ``toy``) parse normally.
    """
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    if argv and argv[0] in sub.choices:
        try:
            args = sub.choices[argv[0]].parse_intermixed_args(argv[1:])
        except TypeError:  # the subcommand has its own subcommands
            return parser.parse_args(argv)
        args.command = argv[0]
        return args
    return parser.parse_args(argv)


# Errors that are the user's to fix: (module, class name). Each becomes one line on stderr and
# exit status 2; anything else keeps its traceback (a bug to report). Looked up only in modules
# already imported: an error of a class can only exist once its module is loaded.
KNOWN_ERRORS: tuple[tuple[str, str], ...] = (
    ("ssrseg.config", "ConfigError"),
    ("ssrseg.runrecord", "RunMismatchError"),
    ("ssrseg.engine.checkpoint", "CheckpointError"),
    ("ssrseg.backbones.native", "WeightsError"),
    ("ssrseg.errors", "BadInputError"),
    ("ssrseg.commands.common", "DeviceError"),
    ("ssrseg.commands.common", "DependencyError"),
    ("ssrseg.commands.common", "OutputError"),
    ("ssrseg.cam.prompts", "PromptError"),
    ("ssrseg.commands.toy", "ToyCommandError"),
    ("ssrseg.commands.predict", "InputListError"),
    ("ssrseg.view.discover", "ViewInputError"),
    ("ssrseg.engine.shard", "ShardError"),
    ("ssrseg.commands.evaluate", "MergeError"),
)
# An image failed in one process of a data-parallel stage: one line when its cause is a known
# error, else the traceback (whose last line still names the rank and the image).
WRAPPING_ERRORS: tuple[tuple[str, str], ...] = (("ssrseg.engine.distributed", "StageError"),)
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130  # the shell's code for a command ended by Ctrl-C (128 + SIGINT)


def known_error(exc: BaseException) -> bool:
    """Is ``exc`` one of :data:`KNOWN_ERRORS` or a file-system error (``OSError``)?"""
    if isinstance(exc, OSError):
        return True
    for module, name in WRAPPING_ERRORS:
        cls = getattr(sys.modules.get(module), name, None)
        if isinstance(cls, type) and isinstance(exc, cls):
            return exc.__cause__ is not None and known_error(exc.__cause__)
    for module, name in KNOWN_ERRORS:
        cls = getattr(sys.modules.get(module), name, None)
        if isinstance(cls, type) and isinstance(exc, cls):
            return True
    return False


def error_line(exc: BaseException) -> str:
    """The one-line (or few-line, for lists) message of a known error; an ``OSError`` names
    its file (``[Errno 28] No space left on device: 'out/x.png'``)."""
    if isinstance(exc, OSError) and exc.strerror:
        where = f" ({exc.filename})" if exc.filename else ""
        advice = " (free some space, then rerun: finished outputs are kept)"
        extra = advice if exc.errno == errno.ENOSPC else ""
        return f"{exc.strerror}{where}{extra}"
    return str(exc)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = _parse(parser, list(sys.argv[1:] if argv is None else argv))
    if not getattr(args, "command", None):
        parser.print_help(sys.stderr)  # no command is a usage error, like a wrong one
        return EXIT_ERROR
    mod = importlib.import_module(f"ssrseg.commands.{args._module}")
    try:
        return int(mod.run(args) or 0)
    except KeyboardInterrupt:
        close_progress_bars()
        print(
            f"ssrseg {args.command}: interrupted; finished outputs and the last checkpoint are "
            "kept: rerun the same command to resume",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    except Exception as exc:
        if not known_error(exc):
            raise
        close_progress_bars()  # the message starts on its own line, not after a bar
        print(f"ssrseg {args.command}: error: {error_line(exc)}", file=sys.stderr)
        return EXIT_ERROR


def close_progress_bars() -> None:
    """Close the progress bars a failed command left open (each ends its line)."""
    tqdm_module = sys.modules.get("tqdm")
    if tqdm_module is None:
        return
    for bar in list(getattr(tqdm_module.tqdm, "_instances", ())):
        bar.close()


if __name__ == "__main__":
    sys.exit(main())
