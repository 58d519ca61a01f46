"""The toy world: procedurally rendered scenes with exact masks, captions and built-in biases.

Every scene is a textured background context (water, grass, sky, road, wall, sand) with one to
three objects drawn from ten classes that differ in shape, colour and texture. Each object is
scaled, rotated, flipped and colour-jittered, and later objects occlude earlier ones. A sample
is fully determined by ``(seed, split, index)``, so any image can be re-rendered on demand.

Biases (the failures SSR addresses; strengths in :class:`WorldConfig`, measured rates in
``docs/toy_world.md``):

- context: a class with a "home" background appears on it with probability ``home_strength``
  (boat on water 0.9 ...). The background is drawn first and *every* object slot is drawn from
  ``P(class | background)``, with the background prior chosen so that
  ``P(home | class) = strength`` holds for every object, not only the first one.
- pair: a rider brings a horse along (``pair_strength``), drawn under it (partial occlusion).
- look-alike: car and bus share the body-with-wheels shape and swap their typical colours.

The held-out ``debiased`` split turns the context and pair biases off (uniform backgrounds,
independent classes), so a model that learned "water" instead of "boat" is exposed. The
``in_distribution`` split (:data:`IN_DISTRIBUTION_SPLIT`) is the opposite test: the training
world's generator and biases on a stream of its own, only ever scored (the paper's protocol:
VOC / COCO val come from the training distribution).

Masks have hard (non anti-aliased) edges, so every pixel's label is exact and no 255 is needed.
"""

from __future__ import annotations

import json
import math
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ssrseg.atomic import read_json_object
from ssrseg.config import atomic_write_text

CLASS_NAMES: tuple[str, ...] = (
    "boat",
    "plane",
    "horse",
    "rider",
    "car",
    "bus",
    "tree",
    "fish",
    "star",
    "clock",
)
BACKGROUNDS: tuple[str, ...] = ("water", "grass", "sky", "road", "wall", "sand")
BACKGROUND_NAMES = BACKGROUNDS  # the name the prompt builder looks up

# Each class's preferred background context (None: no context bias).
HOME: dict[str, str | None] = {
    "boat": "water",
    "fish": "water",
    "plane": "sky",
    "horse": "grass",
    "rider": "grass",
    "tree": "grass",
    "car": "road",
    "bus": "road",
    "clock": "wall",
    "star": None,
}

# Named colours: caption adjectives and object palettes.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (205, 30, 35),
    "blue": (35, 60, 205),
    "yellow": (245, 205, 20),
    "orange": (250, 125, 20),
    "purple": (130, 40, 170),
    "white": (240, 240, 235),
    "grey": (75, 75, 85),
    "brown": (115, 65, 30),
    "green": (20, 95, 35),
    "pink": (235, 45, 165),
    "black": (20, 20, 20),
}

# Typical colour of each class's main part (drawn with probability 1 - off_colour) and the
# alternatives; car and bus swap theirs (the look-alike bias).
CLASS_COLOURS: dict[str, tuple[str, ...]] = {
    "boat": ("red", "orange"),
    "plane": ("grey", "white"),
    "horse": ("brown",),
    "rider": ("purple",),
    "car": ("red", "yellow"),
    "bus": ("yellow", "red"),
    "tree": ("green",),
    "fish": ("orange",),
    "star": ("pink",),
    "clock": ("white",),
}

CAPTION_PREFIXES: tuple[str, ...] = ("a photo of", "a picture of", "an image of")
EXTRA_WORDS: tuple[str, ...] = ("a", "an", "photo", "picture", "image", "of", "and", "on", "the")

# The in-distribution val split: drawn like ``train`` (same generator, same biases) from its
# own stream, so adding it changes no image of another split. Only scored, never trained on nor
# used to choose a setting (``val`` is the biased split settings are chosen on), so it plays
# the role of VOC / COCO val in the paper's protocol.
IN_DISTRIBUTION_SPLIT = "in_distribution"
# Stream codes of the named splits; any other name hashes to a code >= 10.
SPLIT_CODES: dict[str, int] = {
    "train": 0,
    "val": 1,
    "debiased": 2,
    "test": 3,
    IN_DISTRIBUTION_SPLIT: 4,
}


