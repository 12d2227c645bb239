"""``sam3edge quickstart``: the whole loop on the embedded default, in minutes on a CPU.

1. data: unlabelled orchard scenes to distil on, and a held-out annotated set (SA-Co layout) to score on;
2. distil the ``toy-fast`` student from the bundled ``orchard-toy`` teacher (stage 1: encoder onto the
   teacher's features, heads from the teacher where shapes allow; stage 2: end to end on the teacher's
   outputs, which trains the fast heads' new mask path), resumable: running again continues;
3. export ONNX int8 and OpenVINO int8 bundles (calibrated on the training images, verified against
   PyTorch);
4. segment sample images with the ONNX bundle (overlay PNGs);
5. one table: the PyTorch teacher vs the student on each backend - latency per frame (all concepts,
   end to end: pixels in, instances with masks at the original size out), speed-up, cgF1 on the
   held-out set, and agreement with the teacher (recall of the teacher's instances, their mask IoU).

``--teacher DIR --images DIR --data annotations.json --student NAME`` point it at a real teacher and real
images; the defaults are sized for a 2-core CPU (docs/notes.md: the figures of a run).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

TRAIN_SEED, EVAL_SEED = 2024, 777


@dataclass
class QuickstartConfig:
    out: Path = Path("runs/quickstart")
    teacher: str = "orchard-toy"
    images: str | None = None  # a folder of the domain's images; default: rendered orchard scenes
    data: str | None = None  # an SA-Co / COCO annotations.json to score on; default: a rendered orchard set
    student: str = "toy-fast"
    n_train: int = 160
    n_eval: int = 40
    steps: int = 900  # stage 1
    lr: float = 2e-3
    # 0: stage 1 only (enough for a student whose heads are the teacher's, e.g. "toy"). 800, not 400, since the
    # exemplar-trained teacher: at 400 the int8 students sat at 88-92 % of its held-out cgF1 depending on the CPU
    # the run trained on, at 800 at 95-99 % (CHANGELOG 2026-12-04, tenth session)
    stage2_steps: int = 800
    stage2_lr: float = 4e-4
    threads: int = 2
    latency_runs: int = 20
    teacher_images: int = 4

    def __post_init__(self):
        """Refuse numbers that would train, render or time nothing, naming the field (before any work)."""
        for name, low in (("n_train", 4), ("n_eval", 1), ("steps", 1), ("stage2_steps", 0), ("threads", 0),
                          ("latency_runs", 1), ("teacher_images", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= 1_000_000:
                raise ValueError(f"quickstart: {name} must be an integer from {low} to 1000000, got {v!r}")
        for name in ("lr", "stage2_lr"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 1:
                raise ValueError(f"quickstart: {name} must be a number in (0, 1), got {v!r}")


def _orchard_inputs(cfg: QuickstartConfig, progress: bool) -> tuple[str, str, list[str]]:
    """(training image folder, annotations.json, concepts) of the embedded orchard default."""
    from PIL import Image

    from sam3edge.data.orchard import ORCHARD_VOCABULARY, render_scene, scene_rng
    from sam3edge.data.orchard_dataset import write_orchard_dataset

    images = Path(cfg.images) if cfg.images else cfg.out / "train_images"
    if not cfg.images:
        images.mkdir(parents=True, exist_ok=True)
        for i in range(cfg.n_train):
            path = images / f"scene_{i:05d}.png"
            if not path.is_file():
                Image.fromarray(render_scene(scene_rng(TRAIN_SEED, i), 224).image).save(path)
    data = Path(cfg.data) if cfg.data else cfg.out / "heldout" / "annotations.json"
    if not cfg.data and not data.is_file():
        write_orchard_dataset(data.parent, n=cfg.n_eval, seed=EVAL_SEED, size=224, progress=progress)
    if cfg.data:
        from sam3edge.data.coco import ConceptDataset

        concepts = list(ConceptDataset.load(data).phrases)
    else:
        concepts = [c.phrase for c in ORCHARD_VOCABULARY.concepts] + list(ORCHARD_VOCABULARY.distractors)
    return str(images), str(data), concepts


def run_quickstart(cfg: QuickstartConfig, progress: bool = True) -> dict:
    """Run every step (see the module docstring); returns the result table as a dict and writes
    ``OUT/quickstart.{json,md}``."""
    import torch

    from sam3edge.atomic import atomic_write_text
    from sam3edge.data.coco import ConceptDataset
    from sam3edge.distill.config import DistillConfig
    from sam3edge.distill.run import distill
    from sam3edge.eval import evaluate
    from sam3edge.eval.agreement import summary
    from sam3edge.eval.bench_accuracy import accuracy_on_dataset, vs_teacher
    from sam3edge.eval.predict import predict_dataset
    from sam3edge.export.bundle import export_bundle
    from sam3edge.models.bundled import resolve_model
    from sam3edge.models.teacher import Sam3Teacher
    from sam3edge.runtime.bench import run_latency
    from sam3edge.runtime.image import as_rgb_uint8
    from sam3edge.runtime.overlay import save_overlay
    from sam3edge.runtime.segmenter import Segmenter

    t_start = time.time()
    cfg.out = Path(cfg.out)
    cfg.out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    times = {}
    say = print if progress else (lambda *a, **k: None)

    say("[1/5] data")
    t0 = time.time()
    images, data, concepts = _orchard_inputs(cfg, progress)
    teacher_dir = resolve_model(cfg.teacher)
    times["data_s"] = time.time() - t0

    stages = [1, 2] if cfg.stage2_steps else [1]
    say(f"[2/5] distil student {cfg.student!r} from {cfg.teacher} ({cfg.steps} stage-1 steps"
        + (f" + {cfg.stage2_steps} stage-2 steps)" if cfg.stage2_steps else ")"))
    t0 = time.time()
    run = cfg.out / "run"
    distill(DistillConfig(teacher=teacher_dir, images=images, concepts=concepts, student=cfg.student, stages=stages,
                          out=str(run), stage1_steps=cfg.steps, stage1_lr=cfg.lr, steps=max(cfg.stage2_steps, 1),
                          lr=cfg.stage2_lr, batch=4, pairs=4, holdout=0.05, threads=cfg.threads, cache_batch=8),
            resume=True, progress=progress)
    times["distill_s"] = time.time() - t0

    say("[3/5] export ONNX int8 and OpenVINO int8 bundles")
    t0 = time.time()
    bundles = {}
    for target in ("onnx", "openvino"):
        bundles[target] = cfg.out / f"orchard-{target}-int8.sam3edge"
        export_bundle(run, bundles[target], target, "int8", overwrite=True, progress=progress)
    times["export_s"] = time.time() - t0

    say("[4/5] score the teacher and the bundles on the held-out set")
    t0 = time.time()
    dataset = ConceptDataset.load(data)
    frames = [as_rgb_uint8(dataset.image_path(f)) for f in dataset.files[:max(cfg.teacher_images, 4)]]
    teacher = Sam3Teacher.from_pretrained(teacher_dir)
    teacher_gt = summary(evaluate(data, predict_dataset(teacher, dataset, progress=progress)))
    rows = []
    for target, path in bundles.items():
        seg = Segmenter.load(path, threads=cfg.threads)
        seg.set_concepts(concepts)
        acc = accuracy_on_dataset(seg, data)
        lat = run_latency(seg, frames, runs=cfg.latency_runs, warmup=3)
        vs = vs_teacher(seg, teacher, frames[:cfg.teacher_images], phrases=concepts, threads=cfg.threads)
        rows.append({"model": f"student ({cfg.student}) {target} int8", "backend": seg.backend_name,
                     "latency_ms": lat["e2e"]["p50"], "overhead": lat["overhead"], "cgf1": acc["cgf1"],
                     "recall_vs_teacher": vs["recall"], "mask_iou_vs_teacher": vs["mean_iou"],
                     "teacher_ms": vs["teacher_p50_ms"], "bundle_mb": round(_dir_mb(path), 2)})
        if target == "onnx":
            for i, frame in enumerate(frames):
                save_overlay(cfg.out / "overlays" / f"heldout_{i}.png", frame,
                             seg.segment(frame, score_threshold=0.5))
    teacher_ms = float(sum(r["teacher_ms"] for r in rows) / len(rows))
    for r in rows:
        r["speedup"] = teacher_ms / r["latency_ms"] if r["latency_ms"] else None
    rows.insert(0, {"model": "teacher (orchard-toy SAM3, PyTorch fp32)" if cfg.teacher == "orchard-toy"
                    else f"teacher ({cfg.teacher}, PyTorch)", "backend": "torch CPU", "latency_ms": teacher_ms,
                    "overhead": None, "cgf1": teacher_gt["cgf1"], "recall_vs_teacher": 1.0,
                    "mask_iou_vs_teacher": 1.0, "speedup": 1.0, "bundle_mb": None})
    times["score_s"] = time.time() - t0
    say("[5/5] overlays in " + str(cfg.out / "overlays"))
    times["total_s"] = time.time() - t_start
    result = {"config": {k: str(v) for k, v in vars(cfg).items()}, "concepts": concepts, "rows": rows,
              "heldout": {"data": data, "pairs": len(dataset)},
              "times": {k: round(v, 1) for k, v in times.items()}, "threads": cfg.threads,
              "distill_report": json.loads((run / "report.json").read_text()) if (run / "report.json").is_file()
              else None}
    atomic_write_text(cfg.out / "quickstart.json", json.dumps(result, indent=1))
    atomic_write_text(cfg.out / "quickstart.md", format_table(result) + "\n")
    return result


def _dir_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) / 1e6


def format_table(result: dict) -> str:
    def f(v, fmt):
        return "-" if v is None else format(v, fmt)

    n = len(result["concepts"])
    lines = [f"| model | backend | ms / frame ({n} concepts) | speed-up | cgF1 (held-out) | recall of teacher's "
             "instances | their mask IoU |", "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['model']} | {r['backend']} | {f(r['latency_ms'], '.1f')} | {f(r['speedup'], '.1f')}x | "
                     f"{f(r['cgf1'], '.3f')} | {f(r['recall_vs_teacher'], '.3f')} | "
                     f"{f(r['mask_iou_vs_teacher'], '.3f')} |")
    t = result["times"]
    lines += ["", f"{result['heldout']['pairs']} held-out image x phrase pairs; {result['threads']} threads; "
              f"data {t['data_s']:.0f} s, distillation {t['distill_s']:.0f} s, export {t['export_s']:.0f} s, "
              f"scoring {t['score_s']:.0f} s, total {t['total_s']:.0f} s"]
    return "\n".join(lines)
