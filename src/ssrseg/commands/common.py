"""Pieces every command shares: checked numeric argument types (argparse reports a bad value as
``argument --limit: must be >= 1, got -1`` and exits 2)."""

from __future__ import annotations

import argparse
import math
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

# lazy: `ssrseg --help` imports every command module, so the library (and torch) is imported
# inside the functions that run a command.


def _int_at_least(lo: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < lo:
            raise argparse.ArgumentTypeError(f"must be >= {lo}, got {value}")
        return value

    parse.__name__ = f"integer >= {lo}"
    return parse


def _float_within(lo: float, hi: float = math.inf, lo_open: bool = True) -> Callable[[str], float]:
    """argparse type: a finite number above ``lo`` (or from ``lo`` when ``lo_open`` is False)
    and at most ``hi``."""
    lo_ok = (lambda v: v > lo) if lo_open else (lambda v: v >= lo)
    rule = (f"> {lo:g}" if lo_open else f">= {lo:g}") + ("" if hi == math.inf else f", <= {hi:g}")

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not (lo_ok(value) and value <= hi and math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"must be {rule}, got {text}")
        return value

    parse.__name__ = f"number {rule}"
    return parse


positive_int = _int_at_least(1)
non_negative_int = _int_at_least(0)


def seed_int(text: str) -> int:
    """argparse type: a random seed, 0 .. 2**32 - 1 (what NumPy's generators accept)."""
    value = non_negative_int(text)
    if value >= 2**32:
        raise argparse.ArgumentTypeError(f"must be < 2**32, got {value}")
    return value


seed_int.__name__ = "seed (integer 0 .. 2**32 - 1)"
positive_float = _float_within(0.0)
unit_float = _float_within(0.0, 1.0, lo_open=False)  # a number in [0, 1]


class DeviceError(RuntimeError):
    """The requested device does not exist on this machine (the message says what does)."""


def resolve_device(name: str | None) -> str:
    """``auto`` / None -> ``cuda`` when available, else ``cpu``; an explicit device is checked
    now (not at the first tensor moved there) and refused with what is available."""
    import torch

    if name in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DeviceError(
            f"--device {name}: not a device name (use cpu, cuda, cuda:N or auto)"
        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = f"torch {torch.__version__} " + (
                "built without CUDA" if torch.version.cuda is None else "finds no CUDA GPU"
            )
            raise DeviceError(f"--device {name}: CUDA is not available ({build}); use --device cpu")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise DeviceError(
                f"--device {name}: this machine has {count} CUDA device(s) (cuda:0 .. "
                f"cuda:{count - 1})"
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(f"--device {name}: MPS is not available; use --device cpu")
    return name


class DependencyError(RuntimeError):
    """An optional package a requested feature needs is missing (the message says how to
    install it)."""


def require_crf(cfg: object | None = None) -> None:
    """Fail now, before any work, when the dense CRF cannot run (pydensecrf2 missing)."""
    from ssrseg.engine.infer import check_crf

    try:
        check_crf(cfg)  # type: ignore[arg-type]
    except (RuntimeError, ImportError) as exc:
        raise DependencyError(str(exc)) from None


_ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|obj):`~?([^`]+)`")
_LITERAL = re.compile(r"``([^`]+)``")


def plain_doc(text: str | None) -> str:
    """A module docstring as ``--help`` text: reStructuredText roles and literals become plain
    words (``:class:`~a.b.Name``` -> ``Name``, double back-quoted ``x`` -> ``x``)."""
    if not text:
        return ""

    def role(match: re.Match[str]) -> str:
        return match.group(1).rsplit(".", 1)[-1]

    return _LITERAL.sub(r"\1", _ROLE.sub(role, text))


def command_parser(
    sub: Any, name: str, help_text: str, description: str, *, raw: bool = False
) -> argparse.ArgumentParser:
    """The sub-command's parser. ``raw`` keeps the description's own line breaks (for help
    texts that show commands or tables), else argparse re-flows it."""
    extra = {"formatter_class": argparse.RawDescriptionHelpFormatter} if raw else {}
    parser: argparse.ArgumentParser = sub.add_parser(
        name, help=help_text, description=description, **extra
    )
    return parser


