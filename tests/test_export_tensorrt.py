"""TensorRT target: our ONNX graphs pass TensorRT's parser rules; engines built from them agree with PyTorch.

The checks run everywhere; building and running engines needs TensorRT and an NVIDIA GPU (marker
``tensorrt``, deselected by default).
"""

from __future__ import annotations

import sys

import numpy as np
import pytest


@pytest.fixture(scope="module")
def toy(toy_student_dir):
    """The 128 px toy student of conftest.py, loaded, with 4 orchard scenes, its concepts and its export spec."""
    from sam3edge.data.images import resize_batch
    from sam3edge.data.orchard import render_scene, scene_rng
    from sam3edge.export.spec import export_spec
    from sam3edge.models.student_io import load_student

    student = load_student(toy_student_dir).eval()
    images, _ = resize_batch([render_scene(scene_rng(11, i), 160).image for i in range(4)], 128)
    text, mask = student.concepts.features.astype(np.float32), student.concepts.mask.astype(bool)
    return {"student": student, "images": list(images), "text": text, "mask": mask,
            "spec": export_spec(student, text_length=text.shape[1], exemplars=True)}


@pytest.fixture(scope="module")
def graphs(toy, tmp_path_factory):
    """precision -> graph name -> ONNX path: fp32 and TensorRT's int8 QDQ (as ``export_tensorrt`` writes them, with
    the exemplar encoder), fp16 (ONNX's float16 conversion) and the ONNX target's int8."""
    from sam3edge.export.onnx import calibration_feeds, to_fp16, to_int8
    from sam3edge.export.tensorrt import export_tensorrt

    root = tmp_path_factory.mktemp("trt-graphs")
    student, text, mask = toy["student"], toy["text"], toy["mask"]
    fp32 = export_tensorrt(student, root / "fp32", "fp16", toy["images"], text, mask)  # fp16 engines: fp32 graphs
    out = {"fp32": fp32, "int8": export_tensorrt(student, root / "int8", "int8", toy["images"][:2], text, mask)}
    (root / "fp16").mkdir()
    out["fp16"] = {n: to_fp16(p, root / "fp16" / p.name) for n, p in fp32.items()}
    feeds = calibration_feeds(fp32, toy["images"][:2], text, mask)
    (root / "int8-ort").mkdir()  # the ONNX target's int8, to show why TensorRT has its own
    out["int8-ort"] = {"image_encoder": to_int8(fp32["image_encoder"], root / "int8-ort" / "image_encoder.onnx",
                                                feeds["image_encoder"])}
    return out


def test_the_operator_list_is_tensorrt_10s_and_excludes_what_its_parser_refuses():
    from sam3edge.export.tensorrt_check import OPS_TENSORRT_VERSION, OPSET_RANGE, SUPPORTED_OPS

    assert OPS_TENSORRT_VERSION.startswith("10.") and OPSET_RANGE[0] <= 18 <= OPSET_RANGE[1]
    assert {"Conv", "MatMul", "TopK", "LayerNormalization", "QuantizeLinear", "DequantizeLinear", "Einsum"} \
        <= SUPPORTED_OPS
    assert not {"Unique", "ConvInteger", "MatMulInteger", "QLinearConv", "SequenceAt"} & SUPPORTED_OPS


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_every_graph_tensorrt_builds_from_uses_only_supported_operators(graphs, precision):
    from sam3edge.export.tensorrt_check import check_onnx_for_tensorrt

    for name, path in graphs[precision].items():
        report = check_onnx_for_tensorrt(path, strict=True)  # raises on any unsupported op or problem
        assert report["unsupported"] == [] and report["problems"] == [], report
        assert report["opset"] == 18 and report["file"] == str(path)
        if name == "decoder":
            assert {"TopK", "Einsum", "LayerNormalization", "GatherElements"} <= set(report["ops"])
            assert report["dynamic_inputs"] == {"text": ["prompts", "tokens", 64], "text_mask": ["prompts", "tokens"]}
            assert report["inputs"]["text_mask"] == "BOOL" and report["outputs"]["indices"] == "INT64"
            assert any("'indices' is int64" in n for n in report["notes"])
        elif name == "exemplar_encoder":
            assert report["dynamic_inputs"] == {"boxes": ["prompts", "exemplars", 4],
                                                "box_labels": ["prompts", "exemplars"]}
            assert report["inputs"] == {"feat2": "FLOAT", "boxes": "FLOAT", "box_labels": "INT64"}
            assert report["outputs"]["tokens_mask"] == "BOOL"
            # the int8 export keeps it float (a few boxes per call, exact ROI geometry), as the ONNX target does
            assert precision != "int8" or "QuantizeLinear" not in report["ops"]
        else:
            assert report["inputs"] == {"image": "UINT8"} and report["dynamic_inputs"] == {}
            assert any("'image' is uint8" in n for n in report["notes"])
        if precision == "int8" and name != "exemplar_encoder":
            assert {"QuantizeLinear", "DequantizeLinear"} <= set(report["ops"])
    assert set(graphs[precision]) == {"image_encoder", "decoder", "exemplar_encoder"}


