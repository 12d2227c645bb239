"""The torch-free Segmenter: the same instances as the PyTorch student on every backend, concepts from the cache
or the text encoder, clear errors for bad input, and no torch anywhere in the runtime."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import toy_encoder_student

ORCHARD_PHRASES = ["ripe apple", "unripe apple", "leaf"]  # as the toy_student_dir fixture (conftest.py)
THRESHOLD = 0.1  # the toy student's encoder is random: its best scores are ~0.16


@pytest.fixture(scope="module")
def bundles(toy_bundles):
    return toy_bundles


@pytest.fixture(scope="module")
def student(toy_student_dir):
    from sam3edge.models.student_io import load_student

    return load_student(toy_student_dir).eval()


@pytest.fixture(scope="module")
def encoder_bundle(scenes, tmp_path_factory):
    """A bundle of a toy student with its own text encoder (its concept cache made by that encoder)."""

    from sam3edge.export.bundle import export_bundle
    from sam3edge.models.student_io import save_student

    root = tmp_path_factory.mktemp("encoder-bundle")
    student = toy_encoder_student()
    export_bundle(save_student(student, root / "s"), root / "t.sam3edge", "onnx", "fp32", calib=scenes, n_verify=2,
                  progress=False)
    return root / "t.sam3edge"


def orchard_images(n: int = 3) -> list[np.ndarray]:
    """Orchard scenes at 200 x 300 (H x W): not square, not the student's 128 px."""
    from sam3edge.data.orchard import render_scene, scene_rng

    return [render_scene(scene_rng(21, i), 300).image[50:250] for i in range(n)]


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def assert_same_instances(got, want, score_atol=1e-4, box_atol=0.5, min_iou=0.99):
    assert got.image_size == want.image_size
    assert got.phrases == want.phrases and (got.concept_ids == want.concept_ids).all()
    np.testing.assert_allclose(got.scores, want.scores, atol=score_atol)
    np.testing.assert_allclose(got.boxes, want.boxes, atol=box_atol)
    assert got.masks.shape == want.masks.shape
    for m, r in zip(got.masks, want.masks):
        assert mask_iou(m, r) >= min_iou
    for phrase, p in want.presence.items():
        assert abs(got.presence[phrase] - p) <= 1e-4


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_segmenter_gives_the_pytorch_students_instances_at_the_original_resolution(bundles, student, backend):
    from sam3edge.export.verify import torch_runner
    from sam3edge.runtime.segmenter import RawOutputs, Segmenter

    seg = Segmenter.load(bundles["onnx" if backend == "onnxruntime" else "openvino"], backend=backend, threads=2)
    assert seg.backend_name.startswith(f"{backend}:")
    assert seg.concepts == ORCHARD_PHRASES  # the bundle's own concepts until set_concepts
    reference = torch_runner(student)
    text, mask = seg.bundle.concept_cache().lookup(ORCHARD_PHRASES)
    for image in orchard_images():
        inst = seg.segment(image, score_threshold=THRESHOLD)
        assert len(inst) > 0 and inst.image_size == (200, 300) and inst.masks.shape[1:] == (200, 300)
        assert (np.diff(inst.scores) <= 0).all()  # best first
        assert (inst.boxes[:, [0, 2]] <= 300).all() and (inst.boxes[:, [1, 3]] <= 200).all()
        prepared = seg.prepare(image)
        ref = RawOutputs(*reference(prepared.frame[0].copy(), text, mask), phrases=tuple(ORCHARD_PHRASES))
        assert_same_instances(inst, seg.postprocess(ref, prepared, score_threshold=THRESHOLD))


