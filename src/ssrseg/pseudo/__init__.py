"""The pseudo-label stage (frozen backbones, CAMs, refinement, labels)."""

from ssrseg.pseudo.labeler import PseudoLabeler, PseudoLabelOutput, build_pseudo_labeler

__all__ = ["PseudoLabelOutput", "PseudoLabeler", "build_pseudo_labeler"]
