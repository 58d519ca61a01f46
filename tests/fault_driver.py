"""tests/parallel_driver.py with a fault planted in one rank, for the kill -9 and failure tests
of ``ssrseg reproduce`` under ``torchrun`` (tests/test_reproduce_resume.py):
``python fault_driver.py PLAN.json``, the fault read from the environment.

``SSRSEG_TEST_HOLD=RANK:TEXT:WHERE``: on rank RANK, the first label PNG whose path contains
TEXT is written, then the rank sleeps (so the test can kill -9 it at a known point of a stage):
WHERE ``after``: the PNG is complete under its own name; ``inside``: the rank sleeps inside the
atomic write (the temporary ``.<name>.*`` holds the PNG, not yet renamed: what kill -9 leaves).

``SSRSEG_TEST_FAIL=RANK:IMAGE_ID``: on rank RANK, the labeller call of the first Table 3 row
with PAR (the ``+ PAR (pseudo labels)`` row, whose PNGs the ``seeds`` stage keeps) raises
``RuntimeError("injected failure")`` for the image IMAGE_ID.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from ssrseg.atomic import atomic_path
from ssrseg.cli import main
from ssrseg.protocol import cam_rows, stages

RANK = os.environ.get("RANK", "0")


def plant_hold(spec: str) -> None:
    rank, text, where = spec.split(":")
    if rank != RANK:
        return
    real = stages.save_label_png

    def save(path: Any, labels: Any, palette: Any = None) -> Any:
        if text not in str(path):
            return real(path, labels, palette)
        if where == "inside":
            with atomic_path(path) as tmp:
                real(tmp, labels, palette)
                time.sleep(600)
        real(path, labels, palette)
        time.sleep(600)

    stages.save_label_png = save
    cam_rows.save_label_png = save  # type: ignore[attr-defined]


def plant_failure(spec: str) -> None:
    rank, image_id = spec.split(":")
    if rank != RANK:
        return
    real = cam_rows.run_call

    def run_call(labeler: Any, call: Any, cmpa: Any = None, superpixels: Any = None) -> Any:
        if labeler.cfg.par.enabled and any(s.image_id == image_id for s in call.samples):
            raise RuntimeError("injected failure")
        return real(labeler, call, cmpa, superpixels)

    cam_rows.run_call = run_call  # type: ignore[assignment]


if __name__ == "__main__":
    if os.environ.get("SSRSEG_TEST_HOLD"):
        plant_hold(os.environ["SSRSEG_TEST_HOLD"])
    if os.environ.get("SSRSEG_TEST_FAIL"):
        plant_failure(os.environ["SSRSEG_TEST_FAIL"])
    for argv in json.loads(Path(sys.argv[1]).read_text()):
        code = main(argv)
        if code:
            sys.exit(code)
