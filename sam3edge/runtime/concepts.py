"""Concept cache: a fixed vocabulary's teacher text features, so a device runs no text encoder.

A robot that only ever looks for "ripe apple", "bruised apple" and "leaf" needs the teacher's
projected text features of those phrases, not a text encoder. ``ConceptCache`` holds them with
their phrases and writes three files into a directory (usually a bundle):

* ``concepts.npy``      features [P, L, C] float (float32 or float16), what the decoder consumes;
* ``concepts_mask.npy`` mask [P, L] bool (True = token);
* ``concepts.json``     phrases, shapes, dtypes, sha256 of both ``.npy`` files, source teacher.

Arrays are written and read with ``allow_pickle=False`` (loading never executes code). Each file is
written to a temporary name and renamed into place, the JSON last, so a reader never sees half a
file; a crash between renames leaves files whose checksums disagree with the JSON, which ``load``
reports. This module imports numpy only: the runtime has no torch (``from_teacher`` imports it lazily).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from sam3edge.atomic import atomic_write

FEATURES_FILE = "concepts.npy"
MASK_FILE = "concepts_mask.npy"
META_FILE = "concepts.json"
FORMAT_VERSION = 1
_FLOAT_DTYPES = ("float32", "float16")


def normalize_phrase(phrase: str) -> str:
    """Lower case, whitespace collapsed: " Ripe  Apple" and "ripe apple" are one concept."""
    return " ".join(str(phrase).lower().split())


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_phrases(phrases: list[str]) -> list[str]:
    """The normalised keys of ``phrases``; a ValueError for an empty phrase or one given twice."""
    keys = [normalize_phrase(p) for p in phrases]
    if any(not k for k in keys):
        raise ValueError(f"empty phrase in {phrases!r}: remove it")
    dupes = sorted({k for k in keys if keys.count(k) > 1})
    if dupes:
        raise ValueError(f"duplicate phrases: {dupes} repeat after case/whitespace normalisation; "
                         "give each concept once")
    return keys


class ConceptCache:
    """phrases (P strings), features [P, L, C] float32/float16, mask [P, L] bool; ``source`` names the teacher."""

    def __init__(self, phrases: list[str], features: np.ndarray, mask: np.ndarray, source: str = ""):
        if isinstance(phrases, str):
            raise TypeError("phrases must be a list of strings, not one string")
        phrases = [str(p) for p in phrases]
        if not phrases:
            raise ValueError("a concept cache needs at least one phrase, got an empty list")
        keys = check_phrases(phrases)
        features, mask = np.asarray(features), np.asarray(mask)
        if features.ndim != 3 or features.shape[0] != len(phrases):
            raise ValueError(f"features must be [P={len(phrases)}, L, C], got shape {features.shape}")
        if features.dtype.name not in _FLOAT_DTYPES:
            if not np.issubdtype(features.dtype, np.floating):
                raise ValueError(f"features must be floating point, got {features.dtype}")
            features = features.astype(np.float32)
        if mask.shape != features.shape[:2]:
            raise ValueError(f"mask must be [P, L] = {features.shape[:2]}, got shape {mask.shape}")
        bad = ~np.isfinite(features).all(axis=(1, 2))
        if bad.any():  # NaN / inf features give NaN scores for that concept, silently
            raise ValueError(f"features of {int(bad.sum())} concept(s) hold NaN or infinite values (e.g. "
                             f"{phrases[int(np.argmax(bad))]!r}); rebuild the concept cache")
        self.phrases, self.source = phrases, source
        self.features = np.ascontiguousarray(features)
        self.mask = np.ascontiguousarray(mask.astype(bool))
        self._index = {k: i for i, k in enumerate(keys)}

    def __len__(self) -> int:
        return len(self.phrases)

    def __contains__(self, phrase: str) -> bool:
        return normalize_phrase(phrase) in self._index

    def __repr__(self) -> str:
        return f"ConceptCache({len(self)} phrases, features {self.features.shape} {self.features.dtype})"

    def lookup(self, phrases: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Features [N, L, C] and mask [N, L] of ``phrases``, in their order (case / whitespace ignored)."""
        if isinstance(phrases, str):
            phrases = [phrases]
        if not phrases:
            raise ValueError("no phrases to look up: pass at least one")
        unknown = [p for p in phrases if normalize_phrase(p) not in self._index]
        if unknown:
            shown = ", ".join(repr(p) for p in self.phrases[:30]) + (" ..." if len(self) > 30 else "")
            raise KeyError(f"phrases not in the concept cache: {unknown}; it knows {len(self)}: {shown}. "
                           "Rebuild the cache with these phrases, or use a bundle with a text encoder")
        idx = np.array([self._index[normalize_phrase(p)] for p in phrases])
        return self.features[idx], self.mask[idx]

    # ---- files ------------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write the three files into ``directory`` (created if missing); returns the directory."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write(directory / FEATURES_FILE, lambda f: np.save(f, self.features, allow_pickle=False))
        atomic_write(directory / MASK_FILE, lambda f: np.save(f, self.mask, allow_pickle=False))
        meta = {
            "format_version": FORMAT_VERSION, "source": self.source, "phrases": self.phrases,
            "features": {"file": FEATURES_FILE, "shape": list(self.features.shape), "dtype": self.features.dtype.name,
                         "sha256": sha256_file(directory / FEATURES_FILE)},
            "mask": {"file": MASK_FILE, "shape": list(self.mask.shape), "dtype": "bool",
                     "sha256": sha256_file(directory / MASK_FILE)},
        }
        text = json.dumps(meta, indent=2, ensure_ascii=False).encode("utf-8")
        atomic_write(directory / META_FILE, lambda f: f.write(text))
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> ConceptCache:
        """Read a cache written by ``save``, verifying checksums, shapes and dtypes (ValueError names the file)."""
        directory = Path(directory)
        meta_path = directory / META_FILE
        if not meta_path.is_file():
            raise FileNotFoundError(f"{meta_path} does not exist: {directory} holds no concept cache")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            phrases, source = meta["phrases"], meta.get("source", "")
            entries = {name: meta[name] for name in ("features", "mask")}
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{meta_path} is not a valid concept cache description ({type(e).__name__}: {e}); "
                             "rebuild the cache") from e
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{meta_path}: format_version {meta.get('format_version')!r}, this sam3edge reads "
                             f"{FORMAT_VERSION}")
        arrays = {name: cls._read_array(directory, entry) for name, entry in entries.items()}
        try:
            return cls(phrases, arrays["features"], arrays["mask"], source=source)
        except (ValueError, TypeError) as e:
            raise ValueError(f"{meta_path}: {e}") from e

    @staticmethod
    def _read_array(directory: Path, entry: dict) -> np.ndarray:
        name = entry.get("file") if isinstance(entry, dict) else None
        if name not in (FEATURES_FILE, MASK_FILE):  # never follow a path the JSON makes up
            raise ValueError(f"{directory / META_FILE}: unexpected array file entry {entry!r}")
        path = directory / name
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing (listed in {META_FILE})")
        digest = sha256_file(path)
        if digest != entry.get("sha256"):
            raise ValueError(f"{path} is corrupt or was changed: sha256 {digest[:16]}... does not match "
                             f"{str(entry.get('sha256'))[:16]}... recorded in {META_FILE}; rebuild the cache")
        try:
            arr = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as e:
            raise ValueError(f"{path} is not a readable .npy array ({e})") from e
        if list(arr.shape) != list(entry.get("shape", [])) or arr.dtype.name != entry.get("dtype"):
            raise ValueError(f"{path}: array is {arr.dtype.name} {list(arr.shape)}, {META_FILE} says "
                             f"{entry.get('dtype')} {entry.get('shape')}")
        return arr

    # ---- building ---------------------------------------------------------------------------------
    @classmethod
    def from_teacher(cls, teacher, phrases: list[str], source: str | None = None,
                     dtype: str = "float32") -> ConceptCache:
        """Encode ``phrases`` with ``teacher.encode_text`` (a ``Sam3Teacher``) -> a cache of its projected features.

        source: the teacher's name for provenance (default: its config's ``_name_or_path``).
        """
        import torch  # lazy: the runtime must not need torch

        if isinstance(phrases, str):
            phrases = [phrases]
        if not phrases:
            raise ValueError("no phrases to encode: pass at least one")
        with torch.no_grad():
            feats, mask = teacher.encode_text(list(phrases))
        if source is None:
            source = str(getattr(getattr(teacher, "config", None), "_name_or_path", "") or type(teacher).__name__)
        return cls(list(phrases), feats.float().cpu().numpy().astype(dtype), mask.cpu().numpy().astype(bool),
                   source=source)
