"""``ssrseg train``: train SSR (CMPA heads + decoder) from image-level tags.

Single process: ``ssrseg train --config configs/voc.yaml [key=value ...]``.
Several GPUs: ``torchrun --nproc_per_node N -m ssrseg.cli train --config ...``.
Resume: ``ssrseg train --resume runs/ssr`` (the run folder or a ``ckpt_<step>`` folder; the
checkpoint's own config is used so the schedule continues unchanged).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ssrseg.commands.common import (
    add_dataset_args,
    add_job_args,
    apply_dataset_args,
    command_parser,
    input_paths,
    plain_doc,
    positive_int,
    refuse_overlap,
    resolve_device,
    resolve_split,
)

# lazy: `ssrseg --help` imports every command module, so the library (and torch) is imported
# inside the functions that run a command.

RUN_HINT = (
    "Train into another --output-dir, or continue this run with `ssrseg train --resume RUN` "
    "(which uses the run's own config)."
)


def add_parser(sub: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    p = command_parser(sub, name, help_text, plain_doc(__doc__), raw=True)
    p.add_argument("--config", help="YAML preset (configs/voc.yaml, coco.yaml, toy.yaml)")
    p.add_argument("overrides", nargs="*", help="config overrides key.path=value")
    p.add_argument("--resume", help="run folder or checkpoint folder to continue from")
    p.add_argument("--device", help="cpu | cuda | cuda:N (default: cuda if available)")
    p.add_argument("--output-dir", help="run folder (default: train.output_dir)")
    p.add_argument(
        "--max-steps", type=positive_int, help="stop after this step (schedule unchanged)"
    )
    add_dataset_args(p, "training split (data.train_split; folder datasets: all)")
    add_job_args(
        p,
        "start afresh in an --output-dir made with other settings (its checkpoints, metrics and "
        "records are deleted; nothing else in the folder is touched)",
    )
    return p


RUN_FILES = ("run.json", "config.yaml", "metrics.jsonl", "last")  # what a run writes, with
# its ckpt_<step> folders and tb/


def clear_run(run_dir: Any) -> None:
    """Delete what ssrseg train wrote in ``run_dir`` (and the folder if that leaves it empty);
    any other file stays."""
    import shutil
    from pathlib import Path

    run = Path(run_dir)
    for name in RUN_FILES:
        (run / name).unlink(missing_ok=True)
    for folder in [*run.glob("ckpt_*"), run / "tb"]:
        if folder.is_dir():
            shutil.rmtree(folder)
    if run.is_dir() and not any(run.iterdir()):
        run.rmdir()


RESUME_SECTIONS = ("config.train.", "config.cmpa.", "config.decoder.")


def resume_conflicts(saved: Any, cfg: Any) -> list[str]:
    """Settings a resumed run cannot change: its schedule (``train``) and the shapes and
    behaviour of what it trains (``cmpa``, ``decoder``); lines ``key: saved -> new``."""
    from ssrseg.runrecord import diff_records, make_record

    lines = diff_records(make_record(saved), make_record(cfg))
    return [line for line in lines if line.startswith(RESUME_SECTIONS)]


def run(args: argparse.Namespace) -> int:
    import dataclasses
    from pathlib import Path

    from ssrseg.config import load_config
    from ssrseg.engine.checkpoint import (
        LAST_FILE,
        CheckpointError,
        check_compatible,
        read_config,
        read_state,
    )
    from ssrseg.engine.distributed import cleanup, setup
    from ssrseg.engine.train import run_training
    from ssrseg.runrecord import RECORD_NAME, check_output, prepare_output

    if args.resume and not args.config:
        if args.overrides:
            print("error: overrides cannot change a resumed run's config", file=sys.stderr)
            return 2
        cfg = read_config(check_compatible(args.resume))
    else:
        cfg = load_config(args.config, args.overrides)
    cfg = apply_dataset_args(cfg, args)
    split = resolve_split(args.split, cfg, "train")
    if split != cfg.data.train_split:
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, train_split=split))
    if args.resume and args.config:
        # before anything is built: the checkpoint must fit the config given
        ckpt = check_compatible(args.resume, cfg)
        conflicts = resume_conflicts(read_config(ckpt), cfg)
        if conflicts:
            raise CheckpointError(
                f"{ckpt}: --config changes settings a resumed run keeps:\n  "
                + "\n  ".join(conflicts[:20])
                + "\nResume without --config (the run's own config) to continue the same "
                "schedule, or train a new run into another --output-dir."
            )
    run_dir = Path(args.output_dir or cfg.train.output_dir)
    if args.resume and not args.output_dir:
        resumed = Path(args.resume)
        run_dir = resumed if not resumed.name.startswith("ckpt_") else resumed.parent
    # config.yaml and run.json record where the run really lives
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, output_dir=str(run_dir)))
    if args.allow_skipped:
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, allow_skipped=True))
    # the run folder is the output: never the dataset or around it, never a tag / class file
    folders, files = input_paths(cfg, args)
    # its own checkpoint (--resume) is no input here: only the dataset folder
    refuse_overlap(run_dir, "--output-dir", folders[:1], files)
    # a run folder holds one configuration: refuse another before anything is built
    options: dict[str, Any] = {"command": "train"}
    overwrite = bool(args.overwrite) and not args.resume
    check_output(run_dir, cfg, options, overwrite=overwrite, command="ssrseg train", hint=RUN_HINT)
    device = resolve_device(args.device) if args.device else None
    if args.resume:
        ckpt = check_compatible(args.resume)
        done = read_state(ckpt).step
        target = cfg.train.iterations
        if args.max_steps is not None:
            target = min(target, args.max_steps)
        if done >= target:  # nothing is built for a run that is already there
            print(f"{ckpt} is at step {done} of {cfg.train.iterations}: nothing left to do")
            return 0
    ctx = setup(device)
    fresh = not (run_dir / RECORD_NAME).is_file()
    try:
        if ctx.is_main:
            if overwrite and not fresh:
                clear_run(run_dir)
                fresh = True
            # how far this call goes and where it runs: recorded, not compared
            options.update(max_steps=args.max_steps, device=str(ctx.device))
            prepare_output(run_dir, cfg, options, command="ssrseg train", hint=RUN_HINT)
        step = run_training(
            cfg, ctx, run_dir, args.resume, args.max_steps, progress=not args.no_progress
        )
    except Exception:
        # a run that failed before its first checkpoint leaves no record behind
        if ctx.is_main and fresh and not (run_dir / LAST_FILE).is_file():
            clear_run(run_dir)
        raise
    finally:
        cleanup(ctx)
    if step < 0:
        print("error: items were skipped (set data.allow_skipped=true to accept)", file=sys.stderr)
        return 3
    if ctx.is_main:
        print(f"trained to step {step}; checkpoints in {run_dir}")
    return 0
