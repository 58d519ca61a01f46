"""Functional re-implementations of WeCLIP's decoder and PAR, for the tests (our own code).

They follow the structure of WeCLIP's code (zbf1991/WeCLIP: ``segformer_head.py``,
``Decoder/TransDecoder.py``, ``PAR.py``, ``model_attn_aff_voc.py``) rather than ssrseg's:

- decoder: per-layer MLPs on ``N x C x h x w`` maps, concatenation, 1x1 conv fusion, Dropout2d,
  a sequence-first (``L x N x D``) pre-norm transformer whose attention scales q by
  ``1 / sqrt(head_dim)`` before ``q k^T`` and whose MLP uses QuickGELU, a 1x1 conv classifier;
  the affinity ``sigmoid(F^T F)`` reads the fused map after Dropout2d;
- PAR: one-hot 3 x 3 kernels applied with ``conv2d`` at each dilation to replicate-padded maps,
  the position table ``[sqrt2, 1, sqrt2, 1, 1, sqrt2, 1, sqrt2] * d``, ``torch.std`` over the
  neighbour axis, softmax over it; the image resized to the score size with
  ``align_corners=True``;
- labels: background ``(1 - max_c cam_c) ** 1``, PAR on [background, CAMs] at the full crop
  size, argmax, class ids;
- losses (``scripts/dist_clip_voc.py``, ``utils/camutils.py``, its ToCo-style ``get_aff_loss``):
  the two-term CE, affinity labels from a nearest resize to the patch grid with the radius mask,
  the affinity loss with int16 label maps and counts + 1.

Parameters are read from an ssrseg ``SegDecoder``, so both run the same weights.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ssrseg.model.decoder import SegDecoder


def _ln(x: Tensor, norm: torch.nn.LayerNorm) -> Tensor:
    return F.layer_norm(x, (x.shape[-1],), norm.weight, norm.bias, eps=1e-5)


def weclip_block(
    x: Tensor, layer: torch.nn.TransformerEncoderLayer, heads: int, act: str
) -> Tensor:
    """One residual attention block on L x N x D tokens, parameters read from ``layer``."""
    length, n, d = x.shape
    hd = d // heads
    attn = layer.self_attn
    q, k, v = F.linear(_ln(x, layer.norm1), attn.in_proj_weight, attn.in_proj_bias).chunk(3, -1)

    def heads_first(t: Tensor) -> Tensor:  # L x N x D -> (N * heads) x L x hd
        return t.contiguous().view(length, n * heads, hd).transpose(0, 1)

    q, k, v = heads_first(q) / math.sqrt(hd), heads_first(k), heads_first(v)
    weights = torch.softmax(torch.bmm(q, k.transpose(-2, -1)), dim=-1)
    out = torch.bmm(weights, v).transpose(0, 1).contiguous().view(length, n, d)
    x = x + F.linear(out, attn.out_proj.weight, attn.out_proj.bias)
    hidden = F.linear(_ln(x, layer.norm2), layer.linear1.weight, layer.linear1.bias)
    if act == "quick_gelu":
        hidden = hidden * torch.sigmoid(1.702 * hidden)
    else:
        hidden = 0.5 * hidden * (1 + torch.erf(hidden / math.sqrt(2)))
    return x + F.linear(hidden, layer.linear2.weight, layer.linear2.bias)


def weclip_decoder(
    dec: SegDecoder,
    tokens: list[Tensor],
    grid: tuple[int, int],
    keep: Tensor | None = None,
    p: float = 0.1,
    act: str = "quick_gelu",
) -> tuple[Tensor, Tensor]:
    """(logits N x K x h x w, attn_pred N x hw x hw); ``keep`` N x E channel mask or None."""
    h, w = grid
    maps = []
    for mlp, t in zip(dec.mlps, tokens, strict=False):
        x = t[:, 1:].transpose(1, 2).reshape(t.shape[0], -1, h, w)  # N x C x h x w
        x = x.flatten(2).transpose(1, 2)
        x = F.linear(F.relu(F.linear(x, mlp[0].weight, mlp[0].bias)), mlp[2].weight, mlp[2].bias)
        maps.append(x.permute(0, 2, 1).reshape(x.shape[0], -1, h, w))
    cat = torch.cat(maps, dim=1)
    fts = F.conv2d(cat, dec.fuse.weight[:, :, None, None], dec.fuse.bias)
    if keep is not None:
        fts = fts * keep[:, :, None, None] / (1 - p)
    b, c = fts.shape[:2]
    x = fts.reshape(b, c, h * w).permute(2, 0, 1)
    for layer in dec.transformer.layers:
        x = weclip_block(x, layer, layer.self_attn.num_heads, act)
    x = x.permute(1, 2, 0).reshape(b, c, h, w)
    logits = F.conv2d(x, dec.classifier.weight[:, :, None, None], dec.classifier.bias)
    flat = fts.reshape(b, c, h * w)
    return logits, torch.sigmoid(flat.transpose(2, 1).bmm(flat))


DILATIONS = (1, 2, 4, 8, 12, 24)


def _one_hot_kernels() -> torch.Tensor:
    """8 x 1 x 3 x 3: one kernel per neighbour of the 3 x 3 window, row-major, centre skipped."""
    k = torch.zeros(8, 1, 3, 3)
    cells = [(r, c) for r in range(3) for c in range(3) if (r, c) != (1, 1)]
    for i, (r, c) in enumerate(cells):
        k[i, 0, r, c] = 1.0
    return k


def _neighbours(x: torch.Tensor, dilations: tuple[int, ...]) -> torch.Tensor:
    """B x C x H x W -> B x C x (8 * len(dilations)) x H x W via dilated one-hot convolutions."""
    b, c, h, w = x.shape
    kernel = _one_hot_kernels().to(x.dtype)
    out = []
    for d in dilations:
        padded = F.pad(x, [d] * 4, mode="replicate").reshape(b * c, 1, h + 2 * d, w + 2 * d)
        out.append(F.conv2d(padded, kernel, dilation=d).view(b, c, 8, h, w))
    return torch.cat(out, dim=2)


def weclip_par(
    images: torch.Tensor, masks: torch.Tensor, dilations: tuple[int, ...], iterations: int
) -> torch.Tensor:
    """WeCLIP's PAR forward, written out: images B x 3 x H' x W', masks B x K x H x W."""
    images = F.interpolate(images, size=masks.shape[-2:], mode="bilinear", align_corners=True)
    b, _, h, w = images.shape
    nb = _neighbours(images, dilations)  # B x 3 x M x H x W
    ring = torch.tensor([math.sqrt(2), 1, math.sqrt(2), 1, 1, math.sqrt(2), 1, math.sqrt(2)])
    pos = torch.cat([ring * d for d in dilations]).view(1, 1, -1, 1, 1).repeat(b, 1, 1, h, w)
    diff = (nb - images.unsqueeze(2)).abs()
    aff = -((diff / (nb.std(dim=2, keepdim=True) + 1e-8) / 0.3) ** 2)
    aff = aff.mean(dim=1, keepdim=True)  # B x 1 x M x H x W
    pos_aff = -((pos / (pos.std(dim=2, keepdim=True) + 1e-8) / 0.3) ** 2)
    aff = F.softmax(aff, dim=2) + 0.01 * F.softmax(pos_aff, dim=2)
    for _ in range(iterations):
        masks = (_neighbours(masks, dilations) * aff).sum(2)
    return masks


