"""ONNX target: fp32, fp16 and int8 (static QDQ, per-channel, calibrated on domain images).

* fp32: ``torch.onnx.export(dynamo=True)``, opset 18, the prompt axis dynamic (names and shapes
  from :mod:`sam3edge.export.spec`).
* fp16: the fp32 graph with weights and arithmetic in float16 (onnxruntime's converter), inputs and
  outputs kept float32 / uint8 so the runtime feeds every precision alike.
* int8: onnxruntime static quantization, QDQ format, per-channel uint8 weights (symmetric about 128) and
  uint8 activations (scheme ``u8u8``, :mod:`sam3edge.runtime.int8_scheme`: its kernels cannot saturate on
  any CPU, unlike u8 x s8 on x86 CPUs without VNNI), calibrated by running the real pipeline: the
  calibration images through the image graph (its own inputs), and their fp32 features with every
  concept through the decoder.
  Dynamic int8 is slower than fp32 on x86 CPUs (ENVIRONMENT.md), so it is not offered.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import torch

from sam3edge.export.graphs import (
    DECODER_INPUTS,
    DECODER_OUTPUTS,
    EXEMPLAR_INPUTS,
    EXEMPLAR_OUTPUTS,
    IMAGE_OUTPUTS,
    DecoderGraph,
    ExemplarGraph,
    ImageEncoderGraph,
    TextEncoderGraph,
)
from sam3edge.runtime.exemplars import PADDING_LABEL
from sam3edge.runtime.names import DECODER_GRAPH, EXEMPLAR_GRAPH, IMAGE_GRAPH, MAX_EXEMPLARS, TEXT_GRAPH

OPSET = 18


def export_fp32(student, out_dir: Path, images: list[np.ndarray], text: np.ndarray, mask: np.ndarray,
                fused: bool = False, exemplars: bool = False) -> dict[str, Path]:
    """Write ``image_encoder.onnx``, ``decoder.onnx`` (and ``text_encoder.onnx`` for a student with its own
    text encoder) in fp32 into ``out_dir``; returns name -> path.

    Every target starts from these graphs. images / text / mask: the domain's images (the first is the
    example input) and the concepts' features. ``fused``: the decoder's attentions and mask path become
    ``sam3edge``-domain nodes with ONNX function bodies (:mod:`sam3edge.ops.onnx`) instead of their plain
    decomposition. ``exemplars``: also ``exemplar_encoder.onnx``, and the decoder's token axis dynamic (text tokens,
    then any exemplar tokens). A process exports the same student with the same inputs once
    (:mod:`sam3edge.export.graph_memo`); later calls copy those graphs.
    """
    from sam3edge.export.graph_memo import graph_key, reuse_graphs

    if not images:
        raise ValueError("export needs at least one image (verification, and calibration for int8)")
    img = np.ascontiguousarray(images[0])
    two = np.arange(2) % len(text)  # two example prompts: torch.export specialises a size-1 dimension to a constant
    text, mask = np.ascontiguousarray(text[two]), np.ascontiguousarray(mask[two])
    options = {"fused": bool(fused), "exemplars": bool(exemplars), "opset": OPSET, "max_exemplars": MAX_EXEMPLARS}
    weights = sum(t.numel() * t.element_size() for t in student.state_dict().values())
    return reuse_graphs(lambda: graph_key(student, (img, text, mask), options), Path(out_dir),
                        lambda folder: _export_fp32(student, folder, img, text, mask, fused, exemplars),
                        expected_bytes=weights)


def _export_fp32(student, out_dir: Path, image: np.ndarray, text: np.ndarray, mask: np.ndarray, fused: bool,
                 exemplars: bool) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    image_graph, decoder = ImageEncoderGraph(student).eval(), DecoderGraph(student).eval()
    img = torch.from_numpy(image)[None]
    text, mask = torch.from_numpy(text), torch.from_numpy(mask)
    paths = {IMAGE_GRAPH: out_dir / "image_encoder.onnx", DECODER_GRAPH: out_dir / "decoder.onnx"}
    prompts = torch.export.Dim("prompts", min=1, max=1024)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        levels = image_graph(img)
        torch.onnx.export(image_graph, (img,), dynamo=True, opset_version=OPSET, input_names=["image"],
                          output_names=list(IMAGE_OUTPUTS), verbose=False).save(str(paths[IMAGE_GRAPH]))
        dyn = {"feat0": None, "feat1": None, "feat2": None, "text": {0: prompts}, "text_mask": {0: prompts}}
        if exemplars:
            tokens = torch.export.Dim("tokens", min=1, max=text.shape[1] + MAX_EXEMPLARS + 1)
            dyn["text"], dyn["text_mask"] = {0: prompts, 1: tokens}, {0: prompts, 1: tokens}
        _export_decoder(decoder, (*levels, text.float(), mask.bool()), dyn, paths[DECODER_GRAPH], fused)
    if exemplars:
        paths[EXEMPLAR_GRAPH] = export_exemplar_encoder(student, levels[2], out_dir / "exemplar_encoder.onnx")
    if student.has_text_encoder:
        paths[TEXT_GRAPH] = export_text_encoder(student, out_dir / "text_encoder.onnx")
    return paths


def export_text_encoder(student, path: Path) -> Path:
    """Write the student's text encoder graph (input_ids, attention_mask -> text, text_mask; any number of
    phrases) in fp32 ONNX at ``path``."""
    ids, attn = text_encoder_inputs(["a ripe apple", "leaf"])
    prompts = torch.export.Dim("prompts", min=1, max=1024)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(TextEncoderGraph(student).eval(), (torch.from_numpy(ids), torch.from_numpy(attn)),
                          dynamo=True, opset_version=OPSET, input_names=["input_ids", "attention_mask"],
                          output_names=["text", "text_mask"],
                          dynamic_shapes={"input_ids": {0: prompts}, "attention_mask": {0: prompts}},
                          verbose=False).save(str(path))
    return path


def exemplar_example(prompts: int = 2, boxes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Example exemplar inputs: ``boxes`` float32 [prompts, boxes, 4] (normalised xyxy, spread over the frame) and
    ``box_labels`` int64 [prompts, boxes]: positives, a negative, and in the last prompt padding only (a concept
    without boxes, whose tokens must all be masked)."""
    rng = np.random.default_rng(0)
    lo = rng.uniform(0.05, 0.55, (prompts, boxes, 2))
    xyxy = np.concatenate([lo, lo + rng.uniform(0.1, 0.4, (prompts, boxes, 2))], -1).clip(0, 1).astype(np.float32)
    labels = np.ones((prompts, boxes), np.int64)
    labels[:, -1] = 0
    labels[-1] = PADDING_LABEL
    return xyxy, labels


