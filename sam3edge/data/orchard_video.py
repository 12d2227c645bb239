"""A camera moving along a row of orchard trees, with ground-truth identities: the tracking and counting domain.

The row is a panorama of rendered orchard scenes (:func:`~sam3edge.data.orchard.render_scene`, side by side);
the camera's window slides along it (``speed`` px per frame, a slow vertical sway), so apples enter on one side
and leave on the other; a foreground layer of large leaves moves faster (closer to the camera: parallax) and
hides apples for a few frames. Every apple keeps its identity for the whole video.

Ground truth per frame: each object visible in the window with at least ``min_visible`` of its own area in the
row (and 30 px) and not mostly hidden by the foreground (the same rule the still scenes use for occluded
fragments) -> ``{"id", "category_id", "box"}`` (xyxy, pixels of the frame). Identities are unique over the row.

    from sam3edge.data.orchard_video import OrchardRow
    row = OrchardRow(seed=7, frames=300)
    for image, objects in row:          # uint8 [H, W, 3] RGB, list of dicts
        ...
    row.unique_ids(category_ids=(RIPE,))   # how many ripe apples the camera saw: the count to recover

Numpy only (torch-free). ``sam3edge data orchard-video`` writes a video file and MOT-challenge ground truth.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from sam3edge.data.orchard import BRUISED, RIPE, UNRIPE, _leaf, render_scene, scene_rng

APPLE_IDS = (RIPE, UNRIPE, BRUISED)

MOT_FIELDS = "frame,id,bb_left,bb_top,bb_width,bb_height,conf,class,visibility"


class OrchardRow:
    """``frames`` frames of ``width`` x ``height`` from a row seeded with ``seed`` (see the module docstring)."""

    def __init__(self, seed: int, frames: int = 300, width: int = 320, height: int = 240, speed: float = 2.0,
                 tile: int = 240, occluders: float = 0.6, min_visible: float = 0.35):
        for name, v, lo, hi in (("frames", frames, 1, 100_000), ("width", width, 64, 4096),
                                ("height", height, 64, 4096)):
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise ValueError(f"OrchardRow: {name}={v!r} must be an integer from {lo} to {hi}")
        if not 0 < speed <= width / 4:
            raise ValueError(f"OrchardRow: speed={speed!r} px per frame must be > 0 and at most width / 4 "
                             f"({width / 4:g}): faster, objects jump more than a quarter frame between frames")
        if isinstance(tile, bool) or not isinstance(tile, int) or tile < max(64, height):
            raise ValueError(f"OrchardRow: tile={tile!r} (the row's height) must be an integer >= 64 and >= "
                             f"height={height}")
        self.seed, self.n_frames, self.width, self.height, self.speed = seed, frames, width, height, float(speed)
        self.min_visible = min_visible
        span = int(np.ceil(width + speed * frames)) + 1
        n_tiles = -(-span // tile)
        scenes = [render_scene(scene_rng(seed, i), tile) for i in range(n_tiles)]
        self.image = np.concatenate([s.image for s in scenes], axis=1)
        self.categories: list[int] = []
        maps = []
        for s in scenes:  # instance k of tile t -> row-wide id
            offset = len(self.categories)
            maps.append(np.where(s.instance_map > 0, s.instance_map + offset, 0))
            self.categories += list(s.categories)
        self.instance_map = np.concatenate(maps, axis=1).astype(np.int32)
        self.area = np.bincount(self.instance_map.ravel(), minlength=len(self.categories) + 1)
        self._foreground(np.random.default_rng([seed, 1 << 20]), tile, occluders)

    def _foreground(self, rng: np.random.Generator, tile: int, density: float) -> None:
        """Large leaves on a layer moving 1.5x as fast as the row (closer to the camera)."""
        h, w = self.image.shape[0], int(self.image.shape[1] * 1.5) + self.width
        self.fg = np.zeros((h, w, 3), np.float64)
        self.fg_mask = np.zeros((h, w), bool)
        y, x = np.mgrid[0:h, 0:w].astype(np.float64)
        for _ in range(int(density * w / tile * 3)):
            cx, cy = rng.uniform(0, w), rng.uniform(0, h)
            length = rng.uniform(40, 70) * tile / 240
            y0, y1 = max(0, int(cy - length) - 1), min(h, int(cy + length) + 2)
            x0, x1 = max(0, int(cx - length) - 1), min(w, int(cx + length) + 2)
            win = (slice(y0, y1), slice(x0, x1))
            self.fg_mask[win] |= _leaf(rng, self.fg[win], x[win], y[win], cx, cy, length)

    def __len__(self) -> int:
        return self.n_frames

    def window(self, t: int) -> tuple[int, int]:
        """(x0, y0) of frame ``t``'s window in the row."""
        x0 = int(round(t * self.speed))
        sway = (self.image.shape[0] - self.height) / 2
        return x0, int(round(sway + sway * np.sin(t / 37.0)))

    def frame(self, t: int) -> tuple[np.ndarray, list[dict]]:
        """Frame ``t``: (uint8 [H, W, 3] RGB, ground-truth objects)."""
        if not 0 <= t < self.n_frames:
            raise IndexError(f"OrchardRow has frames 0..{self.n_frames - 1}, not {t}")
        x0, y0 = self.window(t)
        win = (slice(y0, y0 + self.height), slice(x0, x0 + self.width))
        fx = int(round(t * self.speed * 1.5))
        fwin = (slice(y0, y0 + self.height), slice(fx, fx + self.width))
        hidden = self.fg_mask[fwin]
        image = self.image[win].copy()
        image[hidden] = (np.clip(self.fg[fwin][hidden], 0, 1) * 255 + 0.5).astype(np.uint8)
        ids = self.instance_map[win]
        seen = np.where(hidden, 0, ids)
        in_view = np.bincount(ids.ravel(), minlength=len(self.area))
        visible = np.bincount(seen.ravel(), minlength=len(self.area))
        ys, xs = np.nonzero(seen)
        k = seen[ys, xs]
        n = len(self.area)
        lo_x, lo_y = np.full(n, self.width), np.full(n, self.height)
        hi_x, hi_y = np.zeros(n, np.int64), np.zeros(n, np.int64)
        np.minimum.at(lo_x, k, xs)
        np.minimum.at(lo_y, k, ys)
        np.maximum.at(hi_x, k, xs + 1)
        np.maximum.at(hi_y, k, ys + 1)
        objects = []
        for k in np.flatnonzero(visible[1:]) + 1:
            if visible[k] < max(30, self.min_visible * self.area[k]) or visible[k] < self.min_visible * in_view[k]:
                continue
            objects.append({"id": int(k), "category_id": int(self.categories[k - 1]),
                            "box": [float(lo_x[k]), float(lo_y[k]), float(hi_x[k]), float(hi_y[k])],
                            "visibility": float(visible[k] / self.area[k])})
        return image, objects

    def __iter__(self) -> Iterator[tuple[np.ndarray, list[dict]]]:
        for t in range(self.n_frames):
            yield self.frame(t)

    def unique_ids(self, category_ids=APPLE_IDS) -> int:
        """Objects of ``category_ids`` that appear in at least one frame's ground truth."""
        seen = set()
        for t in range(self.n_frames):
            seen.update(o["id"] for o in self.frame(t)[1] if o["category_id"] in category_ids)
        return len(seen)

    def mot_lines(self, t: int, objects: list[dict]) -> list[str]:
        """MOT-challenge ground-truth lines of frame ``t`` (1-based frames; class = category id)."""
        return [f"{t + 1},{o['id']},{o['box'][0]:.1f},{o['box'][1]:.1f},{o['box'][2] - o['box'][0]:.1f},"
                f"{o['box'][3] - o['box'][1]:.1f},1,{o['category_id']},{o['visibility']:.3f}" for o in objects]