def weclip_labels(images: torch.Tensor, cams: torch.Tensor, keys: list[int]) -> torch.Tensor:
    """WeCLIP's label step of one crop: background ``(1 - max) ** 1``, PAR, argmax, class ids.

    images: 3 x H x W as PAR receives it; cams: K x H x W refined CAMs; keys: 0-based classes.
    """
    bg = torch.pow(1 - cams.max(dim=0, keepdim=True)[0], 1)
    scores = torch.cat([bg, cams], dim=0)
    refined = weclip_par(images[None].float(), scores[None].float(), DILATIONS, 20)
    valid_key = torch.tensor([0] + [k + 1 for k in keys])
    return valid_key[refined.argmax(dim=1)][0]


def weclip_seg_loss(pred: Tensor, label: Tensor, ignore_index: int = 255) -> Tensor:
    """WeCLIP's ``get_seg_loss``: mean CE over background pixels and over foreground pixels."""
    bg_label = label.clone()
    bg_label[label != 0] = ignore_index
    bg_loss = F.cross_entropy(pred, bg_label.long(), ignore_index=ignore_index)
    fg_label = label.clone()
    fg_label[label == 0] = ignore_index
    fg_loss = F.cross_entropy(pred, fg_label.long(), ignore_index=ignore_index)
    return (bg_loss + fg_loss) * 0.5


def weclip_radius_mask(h: int, w: int, radius: int) -> Tensor:
    """WeCLIP's ``get_mask_by_radius``: 1 where two grid cells are within ``radius`` per axis."""
    mask = torch.zeros(h * w, h * w)
    for i in range(h * w):
        r, c = divmod(i, w)
        for r2 in range(max(0, r - radius), min(h, r + radius + 1)):
            for c2 in range(max(0, c - radius), min(w, c + radius + 1)):
                mask[i, r2 * w + c2] = 1
                mask[r2 * w + c2, i] = 1
    return mask


def weclip_affinity_label(
    cam_label: Tensor, mask: Tensor, patch: int, ignore_index: int = 255
) -> Tensor:
    """WeCLIP's ``cams_to_affinity_label``: labels sampled by nearest resize to the patch grid,
    pairs equal -> 1 else 0, outside ``mask`` or touching an ignored cell -> ignore."""
    b, h, w = cam_label.shape
    small = F.interpolate(
        cam_label.unsqueeze(1).float(), size=[h // patch, w // patch], mode="nearest"
    )
    flat = small.reshape(b, 1, -1)
    rep = flat.repeat([1, flat.shape[-1], 1])
    aff = (rep == rep.permute(0, 2, 1)).long()
    for i in range(b):
        aff[i, mask == 0] = ignore_index
        aff[i, :, rep[i, 0, :] == ignore_index] = ignore_index
        aff[i, rep[i, 0, :] == ignore_index, :] = ignore_index
    return aff


def weclip_aff_loss(inputs: Tensor, targets: Tensor) -> Tensor:
    """WeCLIP's ``get_aff_loss`` (int16 label maps, counts + 1)."""
    pos_label = (targets == 1).type(torch.int16)
    pos_count = pos_label.sum() + 1
    neg_label = (targets == 0).type(torch.int16)
    neg_count = neg_label.sum() + 1
    pos_loss = torch.sum(pos_label * (1 - inputs)) / pos_count
    neg_loss = torch.sum(neg_label * inputs) / neg_count
    return 0.5 * pos_loss + 0.5 * neg_loss
