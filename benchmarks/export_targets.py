"""Export a student to every target x precision and measure size on disk, CPU latency and agreement.

    python benchmarks/distill_toy.py --fresh          # first: the distilled student in runs/distill_toy/run
    python benchmarks/export_targets.py               # ~4 min: benchmarks/results/export_toy_<KERNELS>.{json,md}
    python benchmarks/export_targets.py --random edge-s   # a real-size student with random weights:
                                                          # benchmarks/results/export_edge-s_random_<KERNELS>.*

<KERNELS> is this CPU's int8 kernel class (x86-vnni, x86-avx2, arm64-dot ...: sam3edge.runtime.cpu), since int8
results and speed-ups differ between them; the instruction set is stated in every result.

The distilled toy student's bundles are calibrated (int8) on the run's own training images; a
``--random`` student (registry name, random weights, 16 random concept embeddings) on 24 orchard
scenes of another seed. Every bundle is verified on held-out orchard scenes (seed 777) against the
PyTorch student: recall of PyTorch's kept instances and their mask IoU (for random weights these
measure numerical fidelity only; int8 bundles are written with ``force`` and their figures reported).
Latency: onnxruntime / OpenVINO CPU with ``--threads`` threads, median of ``--runs`` runs after
warm-up, of the image encoder (one frame) and of the decoder (all concepts of the bundle at once).
Core ML packages are converted and measured on disk (prediction needs macOS: no latency here).
ONNX int8 is also run with onnxruntime's optimisations off ("int8, exact arithmetic"): the Q/DQ graph computed
in float, i.e. what a CPU whose integer kernels cannot saturate (VNNI, ARM) computes, so one machine
shows both arithmetics.
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
    from sam3edge.runtime.backends.openvino_backend import shared_core

    config = {"INFERENCE_NUM_THREADS": threads} | ({} if precision == "fp16" else {"INFERENCE_PRECISION_HINT": "f32"})
    core = shared_core()
    img = core.compile_model(str(paths["image_encoder"]), "CPU", config)
    dec = core.compile_model(str(paths["decoder"]), "CPU", config)
    r = img({"image": frame})
    feed = {f"feat{i}": r[img.output(i)] for i in range(3)} | {"text": text, "text_mask": mask}
    return (lambda: img({"image": frame})), (lambda: dec(feed))


def main(argv=None) -> int:
    import onnxruntime as ort

    from sam3edge.data.images import resize_batch
    from sam3edge.data.orchard import render_scene, scene_rng
    from sam3edge.export.bundle import export_bundle, resolve_student_dir
    from sam3edge.export.targets import EXPORT_TARGETS
    from sam3edge.export.verify import compare, torch_runner
    from sam3edge.models.student_io import load_student
    from sam3edge.runtime.cpu import cpu_info

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, default=REPO / "runs" / "distill_toy" / "run")
    ap.add_argument("--label", default=None, help="result name part (default: toy for --run, STUDENT_random)")
    ap.add_argument("--random", metavar="STUDENT", help="a registry student with random weights instead of --run")
    ap.add_argument("--targets", default="onnx,openvino", help="comma-separated export targets")
    ap.add_argument("--work", type=Path, default=None, help="bundles go here (default runs/export_LABEL)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--heldout", type=int, default=24, help="held-out scenes for the agreement figures")
    ap.add_argument("--heldout-seed", type=int, default=777, help="orchard seed of the held-out scenes")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    cpu = cpu_info()
    label = (args.label or (f"{args.random}_random" if args.random else "toy")) + \
        (f"_heldout{args.heldout_seed}" if args.heldout_seed != 777 else "") + f"_{cpu.int8_kernels}"
    work = args.work or REPO / "runs" / f"export_{label}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    source, calib = (_random_student(args.random, work) if args.random else (args.run, None))
    student = load_student(resolve_student_dir(source)).eval()
    held = [render_scene(scene_rng(args.heldout_seed, i), 224).image for i in range(args.heldout)]
    held, _ = resize_batch(held, student.image_size)
    text, mask = student.concepts.features.astype(np.float32), student.concepts.mask.astype(bool)
    ref = torch_runner(student)
    rows = []
    for target, precision in [(t, p) for t in args.targets.split(",") for p in EXPORT_TARGETS[t].precisions]:
        out = work / f"{label}-{target}-{precision}.sam3edge"
        t0 = time.time()
        manifest = export_bundle(source, out, target, precision, calib=calib, progress=False, force=bool(args.random))
        export_s = time.time() - t0
        paths = {k: out / g["file"] for k, g in manifest["graphs"].items()}
        row = {"target": target, "precision": precision, "export_s": round(export_s, 1),
               "graph_mb": round(sum((out / f).stat().st_size for f in manifest["files"] if f.startswith("graphs/"))
                                 / 1e6, 2), "concepts": int(len(text)), "image_encoder_ms": None, "decoder_ms": None,
               "recall_vs_pytorch": None, "mask_iou_vs_pytorch": None, "score_mae": None,
               "verification_failed": manifest["verification"].get("failed", [])}
        runner = _runner(target, paths, precision, args.threads)
        if runner is not None:
            agree = compare(ref, runner, list(held), text, mask)
            if target in ("onnx", "openvino"):
                img_fn, dec_fn = _graph_calls(target, paths, args.threads, precision,
                                              np.ascontiguousarray(held[0])[None], text, mask)
                row |= {"image_encoder_ms": round(_median_ms(img_fn, args.runs, warmup=3)[0], 2),
                        "decoder_ms": round(_median_ms(dec_fn, args.runs, warmup=3)[0], 2)}
            else:  # engines / packages: both graphs in one call, counted in the decoder column
                both = lambda r=runner: r(held[0], text, mask)
                row["decoder_ms"] = round(_median_ms(both, args.runs, warmup=3)[0], 2)
            row |= {"score_mae": agree["score_mae"], "same_query_rate": agree["same_query_rate"],
                    "reference_instances": agree["reference_instances"]}
            if agree["reference_instances"]:  # random weights may keep no instance: then there is nothing to recall
                row |= {"recall_vs_pytorch": agree["recall"], "mask_iou_vs_pytorch": agree["mask_iou"]}
        rows.append(row)
        print(json.dumps(row))
        if target == "onnx" and precision == "int8":
            rows.append(_exact_row(row, paths, ref, list(held), text, mask))
            print(json.dumps(rows[-1]))
    for r in rows:
        base = next((x for x in rows if x["target"] == r["target"] and x["precision"] == "fp32"), rows[0])
        r.setdefault("recall_vs_pytorch", None)
        r["agreement_of_fp32"] = (None if r["recall_vs_pytorch"] is None or base["recall_vs_pytorch"] is None else
                                  (r["recall_vs_pytorch"] * r["mask_iou_vs_pytorch"])
                                  / (base["recall_vs_pytorch"] * base["mask_iou_vs_pytorch"]))
    result = {"command": "python benchmarks/export_targets.py " + " ".join(argv or sys.argv[1:]),
              "student": args.random or str(args.run), "random_weights": bool(args.random),
              "input_size": student.image_size, "heldout_seed": args.heldout_seed, "heldout_images": args.heldout,
              "threads": args.threads, "rows": rows,
              "host": {"machine": platform.machine(), "processor": platform.processor(),
                       "onnxruntime": ort.__version__, "cpu": cpu.to_json()}}
    out = REPO / "benchmarks" / "results" / f"export_{label}.json"
    atomic_write_text(out, json.dumps(result, indent=1))
    what = (f"{args.random} student with random weights ({student.image_size} px)" if args.random
            else f"Toy student (distilled, {student.image_size} px)")
    md = [f"{what}; onnxruntime / OpenVINO CPU, {args.threads} threads, {cpu.describe()} (int8 kernels: "
          f"{cpu.int8_kernels}); agreement vs PyTorch "
          f"on {args.heldout} orchard scenes (seed {args.heldout_seed}) x {len(text)} concepts; "
          "'-': not runnable on this host"
          + (", or no instance scored >= 0.5 (random weights)" if args.random else "") + ".", "",
          "| target | precision | graphs MB | image encoder ms | decoder ms (all concepts) | recall vs PyTorch | "
          "mask IoU vs PyTorch | score MAE | same top-K queries | agreement / fp32's |",
          "|---|---|---|---|---|---|---|---|---|---|"]
    f = lambda v, fmt: "-" if v is None else format(v, fmt)
    md += [f"| {r['target']} | {r['precision']} | {f(r.get('graph_mb'), '.2f')} | "
           f"{f(r.get('image_encoder_ms'), '.1f')} | {f(r.get('decoder_ms'), '.1f')} | "
           f"{f(r['recall_vs_pytorch'], '.3f')} | {f(r['mask_iou_vs_pytorch'], '.3f')} | "
           f"{f(r['score_mae'], '.4f')} | {f(r.get('same_query_rate'), '.1%')} | {f(r['agreement_of_fp32'], '.1%')} |"
           for r in rows]
    atomic_write_text(out.with_suffix(".md"), "\n".join(md) + "\n")
    print("\n".join(md))
    return 0


def _exact_row(row: dict, paths: dict, ref, held: list, text, mask) -> dict:
    """The ONNX int8 bundle's agreement when its Q/DQ arithmetic is computed exactly (no latency: it is not a way
    to run it, it is what non-saturating integer kernels give)."""
    from sam3edge.export.verify import compare, onnx_runner

    agree = compare(ref, onnx_runner(paths, exact=True), held, text, mask)
    out = {"target": "onnx", "precision": "int8, exact arithmetic", "graph_mb": row["graph_mb"],
           "image_encoder_ms": None, "decoder_ms": None, "score_mae": agree["score_mae"],
           "same_query_rate": agree["same_query_rate"], "recall_vs_pytorch": None, "mask_iou_vs_pytorch": None}
    if agree["reference_instances"]:
        out |= {"recall_vs_pytorch": agree["recall"], "mask_iou_vs_pytorch": agree["mask_iou"]}
    return out


def _runner(target: str, paths: dict, precision: str, threads: int):
    """The runner of ``target`` on this host's CPU, or None where it cannot run here (Core ML off macOS)."""
    from sam3edge.export.verify import onnx_runner

    if target == "onnx":
        return onnx_runner(paths, threads=threads)
    if target == "tensorrt":  # engines only where TensorRT runs; CPU figures of their ONNX graphs would mislead
        from sam3edge.export.tensorrt import available, verification_runner

        return verification_runner(paths, precision)[0] if available() else None
    if target == "openvino":  # fp16 IR runs in the CPU's own precision (bf16 here); fp32 / int8 with the f32 hint
        from sam3edge.export.openvino import openvino_runner

        return openvino_runner(paths, precision_hint=None if precision == "fp16" else "f32", threads=threads)
    if target == "coreml" and platform.system() == "Darwin":  # prediction needs macOS
        from sam3edge.export.coreml import coreml_runner

        return coreml_runner(paths)
    return None


def _random_student(name: str, work: Path) -> tuple[Path, Path]:
    """A registry student with random weights and 16 random concept embeddings, saved; and calibration scenes."""
    import torch
    from PIL import Image

    from sam3edge.data.orchard import render_scene, scene_rng
    from sam3edge.models.registry import create_student
    from sam3edge.models.student_io import save_student
    from sam3edge.runtime.concepts import ConceptCache

    torch.manual_seed(0)
    student = create_student(name).eval()
    c = student.spec.heads.in_width
    rng = np.random.default_rng(0)
    phrases = [f"concept {i}" for i in range(16)]
    feats = rng.normal(0, 1, (16, 32, c)).astype(np.float32)
    mask = np.zeros((16, 32), bool)
    mask[:, :4] = True
    student.set_concepts(ConceptCache(phrases, feats, mask, source="random"))
    calib = work / "calib"
    calib.mkdir(parents=True, exist_ok=True)
    for i in range(24):
        Image.fromarray(render_scene(scene_rng(4242, i), 320).image).save(calib / f"c{i:02d}.png")
    return save_student(student, work / "student"), calib


if __name__ == "__main__":
    raise SystemExit(main())
