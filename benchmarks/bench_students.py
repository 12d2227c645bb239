"""Parameters, GFLOPs and CPU latency of every registered student and of the teachers.

    python benchmarks/bench_students.py --threads 2 --runs 5            # all students + toy teacher
    python benchmarks/bench_students.py --sam3-runs 3                   # also full SAM3 at 1008 px (~3 min)

Latency is the median wall time of one forward of one image and one phrase (random weights; the
figures do not depend on the values), after warm-up, in PyTorch with ``--threads`` threads:
image encoder, then heads (every query's mask, as ``student(images, phrases)`` computes). Students
run in concept-cache mode (no text encoder on the device). Writes
``benchmarks/results/students_<host>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from sam3edge.atomic import atomic_write_text
from sam3edge.models.complexity import measure
from sam3edge.models.registry import create_student, get_student_spec, list_students
from sam3edge.runtime.concepts import ConceptCache

REPO = Path(__file__).resolve().parents[1]


def _median_ms(fn, runs: int, warmup: int) -> tuple[float, list[float]]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times), times


@torch.inference_mode()
def bench_student(name: str, runs: int, warmup: int) -> dict:
    spec = get_student_spec(name)
    width = spec.heads.in_width
    rng = np.random.default_rng(0)
    mask = np.zeros((1, 32), bool)
    mask[0, :4] = True
    cache = ConceptCache(["ripe apple"], rng.standard_normal((1, 32, width)).astype(np.float32), mask)
    student = create_student(name, concepts=cache, text_mode="cache").eval()
    x = torch.rand(1, 3, spec.input_size, spec.input_size)
    text, tmask = student.encode_text(["ripe apple"])
    feats = student.encode_images(x)
    enc_ms, _ = _median_ms(lambda: student.encode_images(x), runs, warmup)
    heads_ms, _ = _median_ms(lambda: student.heads(feats.levels, feats.pos, text, tmask), runs, warmup)
    c = measure(name)
    return {"name": name, "kind": "student", "backbone": spec.backbone, "input_size": spec.input_size,
            "params_m": round((c.params_image_encoder + c.params_heads) / 1e6, 2),
            "gflops": round(c.gflops_image_encoder + c.gflops_heads, 2),
            "image_encoder_ms": round(enc_ms, 1), "heads_ms": round(heads_ms, 1),
            "total_ms": round(enc_ms + heads_ms, 1)}


@torch.inference_mode()
def bench_sam3(label: str, model, runs: int, warmup: int) -> dict:
    from transformers.models.sam3.modeling_sam3 import Sam3Model  # noqa: F401  (the real class is measured)

    from sam3edge.models.sam3_heads import run_heads

    size = int(model.config.vision_config.backbone_config.image_size)
    x = torch.randn(1, 3, size, size)
    ids = torch.full((1, 32), 49407)
    ids[0, :4] = torch.tensor([49406, 5679, 3055, 49407])
    am = (torch.arange(32) < 4).long()[None]
    text = model.get_text_features(input_ids=ids, attention_mask=am).pooler_output
    vision = model.get_vision_features(pixel_values=x)
    enc_ms, _ = _median_ms(lambda: model.get_vision_features(pixel_values=x), runs, warmup)
    heads_ms, _ = _median_ms(lambda: run_heads(model, vision, text, am.bool()), runs, warmup)
    text_ms, _ = _median_ms(lambda: model.get_text_features(input_ids=ids, attention_mask=am), runs, warmup)
    n_vision = sum(p.numel() for p in model.vision_encoder.parameters())
    n_text = sum(p.numel() for p in model.text_encoder.parameters()) + model.text_projection.weight.numel()
    n_all = sum(p.numel() for p in model.parameters())
    return {"name": label, "kind": "teacher", "backbone": "SAM3 ViT", "input_size": size,
            "params_m": round((n_all - n_text) / 1e6, 2), "params_text_m": round(n_text / 1e6, 2),
            "gflops": None, "image_encoder_ms": round(enc_ms, 1), "heads_ms": round(heads_ms, 1),
            "text_ms": round(text_ms, 1), "total_ms": round(enc_ms + heads_ms, 1), "vision_params_m": n_vision / 1e6}


def to_markdown(rows: list[dict], host: dict) -> str:
    cpu = host["processor"] or host["machine"]
    lines = [f"CPU latency, PyTorch {host['torch']}, {host['threads']} threads, {cpu}, "
             f"median of {host['runs']} runs (one image, one phrase; students in concept-cache mode).", "",
             "| model | backbone | input | params (M, no text) | GFLOPs | image encoder ms | heads ms | total ms |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        g = "-" if r["gflops"] is None else f"{r['gflops']:.1f}"
        lines.append(f"| {r['name']} | {r['backbone']} | {r['input_size']} | {r['params_m']:.1f} | {g} | "
                     f"{r['image_encoder_ms']:.0f} | {r['heads_ms']:.0f} | {r['total_ms']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--students", nargs="*", default=None, help="names (default: all registered)")
    ap.add_argument("--sam3-runs", type=int, default=0, help="also time the full SAM3 config at 1008 px")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from tqdm import tqdm

    from sam3edge.models.bundled import resolve_model
    from sam3edge.models.sam3_load import build_sam3, load_sam3_model

    rows = [bench_student(n, args.runs, args.warmup) for n in tqdm(args.students or list_students(), desc="students")]
    rows.append(bench_sam3("orchard-toy teacher", load_sam3_model(resolve_model("orchard-toy")), args.runs,
                           args.warmup))
    if args.sam3_runs:
        from transformers import Sam3Config

        rows.append(bench_sam3("SAM3 (facebook/sam3 config)", build_sam3(Sam3Config(), seed=0), args.sam3_runs, 1))
    host = {"machine": platform.machine(), "processor": platform.processor(), "torch": torch.__version__,
            "threads": args.threads, "runs": args.runs, "node": platform.node()}
    stem = f"students_{platform.machine()}_{args.threads}t"
    atomic_write_text(args.out / f"{stem}.json", json.dumps({"host": host, "rows": rows,
                                                             "command": "python benchmarks/bench_students.py "
                                                             + " ".join(argv or [])}, indent=1))
    md = to_markdown(rows, host)
    atomic_write_text(args.out / f"{stem}.md", md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