@dataclass(frozen=True)
class WorldConfig:
    """How scenes are drawn. Defaults are the biased training world."""

    image_size: int = 128
    biased: bool = True
    home_strength: dict[str, float] = field(
        default_factory=lambda: {
            "boat": 0.9,
            "fish": 0.8,
            "plane": 0.9,
            "horse": 0.8,
            "rider": 0.8,
            "tree": 0.7,
            "car": 0.8,
            "bus": 0.8,
            "clock": 0.8,
        }
    )
    pair: tuple[str, str] = ("rider", "horse")  # the first class brings the second along
    pair_strength: float = 0.9
    object_counts: tuple[float, ...] = (0.45, 0.35, 0.2)  # P(1), P(2), P(3) object slots
    radius: tuple[float, float] = (20.0, 36.0)  # object radius in pixels at 128 px
    off_colour: float = 0.2  # probability that an object's main colour is any palette colour
    colour_words: float = 0.5  # probability that the caption names an object's colour
    # Probability that the caption names the background ("... on water."). 1 in every scored
    # split; below 1 only in a CLIP pre-training corpus (``train-clip --caption-background``).
    background_words: float = 1.0
    min_visible: float = 0.35  # an occluded object keeps at least this share of its pixels


def debiased_config(image_size: int = 128) -> WorldConfig:
    """The held-out world: uniform backgrounds, independent classes (no pair rule)."""
    return WorldConfig(image_size=image_size, biased=False)


def weakened_config(bias_scale: float, image_size: int = 128) -> WorldConfig:
    """The biased world with its context and pair biases scaled towards chance.

    ``bias_scale`` 1 is :class:`WorldConfig` itself, 0 the debiased world's rates. A home
    strength ``s`` becomes ``chance + bias_scale * (s - chance)`` with ``chance = 1 / G`` (G
    backgrounds), the pair strength ``bias_scale * pair_strength``. The tiny CLIP's
    pre-training corpus uses it (``ssrseg toy train-clip --bias-scale``): real CLIP is trained on
    web pairs, not on the dataset it later segments, so its co-occurrence biases are weaker than
    the dataset's while the scored splits keep theirs.
    """
    if not 0.0 <= bias_scale <= 1.0:
        raise ValueError(f"bias_scale must lie in [0, 1], got {bias_scale}")
    base = WorldConfig(image_size=image_size)
    if bias_scale == 1.0:
        return base
    chance = 1.0 / len(BACKGROUNDS)
    return WorldConfig(
        image_size=image_size,
        home_strength={
            name: chance + bias_scale * (s - chance) for name, s in base.home_strength.items()
        },
        pair_strength=bias_scale * base.pair_strength,
    )


@dataclass
class ToySample:
    """One rendered scene.

    image: ``H x W x 3`` uint8 RGB. mask: ``H x W`` uint8, 0 background, c + 1 for class c.
    labels: sorted 0-based class indices present in ``mask``. background: index into
    :data:`BACKGROUNDS`.
    """

    image: np.ndarray
    mask: np.ndarray
    labels: tuple[int, ...]
    background: int
    caption: str
    colours: dict[int, str]

    @property
    def tags(self) -> list[str]:
        return [CLASS_NAMES[c] for c in self.labels]


def vocabulary() -> list[str]:
    """Every word a caption or a default prompt can contain (the tiny CLIP's tokenizer)."""
    return [*EXTRA_WORDS, *CLASS_NAMES, *BACKGROUNDS, *COLOURS]


def split_code(split: str) -> int:
    return SPLIT_CODES.get(split, zlib.crc32(split.encode()) % 1000 + 10)


