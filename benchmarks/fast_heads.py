"""A frame's cost against the number of concepts: SAM3 teacher vs students with SAM3-width and fast heads.

    python benchmarks/fast_heads.py                       # ~15 min: benchmarks/results/fast_heads_<KERNELS>.{json,md}
    python benchmarks/fast_heads.py --students edge-s-fast --no-teacher --runs 5     # one student, quick

``--students`` entries are registry names (every target x precision) or ``NAME@TARGET-PRECISION`` for one
bundle (the default runs EfficientSAM3-style heads, ~5 s per concept, as ONNX fp32 only, once per count).

Every student (random weights, 16 random concept embeddings; latency does not depend on the values) is
exported to ONNX and OpenVINO in fp32 and int8 (calibrated on 8 orchard scenes) and loaded with the torch-free
``Segmenter``; one frame (a 640 x 480 orchard scene) is segmented end to end (pixels in, instances with masks at
the original size out) with 1, 4 and 16 concepts, median of ``--runs`` runs, ``--threads`` threads. The
default-size SAM3 teacher (transformers ``Sam3Model``, random weights, 1008 px, PyTorch) answers the same frame
once per concept count (``--teacher-runs``); every row's ratio is to the teacher at the same concept count,
measured in the same run with the same threads (the teacher in a child process, whose memory is returned before
the exports start). Results are rewritten after every row (``"complete": false`` until the last). GFLOPs per frame
are counted on the PyTorch graphs with ``torch.utils.flop_counter`` (convolutions, linear layers and matmuls; see
sam3edge.models.complexity). For fast-head students, the fp32 and int8 bundles of each target are then called
in alternating blocks on the frame (at least 11 blocks of 6 calls per count, a block's first call not counted)
and their ratio reported: rows measured one after the other see a shared VM's drift, alternating blocks see
the same machine.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_students import _median_ms as _timed  # noqa: E402
from sam3edge.atomic import atomic_write_text  # noqa: E402


def _stages(seg, frame, runs: int = 3) -> dict[str, float]:
    """Median ms of each of the segmenter's stages (preprocess, image encoder, decoder, postprocess) over ``runs``."""
    seen = []
    for _ in range(runs):
        seg.segment(frame)
        seen.append(dict(seg.timings))
    return {k: round(float(np.median([t[k] for t in seen])), 1) for k in seen[0] if k != "text"}


def _median_ms(fn, runs: int, warmup: int = 1) -> float:
    return _timed(fn, runs, warmup)[0]

REPO = Path(__file__).resolve().parents[1]
COUNTS = (1, 4, 16)


def _student(name: str, work: Path) -> tuple[Path, object]:
    import torch

    from sam3edge.models.registry import create_student
    from sam3edge.models.student_io import save_student
    from sam3edge.runtime.concepts import ConceptCache

    torch.manual_seed(0)
    student = create_student(name).eval()
    c = student.spec.heads.in_width
    rng = np.random.default_rng(0)
    mask = np.zeros((16, 32), bool)
    mask[:, :4] = True
    student.set_concepts(ConceptCache([f"concept {i}" for i in range(16)],
                                      rng.normal(0, 1, (16, 32, c)).astype(np.float32), mask, source="random"))
    return save_student(student, work / name / "student"), student


BLOCK = 6  # calls of one bundle in a row when two are compared; the first of each block is not counted


def _interleaved(name: str, target: str, work: Path, frame: np.ndarray, threads: int, rounds: int) -> dict:
    """int8 against fp32 of one target, the two bundles called in alternating blocks on one frame (``rounds``
    blocks of ``BLOCK`` calls each per concept count; median of every call but a block's first): a shared VM's
    speed drifts within minutes, so rows measured one after the other can differ by 20 % for reasons unrelated to
    precision; alternating blocks see the same machine. A block's first call is not counted: it runs right after
    the other bundle, whose weights have pushed its own out of the caches (alternating single calls, as this
    benchmark did before 2026-12-04, measured that cold call: edge-s-fast OpenVINO int8 / fp32 on an AMX Xeon,
    1 concept, 1.46x per call against 1.63x in blocks of 8). A robot runs one bundle frame after frame."""
    from sam3edge.runtime import Segmenter

    segs = {p: Segmenter.load(work / name / f"{target}-{p}.sam3edge", threads=threads) for p in ("fp32", "int8")}
    out = {"student": name, "target": target, "rounds": rounds, "block": BLOCK, "ms": {}, "stages_ms": {},
           "ratio": {}}
    for n in COUNTS:
        times = {p: [] for p in segs}
        stages = {p: [] for p in segs}
        for seg in segs.values():
            seg.set_concepts([f"concept {i}" for i in range(n)])
            seg.segment(frame)
        for _ in range(rounds):
            for p, seg in segs.items():
                for call in range(BLOCK):
                    start = time.perf_counter()
                    seg.segment(frame)
                    if call:
                        times[p].append((time.perf_counter() - start) * 1e3)
                        stages[p].append(dict(seg.timings))
        ms = {p: round(float(np.median(v)), 1) for p, v in times.items()}
        out["ms"][n] = ms
        out["stages_ms"][n] = {p: {k: round(float(np.median([t[k] for t in v])), 1) for k in v[0] if k != "text"}
                               for p, v in stages.items()}
        out["ratio"][n] = round(ms["fp32"] / ms["int8"], 2)
    return out


