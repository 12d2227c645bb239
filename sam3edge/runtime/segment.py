"""``sam3edge segment``: a bundle over images, folders, videos or a camera -> overlay PNGs + COCO-style JSON.

Torch-free. Frames flow through the pipelined stream runner (decode, inference and post-processing
overlap); each frame's overlay is written atomically as it comes, the COCO-style JSON (images,
categories = the concepts, annotations with scores and RLE masks) once at the end, so an interrupted
run leaves whole overlays and no half-written JSON.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from sam3edge.atomic import atomic_write_text


def _safe_name(name: str, index: int) -> str:
    stem = Path(str(name)).stem if name else f"frame_{index:06d}"
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._") or f"frame_{index:06d}"
    return stem[:120]


def segment_source(segmenter, source, out_dir: str | Path, score_threshold: float = 0.5, top_k: int | None = None,
                   masks: bool = True, overlays: bool = True, stride: int = 1, max_frames: int | None = None,
                   progress: bool = True) -> dict:
    """Segment every frame of ``source`` (anything :func:`~sam3edge.runtime.sources.open_source` takes) with the
    segmenter's concepts; returns a summary (frames, instances, fps, paths)."""
    from tqdm import tqdm

    from sam3edge.runtime.overlay import save_overlay
    from sam3edge.runtime.sources import open_source
    from sam3edge.runtime.stream import run_stream

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"--out {out_dir} exists and is not a directory")
    frames = open_source(source, stride=stride, max_frames=max_frames)  # a clear error for a bad source first
    concepts = list(segmenter.concepts)
    cat_ids = {p: i + 1 for i, p in enumerate(concepts)}
    images, annotations, used = [], [], set()
    bar = tqdm(total=frames.length, desc="segment", unit="frame", disable=not progress)

    def on_result(frame, inst):
        name = _safe_name(frame.name, frame.index)
        while name in used:  # two files with one stem in different sub-folders
            name += "_"
        used.add(name)
        image_id = len(images) + 1
        h, w = inst.image_size
        images.append({"id": image_id, "file_name": str(frame.name), "height": int(h), "width": int(w),
                       "frame_index": int(frame.index), "timestamp_s": frame.timestamp_s})
        for a in inst.to_coco(image_id, cat_ids):
            a["id"] = len(annotations) + 1
            annotations.append(a)
        if overlays:
            save_overlay(out_dir / "overlays" / f"{name}.png", frame.image, inst)
        bar.update(1)

    with frames:
        stats = run_stream(segmenter, frames, on_result=on_result, score_threshold=score_threshold, top_k=top_k,
                           masks=masks)
    bar.close()
    coco = {"info": {"description": "sam3edge segment", "backend": segmenter.backend_name,
                     "score_threshold": score_threshold},
            "images": images, "categories": [{"id": i, "name": p} for p, i in cat_ids.items()],
            "annotations": annotations}
    json_path = atomic_write_text(out_dir / "predictions.json", json.dumps(coco))
    return {"frames": stats.frames, "instances": len(annotations), "fps": stats.fps, "seconds": stats.seconds,
            "predictions": str(json_path), "overlays": str(out_dir / "overlays") if overlays else None,
            "rss_start_mb": stats.rss_start_mb, "rss_end_mb": stats.rss_end_mb}