def sample_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator that renders image ``index`` of ``split``: independent of every other."""
    return np.random.default_rng([seed, split_code(split), index])


# ----------------------------------------------------------------------------- scene layout


def class_given_background(cfg: WorldConfig) -> tuple[np.ndarray, np.ndarray]:
    """Background prior ``G`` and ``P(class | background)`` ``G x C`` realising the strengths.

    With weights ``w[c, g]`` (strength on the home background, the rest spread evenly, uniform
    for classes without a home) summing to 1 over g for every c, the prior ``P(g) ∝ sum_c w``
    and ``P(c | g) = w[c, g] / sum_c w[c, g]`` give ``P(g | c) = w[c, g]`` exactly per slot.
    """
    n_bg, n_cls = len(BACKGROUNDS), len(CLASS_NAMES)
    w = np.full((n_cls, n_bg), 1.0 / n_bg)
    if cfg.biased:
        for c, name in enumerate(CLASS_NAMES):
            home = HOME[name]
            if home is None or name not in cfg.home_strength:
                continue
            s = cfg.home_strength[name]
            w[c] = (1.0 - s) / (n_bg - 1)
            w[c, BACKGROUNDS.index(home)] = s
    totals = w.sum(axis=0)
    return totals / totals.sum(), (w / totals).T


def plan_scene(cfg: WorldConfig, rng: np.random.Generator) -> tuple[int, list[int]]:
    """Background index and the object classes to draw, in drawing order."""
    prior, cond = class_given_background(cfg)
    bg = int(rng.choice(len(BACKGROUNDS), p=prior))
    counts = np.asarray(cfg.object_counts, dtype=float)
    n = int(rng.choice(len(counts), p=counts / counts.sum())) + 1
    objects = [int(rng.choice(len(CLASS_NAMES), p=cond[bg])) for _ in range(n)]
    if cfg.biased:
        lead, follower = (CLASS_NAMES.index(x) for x in cfg.pair)
        if lead in objects and follower not in objects and rng.random() < cfg.pair_strength:
            # The follower is drawn first (under the lead, which sits on it).
            objects.insert(objects.index(lead), follower)
    return bg, objects


# ----------------------------------------------------------------------------- textures


def smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Smooth random field in [0, 1], ``h x w``: bilinear upsampling of a ``cells``-grid."""
    coarse = (rng.random((cells, cells)) * 255).astype(np.uint8)
    up = Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC)
    return np.asarray(up, dtype=np.float32) / 255.0


def jitter_colour(rng: np.random.Generator, rgb: Sequence[int], amount: float) -> np.ndarray:
    """Colour with per-channel jitter and a brightness factor, float32 3."""
    base = np.asarray(rgb, dtype=np.float32)
    return base * rng.uniform(0.85, 1.15) + rng.uniform(-amount, amount, 3)


def render_background(name: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """Textured background context, ``size x size x 3`` float32 in 0..255."""
    h = w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) / size
    if name == "water":
        base = jitter_colour(rng, (30, 90, 175), 12)
        f, phase = rng.uniform(18, 30), rng.uniform(0, 2 * np.pi)
        waves = np.sin(yy * f * 2 + 1.5 * np.sin(xx * 9 + phase))
        img = base * (0.85 + 0.12 * waves)[..., None] + 45 * (waves > 0.85)[..., None]
    elif name == "grass":
        base = jitter_colour(rng, (95, 170, 60), 12)
        blades = smooth_noise(rng, h, w * 4, 24)[:, ::4]  # stretched vertically: blades
        fine = rng.random((h, w)).astype(np.float32)
        img = base * (0.75 + 0.3 * blades + 0.12 * fine)[..., None]
    elif name == "sky":
        top = jitter_colour(rng, (95, 160, 230), 10)
        bottom = jitter_colour(rng, (175, 210, 245), 10)
        img = top * (1 - yy[..., None]) + bottom * yy[..., None]
        clouds = np.clip((smooth_noise(rng, h, w, 5) - 0.6) * 4, 0, 1)[..., None]
        img = img * (1 - clouds) + 245 * clouds
    elif name == "road":
        base = jitter_colour(rng, (105, 105, 110), 8)
        fine = rng.random((h, w)).astype(np.float32)
        img = base * (0.85 + 0.25 * fine)[..., None]
        centre = rng.uniform(0.3, 0.7)
        lane = (np.abs(yy - centre) < 0.025) & ((xx * 5 + rng.random()) % 1 < 0.55)
        img = np.where(lane[..., None], np.float32(235), img)
    elif name == "wall":
        brick = jitter_colour(rng, (165, 65, 45), 12)
        rows = rng.integers(7, 10)
        bh = 1.0 / rows
        row = np.floor(yy / bh)
        offset = (row % 2) * 0.5 * bh * 2
        mortar = ((yy % bh) < 0.18 * bh) | (((xx + offset) % (2 * bh)) < 0.09 * bh)
        shade = 0.85 + 0.3 * smooth_noise(rng, h, w, 12)
        img = np.where(mortar[..., None], np.float32(200), brick * shade[..., None])
    elif name == "sand":
        base = jitter_colour(rng, (215, 190, 140), 10)
        dunes = np.sin(yy * rng.uniform(10, 16) + 2 * smooth_noise(rng, h, w, 4))
        fine = rng.random((h, w)).astype(np.float32)
        img = base * (0.9 + 0.06 * dunes + 0.1 * fine)[..., None]
    else:
        raise ValueError(f"unknown background '{name}' (known: {', '.join(BACKGROUNDS)})")
    return np.asarray(img, dtype=np.float32)