def test_segmenter_matches_the_students_own_pytorch_inference(bundles, student):
    """The student's evaluation path (``student(images, phrases).instances``: all queries, masks bilinear on
    probabilities): same kept instances, scores, boxes and masks as the exported bundle's top-K."""
    from sam3edge.runtime.segmenter import Segmenter

    seg = Segmenter.load(bundles["onnx"], threads=2)
    k = seg.bundle.manifest["export_spec"]["top_k"]
    for image in orchard_images():
        inst = seg.segment(image, score_threshold=THRESHOLD)
        out = student([image], ORCHARD_PHRASES)
        for p, phrase in enumerate(ORCHARD_PHRASES):
            want = out.instances(0, p, score_threshold=THRESHOLD)
            order = np.argsort(-want["scores"].numpy(), kind="stable")[:k]  # the graph keeps the top-K queries
            got = inst.select(inst.concept_ids == p)
            assert len(got) == len(order), phrase
            np.testing.assert_allclose(got.scores, want["scores"].numpy()[order], atol=1e-4)
            np.testing.assert_allclose(got.boxes, want["boxes"].numpy()[order], atol=0.5)
            for m, r in zip(got.masks, want["masks"].numpy()[order]):
                assert mask_iou(m, r) >= 0.99


def test_stages_compose_to_segment_and_report_timings(bundles):
    from sam3edge.runtime.segmenter import Segmenter

    seg = Segmenter.load(bundles["onnx"], backend="onnxruntime", device="cpu", threads=2)
    image = orchard_images(1)[0]
    prepared = seg.prepare(image)
    assert prepared.frame.shape == (1, 128, 128, 3) and prepared.frame.dtype == np.uint8
    assert prepared.image_size == (200, 300)
    raw = seg.infer(prepared)
    assert raw.scores.shape == (3, 10) and raw.masks.shape == (3, 10, 32, 32) and raw.indices.dtype == np.int64
    staged = seg.postprocess(raw, prepared, score_threshold=THRESHOLD, top_k=4, masks=False)
    whole = seg.segment(image, score_threshold=THRESHOLD, top_k=4, masks=False)
    assert len(whole) == 4 and whole.masks is None
    np.testing.assert_array_equal(staged.scores, whole.scores)
    assert set(seg.timings) == {"preprocess", "image_encoder", "text", "decoder", "postprocess"}
    assert seg.timings["text"] == 0.0 and seg.timings["decoder"] > 0 and seg.timings["image_encoder"] > 0
    letterbox = Segmenter.load(seg.bundle, resize="letterbox", threads=2).segment(image, score_threshold=THRESHOLD)
    assert letterbox.image_size == (200, 300) and letterbox.masks.shape == (len(letterbox), 200, 300)


def test_cached_phrases_and_the_text_encoder_agree(encoder_bundle):
    from sam3edge.runtime.segmenter import Segmenter

    seg = Segmenter.load(encoder_bundle, threads=2)
    cache = seg.bundle.concept_cache()
    feats, mask = seg.encode_text(ORCHARD_PHRASES)
    want_f, want_m = cache.lookup(ORCHARD_PHRASES)
    assert (mask == want_m).all()
    assert np.abs(feats[mask] - want_f[want_m]).max() <= 1e-4

    image = orchard_images(1)[0]
    cached = seg.segment(image, score_threshold=0.0, masks=False)
    seg.set_concepts(ORCHARD_PHRASES, use_cache=False)  # the same phrases through the text encoder graph
    assert seg.timings["text"] == 0.0
    encoded = seg.segment(image, score_threshold=0.0, masks=False)
    assert seg.timings["text"] > 0  # reported by the first frame after the concepts changed
    assert encoded.phrases == cached.phrases
    np.testing.assert_allclose(encoded.scores, cached.scores, atol=1e-4)

    seg.set_concepts(["Ripe  Apple", "a pear on a branch"])  # a cached phrase (other case / spacing) and a new one
    inst = seg.segment(image, score_threshold=0.0, masks=False)
    assert seg.concepts == ["Ripe  Apple", "a pear on a branch"]
    assert set(inst.presence) == {"Ripe  Apple", "a pear on a branch"} and set(inst.concept_ids) <= {0, 1}
    np.testing.assert_allclose(inst.select(inst.concept_ids == 0).scores,
                               cached.select(cached.concept_ids == 0).scores, atol=1e-4)