def test_tensorrt_json_builds_each_graph_at_the_precision_its_file_holds(graphs):
    """An int8 bundle's float graphs (the exemplar encoder; a fast-head decoder) hold no Q/DQ nodes, which an INT8
    engine build refuses: ``tensorrt.json`` names fp16 for them, int8 for the quantized ones."""
    import json

    import onnx

    for precision in ("int8", "fp32"):  # "fp32": the graphs of the fp16 export
        config = json.loads((graphs[precision]["decoder"].parent / "tensorrt.json").read_text())
        for name, path in graphs[precision].items():
            quantized = "QuantizeLinear" in {n.op_type for n in onnx.load(str(path)).graph.node}
            assert config["graphs"][name]["precision"] == ("int8" if quantized else "fp16"), (precision, name)
    config = json.loads((graphs["int8"]["decoder"].parent / "tensorrt.json").read_text())
    assert [config["graphs"][n]["precision"] for n in ("image_encoder", "decoder", "exemplar_encoder")] == \
        ["int8", "int8", "fp16"]  # the toy student's SAM3-width decoder is quantized


def test_the_onnx_targets_uint8_qdq_graph_is_refused_for_its_zero_points(graphs):
    from sam3edge.export.tensorrt_check import check_onnx_for_tensorrt

    report = check_onnx_for_tensorrt(graphs["int8-ort"]["image_encoder"])
    assert report["unsupported"] == []  # the operators are fine; their uint8 asymmetric zero points are not
    problems = "\n".join(report["problems"])
    assert "QuantizeLinear: uint8 quantization unsupported" in problems, problems
    assert "DequantizeLinear: int32 quantization unsupported (TensorRT's Q/DQ are int8, int4 or fp8; biases stay " \
        "float)" in problems, problems  # onnxruntime's quantized Conv biases
    with pytest.raises(ValueError, match=r"image_encoder\.onnx cannot be built.*\n.*to_int8\(symmetric=True\)"):
        check_onnx_for_tensorrt(graphs["int8-ort"]["image_encoder"], strict=True)


def test_tensorrts_int8_graph_stays_close_to_pytorch_on_onnxruntime(toy, graphs):
    from sam3edge.export.verify import compare, onnx_runner, torch_runner

    report = compare(torch_runner(toy["student"]), onnx_runner(graphs["int8"]), toy["images"][2:], toy["text"],
                     toy["mask"])
    assert report["recall"] >= 0.75 and report["score_mae"] <= 0.08, report


