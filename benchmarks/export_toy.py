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
import statistics
import time
from pathlib import Path

import numpy as np

from sam3edge.atomic import atomic_write_text

REPO = Path(__file__).resolve().parents[1]


def _median_ms(fn, runs: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def main(argv=None) -> int:
    import onnxruntime as ort

    from sam3edge.data.images import resize_batch
    from sam3edge.data.orchard import render_scene, scene_rng
    from sam3edge.export.bundle import export_bundle
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
    for precision in ("fp32", "fp16", "int8"):
        out = args.work / f"toy-{precision}.sam3edge"
        t0 = time.time()
        manifest = export_bundle(args.run, out, "onnx", precision, progress=False)
        export_s = time.time() - t0
        paths = {k: out / g["file"] for k, g in manifest["graphs"].items()}
        agree = compare(ref, onnx_runner(paths, threads=args.threads), list(held), text, mask)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = args.threads
        img_s = ort.InferenceSession(str(paths["image_encoder"]), opts, providers=["CPUExecutionProvider"])
        dec_s = ort.InferenceSession(str(paths["decoder"]), opts, providers=["CPUExecutionProvider"])
        frame = {"image": np.ascontiguousarray(held[0])[None]}
        feats = img_s.run(None, frame)
        feed = dict(zip(("feat0", "feat1", "feat2"), feats)) | {"text": text, "text_mask": mask}
        rows.append({
            "precision": precision, "export_s": round(export_s, 1),
            "graph_mb": round(sum((out / f).stat().st_size for f in manifest["files"] if f.startswith("graphs/"))
                              / 1e6, 2),
            "image_encoder_ms": round(_median_ms(lambda s=img_s, f=frame: s.run(None, f), args.runs), 2),
            "decoder_ms": round(_median_ms(lambda s=dec_s, f=feed: s.run(None, f), args.runs), 2),
            "concepts": int(len(text)), "recall_vs_pytorch": agree["recall"], "mask_iou_vs_pytorch": agree["mask_iou"],
            "score_mae": agree["score_mae"], "reference_instances": agree["reference_instances"],
        })
        print(json.dumps(rows[-1]))
    fp32 = rows[0]
    for r in rows:
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
          "| precision | graphs MB | image encoder ms | decoder ms (all concepts) | recall vs PyTorch | "
          "mask IoU vs PyTorch | score MAE | agreement / fp32's |", "|---|---|---|---|---|---|---|---|"]
    md += [f"| {r['precision']} | {r['graph_mb']:.2f} | {r['image_encoder_ms']:.1f} | {r['decoder_ms']:.1f} | "
           f"{r['recall_vs_pytorch']:.3f} | {r['mask_iou_vs_pytorch']:.3f} | {r['score_mae']:.4f} | "
           f"{r['agreement_of_fp32']:.1%} |" for r in rows]
    atomic_write_text(out.with_suffix(".md"), "\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