def export_exemplar_encoder(student, feat2: torch.Tensor, path: Path) -> Path:
    """Write the exemplar encoder graph (feat2, boxes, box_labels -> tokens, tokens_mask; any number of prompts and
    of boxes per prompt) in fp32 ONNX at ``path``."""
    boxes, labels = exemplar_example()
    prompts = torch.export.Dim("prompts", min=1, max=1024)
    count = torch.export.Dim("exemplars", min=1, max=MAX_EXEMPLARS)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(ExemplarGraph(student).eval(), (feat2, torch.from_numpy(boxes), torch.from_numpy(labels)),
                          dynamo=True, opset_version=OPSET, input_names=list(EXEMPLAR_INPUTS),
                          output_names=list(EXEMPLAR_OUTPUTS),
                          dynamic_shapes={"feat2": None, "boxes": {0: prompts, 1: count},
                                          "box_labels": {0: prompts, 1: count}},
                          verbose=False).save(str(path))
    return path


def _export_decoder(decoder, args: tuple, dynamic_shapes: dict, path: Path, fused: bool) -> None:
    options = dict(dynamo=True, opset_version=OPSET, input_names=list(DECODER_INPUTS),
                   output_names=list(DECODER_OUTPUTS), dynamic_shapes=dynamic_shapes, verbose=False)
    if not fused:
        torch.onnx.export(decoder, args, **options).save(str(path))
        return
    import onnx

    from sam3edge.ops import fused_ops
    from sam3edge.ops.onnx import attach_functions, translation_table

    with fused_ops():
        program = torch.onnx.export(decoder, args, custom_translation_table=translation_table(), **options)
    onnx.save(attach_functions(program.model_proto), str(path))


