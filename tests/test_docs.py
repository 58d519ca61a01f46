"""Every ```bash / ```python block of README.md and docs/*.md runs as written.

Convention: a block is run unless the line right above its opening fence is an HTML comment
``<!-- no-test: reason -->`` (the reason is required). Blocks of one document run in order, in
one fresh working folder, so a later block may use what an earlier one wrote. Plain ``` blocks
(output, layouts) are not code.

The working folder holds what a user's checkout would: ``configs/`` (the real toy and COCO
presets), a small fake PASCAL VOC under ``data/VOCdevkit`` and a ``photos/`` folder. The one
stand-in is ``configs/voc.yaml``: it is the real preset (``base:``) with the backbones replaced by
``ssrseg weights random --size tiny`` files in the real OpenAI / DINO layouts and the schedule
shrunk to two steps, so the documented VOC workflow (paths, run folders, options passed on) runs
for real in about a minute on a CPU. No network is used (``SSRSEG_OFFLINE=1``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent / "data"))
from data_fakes import make_voc

from ssrseg.backbones.random_weights import write_random_weights
from ssrseg.data.classes import VOC_CLASSES

REPO = Path(__file__).resolve().parents[1]
DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w+)\s*$")
NO_TEST = re.compile(r"^<!--\s*no-test:\s*(\S.*?)\s*-->$")
RUNNABLE = ("bash", "python")
TIMEOUT_S = 300


@dataclass(frozen=True)
class Block:
    document: Path
    line: int  # of the opening fence, 1-based
    lang: str
    code: str
    skip_reason: str | None


def code_blocks(path: Path) -> list[Block]:
    """The fenced blocks of a Markdown file whose language is ``bash`` or ``python``."""
    lines = path.read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        above = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        marker = NO_TEST.match(above)
        if match.group(1) in RUNNABLE:
            code = "\n".join(lines[i + 1 : end]) + "\n"
            reason = marker.group(1) if marker else None
            blocks.append(Block(path, i + 1, match.group(1), code, reason))
        i = end + 1
    return blocks


def test_block_extraction_and_markers(tmp_path: Path) -> None:
    doc = tmp_path / "d.md"
    doc.write_text(
        "text\n\n<!-- no-test: needs a GPU -->\n```bash\nnvidia-smi\n```\n\n"
        "```python\nprint(1)\n```\n```\nplain output\n```\n```yaml\na: 1\n```\n"
    )
    blocks = code_blocks(doc)
    assert [(b.lang, b.line, b.skip_reason) for b in blocks] == [
        ("bash", 4, "needs a GPU"),
        ("python", 8, None),
    ]
    assert blocks[1].code == "print(1)\n"


def test_every_marker_gives_a_reason_and_precedes_a_block() -> None:
    for doc in DOCUMENTS:
        lines = doc.read_text().splitlines()
        for n, line in enumerate(lines):
            if line.strip().startswith("<!--") and "no-test" in line:
                assert NO_TEST.match(line.strip()), f"{doc.name}:{n + 1}: {line!r}"
                following = next(x for x in lines[n + 1 :] if x.strip())
                assert FENCE.match(following), f"{doc.name}:{n + 1}: no code block below"


# ----------------------------------------------------------------------------- workspace
@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("weights")
    clip = write_random_weights("clip_vit_b16.openai", folder / "clip" / "ViT-B-16.pt", "tiny")
    dino = write_random_weights("dino_vit_s16", folder / "dino" / "dino.pth", "tiny")
    return {"clip": clip[0], "dino": dino[0]}


def make_workspace(root: Path, weights: dict[str, Path]) -> Path:
    """A user's working folder: configs, a small fake VOC, photos."""
    configs = root / "configs"
    configs.mkdir(parents=True)
    for name in ("toy.yaml", "coco.yaml"):
        shutil.copy(REPO / "configs" / name, configs / name)
    (configs / "voc.yaml").write_text(
        "# the real VOC preset with tiny random backbones in the real file layouts and a\n"
        "# two-step schedule (tests/test_docs.py)\n"
        f"base: {REPO / 'configs' / 'voc.yaml'}\n"
        f"backbone: {{clip: {weights['clip']}, dino: {weights['dino']}, half_precision: false}}\n"
        "data: {crop_size: 64, num_workers: 0}\n"
        "sgc: {n_segments: 20}\n"
        "par: {iterations: 2}\n"
        "cmpa: {projected_cam_from: 1, refresh_every: 1}\n"
        "train: {iterations: 2, batch_size: 2, warmup_iters: 1, val_every: 2, val_images: 2,\n"
        "        ckpt_every: 1, log_every: 1}\n"
        "infer: {scales: [1.0], long_side: 64}\n"
    )
    train = {"2007_000032": [0], "2007_000039": [19], "2007_000063": [8, 11]}
    val = {"2007_000033": [0], "2007_000042": [18, 14]}
    extra = {"2008_000002": [14], "2008_000003": [6]}
    make_voc(
        root / "data",
        {"train": train, "val": val, "train_aug": {**train, **extra}},
        VOC_CLASSES,
        ext=".jpg",
    )
    rng = np.random.default_rng(0)
    (root / "photos").mkdir()
    for name, (h, w) in {"street": (40, 56), "garden": (33, 48)}.items():
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "photos" / f"{name}.jpg")
    return root


def run_block(block: Block, cwd: Path, env: dict[str, str]) -> None:
    if block.lang == "bash":
        argv = ["bash", "-euo", "pipefail", "-c", block.code]
    else:
        # a warning the user would see in a snippet (e.g. NumPy's not-writable array) fails it
        argv = [sys.executable, "-W", "error::UserWarning", "-c", block.code]
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    where = f"{block.document.relative_to(REPO)}:{block.line}"
    assert proc.returncode == 0, (
        f"{where} ({block.lang} block) failed with exit code {proc.returncode}\n"
        f"--- code\n{block.code}--- stdout (tail)\n{proc.stdout[-3000:]}"
        f"--- stderr (tail)\n{proc.stderr[-3000:]}"
    )


@pytest.mark.slow
@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.name)
def test_document_blocks_run_as_written(
    document: Path, weights: dict[str, Path], tmp_path: Path
) -> None:
    blocks = [b for b in code_blocks(document) if b.skip_reason is None]
    if not blocks:
        return  # nothing runnable (every block, if any, carries its reason)
    cwd = make_workspace(tmp_path / "ws", weights)
    bin_dir = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
        "SSRSEG_OFFLINE": "1",
        "HF_HUB_OFFLINE": "1",
        "SSRSEG_CACHE": str(tmp_path / "cache"),
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    for block in blocks:
        run_block(block, cwd, env)
