"""Verification of an export against PyTorch, on real images, right after it is written.

For every verification image and every concept, the exported graphs and the PyTorch student (the
same wrappers, fp32) answer; the report holds per-output max absolute error and the end-task
agreement that matters to a user: of PyTorch's kept instances (score >= 0.5), the fraction the export
keeps too in the same query slot with mask IoU >= 0.5 (recall), their mean mask IoU, and the mean
absolute score difference over the top-K ranks. Max errors of boxes and masks are taken where both
sides put the same query (``indices``) at the same rank; an instance is matched by best IoU, so
near-equal scores ranked the other way round do not count as errors.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from sam3edge.export.graphs import DecoderGraph, ExemplarGraph, ImageEncoderGraph, TextEncoderGraph
from sam3edge.export.spec import THRESHOLDS
from sam3edge.runtime.names import DECODER_GRAPH, EXEMPLAR_GRAPH, IMAGE_GRAPH, TEXT_GRAPH


def with_exemplars(text: np.ndarray, mask: np.ndarray, exemplar_encoder: Callable | None, feat2, boxes, labels):
    """``text`` / ``mask`` with the exemplar tokens of ``boxes`` [P, K, 4] / ``labels`` [P, K] appended along the
    token axis (as the runtime does), or as they are without boxes. ``exemplar_encoder(feat2, boxes, labels)``."""
    if boxes is None:
        return text.astype(np.float32), mask.astype(bool)
    tokens, tokens_mask = exemplar_encoder(feat2, np.asarray(boxes, np.float32), np.asarray(labels, np.int64))
    return (np.concatenate([text, tokens], 1).astype(np.float32),
            np.concatenate([mask.astype(bool), np.asarray(tokens_mask, bool)], 1))


def torch_runner(student) -> Callable:
    """The PyTorch student through the export wrappers: ``run(image, text, mask, boxes=None, labels=None)``."""
    image_graph, decoder = ImageEncoderGraph(student).eval(), DecoderGraph(student).eval()
    exemplar_graph = ExemplarGraph(student).eval()

    @torch.no_grad()
    def exemplars(feat2, boxes, labels):
        return tuple(o.numpy() for o in exemplar_graph(torch.as_tensor(feat2), torch.from_numpy(boxes),
                                                        torch.from_numpy(labels)))

    @torch.no_grad()
    def run(image: np.ndarray, text: np.ndarray, mask: np.ndarray, boxes=None, labels=None):
        levels = image_graph(torch.from_numpy(np.array(image, np.uint8))[None])  # a copy: inputs may be read-only
        text, mask = with_exemplars(text, mask, exemplars, levels[2], boxes, labels)
        out = decoder(*levels, torch.from_numpy(text), torch.from_numpy(mask))
        return tuple(o.numpy() for o in out)

    run.exemplars = True

    if student.has_text_encoder:
        text_graph = TextEncoderGraph(student).eval()

        @torch.no_grad()
        def text(ids: np.ndarray, attn: np.ndarray):
            return tuple(o.numpy() for o in text_graph(torch.from_numpy(ids), torch.from_numpy(attn)))

        run.text = text  # the text encoder graph, where the student has one
    return run


def onnx_runner(paths: dict, threads: int = 0, exact: bool = False) -> Callable:
    """onnxruntime CPU runner of a bundle's graphs. ``exact``: graph optimisations off, so a QDQ graph runs as
    DequantizeLinear -> float op -> QuantizeLinear, the int8 arithmetic computed exactly in float (what every
    CPU whose integer kernels do not saturate computes) instead of on this CPU's integer kernels."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    if exact:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    image = ort.InferenceSession(str(paths[IMAGE_GRAPH]), opts, providers=["CPUExecutionProvider"])
    decoder = ort.InferenceSession(str(paths[DECODER_GRAPH]), opts, providers=["CPUExecutionProvider"])
    exemplar = (ort.InferenceSession(str(paths[EXEMPLAR_GRAPH]), opts, providers=["CPUExecutionProvider"])
                if EXEMPLAR_GRAPH in paths else None)

    def exemplars(feat2, boxes, labels):
        return tuple(exemplar.run(None, {"feat2": feat2, "boxes": boxes, "box_labels": labels}))

    def run(img: np.ndarray, text: np.ndarray, mask: np.ndarray, boxes=None, labels=None):
        f0, f1, f2 = image.run(None, {"image": np.ascontiguousarray(img)[None]})
        text, mask = with_exemplars(text, mask, exemplars, f2, boxes, labels)
        return tuple(decoder.run(None, {"feat0": f0, "feat1": f1, "feat2": f2, "text": text, "text_mask": mask}))

    run.exemplars = exemplar is not None

    if TEXT_GRAPH in paths:
        text = ort.InferenceSession(str(paths[TEXT_GRAPH]), opts, providers=["CPUExecutionProvider"])
        run.text = lambda ids, attn: tuple(text.run(None, {"input_ids": ids, "attention_mask": attn}))
    return run


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix of boolean masks a [n, h, w] and b [m, h, w]."""
    a, b = a.reshape(len(a), -1).astype(np.float32), b.reshape(len(b), -1).astype(np.float32)
    inter = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None] - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def compare(reference: Callable, candidate: Callable, images: list[np.ndarray], text: np.ndarray, mask: np.ndarray,
            score_threshold: float = 0.5, boxes: np.ndarray | None = None, labels: np.ndarray | None = None) -> dict:
    """Agreement of ``candidate`` with ``reference`` (both ``run(image, text, mask[, boxes, labels])``) over
    images x concepts; with ``boxes`` [P, K, 4] / ``labels`` [P, K], every concept also gets those exemplars."""
    if boxes is not None:
        run_ref, run_got = reference, candidate
        reference = lambda img, t, m: run_ref(img, t, m, boxes, labels)  # noqa: E731
        candidate = lambda img, t, m: run_got(img, t, m, boxes, labels)  # noqa: E731
    names = ("scores", "boxes", "presence", "masks")
    max_err = dict.fromkeys(names, 0.0)
    ious, found, total, score_err, same_slot = [], 0, 0, [], []
    for img in images:
        ref, got = reference(img, text, mask), candidate(img, text, mask)
        same = ref[4] == got[4]  # [P, K]: the same query in this rank on both sides
        same_slot.append(float(same.mean()))
        for n, r, g in zip(names, ref, got):
            d = np.abs(r.astype(np.float64) - g.astype(np.float64))
            if n in ("boxes", "masks"):
                d = d[same]
            if d.size:
                max_err[n] = max(max_err[n], float(d.max()))
        score_err.append(np.abs(ref[0] - got[0]).mean())
        for p in range(len(text)):
            keep_r = ref[0][p] >= score_threshold
            if not keep_r.any():
                continue
            m_r, m_g = ref[3][p][keep_r] > 0, got[3][p] > 0
            iou = _iou(m_r, m_g)  # [kept reference, all K candidate slots]
            kept_g = got[0][p] >= score_threshold
            best = (iou * kept_g[None]).max(1)  # best IoU with a candidate instance the export keeps
            ious.extend(iou.max(1).tolist())
            found += int((best >= 0.5).sum())
            total += int(keep_r.sum())
    return {"images": len(images), "concepts": int(len(text)), "reference_instances": total,
            "recall": found / total if total else 1.0, "mask_iou": float(np.mean(ious)) if ious else 1.0,
            "score_mae": float(np.mean(score_err)), "same_query_rate": float(np.mean(same_slot)),
            "max_abs_error": max_err}


def integer_kernel_check(paths: dict, images: list[np.ndarray], text: np.ndarray, mask: np.ndarray) -> dict:
    """How far this CPU's int8 kernels are from the int8 graph's exact arithmetic: the ONNX graphs on
    onnxruntime's integer kernels against the same graphs computed in float (``onnx_runner(exact=True)``).
    A saturating kernel shows here as a large error; rounding of the requantisation as a small one."""
    from sam3edge.runtime.cpu import cpu_info

    report = compare(onnx_runner(paths, exact=True), onnx_runner(paths), images, text, mask)
    return {"int8_kernels": cpu_info().int8_kernels, "reference": "the same graphs with onnxruntime's "
            "optimisations off (Q/DQ computed in float)", "max_abs_error": report["max_abs_error"],
            "score_mae": report["score_mae"], "recall": report["recall"], "mask_iou": report["mask_iou"]}


def compare_text(reference: Callable, candidate: Callable, phrases: list[str]) -> dict:
    """Agreement of two runners' text encoder graphs (``run.text``) on the concept phrases' token ids:
    max absolute error and the lowest cosine similarity of a phrase's token features (masked tokens only)."""
    from sam3edge.export.onnx import text_encoder_inputs

    ids, attn = text_encoder_inputs(phrases)
    (ref, ref_mask), (got, got_mask) = reference.text(ids, attn), candidate.text(ids, attn)
    keep = ref_mask.astype(bool)
    r, g = ref[keep].astype(np.float64), got[keep].astype(np.float64)
    cos = (r * g).sum(-1) / np.maximum(np.linalg.norm(r, axis=-1) * np.linalg.norm(g, axis=-1), 1e-12)
    return {"phrases": len(phrases), "max_abs_error": float(np.abs(r - g).max()), "min_cosine": float(cos.min()),
            "mask_equal": bool((ref_mask.astype(bool) == got_mask.astype(bool)).all())}


def passes(report: dict, precision: str) -> list[str]:
    """The thresholds ``report`` misses at ``precision`` (empty: it passes)."""
    t = THRESHOLDS[precision]
    failed = []
    for where, r in (("", report), ("with exemplar boxes: ", report.get(EXEMPLAR_GRAPH))):
        if r is None:
            continue
        if r["recall"] < t.recall:
            failed.append(f"{where}recall of PyTorch's instances {r['recall']:.3f} < {t.recall}")
        if r["mask_iou"] < t.mask_iou:
            failed.append(f"{where}mask IoU {r['mask_iou']:.3f} < {t.mask_iou}")
        if r["score_mae"] > t.score_mae:
            failed.append(f"{where}score MAE {r['score_mae']:.4f} > {t.score_mae}")
    text = report.get(TEXT_GRAPH)
    if text is not None:
        if text["min_cosine"] < t.text_cosine:
            failed.append(f"text encoder cosine similarity {text['min_cosine']:.4f} < {t.text_cosine}")
        if not text["mask_equal"]:
            failed.append("text encoder token mask differs from PyTorch's")
    return failed
