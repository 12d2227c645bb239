"""OpenVINO target: IR (``.xml`` + ``.bin``) in fp32, fp16 or int8 (NNCF post-training quantization).

The graphs are the ONNX target's fp32 graphs converted with ``ov.convert_model`` (one source of
truth for names and shapes). int8: ``nncf.quantize`` with ``ModelType.TRANSFORMER`` (without it
attention models lose almost everything, ENVIRONMENT.md), calibrated by recording the real
pipeline's inputs to each graph, and an ignored scope that keeps the sensitive head arithmetic in
float: the score / presence / box MLPs and the dot-product scoring. Weights are 7-bit on every layer
(NNCF's ``OverflowFix.ENABLE``; scheme ``u8s8-w7`` of :mod:`sam3edge.runtime.int8_scheme`): with NNCF's
default (first layer only) the toy student's presence moved by 0.067 on an AVX2-only CPU, whose 16-bit
pair sums saturate, against 0.001 with it. On x86 CPUs OpenVINO computes in
bf16 by default; the runner here asks for f32 so verification measures the export, not the hint.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from sam3edge.export.onnx import calibration_feeds, concept_phrases, export_fp32, float_islands, quantizes
from sam3edge.runtime.backends.openvino_backend import shared_core
from sam3edge.runtime.names import DECODER_GRAPH, EXEMPLAR_GRAPH, IMAGE_GRAPH, TEXT_GRAPH

SENSITIVE = (".*box_head.*", ".*presence_head.*", ".*dot_product_scoring.*", ".*ref_point_head.*")


def export_openvino(student, out_dir: Path, precision: str, calib_images: list[np.ndarray], text: np.ndarray,
                    mask: np.ndarray, fused: bool = False) -> dict[str, Path]:
    """All graphs of ``student`` as OpenVINO IR at ``precision`` in ``out_dir``; returns name -> ``.xml`` path.

    ``fused``: converted from the fused-op ONNX; OpenVINO's ONNX frontend does not read model-local
    functions, so the ``sam3edge`` nodes are first replaced by their ONNX function bodies.
    """
    import openvino as ov

    if precision not in ("fp32", "fp16", "int8"):
        raise ValueError(f"OpenVINO supports precisions fp32, fp16, int8; got {precision!r}")
    work = out_dir / ".onnx-work"
    onnx_paths = export_fp32(student, work, calib_images, text, mask, fused=fused, exemplars=True)
    if fused:  # OpenVINO reads no model-local functions: the sam3edge nodes become their bodies
        from sam3edge.ops.onnx import inline, rewrite_file

        for path in onnx_paths.values():
            rewrite_file(path, inline)
    feeds = (calibration_feeds(onnx_paths, calib_images, text, mask, phrases=concept_phrases(student))
             if precision == "int8" else {})
    out = {}
    for name, src in onnx_paths.items():
        model = ov.convert_model(str(src))
        if precision == "int8" and quantizes(student, name):
            model = _quantize(model, feeds[name], float_islands(src))
        path = out_dir / f"{name}.xml"
        ov.save_model(model, str(path), compress_to_fp16=precision == "fp16")
        out[name] = path
    shutil.rmtree(work)
    return out


def _quantize(model, feeds: list[dict], keep_float: list[str]):
    """NNCF int8 of an IR converted from ONNX; ``keep_float``: ONNX node names to leave in float (a converted
    Conv is named ``NAME/WithoutBiases``; attention MatMuls fused into SDPA keep ``NAME``)."""
    import logging
    import re

    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

    logging.getLogger("nncf").setLevel(logging.WARNING)  # its per-layer INFO lines drown the export's own output

    if not feeds:
        raise ValueError("no calibration inputs: pass --calib with at least one image")
    return nncf.quantize(model, nncf.Dataset(feeds), model_type=nncf.ModelType.TRANSFORMER,
                         subset_size=len(feeds), preset=nncf.QuantizationPreset.MIXED,
                         advanced_parameters=AdvancedQuantizationParameters(overflow_fix=OverflowFix.ENABLE),
                         ignored_scope=nncf.IgnoredScope(
                             patterns=list(SENSITIVE) + [re.escape(n) + "(/WithoutBiases)?" for n in keep_float],
                             validate=False))


def int8_ranges(path: Path) -> dict:
    """What an int8 IR's integer kernels multiply: ``weight_max`` (largest |value| of its int8 / uint8 weight
    constants), ``activation_types`` and ``max_pair_sum`` as :func:`sam3edge.export.onnx.int8_ranges`.

    NNCF stores a quantized weight as an integer Constant -> Convert -> (Subtract) -> Multiply; activations
    are FakeQuantize nodes of 256 levels (the CPU plugin runs them as uint8). Only weights that reach a
    (Group)Convolution or MatMul count, as in the ONNX reader: a text encoder's int8 token table feeds a
    Gather (a lookup, no integer product), and NNCF quantizes it to the full int8 range.
    """
    import openvino as ov

    model = shared_core().read_model(str(path))
    weight_max, fake_quantize = 0, False
    for op in model.get_ops():
        kind = op.get_type_name()
        if kind == "FakeQuantize":
            fake_quantize = True
        elif kind == "Constant" and op.get_element_type() in (ov.Type.i8, ov.Type.u8) and \
                len(op.get_output_partial_shape(0)) >= 2 and \
                any(t.get_node().get_type_name() == "Convert" for t in op.output(0).get_target_inputs()) and \
                _feeds_a_product(op):
            values = op.get_data().astype(np.int64)
            if op.get_element_type() == ov.Type.u8:  # asymmetric weights: the kernel multiplies value - 128
                values = values - 128
            weight_max = max(weight_max, int(np.abs(values).max(initial=0)))
    return {"weight_types": ["int8"] if weight_max else [], "weight_max": weight_max,
            "activation_types": ["uint8"] if fake_quantize else [],
            "max_pair_sum": 2 * 255 * weight_max if fake_quantize else 0}


_DEQUANTIZE = ("Convert", "Subtract", "Multiply", "Reshape", "Transpose", "Unsqueeze")
_PRODUCTS = ("MatMul", "Convolution", "GroupConvolution", "ConvolutionBackpropData", "GroupConvolutionBackpropData")


def _feeds_a_product(constant) -> bool:
    """Whether an integer weight constant reaches a product op through its dequantize chain."""
    todo, seen = [constant], set()
    while todo:
        node = todo.pop()
        for out in node.outputs():
            for target in out.get_target_inputs():
                nxt = target.get_node()
                kind = nxt.get_type_name()
                if kind in _PRODUCTS:
                    return True
                if kind in _DEQUANTIZE and nxt.get_friendly_name() not in seen:
                    seen.add(nxt.get_friendly_name())
                    todo.append(nxt)
    return False


def openvino_runner(paths: dict, device: str = "CPU", precision_hint: str | None = "f32", threads: int = 0):
    core = shared_core()
    config = {}
    if precision_hint and device == "CPU":
        config["INFERENCE_PRECISION_HINT"] = precision_hint
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    from sam3edge.export.verify import with_exemplars

    image = core.compile_model(str(paths[IMAGE_GRAPH]), device, config)
    decoder = core.compile_model(str(paths[DECODER_GRAPH]), device, config)
    exemplar = core.compile_model(str(paths[EXEMPLAR_GRAPH]), device, config) if EXEMPLAR_GRAPH in paths else None

    def exemplars(feat2, boxes, labels):
        r = exemplar({"feat2": feat2, "boxes": boxes, "box_labels": labels})
        return r[exemplar.output(0)], r[exemplar.output(1)]

    def run(img: np.ndarray, text: np.ndarray, mask: np.ndarray, boxes=None, labels=None):
        r = image({"image": np.ascontiguousarray(img)[None]})
        f = [r[image.output(i)] for i in range(3)]
        text, mask = with_exemplars(text, mask, exemplars, f[2], boxes, labels)
        d = decoder({"feat0": f[0], "feat1": f[1], "feat2": f[2], "text": text, "text_mask": mask})
        return tuple(d[decoder.output(i)] for i in range(5))

    run.exemplars = exemplar is not None

    if TEXT_GRAPH in paths:
        text = core.compile_model(str(paths[TEXT_GRAPH]), device, config)

        def run_text(ids: np.ndarray, attn: np.ndarray):
            r = text({"input_ids": ids, "attention_mask": attn})
            return r[text.output(0)], r[text.output(1)]

        run.text = run_text
    return run


def verification_runner(paths: dict[str, Path], precision: str):
    """(runner, what it runs): OpenVINO on this host's CPU at f32 inference precision (the export target contract)."""
    from sam3edge.runtime.cpu import cpu_info

    return openvino_runner(paths), f"OpenVINO CPU ({cpu_info().describe()}), f32 inference precision"
