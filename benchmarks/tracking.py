"""Tracking and counting on orchard rows with ground-truth identities: the tracker alone, then fed the toy teacher's
and a distilled student's detections; and the cost of tracking per frame.

    make demo            # first, for --bundle: the quickstart's distilled toy-fast bundles in runs/quickstart
    python benchmarks/tracking.py --bundle runs/quickstart/orchard-openvino-int8.sam3edge     # ~10 min

Rows (``sam3edge.data.orchard_video.OrchardRow``, ``--frames`` frames each, seeds ``--seeds``, none of which
trains or validates anything else) are segmented for the three apple concepts. Per source of detections
(ground truth boxes at score 0.9; the toy teacher, PyTorch; the bundle, torch-free runtime) the ByteTrack tracker
(``sam3edge.runtime.tracking``, defaults; the three apple states one exclusive group unless ``--per-concept``)
runs, and the tracks are scored against the ground truth with ``trackeval`` (HOTA; MOTA, IDF1 and identity switches
at box IoU >= 0.5) per concept (a track's concept: the one it is counted under), combined over concepts and rows;
counting error: |unique tracked ripe apples - ripe apples the camera saw| / the latter, over all rows and summed
row by row. trackeval is installed without its dependencies (it requires the GUI ``opencv-python``, which must not
sit beside our ``opencv-python-headless``; ``make`` does this): ``pip install --no-deps trackeval``.
Overhead: tracker + counters per frame at 16 concepts with 10 detections each (synthetic boxes), median ms.

Writes ``benchmarks/results/tracking_<KERNELS>.{json,md}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sam3edge.atomic import atomic_write_text  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONCEPTS = ("ripe apple", "unripe apple", "bruised apple")


def _sequences(frames_gt: list[list[dict]], frames_pred: list, labels: dict[int, str],
               category_of: dict[str, int]) -> list[dict]:
    """One row as trackeval sequences, one per concept: ground-truth ids of that category against the tracks
    counted under that phrase (``labels``: track id -> its counted phrase), box IoU as the similarity."""
    from sam3edge.runtime.tracking import box_iou

    seqs = []
    for phrase, cat in category_of.items():
        gt_ids, tr_ids, sims, gt_map, tr_map = [], [], [], {}, {}
        for gt, pred in zip(frames_gt, frames_pred):
            g = [o for o in gt if o["category_id"] == cat]
            keep = [i for i, tid in enumerate(pred.track_ids.tolist()) if labels.get(tid) == phrase]
            gt_ids.append(np.asarray([gt_map.setdefault(o["id"], len(gt_map)) for o in g], np.int64))
            tr_ids.append(np.asarray([tr_map.setdefault(int(pred.track_ids[i]), len(tr_map)) for i in keep], np.int64))
            sims.append(box_iou(np.asarray([o["box"] for o in g]).reshape(-1, 4), pred.boxes[keep]))
        seqs.append({"num_timesteps": len(frames_gt), "gt_ids": gt_ids, "tracker_ids": tr_ids,
                     "similarity_scores": sims, "num_gt_ids": len(gt_map), "num_tracker_ids": len(tr_map),
                     "num_gt_dets": sum(map(len, gt_ids)), "num_tracker_dets": sum(map(len, tr_ids))})
    return seqs


def _summary(seqs: list[dict]) -> dict:
    """trackeval's HOTA, CLEAR (MOTA at IoU 0.5) and Identity (IDF1) combined over every sequence."""
    from trackeval.metrics import CLEAR, HOTA, Identity

    out = {}
    for metric in (HOTA(), CLEAR({"THRESHOLD": 0.5, "PRINT_CONFIG": False}), Identity({"THRESHOLD": 0.5,
                                                                                       "PRINT_CONFIG": False})):
        res = metric.combine_sequences({str(i): metric.eval_sequence(s) for i, s in enumerate(seqs)})
        out.update(res)
    return {"hota": float(np.mean(out["HOTA"])), "deta": float(np.mean(out["DetA"])),
            "assa": float(np.mean(out["AssA"])), "idf1": float(out["IDF1"]), "mota": float(out["MOTA"]),
            "id_switches": int(out["IDSW"]), "objects": int(sum(s["num_gt_ids"] for s in seqs)),
            "mostly_tracked": int(out["MT"])}


