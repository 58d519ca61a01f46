"""Edges of the box mask and the masked-affinity refinement (mutation survivors): a class
without seeds before one with them, the mask's dtype, the float threshold's strict ">", the
quantised default, and refine_with_masked_affinity's ``square`` argument."""

from __future__ import annotations

import pytest
import torch

from ssrseg.rectify.affinity import (
    box_mask,
    box_seeds,
    fuse_affinity,
    mean_attention,
    refine_with_masked_affinity,
    transition_matrix,
)


def test_a_class_without_seeds_does_not_stop_the_later_classes() -> None:
    cam = torch.zeros(2, 4, 4)
    cam[1, 1:3, 0:2] = 1.0  # class 0 all zero (no seeds), class 1 a 2 x 2 blob
    out = box_mask(cam, 0.5, quantise=True, clip_last=False)
    assert out.dtype == torch.float32
    assert out[0].sum() == 0
    assert out[1].tolist() == [[0, 0, 0, 0], [1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0]]


def test_float_threshold_is_strict_and_quantised_is_the_default() -> None:
    # peak 1.0, threshold 0.5: the float path keeps > 0.5 (not the 0.5 pixel); the quantised
    # path floors to 8 bits: floor(255 * 0.502) = 128 > int(0.5 * 255) = 127 is a seed, while
    # the float path keeps 0.502 too but not 0.5
    cam = torch.tensor([[[1.0, 0.5, 0.502, 0.0]]])
    assert box_seeds(cam, 0.5, quantise=False).tolist() == [[[True, False, True, False]]]
    # 0.5 -> floor(127.5) = 127, not > 127; 0.502 -> 128 > 127
    assert box_seeds(cam, 0.5, quantise=True).tolist() == [[[True, False, True, False]]]
    edge = torch.tensor([[[1.0, 0.4995, 0.0, 0.0]]])  # 127.37 -> 127: no seed when quantised
    assert box_seeds(edge, 0.499, quantise=False).tolist() == [[[True, True, False, False]]]
    assert box_seeds(edge, 0.499, quantise=True).tolist() == [[[True, False, False, False]]]
    # box_mask quantises unless told otherwise
    assert torch.equal(box_mask(edge, 0.499, clip_last=False), box_mask(edge, 0.499, True, False))
    assert not torch.equal(
        box_mask(edge, 0.499, clip_last=False), box_mask(edge, 0.499, False, False)
    )


def test_masked_affinity_honours_square() -> None:
    g = torch.Generator().manual_seed(3)
    a = torch.rand(1, 6, 6, generator=g).softmax(dim=-1)
    cam = torch.rand(1, 1, 2, 3, generator=g)
    ones = torch.ones_like(cam)
    flat = refine_with_masked_affinity(a, cam, ones, rounds=3, square=False)
    squared = refine_with_masked_affinity(a, cam, ones, rounds=3, square=True)
    trans = transition_matrix(a, 3, square=False)
    want = trans[0] @ cam.flatten()
    want = (want - want.min()) / (want.max() - want.min() + 1e-7)
    torch.testing.assert_close(flat.flatten(), want, atol=1e-6, rtol=1e-5)
    assert float((flat - squared).abs().max()) > 1e-3


def test_fuse_affinity_defaults_and_errors() -> None:
    a, b = torch.ones(1, 2, 2), torch.full((1, 2, 2), 2.0)
    torch.testing.assert_close(fuse_affinity(a, b), torch.full((1, 2, 2), 0.4 + 1.2))
    with pytest.raises(
        ValueError, match=r"^no affinity: enable CLIP attention, DINO attention or both$"
    ):
        fuse_affinity(None, None)
    with pytest.raises(ValueError, match=r"same patch size and input size\)$"):
        fuse_affinity(a, torch.ones(1, 3, 3))


def test_quantised_seeds_clamp_values_above_one() -> None:
    # Refined CAMs can exceed 1: 1.5 and 1.0 both quantise to 255, so with t = 0.7 the threshold
    # is int(0.7 * 255) = 178 and both are seeds (unclamped, 1.5 -> 382 would lift it to 267).
    cam = torch.tensor([[[1.5, 1.0, 0.6, 0.0]]])
    assert box_seeds(cam, 0.7).tolist() == [[[True, True, False, False]]]


@pytest.mark.parametrize("quantise", [True, False])
@pytest.mark.parametrize("shape", [(2, 0, 0), (0, 3, 3)])
def test_box_seeds_of_empty_maps(shape: tuple[int, int, int], quantise: bool) -> None:
    # No pixel (h * w = 0) or no class: an empty seed map of the input's shape, no error.
    out = box_seeds(torch.zeros(shape), 0.5, quantise=quantise)
    assert out.shape == shape and out.dtype == torch.bool


def test_mean_attention_of_no_layer_is_torch_stack_error() -> None:
    # No block to average: the error comes from torch.stack (the CPU island needs no tensor).
    with pytest.raises(RuntimeError, match="non-empty"):
        mean_attention({}, [])
