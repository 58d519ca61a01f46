"""Diagnostics of the toy world: does attention group objects, how do the ablation rows compare
with the paper's, where do a class's pixels leak onto its home context.

The maths are pure functions of tensors / arrays (tested on hand-made cases); thin wrappers run
a ViT over images. Used by the demo / ``ssrseg reproduce`` and by the probes in ``research/``
(outside the package).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ssrseg.backbones.vit import VisionTransformer
from ssrseg.data.toy import HOME, ToyWorld
from ssrseg.rectify.affinity import mean_attention, transition_matrix

IGNORE = 255

# The paper's numbers (SSR_SPEC section 11), mIoU on VOC train, keyed by the demo's row names.
PAPER_TABLE3: dict[str, float] = {
    "initial CAM": 63.3,  # the paper's Table 3 starts from the CMPA initial CAM
    "+ CLIP attention (box mask)": 74.6,
    "+ DINO attention (box mask)": 76.3,
    "+ SGC mask": 78.7,
}
PAPER_TABLE4: dict[str, float] = {
    "raw CLIP CAM": 58.6,
    "direct feature fine-tuning": 53.5,
    "intra-modal contrastive": 57.8,
    "CMPA CAM": 63.3,
}


# ----------------------------------------------------------------------------------------------
# (a) attention grouping


def patch_labels(masks: Tensor, grid: tuple[int, int], ignore: int = IGNORE) -> Tensor:
    """Majority label of each patch: ``B x H x W`` integer masks -> ``B x N`` long (N = h * w).

    H and W must be multiples of the grid. Pixels labelled ``ignore`` do not vote; a patch with
    only ignored pixels gets ``ignore``. Ties go to the smaller label.
    """
    b, height, width = masks.shape
    h, w = grid
    if height % h or width % w:
        raise ValueError(f"mask size {height}x{width} is not a multiple of the grid {grid}")
    masks = masks.long()
    valid = masks != ignore
    n_labels = int(masks[valid].max()) + 1 if valid.any() else 1
    onehot = F.one_hot(masks.masked_fill(~valid, 0), n_labels).permute(0, 3, 1, 2).float()
    onehot = onehot * valid[:, None].float()
    votes = F.avg_pool2d(onehot, (height // h, width // w))  # B x L x h x w
    labels = votes.argmax(dim=1)
    labels = labels.masked_fill(votes.sum(dim=1) == 0, ignore)
    return labels.reshape(b, h * w)


def _query_rows(attn: Tensor, labels: Tensor) -> Tensor:
    """``B x N x N`` attention rows renormalised over the N patches (shape-checked)."""
    if attn.shape[:2] != labels.shape or attn.shape[-1] != labels.shape[-1]:
        raise ValueError(f"attention {tuple(attn.shape)} does not match labels {labels.shape}")
    attn = attn.detach().float()
    return attn / attn.sum(dim=-1, keepdim=True).clamp_min(1e-12)


def same_label_attention_ratios(attn: Tensor, labels: Tensor, ignore: int = IGNORE) -> Tensor:
    """Per-patch same-label attention mass over its chance share.

    attn: ``B x N x N`` head-averaged patch-to-patch attention (rows = queries; any non-negative
    weights: each row is renormalised over the N patches, so attention to the class token does
    not count); labels: ``B x N`` patch labels (0 background). For query patch i with label l:
    ``share_i = sum_{j: l_j = l} A_ij / sum_j A_ij`` and ``chance_i = #{j: l_j = l} / N``
    (uniform attention scores 1). Returns the ratios of the foreground query patches (label not
    0 and not ``ignore``), all images concatenated: ``M`` float.
    """
    rows = _query_rows(attn, labels)
    same = (labels[:, :, None] == labels[:, None, :]).float()  # B x N x N
    share = (rows * same).sum(dim=-1)
    chance = same.mean(dim=-1)
    fg = (labels != 0) & (labels != ignore)
    return (share / chance)[fg]


def background_to_object_ratios(attn: Tensor, labels: Tensor, ignore: int = IGNORE) -> Tensor:
    """Per background patch: its attention mass on object patches over their chance share.

    The other half of :func:`same_label_attention_ratios`: refinement (``cam' = T @ cam``)
    gives a background patch the activation of the patches it attends to, so a ratio above 1
    spreads an object's CAM onto the background. attn: ``B x N x N`` (rows renormalised over
    the N patches); labels: ``B x N``. For background query i: ``share_i = sum_{j: l_j object}
    A_ij / sum_j A_ij``, ``chance_i = #{j: l_j object} / N``. Returns the ratios of the
    background patches of images with at least one object patch: ``M`` float.
    """
    rows = _query_rows(attn, labels)
    obj = ((labels != 0) & (labels != ignore)).float()  # B x N
    share = (rows * obj[:, None, :]).sum(dim=-1)  # B x N
    chance = obj.mean(dim=-1, keepdim=True).expand_as(share)
    keep = (labels == 0) & (chance > 0)
    return (share / chance.clamp_min(1e-12))[keep]


def same_label_attention(attn: Tensor, labels: Tensor, ignore: int = IGNORE) -> float:
    """Mean over foreground patches of :func:`same_label_attention_ratios` (NaN when none)."""
    ratios = same_label_attention_ratios(attn, labels, ignore)
    return float(ratios.mean()) if ratios.numel() else float("nan")


@torch.no_grad()
def attention_grouping_by_layer(
    vit: VisionTransformer,
    images01: Tensor,
    masks: Tensor,
    batch_size: int = 16,
    transition: bool = False,
    queries: str = "object",
) -> dict[int, float]:
    """Same-label attention mass / chance of every block of ``vit`` (0-based index -> ratio).

    ``queries="background"``: instead, the background patches' mass on object patches / chance
    (:func:`background_to_object_ratios`; above 1, refinement spreads objects onto background).

    images01: ``B x 3 x H x W`` in [0, 1]; masks: ``B x H x W`` (0 background, c + 1 class c,
    255 ignore). Patch labels are the majority label of each patch; the ratio is averaged over
    all foreground patches of all images (:func:`same_label_attention_ratios`). With
    ``transition`` each block's attention first goes through the pipeline's CLIP-ES transition
    (3 Sinkhorn rounds, symmetrised, squared: ``ssrseg.rectify.affinity.transition_matrix``),
    which removes attention sinks (columns every row attends to) before the mass is counted.
    """
    metrics = {"object": same_label_attention_ratios, "background": background_to_object_ratios}
    if queries not in metrics:
        raise ValueError(f"queries must be 'object' or 'background', got {queries!r}")
    metric = metrics[queries]
    was_training = vit.training
    vit.eval()
    layers = list(range(vit.cfg.layers))
    ratios: dict[int, list[Tensor]] = {i: [] for i in layers}
    for lo in range(0, images01.shape[0], batch_size):
        x = images01[lo : lo + batch_size]
        out = vit.forward_intermediates(vit.normalize(x), attn_layers=layers)
        labels = patch_labels(masks[lo : lo + batch_size], out.grid)
        for i in layers:
            attn = out.attentions[i]
            if transition:
                attn = transition_matrix(attn)
            ratios[i].append(metric(attn, labels))
    vit.train(was_training)
    return {i: float(torch.cat(r).mean()) if r else float("nan") for i, r in ratios.items()}


@torch.no_grad()
def attention_grouping_rows(
    vit: VisionTransformer, images01: Tensor, masks: Tensor, batch_size: int = 16
) -> dict[str, dict[str, float]]:
    """Same-label attention mass / chance per block and per "last k blocks" average.

    images01: ``B x 3 x H x W`` in [0, 1]; masks: ``B x H x W`` (0 background, c + 1 class c).
    Rows (L = number of blocks): ``"block i"`` (1-based) for each block, then ``"last k
    blocks"`` for k = 1 .. L: the mean of the last k blocks' head-averaged attentions, as the
    pseudo labeller fuses ``affinity.clip_layers`` / ``affinity.dino_layers`` = k. Each row has
    ``"raw"`` (the attention itself) and ``"transition"`` (after the CLIP-ES transition, which
    the affinity actually uses). One forward per batch serves every row.
    """
    was_training = vit.training
    vit.eval()
    n_blocks = vit.cfg.layers
    layers = list(range(n_blocks))
    names = [f"block {i + 1}" for i in layers] + [f"last {i + 1} blocks" for i in layers]
    ratios: dict[tuple[str, str], list[Tensor]] = {
        (n, kind): [] for n in names for kind in ("raw", "transition")
    }
    for lo in range(0, images01.shape[0], batch_size):
        out = vit.forward_intermediates(
            vit.normalize(images01[lo : lo + batch_size]), attn_layers=layers
        )
        labels = patch_labels(masks[lo : lo + batch_size], out.grid)
        maps = {f"block {i + 1}": out.attentions[i].float() for i in layers}
        for k in range(1, n_blocks + 1):
            maps[f"last {k} blocks"] = mean_attention(out.attentions, layers[n_blocks - k :])
        for name, attn in maps.items():
            ratios[(name, "raw")].append(same_label_attention_ratios(attn, labels))
            ratios[(name, "transition")].append(
                same_label_attention_ratios(transition_matrix(attn), labels)
            )
    vit.train(was_training)
    table: dict[str, dict[str, float]] = {n: {} for n in names}
    for (name, kind), parts in ratios.items():
        cat = torch.cat(parts) if parts else torch.empty(0)
        table[name][kind] = float(cat.mean()) if cat.numel() else float("nan")
    return table


def best_last_k(rows: Mapping[str, Mapping[str, float]], kind: str = "transition") -> int | None:
    """The k of the ``"last k blocks"`` row with the highest ``kind`` ratio (smallest k on a
    tie; None when no row is finite)."""
    best: tuple[float, int] | None = None
    for name, values in rows.items():
        if not name.startswith("last "):
            continue
        k, v = int(name.split()[1]), values.get(kind, float("nan"))
        if np.isfinite(v) and (best is None or v > best[0] or (v == best[0] and k < best[1])):
            best = (float(v), k)
    return None if best is None else best[1]


def backbone_grouping(
    backbones: Mapping[str, VisionTransformer | None],
    n: int,
    seed: int = 0,
    split: str = "val",
) -> dict[str, dict[str, float]]:
    """:func:`attention_grouping_rows` of several backbones on the first ``n`` scenes of a toy
    split (default ``val``: the biased held-out split the demo never scores, so choosing
    ``affinity.dino_layers`` from it does not touch the scored images).

    Returns ``{row: {"<name>": raw ratio, "<name>_transition": ratio after the transition}}``
    for each backbone name (None backbones are left out).
    """
    images, masks = toy_scenes(split, n, seed)
    table: dict[str, dict[str, float]] = {}
    for name, vit in backbones.items():
        if vit is None:
            continue
        device = next(vit.parameters()).device
        rows = attention_grouping_rows(vit, images.to(device), masks.to(device))
        for row, values in rows.items():
            table.setdefault(row, {})[name] = values["raw"]
            table[row][f"{name}_transition"] = values["transition"]
    return table


def toy_scenes(split: str, n: int, seed: int = 0, start: int = 0) -> tuple[Tensor, Tensor]:
    """Scenes ``start .. start + n - 1`` of a toy split: (``n x 3 x H x W`` in [0, 1], masks
    ``n x H x W`` long)."""
    world = ToyWorld(split, seed)
    samples = [world[start + i] for i in range(n)]
    images = torch.from_numpy(np.stack([s.image for s in samples])).permute(0, 3, 1, 2)
    masks = torch.from_numpy(np.stack([s.mask for s in samples])).long()
    return images.float() / 255.0, masks


# ----------------------------------------------------------------------------------------------
# (b) measured rows next to the paper's


def table_rows(
    measured: Mapping[str, float], paper: Mapping[str, float]
) -> list[tuple[str, float, float | None]]:
    """(row, measured, paper or None) in the measured rows' order."""
    return [(name, float(v), paper.get(name)) for name, v in measured.items()]


