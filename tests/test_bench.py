"""``sam3edge bench``'s pieces: latency percentiles and stages that add up, throughput, the report files, accuracy on
a dataset equal to evaluating the same predictions, the comparison with the PyTorch teacher, and clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from sam3edge.runtime.bench import (
    format_summary,
    orchard_frames,
    report_stem,
    run_bench,
    run_latency,
    run_throughput,
    write_report,
)


@pytest.fixture(scope="module")
def bundle(toy_bundles):
    return toy_bundles["onnx"]  # the session's fp32 ONNX bundle of the 128 px toy student (conftest.py)


@pytest.fixture(scope="module")
def segmenter(bundle):
    from sam3edge.runtime.segmenter import Segmenter

    return Segmenter.load(bundle, backend="onnxruntime", threads=2)


@pytest.fixture(scope="module")
def images():
    return orchard_frames(2, 120, 160, seed=5)  # small: the bench's images are 480 x 640


@pytest.fixture(scope="module")
def report(segmenter, images):
    return run_bench(segmenter, images, runs=3, warmup=1, frames=10, threads=2, images_source="orchard",
                     command="sam3edge bench toy-onnx.sam3edge --runs 3")


def test_the_bench_runs_without_torch_on_orchard_frames(bundle, tmp_path):
    """A subprocess where torch, transformers, timm, pycocotools and scipy cannot be imported: the orchard frames
    (numpy only) and the whole torch-free report, written to disk."""
    script = textwrap.dedent("""
        import sys
        for name in ("torch", "transformers", "timm", "pycocotools", "scipy"):
            sys.modules[name] = None
        from sam3edge.runtime.bench import orchard_frames, run_bench, write_report
        from sam3edge.runtime.segmenter import Segmenter
        frames = orchard_frames(2)
        print(frames[0].shape, frames[0].dtype, len(frames))
        report = run_bench(Segmenter.load(sys.argv[1], threads=1), frames, runs=2, warmup=1, frames=4)
        print(sorted(p.suffix for p in write_report(report, sys.argv[2]).values()))
    """)
    r = subprocess.run([sys.executable, "-c", script, str(bundle), str(tmp_path)], capture_output=True, text=True,
                       timeout=120, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines() == ["(480, 640, 3) uint8 2", "['.json', '.md', '.png']"]


def test_latency_percentiles_are_ordered_and_stages_add_up_to_end_to_end(segmenter, images):
    lat = run_latency(segmenter, images, runs=3, warmup=1)
    for row in [*lat["stages"].values(), lat["e2e"], lat["graph"]]:
        assert 0 <= row["p50"] <= row["p90"] <= row["p99"]
    assert lat["e2e"]["p50"] > 0 and lat["stages"]["image_encoder"]["p50"] > 0
    staged = sum(row["mean"] for row in lat["stages"].values())
    assert staged <= lat["e2e"]["mean"] * 1.01 + 0.05
    assert staged >= 0.8 * lat["e2e"]["mean"]  # the stage timers cover nearly all of segment()
    assert lat["overhead"] >= 0 and lat["overhead_ms"] >= 0
    graph = sum(lat["stages"][s]["mean"] for s in ("image_encoder", "text", "decoder"))
    assert lat["overhead"] == pytest.approx((lat["e2e"]["mean"] - graph) / graph, abs=1e-3)
    assert lat["instances_per_frame"] >= 0 and lat["runs"] == 3 and lat["text_encoder_ms"] is None


def test_latency_rejects_bad_arguments(segmenter, images):
    with pytest.raises(ValueError, match="runs"):
        run_latency(segmenter, images, runs=0)
    with pytest.raises(ValueError, match="non-empty list of images"):
        run_latency(segmenter, [], runs=1)


def test_throughput_counts_frames_in_both_modes(segmenter, images):
    thr = run_throughput(segmenter, images, frames=10, warmup=1)
    assert thr["sequential"]["frames"] == thr["pipelined"]["frames"] == 10
    assert thr["sequential_fps"] > 0 and thr["pipelined_fps"] > 0
    if thr["rss_peak_mb"] is not None:
        assert thr["rss_peak_mb"] >= max(thr["rss_start_mb"], thr["rss_end_mb"]) - 1e-6


def test_report_has_the_facts_of_what_ran_where(report, segmenter):
    assert report["bundle"]["target"] == "onnx" and report["bundle"]["precision"] == "fp32"
    assert report["bundle"]["input_size"] == 128 and report["bundle"]["concepts"] == len(segmenter.concepts)
    assert report["bundle"]["size_mb"] > 0
    assert report["backend"] == {"name": "onnxruntime", "device": "cpu", "full_name": segmenter.backend_name,
                                 "threads": 2}
    assert report["host"]["cores"] >= 1 and report["host"]["onnxruntime"]
    assert report["memory"]["peak_rss_mb"] > 0
    assert report["accuracy"] is None and report["teacher"] is None


def test_write_report_writes_json_markdown_and_chart_named_by_host_device_backend_precision(report, tmp_path):
    from PIL import Image

    paths = write_report(report, tmp_path / "results")
    stem = report_stem(report)
    assert stem.startswith("bench_") and stem.endswith("_cpu_onnxruntime_fp32")
    assert all(c.isascii() and (c.islower() or c.isdigit() or c in "_-") for c in stem)
    assert {k: p.name for k, p in paths.items()} == {"json": f"{stem}.json", "markdown": f"{stem}.md",
                                                   "chart": f"{stem}.png"}
    assert json.loads(paths["json"].read_text()) == report
    md = paths["markdown"].read_text()
    assert "| **end to end** |" in md and "| image_encoder |" in md and report["command"] in md
    with Image.open(paths["chart"]) as im:
        assert im.format == "PNG" and im.width == 1000 and 80 <= im.height <= 400
    assert not [p for p in paths["json"].parent.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_report_stem_is_sanitised():
    report = {"host": {"label": "Intel Xeon Platinum 8375C / x86_64"}, "backend": {"device": "CUDA:0",
                                                                                 "name": "onnx_runtime"},
              "bundle": {"precision": "FP16"}}
    assert report_stem(report) == "bench_intel-xeon-platinum-8375c-x86-64_cuda-0_onnx-runtime_fp16"


def test_write_report_adds_the_teacher_bar_and_summary_lines(report, tmp_path):
    from PIL import Image

    full = dict(report, teacher={"teacher": "orchard-toy", "teacher_p50_ms": 80.0, "student_p50_ms": 4.0,
                                 "speedup": 20.0, "recall": 0.5, "precision": None, "mean_iou": 0.8,
                                 "teacher_instances": 4},
                accuracy={"data": "/x/annotations.json", "pairs": 12, "cgf1": 0.25, "pmf1": 0.5, "il_mcc": 0.5,
                          "ms_per_image": 3.0, "cgf1_75": float("nan")})
    paths = write_report(full, tmp_path)
    assert json.loads(paths["json"].read_text())["accuracy"]["cgf1_75"] is None  # JSON has no NaN
    with Image.open(paths["chart"]) as im, Image.open(write_report(report, tmp_path / "b")["chart"]) as one:
        assert im.height > one.height  # a second bar
    text = format_summary(full)
    assert "speed-up 20.0x" in text and "cgF1 0.2500" in text
    assert "agreement with teacher" in paths["markdown"].read_text()


def test_accuracy_on_dataset_equals_evaluating_the_same_predictions(segmenter, orchard_small, tmp_path):
    from sam3edge.data.coco import ConceptDataset
    from sam3edge.eval import evaluate
    from sam3edge.eval.bench_accuracy import accuracy_on_dataset, predict_with_segmenter

    before = segmenter.concepts
    # The toy student's encoder is random (best scores ~0.16): a low threshold so predictions are kept at all.
    # orchard_small also asks distractor phrases the cache-only bundle does not know: known_only skips them.
    acc = accuracy_on_dataset(segmenter, orchard_small, score_threshold=0.1, known_only=True,
                              save_predictions=tmp_path / "predictions.json")
    assert segmenter.concepts == before
    assert 0.0 <= acc["cgf1"] <= 1.0 and acc["pairs"] > 0 and acc["ms_per_image"] > 0
    assert acc["skipped_pairs"] > 0 and "ripe apple" not in acc["skipped_phrases"]
    data = json.loads(orchard_small.read_text())
    data["images"] = [im for im in data["images"] if im["text_input"] in before]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in {im["id"] for im in data["images"]}]
    known = ConceptDataset(data, ConceptDataset.load(orchard_small).root)
    predictions, _ = predict_with_segmenter(segmenter, known, min_score=0.05)
    assert predictions and {"image_id", "category_id", "segmentation", "bbox", "score"} <= set(predictions[0])
    assert json.loads((tmp_path / "predictions.json").read_text()) == predictions
    direct = evaluate(data, predictions, score_threshold=0.1)
    assert acc["cgf1"] == pytest.approx(direct.cgf1) and acc["pmf1"] == pytest.approx(direct.pmf1)
    assert acc["il_mcc"] == pytest.approx(direct.il_mcc) and acc["predictions_kept"] == direct.predictions_kept


def test_accuracy_needs_an_existing_data_file(segmenter, tmp_path):
    from sam3edge.eval.bench_accuracy import accuracy_on_dataset

    with pytest.raises(FileNotFoundError, match="no-such.json"):
        accuracy_on_dataset(segmenter, tmp_path / "no-such.json")


def test_accuracy_lists_the_phrases_a_cache_only_bundle_does_not_know(segmenter, orchard_small, tmp_path):
    from sam3edge.data.coco import ConceptDataset
    from sam3edge.eval.bench_accuracy import accuracy_on_dataset

    original = ConceptDataset.load(orchard_small)
    data = json.loads(orchard_small.read_text())
    data["images"][0]["text_input"] = "purple banana"
    data["images"][1]["text_input"] = "blue pear"
    for im in data["images"]:
        im["file_name"] = str(original.image_path(im["file_name"]).resolve())
    path = tmp_path / "unknown.json"
    path.write_text(json.dumps(data))
    before = segmenter.concepts
    with pytest.raises(ValueError, match="does not know") as err:
        accuracy_on_dataset(segmenter, path)
    assert "'purple banana'" in str(err.value) and "'blue pear'" in str(err.value)
    assert "'ripe apple'" in str(err.value)  # what the bundle does know
    assert segmenter.concepts == before


def _mask(h, w, y0, y1, x0, x1):
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def _instances(phrases, ids, scores, masks, size=(40, 60)):
    from sam3edge.runtime.instances import Instances

    masks = np.array(masks, bool).reshape(-1, *size)
    boxes = np.zeros((len(ids), 4), np.float32)
    return Instances([phrases[i] for i in ids], ids, scores, boxes, masks, {}, size)


def test_agreement_counts_teacher_instances_the_student_finds():
    from sam3edge.eval.bench_accuracy import agreement

    phrases = ["ripe apple", "leaf"]
    a, b, c = _mask(40, 60, 0, 10, 0, 10), _mask(40, 60, 20, 30, 20, 30), _mask(40, 60, 0, 10, 40, 60)
    teacher = _instances(phrases, [0, 0, 1], [0.9, 0.8, 0.3], [a, b, c])  # the leaf is below 0.5: not kept
    half = _mask(40, 60, 0, 10, 0, 5)  # IoU 0.5 with a
    student = _instances(phrases, [0, 1], [0.7, 0.6], [half, c])  # finds a (IoU 0.5), "leaf" is a false positive
    got = agreement([teacher], [student], phrases)
    assert got["teacher_instances"] == 2 and got["student_instances"] == 2 and got["matched"] == 1
    assert got["recall"] == pytest.approx(0.5) and got["precision"] == pytest.approx(0.5)
    assert got["mean_iou"] == pytest.approx(0.5)
    empty = agreement([teacher], [_instances(phrases, [], [], [])], phrases)
    assert empty["recall"] == 0.0 and empty["precision"] is None and empty["mean_iou"] is None


def test_vs_teacher_measures_speedup_and_agreement_with_the_bundled_teacher(segmenter, images):
    from sam3edge.eval.bench_accuracy import vs_teacher

    before = segmenter.concepts
    got = vs_teacher(segmenter, "orchard-toy", images, threads=2, warmup=0)
    assert segmenter.concepts == before
    assert got["images"] == 2 and got["phrases"] == before and got["threads"] == 2
    assert got["teacher_p50_ms"] > 0 and got["student_p50_ms"] > 0 and got["speedup"] > 0
    assert got["recall"] is None or 0.0 <= got["recall"] <= 1.0
    assert got["mean_iou"] is None or 0.0 <= got["mean_iou"] <= 1.0
    assert got["teacher_instances"] >= 0 and got["matched"] <= got["teacher_instances"]


def test_vs_teacher_names_a_missing_teacher_directory(segmenter, images):
    from sam3edge.eval.bench_accuracy import vs_teacher

    with pytest.raises(FileNotFoundError, match="no-such-teacher"):
        vs_teacher(segmenter, "/no-such-teacher", images)


def test_the_summary_of_the_test_bundle(report):
    text = format_summary(report)
    print("\n" + text)
    assert text.splitlines()[0].startswith("toy-onnx.sam3edge (onnx fp32, 128 px, 3 concepts")
    assert "end to end" in text and "pipelined" in text and "peak RSS" in text


def test_a_tensorrt_fp16_bundle_run_on_onnxruntime_cpu_is_filed_as_the_fp32_it_ran(toy_student_dir, scenes, tmp_path):
    """A TensorRT fp16 bundle holds fp32 graphs (TensorRT picks fp16 kernels when it builds engines); run on a CPU
    it computes fp32, and its report and file name say so (issue 15: it was filed as fp16)."""
    from sam3edge.export.bundle import export_bundle
    from sam3edge.runtime.segmenter import Segmenter

    path = tmp_path / "toy-trt.sam3edge"
    export_bundle(toy_student_dir, path, "tensorrt", "fp16", calib=scenes, n_verify=1, progress=False)
    seg = Segmenter.load(path, backend="onnxruntime", device="cpu")
    seg.set_concepts(list(seg.bundle.concepts)[:2])
    report = run_bench(seg, orchard_frames(1, 96, 96, seed=2), runs=1, warmup=0, frames=1)
    assert report["bundle"]["precision"] == "fp32" and report["bundle"]["bundle_precision"] == "fp16"
    assert report_stem(report).endswith("_fp32")
