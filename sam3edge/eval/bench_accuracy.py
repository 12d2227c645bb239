"""The accuracy sections of ``sam3edge bench``: a bundle's cgF1 on an SA-Co dataset, and how close it comes to
(and how much faster it is than) the PyTorch teacher. The torch side of :mod:`sam3edge.runtime.bench`.

::

    report = run_bench(seg, images)                                    # torch-free part
    report["accuracy"] = accuracy_on_dataset(seg, "orchard/annotations.json")
    report["teacher"] = vs_teacher(seg, "orchard-toy", images[:4], threads=4)

Both run the bundle through the runtime ``Segmenter`` (the code a device runs, not the PyTorch student) and
score it with :func:`~sam3edge.eval.concept_metrics.evaluate`, so the numbers are SAM3's cgF1 definition.
Both leave the segmenter with the concepts it had.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from sam3edge.eval.agreement import summary
from sam3edge.eval.concept_metrics import evaluate
from sam3edge.runtime.instances import Instances, encode_rle

__all__ = ["accuracy_on_dataset", "agreement", "predict_with_segmenter", "vs_teacher"]


def _missing_phrases(segmenter, phrases: list[str]) -> list[str]:
    """The phrases a bundle without text encoder cannot segment (its concept cache lacks them)."""
    if segmenter.bundle.has_text_encoder:
        return []
    cache = segmenter.bundle.concept_cache()
    return [p for p in phrases if p not in cache]


def _use_phrases(segmenter, phrases: list[str], what: str) -> None:
    missing = _missing_phrases(segmenter, phrases)
    if missing:
        raise ValueError(
            f"{what} asks {len(missing)} phrase(s) that bundle {segmenter.bundle.path} does not know: "
            f"{', '.join(repr(p) for p in missing)}. It has no text encoder and segments only "
            f"{', '.join(repr(c) for c in segmenter.bundle.concepts)}. Export a bundle with these concepts "
            "(sam3edge export --concepts ...) or from a student with a text encoder, or evaluate only the "
            "pairs of the bundle's concepts (known_only=True)")
    segmenter.set_concepts(list(phrases))


def _restore(segmenter, previous: list[str]) -> None:
    if previous and segmenter.concepts != previous:
        segmenter.set_concepts(previous)


def _coco_results(inst: Instances, image_id, concept: int) -> list[dict]:
    """COCO results of ``inst``'s instances of concept index ``concept`` as ``predict_dataset`` writes them."""
    results = []
    for i in np.flatnonzero(inst.concept_ids == concept):
        x0, y0, x1, y1 = (float(v) for v in inst.boxes[i])
        results.append({"image_id": image_id, "category_id": 1, "segmentation": encode_rle(inst.masks[i]),
                        "bbox": [x0, y0, x1 - x0, y1 - y0], "score": float(inst.scores[i])})
    return results


def predict_with_segmenter(segmenter, dataset, min_score: float = 0.05) -> tuple[list[dict], list[float]]:
    """COCO results for every pair of ``dataset`` (a ``ConceptDataset``), as ``predict_dataset`` makes them
    (``image_id`` = pair id, ``category_id`` 1, RLE ``segmentation``, xywh ``bbox``, ``score``), and the
    milliseconds ``segment`` took per image.

    Each image is segmented once, for the phrases of its pairs (as ``predict_dataset`` asks the teacher): a
    dataset may ask thousands of phrases in all, a few per image. Every phrase is checked against the bundle
    first, so an unknown one fails before any image is read.
    """
    from sam3edge.data.images import load_image

    previous = segmenter.concepts
    missing = _missing_phrases(segmenter, dataset.phrases)
    if missing:
        _use_phrases(segmenter, dataset.phrases, f"dataset {dataset.source}")  # raises, listing them
    results, times = [], []
    try:
        for file_name in dataset.files:
            pairs = dataset.by_file[file_name]
            phrases = list(dict.fromkeys(p.phrase for p in pairs))
            if segmenter.concepts != phrases:
                segmenter.set_concepts(phrases)
            image = load_image(dataset.image_path(file_name))
            t0 = time.perf_counter()
            inst = segmenter.segment(image, score_threshold=min_score)
            times.append((time.perf_counter() - t0) * 1e3)
            for pair in pairs:
                results += _coco_results(inst, pair.id, phrases.index(pair.phrase))
    finally:
        _restore(segmenter, previous)
    return results, times


