"""The work stages of ``ssrseg reproduce`` (render, seeds, train, cmpa, eval, export,
fully_supervised): each takes the :class:`~ssrseg.protocol.plan.Run` and returns its result
dict, which :func:`~ssrseg.protocol.plan.execute` stores in ``stage.json``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from ssrseg.config import SSRConfig, atomic_write_text, config_to_dict, save_config
from ssrseg.data.base import SkipLog, iter_valid, read_image
from ssrseg.data.toy import write_toy_dataset
from ssrseg.engine.checkpoint import LAST_FILE, load_model, resolve_checkpoint
from ssrseg.engine.crf_pool import OrderedPool, crf_mask, default_crf_workers
from ssrseg.engine.distributed import (
    DistContext,
    StageContext,
    barrier,
    cleanup,
    gather_skipped,
    guard_image,
    setup,
    share_list,
    solo_view,
    sum_confusion,
)
from ssrseg.engine.export import (
    archive_voc_results,
    check_voc_mask,
    missing_voc_test,
    voc_test_path,
)
from ssrseg.engine.infer import Segmenter
from ssrseg.engine.shard import pixel_costs
from ssrseg.engine.superpixel_pool import default_superpixel_workers
from ssrseg.engine.train import run_training
from ssrseg.errors import BadInputError
from ssrseg.metrics import ConfusionMatrix, json_safe
from ssrseg.protocol.cam_rows import (
    AFTER_PAR_ROWS,
    EXTRA_ROWS,
    TABLE3_ROWS,
    RowHook,
    baseline_scores,
    merge_config,
    score_rows,
)
from ssrseg.protocol.plan import (
    LEAK_ROWS,
    ReproduceError,
    Run,
    open_dataset,
    resolve_seed_split,
    seed_indices,
)
from ssrseg.protocol.report import row_summary
from ssrseg.pseudo.labeler import build_pseudo_labeler
from ssrseg.toy.diagnostics import backbone_grouping, context_leak
from ssrseg.viz import save_label_png

# ----------------------------------------------------------------------------------------------
# Stages


def stage_render(run: Run, resumed: bool) -> dict[str, Any]:
    world = run.plan.world
    assert world is not None
    root = Path(run.cfg.data.root)
    for split, n in ((run.cfg.data.train_split, world.n_train), (world.val_split, world.n_val)):
        listing = root / "ImageSets" / "Segmentation" / f"{split}.txt"
        if resumed and listing.is_file() and len(listing.read_text().split()) == n:
            continue
        write_toy_dataset(root, n, split=split, seed=world.seed, image_size=world.image_size,
                          progress=run.plan.progress)  # fmt: skip
    return {"root": str(root), "n_train": world.n_train, "n_val": world.n_val}


def _base_labeler(cfg: SSRConfig, device: torch.device) -> Any:
    """Labeller whose backbones every row shares (DINO loaded when the config allows it)."""
    over: dict[str, Any] = {"cam": {"projected": False}}
    if cfg.backbone.use_dino:
        over["affinity"] = {"use_dino_attention": True}
    return build_pseudo_labeler(merge_config(cfg, over), device)


def _toy_hook() -> RowHook:
    def hook(name: str, dataset: Any, indices: Sequence[int], preds: dict) -> dict[str, Any]:
        return {"context_leak": context_leak(dataset, indices, preds)}

    return hook


def stage_seeds(run: Run, resumed: bool) -> dict[str, Any]:
    """Table 3 in the raw CLIP space (plus after-PAR rows), toy baselines when asked."""
    cfg, plan = run.cfg, run.plan
    torch.manual_seed(cfg.train.seed)
    split, _ = resolve_seed_split(cfg, plan)
    dataset = open_dataset(cfg, split, labels=True)
    indices = seed_indices(cfg, plan, dataset)
    base = _base_labeler(cfg, run.device)
    raw_cfg = merge_config(cfg, {"cam": {"projected": False}})
    rows = (*TABLE3_ROWS, *AFTER_PAR_ROWS, *EXTRA_ROWS)
    folder = run.folder("seeds")
    scored = score_rows(
        base,
        raw_cfg,
        rows,
        dataset,
        indices,
        folder / "rows",
        batch=plan.seed_batch,
        long_side=plan.long_side,
        hook=_toy_hook() if plan.toy_rows else None,
        hook_rows=LEAK_ROWS if plan.toy_rows else (),
        label_dir=folder / "labels",
        label_row="+ PAR (pseudo labels)",
        progress=plan.progress,
        view=run.view,
        superpixel_workers=superpixel_workers_of(run),
    )
    result: dict[str, Any] = {
        "split": split,
        "images": len(indices),
        "rows": {name: row_summary(e["result"]) for name, e in scored.items()},
        "iou": {name: e["result"]["iou"] for name, e in scored.items()},
        "class_names": list(dataset.class_names),
    }
    if plan.toy_rows:
        result["baselines"] = {
            k: row_summary(v.compute()) for k, v in baseline_scores(dataset, indices).items()
        }
        result["context_leak"] = {
            name: scored[name]["extra"]["context_leak"] for name in LEAK_ROWS if name in scored
        }
    if plan.toy_rows and plan.grouping_images > 0:
        # the world's `val` split: rendered on the fly, never scored (choose dino_layers here)
        seed = plan.world.seed if plan.world is not None else 0
        vits = {"clip": base.clip.visual, "dino": base.dino}
        result["attention_grouping"] = {
            "split": "val",
            "images": plan.grouping_images,
            "rows": backbone_grouping(vits, plan.grouping_images, seed),
        }
    if run.is_main:
        _write_metrics(folder / "metrics.json", {k: v["result"] for k, v in scored.items()})
    return result


def _write_metrics(path: Path, results: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(json_safe(results), indent=1) + "\n")


def torchrun_command(
    config_file: Path, run_dir: Path, gpus: int, device_type: str, resume: bool
) -> list[str]:
    """``torchrun --nproc_per_node N -m ssrseg.cli train ...`` for this interpreter."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(gpus),
        "-m",
        "ssrseg.cli",
        "train",
        "--config",
        str(config_file),
        "--output-dir",
        str(run_dir),
        "--device",
        device_type,
    ]
    if resume:
        cmd += ["--resume", str(run_dir)]
    return cmd


