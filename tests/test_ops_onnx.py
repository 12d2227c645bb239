"""The fused ops in ONNX: sam3edge-domain nodes with function bodies give the same instances as the plain
decomposition in onnxruntime and OpenVINO; bundles carry them; TensorRT graphs name the plugins."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def graphs(toy_student_dir, scenes, tmp_path_factory):
    """The toy student's fp32 graphs, plain and fused: (plain paths, fused paths, images, text, mask)."""
    from sam3edge.data.images import load_image, resize_batch
    from sam3edge.export.onnx import export_fp32
    from sam3edge.models.student_io import load_student

    student = load_student(toy_student_dir).eval()
    images, _ = resize_batch([load_image(p) for p in sorted(scenes.glob("*.png"))], student.image_size)
    text = student.concepts.features.astype(np.float32)
    mask = student.concepts.mask.astype(bool)
    root = tmp_path_factory.mktemp("ops-onnx")
    plain = export_fp32(student, root / "plain", list(images), text, mask)
    fused = export_fp32(student, root / "fused", list(images), text, mask, fused=True)
    return plain, fused, list(images), text, mask


def _assert_same_instances(run_a, run_b, images, text, mask, score_atol=1e-4):
    foreground = 0
    for img in images:
        a, b = run_a(img, text, mask), run_b(img, text, mask)
        scores_a, boxes_a, presence_a, masks_a, idx_a = a
        scores_b, boxes_b, presence_b, masks_b, idx_b = b
        # The same queries in the same ranks; two queries whose scores tie within rounding may swap ranks,
        # which leaves the score of every rank unchanged: a rank may hold another query only inside a tie.
        slot = idx_a == idx_b
        gap = np.abs(np.diff(scores_a, axis=-1))
        tied = np.zeros_like(slot)
        tied[..., 1:] |= gap <= score_atol
        tied[..., :-1] |= gap <= score_atol
        assert (slot | tied).all(), f"ranks {np.argwhere(~(slot | tied)).tolist()} hold other queries, untied"
        assert slot.mean() >= 0.5, f"only {slot.mean():.0%} of the top-K ranks hold the same query"
        np.testing.assert_allclose(scores_b, scores_a, rtol=0, atol=score_atol)
        np.testing.assert_allclose(presence_b, presence_a, rtol=0, atol=score_atol)
        np.testing.assert_allclose(boxes_b[slot], boxes_a[slot], rtol=0, atol=1e-4)
        # Each query's mask, thresholded at 0 (the runtime's threshold) and at its own median logit (half of
        # its pixels foreground, whatever the weights), is the same; a logit within 1e-4 of the threshold
        # may round to either side.
        a, b = masks_a[slot], masks_b[slot]
        for threshold in (np.zeros_like(a[..., :1, :1]), np.median(a, axis=(-2, -1), keepdims=True)):
            same = (a > threshold) == (b > threshold)
            near = np.abs(a - threshold) < 1e-4
            assert (same | near).all(), f"thresholded masks differ at {(~(same | near)).sum()} pixels"
            foreground += int((a > threshold).sum())
    assert foreground > 0, "the comparison needs masks with foreground"


def test_fused_decoder_holds_one_node_per_op_each_with_a_function_body(graphs):
    from sam3edge.ops.onnx import DOMAIN, FUNCTIONS

    _, fused, *_ = graphs
    model = onnx.load(str(fused["decoder"]))
    onnx.checker.check_model(model, full_check=True)
    counts = Counter(n.op_type for n in model.graph.node if n.domain == DOMAIN)
    # toy student: 2 fusion layers + 3 decoder layers + the mask decoder attend to the prompt; 3 BoxRPB layers
    assert counts == {"prompt_attention": 6, "box_attention": 3, "mask_topk": 1}
    assert {(f.domain, f.name) for f in model.functions} == {(DOMAIN, n) for n in counts}
    assert all(f.name in FUNCTIONS for f in model.functions)
    assert any(o.domain == DOMAIN and o.version == 1 for o in model.opset_import)
    plain = onnx.load(str(graphs[0]["decoder"]))
    assert not any(n.domain == DOMAIN for n in plain.graph.node) and not plain.functions
    image = onnx.load(str(fused["image_encoder"]))
    assert not any(n.domain == DOMAIN for n in image.graph.node)


def test_fused_onnx_gives_the_plain_onnx_instances_in_onnxruntime(graphs):
    from sam3edge.export.verify import onnx_runner

    plain, fused, images, text, mask = graphs
    _assert_same_instances(onnx_runner(plain), onnx_runner(fused), images, text, mask)


def test_fused_onnx_gives_the_plain_onnx_instances_in_openvino(graphs, tmp_path):
    from sam3edge.export.openvino import openvino_runner
    from sam3edge.ops.onnx import custom_nodes, inline

    plain, fused, images, text, mask = graphs
    inlined = inline(onnx.load(str(fused["decoder"])))
    assert not custom_nodes(inlined) and not inlined.functions
    onnx.checker.check_model(inlined, full_check=True)
    onnx.save(inlined, str(tmp_path / "decoder.onnx"))
    fused_ov = {**fused, "decoder": tmp_path / "decoder.onnx"}
    _assert_same_instances(openvino_runner(plain), openvino_runner(fused_ov), images, text, mask)


