"""The TensorRT and Core ML runtime backends against onnxruntime on the same student: run only where the
hardware exists (`pytest -m tensorrt` on an NVIDIA GPU with TensorRT, `pytest -m macos` on a Mac)."""

from __future__ import annotations

import pytest
from test_runtime_segmenter import THRESHOLD, assert_same_instances, orchard_images


def _compare(reference_bundle, bundle, backend: str, score_atol: float, min_iou: float) -> None:
    from sam3edge.runtime.segmenter import Segmenter

    ref = Segmenter.load(reference_bundle, backend="onnxruntime", device="cpu", threads=2)
    seg = Segmenter.load(bundle, backend=backend)
    assert seg.backend_name.startswith(f"{backend}:") or seg.backend_name == backend
    for image in orchard_images():
        got, want = seg.segment(image, score_threshold=THRESHOLD), ref.segment(image, score_threshold=THRESHOLD)
        assert len(want) > 0
        assert_same_instances(got, want, score_atol=score_atol, box_atol=2.0, min_iou=min_iou)
        h, w = image.shape[:2]  # with a positive and a negative exemplar box: the exemplar graph of each backend
        boxes = [[w * 0.1, h * 0.2, w * 0.4, h * 0.5], ([w * 0.5, h * 0.5, w * 0.9, h * 0.8], False)]
        got = seg.segment(image, score_threshold=THRESHOLD, exemplars=boxes)
        want = ref.segment(image, score_threshold=THRESHOLD, exemplars=boxes)
        assert_same_instances(got, want, score_atol=score_atol, box_atol=2.0, min_iou=min_iou)


@pytest.mark.tensorrt
def test_tensorrt_engines_segment_like_onnxruntime(toy_student_dir, scenes, toy_bundles, tmp_path):
    from sam3edge.export.bundle import export_bundle

    out = tmp_path / "trt.sam3edge"  # where TensorRT runs, the export builds and verifies the engines itself
    export_bundle(toy_student_dir, out, "tensorrt", "fp16", calib=scenes, n_verify=2, progress=False)
    _compare(toy_bundles["onnx"], out, "tensorrt", score_atol=5e-3, min_iou=0.9)


@pytest.mark.macos
def test_coreml_packages_segment_like_onnxruntime(toy_student_dir, scenes, toy_bundles, tmp_path):
    from sam3edge.export.bundle import export_bundle

    out = tmp_path / "coreml.sam3edge"
    m = export_bundle(toy_student_dir, out, "coreml", "fp16", calib=scenes, n_verify=2, progress=False)
    assert m["verification"]["ran"] and m["verification"]["failed"] == []  # verified against PyTorch on the Mac
    _compare(toy_bundles["onnx"], out, "coreml", score_atol=5e-3, min_iou=0.9)
