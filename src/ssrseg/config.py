"""Configuration: frozen dataclasses holding the spec's defaults; YAML presets only override.

Every field carries a comment naming its source: [paper] (the SSR paper), [WeCLIP], [WeCLIP+]
(its DINOv2 version, ``docs/dinov2.md``), [CLIP-ES], or [decision] (this project's choice where
the paper is silent; each is explained in ``docs/reproduction.md``).

Use :func:`load_config` to read a YAML preset and ``key.path=value`` overrides; unknown keys are
an error naming the key and the nearest valid one. :func:`save_config` writes the resolved config
next to every output.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from ssrseg.atomic import atomic_write_text as write


@dataclass(frozen=True)
class BackboneConfig:
    """Frozen backbones and their weights."""

    clip: str = (
        "clip_vit_b16.openai"  # [paper] CLIP ViT-B/16; a registry name, local path or hub id
    )
    # [paper] DINO ViT-S/16 for the fused affinity; a DINOv2 name (dinov2_vits14 ...) puts
    # DINOv2 in the slot, run on CLIP's patch grid (docs/dinov2.md)
    dino: str = "dino_vit_s16"
    use_dino: bool = True  # [paper] needed for the "+DINO attention" rows; off saves its forward
    half_precision: bool = True  # [decision] backbones in half precision on GPU (see precision)
    # [CLIP-ES, WeCLIP] auto (half_precision: true -> fp16, false -> fp32) | fp32 | fp16 (fp16
    # weights and activations, LayerNorm in fp32: OpenAI CLIP on a GPU) | bf16 (bf16 autocast);
    # acts on CUDA only (ssrseg.precision); the label maths after the backbones stays fp32
    precision: str = "auto"
    precision_cpu: bool = False  # [decision] apply precision on the CPU too (tests, benchmarks)
    # [CLIP-ES] CLIP's position table to the input grid: bilinear_fp16 (CLIP-ES / WeCLIP: bilinear,
    # table rounded to fp16) | bicubic (ssrseg before; transformers). DINO keeps bicubic.
    pos_embed_resize: str = "bilinear_fp16"
    # [decision] DINO's position table: bicubic (transformers, the tested reference) |
    # bicubic_offset (official DINO / DINOv2 code: +0.1 scale factor; WeCLIP+ loads DINOv2 so)
    dino_pos_embed_resize: str = "bicubic"


@dataclass(frozen=True)
class PromptConfig:
    """Text side of Grad-CAM; class names, synonyms and background words are data."""

    dataset: str = "voc"  # [decision] which class list to use: voc | coco | toy | a path to a file
    template: str = "a clean origami {}."  # [CLIP-ES]
    background_words: tuple[str, ...] | None = None  # [CLIP-ES] None: the dataset's own list
    use_background_words: bool = True  # [CLIP-ES] background words join the softmax


@dataclass(frozen=True)
class CamConfig:
    """Initial CAM: Grad-CAM on CLIP (SSR_SPEC section 3)."""

    # [CLIP-ES] logits = scale * cosine in the raw CLIP space; None: the CLIP model's own
    # exp(logit_scale) (CLIP-ES's; 100 for OpenAI ViT-B/16), a number overrides it
    logit_scale: float | None = None
    projected: bool = False  # [paper] CAM in the CMPA-projected space once CMPA heads are trained
    # [decision] where the projected-space Grad-CAM reads the features (the paper does not say):
    # block_input = the last block's ln_1 output, as the raw CAM [CLIP-ES]; patch_embeddings =
    # the CLIP's projected patch tokens, the CMPA heads' input (docs/toy_world.md, "The rest of
    # the gap"). The raw-space CAM always uses block_input.
    projected_target: str = "block_input"
    batch_classes: bool = True  # [decision] all classes of an image in one batched backward
    minmax_passes: int = 2  # [CLIP-ES] min-max each CAM twice (its scale_cam_image); 1: once
    # [CLIP-ES] image to the work size: pil_bicubic (PIL bicubic on uint8, then / 255) |
    # torch_bilinear (float bilinear, align_corners=False)
    input_resize: str = "pil_bicubic"


@dataclass(frozen=True)
class AffinityConfig:
    """Attention affinity and the transition matrix (SSR_SPEC section 4)."""

    use_clip_attention: bool = True  # [CLIP-ES] Table 3 row "+CLIP attention"
    use_dino_attention: bool = True  # [paper] Table 3 row "+DINO attention"
    clip_layers: int = 8  # [CLIP-ES] average of the last 8 layers' head-averaged attention
    dino_layers: int = 1  # [decision] DINO's last layer only
    clip_weight: float = 0.4  # [decision, from paper's 0.4:0.6 ratio] weight of CLIP affinity
    dino_weight: float = 0.6  # [decision, from paper's 0.4:0.6 ratio] weight of DINO affinity
    sinkhorn_rounds: int = 3  # [CLIP-ES] column-then-row normalisation rounds
    square: bool = True  # [CLIP-ES] T <- T @ T once after symmetrising
    mask: str = "sgc"  # [paper] column mask: sgc | box | none (box is the CLIP-ES baseline)
    box_threshold: float = 0.4  # [CLIP-ES] 0.4 VOC, 0.7 COCO: boxes around CAM > t * max
    # [CLIP-ES] threshold the 8-bit CAM: floor(255 cam) > int(t * max); false: cam > t * max
    box_quantise: bool = True
    # [CLIP-ES, WeCLIP] box ends clipped to w-1 / h-1, then sliced exclusively: the last patch
    # row and column are never in a box; false: full bounding boxes
    box_clip_last: bool = True
    mask_target: str = "transition"  # [decision] mask T (CLIP-ES order), not A (paper eq. 10)
    decoder_affinity: bool = False  # [WeCLIP] RFM: multiply T by the decoder's affinity; off


@dataclass(frozen=True)
class SGCConfig:
    """Superpixel-guided correction (SSR_SPEC section 5)."""

    n_segments: int = 100  # [decision] SLIC segments
    compactness: float = 10.0  # [decision] SLIC compactness
    n_clusters: int = 8  # [decision] K of the colour K-means over superpixels
    colour_space: str = "lab"  # [decision] superpixel colour feature: lab | rgb
    tau_hi: float = 0.4  # [decision] CAM value counted as strong activation
    theta: float = 0.5  # [decision] strong-activation ratio that makes a cluster a target
    patch_majority: float = 0.5  # [decision] share of a patch's pixels that must be in targets
    kmeans_iters: int = 20  # [decision] Lloyd iterations
    seed: int = 0  # [decision] K-means initialisation seed (deterministic masks)


@dataclass(frozen=True)
class PARConfig:
    """Pixel-adaptive refinement (SSR_SPEC section 7)."""

    enabled: bool = True  # [WeCLIP]
    dilations: tuple[int, ...] = (1, 2, 4, 8, 12, 24)  # [WeCLIP]
    iterations: int = 20  # [WeCLIP]
    colour_temperature: float = 0.3  # [WeCLIP] w1 in -(|dI| / std / w1)^2
    position_weight: float = 0.01  # [WeCLIP] weight of the position softmax
    normalise: bool = False  # [decision] divide weights by 1 + position_weight (WeCLIP: off)
    # [WeCLIP] the image is resized to the score size with align_corners=True; false: the
    # half-pixel (align_corners=False) convention
    align_corners: bool = True


@dataclass(frozen=True)
class PseudoLabelConfig:
    """Online / offline pseudo labels (SSR_SPEC section 7)."""

    background_power: float = 1.0  # [WeCLIP] background = (1 - max_c cam_c) ** power
    # [WeCLIP option] confidence band on the best foreground score f (after PAR): f < low ->
    # background, f > high -> that class, in between -> 255. Both None: off (docs/par_crf.md).
    ignore_low: float | None = None
    ignore_high: float | None = None
    cam_size: int | None = None  # [decision] None: CAMs at the image size
    # [CLIP-ES] refined CAMs of an image run at a work size: direct (one bilinear resize from
    # the patch grid to the original size, labels there) | two_step (grid -> work size, labels,
    # scores resized to the original)
    output_resize: str = "direct"
    # [decision] round refined CAMs and background to float16 before the argmax, as CLIP-ES's
    # saved .npy files do (its labels come from them); off: float32
    fp16_scores: bool = False
    # [WeCLIP] 1: WeCLIP's training runs PAR at the full label size; d > 1 runs it at 1/d and
    # upsamples the scores (ToCo's down_scale=2, a WeCLIP routine not called in training)
    par_downscale: int = 1


@dataclass(frozen=True)
class CRFConfig:
    """Dense CRF (SSR_SPEC section 10); needs the optional extra ``crf`` (pydensecrf2)."""

    iterations: int = 10  # [WeCLIP]
    gaussian_sxy: float = 3.0  # [WeCLIP]
    gaussian_compat: float = 3.0  # [WeCLIP]
    bilateral_sxy: float = 64.0  # [WeCLIP]
    bilateral_srgb: float = 5.0  # [WeCLIP]
    bilateral_compat: float = 4.0  # [WeCLIP]
    # [decision] labels the CRF runs over: all (WeCLIP) or present = background + the classes
    # the image's own argmax uses (far fewer for COCO's 81; docs/reproduction.md measures it)
    labels: str = "all"


@dataclass(frozen=True)
class CMPAConfig:
    """Cross-modal prototype alignment (SSR_SPEC section 6)."""

    enabled: bool = True  # [paper]
    in_dim: int = 512  # [paper] d1, CLIP embedding width (toy CLIP overrides)
    out_dim: int = 256  # [decision] d2 < d1
    hidden_dim: int = 512  # [decision] width of the hidden Linear-BN-ReLU layer
    num_layers: int = 2  # [decision] Linear-BN-ReLU stacks per head
    tau_init: float = 0.05  # [paper] learnable temperature, initial value
    tau_min: float = 0.01  # [decision] clamp of the log-parameterised temperature
    symmetric: bool = True  # [decision] text-to-visual-prototype term, paper's aim (ii)
    prototypes: str = "class_mean"  # [decision] class_mean | kmeans (paper's variant)
    refresh_every: int = 5000  # [paper] visual prototype refresh period (iterations)
    kmeans_iters: int = 50  # [decision] Lloyd iterations of a K-means refresh (kmeans mode)
    # [decision] kmeans mode: f_ic kept between refreshes (the newest; 5000 it. x batch 4 x
    # ~1.5 classes = 30k on VOC)
    kmeans_max_features: int = 50000
    start_iter: int = 0  # [decision] iteration from which the prototype loss trains the heads
    # [decision] iteration from which online pseudo labels use CMPA-projected CAMs (needs
    # cam.projected=true; presets wait until the heads have trained)
    projected_cam_from: int = 0
    plain_last_layer: bool = True  # [decision] last head layer is a plain Linear (no BN/ReLU)
    # [decision] background term in L_proto (not the paper's): the CAM's background feature vs
    # [classes + background prompts], positive = the raw-space nearest prompt (raw_nearest) or
    # any prompt (any); none = the paper's loss (docs/toy_world.md, CMPA)
    background_term: str = "none"


@dataclass(frozen=True)
class DecoderConfig:
    """WeCLIP-style decoder (SSR_SPEC section 8)."""

    embed_dim: int = 256  # [WeCLIP] width of per-layer MLPs, fusion and transformer
    num_layers: int = 3  # [WeCLIP] transformer depth
    num_heads: int = 8  # [WeCLIP]
    dropout: float = 0.1  # [WeCLIP] Dropout2d after fusion
    use_layers: int = 11  # [WeCLIP] CLIP layers 1..11 feed the decoder
    ffn_ratio: float = 4.0  # [WeCLIP] transformer feed-forward width / embed_dim
    activation: str = "quick_gelu"  # [WeCLIP] transformer MLP: quick_gelu | gelu (exact erf)
    # [WeCLIP] train-mode affinity features: true = the fused map after Dropout2d (WeCLIP);
    # false = before it (no dropout noise in L_aff)
    affinity_after_dropout: bool = True
    # [WeCLIP+] DINO decoder branch (docs/dinov2.md): DINO patch features through their own
    # fusion head and the shared transformer; logits fused; affinity from both fused maps
    dino_branch: bool = False
    dino_layers: int = 1  # [WeCLIP+] last DINO blocks (after DINO's final norm) fed to the branch
    dino_weight: float = 0.5  # [WeCLIP+] logits = (1 - w) * CLIP branch + w * DINO branch
    # [WeCLIP+] fused prediction weights the CAMs, concatenated-feature affinity multiplies the
    # attention affinity before refinement (needs dino_branch)
    dino_feedback: bool = True
    # [WeCLIP+] under feedback, average only the CLIP attention layers whose patch-to-patch
    # mass is >= the mean (WeCLIP+'s layer choice); false: all affinity.clip_layers
    dino_layer_select: bool = False


@dataclass(frozen=True)
class LossConfig:
    """Loss weights (SSR_SPEC section 8)."""

    w_proto: float = 1.0  # [paper] eq. 12
    w_seg: float = 0.1  # [paper] eq. 12
    w_aff: float = 0.01  # [decision] WeCLIP's 0.1 ratio to the segmentation loss; 0 = eq. 12
    aff_radius: int = 8  # [WeCLIP] Chebyshev window of the affinity loss (17 x 17)


@dataclass(frozen=True)
class DataConfig:
    """Dataset selection."""

    dataset: str = "voc"  # [decision] voc | coco | folder | toy
    root: str = "data/VOCdevkit/VOC2012"  # [decision] dataset root
    train_split: str = "train_aug"  # [WeCLIP] 10,582 images
    val_split: str = "val"  # [paper]
    tag_file: str | None = None  # [decision] image_id -> class names; None: from annotations
    classes: str | None = None  # [decision] class-name file of a folder dataset (None: its own)
    crop_size: int = 320  # [WeCLIP]
    scale_range: tuple[float, float] = (0.5, 2.0)  # [WeCLIP]
    hflip: bool = True  # [WeCLIP]
    num_workers: int = 4  # [decision]
    allow_skipped: bool = False  # [decision] exit 0 even if bad inputs were skipped
    superpixels: str = "image"  # [decision] image: SLIC once on the whole image, carried through
    # the crop (training loader) | crop: SLIC per crop inside the pseudo labeller
    # [WeCLIP] mean/std of the images CLIP sees in training and inference (the SSR model):
    # imagenet (WeCLIP's loader) | clip (CLIP's own; the CAM stage always uses CLIP's, CLIP-ES)
    clip_normalisation: str = "imagenet"
    scale_rounding: str = "floor"  # [WeCLIP] rescaled size int(s * side): floor | round


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and schedule (SSR_SPEC section 9)."""

    iterations: int = 30000  # [paper] VOC 30k, COCO 80k
    batch_size: int = 4  # [WeCLIP] (paper: 128; see docs/reproduction.md)
    lr: float = 2e-4  # [WeCLIP] base lr for batch 4 (paper: 1e-5 at batch 128)
    decoder_lr_mult: float = 10.0  # [WeCLIP] x10 for the decoder
    weight_decay: float = 2e-3  # [paper]
    warmup_iters: int = 50  # [WeCLIP]
    warmup_ratio: float = 1e-6  # [WeCLIP] lr starts at ratio * lr
    poly_power: float = 1.0  # [WeCLIP]
    # [WeCLIP] false: during warm-up the factor is the ramp alone; true: ramp x poly factor
    warmup_poly: bool = False
    seed: int = 0  # [decision]
    amp: str = "auto"  # [decision] auto (bf16 on GPU, off on CPU) | bf16 | fp16 | off
    val_every: int = 2000  # [decision]
    val_images: int | None = None  # [decision] None: the whole val split
    ckpt_every: int = 1000  # [decision]
    log_every: int = 20  # [decision]
    output_dir: str = "runs/ssr"  # [decision]
    tensorboard: bool = False  # [decision]
    keep_last: int = 3  # [decision] checkpoints kept on disk (older ones are deleted)
    # [decision] pseudo labels of crop padding set to 255 (WeCLIP trains on them: false)
    ignore_crop_padding: bool = True
    supervision: str = "pseudo"  # [decision] pseudo (SSR) | gt: decoder on ground-truth masks
    # (fully supervised bound of Table 6; needs cmpa.enabled=false)


