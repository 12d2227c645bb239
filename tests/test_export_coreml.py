"""Core ML target: ML Program packages in fp16 / int8 that keep the export spec's I/O (converted on Linux,
predicted only on macOS)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

PRECISIONS = ("fp16", "int8")


@pytest.fixture(scope="module")
def toy_student(toy_student_dir):
    """The 128 px toy student of conftest.py."""
    from sam3edge.models.student_io import load_student

    return load_student(toy_student_dir).eval()


@pytest.fixture(scope="module")
def images(toy_student):
    """Orchard scenes as the bundle feeds them: uint8 RGB [128, 128, 3]."""
    from sam3edge.data.images import resize_batch
    from sam3edge.data.orchard import render_scene, scene_rng

    images, _ = resize_batch([render_scene(scene_rng(11, i), 160).image for i in range(3)], toy_student.image_size)
    return list(images)


@pytest.fixture(scope="module")
def concepts(toy_student):
    cache = toy_student.concepts
    return cache.features.astype(np.float32), cache.mask.astype(bool)


@pytest.fixture(scope="module")
def packages(toy_student, images, concepts, tmp_path_factory):
    from sam3edge.export.coreml import export_coreml

    root = tmp_path_factory.mktemp("coreml")
    return {p: export_coreml(toy_student, root / p, p, images, *concepts) for p in PRECISIONS}


@pytest.fixture(scope="module")
def described(packages):
    from sam3edge.export.coreml import describe_mlpackage

    return {p: {g: describe_mlpackage(path) for g, path in paths.items()} for p, paths in packages.items()}


def _expected_shape(shape: tuple) -> list:
    """The export spec's shape as describe_mlpackage reports an input: the dynamic axes as RangeDim bounds (the
    token axis: the 32 text tokens, up to 16 exemplar tokens and their CLS token more)."""
    from sam3edge.export.coreml import MAX_PROMPTS

    bounds = {"prompts": [1, MAX_PROMPTS], "tokens": [32, 49], "exemplars": [1, 16]}
    return [bounds.get(d, d) for d in shape]


@pytest.mark.parametrize("precision", PRECISIONS)
def test_each_graph_is_an_ml_program_package_with_the_spec_inputs_and_outputs(packages, described, toy_student,
                                                                             precision):
    import coremltools as ct

    from sam3edge.export.coreml import COREML_DTYPES
    from sam3edge.export.spec import export_spec

    spec = export_spec(toy_student, exemplars=True)
    assert set(packages[precision]) == {"image_encoder", "decoder", "exemplar_encoder"}
    for name, path in packages[precision].items():
        assert path.name == f"{name}.mlpackage" and (path / "Manifest.json").is_file()
        model = ct.models.MLModel(str(path), skip_model_load=True)
        assert model.get_spec().WhichOneof("Type") == "mlProgram"
        d, g = described[precision][name], spec.graph(name)
        assert [i["name"] for i in d["inputs"]] == [t.name for t in g.inputs]
        assert [o["name"] for o in d["outputs"]] == [t.name for t in g.outputs]
        for t, got in zip(g.inputs, d["inputs"]):
            assert got["shape"] == _expected_shape(t.shape), t.name
        for t, got in zip((*g.inputs, *g.outputs), (*d["inputs"], *d["outputs"])):
            assert got["dtype"] == COREML_DTYPES[name].get(t.name, t.dtype), t.name  # spec dtype unless documented
        assert d["spec_version"] >= 8 and d["opset"] == "CoreML7"  # iOS17 / macOS14
        # int8 packages keep the exemplar encoder in float16, as the other targets keep it float
        graph_precision = "fp16" if name == "exemplar_encoder" and precision == "int8" else precision
        assert d["metadata"]["sam3edge.precision"] == graph_precision and d["metadata"]["sam3edge.graph"] == name
    image = described[precision]["image_encoder"]["inputs"][0]
    assert image["shape"] == [1, 128, 128, 3] and image["dtype"] == "int32"
    dec = {t["name"]: t for t in (*described[precision]["decoder"]["inputs"],
                                  *described[precision]["decoder"]["outputs"])}
    assert dec["text"]["shape"][:2] == [[1, 1024], [32, 49]] and dec["text_mask"]["shape"] == [[1, 1024], [32, 49]]
    assert dec["masks"]["shape"] == [None, 10, 32, 32] and dec["indices"]["shape"] == [None, 10]  # prompts stay open
    ex = {t["name"]: t for t in (*described[precision]["exemplar_encoder"]["inputs"],
                                 *described[precision]["exemplar_encoder"]["outputs"])}
    assert ex["boxes"]["shape"] == [[1, 1024], [1, 16], 4] and ex["box_labels"]["dtype"] == "int32"
    assert ex["tokens_mask"]["dtype"] == "int32" and ex["feat2"]["shape"] == [1, 64, 8, 8]


def test_fp16_computes_in_float16_and_int8_stores_int8_weights_in_a_smaller_package(described):
    fp16, int8 = described["fp16"], described["int8"]
    for name in ("image_encoder", "decoder"):
        assert fp16[name]["compute_precision"] == "float16", name
        assert set(fp16[name]["weights"]) == {"float16"} and fp16[name]["quantized_weight_ops"] == 0
        assert int8[name]["compute_precision"] == "float16", name  # weight-only int8: float16 activations
        w = int8[name]["weights"]
        assert int8[name]["quantized_weight_ops"] >= 10 and w["int8"] > 0.9 * sum(w.values()), (name, w)
        assert int8[name]["op_counts"].get("constexpr_affine_dequantize", 0) == int8[name]["quantized_weight_ops"]
    size = {p: sum(d["bytes"] for d in described[p].values()) for p in PRECISIONS}
    assert size["int8"] < 0.75 * size["fp16"], size


def test_padding_masks_do_not_multiply_by_infinity_in_float16(described):
    # padding_bias multiplies by finfo(float32).min, which float16 would make -inf: 0 * -inf = NaN on real tokens.
    for p in PRECISIONS:
        for graph in ("decoder", "exemplar_encoder"):
            assert described[p][graph]["infinite_multipliers"] == [], (p, graph)


def test_a_trace_that_fixed_a_size_is_an_export_error_not_a_wrong_answer_on_the_mac():
    """torch.jit.trace turns a size read in Python into a constant; the export runs each trace at other shapes
    than its example's and refuses one that no longer equals PyTorch."""
    import torch

    from sam3edge.export.coreml import _check_trace_generalises

    class Baked(torch.nn.Module):
        def forward(self, x):
            return (x.sum(1, keepdim=True) / int(x.shape[1]),)  # int(): the example's width becomes a constant

    class Traced(torch.nn.Module):
        def forward(self, x):
            return (x.mean(1, keepdim=True),)

    example, other = torch.ones(2, 3), torch.arange(10.0).reshape(2, 5)
    for module in (Baked(), Traced()):
        with torch.no_grad():
            traced = torch.jit.trace(module, (example,), check_trace=False)
        if isinstance(module, Baked):
            with pytest.raises(RuntimeError, match="traced decoder's output 0 differs .*fixed into the trace"):
                _check_trace_generalises(traced, module, (other,), "decoder")
        else:
            _check_trace_generalises(traced, module, (other,), "decoder")


