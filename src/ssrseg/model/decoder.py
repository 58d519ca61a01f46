"""WeCLIP-style segmentation decoder over frozen CLIP features (SSR_SPEC section 8).

Per CLIP layer 1..L an MLP ``D -> E -> E`` (ReLU between) maps patch tokens to E = 256; the L
maps are concatenated, fused by a 1x1 convolution to E, passed through channel dropout
(Dropout2d) and a small transformer over the patch grid, and classified by a 1x1 convolution
at patch resolution.
The fused features feed the affinity loss: in train mode after Dropout2d, as WeCLIP's code does
(``decoder.affinity_after_dropout``), or before it; in eval mode both are the same.

The transformer layers are WeCLIP's: pre-norm (LayerNorm eps 1e-5), 8-head attention with
biases and no dropout, an MLP ``E -> 4E -> E`` with QuickGELU ``x * sigmoid(1.702 x)``
(``decoder.activation``; ``gelu`` gives the exact erf GELU), no final norm, no position
embedding.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from ssrseg.config import DecoderConfig


def quick_gelu(x: Tensor) -> Tensor:
    """QuickGELU ``x * sigmoid(1.702 x)`` (OpenAI CLIP's and WeCLIP's decoder activation)."""
    return x * torch.sigmoid(1.702 * x)


# "gelu" stays a string so torch keeps its own (exact erf) GELU path
_ACTIVATIONS: dict[str, str | Callable[[Tensor], Tensor]] = {
    "quick_gelu": quick_gelu,
    "gelu": "gelu",
}


def decoder_layers(use_layers: int, clip_layers: int) -> int:
    """Number of CLIP layers the decoder reads: ``min(use_layers, clip_layers - 1)``.

    The last layer is left out as in WeCLIP (layers 1..11 of 12); a smaller toy CLIP gives
    fewer layers.
    """
    n = min(use_layers, clip_layers - 1)
    if n < 1:
        raise ValueError(f"the decoder needs >= 1 CLIP layer (CLIP has {clip_layers} layers)")
    return n


class SegDecoder(nn.Module):
    """Decoder over the patch tokens of CLIP layers ``1..num_layers_in``.

    in_width: CLIP width D; num_classes: K (background + foreground classes).
    """

    def __init__(
        self, cfg: DecoderConfig, in_width: int, num_layers_in: int, num_classes: int
    ) -> None:
        super().__init__()
        if cfg.activation not in _ACTIVATIONS:
            raise ValueError(
                f"decoder.activation must be one of {sorted(_ACTIVATIONS)}, got {cfg.activation!r}"
            )
        e = cfg.embed_dim
        self.num_layers_in = num_layers_in
        self.affinity_after_dropout = cfg.affinity_after_dropout
        self.mlps = nn.ModuleList(
            [
                nn.Sequential(nn.Linear(in_width, e), nn.ReLU(inplace=True), nn.Linear(e, e))
                for _ in range(num_layers_in)
            ]
        )
        # 1x1 convolutions written as Linear layers on channels-last tokens (same maths), so
        # no layout copies are needed between the MLPs, the transformer and the classifier
        self.fuse = nn.Linear(e * num_layers_in, e)
        self.dropout_p = cfg.dropout
        layer = nn.TransformerEncoderLayer(
            d_model=e,
            nhead=cfg.num_heads,
            dim_feedforward=int(e * cfg.ffn_ratio),
            dropout=0.0,
            activation=_ACTIVATIONS[cfg.activation],
            batch_first=True,
            norm_first=True,
        )
        # The CLIP tokens already carry position, so the transformer adds no position embedding.
        self.transformer = nn.TransformerEncoder(
            layer, num_layers=cfg.num_layers, enable_nested_tensor=False
        )
        self.classifier = nn.Linear(e, num_classes)

    def forward(self, tokens: Sequence[Tensor], grid: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """tokens: per CLIP block ``B x (1+N) x D`` (at least ``num_layers_in`` of them; block 1
        first, CLS first); grid: (h, w) with N = h * w.

        Returns (logits ``B x K x h x w``, affinity features ``B x E x h x w``: the fused map
        before the transformer, after Dropout2d in train mode when
        ``decoder.affinity_after_dropout``, else before it); both are channels-last views.
        """
        if len(tokens) < self.num_layers_in:
            raise ValueError(f"decoder needs {self.num_layers_in} layers, got {len(tokens)}")
        dtype = self.fuse.weight.dtype
        maps = [
            mlp(t[:, 1:].to(dtype))
            for mlp, t in zip(self.mlps, tokens[: self.num_layers_in], strict=True)
        ]
        fused = self.fuse(torch.cat(maps, dim=-1))  # B x N x E
        return self.decode(fused, grid)

    def decode(self, fused: Tensor, grid: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """Dropout2d, transformer and classifier on fused tokens ``B x N x E``; returns
        (logits, affinity features) as :meth:`forward`. WeCLIP+'s DINO branch
        (``ssrseg.model.dino_branch``) sends its own fused tokens through here."""
        h, w = grid
        dropped = channel_dropout(fused, self.dropout_p, self.training)
        logits = self.classifier(self.transformer(dropped))  # B x N x K
        affinity = dropped if self.affinity_after_dropout else fused
        return _to_map(logits, h, w), _to_map(affinity, h, w)


def channel_dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """Dropout2d for channels-last tokens ``B x N x E``: each sample drops whole channels."""
    if not training or p == 0.0:
        return x
    keep = torch.empty(x.shape[0], 1, x.shape[2], device=x.device, dtype=x.dtype)
    keep.bernoulli_(1.0 - p)
    return x * keep / (1.0 - p)


def _to_map(x: Tensor, h: int, w: int) -> Tensor:
    """``B x N x C`` -> ``B x C x h x w`` as a view (no copy)."""
    return x.unflatten(1, (h, w)).permute(0, 3, 1, 2)