def _gflops(student, prompts: int) -> float:
    """GFLOPs of one frame through the export graphs (image encoder + decoder with ``prompts`` concepts)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from sam3edge.export.graphs import DecoderGraph, ImageEncoderGraph

    image = torch.zeros(1, student.image_size, student.image_size, 3, dtype=torch.uint8)
    text = torch.from_numpy(student.concepts.features[:prompts])
    mask = torch.from_numpy(student.concepts.mask[:prompts])
    with torch.no_grad():
        graphs = ImageEncoderGraph(student).eval(), DecoderGraph(student).eval()  # built outside the count
        with FlopCounterMode(display=False) as counter:
            feats = graphs[0](image)
            graphs[1](*feats, text, mask)
    return counter.get_total_flops() / 1e9


def _teacher_rows(frame: np.ndarray, runs: int, threads: int) -> dict[int, float]:
    import torch
    from transformers import Sam3Config

    from sam3edge.models.sam3_load import build_sam3
    from sam3edge.models.teacher import Sam3Teacher
    from sam3edge.runtime.tokenizer import ClipTokenizer

    teacher = Sam3Teacher(build_sam3(Sam3Config(), seed=0).eval(), ClipTokenizer.default())
    phrases = [f"concept {i}" for i in range(16)]
    out = {}
    for n in COUNTS:
        with torch.no_grad():
            out[n] = _median_ms(lambda n=n, t=teacher: t([frame], phrases[:n]), runs, warmup=0)
        print(json.dumps({"model": "SAM3 teacher", "concepts": n, "ms": round(out[n], 1)}), flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--students", default="edge-s-fast,edge-s,efficientsam3-style@onnx-fp32")
    ap.add_argument("--targets", default="onnx,openvino")
    ap.add_argument("--precisions", default="fp32,int8")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--teacher-runs", type=int, default=1)
    ap.add_argument("--no-teacher", action="store_true")
    ap.add_argument("--out", default=None, help="result name (default fast_heads_<int8 kernels>)")
    ap.add_argument("--teacher-only", action="store_true", help=argparse.SUPPRESS)  # the child process below
    ap.add_argument("--recount-gflops", action="store_true",
                    help="recount the GFLOPs of an existing result's students (no latency run) and rewrite it")
    args = ap.parse_args(argv)
    if args.recount_gflops:
        return _recount(args)

    import gc

    import torch
    from PIL import Image

    from sam3edge.data.orchard import render_scene, scene_rng
    from sam3edge.export.bundle import export_bundle
    from sam3edge.runtime import Segmenter
    from sam3edge.runtime.cpu import cpu_info

    torch.set_num_threads(args.threads)
    frame = np.asarray(Image.fromarray(render_scene(scene_rng(777, 0), 640).image).resize((640, 480)))
    if args.teacher_only:
        print("TEACHER " + json.dumps(_teacher_rows(frame, args.teacher_runs, args.threads)), flush=True)
        return 0
    cpu = cpu_info()
    work = REPO / "runs" / "fast_heads"
    shutil.rmtree(work, ignore_errors=True)
    calib = work / "calib"
    calib.mkdir(parents=True)
    for i in range(8):
        Image.fromarray(render_scene(scene_rng(4242, i), 320).image).save(calib / f"c{i:02d}.png")
    # The 3.4 GB teacher runs in a child process, so its memory is the system's again before the exports (kept in
    # this process it got the efficientsam3-style export killed for memory on a 23 GB machine).
    teacher = {} if args.no_teacher else _teacher_child(args)
    result = {"command": "python benchmarks/fast_heads.py " + " ".join(argv or sys.argv[1:]),
              "threads": args.threads, "runs": args.runs, "teacher_runs": args.teacher_runs, "cpu": cpu.to_json(),
              "frame": "640x480 orchard scene (seed 777)", "teacher_ms": teacher, "rows": [], "complete": False,
              "matmul_gflops": {"start": _machine_gflops(args.threads)}}
    stem = REPO / "benchmarks" / "results" / (args.out or f"fast_heads_{cpu.int8_kernels}")
    rows = result["rows"]
    for entry in args.students.split(","):
        name, _, only = entry.partition("@")
        combos = ([tuple(only.split("-", 1))] if only else
                  [(t, p) for t in args.targets.split(",") for p in args.precisions.split(",")])
        runs = 1 if only else args.runs
        source, student = _student(name, work)
        flops = {n: round(_gflops(student, n), 2) for n in COUNTS}
        for target, precision in combos:
            out = work / name / f"{target}-{precision}.sam3edge"
            t0 = time.time()
            export_bundle(source, out, target, precision, calib=calib, n_verify=2, progress=False, force=True)
            seg = Segmenter.load(out, threads=args.threads)
            row = {"student": name, "heads": student.spec.heads.head_type, "target": target,
                   "precision": precision, "export_s": round(time.time() - t0, 1),
                   "graph_mb": round(sum(f.stat().st_size for f in (out / "graphs").rglob("*") if f.is_file())
                                     / 1e6, 2), "input_size": student.image_size, "ms": {}, "gflops": flops,
                   "instances": {}, "vs_teacher": {}}
            for n in COUNTS:
                seg.set_concepts([f"concept {i}" for i in range(n)])
                row["ms"][n] = round(_median_ms(lambda s=seg: s.segment(frame), runs, warmup=1 if only else 2), 1)
                row["instances"][n] = len(seg.segment(frame))
                row.setdefault("stages_ms", {})[n] = _stages(seg, frame)
                if n in teacher:
                    row["vs_teacher"][n] = round(teacher[n] / row["ms"][n], 1)
            rows.append(row)
            print(json.dumps(row), flush=True)
            _write(result, stem)  # after every row: a run stopped part-way keeps what it measured ("complete": false)
            del seg
        if not only and student.spec.heads.head_type == "fast":  # the heads whose int8 ratio the issue asks for
            for target in args.targets.split(","):
                if {"fp32", "int8"} <= set(args.precisions.split(",")):
                    result.setdefault("int8_vs_fp32", []).append(
                        _interleaved(name, target, work, frame, args.threads, max(args.runs, 11)))
                    print(json.dumps(result["int8_vs_fp32"][-1]), flush=True)
                    _write(result, stem)
        del student
        gc.collect()
    result["complete"] = True
    result["matmul_gflops"]["end"] = _machine_gflops(args.threads)
    _write(result, stem)
    return 0


def _machine_gflops(threads: int) -> float:
    """This machine's fp32 matmul rate right now (torch, ``threads`` threads, 1024^3, best of 10): a shared VM's
    speed drifts between runs, and this figure beside the latencies tells a slow run from a slow model."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    best = float("inf")
    for _ in range(12):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return round(2 * 1024 ** 3 / best / 1e9, 1)