# ----------------------------------------------------------------------------- shapes

Points = list[tuple[float, float]]


def ellipse(cx: float, cy: float, a: float, b: float, n: int = 24) -> Points:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return [(cx + a * math.cos(v), cy + b * math.sin(v)) for v in t]


def rect(x0: float, y0: float, x1: float, y1: float) -> Points:
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


def star_points(outer: float = 1.0, inner: float = 0.45) -> Points:
    pts = []
    for k in range(10):
        r = outer if k % 2 == 0 else inner
        t = -np.pi / 2 + k * np.pi / 5
        pts.append((r * math.cos(t), r * math.sin(t)))
    return pts


# A part: (polygon in object units, colour role). Roles: "main" (the class colour, textured),
# a named colour from COLOURS, or "skin" / "glass".
Part = tuple[Points, str]

SHAPES: dict[str, list[Part]] = {
    "boat": [
        (rect(-0.04, -0.9, 0.04, 0.2), "brown"),
        ([(0.1, -0.85), (0.1, 0.1), (0.8, 0.1)], "white"),
        ([(-1.0, 0.15), (1.0, 0.15), (0.7, 0.6), (-0.7, 0.6)], "main"),
    ],
    "plane": [
        ([(-0.25, 0), (0.25, 0), (-0.05, -0.95), (-0.35, -0.95)], "main"),
        ([(-0.25, 0), (0.25, 0), (-0.05, 0.95), (-0.35, 0.95)], "main"),
        ([(-0.75, 0), (-0.95, -0.4), (-1.05, -0.4), (-0.95, 0)], "red"),
        ([(-0.75, 0), (-0.95, 0.4), (-1.05, 0.4), (-0.95, 0)], "red"),
        (ellipse(0.0, 0.0, 1.0, 0.17), "main"),
    ],
    "horse": [
        ([(-0.65, -0.1), (-0.95, 0.45), (-0.82, 0.5), (-0.6, 0.05)], "black"),
        *[(rect(x - 0.06, 0.1, x + 0.06, 0.95), "main") for x in (-0.55, -0.35, 0.35, 0.55)],
        (ellipse(0.0, 0.0, 0.72, 0.33), "main"),
        ([(0.4, -0.05), (0.7, -0.15), (0.88, -0.7), (0.62, -0.75)], "main"),
        (ellipse(0.8, -0.72, 0.26, 0.13), "main"),
    ],
    "rider": [
        (rect(-0.28, 0.2, -0.04, 0.95), "blue"),
        (rect(0.04, 0.2, 0.28, 0.95), "blue"),
        (rect(-0.45, -0.5, -0.3, 0.15), "main"),
        (rect(0.3, -0.5, 0.45, 0.15), "main"),
        (rect(-0.3, -0.55, 0.3, 0.3), "main"),
        (ellipse(0.0, -0.78, 0.22, 0.22), "skin"),
    ],
    "car": [
        ([(-0.55, -0.05), (-0.35, -0.55), (0.4, -0.55), (0.62, -0.05)], "main"),
        ([(-0.42, -0.1), (-0.28, -0.45), (0.05, -0.45), (0.05, -0.1)], "glass"),
        ([(0.12, -0.1), (0.12, -0.45), (0.35, -0.45), (0.5, -0.1)], "glass"),
        (rect(-1.0, -0.1, 1.0, 0.42), "main"),
        (ellipse(-0.6, 0.45, 0.22, 0.22), "black"),
        (ellipse(0.6, 0.45, 0.22, 0.22), "black"),
    ],
    "bus": [
        (rect(-1.0, -0.6, 1.0, 0.42), "main"),
        *[(rect(x, -0.45, x + 0.3, -0.1), "glass") for x in (-0.85, -0.45, -0.05, 0.35)],
        (ellipse(-0.65, 0.45, 0.2, 0.2), "black"),
        (ellipse(0.65, 0.45, 0.2, 0.2), "black"),
    ],
    "tree": [
        (rect(-0.13, 0.15, 0.13, 1.0), "brown"),
        (ellipse(0.0, -0.35, 0.65, 0.58), "main"),
        (ellipse(-0.38, 0.02, 0.4, 0.35), "main"),
        (ellipse(0.38, 0.02, 0.4, 0.35), "main"),
    ],
    "fish": [
        ([(-0.5, 0.0), (-1.0, -0.5), (-1.0, 0.5)], "main"),
        (ellipse(0.1, 0.0, 0.72, 0.4), "main"),
        (ellipse(0.5, -0.08, 0.08, 0.08), "black"),
    ],
    "star": [(star_points(), "main")],
    "clock": [
        (ellipse(0.0, 0.0, 1.0, 1.0, 32), "black"),
        (ellipse(0.0, 0.0, 0.85, 0.85, 32), "main"),
        (rect(-0.05, -0.7, 0.05, 0.05), "black"),
        (rect(-0.05, -0.05, 0.5, 0.05), "black"),
    ],
}