def bar_chart(
    tables: Sequence[tuple[str, Sequence[tuple[str, float, float | None]]]],
    path: str | Path | None = None,
    ylabel: str = "mIoU (%)",
) -> Any:
    """Grouped bars, one panel per table: measured (toy) next to the paper's value per row.

    tables: (title, rows of (name, measured, paper or None)). Returns the matplotlib Figure
    (Agg backend; no display needed) and writes it to ``path`` (PNG) when given. Rows without
    a paper value get only the measured bar.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.0 * max(1, len(tables)), 4.2), layout="constrained")
    axes = fig.subplots(1, max(1, len(tables)), squeeze=False)[0]
    for ax, (title, rows) in zip(axes, tables, strict=False):
        x = np.arange(len(rows))
        measured = [r[1] for r in rows]
        ax.bar(x - 0.2, measured, width=0.4, label="toy world (measured)", color="#3b75af")
        px = [i for i, r in enumerate(rows) if r[2] is not None]
        pv = [float(r[2]) for r in rows if r[2] is not None]
        if px:  # no empty paper series: its legend entry would show a bar that is not there
            ax.bar(np.asarray(px) + 0.2, pv, width=0.4, label="paper (VOC)", color="#c0c0c0")
        for xi, v in zip(x, measured, strict=True):
            ax.text(xi - 0.2, v + 0.5, f"{v:.1f}", ha="center", va="bottom", fontsize=7)
        ax.set_xticks(x, [r[0] for r in rows], rotation=25, ha="right", fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel(ylabel)
        ax.set_ylim(0, 100)
        ax.legend(fontsize=7, loc="upper left")
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
    return fig


# ----------------------------------------------------------------------------------------------
# (c) home-context leak


def context_leak_counts(
    pred: np.ndarray,
    mask: np.ndarray,
    labels: Iterable[int],
    context: str | None,
    homes: Mapping[int, str | None],
) -> dict[str, tuple[int, int]]:
    """One image's (pixels of class c predicted on ground-truth background, pixels predicted as
    c), summed over its classes, split by whether the image shows the class's home context.

    pred / mask: ``H x W`` (0 background, c + 1 class c); labels: 0-based classes of the image;
    context: the image's background name; homes: class -> home context (None: no home, skipped).
    """
    out = {"home": (0, 0), "elsewhere": (0, 0)}
    for c in labels:
        home = homes.get(c)
        if home is None:
            continue
        where = "home" if context == home else "elsewhere"
        on_class = pred == c + 1
        leak, total = out[where]
        out[where] = (leak + int((on_class & (mask == 0)).sum()), total + int(on_class.sum()))
    return out


def context_leak_table(
    items: Iterable[tuple[np.ndarray, np.ndarray, Iterable[int], str | None]],
    homes: Mapping[int, str | None],
) -> dict[str, float]:
    """Share (%) of a class's predicted pixels on ground-truth background, on images showing the
    class's home context vs elsewhere (the failure SGC targets); NaN where nothing was predicted.

    items: per image (pred, mask, labels, context name), as in :func:`context_leak_counts`.
    """
    acc = {"home": [0, 0], "elsewhere": [0, 0]}
    for pred, mask, labels, context in items:
        for k, (leak, total) in context_leak_counts(pred, mask, labels, context, homes).items():
            acc[k][0] += leak
            acc[k][1] += total
    return {k: (100 * v[0] / v[1] if v[1] else float("nan")) for k, v in acc.items()}


def home_contexts(class_names: Iterable[str]) -> dict[int, str | None]:
    """Class index -> its home context in the toy world (None: no home)."""
    return {i: HOME.get(name) for i, name in enumerate(class_names)}


def caption_contexts(root: str | Path) -> Callable[[str], str | None]:
    """The context of each image of a rendered toy world under ``root``: the last word of its
    caption ("... on <context>."; None for an image without a caption)."""
    import json
    import re

    captions = json.loads((Path(root) / "captions.json").read_text())

    def context(image_id: str) -> str | None:
        words = re.findall(r"[a-z]+", captions.get(image_id, "").lower())
        return words[-1] if words else None

    return context


def context_leak(dataset: Any, indices: Sequence[int], preds: Mapping[str, np.ndarray]) -> dict:
    """:func:`context_leak_table` over a rendered toy dataset (``ssrseg.data`` 'toy'): the
    context of each image is the last word of its caption (:func:`caption_contexts`)."""
    context = caption_contexts(dataset.root)

    def items() -> Iterable[tuple[np.ndarray, np.ndarray, Iterable[int], str | None]]:
        for i in indices:
            s = dataset[i]
            if s.image_id not in preds:
                continue
            yield preds[s.image_id], s.mask, s.labels, context(s.image_id)

    return context_leak_table(items(), home_contexts(dataset.class_names))
