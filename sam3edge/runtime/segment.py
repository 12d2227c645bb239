"""``sam3edge segment``: a bundle over images, folders, videos or a camera -> overlay PNGs + COCO-style JSON.

Torch-free. Frames flow through the pipelined stream runner (decode, inference and post-processing
overlap). As each frame finishes, its overlay is written atomically and its result appended to
``predictions.jsonl`` (one JSON object per line: the frame, its ms, its annotations) and flushed, so a run
killed outright keeps every finished frame there. The COCO-style JSON (images, categories = the concepts,
annotations with scores and RLE masks) is written atomically at the end, also when the run stops early (an
error, Ctrl-C, SIGTERM through the CLI): then it holds every finished frame and says ``"complete": false``.
A folder's unreadable files are skipped, with a warning, and listed under ``"skipped"``. ``--out`` is
this run's alone: a lock file refuses a second run writing there at the same time, and results of an
earlier run are replaced only with ``overwrite`` (then its overlays and JSON are removed first, so old and
new results never mix).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict
from pathlib import Path

import numpy as np

from sam3edge.atomic import atomic_write_text
from sam3edge.runtime.signals import signals_deferred


def _safe_name(name: str, index: int) -> str:
    stem = Path(str(name)).stem if name else f"frame_{index:06d}"
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._") or f"frame_{index:06d}"
    return stem[:120]


def segment_source(segmenter, source, out_dir: str | Path, score_threshold: float = 0.5, top_k: int | None = None,
                   masks: bool = True, overlays: bool = True, stride: int = 1, max_frames: int | None = None,
                   progress: bool = True, overwrite: bool = False, track: bool = False,
                   lines: list | None = None, topic: str | None = None, bag_out: bool = False,
                   video_out: bool = False, fps: float | None = None, exclusive: list | None = None,
                   zones: list | None = None) -> dict:
    """Segment every frame of ``source`` (anything :func:`~sam3edge.runtime.sources.open_source` takes) with the
    segmenter's concepts; returns a summary (frames, instances, fps, paths, skipped files).

    ``track``: identities across frames (:class:`~sam3edge.runtime.tracking.ByteTracker`, ``score_threshold`` as
    its ``high_score``): results carry ``track_id`` and only tracked instances, ``tracks.txt`` gets MOT-challenge
    lines as frames finish, the summary the unique objects per concept and, per ``lines`` entry ((x0, y0),
    (x1, y1)), the crossings in and out per concept, per ``zones`` entry (a polygon, (x, y) points), the objects
    inside, entries, exits and distinct objects inside per concept (:class:`~sam3edge.runtime.tracking.ZoneCounter`).
    ``topic``: the image topic of a ROS 2 bag input; ``bag_out``:
    the results also as a ROS 2 bag in ``out_dir/results_bag`` (:class:`~sam3edge.runtime.rosbag.RosbagResultWriter`,
    stamped with each camera message's header; written as frames finish, finished also when the run stops).
    ``video_out``: an annotated ``out_dir/annotated.mp4`` (masks, labels, track ids and running counts) at ``fps``
    (default: from the source's timestamps, else 15), finished also when the run stops (not when killed).
    ``exclusive``: groups of the segmenter's phrases that are states of one kind of object (e.g. ripe / unripe /
    bruised apple): tracked as one object each, counted once under the phrase it scored highest
    (:class:`~sam3edge.runtime.tracking.TrackerConfig`).

    Raises FileExistsError when ``out_dir`` holds an earlier run's results (unless ``overwrite``) or another
    run is writing there."""
    from sam3edge.runtime.sources import open_source

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"--out {out_dir} exists and is not a directory")
    tracking = None  # arguments first: a refusal leaves no camera or video open
    if track:
        from sam3edge.runtime.tracking import ByteTracker, LineCounter, TrackCounter, TrackerConfig, ZoneCounter

        low = min(0.1, float(score_threshold))
        unknown = sorted({p for g in exclusive or () for p in g} - set(segmenter.concepts))
        if unknown:
            raise ValueError(f"exclusive phrases {unknown} are not among the concepts asked "
                             f"({', '.join(segmenter.concepts)}): a group names concepts of this run")
        config = TrackerConfig(high_score=float(score_threshold), low_score=low,
                               birth_score=min(1.0, float(score_threshold) + 0.1), exclusive=tuple(exclusive or ()))
        tracking = (ByteTracker(config), TrackCounter(),
                    [LineCounter(a, b, f"line {i + 1}") for i, (a, b) in enumerate(lines or [])],
                    [ZoneCounter(z, f"zone {i + 1}") for i, z in enumerate(zones or [])])
    elif lines or exclusive or zones:
        raise ValueError("line and zone counts and exclusive groups need tracking (track=True)")
    if video_out:
        try:
            import cv2  # noqa: F401 - checked before any work
        except ImportError as e:
            raise ImportError("an annotated video needs OpenCV: pip install 'sam3edge[video]'") from e
    if fps is not None and not (isinstance(fps, (int, float)) and 0 < fps <= 1000):
        raise ValueError(f"fps={fps!r} must be a number in (0, 1000]")
    frames = open_source(source, stride=stride, max_frames=max_frames, topic=topic)  # a bad source: a clear error
    old = [p for p in (out_dir / "predictions.json", out_dir / "predictions.jsonl", out_dir / "tracks.txt",
                       out_dir / "overlays", out_dir / "results_bag", out_dir / "annotated.mp4") if p.exists()]
    if old and not overwrite:
        frames.close()  # a camera or video opened above is released on a refusal too
        raise FileExistsError(f"--out {out_dir} holds results of an earlier run ({', '.join(p.name for p in old)}); "
                              "choose another --out, or pass --overwrite to replace them")
    out_dir.mkdir(parents=True, exist_ok=True)
    lock = out_dir / ".sam3edge-segment.lock"
    try:
        os.close(os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    except FileExistsError:
        frames.close()
        raise FileExistsError(f"another `sam3edge segment` is writing to {out_dir} (lock {lock}); wait for it or "
                              "choose another --out (delete the lock if no run is left)") from None
    try:
        return _segment_locked(segmenter, frames, out_dir, old, score_threshold, top_k, masks, overlays, progress,
                               tracking, bag_out, (fps or 0.0) if video_out else None)
    finally:
        lock.unlink(missing_ok=True)


def _segment_locked(segmenter, frames, out_dir: Path, old: list[Path], score_threshold, top_k, masks, overlays,
                    progress, tracking=None, bag_out: bool = False, video_fps: float | None = None) -> dict:
    import time

    from tqdm import tqdm

    from sam3edge.runtime.overlay import save_overlay
    from sam3edge.runtime.stream import current_rss_mb, iter_stream

    for path in old:  # the earlier run's results (overwrite was given): its files, nothing else
        if path.is_dir():
            for f in [*path.glob("*.png"), *path.glob("*.mcap"), *path.glob("metadata.yaml")]:
                f.unlink()
            if not any(path.iterdir()):
                path.rmdir()
        else:
            path.unlink()
    bag = None
    if bag_out:
        from sam3edge.runtime.rosbag import RosbagResultWriter

        bag = RosbagResultWriter(out_dir / "results_bag")
    header = getattr(frames, "header", None)  # a ROS 2 bag's own message stamps
    video = _AnnotatedVideo(out_dir / "annotated.mp4", video_fps) if video_fps is not None else None
    concepts = list(segmenter.concepts)
    cat_ids = {p: i + 1 for i, p in enumerate(concepts)}
    images, annotations, used = [], [], set()
    bar = tqdm(total=frames.length, desc="segment", unit="frame", disable=not progress)
    rss_start, start, ms_total = current_rss_mb(), time.perf_counter(), 0.0
    complete = False
    lines = open(out_dir / "predictions.jsonl", "x", encoding="utf-8")  # noqa: SIM115 - closed in finally
    mot = open(out_dir / "tracks.txt", "x", encoding="utf-8") if tracking else None  # noqa: SIM115
    floor = tracking[0].config.low_score if tracking else score_threshold  # the tracker's second pass needs these
    try:
        with frames:
            for r in iter_stream(segmenter, frames, score_threshold=floor, top_k=top_k, masks=masks):
                frame, inst = r.frame, r.instances
                if tracking:
                    tracker, counter, line_counters, zone_counters = tracking
                    inst = tracker.update(inst)
                    counter.update(inst)
                    for region in (*line_counters, *zone_counters):
                        region.update(inst)
                name = _safe_name(frame.name, frame.index)
                while name in used:  # two files with one stem in different sub-folders
                    name += "_"
                used.add(name)
                image_id = len(images) + 1
                h, w = inst.image_size
                coco = inst.to_coco(image_id, cat_ids)
                for k, a in enumerate(coco):
                    a["id"] = len(annotations) + 1 + k
                if overlays:  # first: a frame enters the results only once all its outputs are written
                    save_overlay(out_dir / "overlays" / f"{name}.png", frame.image, inst)
                image = {"id": image_id, "file_name": str(frame.name), "height": int(h), "width": int(w),
                         "frame_index": int(frame.index), "timestamp_s": frame.timestamp_s}
                record = {"image": image, "ms": round(r.ms, 2), "annotations": coco}
                mot_rows = ""
                if tracking:
                    record["unique"] = counter.counts
                    mot_rows = "".join(
                        f"{frame.index + 1},{tid},{x0:.2f},{y0:.2f},{x1 - x0:.2f},{y1 - y0:.2f},{score:.4f},-1,-1,-1\n"
                        for x0, y0, x1, y1, tid, score in zip(*inst.boxes.T.tolist(), inst.track_ids.tolist(),
                                                              inst.scores.tolist()))
                if video is not None:
                    video.write(frame, inst, counter.counts if tracking else None)
                if bag is not None:
                    if header is not None:
                        sec, nsec, frame_id = header(frame.index)
                    else:  # other sources: their timestamp (video), else the frame number as seconds
                        t = frame.timestamp_s if frame.timestamp_s is not None else float(frame.index)
                        sec, nsec, frame_id = int(t), int(round((t - int(t)) * 1e9)), "camera"
                    bag.write(inst, (sec, nsec), frame_id)
                # the commit: a Ctrl-C / SIGTERM waits until the frame is in the lines file, tracks.txt and the
                # COCO lists alike (a stop between two of these writes once left them disagreeing by a frame)
                with signals_deferred():
                    lines.write(json.dumps(record) + "\n")
                    lines.flush()  # in the OS's hands: survives the process being killed (no fsync: SD cards)
                    if mot_rows:
                        mot.write(mot_rows)
                        mot.flush()
                    annotations.extend(coco)
                    images.append(image)
                ms_total += r.ms
                bar.set_postfix_str(f"{r.ms:.0f} ms/frame", refresh=False)
                bar.update(1)
        complete = True
    finally:  # also on an error, Ctrl-C or SIGTERM: every finished frame is kept
        lines.close()
        if mot is not None:
            mot.close()
        if bag is not None:
            bag.close()
        if video is not None:
            video.close()
        bar.close()
        seconds = time.perf_counter() - start
        skipped = list(getattr(frames, "skipped", []))
        summary_tracking = None
        if tracking:
            tracker, counter, line_counters, zone_counters = tracking
            summary_tracking = {"tracker": tracker.name, "config": asdict(tracker.config),
                                "unique": counter.counts,
                                "lines": [dict(c.counts) for c in line_counters],
                                "zones": [dict(c.counts) for c in zone_counters],
                                "line_segments": [[*c.start.tolist(), *c.end.tolist()] for c in line_counters],
                                "zone_polygons": [c.points.tolist() for c in zone_counters],
                                "mot": str(out_dir / "tracks.txt")}
        coco = {"info": {"description": "sam3edge segment", "backend": segmenter.backend_name,
                         "score_threshold": score_threshold, "complete": complete, "skipped": skipped,
                         **({"tracking": summary_tracking} if summary_tracking else {})},
                "images": images, "categories": [{"id": i, "name": p} for p, i in cat_ids.items()],
                "annotations": annotations}
        json_path = atomic_write_text(out_dir / "predictions.json", json.dumps(coco))
    n = len(images)
    return {"frames": n, "skipped": skipped, "instances": len(annotations), "fps": n / seconds if seconds > 0 else 0.0,
            "ms_per_frame": ms_total / n if n else 0.0, "seconds": seconds, "predictions": str(json_path),
            "lines": str(out_dir / "predictions.jsonl"),
            "overlays": str(out_dir / "overlays") if overlays else None,
            "rss_start_mb": rss_start, "rss_end_mb": current_rss_mb(), "tracking": summary_tracking,
            "bag": str(out_dir / "results_bag") if bag is not None else None,
            "video": str(video.path) if video is not None and video.frames else None}


class _AnnotatedVideo:
    """mp4 (OpenCV, mp4v) of the drawn frames, opened at the first frame's size; later frames of another size are
    resized to it. fps 0: from the first two timestamps (the first frame waits for the second), else 15."""

    def __init__(self, path: Path, fps: float):
        self.path, self.fps, self.frames = path, fps, 0
        self._writer, self._size, self._held = None, None, None  # held: (timestamp, picture) of a waiting frame

    def write(self, frame, inst, counts: dict | None) -> None:
        from sam3edge.runtime.overlay import draw, draw_caption

        picture = draw(frame.image, inst)
        if counts:
            picture = draw_caption(picture, [f"{p}: {n}" for p, n in counts.items()])
        if self._writer is None:
            if not self.fps and self._held is None and frame.timestamp_s is not None:
                self._held = (frame.timestamp_s, picture)
                return
            if not self.fps:
                t0 = self._held[0] if self._held is not None else None
                dt = frame.timestamp_s - t0 if t0 is not None and frame.timestamp_s is not None else 0.0
                self.fps = 1.0 / dt if 0.001 < dt < 10 else 15.0
            self._open(picture)
        self._put(picture)

    def _open(self, picture) -> None:
        import cv2

        h, w = picture.shape[:2]
        self._size = (w, h)
        self._writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*"mp4v"), float(self.fps), (w, h))
        if not self._writer.isOpened():
            raise OSError(f"OpenCV cannot write {self.path} (mp4v)")
        if self._held is not None:
            held, self._held = self._held[1], None
            self._put(held)

    def _put(self, picture) -> None:
        import cv2

        if (picture.shape[1], picture.shape[0]) != self._size:
            picture = cv2.resize(picture, self._size, interpolation=cv2.INTER_AREA)
        self._writer.write(np.ascontiguousarray(picture[..., ::-1]))
        self.frames += 1

    def close(self) -> None:
        if self._writer is None and self._held is not None:  # one timestamped frame only
            self.fps = self.fps or 15.0
            self._open(self._held[1])
        if self._writer is not None:
            self._writer.release()
            self._writer = None