def _teacher_child(args) -> dict[int, float]:
    import subprocess

    cmd = [sys.executable, __file__, "--teacher-only", "--threads", str(args.threads), "--teacher-runs",
           str(args.teacher_runs)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    line = next((x for x in done.stdout.splitlines() if x.startswith("TEACHER ")), None)
    if done.returncode or line is None:
        raise SystemExit(f"the teacher's timing process failed (exit {done.returncode}): {done.stderr[-2000:]}")
    print(done.stdout.replace(line, "").strip(), flush=True)
    return {int(k): v for k, v in json.loads(line[len("TEACHER "):]).items()}


def _recount(args) -> int:
    from sam3edge.runtime.cpu import cpu_info

    stem = REPO / "benchmarks" / "results" / (args.out or f"fast_heads_{cpu_info().int8_kernels}")
    result = json.loads(stem.with_suffix(".json").read_text())
    import re

    for key, flag, default in (("runs", "--runs", 10), ("teacher_runs", "--teacher-runs", 1)):
        found = re.search(rf"{flag} (\d+)", result["command"])
        result.setdefault(key, int(found.group(1)) if found else default)
    work = REPO / "runs" / "fast_heads_gflops"
    for name in sorted({r["student"] for r in result["rows"]}):
        _, student = _student(name, work)
        flops = {str(n): round(_gflops(student, n), 2) for n in COUNTS}
        for r in result["rows"]:
            if r["student"] == name:
                r["gflops"] = flops
    result["gflops_recounted"] = "python benchmarks/fast_heads.py --recount-gflops"
    _write(result, stem)
    return 0


def _write(result: dict, stem: Path) -> None:
    atomic_write_text(stem.with_suffix(".json"), json.dumps(result, indent=1))
    teacher = {int(k): v for k, v in result["teacher_ms"].items()}
    cpu = result["cpu"]
    md = [f"End-to-end ms per frame (640 x 480 in, instances with masks at 640 x 480 out), {result['threads']} threads "
          f"on {cpu['describe']}; random weights; median of {result.get('runs', '?')} runs (single-bundle entries and "
          f"the teacher: {result.get('teacher_runs', 1)}). GFLOPs: one frame through the export graphs "
          "(torch.utils.flop_counter).", ""]
    if teacher:
        md += ["| model | runtime | " + " | ".join(f"{n} concept{'s' * (n > 1)}" for n in COUNTS) + " |",
               "|---|---|" + "---|" * len(COUNTS),
               "| SAM3 teacher (840 M, 1008 px, random weights) | PyTorch fp32 | "
               + " | ".join(f"{teacher[n]:.0f} ms" for n in COUNTS) + " |", ""]
    md += ["| student | heads | target | precision | px | " + " | ".join(
        f"ms @{n} (GFLOPs{', x teacher' if teacher else ''})" for n in COUNTS) + " |",
           "|---|---|---|---|---|" + "---|" * len(COUNTS)]
    for r in result["rows"]:
        ms, gf, vs = ({int(k): v for k, v in r[f].items()} for f in ("ms", "gflops", "vs_teacher"))
        cells = [f"{ms[n]:.1f} ({gf[n]:.1f}" + (f", {vs[n]:.0f}x)" if n in vs else ")") for n in COUNTS]
        md.append(f"| {r['student']} | {r['heads']} | {r['target']} | {r['precision']} | {r['input_size']} | "
                  + " | ".join(cells) + " |")
    staged = [r for r in result["rows"] if r.get("stages_ms")]
    if staged:
        md += ["", "Where a frame's time goes (median ms per stage: preprocess / image encoder / decoder / "
               "postprocess; "
               "random weights keep no instance above 0.5, so postprocess pastes no mask):", "",
               "| student | target | precision | " + " | ".join(f"@{n}" for n in COUNTS) + " |",
               "|---|---|---|" + "---|" * len(COUNTS)]
        for r in staged:
            st = {int(k): v for k, v in r["stages_ms"].items()}
            md.append(f"| {r['student']} | {r['target']} | {r['precision']} | " + " | ".join(
                " / ".join(f"{st[n][k]:.1f}" for k in ("preprocess", "image_encoder", "decoder", "postprocess"))
                if n in st else "-" for n in COUNTS) + " |")
    pairs = result.get("int8_vs_fp32")
    if pairs:
        how = (f"in alternating blocks of {pairs[0]['block']} calls (a block's first call, cold after the other "
               "bundle, not counted)" if pairs[0].get("block") else "alternately, call by call,")
        md += ["", f"int8 against fp32 of the same target, the two bundles called {how} on the frame (median "
               "ms of each; ratio fp32 / int8; stages: preprocess / image encoder / decoder / postprocess):", "",
               "| student | target | " + " | ".join(f"@{n} fp32 / int8 (ratio)" for n in COUNTS)
               + " | stages fp32 -> int8 @1 |", "|---|---|" + "---|" * (len(COUNTS) + 1)]
        for q in pairs:
            ms, ratio = ({int(k): v for k, v in q[f].items()} for f in ("ms", "ratio"))
            st = {int(k): v for k, v in q["stages_ms"].items()}[COUNTS[0]]
            stages = " -> ".join(" / ".join(f"{st[p][k]:.1f}" for k in ("preprocess", "image_encoder", "decoder",
                                                                          "postprocess")) for p in ("fp32", "int8"))
            md.append(f"| {q['student']} | {q['target']} | " + " | ".join(
                f"{ms[n]['fp32']:.1f} / {ms[n]['int8']:.1f} ({ratio[n]:.2f}x)" for n in COUNTS) + f" | {stages} |")
    speed = result.get("matmul_gflops")
    if speed:
        md += ["", "This machine's fp32 matmul rate (torch, 1024^3, same threads) at the start / end of the run: "
               + " / ".join(f"{v:.0f}" for v in speed.values()) + " GFLOP/s (a shared VM drifts between runs)."]
    if result.get("note"):
        md += ["", result["note"]]
    if not result.get("complete", True):
        md += ["", "**Incomplete**: the run stopped (or is still running) before every student was measured."]
    atomic_write_text(stem.with_suffix(".md"), "\n".join(md) + "\n")
    if result.get("complete", True):
        print("\n".join(md))


if __name__ == "__main__":
    raise SystemExit(main())
