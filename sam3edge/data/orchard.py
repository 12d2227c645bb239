"""The orchard concept domain: a seeded procedural generator of apple-tree scenes.

Ripe (red), unripe (green) and bruised (red with brown patches) apples, leaves and branches
on sky / foliage / ground backgrounds, with lighting variation and occlusion. Every scene
comes with exact instance masks, so a model's concept segmentation can be scored against
ground truth. Attributes are colours ("ripe" is red), so the generator never changes hue:
lighting scales brightness and adds a mild tint only.

Scenes are deterministic in ``(seed, index)``; the same index always renders the same image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sam3edge.data.vocabulary import Concept, Vocabulary

RIPE, UNRIPE, BRUISED, LEAF, BRANCH = 1, 2, 3, 4, 5

ORCHARD_VOCABULARY = Vocabulary(
    categories={RIPE: "ripe apple", UNRIPE: "unripe apple", BRUISED: "bruised apple", LEAF: "leaf",
                BRANCH: "branch"},
    concepts=(
        Concept("ripe apple", (RIPE,), ("red apple", "ripe red apple"), attribute="ripeness"),
        Concept("unripe apple", (UNRIPE,), ("green apple", "unripe green apple"), attribute="ripeness"),
        Concept("bruised apple", (BRUISED,), ("damaged apple", "rotten apple"), attribute="damage"),
        Concept("apple", (RIPE, UNRIPE, BRUISED), ("apples", "fruit")),
        Concept("leaf", (LEAF,), ("green leaf", "leaves")),
        Concept("branch", (BRANCH,), ("tree branch", "twig")),
    ),
    distractors=("pear", "orange", "banana", "lemon", "bird", "person", "ladder", "basket", "car",
                 "flower"),
)


@dataclass
class OrchardScene:
    """One rendered scene.

    image: uint8 [H, W, 3] RGB. instance_map: int32 [H, W], 0 = background, k = instance k-1.
    categories: category id of each instance (len = number of instances).
    """

    image: np.ndarray
    instance_map: np.ndarray
    categories: list[int]

    def masks(self, category_ids: tuple[int, ...] | list[int]) -> np.ndarray:
        """Boolean masks [N, H, W] of the instances whose category is in ``category_ids``."""
        ids = [k for k, c in enumerate(self.categories) if c in category_ids]
        if not ids:
            return np.zeros((0,) + self.instance_map.shape, dtype=bool)
        return self.instance_map[None] == (np.asarray(ids)[:, None, None] + 1)


_COLOURS = {  # RGB in [0, 1]: (low, high) per channel, sampled uniformly
    RIPE: ((0.72, 0.04, 0.04), (0.92, 0.16, 0.14)),
    UNRIPE: ((0.50, 0.74, 0.16), (0.66, 0.88, 0.30)),
    BRUISED: ((0.62, 0.14, 0.08), (0.78, 0.26, 0.16)),
    LEAF: ((0.08, 0.30, 0.06), (0.22, 0.46, 0.14)),
    BRANCH: ((0.30, 0.20, 0.12), (0.44, 0.30, 0.20)),
}
_BRUISE = np.array([0.30, 0.18, 0.08])


def _colour(rng: np.random.Generator, cat: int) -> np.ndarray:
    lo, hi = _COLOURS[cat]
    return rng.uniform(lo, hi)


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    return x + 0.5, y + 0.5


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Blobby noise in [0, 1]: a coarse random grid bilinearly upsampled."""
    coarse = rng.random((cells + 1, cells + 1)).astype(np.float32)
    t = np.linspace(0, cells, size, dtype=np.float32)
    i = np.minimum(t.astype(int), cells - 1)
    f = t - i
    rows = coarse[i] * (1 - f)[:, None] + coarse[i + 1] * f[:, None]
    return rows[:, i] * (1 - f)[None] + rows[:, i + 1] * f[None]


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    kind = rng.choice(["sky", "foliage", "ground", "mixed"])
    x, y = _grid(size)
    v = y[..., None] / size
    sky = np.array([0.52, 0.70, 0.92]) * (1 - 0.25 * v) + np.array([0.85, 0.90, 0.95]) * 0.25 * v
    foliage = np.array([0.10, 0.22, 0.09]) + 0.16 * _smooth_noise(rng, size, 9)[..., None] * np.array(
        [0.5, 1.0, 0.4])
    ground = np.array([0.42, 0.36, 0.22]) + 0.12 * _smooth_noise(rng, size, 14)[..., None] * np.array(
        [1.0, 1.2, 0.5])
    if kind == "sky":
        bg = sky
    elif kind == "foliage":
        bg = foliage
    elif kind == "ground":
        bg = ground
    else:
        h1, h2 = sorted(rng.uniform(0.2, 0.8, 2) * size)
        bg = np.where(y[..., None] < h1, sky, np.where(y[..., None] < h2, foliage, ground))
    return np.broadcast_to(bg, (size, size, 3)).astype(np.float32).copy()


