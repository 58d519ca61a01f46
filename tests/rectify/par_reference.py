"""PAR written out literally (no shared code with :mod:`ssrseg.rectify.par`): the reference of
the PAR tests and of ``benchmarks/bench_par.py``."""

from __future__ import annotations

import math

import torch


def reference_par(
    images: torch.Tensor,
    scores: torch.Tensor,
    dilations: tuple[int, ...],
    iterations: int,
    temperature: float,
    position_weight: float,
) -> torch.Tensor:
    """Literal PAR: stack all neighbours (clamped coordinates = replicate padding), torch.std,
    ``iterations`` stacked sums. images ``B x 3 x H x W``, scores ``B x K x H x W`` -> refined
    scores ``B x K x H x W``."""
    _, _, h, w = images.shape
    rows = torch.arange(h, device=images.device)
    cols = torch.arange(w, device=images.device)
    offsets = []
    for d in dilations:
        for dy in (-d, 0, d):
            for dx in (-d, 0, d):
                if (dy, dx) != (0, 0):
                    offsets.append((dy, dx))

    def neighbours(x: torch.Tensor) -> torch.Tensor:  # B x C x H x W -> B x C x M x H x W
        maps = []
        for dy, dx in offsets:
            r = (rows + dy).clamp(0, h - 1)
            c = (cols + dx).clamp(0, w - 1)
            maps.append(x[:, :, r][:, :, :, c])
        return torch.stack(maps, dim=2)

    nb = neighbours(images)
    std = nb.std(dim=2, keepdim=True)
    colour = (-(((nb - images.unsqueeze(2)).abs() / (std + 1e-8) / temperature) ** 2)).mean(1)
    dist = torch.tensor(
        [math.sqrt(dy * dy + dx * dx) for dy, dx in offsets],
        dtype=images.dtype,
        device=images.device,
    )
    pos = -((dist / (dist.std() + 1e-8) / temperature) ** 2)
    weights = colour.softmax(dim=1) + position_weight * pos.softmax(dim=0).view(1, -1, 1, 1)
    for _ in range(iterations):
        scores = (neighbours(scores) * weights.unsqueeze(1)).sum(dim=2)
    return scores
