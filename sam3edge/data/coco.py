"""SA-Co style COCO JSON: (image, noun phrase) pairs with RLE instance masks.

Each entry of ``images`` is one pair: ``id``, ``file_name``, ``width``, ``height``,
``text_input`` (the phrase), ``queried_category``, ``is_instance_exhaustive``. Annotations
point at the pair's ``id``. A pair without annotations is a hard negative. This is the layout
SAM3's own evaluator reads, so our files can be cross-checked with it.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from sam3edge.data.rle import to_rle
from sam3edge.data.saco import Pair, load_gt
from sam3edge.runtime.instances import decode_rle, encode_rle

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


def encode_mask(mask: np.ndarray) -> dict:
    """COCO RLE (``counts`` as str) of a boolean [H, W] mask: the runtime's encoder (equal to pycocotools')."""
    return encode_rle(mask)


def decode_mask(rle: dict, where: str = "segmentation") -> np.ndarray:
    """Boolean [H, W] mask from a COCO RLE, validated first (pycocotools does not check counts)."""
    if not isinstance(rle, dict) or "size" not in rle:
        raise ValueError(f"{where}: expected a COCO RLE {{'size': [H, W], 'counts': ...}}, got {rle!r:.60}")
    try:
        h, w = (int(v) for v in rle["size"])
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: RLE 'size' must be [H, W], got {rle['size']!r}") from e
    return decode_rle(to_rle(rle, h, w, where=where))


class ConceptDataset:
    """An SA-Co style annotation file, validated, with its pairs grouped by image file.

    ``pairs`` are :class:`~sam3edge.data.saco.Pair` (``id``, ``file_name``, ``phrase``, ``masks()``,
    ``is_negative``); ``by_file`` maps each image file to the pairs that ask about it.
    """

    def __init__(self, data: dict, root: str | Path, source: str = "<dict>"):
        self.root, self.source = Path(root), source
        try:
            gt = load_gt(data)
        except ValueError as e:
            raise ValueError(f"{source}: {e}") from e
        self.categories = gt.categories
        self.pairs: list[Pair] = list(gt.pairs.values())
        for p in self.pairs:
            if not p.phrase.strip():
                raise ValueError(f"{source}: pair {p.id!r} ({p.file_name}) has no 'text_input' phrase")
        self.by_file: dict[str, list[Pair]] = defaultdict(list)
        for p in self.pairs:
            self.by_file[p.file_name].append(p)

    @classmethod
    def load(cls, path: str | Path, check_images: bool = True) -> ConceptDataset:
        """Read ``path``; image files are resolved relative to its folder (or ``images/`` in it)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"annotation file {path} does not exist")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from e
        ds = cls(data, path.parent, str(path))
        if check_images:
            missing = [f for f in ds.by_file if not ds.image_path(f).is_file()]
            if missing:
                raise FileNotFoundError(
                    f"{path}: {len(missing)} image file(s) missing, e.g. {ds.image_path(missing[0])}")
        return ds

    def image_path(self, file_name: str) -> Path:
        p = self.root / file_name
        alt = self.root / "images" / file_name
        return alt if not p.exists() and alt.exists() else p

    @property
    def files(self) -> list[str]:
        return list(self.by_file)

    @property
    def phrases(self) -> list[str]:
        return sorted({p.phrase for p in self.pairs})

    def __len__(self) -> int:
        return len(self.pairs)


def list_images(folder: str | Path) -> list[Path]:
    """Image files of a folder (sorted); clear errors for a missing or image-less folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise ValueError(f"{folder} holds no images (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    return files