def train_into(run: Run, cfg: SSRConfig, run_dir: Path, gpus: int = 1) -> dict[str, Any]:
    """Train ``cfg`` into ``run_dir``, resuming from its last checkpoint when there is one."""
    resume = (run_dir / LAST_FILE).is_file()
    group = run.view.dist
    if group.distributed:
        # inside a torchrun job: the job's ranks train together (--gpus = its size), or the
        # main rank trains alone (--gpus 1) while the others wait
        if gpus == group.world_size:
            _train_here(run, cfg, run_dir, resume, setup(str(run.device)))
        elif gpus == 1:
            run.main_only(lambda: _train_here(run, cfg, run_dir, resume, DistContext(
                device=run.device)))  # fmt: skip
        else:
            raise ReproduceError(
                f"--gpus {gpus} inside a torchrun job of {group.world_size} processes: "
                f"use --gpus {group.world_size} (or 1: training in the main process only)"
            )
    elif gpus > 1:
        config_file = save_config(cfg, run_dir, name="reproduce_train.yaml")
        cmd = torchrun_command(config_file, run_dir, gpus, run.device.type, resume)
        if not run.plan.progress:
            cmd.append("--no-progress")
        print("  " + " ".join(cmd))
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        proc = subprocess.run(cmd, env=env, check=False)
        if proc.returncode != 0:
            raise ReproduceError(
                f"torchrun training exited with status {proc.returncode}; rerun the same "
                "command to resume from the last checkpoint in " + str(run_dir)
            )
    else:
        ctx = setup(str(run.device))
        try:
            _train_here(run, cfg, run_dir, resume, ctx)
        finally:
            cleanup(ctx)
    ckpt = resolve_checkpoint(run_dir)
    return {
        "checkpoint": str(ckpt.relative_to(run.out)),
        "iterations": cfg.train.iterations,
        "gpus": gpus,
        "effective_batch": gpus * cfg.train.batch_size,
    }