@dataclass(frozen=True)
class InferConfig:
    """Inference (SSR_SPEC section 10)."""

    scales: tuple[float, ...] = (1.0, 0.75)  # [WeCLIP]
    flip: bool = True  # [WeCLIP]
    long_side: int = 512  # [WeCLIP]
    crf: bool = False  # [WeCLIP] reported with and without
    batch_size: int = 1  # [decision]
    pad_mode: str = "replicate"  # [decision] padding to the patch multiple: replicate | zeros


@dataclass(frozen=True)
class SSRConfig:
    """The whole configuration of a run."""

    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    prompts: PromptConfig = field(default_factory=PromptConfig)
    cam: CamConfig = field(default_factory=CamConfig)
    affinity: AffinityConfig = field(default_factory=AffinityConfig)
    sgc: SGCConfig = field(default_factory=SGCConfig)
    par: PARConfig = field(default_factory=PARConfig)
    pseudo: PseudoLabelConfig = field(default_factory=PseudoLabelConfig)
    crf: CRFConfig = field(default_factory=CRFConfig)
    cmpa: CMPAConfig = field(default_factory=CMPAConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    infer: InferConfig = field(default_factory=InferConfig)


class ConfigError(ValueError):
    """A config file or override names an unknown key or holds a value of the wrong type."""


T = TypeVar("T")


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert a YAML value to the annotated field type, or raise ConfigError naming ``where``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return _build(tp, value, where)
    if origin is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.strip("()[]").split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], where) for v in value)
        if len(args) != len(value):
            raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
        return tuple(_coerce(v, a, where) for v, a in zip(value, args, strict=True))
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        try:
            as_float = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected an integer, got {value!r}") from None
        if not as_float.is_integer():
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return int(as_float)
    if tp is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if tp is str:
        if isinstance(value, dict | list):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value


