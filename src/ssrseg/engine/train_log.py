"""The training run's ``metrics.jsonl`` (plus optional TensorBoard scalars), and which of its
lines a resumed run keeps so that the file ends equal to an uninterrupted run's."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ssrseg.atomic import atomic_write_text
from ssrseg.config import ConfigError

__all__ = ["PARTIAL", "MetricsLog", "resumed_lines"]

PARTIAL = "partial"  # marks a metrics line written only because a run stopped early


def resumed_lines(text: str, resume_step: int) -> list[str]:
    """The lines of ``metrics.jsonl`` a run resumed at ``resume_step`` keeps: those up to that
    step, less the ``partial`` ones (means over a window that the resumed run completes and
    logs again, so the file ends equal to an uninterrupted run's)."""
    kept = []
    lines = [line for line in text.splitlines() if line.strip()]
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except ValueError:
            if number == len(lines):
                continue  # cut short by a kill while it was written: it is redone
            raise ConfigError(
                f"metrics.jsonl line {number} is not JSON: repair or delete the line"
            ) from None
        if not isinstance(record, dict):
            raise ConfigError(f"metrics.jsonl line {number} is not a JSON object")
        if record.get("step", 0) <= resume_step and not record.get(PARTIAL):
            kept.append(line)
    return kept


class MetricsLog:
    """``metrics.jsonl`` (one JSON object per line) plus optional TensorBoard scalars."""

    def __init__(self, run_dir: Path, tensorboard: bool, resume_step: int | None) -> None:
        self.path = run_dir / "metrics.jsonl"
        if resume_step is not None and self.path.exists():
            # drop lines written after the checkpoint we resume from: they will be redone
            kept = resumed_lines(self.path.read_text(), resume_step)
            atomic_write_text(self.path, "".join(k + "\n" for k in kept))
        self.writer: Any = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise RuntimeError(
                    "train.tensorboard=true needs the 'tensorboard' package: "
                    "pip install tensorboard (or set train.tensorboard=false)"
                ) from None
            self.writer = SummaryWriter(str(run_dir / "tb"))

    def write(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if isinstance(value, int | float) and key != "step":
                    self.writer.add_scalar(key, value, record["step"])
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