def test_the_graphs_tensorrt_builds_from_take_exemplar_boxes_as_pytorch_does(toy, graphs):
    """Text, text + boxes (positive, negative, a concept with none) and the visual prompt through the exemplar encoder
    and the decoder's longer token axis, fp32 graphs on onnxruntime against the PyTorch student."""
    from sam3edge.export.onnx import exemplar_example
    from sam3edge.export.verify import compare, onnx_runner, torch_runner

    ref, got = torch_runner(toy["student"]), onnx_runner(graphs["fp32"])
    assert got.exemplars
    text, mask = toy["text"], toy["mask"]
    for k in (1, 5):
        boxes, labels = exemplar_example(len(text), k)
        report = compare(ref, got, toy["images"][:2], text, mask, boxes=boxes, labels=labels)
        assert report["recall"] >= 0.98 and report["score_mae"] <= 1e-3 and report["mask_iou"] >= 0.98, (k, report)
    boxes, labels = exemplar_example(len(text), 3)
    a, b = ref(toy["images"][0], text, mask, boxes, labels), got(toy["images"][0], text, mask, boxes, labels)
    np.testing.assert_allclose(a[0], b[0], atol=1e-4)  # scores, every concept (the last one has padding only)
    plain = got(toy["images"][0], text, mask)
    np.testing.assert_allclose(b[0][-1], plain[0][-1], atol=1e-5)  # a concept without boxes: its text-only answer
    # boxes do move the others (relative change: the toy student's scores of a concept can sit near 0)
    assert np.abs(np.log(b[0][0] + 1e-30) - np.log(plain[0][0] + 1e-30)).max() > 1e-2


def test_the_tensorrt_build_settings_profile_the_token_and_exemplar_axes(toy, graphs):
    import json

    config = json.loads((graphs["int8"]["decoder"].parent / "tensorrt.json").read_text())
    assert config["text_length"] == 32
    assert config["graphs"]["decoder"]["profile"]["text"] == [[1, 32, 64], [8, 32, 64], [64, 49, 64]]
    assert config["graphs"]["exemplar_encoder"]["profile"]["boxes"] == [[1, 1, 4], [8, 1, 4], [64, 16, 4]]
    assert config["graphs"]["exemplar_encoder"]["profile"]["feat2"] == [[1, 64, 8, 8]] * 3