def text_encoder_inputs(phrases: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """``input_ids`` and ``attention_mask`` (int64 [P, 32]) of phrases, as the runtime's tokenizer makes them."""
    from sam3edge.runtime.names import CONTEXT_LENGTH
    from sam3edge.runtime.tokenizer import ClipTokenizer

    return ClipTokenizer.default().encode(list(phrases), context_length=CONTEXT_LENGTH)


def to_fp16(src: Path, dst: Path) -> Path:
    """Float16 weights and arithmetic; float32 / uint8 / bool graph inputs and outputs kept as they are."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = OnnxModel(convert_float_to_float16(onnx.load(str(src)), keep_io_types=True, disable_shape_infer=False))
    # The converter inserts some Casts after the nodes that read them and leaves stale intermediate types (a
    # Resize's float scales typed float16): onnxruntime tolerates both, onnx.checker and TensorRT do not.
    model.topological_sort()
    del model.model.graph.value_info[:]
    onnx.save(model.model, str(dst))
    return dst


class _Reader:
    """onnxruntime CalibrationDataReader over a list of feed dicts."""

    def __init__(self, feeds: list[dict]):
        self.feeds, self.i = feeds, 0

    def get_next(self):
        if self.i >= len(self.feeds):
            return None
        self.i += 1
        return self.feeds[self.i - 1]

    def rewind(self):
        self.i = 0


def calibration_feeds(fp32: dict[str, Path], images: list[np.ndarray], text: np.ndarray, mask: np.ndarray,
                      prompts_per_feed: int = 8, phrases: list[str] | None = None) -> dict[str, list[dict]]:
    """The inputs each graph sees in the real pipeline: images, then their fp32 features x every concept
    (and the concepts' token ids for a text encoder graph)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(fp32[IMAGE_GRAPH]), providers=["CPUExecutionProvider"])
    image_feeds = [{"image": img[None]} for img in images]
    decoder_feeds = []
    for feed in image_feeds:
        levels = session.run(None, feed)
        for s in range(0, len(text), prompts_per_feed):
            decoder_feeds.append({"feat0": levels[0], "feat1": levels[1], "feat2": levels[2],
                                  "text": text[s:s + prompts_per_feed].astype(np.float32),
                                  "text_mask": mask[s:s + prompts_per_feed].astype(bool)})
    feeds = {IMAGE_GRAPH: image_feeds, DECODER_GRAPH: decoder_feeds}
    if TEXT_GRAPH in fp32:
        if not phrases:
            raise ValueError("calibrating a text encoder graph needs the concept phrases")
        ids, attn = text_encoder_inputs(phrases)
        n = prompts_per_feed
        feeds[TEXT_GRAPH] = [{"input_ids": ids[s:s + n], "attention_mask": attn[s:s + n]}
                                 for s in range(0, len(ids), n)]
    return feeds


# module paths whose layers int8 keeps in float (see float_islands)
# (a fused op's inlined body carries the op's scope, e.g. ``mask_topk``: the mask head's projection lives there)
FLOAT_MODULES = (".neck.", "mask_decoder", ".mask_topk.", "box_rpb_embed", "vision_cross_attn", "box_head",
                 "presence_head", "ref_point_head", "dot_product_scoring")


def float_islands(path: Path) -> list[str]:
    """The Conv / MatMul / Gemm nodes of an fp32 graph that int8 keeps in float, by structure:

    * MatMuls of two activations (EfficientViT's linear attention, the decoder's QK^T / AV and the mask
      dot product): both operands' ranges move with the input, and one int8 such node alone wrecked the
      toy image encoder's output;
    * grouped / depthwise convolutions: one 3x3 filter per channel has few weights to average its
      rounding over (the known weak spot of int8 MobileNet-style backbones), and they cost few FLOPs;
    * the image encoder's FPN neck and the decoder's mask path (``mask_decoder``): every mask pixel
      passes through them, so their rounding shows up directly as mask IoU;
    * the decoder's box geometry (box relative-position-bias MLPs, box / reference-point heads), its
      cross-attention to the image, and the presence / scoring heads: the layers whose lone int8
      rounding moved the toy student's outputs most (per-node sensitivity, measured).
    ``FLOAT_MODULES`` names them; every other Conv / MatMul / Gemm (backbone, text-side attention, MLPs)
    is int8. Measured figures: docs/notes.md (Export) and benchmarks/results/export_toy_*.md.
    """
    import ast

    import onnx

    model = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    keep = []
    for n in model.graph.node:
        if n.op_type not in ("Conv", "MatMul", "Gemm"):
            continue
        scopes = [p.value for p in n.metadata_props if p.key == "pkg.torch.onnx.name_scopes"]
        scope = ".".join(ast.literal_eval(scopes[0])) if scopes else n.name
        weights = [i for i in n.input[1:2] if i in inits]
        groups = next((a.i for a in n.attribute if a.name == "group"), 1)
        if (n.op_type == "MatMul" and not weights and not any(i in inits for i in n.input)) or groups > 1 or \
                any(part in f".{name}." for name in [scope, *weights] for part in FLOAT_MODULES):
            keep.append(n.name)
    return keep


def to_int8(src: Path, dst: Path, feeds: list[dict], symmetric: bool = False, islands: bool = True,
            only: list[str] | None = None) -> Path:
    """Static QDQ int8 of ``src``: per-channel int8 weights, MinMax calibration on the real pipeline's inputs,
    the :func:`float_islands` kept in float (``islands=False``: every Conv / MatMul / Gemm int8; ``only``: just
    these nodes int8, the rest float, as a per-layer sensitivity measurement does).

    Activations and weights are uint8 (scheme ``u8u8``: weights symmetric about 128; onnxruntime's u8 x u8
    kernels sum in 32 bits on every CPU, while u8 x s8 saturates on x86 CPUs without VNNI), or with
    ``symmetric`` int8 activations with zero points 0, int8 weights and float biases (scheme ``s8s8-w8``):
    the only QDQ form TensorRT's parser takes.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if not feeds:
        raise ValueError(f"no calibration inputs for {src.name}: pass --calib with at least one image")
    pre = dst.with_name(dst.stem + ".pre.onnx")
    # onnxruntime's graph optimisation inlines model-local functions: a graph with sam3edge fused-op nodes is
    # pre-processed without it, so the nodes (kept in float, like the float islands) survive quantisation.
    from sam3edge.ops.onnx import file_has_custom_nodes

    fused = file_has_custom_nodes(src)
    try:
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True, skip_optimization=fused)
    except Exception:  # pre-processing is an optimisation; quantise the graph as exported if it fails
        pre = src
    ops = ["Conv", "MatMul", "Gemm"]  # weight-carrying ops; the head arithmetic (softmax, sigmoid, top-k) stays float
    options = {"ActivationSymmetric": symmetric, "WeightSymmetric": True}
    if symmetric:
        options["QuantizeBias"] = False  # TensorRT has no int32 bias DequantizeLinear
    exclude = float_islands(src) if islands and only is None else []
    quantize_static(str(pre), str(dst), _Reader(feeds), quant_format=QuantFormat.QDQ, per_channel=True,
                    nodes_to_quantize=only,
                    activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
                    weight_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
                    calibrate_method=CalibrationMethod.MinMax, op_types_to_quantize=ops, nodes_to_exclude=exclude,
                    extra_options=options)
    if pre != src:
        pre.unlink(missing_ok=True)
    return dst


def export_onnx(student, out_dir: Path, precision: str, calib_images: list[np.ndarray], text: np.ndarray,
                mask: np.ndarray, fused: bool = False, exemplars: bool = True) -> dict[str, Path]:
    """All graphs of ``student`` at ``precision`` in ``out_dir`` (fp32 intermediates removed).

    ``fused``: the decoder carries the ``sam3edge`` fused-op nodes (onnxruntime runs their function
    bodies; quantisation leaves them in float, as the float-island rules keep those layers anyway).
    """
    if precision not in ("fp32", "fp16", "int8"):
        raise ValueError(f"ONNX supports precisions fp32, fp16, int8; got {precision!r}")
    if precision == "fp32":
        return export_fp32(student, out_dir, calib_images, text, mask, fused=fused, exemplars=exemplars)
    work = out_dir / f".{precision}-work"
    fp32 = export_fp32(student, work, calib_images, text, mask, fused=fused, exemplars=exemplars)
    out = {}
    if precision == "fp16":
        for name, path in fp32.items():
            out[name] = to_fp16(path, out_dir / path.name)
    else:
        feeds = calibration_feeds(fp32, calib_images, text, mask, phrases=concept_phrases(student))
        for name, path in fp32.items():
            out[name] = (to_int8(path, out_dir / path.name, feeds[name]) if quantizes(student, name) else
                         Path(shutil.copyfile(path, out_dir / path.name)))
    shutil.rmtree(work)
    return out


def quantizes(student, graph: str) -> bool:
    """Whether an int8 export of ``student`` quantizes ``graph`` (the targets with int8 arithmetic ask here: ONNX,
    OpenVINO, TensorRT; Core ML's int8 is weight-only, with no arithmetic to slow down). Never the exemplar encoder
    (a few boxes per call: float costs nothing and keeps its ROI geometry exact); the decoder as the student's spec
    says (:attr:`~sam3edge.models.student_spec.StudentSpec.int8_decoder`: not for fast heads); all others."""
    if graph == EXEMPLAR_GRAPH:
        return False
    return student.spec.int8_decoder if graph == DECODER_GRAPH else True


def concept_phrases(student) -> list[str] | None:
    return list(student.concepts.phrases) if student.concepts is not None else None


def int8_ranges(path: Path) -> dict:
    """What a QDQ graph's integer kernels multiply, read from the file: ``weight_types`` of the weights feeding a
    quantized Conv / MatMul / Gemm, ``weight_max`` (largest |q - zero point|), ``activation_types``, and
    ``max_pair_sum``: the largest |a0 w0 + a1 w1| that u8 x s8 kernels without VNNI sum in 16 bits (<= 32767
    cannot saturate; 0 when no weight is int8, as u8 x u8 kernels widen first)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path), load_external_data=False)
    inits = {i.name: i for i in model.graph.initializer}
    consumers: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    weight_max, signed_max, weight_types, act_types = 0, 0, set(), set()
    for n in model.graph.node:
        if n.op_type != "DequantizeLinear" or not any(  # an operand (not a bias) of a quantized op
                c.op_type in ("Conv", "MatMul", "Gemm") and n.output[0] in c.input[:2]
                for c in consumers.get(n.output[0], [])):
            continue
        zp = n.input[2] if len(n.input) > 2 else ""
        if n.input[0] in inits:  # a weight
            q = numpy_helper.to_array(inits[n.input[0]])
            weight_types.add(q.dtype.name)
            z = numpy_helper.to_array(inits[zp]).astype(np.int64) if zp in inits else np.zeros((), np.int64)
            axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
            if z.ndim == 1 and q.ndim > 1:
                z = z.reshape([-1 if d == axis % q.ndim else 1 for d in range(q.ndim)])
            size = int(np.abs(q.astype(np.int64) - z).max(initial=0))
            weight_max = max(weight_max, size)
            if q.dtype == np.int8:  # kernels multiply the raw int8 values
                signed_max = max(signed_max, int(np.abs(q.astype(np.int64)).max(initial=0)))
        else:  # an activation; x86 kernels shift int8 activations by 128 into uint8, so either spans 255
            act_types.add(numpy_helper.to_array(inits[zp]).dtype.name if zp in inits else "uint8")
    return {"weight_types": sorted(weight_types), "weight_max": weight_max, "activation_types": sorted(act_types),
            "max_pair_sum": 2 * 255 * signed_max}


def verification_runner(paths: dict[str, Path], precision: str):
    """(runner, what it runs): onnxruntime on this host's CPU runs every ONNX graph (the export target contract)."""
    from sam3edge.export.verify import onnx_runner
    from sam3edge.runtime.cpu import cpu_info

    return onnx_runner(paths), f"onnxruntime CPU ({cpu_info().describe()})"