@pytest.mark.parametrize("image, match", [
    (np.zeros((64, 64, 3), np.int64), "dtype int64"),
    (np.zeros((3, 64, 80), np.uint8), "CHW"),
    (np.zeros((2, 64, 64, 3), np.uint8), "batch of 2"),
    (np.zeros((0, 64, 3), np.uint8), "empty"),
])
def test_bad_images_are_refused_with_a_clear_error(bundles, image, match):
    from sam3edge.runtime.segmenter import Segmenter

    seg = Segmenter.load(bundles["onnx"], threads=2)
    with pytest.raises(ValueError, match=match):
        seg.segment(image)


def test_bad_concepts_are_refused_and_leave_the_previous_ones(bundles):
    from sam3edge.runtime.segmenter import Segmenter

    seg = Segmenter.load(bundles["onnx"], threads=2)
    seg.set_concepts(["leaf"])
    for bad, match in (([], "no concepts"), (["ripe apple", "  "], "empty phrase"), (["x" * 10_000], "10000 char"),
                       ("leaf", "list of phrases"), (["leaf", "LEAF"], "duplicate"), ([3], "expected a phrase")):
        with pytest.raises(ValueError, match=match):
            seg.set_concepts(bad)
    with pytest.raises(ValueError, match="no text encoder") as e:
        seg.set_concepts(["leaf", "purple banana"])
    assert all(repr(p) in str(e.value) for p in ORCHARD_PHRASES)  # the message lists what the bundle knows
    assert seg.concepts == ["leaf"]
    assert list(seg.segment(orchard_images(1)[0], score_threshold=0.0).presence) == ["leaf"]
    for kwargs, match in (({"score_threshold": 2}, "score_threshold"), ({"top_k": -1}, "top_k")):
        with pytest.raises(ValueError, match=match):
            seg.segment(orchard_images(1)[0], **kwargs)


def test_backend_choice_errors_name_the_choices(bundles):
    from sam3edge.runtime.backends import BackendUnavailable
    from sam3edge.runtime.segmenter import Segmenter

    with pytest.raises(ValueError, match="auto, onnxruntime, openvino, tensorrt, coreml"):
        Segmenter.load(bundles["onnx"], backend="pytorch")
    with pytest.raises(ValueError, match="openvino bundle; run it with backend openvino"):
        Segmenter.load(bundles["openvino"], backend="onnxruntime")
    with pytest.raises(ValueError, match="resize modes: stretch, letterbox"):
        Segmenter.load(bundles["onnx"], resize="crop")
    with pytest.raises(BackendUnavailable, match="needs CUDAExecutionProvider"):
        Segmenter.load(bundles["onnx"], device="cuda")
    with pytest.raises(BackendUnavailable, match="OpenVINO device 'NPU7' is not on this host"):
        Segmenter.load(bundles["openvino"], device="NPU7")
    if sys.platform != "darwin":
        with pytest.raises(ValueError, match="cannot run bundle .* it is a onnx bundle"):
            Segmenter.load(bundles["onnx"], backend="coreml")


@pytest.mark.skipif(sys.platform == "darwin", reason="Core ML runs on macOS")
def test_coreml_off_macos_says_it_needs_macos(bundles, tmp_path):
    """A Core ML bundle (its manifest: the graphs are not converted here, only their loading is refused)."""
    import shutil

    from sam3edge.runtime.backends import BackendUnavailable
    from sam3edge.runtime.bundle import Bundle
    from sam3edge.runtime.segmenter import Segmenter

    path = tmp_path / "coreml.sam3edge"
    shutil.copytree(bundles["onnx"], path)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["target"] = "coreml"
    (path / "manifest.json").write_text(json.dumps(manifest))
    for backend in ("auto", "coreml"):
        with pytest.raises(BackendUnavailable, match="Core ML runs on macOS and iOS only"):
            Segmenter.load(Bundle.open(path), backend=backend)


