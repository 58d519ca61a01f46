"""Test-only re-implementation of CLIP-ES's CAM stage, step by step as its code runs.

Written from reading linyq2117/CLIP-ES (generate_cams_voc12.py, clip/model.py,
pytorch_grad_cam/base_cam.py + grad_cam.py + activations_and_gradients.py, utils.py
``scoremap2bbox``, pytorch_grad_cam's ``scale_cam_image``, eval_cam*.py's background and argmax),
in functional form and deliberately *not* through ssrseg's pipeline code: sequence-first
tensors, ``F.multi_head_attention_forward`` (what its ``nn.MultiheadAttention`` runs), one
forward + backward of the last block per class, NumPy for the CAM arithmetic, a pure-Python
8-connected component search for the boxes, a NumPy port of OpenCV's bilinear ``resize``, and
float16 maps before the argmax (its ``.npy`` files). Only the embedding of the image into tokens
(patch conv, class token, position table, ln_pre) is borrowed from the model under test: the
position table's resize is a separate item (backbones) with its own tests.

OpenCV is not a dependency here: its contours are replaced by the 8-connected components they
trace (all contours, holes included, are drawn as boxes by CLIP-ES; a hole's box lies inside its
component's box, so the union of boxes is the same), and ``cv2.resize(INTER_LINEAR)`` by its
formula (half-pixel centres, float32 weights, borders clamped).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from ssrseg.backbones.vit import Block, VisionTransformer

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


# ----------------------------------------------------------------------------- input


def clip_es_size(ori_h: int, ori_w: int, patch: int, scale: float = 1.0) -> tuple[int, int]:
    """``int(np.ceil(scale * ori / patch) * patch)`` per side (its ``img_ms_and_flip``)."""
    h = int(np.ceil(scale * int(ori_h) / patch) * patch)
    w = int(np.ceil(scale * int(ori_w) / patch) * patch)
    return h, w


def clip_es_preprocess(image: np.ndarray, h: int, w: int) -> Tensor:
    """torchvision ``Resize((h, w), BICUBIC)`` on the PIL image, RGB, ``ToTensor``,
    ``Normalize`` (CLIP's mean / std): ``3 x h x w`` float32."""
    pil = Image.fromarray(image).resize((w, h), Image.Resampling.BICUBIC).convert("RGB")
    x = torch.from_numpy(np.array(pil, dtype=np.uint8)).permute(2, 0, 1).contiguous()
    x = x.float().div(255)
    mean = torch.tensor(CLIP_MEAN)[:, None, None]
    std = torch.tensor(CLIP_STD)[:, None, None]
    return x.sub(mean).div(std)


# ----------------------------------------------------------------------------- transformer


def _ln(x: Tensor, ln: torch.nn.LayerNorm) -> Tensor:
    # CLIP's LayerNorm subclass computes in float32
    return F.layer_norm(x.float(), ln.normalized_shape, ln.weight, ln.bias, ln.eps)


def _attention(block: Block, h: Tensor) -> tuple[Tensor, Tensor]:
    """``nn.MultiheadAttention(h, h, h, need_weights=True)``: L x N x D, head-mean N x L x L."""
    out, weights = F.multi_head_attention_forward(
        h, h, h, h.shape[-1], block.attn.heads,
        block.attn.qkv.weight, block.attn.qkv.bias, None, None, False, 0.0,
        block.attn.proj.weight, block.attn.proj.bias,
        training=False, need_weights=True, attn_mask=None,
    )  # fmt: skip
    assert weights is not None
    return out, weights


def _mlp(block: Block, x: Tensor) -> Tensor:
    z = F.linear(x, block.mlp.fc1.weight, block.mlp.fc1.bias)
    z = z * torch.sigmoid(1.702 * z)  # QuickGELU
    return F.linear(z, block.mlp.fc2.weight, block.mlp.fc2.bias)


def _resblock_from_ln1(block: Block, x: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
    """``ResidualAttentionBlock.forward`` given ``h = ln_1(x)`` (the Grad-CAM target layer)."""
    a, weights = _attention(block, h)
    x = x + a
    x = x + _mlp(block, _ln(x, block.norm2))
    return x, weights


def encode_image(visual: VisionTransformer, image: Tensor) -> tuple[Tensor, list[Tensor]]:
    """Its ``encode_image``: tokens (L x 1 x D) after blocks 1..L-1 (no grad) and their
    attention weights (1 x L x L each)."""
    with torch.no_grad():
        x, _ = visual.embed(image[None])
        x = x.permute(1, 0, 2)  # NLD -> LND
        weights = []
        for block in list(visual.blocks)[:-1]:
            x, w = _resblock_from_ln1(block, x, _ln(x, block.norm1))
            weights.append(w)
    return x, weights


def forward_last_layer(
    visual: VisionTransformer, x: Tensor, text: Tensor, scale: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Last block with the ``ln_1`` output hooked; ln_post, mean over patches, proj, cosine
    logits times the scale, softmax. Returns (probs 1 x T, h, attention)."""
    block = list(visual.blocks)[-1]
    h = _ln(x, block.norm1).detach().requires_grad_(True)
    y, attn = _resblock_from_ln1(block, x, h)
    y = y.permute(1, 0, 2)
    y = _ln(y, visual.norm)
    y = torch.mean(y[:, 1:, :], dim=1)
    assert visual.proj is not None
    y = y @ visual.proj
    img = y / y.norm(dim=1, keepdim=True)
    txt = text / text.norm(dim=1, keepdim=True)
    probs = (scale * img @ txt.t()).softmax(dim=-1)
    return probs, h, attn


# ----------------------------------------------------------------------------- Grad-CAM


def reshape_transform(t: Tensor, height: int, width: int) -> Tensor:
    t = t.permute(1, 0, 2)
    r = t[:, 1:, :].reshape(t.size(0), height, width, t.size(2))
    return r.transpose(2, 3).transpose(1, 2)


def scale_cam_image(cam: np.ndarray, target_size: tuple[int, int] | None = None) -> np.ndarray:
    result = []
    for img in cam:
        img = img - np.min(img)
        img = img / (1e-7 + np.max(img))
        if target_size is not None:
            img = cv2_resize_linear(img, target_size)
        result.append(img)
    return np.float32(result)


def grad_cam(
    visual: VisionTransformer, x: Tensor, text: Tensor, scale: float, target: int,
    grid: tuple[int, int],
) -> tuple[np.ndarray, np.ndarray, Tensor, Tensor]:  # fmt: skip
    """One ``cam(input_tensor=[x, text, H, W], targets=[target])`` call: (normalised CAM h x w,
    raw ReLU CAM h x w, softmax 1 x T, last attention)."""
    probs, h, attn = forward_last_layer(visual, x, text, scale)
    (grad,) = torch.autograd.grad(probs[0][target], h)
    gh, gw = grid
    activations = reshape_transform(h.detach(), gh, gw).numpy()
    grads = reshape_transform(grad, gh, gw).numpy()
    weights = np.mean(grads, axis=(2, 3))
    cam = (weights[:, :, None, None] * activations).sum(axis=1)
    cam = np.maximum(cam, 0).astype(np.float32)
    per_layer = [scale_cam_image(cam, None)[:, None, :]]
    stacked = np.maximum(np.concatenate(per_layer, axis=1), 0)
    result = scale_cam_image(np.mean(stacked, axis=1))
    return result[0], cam[0], probs.detach(), attn.detach()


# ----------------------------------------------------------------------------- boxes


def _components(binary: np.ndarray) -> list[list[tuple[int, int]]]:
    """8-connected components of a boolean map (breadth-first), as lists of (row, col)."""
    h, w = binary.shape
    seen = np.zeros_like(binary, dtype=bool)
    comps = []
    for r in range(h):
        for c in range(w):
            if not binary[r, c] or seen[r, c]:
                continue
            queue, comp = deque([(r, c)]), []
            seen[r, c] = True
            while queue:
                y, x = queue.popleft()
                comp.append((y, x))
                for dy in (-1, 0, 1):
                    for dx in (-1, 0, 1):
                        yy, xx = y + dy, x + dx
                        if 0 <= yy < h and 0 <= xx < w and binary[yy, xx] and not seen[yy, xx]:
                            seen[yy, xx] = True
                            queue.append((yy, xx))
            comps.append(comp)
    return comps


def scoremap2bbox(scoremap: np.ndarray, threshold: float) -> tuple[np.ndarray, int]:
    """Boxes ``[x0, y0, x1, y1]`` of the thresholded 8-bit map, ends clipped to w-1 / h-1."""
    height, width = scoremap.shape
    image = (scoremap * 255).astype(np.uint8)
    thresh = int(threshold * np.max(image))
    binary = image > thresh  # cv2.THRESH_BINARY
    comps = _components(binary)
    if not comps:
        return np.asarray([[0, 0, 0, 0]]), 1
    boxes = []
    for comp in comps:
        ys = [p[0] for p in comp]
        xs = [p[1] for p in comp]
        x, y = min(xs), min(ys)
        w, h = max(xs) - x + 1, max(ys) - y + 1  # cv2.boundingRect
        x0, y0, x1, y1 = x, y, x + w, y + h
        x1 = min(x1, width - 1)
        y1 = min(y1, height - 1)
        boxes.append([x0, y0, x1, y1])
    return np.asarray(boxes), len(boxes)


# ----------------------------------------------------------------------------- resize


def _linear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    scale = n_in / n_out
    fx = ((np.arange(n_out) + 0.5) * scale - 0.5).astype(np.float32)
    sx = np.floor(fx).astype(np.int64)
    fx = (fx - sx).astype(np.float32)
    low = sx < 0
    fx[low], sx[low] = 0, 0
    high = sx >= n_in - 1
    fx[high], sx[high] = 0, n_in - 1
    sx1 = np.minimum(sx + 1, n_in - 1)
    return sx, sx1, (np.float32(1) - fx).astype(np.float32), fx


def cv2_resize_linear(img: np.ndarray, dsize: tuple[int, int]) -> np.ndarray:
    """``cv2.resize(img, dsize=(w, h))`` (INTER_LINEAR) of a float32 h x w map."""
    out_w, out_h = dsize
    in_h, in_w = img.shape
    if (in_h, in_w) == (out_h, out_w):
        return img.copy()
    x0, x1, a0, a1 = _linear_taps(in_w, out_w)
    y0, y1, b0, b1 = _linear_taps(in_h, out_h)
    rows = img[:, x0] * a0 + img[:, x1] * a1
    return (rows[y0] * b0[:, None] + rows[y1] * b1[:, None]).astype(np.float32)


# ----------------------------------------------------------------------------- the script


@dataclass
class ClipEsImage:
    """Every intermediate of one image (order of ``label_ids``)."""

    size: tuple[int, int]
    probs: list[Tensor] = field(default_factory=list)  # 1 x (K + G) per class call
    raw: list[np.ndarray] = field(default_factory=list)
    cams: list[np.ndarray] = field(default_factory=list)
    attn: Tensor | None = None  # N x N mean of the last 8
    trans: Tensor | None = None  # before the box mask
    masks: list[Tensor] = field(default_factory=list)
    refined: np.ndarray | None = None  # K x H0 x W0 float32
    labels: np.ndarray | None = None  # H0 x W0


def generate_cams(
    visual: VisionTransformer,
    image: np.ndarray,
    label_ids: list[int],
    fg_text: Tensor,
    bg_text: Tensor,
    scale: float,
    box_threshold: float = 0.4,
    power: float = 1.0,
) -> ClipEsImage:
    """``perform`` of generate_cams_voc12.py for one image, then eval_cam's labels."""
    patch = visual.cfg.patch_size
    ori_h, ori_w = image.shape[:2]
    h, w = clip_es_size(ori_h, ori_w, patch)
    x_img = clip_es_preprocess(image, h, w)
    out = ClipEsImage(size=(h, w))
    x, attn_list = encode_image(visual, x_img)
    text = torch.cat([fg_text[label_ids], bg_text], dim=0)
    grid = (h // patch, w // patch)
    refined = []
    attn_weight = torch.zeros(0)
    for idx, _ in enumerate(label_ids):
        cam, raw, probs, attn_last = grad_cam(visual, x, text, scale, idx, grid)
        out.cams.append(cam)
        out.raw.append(raw)
        out.probs.append(probs)
        if idx == 0:
            stack = [aw[:, 1:, 1:] for aw in [*attn_list, attn_last]]
            attn_weight = torch.mean(torch.stack(stack, dim=0)[-8:], dim=0)[0].float()
            out.attn = attn_weight
        box, cnt = scoremap2bbox(cam, box_threshold)
        aff_mask = torch.zeros((cam.shape[0], cam.shape[1]))
        for i in range(cnt):
            x0, y0, x1, y1 = box[i]
            aff_mask[y0:y1, x0:x1] = 1
        out.masks.append(aff_mask.clone())
        aff_mask = aff_mask.view(1, cam.shape[0] * cam.shape[1])
        trans = attn_weight / torch.sum(attn_weight, dim=0, keepdim=True)
        trans = trans / torch.sum(trans, dim=1, keepdim=True)
        for _ in range(2):
            trans = trans / torch.sum(trans, dim=0, keepdim=True)
            trans = trans / torch.sum(trans, dim=1, keepdim=True)
        trans = (trans + trans.transpose(1, 0)) / 2
        trans = torch.matmul(trans, trans)
        out.trans = trans
        trans = trans * aff_mask
        cam_refined = torch.matmul(trans, torch.FloatTensor(cam).view(-1, 1))
        cam_refined = cam_refined.reshape(h // patch, w // patch).numpy().astype(np.float32)
        refined.append(scale_cam_image(np.stack([cam_refined]), (ori_w, ori_h))[0])
    out.refined = np.stack(refined)
    # eval_cam.py / eval_cam_with_crf.py on the float16 maps of the .npy file
    cams16 = out.refined.astype(np.float16)
    bg = np.power(1 - np.max(cams16, axis=0, keepdims=True), power)
    scores = np.concatenate((bg, cams16), axis=0)
    keys = np.pad(np.asarray(label_ids) + 1, (1, 0), mode="constant")
    out.labels = keys[np.argmax(scores, axis=0)]
    return out