def accuracy_on_dataset(segmenter, data_json: str | Path, score_threshold: float = 0.5, known_only: bool = False,
                        save_predictions: str | Path | None = None) -> dict:
    """cgF1 (SAM3's), pmF1, IL_MCC and diagnostics of ``segmenter`` on the SA-Co annotation file ``data_json``.

    ``score_threshold``: predictions kept by the evaluation (SAM3: 0.5). ``known_only``: evaluate only the pairs
    whose phrase a cache-only bundle knows (the others are counted in ``skipped_pairs`` / ``skipped_phrases``)
    instead of refusing the dataset. ``save_predictions``: also write the COCO results there (to cross-check
    with SAM3's own evaluator). Returns ``{"data", "images", "pairs", "phrases", "skipped_pairs",
    "skipped_phrases", "score_threshold", cgf1, cgf1_50, cgf1_75, pmf1, il_mcc, precision, recall,
    mean_matched_iou, ..., "ms_per_image", "predict_seconds", "evaluate_seconds"}``.

    Raises FileNotFoundError for a missing file or image, ValueError for a malformed file or phrases a
    cache-only bundle does not know (listed; unless ``known_only``).
    """
    import json

    from sam3edge.data.coco import ConceptDataset

    path = Path(data_json)
    if not path.is_file():
        raise FileNotFoundError(f"--data {path}: no such annotation file; pass an SA-Co style COCO JSON (one "
                                "'images' entry per image x phrase), e.g. the annotations.json that "
                                "`sam3edge data orchard --out DIR` writes")
    gt = ConceptDataset.load(path)  # checks the file and that its images exist
    skipped = _missing_phrases(segmenter, gt.phrases) if known_only else []
    if skipped:
        data = json.loads(path.read_text(encoding="utf-8"))
        images = [im for im in data["images"] if im.get("text_input") not in skipped]
        if not images:
            raise ValueError(f"--data {path}: bundle {segmenter.bundle.path} knows none of its phrases "
                             f"({', '.join(gt.phrases)}); it segments {', '.join(segmenter.bundle.concepts)}")
        ids = {im["id"] for im in images}
        data = dict(data, images=images, annotations=[a for a in data.get("annotations", []) if a["image_id"] in ids])
        dataset, truth = ConceptDataset(data, gt.root, source=str(path)), data
    else:
        dataset, truth = gt, path
    t0 = time.perf_counter()
    predictions, times = predict_with_segmenter(segmenter, dataset, min_score=min(0.05, score_threshold))
    t1 = time.perf_counter()
    if save_predictions is not None:
        from sam3edge.atomic import atomic_write_text

        atomic_write_text(save_predictions, json.dumps(predictions))
    result = evaluate(truth, predictions, score_threshold=score_threshold)
    t2 = time.perf_counter()
    return {"data": str(path), "images": len(dataset.files), "phrases": len(dataset.phrases),
            "skipped_pairs": len(gt) - len(dataset), "skipped_phrases": skipped,
            "score_threshold": float(score_threshold), **summary(result),
            "ms_per_image": round(float(np.mean(times)), 3) if times else None,
            "predict_seconds": round(t1 - t0, 3), "evaluate_seconds": round(t2 - t1, 3)}


# ---- the teacher ----------------------------------------------------------------------------------
def agreement(teacher: list[Instances], student: list[Instances], phrases: list[str],
              score_threshold: float = 0.5) -> dict:
    """How well ``student`` reproduces ``teacher`` on the same images (one ``Instances`` each, concept ids
    indexing ``phrases``, masks at the original size).

    The teacher's instances with score >= ``score_threshold`` become ground truth (a phrase it finds nothing
    for, a hard negative) and the student's kept instances are matched to them one-to-one by mask IoU
    (Hungarian, as cgF1). ``recall``: teacher instances the student finds with IoU >= 0.5; ``precision``: student
    instances that are a teacher instance at IoU >= 0.5; ``mean_iou``: mean mask IoU of those matches;
    ``cgf1``: the student's cgF1 against the teacher. Exact ratios (no SAM3 smoothing); None where undefined
    (no teacher instance, no student instance, no match).
    """
    if len(teacher) != len(student):
        raise ValueError(f"agreement: {len(teacher)} teacher results but {len(student)} student results")
    images, annotations, predictions = [], [], []
    for i, (t, s) in enumerate(zip(teacher, student)):
        if t.image_size != s.image_size:
            raise ValueError(f"agreement: image {i} is {t.image_size} for the teacher, {s.image_size} for the student")
        h, w = t.image_size
        for p, phrase in enumerate(phrases):
            pair_id = len(images) + 1
            images.append({"id": pair_id, "file_name": f"frame_{i:06d}.png", "width": w, "height": h,
                           "text_input": phrase, "is_instance_exhaustive": True, "queried_category": None})
            for k in np.flatnonzero((t.concept_ids == p) & (t.scores >= score_threshold)):
                m = t.masks[k]
                if not m.any():
                    continue
                ys, xs = np.nonzero(m)
                annotations.append({"id": len(annotations) + 1, "image_id": pair_id, "category_id": 1,
                                    "segmentation": encode_rle(m), "area": int(m.sum()), "iscrowd": 0,
                                    "bbox": [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1),
                                             int(ys.max() - ys.min() + 1)]})
            predictions += _coco_results(s, pair_id, p)
    gt = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "teacher instance"}]}
    report = evaluate(gt, predictions, score_threshold=score_threshold, exact=True)
    return {
        "teacher_instances": report.gt_instances, "student_instances": report.predictions_kept,
        "matched": report.matched_instances,
        "recall": report.matched_instances / report.gt_instances if report.gt_instances else None,
        "precision": report.matched_instances / report.predictions_kept if report.predictions_kept else None,
        "mean_iou": report.mean_matched_iou, "cgf1": report.cgf1,
    }