def _train_here(run: Run, cfg: SSRConfig, run_dir: Path, resume: bool, ctx: DistContext) -> None:
    """Train in this process (one of ``ctx``'s ranks)."""
    # seed before the model is built: its initialisation must not depend on earlier stages
    torch.manual_seed(cfg.train.seed)
    step = run_training(cfg, ctx, run_dir, run_dir if resume else None, progress=run.plan.progress)
    if step < 0:
        raise ReproduceError(
            "training skipped unreadable items (listed above); fix them or set "
            "data.allow_skipped=true"
        )


def stage_train(run: Run, resumed: bool) -> dict[str, Any]:
    cfg, plan = run.cfg, run.plan
    if plan.gpus > 1 and run.is_main:
        print(
            f"  note: {plan.gpus} processes x train.batch_size {cfg.train.batch_size} = "
            f"effective batch {plan.gpus * cfg.train.batch_size}"
        )
    return train_into(run, cfg, run.folder("train"), plan.gpus)


def stage_cmpa(run: Run, resumed: bool) -> dict[str, Any]:
    """Table 3 in the CMPA-projected space (its first row is Table 4's CMPA initial CAM)."""
    cfg, plan = run.cfg, run.plan
    model, _ = load_model(run.folder("train"), run.device)
    if model.cmpa is None:
        return {"skipped": "cmpa.enabled is false: no CMPA heads were trained"}
    cmpa = model.cmpa.eval()
    split, _ = resolve_seed_split(cfg, plan)
    dataset = open_dataset(cfg, split, labels=True)
    indices = seed_indices(cfg, plan, dataset)
    rows = [(name, {**ov, "cam": {"projected": True}}) for name, ov in TABLE3_ROWS]
    scored = score_rows(
        model.labeler,
        cfg,
        rows,
        dataset,
        indices,
        run.folder("cmpa") / "rows",
        batch=plan.seed_batch,
        cmpa=cmpa,
        long_side=plan.long_side,
        progress=plan.progress,
        view=run.view,
        superpixel_workers=superpixel_workers_of(run),
    )
    if run.is_main:
        results = {k: v["result"] for k, v in scored.items()}
        _write_metrics(run.folder("cmpa") / "metrics.json", results)
    return {
        "split": split,
        "images": len(indices),
        "rows": {name: row_summary(e["result"]) for name, e in scored.items()},
        "iou": {name: e["result"]["iou"] for name, e in scored.items()},
    }


def crf_workers_of(run: Run) -> int:
    """``--crf-workers``, or this process's cores split between the ranks on this machine."""
    chosen = run.plan.crf_workers
    return default_crf_workers(run.view.dist.local_world_size) if chosen is None else chosen


def superpixel_workers_of(run: Run) -> int:
    """``--superpixel-workers``, or this process's cores split between the ranks on this
    machine (seeds and cmpa run no CRF: the superpixels may have every core)."""
    chosen = run.plan.superpixel_workers
    if chosen is None:
        return default_superpixel_workers(run.view.dist.local_world_size)
    return chosen


def _mode_name(mode: bool) -> str:
    return "crf" if mode else "no_crf"


