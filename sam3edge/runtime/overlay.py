"""Pictures of what a student found: masks, boxes and labels drawn over the image.

``draw`` blends every instance's mask in its concept's colour, outlines the masks and boxes, and
writes a label such as ``"ripe apple 0.87"`` on a filled background. Colours come from a palette
indexed by concept id, so a concept keeps its colour across frames, images and runs. Line widths
and the font scale with the image, so a 64 px thumbnail and a 4K frame are both legible.
``side_by_side`` puts pictures next to each other under titles (teacher vs student, fp32 vs int8).

numpy and Pillow only.
"""

from __future__ import annotations

import colorsys
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from sam3edge.atomic import atomic_write
from sam3edge.runtime.image import as_rgb_uint8
from sam3edge.runtime.instances import Instances

__all__ = ["PALETTE", "concept_color", "draw", "label_text", "save_overlay", "side_by_side"]

PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
    (0, 128, 128), (220, 190, 255), (170, 110, 40), (255, 250, 200), (128, 0, 0),
    (170, 255, 195), (128, 128, 0), (255, 215, 180), (0, 0, 128), (128, 128, 128),
)
"""RGB colours of concept ids 0..19 (Sasha Trubetskoy's 20 distinct colours); later ids get golden-ratio hues."""

_GOLDEN = 0.6180339887498949


def concept_color(concept_id: int) -> tuple[int, int, int]:
    """The RGB colour of a concept id: the same for the same id everywhere, distinct for nearby ids."""
    concept_id = int(concept_id)
    if 0 <= concept_id < len(PALETTE):
        return PALETTE[concept_id]
    r, g, b = colorsys.hsv_to_rgb((abs(concept_id) * _GOLDEN) % 1.0, 0.85, 0.95)
    return round(r * 255), round(g * 255), round(b * 255)


def label_text(phrase: str, score: float | None = None) -> str:
    """``"ripe apple 0.87"`` (or the phrase alone when ``score`` is None)."""
    return phrase if score is None else f"{phrase} {float(score):.2f}"


def _line_width(height: int, width: int) -> int:
    return max(1, round(min(height, width) / 250))


def _font_size(height: int, width: int) -> int:
    return max(10, round(min(height, width) / 32))


@lru_cache(maxsize=16)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 with FreeType: a scalable font
    except (TypeError, OSError, ImportError, AttributeError):
        return ImageFont.load_default()  # the fixed 11 px bitmap font


def _text_color(background: tuple[int, int, int]) -> tuple[int, int, int]:
    r, g, b = background
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 150 else (255, 255, 255)


