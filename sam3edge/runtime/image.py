"""Images into the student's input frame and its outputs back to the original image.

The image encoder graph takes one uint8 RGB image [1, S, S, 3]. ``as_rgb_uint8`` turns whatever a
caller has (a path, a PIL image, an OpenCV BGR frame, a 16-bit or float array) into uint8 RGB
[H, W, 3], and ``Resize`` maps between the original H x W image and the S x S input frame:

* ``"stretch"`` (default): a square bilinear stretch that ignores the aspect ratio, which is what
  SAM3's processor and ``sam3edge.data.images.resize_batch`` do, so what the students trained on;
* ``"letterbox"``: keep the aspect ratio, scale so the longer side is S, pad bottom/right with a
  constant. Objects keep their shape, at the cost of a frame the students never saw in training.

Coordinates are pixel-edge coordinates: a box ``[x0, y0, x1, y1]`` in an image of width W has
``0 <= x0 <= x1 <= W``, and the pixel in column ``j`` spans ``[j, j + 1)``, so a box that covers
the whole image is ``[0, 0, W, H]``. Boxes in the input frame are normalised to [0, 1] of S.

This module imports numpy and Pillow only (the runtime runs where there is no torch or OpenCV).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["MAX_PIXELS", "RESIZE_MODES", "Resize", "as_rgb_uint8"]

MAX_PIXELS = 100_000_000
"""Images larger than this (100 megapixels) are refused: almost surely a wrong shape or a decompression bomb."""

RESIZE_MODES = ("stretch", "letterbox")

_ACCEPTED = (
    "accepted: a path, a PIL image, or an array [H, W], [H, W, 1], [H, W, 3] (RGB, or BGR with bgr=True) "
    "or [H, W, 4] (RGBA) of uint8, uint16, bool or float in [0, 1]"
)
_PIL_16BIT = ("I;16", "I;16B", "I;16L", "I;16N")


def as_rgb_uint8(image, bgr: bool = False) -> np.ndarray:
    """uint8 RGB [H, W, 3], C-contiguous, from a path, a PIL image or an array.

    Arrays: [H, W] gray, [H, W, 1], [H, W, 3] RGB (BGR when ``bgr``, e.g. OpenCV frames) or [H, W, 4]
    RGBA (alpha dropped, colours not premultiplied); dtype uint8, uint16 (full 16-bit range:
    ``round(v / 257)``), bool (True = 255) or float in [0, 1] (``round(v * 255)``). An array that
    already is contiguous uint8 RGB is returned as it is, without a copy.

    PIL images of any mode are converted (16-bit ``I;16`` as uint16; ``I`` must hold 0..65535 and is
    read as 16-bit, as 16-bit PNGs used to open; ``F`` must be in [0, 1] like float arrays).
    Paths are read with Pillow and turned upright by their EXIF orientation tag (as a viewer shows a phone
    photo; training reads files through this same function). PIL images and arrays are taken as they are.
    ``bgr`` concerns arrays only; paths and PIL images are RGB by definition.

    Raises:
        FileNotFoundError: a path that does not exist.
        ValueError: an unreadable file, or an array/image that is not one of the accepted kinds
            (the message says what was received and what is accepted).
    """
    if isinstance(image, (str, os.PathLike)):
        return _from_path(Path(image))
    if isinstance(image, Image.Image):
        return _from_pil(image, "PIL image")
    try:
        arr = np.asarray(image)
    except (TypeError, ValueError) as e:
        raise ValueError(f"cannot read a {type(image).__name__} as an image ({e}); {_ACCEPTED}") from e
    return _from_array(arr, bgr, "image array")


def _from_path(path: Path) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"image {path} does not exist")
    try:
        with warnings.catch_warnings():
            # The size is checked against MAX_PIXELS below, before decoding.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                _check_pixels(im.height, im.width, str(path))
                im.load()
                # as a viewer shows it: phone photos store the sensor's orientation and an EXIF rotation tag
                upright = ImageOps.exif_transpose(im)
                return _from_pil(upright if upright is not None else im, str(path))
    except Image.DecompressionBombError as e:
        raise ValueError(f"{path}: image is larger than {MAX_PIXELS / 1e6:.0f} megapixels ({e})") from e
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ValueError(f"{path} is not a readable image ({e}); convert it to PNG or JPEG") from e


def _from_pil(im: Image.Image, name: str) -> np.ndarray:
    _check_pixels(im.height, im.width, name)
    if im.mode in _PIL_16BIT:
        return _from_array(np.asarray(im).astype(np.uint16), False, name)
    if im.mode == "I":
        arr = np.asarray(im)
        if arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise ValueError(
                f"{name}: 32-bit integer ('I' mode) image has values in [{arr.min()}, {arr.max()}]; only 0..65535 "
                "(16-bit) is accepted: scale it to uint8 or uint16 first"
            )
        return _from_array(arr.astype(np.uint16), False, name)
    if im.mode == "F":
        return _from_array(np.asarray(im), False, name)
    if im.mode == "RGB":
        return _from_array(np.array(im, dtype=np.uint8), False, name)
    try:
        rgb = im.convert("RGB")
    except ValueError as e:
        raise ValueError(f"{name}: cannot convert a PIL image of mode {im.mode!r} to RGB ({e})") from e
    return _from_array(np.array(rgb, dtype=np.uint8), False, name)


def _check_pixels(height: int, width: int, name: str) -> None:
    if height * width > MAX_PIXELS:
        raise ValueError(
            f"{name}: image of {height} x {width} = {height * width / 1e6:.1f} megapixels is larger than the "
            f"{MAX_PIXELS / 1e6:.0f} megapixels accepted; downscale it first (the student sees it at S x S anyway)"
        )


def _channels(arr: np.ndarray, name: str) -> np.ndarray:
    """[H, W, C] with C in (1, 3, 4) from any accepted layout, or a ValueError saying what is wrong."""
    shape = tuple(arr.shape)
    if arr.ndim == 2:
        return arr[..., None]
    if arr.ndim == 3:
        if shape[-1] in (1, 3, 4):
            return arr
        if shape[0] in (1, 3, 4):
            raise ValueError(
                f"{name}: shape {shape} looks like CHW; transpose to HWC (array.transpose(1, 2, 0)); {_ACCEPTED}"
            )
        raise ValueError(f"{name}: shape {shape} has {shape[-1]} channels; {_ACCEPTED}")
    if arr.ndim == 4:
        raise ValueError(
            f"{name}: shape {shape} is a batch of {shape[0]} images; pass one image at a time "
            f"(e.g. batch[0]); {_ACCEPTED}"
        )
    raise ValueError(f"{name}: shape {shape} ({arr.ndim} dimensions) is not an image; {_ACCEPTED}")


def _to_uint8(arr: np.ndarray, name: str) -> np.ndarray:
    kind, size = arr.dtype.kind, arr.dtype.itemsize
    if kind == "u" and size == 1:
        return arr
    if kind == "u" and size == 2:
        # round(v / 257) in integers: 65535 -> 255, exact for every 8-bit value times 257.
        return ((arr.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if kind == "b":
        return arr.astype(np.uint8) * np.uint8(255)
    if kind == "f":
        arr = arr.astype(np.float32) if size < 4 else arr
        ok = (arr >= 0) & (arr <= 1)  # False for NaN too
        if not ok.all():
            if np.isnan(arr).any():
                raise ValueError(f"{name}: float image contains NaN; {_ACCEPTED}")
            raise ValueError(
                f"{name}: float image has values in [{np.nanmin(arr):.4g}, {np.nanmax(arr):.4g}] but float images "
                f"must be in [0, 1] (divide 0..255 data by 255, or pass it as uint8); {_ACCEPTED}"
            )
        return (arr * 255 + 0.5).astype(np.uint8)
    hint = " (for 0..255 values use array.astype(np.uint8))" if kind in "iu" else ""
    raise ValueError(f"{name}: unsupported dtype {arr.dtype}{hint}; {_ACCEPTED}")


def _from_array(arr: np.ndarray, bgr: bool, name: str) -> np.ndarray:
    if arr.dtype == object:
        raise ValueError(f"{name}: unsupported dtype object; {_ACCEPTED}")
    arr = _channels(arr, name)
    height, width, channels = arr.shape
    if height == 0 or width == 0:
        raise ValueError(f"{name}: image is empty (shape {tuple(arr.shape)}); {_ACCEPTED}")
    _check_pixels(height, width, name)
    if channels == 1:
        arr = arr[..., 0]
    elif bgr:
        arr = arr[..., 2::-1]
    elif channels == 4:
        arr = arr[..., :3]
    arr = _to_uint8(arr, name)  # channels first: no work on a dropped alpha
    if arr.ndim == 2:
        return np.repeat(arr[..., None], 3, axis=2)
    return np.ascontiguousarray(arr)


@dataclass(frozen=True)
class Resize:
    """The map between an original H x W image and the student's S x S input frame.

    ``mode="stretch"`` scales each axis on its own (what the students trained on);
    ``mode="letterbox"`` scales both by S / max(H, W), so the image fills the top-left
    ``scaled_size`` of the frame, and fills the rest with ``pad_value``.
    """

    height: int
    width: int
    size: int
    mode: str = "stretch"
    pad_value: int = 114

    def __post_init__(self):
        for field in ("height", "width", "size"):
            value = getattr(self, field)
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"Resize: {field} must be a positive integer, got {value!r}")
        if self.mode not in RESIZE_MODES:
            raise ValueError(f"Resize: mode must be one of {RESIZE_MODES}, got {self.mode!r}")
        if not isinstance(self.pad_value, (int, np.integer)) or not 0 <= self.pad_value <= 255:
            raise ValueError(f"Resize: pad_value must be an integer in 0..255, got {self.pad_value!r}")

    @classmethod
    def fit(cls, height: int, width: int, size: int, mode: str = "stretch", pad_value: int = 114) -> Resize:
        """The transform of an image of ``height`` x ``width`` into a ``size`` x ``size`` frame."""
        return cls(int(height), int(width), int(size), mode, int(pad_value))

    @property
    def scaled_size(self) -> tuple[int, int]:
        """(h, w) of the image inside the input frame: (S, S) stretched, the long side = S letterboxed."""
        if self.mode == "stretch":
            return self.size, self.size
        longest = max(self.height, self.width)
        # round(side * S / longest) in integers (half up), at least one pixel.
        h = max(1, (2 * self.height * self.size + longest) // (2 * longest))
        w = max(1, (2 * self.width * self.size + longest) // (2 * longest))
        return h, w

    def _pixels_per_frame(self) -> tuple[float, float]:
        """(x, y) original pixels per normalised frame unit: normalised * this = original pixels."""
        h, w = self.scaled_size
        return self.width * self.size / w, self.height * self.size / h

    def apply(self, image) -> np.ndarray:
        """uint8 RGB [S, S, 3]: ``image`` (anything ``as_rgb_uint8`` accepts, of H x W) in the input frame.

        Pillow's bilinear resize, as ``sam3edge.data.images.resize_batch``; stretch mode gives exactly its pixels.
        """
        rgb = as_rgb_uint8(image)
        if rgb.shape[:2] != (self.height, self.width):
            raise ValueError(
                f"Resize.apply: image is {rgb.shape[0]} x {rgb.shape[1]} but this transform was fitted to "
                f"{self.height} x {self.width}; use Resize.fit(*image.shape[:2], size) for each image size"
            )
        h, w = self.scaled_size
        if (h, w) != rgb.shape[:2]:
            rgb = np.asarray(Image.fromarray(rgb).resize((w, h), Image.BILINEAR))
        if (h, w) == (self.size, self.size):
            return rgb
        frame = np.full((self.size, self.size, 3), self.pad_value, dtype=np.uint8)
        frame[:h, :w] = rgb
        return frame

    def boxes_to_original(self, boxes) -> np.ndarray:
        """float64 [..., 4] xyxy pixels of the original image (clipped to it) from [..., 4] xyxy in [0, 1] of the frame.

        In letterbox mode, a box reaching into the padding is clipped to the image edge.
        """
        b = _boxes(boxes, "boxes_to_original")
        fx, fy = self._pixels_per_frame()
        out = b * np.array([fx, fy, fx, fy])
        np.clip(out[..., 0::2], 0, self.width, out=out[..., 0::2])
        np.clip(out[..., 1::2], 0, self.height, out=out[..., 1::2])
        return out

    def boxes_to_input(self, boxes) -> np.ndarray:
        """float64 [..., 4] xyxy normalised to [0, 1] of the frame from [..., 4] xyxy original pixels.

        The inverse of ``boxes_to_original`` for boxes inside the image (no clipping): for exemplar prompts.
        """
        b = _boxes(boxes, "boxes_to_input")
        fx, fy = self._pixels_per_frame()
        return b / np.array([fx, fy, fx, fy])

    def masks_to_original(self, mask_logits) -> np.ndarray:
        """bool [N, H, W] masks of the original image from mask logits [N, m, m] over the S x S frame.

        The part of the logit map that holds the image (all of it when stretched; the top-left
        ``scaled_size * m / S`` when letterboxed, a fractional box) is resized bilinearly to H x W in
        one step, then thresholded at 0 (probability 0.5). One Pillow 'F' resize per instance, of only the
        window that can be positive: a bilinear sample is > 0 only if one of its 2 x 2 source cells is, so
        outside the positive cells' bounding box (grown by one cell) every pixel is False. Same samples as a
        full-size resize (the window's box keeps the scale), at a cost that follows the instance's size.
        """
        logits = np.asarray(mask_logits, dtype=np.float32)
        if logits.ndim != 3:
            raise ValueError(f"masks_to_original: expected mask logits [N, m, m], got shape {logits.shape}")
        n, mh, mw = logits.shape
        out = np.empty((n, self.height, self.width), dtype=bool)
        if n == 0:
            return out
        if mh == 0 or mw == 0:
            raise ValueError(f"masks_to_original: mask logits of shape {logits.shape} are empty")
        h, w = self.scaled_size
        sx, sy = (w * mw / self.size) / self.width, (h * mh / self.size) / self.height  # source cells per pixel
        out[:] = False
        for i in range(n):
            positive = logits[i] > 0
            rows, cols = np.flatnonzero(positive.any(1)), np.flatnonzero(positive.any(0))
            if rows.size == 0:
                continue
            y0, y1 = _window(rows[0], rows[-1], sy, self.height)
            x0, x1 = _window(cols[0], cols[-1], sx, self.width)
            if y1 <= y0 or x1 <= x0:  # positive only in a letterbox's padding
                continue
            resized = Image.fromarray(np.ascontiguousarray(logits[i])).resize(
                (x1 - x0, y1 - y0), Image.BILINEAR, box=(x0 * sx, y0 * sy, x1 * sx, y1 * sy))
            np.greater(np.asarray(resized), 0, out=out[i, y0:y1, x0:x1])
        return out


def _window(first: int, last: int, cells_per_pixel: float, size: int) -> tuple[int, int]:
    """Output pixels [lo, hi) whose bilinear sample (source coordinate (p + 0.5) * cells_per_pixel - 0.5) can reach
    a source cell in [first, last]: those with a sample in (first - 1, last + 1), one pixel of margin each side."""
    lo = int(np.floor((first - 0.5) / cells_per_pixel - 0.5)) - 1
    hi = int(np.ceil((last + 1.5) / cells_per_pixel - 0.5)) + 2
    return max(lo, 0), min(hi, size)


def _boxes(boxes, where: str) -> np.ndarray:
    b = np.array(boxes, dtype=np.float64)  # a copy: callers' arrays are never modified
    if b.ndim == 0 or b.shape[-1] != 4:
        raise ValueError(f"{where}: expected boxes [..., 4] as xyxy, got shape {b.shape}")
    return b