def test_an_unsupported_precision_is_refused_naming_the_supported_ones(toy_student, images, concepts, tmp_path):
    from sam3edge.export.coreml import export_coreml

    with pytest.raises(ValueError, match=r"Core ML supports precisions fp32, fp16, int8; got 'int4'"):
        export_coreml(toy_student, tmp_path / "x", "int4", images, *concepts)
    with pytest.raises(ValueError, match="at least one image"):
        export_coreml(toy_student, tmp_path / "x", "fp16", [], *concepts)
    assert not (tmp_path / "x").exists()


@pytest.mark.skipif(sys.platform == "darwin", reason="Core ML predicts on macOS")
def test_prediction_off_macos_raises_an_error_that_says_so(packages):
    from sam3edge.export.coreml import coreml_runner

    with pytest.raises(RuntimeError, match="Core ML prediction needs macOS"):
        coreml_runner(packages["fp16"])


@pytest.mark.macos
def test_coreml_fp16_agrees_with_pytorch_on_orchard_scenes(packages, toy_student, images, concepts):
    from sam3edge.export.coreml import coreml_runner
    from sam3edge.export.verify import compare, torch_runner

    text, mask = concepts
    run = coreml_runner(packages["fp16"])
    report = compare(torch_runner(toy_student), run, images, text, mask)
    assert report["recall"] >= 0.9 and report["mask_iou"] >= 0.9, report
    one, three = run(images[0], text[:1], mask[:1]), run(images[0], text, mask)  # the prompt axis is dynamic
    assert one[0].shape == (1, 10) and three[3].shape == (3, 10, 32, 32) and three[4].dtype == np.int64
    np.testing.assert_allclose(one[0][0], three[0][0], atol=5e-3)
    from sam3edge.export.onnx import exemplar_example

    assert run.exemplars
    for k in (1, 5):  # exemplar boxes: the exemplar package and the decoder's longer token axis
        boxes, labels = exemplar_example(len(text), k)
        report = compare(torch_runner(toy_student), run, images, text, mask, boxes=boxes, labels=labels)
        assert report["recall"] >= 0.9 and report["mask_iou"] >= 0.9, (k, report)


@pytest.mark.macos
def test_coreml_int8_stays_within_the_int8_thresholds(packages, toy_student, images, concepts):
    from sam3edge.export.coreml import coreml_runner
    from sam3edge.export.verify import compare, passes, torch_runner

    report = compare(torch_runner(toy_student), coreml_runner(packages["int8"]), images, *concepts)
    assert passes(report, "int8") == [], report


def test_a_coreml_bundle_records_its_io_dtypes_and_that_it_was_not_verified_here(toy_student_dir, scenes, tmp_path):
    from sam3edge.export.bundle import export_bundle
    from sam3edge.runtime.bundle import Bundle

    m = export_bundle(toy_student_dir, tmp_path / "m.sam3edge", profile="apple-m", calib=scenes, n_verify=2,
                      progress=False)
    assert m["target"] == "coreml" and m["precision"] == "fp16" and m["graphs"]["decoder"]["file"] == \
        "graphs/decoder.mlpackage"
    dec = {t["name"]: t["dtype"] for t in m["graphs"]["decoder"]["inputs"] + m["graphs"]["decoder"]["outputs"]}
    assert dec["text_mask"] == "int32" and dec["indices"] == "int32" and dec["text"] == "float32"
    ex = {t["name"]: t["dtype"] for t in m["graphs"]["exemplar_encoder"]["inputs"] +
          m["graphs"]["exemplar_encoder"]["outputs"]}
    assert ex == {"feat2": "float32", "boxes": "float32", "box_labels": "int32", "tokens": "float32",
                  "tokens_mask": "int32"}
    assert m["graphs"]["image_encoder"]["inputs"][0]["dtype"] == "int32"
    if sys.platform != "darwin":
        assert m["verification"]["ran"] is False and "needs macOS" in m["verification"]["reason"]
    assert any(f.startswith("graphs/decoder.mlpackage/") for f in m["files"])  # every file of the package hashed
    assert Bundle.open(tmp_path / "m.sam3edge").target == "coreml"  # the runtime reads what export wrote
