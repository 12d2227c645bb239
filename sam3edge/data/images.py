"""Reading images into uint8 RGB arrays, with errors that name the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from sam3edge.runtime.image import as_rgb_uint8


def load_image(path: str | Path) -> np.ndarray:
    """uint8 [H, W, 3] RGB from an image file: the runtime's reader (:func:`sam3edge.runtime.image.as_rgb_uint8`:
    EXIF orientation applied; gray, RGBA, 16-bit and palette images converted), so training and the device read a
    file alike."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image {path} does not exist")
    return as_rgb_uint8(path)


def to_rgb_array(image, name: str = "image") -> np.ndarray:
    """uint8 [H, W, 3] RGB from a PIL image or an array, by the runtime's rules (``as_rgb_uint8``); training also
    refuses images under 2 x 2 pixels (nothing to learn or resize from)."""
    try:
        arr = as_rgb_uint8(image)
    except ValueError as e:
        raise ValueError(f"{name}: {e}") from e
    if arr.shape[0] < 2 or arr.shape[1] < 2:
        raise ValueError(f"{name}: image of shape {arr.shape} is too small (at least 2 x 2 pixels)")
    return arr


def resize_batch(images, size: int) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """uint8 [B, size, size, 3] RGB from one image or a list (arrays, PIL), plus each original (H, W).

    Resized bilinearly to a square without keeping the aspect ratio, as SAM3's processor does; the
    original sizes let outputs be mapped back. Arrays may be numpy or anything with ``.numpy()``.
    """
    if isinstance(images, (np.ndarray, Image.Image)) or hasattr(images, "numpy"):
        images = [images]
    if len(images) == 0:
        raise ValueError("no images given: pass at least one HxWx3 uint8 RGB image")
    batch, sizes = [], []
    for i, im in enumerate(images):
        arr = to_rgb_array(im.cpu().numpy() if hasattr(im, "cpu") else im, f"image {i}")
        sizes.append(arr.shape[:2])
        if arr.shape[:2] != (size, size):
            arr = np.asarray(Image.fromarray(arr).resize((size, size), Image.BILINEAR))
        batch.append(arr)
    return np.stack(batch), sizes