def _overhead(runs: int = 300) -> dict:
    from sam3edge.runtime.instances import Instances
    from sam3edge.runtime.tracking import ByteTracker, LineCounter, TrackCounter

    rng = np.random.default_rng(0)
    phrases = [f"concept {i}" for i in range(16)]
    base = rng.uniform(0, 600, (16, 10, 2))
    tracker, counter, line = ByteTracker(), TrackCounter(), LineCounter((320, 0), (320, 480))
    times = []
    for t in range(runs):
        xy = base + t * 2.0 + rng.normal(0, 1, base.shape)
        boxes = np.concatenate([xy, xy + 30], -1).reshape(-1, 4)
        inst = Instances([p for p in phrases for _ in range(10)], np.repeat(np.arange(16), 10),
                         rng.uniform(0.3, 1.0, 160), boxes, None, {}, (480, 640))
        start = time.perf_counter()
        out = tracker.update(inst)
        counter.update(out)
        line.update(out)
        times.append(time.perf_counter() - start)
    return {"concepts": 16, "detections_per_frame": 160, "ms_median": 1000 * float(np.median(times[20:])),
            "ms_p90": 1000 * float(np.percentile(times[20:], 90))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, help="a student bundle of the orchard concepts (default: none)")
    ap.add_argument("--teacher", default="orchard-toy", help="teacher for the teacher row ('none': skip)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[9101, 9102, 9103, 9104, 9105, 9106, 9107, 9108])
    ap.add_argument("--frames", type=int, default=400)
    ap.add_argument("--speed", type=float, default=3.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--per-concept", action="store_true",
                    help="track each concept apart (default: the three apple states as one exclusive group)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    from tqdm import tqdm

    from sam3edge.data.orchard import ORCHARD_VOCABULARY, RIPE
    from sam3edge.data.orchard_video import OrchardRow
    from sam3edge.runtime.cpu import cpu_info
    from sam3edge.runtime.instances import Instances
    from sam3edge.runtime.tracking import ByteTracker, TrackCounter, TrackerConfig

    category_of = {p: next(c for c, n in ORCHARD_VOCABULARY.categories.items() if n == p) for p in CONCEPTS}
    names = {c: p for p, c in category_of.items()}
    detectors = {"ground truth": None}
    if args.teacher != "none":
        import torch

        from sam3edge.models.bundled import resolve_model
        from sam3edge.models.teacher import Sam3Teacher

        torch.set_num_threads(args.threads)
        teacher = Sam3Teacher.from_pretrained(resolve_model(args.teacher)).eval()

        def teacher_detect(image):
            with torch.no_grad():
                out = teacher([image], list(CONCEPTS))
            rows = [(p, out.instances(0, i, score_threshold=0.1)) for i, p in enumerate(CONCEPTS)]
            return Instances([p for p, r in rows for _ in range(len(r["scores"]))],
                             [i for i, (_, r) in enumerate(rows) for _ in range(len(r["scores"]))],
                             np.concatenate([r["scores"].numpy() for _, r in rows]),
                             np.concatenate([r["boxes"].numpy().reshape(-1, 4) for _, r in rows]), None, {},
                             image.shape[:2])

        detectors[f"teacher ({args.teacher}, PyTorch)"] = teacher_detect
    if args.bundle:
        from sam3edge.runtime import Segmenter

        seg = Segmenter.load(args.bundle, threads=args.threads)
        seg.set_concepts(list(CONCEPTS))
        detectors[f"student ({args.bundle.name})"] = lambda image: seg.segment(image, score_threshold=0.1,
                                                                              masks=False)
    config = TrackerConfig(exclusive=() if args.per_concept else (CONCEPTS,))
    results = {name: {"seqs": [], "ripe_counted": [], "ripe_truth": [], "ms": []} for name in detectors}
    for seed in args.seeds:
        row = OrchardRow(seed, frames=args.frames, speed=args.speed)
        frames = [row.frame(t) for t in range(len(row))]
        truth_ripe = len({o["id"] for _, objs in frames for o in objs if o["category_id"] == RIPE})
        for name, detect in detectors.items():
            tracker, counter, preds = ByteTracker(config), TrackCounter(), []
            for image, objects in tqdm(frames, desc=f"seed {seed}: {name}", unit="frame", leave=False):
                if detect is None:
                    apples = [o for o in objects if o["category_id"] in names]
                    inst = Instances([names[o["category_id"]] for o in apples], [0] * len(apples),
                                     [0.9] * len(apples), [o["box"] for o in apples], None, {}, image.shape[:2])
                else:
                    start = time.perf_counter()
                    inst = detect(image)
                    results[name]["ms"].append(1000 * (time.perf_counter() - start))
                tracked = tracker.update(inst)
                counter.update(tracked)
                preds.append(tracked)
            r = results[name]
            labels = {tid: counter.label(tid) for p in preds for tid in p.track_ids.tolist()}
            r["seqs"] += _sequences([o for _, o in frames], preds, labels, category_of)
            r["ripe_counted"].append(counter.counts.get("ripe apple", 0))
            r["ripe_truth"].append(truth_ripe)
            print(json.dumps({"seed": seed, "detector": name, "ripe_counted": counter.counts.get("ripe apple", 0),
                              "ripe_truth": truth_ripe}), flush=True)
    rows = []
    for name, r in results.items():
        counted, truth = np.asarray(r["ripe_counted"]), np.asarray(r["ripe_truth"])
        rows.append({"detector": name, **_summary(r["seqs"]), "ripe_counted": int(counted.sum()),
                     "ripe_truth": int(truth.sum()), "ripe_counted_per_row": counted.tolist(),
                     "ripe_truth_per_row": truth.tolist(),
                     "count_error": abs(int(counted.sum() - truth.sum())) / max(1, int(truth.sum())),
                     "count_error_per_row": float(np.abs(counted - truth).sum()) / max(1, int(truth.sum())),
                     "detector_ms": float(np.median(r["ms"])) if r["ms"] else None})
        print(json.dumps(rows[-1]), flush=True)
    overhead = _overhead()
    cpu = cpu_info()
    result = {"command": "python benchmarks/tracking.py " + " ".join(argv or sys.argv[1:]), "seeds": args.seeds,
              "frames": args.frames, "speed_px_per_frame": args.speed, "concepts": list(CONCEPTS),
              "tracker": {"name": "bytetrack", **dataclasses.asdict(config)},
              "threads": args.threads, "cpu": cpu.to_json(), "rows": rows, "overhead": overhead}
    stem = REPO / "benchmarks" / "results" / (args.out or f"tracking_{cpu.int8_kernels}")
    atomic_write_text(stem.with_suffix(".json"), json.dumps(result, indent=1))
    grouping = ("each concept tracked apart" if args.per_concept else
                "the three apple states one exclusive group (one identity per apple, counted under its likeliest "
                "state)")
    md = [f"Orchard rows (`OrchardRow`, seeds {', '.join(map(str, args.seeds))}, {args.frames} frames of 320 x 240 "
          f"each, camera {args.speed:g} px per frame), concepts {', '.join(CONCEPTS)}; ByteTrack "
          f"(`sam3edge.runtime.tracking`, defaults, {grouping}); trackeval (HOTA; MOTA and IDF1 at box IoU >= 0.5) "
          "over every row and concept, a track's concept being the one it is counted under; "
          f"{cpu.describe()}, {args.threads} threads.", "",
          "Count error: |ripe apples counted - seen| over all rows / seen; per row: the sum of each row's "
          "|counted - seen| / seen (errors of opposite sign in two rows do not cancel).", "",
          "| detections | HOTA | IDF1 | MOTA | ID switches | objects | mostly tracked | ripe apples counted / seen | "
          "count error (per row) | detector ms/frame |", "|---|---|---|---|---|---|---|---|---|---|"]
    md += [f"| {r['detector']} | {r['hota']:.3f} | {r['idf1']:.3f} | {r['mota']:.3f} | {r['id_switches']} | "
           f"{r['objects']} | {r['mostly_tracked']} | {r['ripe_counted']} / {r['ripe_truth']} | "
           f"{r['count_error']:.1%} ({r['count_error_per_row']:.1%}) | "
           + ("-" if r["detector_ms"] is None else f"{r['detector_ms']:.1f}") + " |" for r in rows]
    md += ["", f"Tracking + counting cost: {overhead['ms_median']:.3f} ms per frame (p90 {overhead['ms_p90']:.3f}) "
               f"at {overhead['concepts']} concepts x 10 detections."]
    atomic_write_text(stem.with_suffix(".md"), "\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