def test_fused_onnx_matches_the_fused_pytorch_heads(graphs, toy_student_dir):
    import torch

    from sam3edge.export.graphs import DecoderGraph
    from sam3edge.export.verify import onnx_runner
    from sam3edge.models.student_io import load_student
    from sam3edge.ops import fused_ops

    plain, fused, images, text, mask = graphs
    student = load_student(toy_student_dir).eval()
    decoder = DecoderGraph(student).eval()

    def run_torch(img, text, mask):
        with torch.no_grad(), fused_ops():
            levels = student.image_encoder.forward_uint8(torch.from_numpy(img)[None], channels_last=True).levels
            return tuple(t.numpy() for t in decoder(*levels, torch.from_numpy(text), torch.from_numpy(mask)))

    _assert_same_instances(run_torch, onnx_runner(fused), images[:3], text, mask)


def test_fused_graph_survives_fp16_conversion(graphs, tmp_path):
    import onnxruntime as ort

    from sam3edge.export.onnx import to_fp16

    plain, fused, images, text, mask = graphs
    half = to_fp16(fused["decoder"], tmp_path / "decoder.onnx")
    model = onnx.load(str(half))
    assert sum(n.domain == "sam3edge" for n in model.graph.node) == 10 and len(model.functions) == 3
    feats = ort.InferenceSession(str(fused["image_encoder"])).run(None, {"image": images[0][None]})
    feed = dict(zip(("feat0", "feat1", "feat2"), feats)) | {"text": text, "text_mask": mask}
    want = ort.InferenceSession(str(fused["decoder"])).run(None, feed)
    got = ort.InferenceSession(str(half)).run(None, feed)
    np.testing.assert_allclose(got[0], want[0], rtol=0, atol=2e-2)  # fp16 arithmetic, same queries on top
    assert (got[4][:, 0] == want[4][:, 0]).mean() >= 0.8


def test_tensorrt_graph_names_the_plugins_and_passes_the_parser_checks(graphs, tmp_path):
    from sam3edge.export.tensorrt_check import check_onnx_for_tensorrt
    from sam3edge.export.verify import onnx_runner
    from sam3edge.ops.onnx import custom_nodes, for_tensorrt

    plain, fused, images, text, mask = graphs
    model = for_tensorrt(onnx.load(str(fused["decoder"])))
    for node in custom_nodes(model):
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attrs["plugin_namespace"] == b"sam3edge" and attrs["plugin_version"] == b"1"
    path = tmp_path / "decoder.onnx"
    onnx.save(model, str(path))
    report = check_onnx_for_tensorrt(path)  # the function bodies are what a parser without the plugins builds
    assert report["unsupported"] == [] and report["problems"] == []
    # onnxruntime ignores the plugin attributes: the graph still runs everywhere
    _assert_same_instances(onnx_runner(plain), onnx_runner({**fused, "decoder": path}), images[:2], text, mask)


@pytest.mark.parametrize("target", ["onnx", "openvino"])
def test_default_bundle_is_fused_and_segments_like_the_plain_bundle(target, toy_student_dir, scenes, toy_bundles,
                                                                    tmp_path):
    import json

    from test_runtime_segmenter import THRESHOLD, assert_same_instances, orchard_images

    from sam3edge.export.bundle import export_bundle
    from sam3edge.runtime.segmenter import Segmenter

    out = tmp_path / f"plain-{target}.sam3edge"
    m = export_bundle(toy_student_dir, out, target, "fp32", calib=scenes, n_verify=2, progress=False, fused_ops=False)
    assert m["ops"] == "plain" and m["verification"]["failed"] == []
    fused_bundle = toy_bundles[target]  # exported with the target's default
    fused_manifest = json.loads((fused_bundle / "manifest.json").read_text())
    assert fused_manifest["ops"] == "fused" and fused_manifest["verification"]["recall"] == 1.0
    fused, plain = Segmenter.load(fused_bundle, threads=2), Segmenter.load(out, threads=2)
    for image in orchard_images():
        want = plain.segment(image, score_threshold=THRESHOLD)
        assert len(want) > 0
        assert_same_instances(fused.segment(image, score_threshold=THRESHOLD), want, score_atol=1e-4, box_atol=0.01,
                              min_iou=0.999)


def test_fused_ops_are_refused_for_coreml_with_the_targets_that_take_them(toy_student_dir, scenes, tmp_path):
    from sam3edge.export.bundle import export_bundle

    with pytest.raises(ValueError, match="onnx, openvino, tensorrt"):
        export_bundle(toy_student_dir, tmp_path / "c.sam3edge", "coreml", "fp32", calib=scenes, fused_ops=True,
                      progress=False)
    assert not (tmp_path / "c.sam3edge").exists()