__all__ = ["APPLE_IDS", "MOT_FIELDS", "OrchardRow"]


def write_orchard_video(out, seed: int = 0, frames: int = 300, width: int = 320, height: int = 240,
                        speed: float = 2.0, fps: float = 15.0, progress: bool = True) -> dict:
    """Render an :class:`OrchardRow` into directory ``out`` (new; never replaces one): ``video.avi`` (MJPG, with
    OpenCV; without it ``frames/NNNNNN.png``), ``gt.txt`` (MOT-challenge ground truth: frame, id, box, 1, category,
    visibility) and ``gt.json`` (the row's settings, categories, and unique objects per category). Returns gt.json's
    content."""
    import json
    from pathlib import Path

    from PIL import Image
    from tqdm import tqdm

    from sam3edge.atomic import atomic_directory
    from sam3edge.data.orchard import ORCHARD_VOCABULARY

    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} already exists; choose a new output folder")
    row = OrchardRow(seed, frames=frames, width=width, height=height, speed=speed)
    names = dict(ORCHARD_VOCABULARY.categories)
    try:
        import cv2
    except ImportError:
        cv2 = None
    with atomic_directory(out, what="orchard video") as tmp:
        writer = None
        if cv2 is not None:
            writer = cv2.VideoWriter(str(tmp / "video.avi"), cv2.VideoWriter_fourcc(*"MJPG"), fps, (width, height))
        else:
            (tmp / "frames").mkdir()
        seen: dict[int, set[int]] = {}
        with open(tmp / "gt.txt", "w", encoding="utf-8") as gt:
            for t in tqdm(range(frames), desc="orchard video", unit="frame", disable=not progress):
                image, objects = row.frame(t)
                if writer is not None:
                    writer.write(np.ascontiguousarray(image[..., ::-1]))
                else:
                    Image.fromarray(image).save(tmp / "frames" / f"{t:06d}.png")
                gt.writelines(line + "\n" for line in row.mot_lines(t, objects))
                for o in objects:
                    seen.setdefault(o["category_id"], set()).add(o["id"])
        if writer is not None:
            writer.release()
        info = {"seed": seed, "frames": frames, "width": width, "height": height, "speed_px_per_frame": speed,
                "fps": fps, "video": "video.avi" if writer is not None else "frames/",
                "categories": {str(c): n for c, n in names.items()},
                "unique": {names.get(c, str(c)): len(ids) for c, ids in sorted(seen.items())},
                "mot_fields": MOT_FIELDS}
        (tmp / "gt.json").write_text(json.dumps(info, indent=1))
    return info