def _ellipse(x, y, cx, cy, rx, ry, angle):
    c, s = np.cos(angle), np.sin(angle)
    u = ((x - cx) * c + (y - cy) * s) / rx
    w = (-(x - cx) * s + (y - cy) * c) / ry
    return u * u + w * w


def _apple(rng, canvas, x, y, cx, cy, r, cat):
    d = _ellipse(x, y, cx, cy, r, r * rng.uniform(0.88, 1.0), rng.uniform(0, np.pi))
    mask = d <= 1.0
    base = _colour(rng, cat)
    # Shading: lit from the upper left, darker at the rim; a small specular highlight.
    lx, ly = cx - 0.35 * r, cy - 0.35 * r
    shade = 1.0 - 0.45 * np.clip(np.sqrt((x - lx) ** 2 + (y - ly) ** 2) / (1.6 * r), 0, 1)
    col = base[None, None] * shade[..., None]
    spec = np.exp(-((x - lx) ** 2 + (y - ly) ** 2) / (2 * (0.18 * r) ** 2))
    col = col + 0.35 * spec[..., None]
    if cat == BRUISED:
        for _ in range(rng.integers(1, 4)):
            a = rng.uniform(0, 2 * np.pi)
            rr = rng.uniform(0.0, 0.55) * r
            bx, by = cx + rr * np.cos(a), cy + rr * np.sin(a)
            patch = _ellipse(x, y, bx, by, rng.uniform(0.25, 0.45) * r, rng.uniform(0.2, 0.4) * r,
                             rng.uniform(0, np.pi)) <= 1.0
            col = np.where(patch[..., None], _BRUISE * shade[..., None] * rng.uniform(0.8, 1.1), col)
    # Stem: a short dark stroke on top, part of the apple's mask.
    stem = (np.abs(x - cx - 0.05 * r) < max(1.0, 0.07 * r)) & (y > cy - 1.25 * r) & (y < cy - 0.8 * r)
    col = np.where(stem[..., None], np.array([0.25, 0.18, 0.08]), col)
    mask = mask | stem
    canvas[mask] = col[mask]
    return mask


def _leaf(rng, canvas, x, y, cx, cy, length):
    angle = rng.uniform(0, np.pi)
    d = _ellipse(x, y, cx, cy, length, length / rng.uniform(2.2, 3.2), angle)
    mask = d <= 1.0
    base = _colour(rng, LEAF)
    c, s = np.cos(angle), np.sin(angle)
    across = np.abs(-(x - cx) * s + (y - cy) * c)
    col = base[None, None] * (0.85 + 0.15 * np.clip(across / (0.3 * length), 0, 1))[..., None]
    rib = across < max(0.7, 0.04 * length)
    col = np.where(rib[..., None], base * 1.5, col)
    canvas[mask] = col[mask]
    return mask


def _branch(rng, canvas, x, y, size):
    p0 = rng.uniform(0, size, 2)
    ang = rng.uniform(0, 2 * np.pi)
    p1 = p0 + rng.uniform(0.5, 1.0) * size * np.array([np.cos(ang), np.sin(ang)])
    width = rng.uniform(2.0, 4.5) * size / 224
    # Distance from each pixel to the segment p0-p1.
    d = p1 - p0
    t = np.clip(((x - p0[0]) * d[0] + (y - p0[1]) * d[1]) / (d @ d), 0, 1)
    dist = np.sqrt((x - p0[0] - t * d[0]) ** 2 + (y - p0[1] - t * d[1]) ** 2)
    mask = dist <= width * (1.0 - 0.4 * t)
    col = _colour(rng, BRANCH)[None, None] * (0.85 + 0.3 * np.clip(dist / (width + 1e-6), 0, 1))[..., None]
    canvas[mask] = col[mask]
    return mask


