"""A concept from an example: boxes drawn once on one image, stored in a bundle's concept cache.

``add_visual_concept(bundle, name, image, exemplars)`` runs the bundle's image and exemplar encoder graphs on
``image``, makes the prompt SAM3 would see (the phrase ``"visual"``, or another, then one token per box and a
CLS token; :meth:`~sam3edge.runtime.segmenter.Segmenter.exemplar_prompt`) and stores it under ``name``: later
``set_concepts([name])`` segments new images with no boxes. The CLI is ``sam3edge concepts add``.

The bundle is rewritten as a whole: its listed files (and nothing else) are copied into a temporary sibling
directory, the concept cache and the manifest (concepts, checksums, a ``visual_concepts`` record of where each
came from) are written there, the copy is opened and verified like any bundle, and only then does it replace
the original (two renames; see :func:`sam3edge.atomic.atomic_directory`). Torch-free.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

import numpy as np

from sam3edge.atomic import atomic_directory, written_by_us
from sam3edge.runtime.bundle import FORMAT, MANIFEST, Bundle, check_manifest
from sam3edge.runtime.concepts import (
    FEATURES_FILE,
    MASK_FILE,
    META_FILE,
    ConceptCache,
    normalize_phrase,
    sha256_file,
)
from sam3edge.runtime.exemplars import VISUAL, exemplar_inputs
from sam3edge.runtime.image import as_rgb_uint8
from sam3edge.runtime.names import MAX_PHRASE_CHARS

__all__ = ["add_visual_concept"]


def add_visual_concept(bundle: str | Path, name: str, image, exemplars, phrase: str = VISUAL,
                       backend: str = "auto", threads: int = 0) -> dict:
    """Store the prompt of ``exemplars`` (boxes on ``image``; see :func:`~sam3edge.runtime.exemplars.exemplar_inputs`)
    with ``phrase`` as concept ``name`` of ``bundle``; returns the new manifest. ValueError (nothing written) for a
    name the bundle already has, bad boxes, or a bundle without an exemplar encoder."""
    from sam3edge.runtime.segmenter import Segmenter

    if not isinstance(name, str) or not normalize_phrase(name) or len(name) > MAX_PHRASE_CHARS:
        raise ValueError(f"--name {name!r}: a concept name is a non-empty phrase of at most {MAX_PHRASE_CHARS} "
                         "characters")
    opened = bundle if isinstance(bundle, Bundle) else Bundle.open(bundle)
    cache = opened.concept_cache()
    if name in cache:
        raise ValueError(f"bundle {opened.path} already has a concept {name!r}; pick another --name")
    if not opened.has_exemplar_encoder:
        raise ValueError(f"bundle {opened.path} ({opened.target}) has no exemplar encoder graph, so a concept cannot "
                         "be made from boxes; export the run again with this version (every target carries it)")
    rgb = as_rgb_uint8(image)
    per_concept, k = exemplar_inputs(exemplars, [phrase], *rgb.shape[:2])  # checked before any graph runs
    if k == 0:
        raise ValueError("a visual concept needs at least one exemplar box (--box x0,y0,x1,y1)")
    seg = Segmenter.load(opened, backend=backend, threads=threads)
    features, mask = seg.exemplar_prompt(rgb, exemplars, phrase)
    new_cache = ConceptCache([*cache.phrases, name],
                             np.concatenate([cache.features, features[None].astype(cache.features.dtype)]),
                             np.concatenate([cache.mask, mask[None]]), source=cache.source)
    record = {"phrase": phrase, "boxes": [list(e.box) for e in per_concept[0]],
              "positive": [e.positive for e in per_concept[0]], "image_size": list(rgb.shape[:2]),
              "image_sha256": hashlib.sha256(np.ascontiguousarray(rgb).tobytes()).hexdigest(),
              "added": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    manifest = json.loads(json.dumps(opened.manifest))
    with atomic_directory(opened.path, replace=written_by_us(MANIFEST, FORMAT), what="bundle") as tmp:
        for rel in manifest["files"]:  # only what the manifest lists (and checked): nothing else is carried over
            dst = tmp / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(opened.resolve(rel), dst)
        new_cache.save(tmp)
        manifest["concepts"] = list(new_cache.phrases)
        manifest.setdefault("visual_concepts", {})[name] = record
        for rel in (FEATURES_FILE, MASK_FILE, META_FILE):  # the rest are copies; Bundle.open below checks them all
            manifest["files"][rel] = sha256_file(tmp / rel)
        check_manifest(manifest)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        Bundle.open(tmp).concept_cache()  # the new bundle reads back (checksums, cache against manifest)
    return manifest
