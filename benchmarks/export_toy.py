"""Export the distilled toy student to ONNX fp32 / fp16 / int8 and measure size, CPU latency and agreement.

    python benchmarks/distill_toy.py --fresh          # first: the distilled student in runs/distill_toy/run
    python benchmarks/export_toy.py                   # ~3 min: writes benchmarks/results/export_toy.{json,md}

Each bundle is calibrated (int8) on the run's own training images and verified on held-out orchard
scenes (seed 777) against the PyTorch student: recall of PyTorch's kept instances and their mask
IoU. Latency: onnxruntime CPU with ``--threads`` threads, median of ``--runs`` runs after warm-up, of
the image encoder (one 256 px frame) and of the decoder (all concepts of the bundle at once).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_students import _median_ms  # noqa: E402
from sam3edge.atomic import atomic_write_text  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _graph_calls(target: str, paths: dict, threads: int, precision: str, frame: np.ndarray, text, mask):
    """Zero-argument calls of the image encoder and of the decoder (all concepts), for timing."""
    if target == "onnx":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        img = ort.InferenceSession(str(paths["image_encoder"]), opts, providers=["CPUExecutionProvider"])
        dec = ort.InferenceSession(str(paths["decoder"]), opts, providers=["CPUExecutionProvider"])
        feats = img.run(None, {"image": frame})
        feed = dict(zip(("feat0", "feat1", "feat2"), feats)) | {"text": text, "text_mask": mask}
        return (lambda: img.run(None, {"image": frame})), (lambda: dec.run(None, feed))
    import openvino as ov

    config = {"INFERENCE_NUM_THREADS": threads} | ({} if precision == "fp16" else {"INFERENCE_PRECISION_HINT": "f32"})
    core = ov.Core()
    img = core.compile_model(str(paths["image_encoder"]), "CPU", config)
    dec = core.compile_model(str(paths["decoder"]), "CPU", config)
    r = img({"image": frame})
    feed = {f"feat{i}": r[img.output(i)] for i in range(3)} | {"text": text, "text_mask": mask}
    return (lambda: img({"image": frame})), (lambda: dec(feed))


def main(argv=None) -> int:
    import onnxruntime as ort

    from sam3edge.data.images import resize_batch
    from sam3edge.data.orchard import render_scene, scene_rng
    from sam3edge.export.bundle import export_bundle
    from sam3edge.export.openvino import openvino_runner
    from sam3edge.export.verify import compare, onnx_runner, torch_runner
    from sam3edge.models.student_io import load_student

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, default=REPO / "runs" / "distill_toy" / "run")
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "export_toy")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--heldout", type=int, default=24, help="held-out scenes for the agreement figures")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    student = load_student(args.run / "student").eval()
    held = [render_scene(scene_rng(777, i), 224).image for i in range(args.heldout)]
    held, _ = resize_batch(held, student.image_size)
    text, mask = student.concepts.features.astype(np.float32), student.concepts.mask.astype(bool)
    ref = torch_runner(student)
    rows = []
    for target, precision in [(t, p) for t in ("onnx", "openvino") for p in ("fp32", "fp16", "int8")]:
        out = args.work / f"toy-{target}-{precision}.sam3edge"
        t0 = time.time()
        manifest = export_bundle(args.run, out, target, precision, progress=False)
        export_s = time.time() - t0
        paths = {k: out / g["file"] for k, g in manifest["graphs"].items()}
        if target == "onnx":
            runner = onnx_runner(paths, threads=args.threads)
        else:  # fp16 IR runs in the CPU's own precision (bf16 here); fp32 / int8 with the f32 hint
            runner = openvino_runner(paths, precision_hint=None if precision == "fp16" else "f32",
                                     threads=args.threads)
        agree = compare(ref, runner, list(held), text, mask)
        img_fn, dec_fn = _graph_calls(target, paths, args.threads, precision, np.ascontiguousarray(held[0])[None],
                                      text, mask)
        rows.append({
            "target": target, "precision": precision, "export_s": round(export_s, 1),
            "graph_mb": round(sum((out / f).stat().st_size for f in manifest["files"] if f.startswith("graphs/"))
                              / 1e6, 2),
            "image_encoder_ms": round(_median_ms(img_fn, args.runs, warmup=3)[0], 2),
            "decoder_ms": round(_median_ms(dec_fn, args.runs, warmup=3)[0], 2),
            "concepts": int(len(text)), "recall_vs_pytorch": agree["recall"], "mask_iou_vs_pytorch": agree["mask_iou"],
            "score_mae": agree["score_mae"], "reference_instances": agree["reference_instances"],
        })
        print(json.dumps(rows[-1]))
    for r in rows:
        fp32 = next(x for x in rows if x["target"] == r["target"] and x["precision"] == "fp32")
        r["agreement_of_fp32"] = ((r["recall_vs_pytorch"] * r["mask_iou_vs_pytorch"])
                                  / (fp32["recall_vs_pytorch"] * fp32["mask_iou_vs_pytorch"]))
    result = {"command": "python benchmarks/export_toy.py " + " ".join(argv or []), "student": str(args.run),
              "heldout_seed": 777, "heldout_images": args.heldout, "threads": args.threads, "rows": rows,
              "host": {"machine": platform.machine(), "processor": platform.processor(),
                       "onnxruntime": ort.__version__}}
    out = REPO / "benchmarks" / "results" / "export_toy.json"
    atomic_write_text(out, json.dumps(result, indent=1))
    md = [f"Toy student (distilled, 256 px) exported to ONNX; onnxruntime CPU, {args.threads} threads, "
          f"{platform.machine()}; agreement vs PyTorch on {args.heldout} held-out orchard scenes (seed 777) x "
          f"{len(text)} concepts.", "",
          "| target | precision | graphs MB | image encoder ms | decoder ms (all concepts) | recall vs PyTorch | "
          "mask IoU vs PyTorch | score MAE | agreement / fp32's |", "|---|---|---|---|---|---|---|---|---|"]
    md += [f"| {r['target']} | {r['precision']} | {r['graph_mb']:.2f} | {r['image_encoder_ms']:.1f} | "
           f"{r['decoder_ms']:.1f} | "
           f"{r['recall_vs_pytorch']:.3f} | {r['mask_iou_vs_pytorch']:.3f} | {r['score_mae']:.4f} | "
           f"{r['agreement_of_fp32']:.1%} |" for r in rows]
    atomic_write_text(out.with_suffix(".md"), "\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