def evaluate_into(
    seg: Any,
    dataset: Any,
    modes: Sequence[bool],
    pred_dir: Path,
    indices: Sequence[int],
    progress: bool,
    view: StageContext | None = None,
    crf_workers: int = 0,
) -> dict[bool, Any]:
    """Score ``dataset[indices]`` once per CRF mode from one multi-scale forward per image;
    predictions go to ``pred_dir/{no_crf,crf}/<id>.png`` and are read back on a resume.

    ``view``: under torchrun each rank predicts its share (balanced by image size) and writes
    its images' PNGs; the confusion matrices are summed exactly. The CRF runs in
    ``crf_workers`` processes (:class:`~ssrseg.engine.crf_pool.OrderedPool`; 0: here) while the
    next image's forward runs; the same masks either way."""
    view = view if view is not None else solo_view()
    ids = list(dataset.ids)
    mine = share_list(
        list(indices), view, pixel_costs(lambda p: dataset.image_path(ids[indices[p]]))
    )
    log = SkipLog()
    matrices = {m: ConfusionMatrix(seg.num_classes) for m in modes}

    def finish(results: Any) -> None:
        for (image_id, gt, path), mask in results:
            with guard_image(view, image_id):
                if path is not None:  # None: read back from an earlier attempt
                    save_label_png(path, mask, dataset.palette_name)
                matrices[True].update(mask, gt)

    with OrderedPool[tuple[str, np.ndarray, Path | None]](crf_workers) as pool:
        for sample in iter_valid(dataset, log, mine, progress=progress, desc="evaluate"):
            if sample.mask is None:
                with guard_image(view, sample.image_id):
                    raise ReproduceError(
                        f"{sample.path}: the evaluation split has no ground-truth mask"
                    )
            paths = {m: pred_dir / _mode_name(m) / f"{sample.image_id}.png" for m in modes}
            probs: Any = None
            with guard_image(view, sample.image_id):
                # a mode's PNG finished by an earlier attempt is read back, never written again
                kept = {m: np.asarray(Image.open(p)) for m, p in paths.items() if p.is_file()}
                if len(kept) < len(modes):
                    _, probs = seg.predict(sample.image, return_probs=True, crf=False)
                if False in modes:
                    mask = kept.get(False)
                    if mask is None:
                        mask = probs.argmax(axis=0).astype(np.uint8)
                        save_label_png(paths[False], mask, dataset.palette_name)
                    matrices[False].update(mask, sample.mask)
            if True in kept:
                finish(pool.put((sample.image_id, sample.mask, None), kept[True]))
            elif True in modes:
                key = (sample.image_id, sample.mask, paths[True])
                finish(pool.submit(key, crf_mask, sample.image, probs, seg.crf_cfg))
        finish(pool.drain())
    sum_confusion(matrices.values(), view.dist)
    # every rank's skipped images, in the order one process meets them
    log.skipped[:] = gather_skipped(log.skipped, ids, view.dist)
    if view.is_main:
        log.report()
    return matrices


def _evaluate_stage(run: Run, ckpt_dir: Path, folder: Path) -> dict[str, Any]:
    """The checkpoint in ``ckpt_dir`` scored on the val split into ``folder``."""
    return evaluate_checkpoint(run, ckpt_dir, folder, run.cfg.data.val_split, run.plan.val_images)


def evaluate_checkpoint(
    run: Run, ckpt_dir: Path, folder: Path, split: str, images: int | None
) -> dict[str, Any]:
    """The checkpoint in ``ckpt_dir`` scored on the first ``images`` (None: all) of ``split``
    in every CRF mode; predictions and ``metrics.json`` go to ``folder``."""
    cfg, plan = run.cfg, run.plan
    # this run's inference and CRF settings, not the ones saved with the checkpoint
    seg = Segmenter.from_checkpoint(ckpt_dir, run.device, infer=cfg.infer, crf=cfg.crf)
    dataset = open_dataset(cfg, split, labels=False)
    n = len(dataset) if images is None else min(images, len(dataset))
    matrices = evaluate_into(
        seg, dataset, run.crf_modes, folder / "pred", list(range(n)), plan.progress and run.is_main,
        run.view, crf_workers_of(run),
    )  # fmt: skip
    results = {}
    for m, cm in matrices.items():
        res = cm.compute()
        res["class_names"] = ["background", *dataset.class_names]
        results[_mode_name(m)] = res
    settings = {"infer": config_to_dict(seg.infer), "crf_params": config_to_dict(seg.crf_cfg)}
    if run.is_main:
        _write_metrics(folder / "metrics.json", {"split": dataset.split, **settings, **results})
    return {
        "split": dataset.split,
        "images": n,
        "rows": {k: row_summary(v) for k, v in results.items()},
        "iou": {k: v["iou"] for k, v in results.items()},
        "class_names": list(dataset.class_names),
    }