def _build(cls: type[T], values: dict[str, Any], where: str = "") -> T:
    """Build dataclass ``cls`` from ``values``, starting from its defaults."""
    return _merge(cls(), values, where)


def _merge(base: T, values: dict[str, Any], where: str = "") -> T:
    cls = type(base)
    hints = _field_types(cls)
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    changes: dict[str, Any] = {}
    for key, value in values.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in names:
            near = difflib.get_close_matches(str(key), names, n=1, cutoff=0.5)
            hint = f"; did you mean '{(where + '.') if where else ''}{near[0]}'?" if near else ""
            raise ConfigError(f"unknown config key '{path}'{hint} (valid: {', '.join(names)})")
        current = getattr(base, key)
        if dataclasses.is_dataclass(current) and not isinstance(current, type):
            if not isinstance(value, dict):
                raise ConfigError(f"{path}: expected a mapping, got {value!r}")
            changes[key] = _merge(current, value, path)
        else:
            changes[key] = _coerce(value, hints[key], path)
    return dataclasses.replace(base, **changes)  # type: ignore[type-var]


def merge_values(base: T, values: dict[str, Any]) -> T:
    """``base`` (a config dataclass) with the nested ``values`` applied as an override file would
    be: each value converted to its field's type (``"6e-4"`` -> 0.0006), unknown keys refused
    with a :class:`ConfigError` naming them. No cross-field validation (``validate_config``)."""
    return _merge(base, values)


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """Turn ``["train.lr=1e-4"]`` into a nested dict; values are parsed as YAML."""
    nested: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key.path=value")
        key, raw = item.split("=", 1)
        node = nested
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""
    return nested