def test_tensorrt_export_lists_the_plugins_in_its_build_settings(toy_student_dir, scenes, tmp_path):
    import json

    from sam3edge.export.bundle import export_bundle

    out = tmp_path / "trt.sam3edge"
    m = export_bundle(toy_student_dir, out, "tensorrt", "fp16", calib=scenes, n_verify=2, progress=False,
                      fused_ops=True)
    config = json.loads((out / "graphs" / "tensorrt.json").read_text())
    assert config["plugins"] == {"sam3edge": ["decoder"]}
    assert m["ops"] == "fused" and m["verification"]["failed"] == []


@pytest.mark.tensorrt
def test_tensorrt_builds_the_fused_decoder_with_the_plugins(graphs, toy_student_dir, tmp_path):
    """On a GPU with TensorRT: the plugins register, the parser maps the sam3edge nodes to them, the engine
    matches onnxruntime on the same graph."""
    from sam3edge.export.spec import export_spec
    from sam3edge.export.tensorrt import build_engine, tensorrt_runner
    from sam3edge.export.verify import onnx_runner
    from sam3edge.models.student_io import load_student
    from sam3edge.ops.onnx import for_tensorrt
    from sam3edge.ops.tensorrt_plugins import register_plugins

    assert register_plugins() == ["sam3edge::prompt_attention", "sam3edge::box_attention", "sam3edge::mask_topk"]
    plain, fused, images, text, mask = graphs
    path = tmp_path / "decoder.onnx"
    onnx.save(for_tensorrt(onnx.load(str(fused["decoder"]))), str(path))
    spec = export_spec(load_student(toy_student_dir), text_length=text.shape[1])
    engines = {name: tmp_path / f"{name}.engine" for name in ("image_encoder", "decoder")}
    build_engine(fused["image_encoder"], engines["image_encoder"], "fp32", spec.graph("image_encoder"))
    build_engine(path, engines["decoder"], "fp32", spec.graph("decoder"))
    _assert_same_instances(onnx_runner(fused), tensorrt_runner(engines), images, text, mask, score_atol=1e-3)



def test_onnx_function_bodies_compile_silently_with_typed_outputs(capsys):
    """onnxscript prints (not raises) on annotations it cannot read, and then drops typed outputs."""
    import importlib

    import sam3edge.ops.onnx as ops_onnx

    importlib.reload(ops_onnx)
    assert capsys.readouterr().out == ""
    outputs = {name: len(fn.to_function_proto().output) for name, fn in ops_onnx.FUNCTIONS.items()}
    assert outputs == {"prompt_attention": 1, "box_attention": 1, "mask_topk": 3}


def test_int8_quantisation_keeps_the_fused_nodes_in_float(graphs, tmp_path):
    """onnxruntime's pre-processing would inline the functions (and quantise the attentions' activation x
    activation MatMuls); fused graphs skip it, so the nodes survive, in float like the float islands."""
    from sam3edge.export.onnx import calibration_feeds, to_int8

    plain, fused, images, text, mask = graphs
    feeds = calibration_feeds(fused, images[:2], text, mask)
    q = onnx.load(str(to_int8(fused["decoder"], tmp_path / "decoder.onnx", feeds["decoder"])))
    counts = Counter(n.op_type for n in q.graph.node if n.domain == "sam3edge")
    assert counts == {"prompt_attention": 6, "box_attention": 3, "mask_topk": 1} and len(q.functions) == 3
    assert any(n.op_type == "QuantizeLinear" for n in q.graph.node)  # the rest of the decoder is int8
    assert not any("inlfunc" in n.name for n in q.graph.node)


def test_inlined_fused_decoder_keeps_the_plain_decoders_float_islands(graphs, tmp_path):
    """OpenVINO int8 reads float islands from the inlined graph: a fused op's body must keep its module scope,
    so the mask head's projection inside ``mask_topk`` stays float as it does in the plain graph (it once lost
    its scope, was quantised, and OpenVINO int8's mask IoU fell from 0.981 to 0.974)."""
    from sam3edge.export.onnx import float_islands
    from sam3edge.ops.onnx import inline

    plain, fused, *_ = graphs
    inlined = inline(onnx.load(str(fused["decoder"])))
    assert all(any(p.key == "pkg.torch.onnx.name_scopes" for p in n.metadata_props) for n in inlined.graph.node)
    onnx.save(inlined, str(tmp_path / "decoder.onnx"))
    kept = set(float_islands(tmp_path / "decoder.onnx"))
    weighted = [n for n in inlined.graph.node if n.op_type in ("MatMul", "Gemm", "Conv")
                and any("mask_decoder" in i for i in n.input)]
    assert weighted and all(n.name in kept for n in weighted)
    # the plain graph computes the same layers without fused ops: as many weighted layers stay int8 in both
    plain_model = onnx.load(str(plain["decoder"]), load_external_data=False)
    plain_int8 = sum(n.op_type in ("MatMul", "Gemm", "Conv") for n in plain_model.graph.node) - \
        len(float_islands(plain["decoder"]))
    fused_int8 = sum(n.op_type in ("MatMul", "Gemm", "Conv") for n in inlined.graph.node) - len(kept)
    assert fused_int8 == plain_int8
