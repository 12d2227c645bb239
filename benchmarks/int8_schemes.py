"""Which int8 scheme is right on every CPU: the same student quantized four ways for onnxruntime and two ways for
OpenVINO, each run on this CPU's integer kernels and (onnxruntime) with its Q/DQ arithmetic computed exactly.

    python benchmarks/distill_toy.py --fresh      # first: the distilled toy student in runs/distill_toy/run
    python benchmarks/int8_schemes.py             # ~6 min: benchmarks/results/int8_schemes_<KERNELS>.{json,md}

Schemes (onnxruntime static QDQ, per-channel weights, MinMax calibration, the float islands of
sam3edge.export.onnx.float_islands; plain graphs, no fused ops): u8s8 (uint8 activations, int8 weights in
[-127, 127], before issue 19), u8s8-w7 (the same with 7-bit weights), u8u8 (uint8 weights: what sam3edge
writes for ONNX), s8s8. OpenVINO (NNCF): overflow fix on
the first layer only (NNCF's default) or on every layer (what sam3edge writes). "this CPU" runs the graphs
as a user would; "exact" runs the ONNX graph with onnxruntime's optimisations off, so Q -> DQ -> float op
is computed in float: what integer kernels that cannot saturate (x86 VNNI, ARM) compute. The difference
between the two columns is what this CPU's kernels add; on a CPU without VNNI the u8s8 row shows the
16-bit pair-sum saturation.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_students import _median_ms  # noqa: E402
from sam3edge.atomic import atomic_write_text  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _agreement(report: dict) -> float:
    return report["recall"] * report["mask_iou"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, default=REPO / "runs" / "distill_toy" / "run")
    ap.add_argument("--heldout", type=int, default=24)
    ap.add_argument("--heldout-seed", type=int, default=777)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=10)
    args = ap.parse_args(argv)

    import torch
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from sam3edge.data.images import load_image, resize_batch
    from sam3edge.data.orchard import render_scene, scene_rng
    from sam3edge.export.bundle import domain_images, resolve_student_dir
    from sam3edge.export.onnx import _Reader, calibration_feeds, export_fp32, float_islands, int8_ranges
    from sam3edge.export.verify import compare, onnx_runner, torch_runner
    from sam3edge.models.student_io import load_student
    from sam3edge.runtime.cpu import cpu_info

    torch.set_num_threads(args.threads)
    cpu = cpu_info()
    work = REPO / "runs" / "int8_schemes"
    shutil.rmtree(work, ignore_errors=True)
    student = load_student(resolve_student_dir(args.run)).eval()
    calib, _ = resize_batch([load_image(p) for p in domain_images(args.run, None)], student.image_size)
    held, _ = resize_batch([render_scene(scene_rng(args.heldout_seed, i), 224).image for i in range(args.heldout)],
                           student.image_size)
    calib, held = list(calib)[:32], list(held)
    text, mask = student.concepts.features.astype(np.float32), student.concepts.mask.astype(bool)
    ref = torch_runner(student)
    fp32 = export_fp32(student, work / "fp32", calib, text, mask, fused=False)
    feeds = calibration_feeds(fp32, calib, text, mask)
    base = compare(ref, onnx_runner(fp32, threads=args.threads), held, text, mask)
    rows = []

    def timing(paths) -> float:
        run = onnx_runner(paths, threads=args.threads)
        return round(_median_ms(lambda: run(held[0], text, mask), args.runs, warmup=2)[0], 1)

    variants = {"u8s8 (8-bit weights)": (QuantType.QUInt8, QuantType.QInt8, False),
                "u8s8-w7 (7-bit weights)": (QuantType.QUInt8, QuantType.QInt8, True),
                "u8u8": (QuantType.QUInt8, QuantType.QUInt8, False),
                "s8s8": (QuantType.QInt8, QuantType.QInt8, False)}
    for name, (act, weight, reduce) in variants.items():
        out = work / re.sub(r"[^a-z0-9]+", "-", name)
        out.mkdir(parents=True)
        paths = {}
        for g, src in fp32.items():
            pre = out / f"{g}.pre.onnx"
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
            quantize_static(str(pre), str(out / src.name), _Reader(feeds[g]), quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=act, weight_type=weight, reduce_range=reduce,
                            calibrate_method=CalibrationMethod.MinMax, op_types_to_quantize=["Conv", "MatMul", "Gemm"],
                            nodes_to_exclude=float_islands(src),
                            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
            paths[g] = out / src.name
        here = compare(ref, onnx_runner(paths, threads=args.threads), held, text, mask)
        exact = compare(ref, onnx_runner(paths, exact=True), held, text, mask)
        rows.append({"runtime": "onnxruntime", "scheme": name,
                     "max_pair_sum": max(int8_ranges(p)["max_pair_sum"] for p in paths.values()),
                     "this_cpu": _row(here, base), "exact": _row(exact, base), "ms_per_frame": timing(paths)})
        print(json.dumps(rows[-1]), flush=True)
    rows += _openvino_rows(student, work, calib, held, text, mask, feeds, ref, args.threads, args.runs)
    result = {"command": "python benchmarks/int8_schemes.py " + " ".join(argv or sys.argv[1:]),
              "student": str(args.run), "heldout_seed": args.heldout_seed, "heldout_images": args.heldout,
              "concepts": int(len(text)), "threads": args.threads, "cpu": cpu.to_json(), "rows": rows}
    stem = REPO / "benchmarks" / "results" / f"int8_schemes_{cpu.int8_kernels}"
    atomic_write_text(stem.with_suffix(".json"), json.dumps(result, indent=1))
    f = lambda v, fmt: "-" if v is None else format(v, fmt)  # noqa: E731
    md = [f"int8 schemes of the distilled toy student ({student.image_size} px), {args.threads} threads on "
          f"{cpu.describe()} (int8 kernels: {cpu.int8_kernels}); agreement (recall x mask IoU of PyTorch's instances) "
          f"relative to fp32's, max |presence| error vs PyTorch, on {args.heldout} orchard scenes (seed "
          f"{args.heldout_seed}) x {len(text)} concepts. 'exact': the Q/DQ arithmetic computed in float (what "
          "non-saturating kernels, x86 VNNI and ARM, compute).", "",
          "| runtime | scheme | max pair sum | agreement / fp32's (this CPU) | presence error (this CPU) | "
          "agreement / fp32's (exact) | presence error (exact) | ms / frame (this CPU) |",
          "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        e = r.get("exact") or {}
        md.append(f"| {r['runtime']} | {r['scheme']} | {r['max_pair_sum']} | {r['this_cpu']['of_fp32']:.1%} | "
                  f"{r['this_cpu']['presence_error']:.4f} | {f(e.get('of_fp32'), '.1%')} | "
                  f"{f(e.get('presence_error'), '.4f')} | {r['ms_per_frame']:.1f} |")
    atomic_write_text(stem.with_suffix(".md"), "\n".join(md) + "\n")
    print("\n".join(md))
    return 0


def _row(report: dict, base: dict) -> dict:
    return {"of_fp32": _agreement(report) / _agreement(base), "recall": report["recall"],
            "mask_iou": report["mask_iou"], "score_mae": report["score_mae"],
            "presence_error": report["max_abs_error"]["presence"]}


def _openvino_rows(student, work, calib, held, text, mask, feeds, ref, threads, runs) -> list[dict]:
    import nncf
    import openvino as ov
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

    from sam3edge.export.onnx import export_fp32, float_islands
    from sam3edge.export.openvino import SENSITIVE, int8_ranges, openvino_runner
    from sam3edge.export.verify import compare

    src = export_fp32(student, work / "fp32-ov", calib, text, mask, fused=False)
    base = compare(ref, openvino_runner({g: _ir(p, work / "ov-fp32", None) for g, p in src.items()}, threads=threads),
                   held, text, mask)
    rows = []
    for name, fix in (("first layer only (NNCF default)", OverflowFix.FIRST_LAYER),
                      ("every layer (7-bit weights)", OverflowFix.ENABLE)):
        paths = {}
        for g, p in src.items():
            model = nncf.quantize(ov.convert_model(str(p)), nncf.Dataset(feeds[g]),
                                  model_type=nncf.ModelType.TRANSFORMER, subset_size=len(feeds[g]),
                                  preset=nncf.QuantizationPreset.MIXED,
                                  advanced_parameters=AdvancedQuantizationParameters(overflow_fix=fix),
                                  ignored_scope=nncf.IgnoredScope(patterns=list(SENSITIVE) + [
                                      re.escape(n) + "(/WithoutBiases)?" for n in float_islands(p)], validate=False))
            paths[g] = _ir(p, work / f"ov-{fix.value}", model)
        run = openvino_runner(paths, threads=threads)
        here = compare(ref, run, held, text, mask)
        rows.append({"runtime": "openvino", "scheme": f"overflow fix: {name}",
                     "max_pair_sum": max(int8_ranges(p)["max_pair_sum"] for p in paths.values()),
                     "this_cpu": _row(here, base), "exact": None,
                     "ms_per_frame": round(_median_ms(lambda r=run: r(held[0], text, mask), runs, warmup=2)[0], 1)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def _ir(onnx_path: Path, folder: Path, model) -> Path:
    import openvino as ov

    folder.mkdir(parents=True, exist_ok=True)
    out = folder / onnx_path.with_suffix(".xml").name
    ov.save_model(model if model is not None else ov.convert_model(str(onnx_path)), str(out), compress_to_fp16=False)
    return out


if __name__ == "__main__":
    raise SystemExit(main())
