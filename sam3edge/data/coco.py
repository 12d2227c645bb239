"""SA-Co style COCO JSON: (image, noun phrase) pairs with RLE instance masks.

Each entry of ``images`` is one pair: ``id``, ``file_name``, ``width``, ``height``,
``text_input`` (the phrase), ``queried_category``, ``is_instance_exhaustive``. Annotations
point at the pair's ``id``. A pair without annotations is a hard negative. This is the layout
SAM3's own evaluator reads, so our files can be cross-checked with it.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


def encode_mask(mask: np.ndarray) -> dict:
    """COCO RLE (``counts`` as str) of a boolean [H, W] mask."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def decode_mask(rle: dict, where: str = "segmentation") -> np.ndarray:
    """Boolean [H, W] mask from a COCO RLE (compressed or uncompressed); clear error if malformed."""
    try:
        size = [int(v) for v in rle["size"]]
        if isinstance(rle["counts"], list):
            rle = mask_utils.frPyObjects(rle, *size)
        else:
            counts = rle["counts"]
            rle = {"size": size, "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
        m = mask_utils.decode(rle)
    except Exception as e:  # pycocotools raises bare Exceptions and TypeErrors
        raise ValueError(f"{where}: malformed RLE ({e!s}); expected {{'size': [H, W], 'counts': str}}") from e
    if m.shape != tuple(size):
        raise ValueError(f"{where}: RLE decodes to {m.shape}, but its size says {size}")
    return m.astype(bool)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` so that a reader sees the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


@dataclass
class Pair:
    """One (image, phrase) pair with its ground-truth instances (empty for a negative)."""

    id: int
    file_name: str
    width: int
    height: int
    phrase: str
    annotations: list[dict] = field(default_factory=list)
    exhaustive: bool = True

    @property
    def is_negative(self) -> bool:
        return not self.annotations

    def masks(self) -> np.ndarray:
        """Boolean [N, H, W] ground-truth masks (decoded on demand)."""
        if not self.annotations:
            return np.zeros((0, self.height, self.width), dtype=bool)
        return np.stack([decode_mask(a["segmentation"], f"annotation {a.get('id')} of pair {self.id}")
                         for a in self.annotations])


class ConceptDataset:
    """An SA-Co style annotation file: pairs grouped by image, images resolved on disk."""

    def __init__(self, data: dict, root: Path, source: str = "<dict>"):
        self.data, self.root, self.source = data, Path(root), source
        if not isinstance(data, dict) or "images" not in data:
            raise ValueError(f"{source}: not a COCO/SA-Co file (no 'images' list)")
        self.categories = {int(c["id"]): c["name"] for c in data.get("categories", [])}
        by_pair: dict[int, list[dict]] = defaultdict(list)
        for a in data.get("annotations", []):
            by_pair[int(a["image_id"])].append(a)
        self.pairs: list[Pair] = []
        for i, im in enumerate(data["images"]):
            missing = [k for k in ("id", "file_name", "width", "height") if k not in im]
            if missing:
                raise ValueError(f"{source}: images[{i}] lacks {missing}")
            phrase = im.get("text_input") or self.categories.get(im.get("queried_category"), "")
            if not str(phrase).strip():
                raise ValueError(f"{source}: images[{i}] (id {im['id']}) has no 'text_input' phrase")
            self.pairs.append(Pair(int(im["id"]), im["file_name"], int(im["width"]), int(im["height"]),
                                   str(phrase), by_pair.pop(int(im["id"]), []),
                                   bool(im.get("is_instance_exhaustive", True))))
        if by_pair:
            raise ValueError(f"{source}: annotations refer to unknown pair ids {sorted(by_pair)[:5]}")
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
        return p if p.exists() or not (self.root / "images" / file_name).exists() else self.root / "images" / file_name

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