# ----------------------------------------------------------------------------- outputs
class OutputError(ValueError):
    """An output location would overwrite or mix with a user's inputs (the message names both
    and the fix). A ValueError like a bad option: one line, exit 2."""


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def refuse_overlap(
    out: str | os.PathLike[str],
    option: str,
    folders: Iterable[tuple[str, str | os.PathLike[str] | None]] = (),
    files: Iterable[tuple[str, str | os.PathLike[str] | None]] = (),
    *,
    holds_ok: bool = False,
) -> None:
    """Refuse, before any work, an output that is, holds or lies inside an input folder
    (``folders``: the dataset root, an input folder, a checkpoint's run folder), or that is or
    holds an input file (``files``: a tag file, a class file, an input image). Each entry is
    ``(what it is, path)``; None entries are ignored. Paths are compared resolved (symlinks,
    ``..``), so another spelling of the same folder is caught. ``holds_ok``: an output folder
    may hold an input folder (``reproduce`` renders the toy world into ``OUT/data``)."""
    target = Path(out).expanduser().resolve()
    fix = f"choose an {option} outside it (e.g. runs/<name>)"
    for what, raw in folders:
        if raw is None or str(raw) == "":
            continue
        folder = Path(raw).expanduser().resolve()
        if _inside(target, folder) or (_inside(folder, target) and not holds_ok):
            relation = (
                "is" if target == folder else "lies inside" if _inside(target, folder) else "holds"
            )
            raise OutputError(
                f"{option} {out}: {relation} the {what} {raw}; outputs never go into "
                f"(or around) inputs: {fix}"
            )
    for what, raw in files:
        if raw is None or str(raw) == "":
            continue
        file = Path(raw).expanduser().resolve()
        if _inside(file, target):
            relation = "is" if file == target else "holds"
            raise OutputError(f"{option} {out}: {relation} the {what} {raw}; {fix}")


def run_folder(checkpoint: str | None) -> Path | None:
    """The run folder of a checkpoint option (a ``ckpt_<step>`` folder's parent); None for a
    release name or nothing."""
    if not checkpoint or not Path(checkpoint).is_dir():
        return None
    path = Path(checkpoint)
    return path.parent if path.name.startswith("ckpt_") else path


Named = list[tuple[str, Any]]  # (what it is, path or None)


def input_paths(cfg: Any, args: argparse.Namespace) -> tuple[Named, Named]:
    """What a dataset command reads, as :func:`refuse_overlap`'s ``(folders, files)``: the
    dataset root and the checkpoint's run folder; the tag, class and prompt files."""
    prompt_file = cfg.prompts.dataset if Path(cfg.prompts.dataset).is_file() else None
    folders: Named = [
        ("dataset folder (data.root)", cfg.data.root),
        ("checkpoint's run folder", run_folder(getattr(args, "checkpoint", None))),
    ]
    files: Named = [
        ("tag file", cfg.data.tag_file),
        ("class file", getattr(args, "classes", None) or cfg.data.classes),
        ("prompt file", prompt_file),
    ]
    return folders, files


# ----------------------------------------------------------------------------- datasets
# ssrseg.data.DATASETS, repeated so that building the parser does not import torch
DATASETS = ("voc", "coco", "folder", "toy")
DATASET_GROUP = "dataset (the same options in every command; each equals a data.* override)"


def add_dataset_args(
    parser: argparse.ArgumentParser,
    split_help: str,
    *,
    choices: tuple[str, ...] | None = None,
    with_classes: bool = True,
) -> None:
    """``--dataset --root --split --tag-file --classes``: every command chooses its data the
    same way. Unset options keep the config's ``data.*`` values."""
    g = parser.add_argument_group(DATASET_GROUP)
    g.add_argument(
        "--dataset", choices=choices or DATASETS, default=None, help="dataset kind (data.dataset)"
    )
    g.add_argument("--root", default=None, help="dataset root, see docs/datasets.md (data.root)")
    g.add_argument("--split", default=None, help=split_help)
    g.add_argument(
        "--tag-file",
        default=None,
        help="image_id -> class names, JSON / CSV / npy, e.g. from `ssrseg tags` (data.tag_file; "
        "default: the dataset's own annotations)",
    )
    if with_classes:
        g.add_argument(
            "--classes",
            default=None,
            help="class-name file of a folder dataset (default: ROOT/classes.txt)",
        )


OVERRIDE = re.compile(r"^[A-Za-z_]\w*(\.\w+)+=")  # key.path=value (a dotted key first)


def split_overrides(tokens: list[str]) -> tuple[list[str], list[str]]:
    """Positional tokens -> (the others, the ``key.path=value`` overrides): a command whose
    positionals are paths takes overrides among them, as the docs say every command does."""
    overrides = [t for t in tokens if OVERRIDE.match(t)]
    return [t for t in tokens if not OVERRIDE.match(t)], overrides


def with_overrides(
    cfg: Any, overrides: list[str], sections: tuple[str, ...] | None = None, where: str = ""
) -> Any:
    """``cfg`` with ``key.path=value`` overrides applied and validated; ``sections``: the only
    top-level sections this command may change (others are refused in one line)."""
    from ssrseg.config import ConfigError, merge_values, parse_overrides, validate_config

    if not overrides:
        return cfg
    values = parse_overrides(overrides)
    if sections is not None:
        other = sorted(set(values) - set(sections))
        if other:
            allowed = ", ".join(f"{s}.*" for s in sections)
            raise ConfigError(
                f"override {other[0]}.*: {where} takes {allowed} overrides only (the rest of "
                "the configuration comes from the checkpoint)"
            )
    return validate_config(merge_values(cfg, values))


JOB_GROUP = "job (the same options in every command that reads a dataset and writes outputs)"