def render_scene(rng: np.random.Generator, size: int = 224) -> OrchardScene:
    """Render one scene of ``size`` x ``size`` pixels with ``rng``."""
    if size < 64:
        raise ValueError(f"orchard scenes need size >= 64 px, got {size}")
    x, y = _grid(size)
    bg = _background(rng, size)
    canvas = bg.copy()
    inst = np.zeros((size, size), dtype=np.int32)
    cats: list[int] = []
    full_area: list[int] = []

    def paint(mask, cat, win=(slice(None), slice(None))):
        cats.append(cat)
        full_area.append(int(mask.sum()))
        inst[win][mask] = len(cats)

    def window(cx, cy, r):
        # Objects are drawn on a crop around them: the same pixels, ~10x less arithmetic.
        y0, y1 = max(0, int(cy - r) - 1), min(size, int(cy + r) + 2)
        x0, x1 = max(0, int(cx - r) - 1), min(size, int(cx + r) + 2)
        return (slice(y0, y1), slice(x0, x1))

    for _ in range(rng.integers(0, 3)):
        paint(_branch(rng, canvas, x, y, size), BRANCH)
    present = [c for c in (RIPE, UNRIPE, BRUISED) if rng.random() < 0.6]
    objects = [LEAF] * int(rng.integers(1, 6))
    for c in present:
        objects += [c] * int(rng.integers(1, 4))
    rng.shuffle(objects)
    scale = size / 224
    for cat in objects:
        if cat == LEAF:
            (cx, cy), length = rng.uniform(0, size, 2), rng.uniform(12, 26) * scale
            w = window(cx, cy, length)
            paint(_leaf(rng, canvas[w], x[w], y[w], cx, cy, length), LEAF, w)
            continue
        r = rng.uniform(11, 24) * scale
        is_apple = np.array([False] + [c in (RIPE, UNRIPE, BRUISED) for c in cats])
        for _ in range(20):  # keep apples mostly visible: reject placements that hide another apple
            cx, cy = rng.uniform(r, size - r, 2)
            w = window(cx, cy, 1.3 * r)
            disc = (x[w] - cx) ** 2 + (y[w] - cy) ** 2 <= (1.1 * r) ** 2
            if is_apple[inst[w][disc]].sum() < 0.15 * np.pi * r * r:
                break
        paint(_apple(rng, canvas[w], x[w], y[w], cx, cy, r, cat), cat, w)

    # Fragments of heavily occluded objects are ambiguous to annotate: paint them back to background.
    keep = []
    for k in range(len(cats)):
        m = inst == k + 1
        area = int(m.sum())
        if area < max(30 * scale * scale, 0.35 * full_area[k]):
            canvas[m] = bg[m]
            inst[m] = 0
        else:
            keep.append(k)
    remap = np.zeros(len(cats) + 1, dtype=np.int32)
    remap[[k + 1 for k in keep]] = np.arange(1, len(keep) + 1)
    inst = remap[inst]
    cats = [cats[k] for k in keep]

    # Lighting: brightness, a mild tint and a directional gradient; sensor noise. No hue change.
    gain = rng.uniform(0.7, 1.25) * (1 + rng.uniform(-0.05, 0.05, 3))
    gx, gy = rng.uniform(-0.15, 0.15, 2)
    grad = 1 + gx * (x / size - 0.5) + gy * (y / size - 0.5)
    img = canvas * gain[None, None] * grad[..., None] + rng.normal(0, 0.02, canvas.shape)
    image = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
    return OrchardScene(image=image, instance_map=inst, categories=cats)


def scene_rng(seed: int, index: int) -> np.random.Generator:
    """The generator for scene ``index`` of a dataset seeded with ``seed`` (independent streams)."""
    return np.random.default_rng([int(seed), int(index)])
