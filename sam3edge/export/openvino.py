"""OpenVINO target: IR (``.xml`` + ``.bin``) in fp32, fp16 or int8 (NNCF post-training quantization).

The graphs are the ONNX target's fp32 graphs converted with ``ov.convert_model`` (one source of
truth for names and shapes). int8: ``nncf.quantize`` with ``ModelType.TRANSFORMER`` (without it
attention models lose almost everything, ENVIRONMENT.md), calibrated by recording the real
pipeline's inputs to each graph, and an ignored scope that keeps the sensitive head arithmetic in
float: the score / presence / box MLPs and the dot-product scoring. On x86 CPUs OpenVINO computes in
bf16 by default; the runner here asks for f32 so verification measures the export, not the hint.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from sam3edge.export.onnx import calibration_feeds, concept_phrases, export_fp32, float_islands

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
    onnx_paths = export_fp32(student, work, calib_images, text, mask, fused=fused)
    if fused:  # OpenVINO reads no model-local functions: the sam3edge nodes become their bodies
        from sam3edge.ops.onnx import inline, rewrite_file

        for path in onnx_paths.values():
            rewrite_file(path, inline)
    feeds = (calibration_feeds(onnx_paths, calib_images, text, mask, phrases=concept_phrases(student))
             if precision == "int8" else {})
    out = {}
    for name, src in onnx_paths.items():
        model = ov.convert_model(str(src))
        if precision == "int8":
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

    logging.getLogger("nncf").setLevel(logging.WARNING)  # its per-layer INFO lines drown the export's own output

    if not feeds:
        raise ValueError("no calibration inputs: pass --calib with at least one image")
    return nncf.quantize(model, nncf.Dataset(feeds), model_type=nncf.ModelType.TRANSFORMER,
                         subset_size=len(feeds), preset=nncf.QuantizationPreset.MIXED,
                         ignored_scope=nncf.IgnoredScope(
                             patterns=list(SENSITIVE) + [re.escape(n) + "(/WithoutBiases)?" for n in keep_float],
                             validate=False))


def openvino_runner(paths: dict, device: str = "CPU", precision_hint: str | None = "f32", threads: int = 0):
    import openvino as ov

    core = ov.Core()
    config = {}
    if precision_hint and device == "CPU":
        config["INFERENCE_PRECISION_HINT"] = precision_hint
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    image = core.compile_model(str(paths["image_encoder"]), device, config)
    decoder = core.compile_model(str(paths["decoder"]), device, config)

    def run(img: np.ndarray, text: np.ndarray, mask: np.ndarray):
        r = image({"image": np.ascontiguousarray(img)[None]})
        f = [r[image.output(i)] for i in range(3)]
        d = decoder({"feat0": f[0], "feat1": f[1], "feat2": f[2], "text": text.astype(np.float32),
                     "text_mask": mask.astype(bool)})
        return tuple(d[decoder.output(i)] for i in range(5))

    if "text_encoder" in paths:
        text = core.compile_model(str(paths["text_encoder"]), device, config)

        def run_text(ids: np.ndarray, attn: np.ndarray):
            r = text({"input_ids": ids, "attention_mask": attn})
            return r[text.output(0)], r[text.output(1)]

        run.text = run_text
    return run