def _tiny_graph(tmp_path, op_type: str, opset: int = 18, domain: str = ""):
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["r"]),
                               helper.make_node(op_type, ["r"], ["y"], name="the_node", domain=domain)],
                              "tiny", [x], [y])
    imports = [helper.make_opsetid("", opset)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    path = tmp_path / f"{op_type}.onnx"
    onnx.save(helper.make_model(graph, opset_imports=imports), str(path))
    return path


def test_an_unsupported_operator_is_named_with_its_file(tmp_path):
    from sam3edge.export.tensorrt_check import check_onnx_for_tensorrt

    path = _tiny_graph(tmp_path, "Unique")
    report = check_onnx_for_tensorrt(path)
    assert report["ops"] == ["Relu", "Unique"] and report["unsupported"] == ["Unique"]
    with pytest.raises(ValueError, match=r"Unique\.onnx cannot be built .*\n.*unsupported operators: Unique \(1 "):
        check_onnx_for_tensorrt(path, strict=True)


def test_operators_inside_subgraphs_and_of_other_domains_are_checked(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from sam3edge.export.tensorrt_check import check_onnx_for_tensorrt

    out = helper.make_tensor_value_info("o", TensorProto.FLOAT, [None])
    branch = lambda op: helper.make_graph([helper.make_node(op, ["x"], ["o"])], op, [], [out])
    node = helper.make_node("If", ["c"], ["y"], then_branch=branch("Unique"), else_branch=branch("Relu"))
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("c", TensorProto.BOOL, []),
                                            helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(tmp_path / "if.onnx"))
    assert check_onnx_for_tensorrt(tmp_path / "if.onnx")["unsupported"] == ["Unique"]
    report = check_onnx_for_tensorrt(_tiny_graph(tmp_path, "FusedGelu", domain="com.microsoft"))
    assert report["unsupported"] == ["com.microsoft::FusedGelu"]


def test_an_opset_outside_the_parsers_range_is_a_problem(tmp_path):
    from sam3edge.export.tensorrt_check import check_onnx_for_tensorrt

    report = check_onnx_for_tensorrt(_tiny_graph(tmp_path, "Relu", opset=8))
    assert report["unsupported"] == [] and report["opset"] == 8
    assert report["problems"] == ["opset 8 is outside the 9-24 range TensorRT 10.15's parser takes"]


def test_the_decoder_profile_ranges_over_prompts_and_tokens_and_fixes_everything_else(toy):
    from sam3edge.export.tensorrt import optimization_profile

    decoder = optimization_profile(toy["spec"].graph("decoder"), opt_prompts=8, max_prompts=64, text_length=32)
    assert list(decoder) == ["feat0", "feat1", "feat2", "text", "text_mask"]
    # text alone (the usual call) is the optimum; up to 16 exemplar boxes and their CLS token more
    assert decoder["text"] == ((1, 32, 64), (8, 32, 64), (64, 49, 64))
    assert decoder["text_mask"] == ((1, 32), (8, 32), (64, 49))
    for level, side in (("feat0", 32), ("feat1", 16), ("feat2", 8)):
        assert decoder[level] == ((1, 64, side, side),) * 3
    assert optimization_profile(toy["spec"].graph("image_encoder")) == {"image": ((1, 128, 128, 3),) * 3}
    with pytest.raises(ValueError, match="1 <= min <= opt <= max; got min 1, opt 80, max 64"):
        optimization_profile(toy["spec"].graph("decoder"), opt_prompts=80, max_prompts=64, text_length=32)
    with pytest.raises(ValueError, match="'tokens' axis .*pass text_length"):
        optimization_profile(toy["spec"].graph("decoder"))
    with pytest.raises(ValueError, match="text_length must be >= 1"):
        optimization_profile(toy["spec"].graph("decoder"), text_length=0)


def test_without_tensorrt_building_says_what_to_install(toy, graphs, tmp_path, monkeypatch):
    from sam3edge.export import tensorrt

    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt now raises ImportError
    assert not tensorrt.available()
    with pytest.raises(ImportError, match=r"TensorRT is needed.*JetPack.*pip install tensorrt"):
        tensorrt.build_engine(graphs["fp32"]["decoder"], tmp_path / "d.engine", "fp16", toy["spec"].graph("decoder"))
    with pytest.raises(ImportError, match="TensorRT is needed"):
        tensorrt.tensorrt_runner({"image_encoder": tmp_path / "i.engine", "decoder": tmp_path / "d.engine"})
    assert not list(tmp_path.iterdir())
    with pytest.raises(ValueError, match="fp32, fp16 or int8; got 'int4'"):
        tensorrt.build_engine(graphs["fp32"]["decoder"], tmp_path / "d.engine", "int4", toy["spec"].graph("decoder"))


def test_engines_are_cached_beside_their_graphs_under_the_tensorrt_and_gpu_key(tmp_path):
    from sam3edge.export.tensorrt import cached_engine_path

    path = cached_engine_path(tmp_path / "graphs" / "decoder.onnx", "int8", key="trt10.3.0-orin-sm87")
    assert path == tmp_path / "graphs" / "engines" / "trt10.3.0-orin-sm87" / "decoder.int8.engine"


# ------------------------------------------------- on a GPU with TensorRT installed (pytest -m tensorrt)


def _engines(toy, graphs, precision, tmp_path):
    from sam3edge.export.tensorrt import build_bundle_engines

    source = "fp32" if precision == "fp16" else precision  # TensorRT makes fp16 itself; int8 comes from QDQ
    config = {"precision": precision, "workspace_gb": 1, "gpu_fallback": True, "dla_core": None, "dla_graphs": [],
              "opt_prompts": 2, "max_prompts": 4, "text_length": int(toy["text"].shape[1])}
    return build_bundle_engines(graphs[source], toy["spec"], config, timing_cache=tmp_path / "timing.cache")


@pytest.mark.tensorrt
def test_fp16_engines_agree_with_pytorch(toy, graphs, tmp_path):
    from sam3edge.export.tensorrt import tensorrt_runner
    from sam3edge.export.verify import compare, torch_runner

    engines = _engines(toy, graphs, "fp16", tmp_path)
    assert all(p.stat().st_size > 0 for p in engines.values()) and (tmp_path / "timing.cache").is_file()
    built = {n: p.stat().st_mtime_ns for n, p in engines.items()}
    assert _engines(toy, graphs, "fp16", tmp_path) == engines  # cached: not rebuilt
    assert {n: p.stat().st_mtime_ns for n, p in engines.items()} == built
    run = tensorrt_runner(engines)
    report = compare(torch_runner(toy["student"]), run, toy["images"], toy["text"], toy["mask"])
    assert report["recall"] >= 0.9 and report["mask_iou"] >= 0.9, report
    # more prompts than the profile's maximum (4) run in chunks, each prompt answered as on its own
    text, mask = np.repeat(toy["text"], 2, axis=0), np.repeat(toy["mask"], 2, axis=0)
    many, one = run(toy["images"][0], text, mask), run(toy["images"][0], toy["text"][:1], toy["mask"][:1])
    assert many[0].shape == (6, 10) and many[3].shape == (6, 10, 32, 32) and many[4].dtype == np.int64
    np.testing.assert_allclose(many[0][0], one[0][0], atol=2e-3)
    # exemplar boxes: the exemplar engine and the decoder's token axis, also in chunks of the profile's 4 prompts
    from sam3edge.export.onnx import exemplar_example

    assert run.exemplars
    boxes, labels = exemplar_example(len(text), 3)
    report = compare(torch_runner(toy["student"]), run, toy["images"], text, mask, boxes=boxes, labels=labels)
    assert report["recall"] >= 0.9 and report["mask_iou"] >= 0.9, report


@pytest.mark.tensorrt
def test_int8_engines_from_the_qdq_graph_agree_with_pytorch(toy, graphs, tmp_path):
    from sam3edge.export.tensorrt import tensorrt_runner
    from sam3edge.export.verify import compare, torch_runner

    engines = _engines(toy, graphs, "int8", tmp_path)
    report = compare(torch_runner(toy["student"]), tensorrt_runner(engines), toy["images"], toy["text"], toy["mask"])
    assert report["recall"] >= 0.75, report


def test_a_jetson_profile_exports_a_checked_int8_bundle_with_its_build_settings(toy_student_dir, scenes, tmp_path):
    import json

    from sam3edge.export.bundle import export_bundle
    from sam3edge.export.tensorrt_check import check_onnx_for_tensorrt

    out = tmp_path / "nx.sam3edge"
    m = export_bundle(toy_student_dir, out, profile="jetson-orin-nx", calib=scenes, n_verify=2, progress=False)
    assert m["target"] == "tensorrt" and m["precision"] == "int8" and m["device_profile"]["name"] == "jetson-orin-nx"
    assert m["device_profile"]["input_size_matches"] is False  # the profile is sized for 512 px, this student 128
    config = json.loads((out / "graphs" / "tensorrt.json").read_text())
    assert config["precision"] == "int8" and config["dla_core"] == 0 and config["dla_graphs"] == ["image_encoder"]
    assert config["graphs"]["decoder"]["profile"]["text"] == [[1, 32, 64], [8, 32, 64], [64, 49, 64]]
    assert config["graphs"]["image_encoder"]["profile"]["image"] == [[1, 128, 128, 3]] * 3
    for g in m["graphs"].values():
        assert check_onnx_for_tensorrt(out / g["file"])["problems"] == []
    v = m["verification"]  # no TensorRT here: the QDQ graph the engine is built from, run by onnxruntime
    assert v["ran"] and "no TensorRT engine was built or run here" in v["runner"] and v["failed"] == []
    assert v["exemplar_encoder"]["recall"] >= 0.75, v  # verified with exemplar boxes too
    assert m["graphs"]["exemplar_encoder"]["file"] == "graphs/exemplar_encoder.onnx"
    assert "graphs/tensorrt.json" in m["files"]