def _teacher_instances(out, image_size: tuple[int, int], phrases: list[str], score_threshold: float) -> Instances:
    """The teacher's kept instances of one image (``ConceptOutputs`` of a batch of one) as runtime Instances."""
    from sam3edge.eval.predict import _numpy

    scores, boxes, masks, ids = [], [], [], []
    for p in range(len(phrases)):
        inst = out.instances(0, p, score_threshold=score_threshold)
        s = _numpy(inst["scores"]).astype(np.float32).reshape(-1)
        scores.append(s)
        boxes.append(_numpy(inst["boxes"]).astype(np.float32).reshape(-1, 4))
        masks.append(_numpy(inst["masks"]).astype(bool).reshape(-1, *image_size))
        ids.append(np.full(len(s), p, np.int64))
    ids_a = np.concatenate(ids)
    pres = {ph: float(v) for ph, v in zip(phrases, _numpy(out.presence)[0])}
    return Instances([phrases[p] for p in ids_a], ids_a, np.concatenate(scores), np.concatenate(boxes),
                     np.concatenate(masks), pres, image_size)


def _load_teacher(teacher):
    if not isinstance(teacher, (str, Path)):
        return teacher, getattr(teacher, "name_or_path", type(teacher).__name__)
    from sam3edge.models.bundled import resolve_model
    from sam3edge.models.teacher import Sam3Teacher

    source = resolve_model(str(teacher))
    if str(source).startswith((".", "/", "~")) and not Path(source).expanduser().is_dir():
        raise FileNotFoundError(f"--vs-teacher {teacher}: no such directory; pass a transformers Sam3Model "
                                "directory (save_pretrained layout), a hub id such as facebook/sam3, or orchard-toy")
    return Sam3Teacher.from_pretrained(source), str(teacher)


def vs_teacher(segmenter, teacher, images: list[np.ndarray], phrases: list[str] | None = None, threads: int = 0,
               score_threshold: float = 0.5, warmup: int = 1) -> dict:
    """The PyTorch teacher on the same ``images`` x ``phrases`` as the bundle: latency, speed-up, agreement.

    ``teacher``: a ``Sam3Teacher``, a directory, a hub id or ``orchard-toy``. ``phrases``: default the
    segmenter's concepts. ``threads``: torch CPU threads for the teacher (0: leave torch's setting); pass the
    bundle's ``--threads`` so both run on the same cores. Each image is timed once per side after ``warmup``
    untimed runs, end to end: pixels in, instances with masks at the original size out (teacher: forward +
    ``instances`` for every phrase; student: ``segment``). ``speedup`` = teacher p50 / student p50.

    Returns ``{"teacher", "images", "phrases", "threads", "teacher_p50_ms", "teacher_mean_ms", "student_p50_ms",
    "speedup", "score_threshold"}`` plus :func:`agreement`'s keys (recall, precision, mean_iou, ...).
    """
    import torch

    from sam3edge.runtime.image import as_rgb_uint8

    images = [as_rgb_uint8(im) for im in images]
    if not images:
        raise ValueError("vs_teacher: no images")
    phrases = list(phrases or segmenter.concepts)
    model, name = _load_teacher(teacher)
    previous_threads = torch.get_num_threads()
    previous = segmenter.concepts
    _use_phrases(segmenter, phrases, "the teacher comparison")
    try:
        if threads:
            torch.set_num_threads(int(threads))
        t_ms, teacher_out = _time_each(images, warmup, lambda im: _teacher_instances(
            model([im], phrases), im.shape[:2], phrases, score_threshold))
        s_ms, student_out = _time_each(images, warmup,
                                       lambda im: segmenter.segment(im, score_threshold=score_threshold))
    finally:
        torch.set_num_threads(previous_threads)
        _restore(segmenter, previous)
    t_p50, s_p50 = float(np.median(t_ms)), float(np.median(s_ms))
    return {"teacher": name, "images": len(images), "phrases": phrases, "threads": int(threads) or previous_threads,
            "teacher_p50_ms": round(t_p50, 3), "teacher_mean_ms": round(float(np.mean(t_ms)), 3),
            "student_p50_ms": round(s_p50, 3), "speedup": round(t_p50 / s_p50, 3) if s_p50 > 0 else None,
            "score_threshold": float(score_threshold),
            **agreement(teacher_out, student_out, phrases, score_threshold)}


def _time_each(images: list, warmup: int, run) -> tuple[list[float], list]:
    for i in range(warmup):
        run(images[i % len(images)])
    times, outs = [], []
    for im in images:
        t0 = time.perf_counter()
        outs.append(run(im))
        times.append((time.perf_counter() - t0) * 1e3)
    return times, outs
