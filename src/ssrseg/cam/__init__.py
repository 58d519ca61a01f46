"""Initial CAMs: prompts as data and batched Grad-CAM on CLIP (SSR_SPEC sections 2-3)."""

from ssrseg.cam.gradcam import GradCamResult, gradcam
from ssrseg.cam.prompts import ClassPrompts, encode_prompts, prompts_from_config

__all__ = ["ClassPrompts", "GradCamResult", "encode_prompts", "gradcam", "prompts_from_config"]