def _deep_update(dst: dict[str, Any], src: dict[str, Any]) -> dict[str, Any]:
    for key, value in src.items():
        if isinstance(value, dict) and isinstance(dst.get(key), dict):
            _deep_update(dst[key], value)
        else:
            dst[key] = value
    return dst


def load_config(
    path: str | os.PathLike[str] | None = None, overrides: list[str] | None = None
) -> SSRConfig:
    """Read a YAML preset (may be ``None``) and apply ``key.path=value`` overrides.

    A preset may name ``base: other.yaml`` (relative to itself) to start from another preset.
    """
    values: dict[str, Any] = {}
    if path is not None:
        values = _read_yaml(Path(path))
    if overrides:
        values = _deep_update(values, parse_overrides(overrides))
    return validate_config(_build(SSRConfig, values))


def _read_yaml(path: Path, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A preset's values with its ``base:`` chain applied; ``chain``: the presets that named
    this one (a preset met twice is a loop, refused rather than recursed into)."""
    if not path.is_file():
        where = f" (named by base: in {chain[-1]})" if chain else ""
        raise ConfigError(f"{path}: config file not found{where}")
    here = path.resolve()
    if here in chain:
        loop = " -> ".join(p.name for p in (*chain, here))
        raise ConfigError(
            f"{path}: its base: chain loops ({loop}); remove the base: line that comes back"
        )
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    base = data.pop("base", None)
    if base is not None:
        if not isinstance(base, str) or not base.strip():
            raise ConfigError(f"{path}: base: must name another YAML file, got {base!r}")
        return _deep_update(_read_yaml(path.parent / base, (*chain, here)), data)
    return data


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict (tuples as lists) suitable for YAML/JSON."""

    def convert(value: Any) -> Any:
        if isinstance(value, tuple | list):
            return [convert(v) for v in value]
        if isinstance(value, dict):
            return {k: convert(v) for k, v in value.items()}
        return value

    return convert(dataclasses.asdict(cfg))


def config_from_dict(values: dict[str, Any]) -> SSRConfig:
    """Inverse of :func:`config_to_dict` (strict: unknown keys and invalid values are an
    error)."""
    return validate_config(_build(SSRConfig, values))


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file in the same folder and a rename, with
    the permissions a plain write gives (see :mod:`ssrseg.atomic`)."""
    write(path, text)


def save_config(cfg: SSRConfig, out_dir: str | os.PathLike[str], name: str = "config.yaml") -> Path:
    """Save the resolved config as YAML next to an output; returns the file's path."""
    path = Path(out_dir) / name
    atomic_write_text(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    return path


# ----------------------------------------------------------------------------------------------
# Valid values. Every field that is not a plain bool has a rule in FIELD_RULES (a test checks
# this), so a new field gets one line here. Rules are checked when a config is built
# (load_config, config_from_dict); None passes for fields whose type allows None.


@dataclass(frozen=True)
class Rule:
    """Allowed values of one field: ``ok(value)`` decides, ``allowed`` says it in words."""

    ok: typing.Callable[[Any], bool]
    allowed: str


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def at_least(lo: float) -> Rule:
    """``value >= lo`` (NaN fails: comparisons with NaN are false)."""
    return Rule(lambda v: _number(v) and v >= lo, f">= {lo:g}")


def above(lo: float) -> Rule:
    """``value > lo`` and finite."""
    return Rule(lambda v: _number(v) and lo < v < float("inf"), f"> {lo:g}")


def between(lo: float, hi: float, hi_open: bool = False) -> Rule:
    """``lo <= value <= hi`` (``< hi`` with ``hi_open``)."""
    if hi_open:
        return Rule(lambda v: _number(v) and lo <= v < hi, f"in [{lo:g}, {hi:g})")
    return Rule(lambda v: _number(v) and lo <= v <= hi, f"in [{lo:g}, {hi:g}]")


def one_of(*choices: str, fold_case: bool = False) -> Rule:
    """One of ``choices`` (case-insensitively with ``fold_case``)."""

    def ok(v: Any) -> bool:
        return isinstance(v, str) and (v.lower() if fold_case else v) in choices

    return Rule(ok, "one of " + " | ".join(choices))


def each(rule: Rule) -> Rule:
    """A non-empty list whose every item passes ``rule``."""
    return Rule(
        lambda v: isinstance(v, tuple | list) and len(v) > 0 and all(rule.ok(x) for x in v),
        f"a non-empty list of values each {rule.allowed}",
    )


NON_EMPTY = Rule(lambda v: isinstance(v, str) and v.strip() != "", "a non-empty string")
ANY_TEXT = Rule(lambda v: isinstance(v, str), "a string")
PROBABILITY = between(0.0, 1.0)

FIELD_RULES: dict[str, Rule] = {
    "backbone.clip": NON_EMPTY,
    "backbone.dino": NON_EMPTY,
    "backbone.precision": one_of("auto", "fp32", "fp16", "bf16"),
    "backbone.pos_embed_resize": one_of("bilinear_fp16", "bicubic"),
    "backbone.dino_pos_embed_resize": one_of("bicubic", "bicubic_offset"),
    "prompts.dataset": NON_EMPTY,
    "prompts.template": Rule(
        lambda v: isinstance(v, str) and v.count("{}") == 1,
        "text with exactly one {} (where the class name goes)",
    ),
    "prompts.background_words": each(NON_EMPTY),
    "cam.logit_scale": above(0.0),
    "cam.minmax_passes": at_least(1),
    "cam.input_resize": one_of("pil_bicubic", "torch_bilinear"),
    "cam.projected_target": one_of("block_input", "patch_embeddings"),
    "affinity.clip_layers": at_least(1),
    "affinity.dino_layers": at_least(1),
    "affinity.clip_weight": at_least(0.0),
    "affinity.dino_weight": at_least(0.0),
    "affinity.sinkhorn_rounds": at_least(0),
    "affinity.mask": one_of("sgc", "box", "none"),
    "affinity.box_threshold": PROBABILITY,
    "affinity.mask_target": one_of("transition", "affinity"),
    "sgc.n_segments": at_least(1),
    "sgc.compactness": above(0.0),
    "sgc.n_clusters": at_least(1),
    "sgc.colour_space": one_of("lab", "rgb"),
    "sgc.tau_hi": PROBABILITY,
    "sgc.theta": PROBABILITY,
    "sgc.patch_majority": PROBABILITY,
    "sgc.kmeans_iters": at_least(1),
    "sgc.seed": at_least(0),
    "par.dilations": each(at_least(1)),
    "par.iterations": at_least(0),
    "par.colour_temperature": above(0.0),
    "par.position_weight": at_least(0.0),
    "pseudo.background_power": above(0.0),
    "pseudo.ignore_low": PROBABILITY,
    "pseudo.ignore_high": PROBABILITY,
    "pseudo.cam_size": at_least(1),
    "pseudo.output_resize": one_of("direct", "two_step"),
    "pseudo.par_downscale": at_least(1),
    "crf.iterations": at_least(1),
    "crf.gaussian_sxy": above(0.0),
    "crf.gaussian_compat": at_least(0.0),
    "crf.bilateral_sxy": above(0.0),
    "crf.bilateral_srgb": above(0.0),
    "crf.bilateral_compat": at_least(0.0),
    "crf.labels": one_of("all", "present"),
    "cmpa.in_dim": at_least(1),
    "cmpa.out_dim": at_least(1),
    "cmpa.hidden_dim": at_least(1),
    "cmpa.num_layers": at_least(1),
    "cmpa.tau_init": above(0.0),
    "cmpa.tau_min": above(0.0),
    "cmpa.prototypes": one_of("class_mean", "kmeans"),
    "cmpa.background_term": one_of("none", "raw_nearest", "any"),
    "cmpa.refresh_every": at_least(1),
    "cmpa.kmeans_iters": at_least(1),
    "cmpa.kmeans_max_features": at_least(1),
    "cmpa.start_iter": at_least(0),
    "cmpa.projected_cam_from": at_least(0),
    "decoder.embed_dim": at_least(1),
    "decoder.num_layers": at_least(1),
    "decoder.num_heads": at_least(1),
    "decoder.dropout": between(0.0, 1.0, hi_open=True),
    "decoder.use_layers": at_least(1),
    "decoder.ffn_ratio": above(0.0),
    "decoder.activation": one_of("quick_gelu", "gelu"),
    "decoder.dino_layers": at_least(1),
    "decoder.dino_weight": PROBABILITY,
    "loss.w_proto": at_least(0.0),
    "loss.w_seg": at_least(0.0),
    "loss.w_aff": at_least(0.0),
    "loss.aff_radius": at_least(1),
    "data.dataset": one_of("voc", "coco", "folder", "toy"),
    "data.root": NON_EMPTY,
    "data.train_split": NON_EMPTY,
    "data.val_split": ANY_TEXT,  # empty: no validation split
    "data.tag_file": NON_EMPTY,
    "data.classes": NON_EMPTY,
    "data.crop_size": at_least(1),
    "data.scale_range": Rule(
        lambda v: (
            isinstance(v, tuple | list)
            and len(v) == 2
            and all(above(0.0).ok(x) for x in v)
            and v[0] <= v[1]
        ),
        "two numbers 0 < low <= high",
    ),
    "data.num_workers": at_least(0),
    "data.superpixels": one_of("image", "crop"),
    "data.clip_normalisation": one_of("imagenet", "clip"),
    "data.scale_rounding": one_of("floor", "round"),
    "train.iterations": at_least(1),
    "train.batch_size": at_least(1),
    "train.lr": above(0.0),
    "train.decoder_lr_mult": above(0.0),
    "train.weight_decay": at_least(0.0),
    "train.warmup_iters": at_least(0),
    "train.warmup_ratio": PROBABILITY,
    "train.poly_power": at_least(0.0),
    "train.seed": at_least(0),
    # YAML reads a bare ``off`` as false, which becomes the string "False"
    "train.amp": one_of("auto", "bf16", "fp16", "off", "false", "no", fold_case=True),
    "train.val_every": at_least(0),  # 0: no periodic validation
    "train.val_images": at_least(1),
    "train.ckpt_every": at_least(1),
    "train.log_every": at_least(1),
    "train.output_dir": NON_EMPTY,
    "train.keep_last": at_least(0),  # 0: keep every checkpoint
    "train.supervision": one_of("pseudo", "gt"),
    "infer.scales": each(above(0.0)),
    "infer.long_side": at_least(0),  # 0: keep the image size
    "infer.batch_size": at_least(1),
    "infer.pad_mode": one_of("replicate", "zeros"),
}

# Rules over several fields: (keys named in the message, test, what is allowed).
CROSS_RULES: tuple[tuple[tuple[str, ...], typing.Callable[[SSRConfig], bool], str], ...] = (
    (
        ("pseudo.ignore_low", "pseudo.ignore_high"),
        lambda c: (
            c.pseudo.ignore_low is None
            or c.pseudo.ignore_high is None
            or c.pseudo.ignore_low <= c.pseudo.ignore_high
        ),
        "allowed: ignore_low <= ignore_high",
    ),
    (
        ("cmpa.tau_min", "cmpa.tau_init"),
        lambda c: c.cmpa.tau_min <= c.cmpa.tau_init,
        "allowed: tau_min <= tau_init",
    ),
    (
        ("decoder.embed_dim", "decoder.num_heads"),
        lambda c: c.decoder.embed_dim % c.decoder.num_heads == 0,
        "allowed: embed_dim a multiple of num_heads",
    ),
)


def _lookup(cfg: Any, key: str) -> Any:
    value = cfg
    for part in key.split("."):
        value = getattr(value, part)
    return value


def validate_config(cfg: SSRConfig) -> SSRConfig:
    """Check every field against :data:`FIELD_RULES` and :data:`CROSS_RULES`; returns ``cfg``.

    Raises :class:`ConfigError` naming the key, the value and what is allowed.
    """
    for key, rule in FIELD_RULES.items():
        section, name = key.split(".")
        if not hasattr(getattr(cfg, section, None), name):
            continue  # a rule for a field this version lacks (the rules test reports it)
        value = _lookup(cfg, key)
        if value is None:
            hint = _field_types(type(getattr(cfg, section)))[name]
            if type(None) in typing.get_args(hint):
                continue
        if not rule.ok(value):
            shown = list(value) if isinstance(value, tuple) else value
            raise ConfigError(f"{key}: {shown!r} is not allowed (allowed: {rule.allowed})")
    for keys, test, allowed in CROSS_RULES:
        if not test(cfg):
            values = ", ".join(f"{k}={_lookup(cfg, k)!r}" for k in keys)
            raise ConfigError(f"{values} is not allowed ({allowed})")
    return cfg