def stage_eval(run: Run, resumed: bool) -> dict[str, Any]:
    return _evaluate_stage(run, run.folder("train"), run.folder("eval"))


def stage_export(run: Run, resumed: bool) -> dict[str, Any]:
    """VOC test predictions, without and with CRF, each tree archived for the server."""
    if not run.check.get("has_test"):
        return {"skipped": "no VOC test split"}
    cfg = run.cfg
    seg = Segmenter.from_checkpoint(run.folder("train"), run.device, infer=cfg.infer, crf=cfg.crf)
    test = open_dataset(cfg, "test", labels=False, masks=False)
    roots = {m: run.folder("export") / _mode_name(m) for m in run.crf_modes}
    view = run.view
    all_ids = list(test.ids)
    mine = share_list(all_ids, view, pixel_costs(lambda p: test.image_path(all_ids[p])))

    def finish(results: Any) -> None:
        for (image_id, shape, path), mask in results:
            with guard_image(view, image_id):
                check_voc_mask(mask, shape, image_id)
                save_label_png(path, mask, seg.palette)

    with OrderedPool[tuple[str, tuple[int, ...], Path]](crf_workers_of(run)) as pool:
        for image_id in tqdm(
            mine, desc="VOC test export", disable=not (run.plan.progress and view.is_main)
        ):
            # only the modes whose PNG is not there: a finished file is never written again
            targets = {m: voc_test_path(r, image_id) for m, r in roots.items()}
            targets = {m: p for m, p in targets.items() if not p.is_file()}
            if not targets:
                continue
            with guard_image(view, image_id):
                try:
                    image = read_image(test.image_path(image_id))
                except BadInputError as exc:
                    raise ReproduceError(f"VOC test export: {exc}") from None
                _, probs = seg.predict(image, return_probs=True, crf=False)
                for m, path in targets.items():
                    if not m:
                        mask = probs.argmax(axis=0).astype(np.uint8)
                        check_voc_mask(mask, image.shape, image_id)
                        save_label_png(path, mask, seg.palette)
            if True in targets:
                key = (image_id, image.shape, targets[True])
                finish(pool.submit(key, crf_mask, image, probs, seg.crf_cfg))
        finish(pool.drain())
    barrier(view.dist)
    if not view.is_main:
        return {"images": len(all_ids), "archives": {}}  # the main rank's result is kept
    archives = {}
    for m, r in roots.items():
        missing = missing_voc_test(r, test.ids)
        if missing:
            raise ReproduceError(f"VOC test export misses {len(missing)} image(s): {missing[:5]}")
        archives[_mode_name(m)] = str(archive_voc_results(r).relative_to(run.out))
    return {"images": len(test.ids), "archives": archives}


def stage_fully_supervised(run: Run, resumed: bool) -> dict[str, Any]:
    """The same decoder trained on ground-truth masks, evaluated like ``eval``."""
    cfg = merge_config(
        run.cfg,
        {
            "train": {
                "iterations": run.plan.fully_supervised_iterations,
                "val_every": 0,
                "supervision": "gt",
            },
            "cmpa": {"enabled": False},
        },
    )
    folder = run.folder("fully_supervised")
    train = train_into(run, cfg, folder / "train")
    return {**_evaluate_stage(run, folder / "train", folder), "train": train}