def add_job_args(parser: argparse.ArgumentParser, overwrite_help: str) -> None:
    """``--overwrite --allow-skipped --no-progress``: how a job treats finished outputs, bad
    inputs and the terminal, the same in every command."""
    g = parser.add_argument_group(JOB_GROUP)
    g.add_argument("--overwrite", action="store_true", help=overwrite_help)
    g.add_argument(
        "--allow-skipped",
        action="store_true",
        help="exit 0 even if bad images were skipped (data.allow_skipped)",
    )
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


def apply_dataset_args(cfg: Any, args: argparse.Namespace) -> Any:
    """``cfg`` with the dataset options applied to ``data.*`` (checked like any config).

    When the command line picks the dataset and ``prompts.dataset`` was left at its default,
    the prompts follow the dataset (voc, coco, toy; a folder dataset's class file)."""
    import dataclasses

    from ssrseg.config import PromptConfig, validate_config

    changes = {
        key: getattr(args, opt)
        for opt, key in (
            ("dataset", "dataset"),
            ("root", "root"),
            ("tag_file", "tag_file"),
            ("classes", "classes"),
        )
        if getattr(args, opt, None) is not None
    }
    if not changes:
        return cfg
    data = dataclasses.replace(cfg.data, **changes)
    cfg = dataclasses.replace(cfg, data=data)
    if "dataset" in changes and cfg.prompts.dataset == PromptConfig().dataset:
        prompts = data.dataset
        if data.dataset == "folder":
            prompts = getattr(args, "classes", None) or str(Path(data.root) / "classes.txt")
        cfg = dataclasses.replace(cfg, prompts=dataclasses.replace(cfg.prompts, dataset=prompts))
    return validate_config(cfg)


def resolve_split(split: str | None, cfg: Any, role: str = "train") -> str:
    """The split a command reads: ``--split``, else the config's ``data.train_split`` /
    ``data.val_split``; a folder dataset whose config keeps the VOC default reads ``all``."""
    from ssrseg.config import DataConfig

    if split:
        return split
    key = "train_split" if role == "train" else "val_split"
    configured = str(getattr(cfg.data, key))
    if cfg.data.dataset == "folder" and configured == getattr(DataConfig(), key):
        return "all"
    return configured


# ----------------------------------------------------------------------------- data-parallel
PARALLEL_GROUP = (
    "several processes (under torchrun every rank takes its share; see docs/reproduce.md)"
)


def add_parallel_args(parser: argparse.ArgumentParser, crf: bool = True) -> None:
    """``--shard K/N`` (and ``--crf-workers N`` when the command runs a CRF)."""
    g = parser.add_argument_group(PARALLEL_GROUP)
    g.add_argument(
        "--shard",
        default=None,
        metavar="K/N",
        help="process only share K of N (0-based) of the images, for launchers that start "
        "independent processes (SLURM arrays: --shard $SLURM_ARRAY_TASK_ID/N); the outputs "
        "equal one process's; combine metrics with `ssrseg evaluate --merge`",
    )
    if crf:
        g.add_argument(
            "--crf-workers",
            type=non_negative_int,
            default=None,
            metavar="N",
            help="processes running the dense CRF while the next image's forward runs "
            "(default: this process's cores split between the ranks on this machine; 0: in "
            "the main process)",
        )
        g.add_argument(
            "--crf-labels",
            choices=("all", "present"),
            default=None,
            help="labels the CRF runs over (crf.labels): all (default, WeCLIP) or present = "
            "background + the classes the image's prediction uses (faster for COCO)",
        )


def with_crf_labels(cfg: Any, args: argparse.Namespace) -> Any:
    """``cfg`` (an SSRConfig or a CRFConfig) with ``--crf-labels`` applied when given."""
    import dataclasses

    labels = getattr(args, "crf_labels", None)
    if labels is None:
        return cfg
    if hasattr(cfg, "crf"):
        return dataclasses.replace(cfg, crf=dataclasses.replace(cfg.crf, labels=labels))
    return dataclasses.replace(cfg, labels=labels)


def crf_workers(args: argparse.Namespace, local_world_size: int) -> int:
    """``--crf-workers``, or its default for ``local_world_size`` ranks on this machine."""
    from ssrseg.engine.crf_pool import default_crf_workers

    chosen = getattr(args, "crf_workers", None)
    return default_crf_workers(local_world_size) if chosen is None else int(chosen)


def superpixel_workers(args: argparse.Namespace, local_world_size: int) -> int:
    """``--superpixel-workers``, or its default for ``local_world_size`` ranks on this machine
    (an eighth of the cores when the command runs the CRF pool too: ``--crf``)."""
    from ssrseg.engine.superpixel_pool import default_superpixel_workers

    chosen = getattr(args, "superpixel_workers", None)
    if chosen is not None:
        return int(chosen)
    return default_superpixel_workers(local_world_size, with_crf=bool(getattr(args, "crf", False)))
