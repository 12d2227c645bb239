"""Reading images into uint8 RGB arrays, with errors that name the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError


def load_image(path: str | Path) -> np.ndarray:
    """uint8 [H, W, 3] RGB from an image file (grayscale, RGBA, 16-bit and palette images are converted)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image {path} does not exist")
    try:
        with Image.open(path) as im:
            im.load()
            return to_rgb_array(im, str(path))
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ValueError(f"{path} is not a readable image ({e}); remove it or convert it to PNG/JPEG") from e


def to_rgb_array(image, name: str = "image") -> np.ndarray:
    """uint8 [H, W, 3] RGB from a PIL image or an array (HW, HW1, HW3 RGB, HW4 RGBA; uint8/uint16/float in [0,1])."""
    if isinstance(image, Image.Image):
        if image.mode in ("I;16", "I;16B", "I;16L", "I"):
            image = np.asarray(image)
        else:
            return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
        raise ValueError(f"{name}: expected an [H, W, 3] RGB image, got shape {arr.shape}")
    if arr.shape[0] < 2 or arr.shape[1] < 2:
        raise ValueError(f"{name}: image of shape {arr.shape} is too small")
    arr = arr[..., :3]
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if arr.dtype in (np.uint16, np.int32, np.uint32) or (arr.dtype.kind in "iu"):
        return (arr.astype(np.float64) / max(1, np.iinfo(arr.dtype).max) * 255 + 0.5).astype(np.uint8)
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            raise ValueError(f"{name}: float image contains NaN or inf")
        if arr.min() < 0 or arr.max() > 1:
            raise ValueError(f"{name}: float images must be in [0, 1], got [{arr.min():.3g}, {arr.max():.3g}]")
        return (arr * 255 + 0.5).astype(np.uint8)
    raise ValueError(f"{name}: unsupported dtype {arr.dtype}; pass uint8 RGB")


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