def test_the_runtime_segments_without_torch(bundles, tmp_path):
    """A subprocess where torch, transformers, timm, onnx, pycocotools and scipy cannot be imported."""
    image = orchard_images(1)[0]
    np.save(tmp_path / "image.npy", image)
    script = textwrap.dedent(f"""
        import sys
        for name in ("torch", "transformers", "timm", "onnx", "pycocotools", "scipy"):
            sys.modules[name] = None  # any import of them raises ImportError
        import numpy as np
        import sam3edge.runtime, sam3edge.runtime.bundle, sam3edge.runtime.segmenter
        from sam3edge.runtime.segmenter import Segmenter
        for backend in ("onnxruntime", "openvino"):
            path = sys.argv[1] if backend == "onnxruntime" else sys.argv[2]
            seg = Segmenter.load(path, backend=backend, threads=2)
            inst = seg.segment(np.load(sys.argv[3]), score_threshold={THRESHOLD})
            print(backend, len(inst), inst.masks.shape)
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers", "timm", "onnx")
                     and sys.modules[m] is not None))
    """)
    env = dict(os.environ, OMP_NUM_THREADS="2")
    r = subprocess.run([sys.executable, "-c", script, str(bundles["onnx"]), str(bundles["openvino"]),
                        str(tmp_path / "image.npy")], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[0].startswith("onnxruntime ") and lines[1].startswith("openvino ")
    assert int(lines[0].split()[1]) > 0 and lines[0].endswith(", 200, 300)")
    assert lines[-1] == "[]"


def test_a_tensorrt_bundle_runs_on_onnxruntime_where_tensorrt_is_missing(bundles, tmp_path):
    """auto: TensorRT engines where TensorRT runs, else onnxruntime on the bundle's ONNX graphs (here: no TensorRT)."""
    import shutil

    from sam3edge.runtime.backends import BackendUnavailable, choose_backend
    from sam3edge.runtime.backends.tensorrt_backend import TensorRtBackend
    from sam3edge.runtime.bundle import Bundle
    from sam3edge.runtime.segmenter import Segmenter

    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is installed here: the tensorrt-marked tests cover its engines")
    except ImportError:
        pass
    path = tmp_path / "trt.sam3edge"
    shutil.copytree(bundles["onnx"], path)
    edit = json.loads((path / "manifest.json").read_text())
    edit.update(target="tensorrt", precision="fp16")  # the same ONNX graphs as a TensorRT bundle carries for fp16
    (path / "manifest.json").write_text(json.dumps(edit))
    bundle = Bundle.open(path)
    ok, why = TensorRtBackend.available(bundle)
    assert not ok and "pip install tensorrt" in why
    assert choose_backend(bundle) == "onnxruntime"
    seg = Segmenter.load(bundle, threads=2)
    assert seg.backend_name == "onnxruntime:CPUExecutionProvider"
    assert len(seg.segment(orchard_images(1)[0], score_threshold=THRESHOLD)) > 0
    with pytest.raises(BackendUnavailable, match="needs TensorRT"):
        Segmenter.load(bundle, backend="tensorrt")


def test_an_int8_bundle_verified_on_other_int8_kernels_warns_at_load_and_in_bench(bundles, tmp_path):
    """A full-range int8 bundle verified on a VNNI CPU, loaded on a CPU whose pair sums saturate, warns that its
    results can be wrong (and bench's report carries the warning); on the CPU it was verified on, it is silent."""
    import shutil
    import warnings

    from sam3edge.runtime import Segmenter
    from sam3edge.runtime.bench import bench_environment
    from sam3edge.runtime.cpu import cpu_info
    from sam3edge.runtime.int8_scheme import Int8KernelWarning

    here = cpu_info()
    other = "x86-vnni" if here.saturating else "x86-avx2"
    path = tmp_path / "int8.sam3edge"
    shutil.copytree(bundles["onnx"], path)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["precision"] = "int8"
    manifest["quantization"] = {"scheme": "u8s8-w8", "activations": "uint8", "weights": "int8", "max_pair_sum": 64770,
                                "saturation_free": False}
    manifest["verification"]["host"] = {"machine": "x86_64", "isa": [], "int8_kernels": other}
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.warns(Int8KernelWarning, match=f"verified on a CPU with {other} int8 kernels") as caught:
        seg = Segmenter.load(path, backend="onnxruntime")
    text = str(caught[0].message)
    assert ("results can be wrong" if here.saturating else "differ from the verified ones") in text
    assert seg.int8_warning == text and bench_environment(seg)["bundle"]["int8_warning"] == text
    manifest["verification"]["host"]["int8_kernels"] = here.int8_kernels
    (path / "manifest.json").write_text(json.dumps(manifest))
    with warnings.catch_warnings():
        warnings.simplefilter("error", Int8KernelWarning)
        assert Segmenter.load(path, backend="onnxruntime").int8_warning is None


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_one_segmenter_called_from_many_threads_gives_each_call_its_own_images_result(bundles, backend):
    """One OpenVINO Segmenter from several threads once returned another image's results (23 of 32 calls): its
    compiled models shared one infer request. Each threaded call must equal the same image's sequential call."""
    from concurrent.futures import ThreadPoolExecutor

    from sam3edge.data.orchard import render_scene, scene_rng
    from sam3edge.runtime.segmenter import Segmenter

    seg = Segmenter.load(bundles["onnx" if backend == "onnxruntime" else "openvino"], backend=backend, threads=1)
    images = [render_scene(scene_rng(33, i), 160).image for i in range(8)]
    want = [seg.infer(seg.prepare(im)) for im in images]
    assert len({float(w.scores.sum()) for w in want}) == len(images)  # the images give distinguishable outputs
    order = [i % len(images) for i in range(32)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        got = list(pool.map(lambda i: seg.infer(seg.prepare(images[i])), order))
    for i, raw in zip(order, got):
        np.testing.assert_allclose(raw.scores, want[i].scores, atol=1e-5)
        np.testing.assert_allclose(raw.masks, want[i].masks, atol=1e-4)


def test_a_backend_without_concurrent_calls_is_called_one_call_at_a_time(bundles):
    """The contract for backends whose execution context is shared (TensorRT, Core ML): the Segmenter serialises.
    Checked on the real onnxruntime backend told it may not run calls concurrently, counting overlapping calls."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    from sam3edge.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend
    from sam3edge.runtime.bundle import Bundle
    from sam3edge.runtime.segmenter import Segmenter

    class OneAtATime(OnnxRuntimeBackend):
        concurrent_calls = False
        active, most = 0, 0
        lock = threading.Lock()

        def image(self, frame):
            with self.lock:
                type(self).active += 1
                type(self).most = max(self.most, self.active)
            time.sleep(0.01)  # widen the window in which a second call would overlap
            try:
                return super().image(frame)
            finally:
                with self.lock:
                    type(self).active -= 1

    bundle = Bundle.open(bundles["onnx"])
    seg = Segmenter(bundle, OneAtATime(bundle, threads=1), "stretch")
    seg.set_concepts(ORCHARD_PHRASES)
    images = orchard_images(4)
    want = [seg.infer(seg.prepare(im)).scores for im in images]
    with ThreadPoolExecutor(max_workers=4) as pool:
        got = list(pool.map(lambda i: seg.infer(seg.prepare(images[i % 4])).scores, range(12)))
    assert OneAtATime.most == 1
    for i, scores in enumerate(got):
        np.testing.assert_allclose(scores, want[i % 4], atol=1e-5)