def draw(image, instances: Instances, alpha: float = 0.45, boxes: bool = True, labels: bool = True,
         scores: bool = True, outlines: bool = True) -> np.ndarray:
    """uint8 RGB [H, W, 3]: ``image`` with ``instances`` drawn over it (a new array; ``image`` is not changed).

    Args:
        image: the image the instances were found in, H x W as ``instances.image_size`` (anything
            ``as_rgb_uint8`` accepts, e.g. uint8 RGB [H, W, 3]).
        instances: what to draw; masks (when not None) are blended, boxes outlined, labels written.
        alpha: opacity of the mask colour, 0 (masks invisible) .. 1 (opaque).
        boxes / labels / scores: draw box outlines / label texts / the score after the phrase.
        outlines: draw each mask's contour in its full colour (tells touching instances apart).

    Where masks overlap, the higher-scoring instance's colour wins; its box and label are drawn last.
    """
    rgb = as_rgb_uint8(image)
    if rgb.shape[:2] != tuple(instances.image_size):
        raise ValueError(
            f"draw: image is {rgb.shape[0]} x {rgb.shape[1]} but the instances were found in an image of "
            f"{instances.image_size[0]} x {instances.image_size[1]}; pass the original image, "
            "not the model's input frame"
        )
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"draw: alpha must be in [0, 1], got {alpha}")
    out = rgb.copy()
    if len(instances) == 0:
        return out
    height, width = out.shape[:2]
    order = np.argsort(-instances.scores, kind="stable")  # best first
    colors = np.array([concept_color(c) for c in instances.concept_ids[order]], dtype=np.float32)
    if instances.masks is not None:
        outline = max(1, _line_width(height, width) // 2) if outlines else 0
        _blend_masks(out, instances.masks[order], colors, alpha, outline)
    if boxes or labels:
        canvas = Image.fromarray(out)
        pen = ImageDraw.Draw(canvas)
        for i in order[::-1]:  # worst first, so the best instance ends on top
            color = concept_color(instances.concept_ids[i])
            box = instances.boxes[i]
            if boxes:
                _draw_box(pen, box, color, _line_width(height, width))
            if labels:
                text = label_text(instances.phrases[i], instances.scores[i] if scores else None)
                if instances.track_ids is not None:  # tracked: the identity first, "#12 ripe apple 0.87"
                    text = f"#{int(instances.track_ids[i])} {text}"
                _draw_label(pen, box, text, color, (height, width))
        out = np.asarray(canvas).copy()
    return out


def _blend_masks(out: np.ndarray, masks: np.ndarray, colors: np.ndarray, alpha: float, outline: int) -> None:
    """Blend bool [N, H, W] masks (best first) with float32 [N, 3] colours into ``out`` in place.

    One owner map (the best instance covering each pixel), then one blend over the covered pixels,
    so overlapping masks are not blended twice.
    """
    owner = np.full(masks.shape[1:], -1, dtype=np.int32)
    for i in range(len(masks) - 1, -1, -1):  # worst first: the best instance overwrites
        owner[masks[i]] = i
    flat_owner = owner.reshape(-1)
    covered = np.flatnonzero(flat_owner >= 0)
    if covered.size == 0:
        return
    flat = out.reshape(-1, 3)
    blended = flat[covered].astype(np.float32)
    blended *= 1.0 - alpha
    blended += colors[flat_owner[covered]] * alpha
    blended += 0.5
    flat[covered] = np.clip(blended, 0, 255).astype(np.uint8)
    if outline:
        edge = _edges(owner, outline) & (owner >= 0)
        out[edge] = colors[owner[edge]].astype(np.uint8)


def _edges(owner: np.ndarray, thickness: int) -> np.ndarray:
    """bool [H, W]: pixels within ``thickness`` pixels of a pixel with another owner (4-neighbourhood)."""
    edge = np.zeros(owner.shape, dtype=bool)
    for d in range(1, thickness + 1):
        edge[d:, :] |= owner[d:, :] != owner[:-d, :]
        edge[:-d, :] |= owner[:-d, :] != owner[d:, :]
        edge[:, d:] |= owner[:, d:] != owner[:, :-d]
        edge[:, :-d] |= owner[:, :-d] != owner[:, d:]
    return edge


def _draw_box(pen: ImageDraw.ImageDraw, box: np.ndarray, color, line_width: int) -> None:
    x0, y0, x1, y1 = (float(v) for v in box)
    # Pixel-edge box [x0, x1) -> the last covered pixel column is x1 - 1.
    x1, y1 = max(x0, x1 - 1), max(y0, y1 - 1)
    pen.rectangle((x0, y0, x1, y1), outline=color, width=line_width)


def _draw_label(pen: ImageDraw.ImageDraw, box: np.ndarray, text: str, color, image_size: tuple[int, int]) -> None:
    """``text`` on a filled ``color`` background above the box's top-left corner (inside it at the top edge)."""
    height, width = image_size
    font = _font(_font_size(height, width))
    left, top, right, bottom = pen.textbbox((0, 0), text, font=font)
    pad = max(1, (bottom - top) // 5)
    label_w, label_h = right - left + 2 * pad, bottom - top + 2 * pad
    x0, y0 = float(box[0]), float(box[1])
    y = y0 - label_h if y0 - label_h >= 0 else y0
    x = min(max(0.0, x0), max(0.0, width - label_w))
    y = min(max(0.0, y), max(0.0, height - label_h))
    pen.rectangle((x, y, x + label_w - 1, y + label_h - 1), fill=color)
    pen.text((x + pad - left, y + pad - top), text, fill=_text_color(color), font=font)


def draw_caption(picture: np.ndarray, lines: list[str]) -> np.ndarray:
    """``picture`` (uint8 RGB) with ``lines`` of text in a dark box at its top left (counts on a video frame)."""
    if not lines:
        return picture
    canvas = Image.fromarray(picture)
    pen = ImageDraw.Draw(canvas)
    font = _font(_font_size(*picture.shape[:2]))
    text = "\n".join(lines)
    x0, y0, x1, y1 = pen.multiline_textbbox((4, 4), text, font=font)
    pen.rectangle((0, 0, x1 + 4, y1 + 4), fill=(0, 0, 0))
    pen.multiline_text((4, 4), text, fill=(255, 255, 255), font=font)
    return np.asarray(canvas).copy()


def save_overlay(path, image, instances: Instances, **draw_options) -> Path:
    """Draw ``instances`` over ``image`` (see ``draw`` for the options) and write it to ``path`` atomically.

    The picture is written to a temporary file in the same folder and moved over ``path``, so a
    reader never sees a half-written file. The format follows the suffix (.png, .jpg, .webp, ...).
    Returns ``path`` as a Path.
    """
    path = Path(path)
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"save_overlay: cannot tell the image format of {path} from its suffix; use .png or .jpg")
    picture = draw(image, instances, **draw_options)
    return atomic_write(path, lambda f: Image.fromarray(picture).save(f, format=fmt))  # fsynced, mode 0644


def side_by_side(images: list, titles: list[str] | None = None, height: int | None = None,
                 gap: int | None = None, background: tuple[int, int, int] = (32, 32, 32)) -> np.ndarray:
    """uint8 RGB: ``images`` next to each other, each scaled to ``height`` (default: the tallest), titles above.

    Args:
        images: one or more images (anything ``as_rgb_uint8`` accepts), of any sizes.
        titles: one title per image (or None for no title bar).
        height: the height every image is scaled to, aspect ratio kept.
        gap: pixels between the pictures (default: scales with ``height``), filled with ``background``.
    """
    if not images:
        raise ValueError("side_by_side: no images given")
    if titles is not None and len(titles) != len(images):
        raise ValueError(f"side_by_side: {len(images)} images but {len(titles)} titles; give one title per image")
    rgbs = [as_rgb_uint8(im) for im in images]
    height = int(height or max(im.shape[0] for im in rgbs))
    if height < 1:
        raise ValueError(f"side_by_side: height must be positive, got {height}")
    scaled = [_scale_to_height(im, height) for im in rgbs]
    gap = max(2, height // 100) if gap is None else int(gap)
    font = _font(_font_size(height, height))
    bar = 0
    if titles is not None:
        probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
        line = probe.textbbox((0, 0), "Ag", font=font)
        bar = (line[3] - line[1]) + 2 * max(2, (line[3] - line[1]) // 3)
    total_w = sum(im.shape[1] for im in scaled) + gap * (len(scaled) - 1)
    canvas = Image.new("RGB", (total_w, bar + height), tuple(background))
    pen = ImageDraw.Draw(canvas)
    x = 0
    for i, im in enumerate(scaled):
        canvas.paste(Image.fromarray(im), (x, bar))
        if titles is not None:
            left, top, right, bottom = pen.textbbox((0, 0), str(titles[i]), font=font)
            tx = x + max(0, (im.shape[1] - (right - left)) // 2) - left
            pen.text((tx, (bar - (bottom - top)) // 2 - top), str(titles[i]), fill=_text_color(background), font=font)
        x += im.shape[1] + gap
    return np.asarray(canvas).copy()


def _scale_to_height(rgb: np.ndarray, height: int) -> np.ndarray:
    h, w = rgb.shape[:2]
    if h == height:
        return rgb
    new_w = max(1, round(w * height / h))
    return np.asarray(Image.fromarray(rgb).resize((new_w, height), Image.BILINEAR))
