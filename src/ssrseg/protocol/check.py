"""The ``check`` stage of ``ssrseg reproduce``: everything a run needs, before any work.

Checked: the backbone weight files (without downloading: a missing file gives the exact file,
where to get it and where to put it), each dataset split a chosen stage reads (list file,
image / mask / annotation files of every id, the tag source), the split sizes against the
paper's (a mismatch is a warning: fakes and subsets are allowed, and the report records it),
the class list against the prompts, and the CRF when it is asked for.

Tags always come from the annotations (VOC XML, COCO instances JSON) or a tag file the user
names; masks are never read for tags.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ssrseg.backbones import weights as W
from ssrseg.cam.prompts import check_prompt_classes, prompts_from_config
from ssrseg.config import SSRConfig
from ssrseg.data import build_dataset
from ssrseg.data.voc import find_voc_root
from ssrseg.errors import BadInputError
from ssrseg.protocol.report import PAPER_SPLIT_SIZES

DATA_HINTS: dict[str, str] = {
    "voc": "PASCAL VOC 2012 (VOCtrainval_11-May-2012.tar from "
    "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/, the test images from the evaluation "
    "server) plus SegmentationClassAug for train_aug; layout in docs/datasets.md",
    "coco": "MS COCO 2014 (train2014 / val2014 images and annotations/instances_*.json from "
    "https://cocodataset.org) plus the 81-class SegmentationClass masks; layout in "
    "docs/datasets.md",
    "toy": "render it: ssrseg toy render --root ROOT --split train --n 2000 (and --split "
    "debiased); see docs/toy_world.md",
    "folder": "see docs/datasets.md (folder datasets)",
}

# How many missing files are named before "... and N more".
SHOWN = 5


class CheckError(RuntimeError):
    """The run cannot start; the message lists every problem found."""


@dataclass
class CheckResult:
    """What the check found: split facts (for the report), warnings, fatal problems."""

    splits: dict[str, dict[str, Any]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    weights: dict[str, str] = field(default_factory=dict)
    has_test: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "splits": self.splits,
            "warnings": self.warnings,
            "weights": self.weights,
            "has_test": self.has_test,
        }


# ----------------------------------------------------------------------------------- weights


def weights_problem(spec: str) -> str | None:
    """None when the weights named by ``spec`` are on this machine, else what to do.

    Never downloads: a registry name is looked up in the cache (and its tokenizer vocabulary
    for CLIP), a path must exist, a hub id must be in the Hugging Face cache.
    """
    if spec in W.REGISTRY:
        entry = W.REGISTRY[spec]
        if entry.package_file is not None:
            path = W.package_path(entry)
            if path.is_file():
                return None
            return f"{spec}: {path} is missing; create it with `{entry.how_to_make}`"
        missing = []
        for asset in (entry.asset, entry.vocab):
            if asset is None:
                continue
            dest = W.cache_dir() / asset.filename
            if not dest.is_file():
                missing.append(
                    W.missing_message(asset, dest, "not downloaded yet")
                    + f"\n  With network: ssrseg weights fetch {spec}"
                )
        return "\n".join(missing) or None
    path = Path(spec).expanduser()
    if path.exists():
        return None
    repo = spec.removeprefix("hf-hub:")
    if repo.count("/") == 1 and not spec.startswith((".", "/", "~")) and path.suffix == "":
        from huggingface_hub import try_to_load_from_cache

        for name in W.HUB_WEIGHT_FILES:
            if isinstance(try_to_load_from_cache(repo, name), str):
                return None
        return (
            f"hub id {repo!r}: not in the Hugging Face cache. Download "
            f"https://huggingface.co/{repo} (model.safetensors and config.json) into the cache "
            "(any ssrseg command that loads it does so when online), or pass a local folder"
        )
    return (
        f"{spec}: no such file or folder, and not a weights name ({', '.join(sorted(W.REGISTRY))})"
    )


# ----------------------------------------------------------------------------------- data


def _missing(paths: list[Path], what: str) -> str:
    shown = ", ".join(str(p) for p in paths[:SHOWN])
    more = f" ... and {len(paths) - SHOWN} more" if len(paths) > SHOWN else ""
    return f"{len(paths)} {what} missing: {shown}{more}"


def open_split(cfg: SSRConfig, split: str, masks: bool) -> Any:
    """The split as a dataset, without reading tags (cheap: COCO's instances JSON is big)."""
    d = cfg.data
    kwargs: dict[str, Any] = {"require_labels": False}
    if masks:
        kwargs["with_masks"] = True
    return build_dataset(d.dataset, d.root, split, d.tag_file, **kwargs)


def tag_source(cfg: SSRConfig, dataset: Any) -> tuple[str, list[Path]]:
    """(description, files that must exist for the tags of ``dataset``'s ids)."""
    d = cfg.data
    if d.tag_file is not None:
        return f"tag file {d.tag_file}", [Path(d.tag_file)]
    if d.dataset == "voc":
        root = Path(dataset.root) / "Annotations"
        return "VOC XML annotations", [root / f"{i}.xml" for i in dataset.ids]
    if d.dataset == "coco":
        instances = Path(getattr(dataset, "_instances", ""))
        return f"COCO instances JSON {instances.name}", [instances]
    if d.dataset == "toy":
        return "tags.json of the rendered world", [Path(dataset.root) / "tags.json"]
    return f"{dataset.tag_source}", []


def check_split(
    cfg: SSRConfig, role: str, split: str, masks: bool, tags: bool, full: bool
) -> tuple[dict[str, Any], list[str], list[str]]:
    """(facts, problems, warnings) of one split; ``full`` stats every file of every id.

    facts: split name, size, the paper's size, root, tag source and the class names. Raises
    :class:`~ssrseg.errors.BadInputError` when the split cannot be opened at all."""
    d = cfg.data
    hint = DATA_HINTS.get(d.dataset, "see docs/datasets.md")
    dataset = open_split(cfg, split, masks)  # BadInputError: the caller groups them
    problems: list[str] = []
    warnings: list[str] = []
    facts: dict[str, Any] = {
        "split": split,
        "size": len(dataset),
        "root": str(dataset.root),
        "class_names": list(dataset.class_names),
    }
    paper = PAPER_SPLIT_SIZES.get((d.dataset, split))
    facts["paper_size"] = paper
    if len(dataset) == 0:
        problems.append(f"{role} split {split!r}: {dataset.list_file} lists no image")
    elif paper is not None and paper != len(dataset):
        warnings.append(
            f"{d.dataset} {split} has {len(dataset):,} images where the paper uses {paper:,}: "
            "a subset or different files, so the numbers are not the paper's protocol"
        )
    if tags:
        desc, files = tag_source(cfg, dataset)
        facts["tags"] = desc
        lost = [p for p in files if not p.is_file()] if full else []
        if lost:
            problems.append(f"{role} split {split!r}: " + _missing(lost, "tag file(s)"))
    if full:
        images = [dataset.image_path(i) for i in dataset.ids]
        lost = [p for p in images if not p.is_file()]
        if lost:
            problems.append(
                f"{role} split {split!r}: " + _missing(lost, "image(s)") + f"\n  {hint}"
            )
        if masks:
            paths = [dataset.mask_path(i) for i in dataset.ids]
            lost = [p for p in paths if p is not None and not p.is_file()]
            if lost:
                problems.append(
                    f"{role} split {split!r}: " + _missing(lost, "mask(s)") + f"\n  {hint}"
                )
    return facts, problems, warnings


def check_classes(cfg: SSRConfig, class_names: tuple[str, ...]) -> list[str]:
    """Problems with the prompts' class list against the dataset's."""
    p = cfg.prompts
    try:
        prompts = prompts_from_config(
            p.dataset, p.template, p.background_words, p.use_background_words, cfg.data.root
        )
        # by name: a count alone would let one class's pixels get another class's prompt
        check_prompt_classes(prompts, class_names, p.dataset, f"{cfg.data.dataset}")
    except (OSError, ValueError, KeyError) as exc:
        return [str(exc) if str(exc).startswith("prompts.") else f"prompts '{p.dataset}': {exc}"]
    return []


def run_check(
    cfg: SSRConfig,
    roles: dict[str, tuple[str, bool, bool, bool]],
    need_weights: bool,
    test_split: bool,
) -> CheckResult:
    """Check weights (when ``need_weights``) and each role's split.

    roles: ``{role: (split, masks needed, tags needed, full file check)}``; the full file
    check is for the splits a stage about to run reads. ``test_split``: look for VOC's test
    list (the export runs only when it is there). Raises :class:`CheckError` listing every
    problem; warnings go into the result.
    """
    res = CheckResult()
    if need_weights:
        specs = [("clip", cfg.backbone.clip)]
        if cfg.backbone.use_dino:
            specs.append(("dino", cfg.backbone.dino))
        for kind, spec in specs:
            problem = weights_problem(spec)
            res.weights[kind] = spec
            if problem:
                res.problems.append(f"{kind} weights: {problem}")

    class_names: tuple[str, ...] | None = None
    unopened: dict[str, list[str]] = {}  # error -> the splits it stops (one root, one message)
    for role, (split, masks, tags, full) in roles.items():
        try:
            facts, problems, warnings = check_split(cfg, role, split, masks, tags, full)
        except BadInputError as exc:
            unopened.setdefault(str(exc), []).append(f"{role} split {split!r}")
            continue
        res.problems += [p for p in problems if p not in res.problems]
        res.warnings += [w for w in warnings if w not in res.warnings]
        res.splits[role] = facts
        if class_names is None:
            class_names = tuple(facts["class_names"])
    hint = DATA_HINTS.get(cfg.data.dataset, "see docs/datasets.md")
    for error, which in unopened.items():
        res.problems.append(f"{', '.join(which)}: {error}\n  How to get it: {hint}")
    if class_names is not None:
        res.problems += check_classes(cfg, class_names)
    if test_split and cfg.data.dataset == "voc":
        try:
            listing = find_voc_root(cfg.data.root) / "ImageSets" / "Segmentation" / "test.txt"
        except Exception:  # the problem is already reported for the other splits
            listing = None
        if listing is not None and listing.is_file():
            try:
                facts, problems, warnings = check_split(cfg, "test", "test", False, False, True)
            except BadInputError as exc:
                facts, problems, warnings = {}, [f"test split: {exc}"], []
            res.problems += problems
            res.warnings += warnings
            if facts:
                res.splits["test"] = facts
                res.has_test = not problems
        else:
            res.warnings.append(
                "no VOC test split (ImageSets/Segmentation/test.txt): the test export is skipped"
            )
    if res.problems:
        raise CheckError(
            f"cannot start: {len(res.problems)} problem(s), nothing was run:\n- "
            + "\n- ".join(res.problems)
        )
    return res


def environment(device: Any) -> dict[str, Any]:
    """Software versions, device and machine, for the report."""
    import importlib.metadata as md
    import platform
    import sys

    import torch

    def version(pkg: str) -> str:
        try:
            return md.version(pkg)
        except md.PackageNotFoundError:
            return "not installed"

    versions = {"python": platform.python_version()}
    for pkg in ("ssrseg", "torch", "numpy", "scikit-image", "pillow", "pydensecrf2"):
        versions[pkg] = version(pkg)
    env: dict[str, Any] = {"versions": versions}
    if torch.cuda.is_available():
        env["CUDA"] = f"{torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}"
    dev = torch.device(device)
    if dev.type == "cuda":
        env["device"] = torch.cuda.get_device_name(dev)
        props = torch.cuda.get_device_properties(dev)
        env["device memory"] = f"{props.total_memory / 2**30:.0f} GiB"
    else:
        env["device"] = f"CPU: {_cpu_name()}"
    env["CPU cores"] = os.cpu_count()
    env["platform"] = platform.platform()
    src = Path(__file__).resolve().parents[3]
    if (src / ".git").exists():
        try:
            commit = _git(src, 5, "rev-parse", "--short", "HEAD")
            dirty = _git(src, 10, "status", "--porcelain", "--untracked-files=no")
            env["git commit"] = commit + (" (with local changes)" if dirty else "")
        except (OSError, subprocess.SubprocessError):
            pass
    env["command"] = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
    return env


def _git(repo: Path, timeout: float, *args: str) -> str:
    """The stripped standard output of ``git -C repo args...``."""
    return subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=timeout
    ).stdout.strip()


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown"