# Texture of each class's main part, in object coordinates (u, v) (rotates with the object).
TEXTURES: dict[str, str] = {
    "boat": "planks",
    "plane": "gradient",
    "horse": "spots",
    "rider": "plain",
    "car": "gradient",
    "bus": "stripe",
    "tree": "leaves",
    "fish": "bands",
    "star": "gradient",
    "clock": "plain",
}

# Rotation range (degrees) per class; upright things only tilt a little.
MAX_ROTATION: dict[str, float] = {"plane": 180.0, "star": 180.0, "clock": 180.0, "fish": 45.0}


def texture_field(kind: str, u: np.ndarray, v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Multiplicative shading of a main part, same shape as ``u``."""
    if kind == "planks":
        return 0.85 + 0.2 * (np.sin(v * 22) > 0)
    if kind == "gradient":
        return 1.1 - 0.25 * (v + 1) / 2
    if kind == "spots":
        return 1.0 - 0.35 * ((np.sin(u * 9 + 1) * np.sin(v * 9)) > 0.55)
    if kind == "stripe":
        return np.where(np.abs(v - 0.15) < 0.06, 0.55, 1.0)
    if kind == "leaves":
        return 0.8 + 0.4 * rng.random(u.shape)
    if kind == "bands":
        return 1.0 + 0.35 * (np.sin(u * 14) > 0.6)
    return np.ones_like(u)


@dataclass
class Placement:
    cls: int
    cx: float
    cy: float
    radius: float
    angle: float  # radians
    flip: bool
    colour: str


def draw_object(
    image: np.ndarray,
    label: np.ndarray,
    obj: Placement,
    rng: np.random.Generator,
) -> np.ndarray:
    """Paint ``obj`` into ``image`` (float ``H x W x 3``) and ``label`` (``H x W``) in place.

    Returns the object's full (unoccluded) footprint, ``H x W`` bool.
    """
    name = CLASS_NAMES[obj.cls]
    h, w = label.shape
    cos, sin = math.cos(obj.angle), math.sin(obj.angle)
    sx = -1.0 if obj.flip else 1.0

    def to_pixels(points: Points) -> list[tuple[float, float]]:
        out = []
        for x, y in points:
            x = x * sx
            out.append(
                (
                    obj.cx + obj.radius * (cos * x - sin * y),
                    obj.cy + obj.radius * (sin * x + cos * y),
                )
            )
        return out

    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    dx, dy = (xx - obj.cx) / obj.radius, (yy - obj.cy) / obj.radius
    u = (cos * dx + sin * dy) * sx
    v = -sin * dx + cos * dy
    main = jitter_colour(rng, COLOURS[obj.colour], 18)
    shade = texture_field(TEXTURES[name], u, v, rng)
    footprint = np.zeros((h, w), dtype=bool)
    for points, role in SHAPES[name]:
        canvas = Image.new("L", (w, h), 0)
        ImageDraw.Draw(canvas).polygon(to_pixels(points), fill=1)
        part = np.asarray(canvas, dtype=bool)
        if role == "main":
            colour = main[None, :] * shade[part][:, None]
        elif role == "skin":
            colour = jitter_colour(rng, (240, 200, 160), 10)[None, :]
        elif role == "glass":
            colour = jitter_colour(rng, (170, 215, 240), 10)[None, :]
        else:
            colour = jitter_colour(rng, COLOURS[role], 10)[None, :]
        image[part] = colour
        label[part] = obj.cls + 1
        footprint |= part
    return footprint


def place_objects(
    cfg: WorldConfig, classes: list[int], rng: np.random.Generator
) -> list[Placement]:
    """Random position, scale, rotation, flip and colour for each class in drawing order."""
    size = cfg.image_size
    scale = size / 128.0
    placements: list[Placement] = []
    lead = CLASS_NAMES.index(cfg.pair[0]) if cfg.biased else -1
    follower = CLASS_NAMES.index(cfg.pair[1]) if cfg.biased else -1
    for k, c in enumerate(classes):
        name = CLASS_NAMES[c]
        radius = rng.uniform(*cfg.radius) * scale
        margin = radius * 0.6
        cx, cy = rng.uniform(margin, size - margin, 2)
        max_rot = MAX_ROTATION.get(name, 20.0)
        angle = math.radians(rng.uniform(-max_rot, max_rot))
        flip = bool(rng.random() < 0.5)
        if rng.random() < cfg.off_colour:
            colour = str(rng.choice(list(COLOURS)))
        else:
            colour = str(rng.choice(CLASS_COLOURS[name]))
        # A rider right after its horse sits on the horse's back.
        if c == lead and k > 0 and classes[k - 1] == follower:
            horse = placements[-1]
            radius = horse.radius * rng.uniform(0.6, 0.75)
            cx = horse.cx + rng.uniform(-0.15, 0.15) * horse.radius
            cy = horse.cy - 0.55 * horse.radius
            angle = horse.angle * 0.5
        placements.append(Placement(c, float(cx), float(cy), float(radius), angle, flip, colour))
    return placements


def make_caption(
    background: int, objects: list[Placement], cfg: WorldConfig, rng: np.random.Generator
) -> tuple[str, dict[int, str]]:
    """ "a photo of a red boat and a fish on water." naming each class once, in drawing order."""
    seen: dict[int, str] = {}
    for obj in objects:
        seen.setdefault(obj.cls, obj.colour)
    phrases = []
    for c, colour in seen.items():
        word = f"{colour} {CLASS_NAMES[c]}" if rng.random() < cfg.colour_words else CLASS_NAMES[c]
        phrases.append(f"{'an' if word[0] in 'aeiou' else 'a'} {word}")
    listed = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    prefix = CAPTION_PREFIXES[int(rng.integers(len(CAPTION_PREFIXES)))]
    # The extra draw only when the rule is on, so every existing stream renders as before.
    if cfg.background_words < 1.0 and rng.random() >= cfg.background_words:
        return f"{prefix} {listed}.", seen
    return f"{prefix} {listed} on {BACKGROUNDS[background]}.", seen


def render_sample(cfg: WorldConfig, rng: np.random.Generator) -> ToySample:
    """Render one scene with ``rng`` (see :func:`sample_rng`)."""
    size = cfg.image_size
    bg, classes = plan_scene(cfg, rng)
    image = render_background(BACKGROUNDS[bg], size, rng)
    label = np.zeros((size, size), dtype=np.uint8)
    placements = place_objects(cfg, classes, rng)
    kept: list[Placement] = []
    footprints: list[np.ndarray] = []
    for obj in placements:
        trial_img, trial_lab = image.copy(), label.copy()
        fp = draw_object(trial_img, trial_lab, obj, rng)
        # Reject a placement that hides too much of an earlier object.
        if all(
            (trial_lab[f] == o.cls + 1).mean() >= cfg.min_visible
            for o, f in zip(kept, footprints, strict=True)
        ):
            image, label = trial_img, trial_lab
            kept.append(obj)
            footprints.append(fp)
    present = sorted({o.cls for o in kept})
    # Masks agree with tags by construction; drop any class left without pixels.
    labels = tuple(c for c in present if bool((label == c + 1).any()))
    kept = [o for o in kept if o.cls in labels]
    caption, colours = make_caption(bg, kept, cfg, rng)
    out = np.clip(image, 0, 255).astype(np.uint8)
    return ToySample(out, label, labels, bg, caption, colours)


class ToyWorld:
    """Random access to the scenes of one split: ``world[i]`` renders image ``i``."""

    def __init__(self, split: str = "train", seed: int = 0, cfg: WorldConfig | None = None) -> None:
        self.split = split
        self.seed = seed
        if cfg is None:
            cfg = debiased_config() if split == "debiased" else WorldConfig()
        self.cfg = cfg

    def __getitem__(self, index: int) -> ToySample:
        return render_sample(self.cfg, sample_rng(self.seed, self.split, index))

    def image_id(self, index: int) -> str:
        return f"{self.split}_{index:06d}"


# ----------------------------------------------------------------------------- disk layout


def voc_palette() -> list[int]:
    """The VOC colour map (256 RGB triples flattened), 255 -> white-ish as in VOC."""
    pal = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal += [r, g, b]
    pal[255 * 3 : 256 * 3] = [224, 224, 192]
    return pal


def _save_png_atomic(img: Image.Image, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    img.save(tmp, format="PNG")
    os.replace(tmp, path)


def _write_json_atomic(path: Path, data: object) -> None:
    atomic_write_text(path, json.dumps(data, indent=0, sort_keys=True) + "\n")


def _read_json(path: Path) -> dict[str, object]:
    if not path.exists():
        return {}
    return read_json_object(path)


def write_toy_dataset(
    root: str | os.PathLike[str],
    n: int,
    split: str = "train",
    seed: int = 0,
    image_size: int = 128,
    biased: bool | None = None,
    progress: bool = False,
) -> list[str]:
    """Render ``n`` scenes of ``split`` into the VOC-like folder ``root``; returns the ids.

    Layout: ``JPEGImages/<id>.png``, ``SegmentationClass/<id>.png`` (palette PNG),
    ``ImageSets/Segmentation/<split>.txt``, ``classes.txt``, ``backgrounds.txt``, ``tags.json``
    and ``captions.json`` (merged with those of splits already written), ``world.json`` (how
    each split was drawn). ``biased`` None: biased except for the ``debiased`` split.
    """
    from tqdm import tqdm

    root = Path(root)
    if biased is None:
        biased = split != "debiased"
    cfg = WorldConfig(image_size=image_size, biased=biased)
    world = ToyWorld(split, seed, cfg)
    img_dir, seg_dir = root / "JPEGImages", root / "SegmentationClass"
    list_dir = root / "ImageSets" / "Segmentation"
    for d in (img_dir, seg_dir, list_dir):
        d.mkdir(parents=True, exist_ok=True)
    tags = _read_json(root / "tags.json")
    captions = _read_json(root / "captions.json")
    palette = voc_palette()
    ids = []
    for i in tqdm(range(n), desc=f"render {split}", disable=not progress):
        s = world[i]
        image_id = world.image_id(i)
        _save_png_atomic(Image.fromarray(s.image), img_dir / f"{image_id}.png")
        seg = Image.fromarray(s.mask, mode="P")
        seg.putpalette(palette)
        _save_png_atomic(seg, seg_dir / f"{image_id}.png")
        tags[image_id] = s.tags
        captions[image_id] = s.caption
        ids.append(image_id)

    atomic_write_text(list_dir / f"{split}.txt", "".join(f"{i}\n" for i in ids))
    atomic_write_text(root / "classes.txt", "".join(f"{c}\n" for c in CLASS_NAMES))
    atomic_write_text(root / "backgrounds.txt", "".join(f"{b}\n" for b in BACKGROUNDS))
    _write_json_atomic(root / "tags.json", tags)
    _write_json_atomic(root / "captions.json", captions)
    info = _read_json(root / "world.json")
    info[split] = {"n": n, "seed": seed, "image_size": image_size, "biased": biased}
    _write_json_atomic(root / "world.json", info)
    return ids
