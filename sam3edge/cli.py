"""``sam3edge <verb>``: the command line. Only verbs that work are listed.

Heavy imports (torch, transformers) happen inside the verbs, so ``sam3edge --help`` is instant.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sam3edge.distill.config import TEXT_STEPS_MIN
from sam3edge.models.bundled import resolve_model
from sam3edge.models.student_spec import TEXT_MODES
from sam3edge.quickstart import QuickstartConfig


def _cmd_data_orchard(args) -> int:
    from sam3edge.data.orchard_dataset import write_orchard_dataset

    path = write_orchard_dataset(args.out, n=args.n, seed=args.seed, size=args.size, distractors=args.distractors,
                                 synonym_rate=args.synonym_rate, progress=not args.quiet)
    print(f"wrote {path}")
    return 0


def _cmd_data_orchard_video(args) -> int:
    from sam3edge.data.orchard_video import write_orchard_video

    info = write_orchard_video(args.out, seed=args.seed, frames=args.frames, width=args.width, height=args.height,
                               speed=args.speed, progress=not args.quiet)
    print(f"wrote {args.out}/{info['video']}, gt.txt and gt.json: {args.frames} frames; objects seen: "
          + ", ".join(f"{n} {name}" for name, n in info["unique"].items()))
    return 0


def _cmd_eval(args) -> int:
    import torch

    from sam3edge.atomic import atomic_write_text
    from sam3edge.data.coco import ConceptDataset
    from sam3edge.eval import evaluate
    from sam3edge.eval.predict import predict_dataset
    from sam3edge.models.teacher import Sam3Teacher

    if args.threads:
        torch.set_num_threads(args.threads)
    dataset = ConceptDataset.load(args.data)
    model = Sam3Teacher.from_pretrained(resolve_model(args.model), device=args.device)
    preds = predict_dataset(model, dataset, progress=not args.quiet)
    report = evaluate(args.data, preds, score_threshold=args.threshold)
    print(report.format_table())
    if args.json:
        atomic_write_text(args.json, json.dumps(report.to_dict(), indent=1))
        print(f"wrote {args.json}")
    if args.predictions:
        atomic_write_text(args.predictions, json.dumps(preds))
    return 0


def _cmd_export(args) -> int:
    from sam3edge.data.vocabulary import parse_phrases
    from sam3edge.export.bundle import export_bundle

    concepts = parse_phrases(args.concepts) if args.concepts else None
    m = export_bundle(args.source, args.out, target=args.target, precision=args.precision, calib=args.calib,
                      concepts=concepts, overwrite=args.overwrite, force=args.force, progress=not args.quiet,
                      profile=args.profile, fused_ops={"auto": None, "fused": True, "plain": False}[args.ops],
                      teacher=args.teacher)
    v, prof = m["verification"], m.get("device_profile")
    if prof and not prof["input_size_matches"]:
        print(f"note: device profile {prof['name']} is sized for {prof['input_size']} px input, this student takes "
              f"{m['student']['input_size']} px (distil with --input-size {prof['input_size']} to match it)")
    size = sum((Path(args.out) / f).stat().st_size for f in m["files"])
    head = f"wrote {args.out} ({size / 1e6:.1f} MB, {m['target']} {m['precision']})"
    if not v["ran"]:
        print(f"{head}; not verified on this host: {v['reason']}")
    elif v.get("reference_instances") == 0:  # recall and IoU of nothing would print as a perfect 1.000
        print(f"{head}: {v['runner']} vs PyTorch on {v['verification_images']} images x {v['concepts']} concepts: "
              f"score MAE {v['score_mae']:.4f}; instances and masks NOT verified: PyTorch kept no instance on these "
              "images (give --calib images where the concepts occur)")
    else:
        print(f"{head}: {v['runner']} vs PyTorch on {v['verification_images']} images x {v['concepts']} concepts: "
              f"recall {v['recall']:.3f}, mask IoU {v['mask_iou']:.3f}, score MAE {v['score_mae']:.4f} "
              f"({v['reference_instances']} instances)")
    if v["failed"]:
        print(f"FAILED ({'; '.join(v['failed'])}), written because of --force")
    return 0


def _load_segmenter(args):
    from sam3edge.runtime.segmenter import Segmenter

    seg = Segmenter.load(args.bundle, backend=args.backend, device=args.device, threads=args.threads,
                         resize=args.resize)
    if getattr(args, "concept", None):
        seg.set_concepts(args.concept)
    return seg


def _exemplar_args(args) -> list:
    """--box values -> exemplars, refused before the bundle loads: they are boxes on one image."""
    if not args.box:
        return []
    from sam3edge.runtime.exemplars import MAX_EXEMPLARS, VISUAL, parse_box
    from sam3edge.runtime.sources import image_suffixes

    boxes = [parse_box(b) for b in args.box]
    if len(boxes) > MAX_EXEMPLARS:
        raise ValueError(f"{len(boxes)} --box exemplars; at most {MAX_EXEMPLARS}")
    path = Path(args.input)
    if not (path.is_file() and path.suffix.lower() in image_suffixes()):
        raise ValueError(f"--box draws exemplars on one image, and {args.input} is not an image file (a folder, "
                         "video, camera or stream has many frames): segment one image with --box")
    if not args.concept:
        args.concept = [VISUAL]  # boxes alone: SAM3's visual-only prompt
    return boxes


class _WithExemplars:
    """A Segmenter whose ``infer`` adds the same exemplar boxes to every call (``segment --box``, one image)."""

    def __init__(self, segmenter, exemplars: list):
        self._segmenter, self._exemplars = segmenter, exemplars

    def infer(self, prepared):
        return self._segmenter.infer(prepared, self._exemplars)

    def __getattr__(self, name):
        return getattr(self._segmenter, name)


def _parse_line(text: str) -> tuple[tuple[float, float], tuple[float, float]]:
    import math

    try:
        v = [float(x) for x in text.split(",")]
    except ValueError:
        v = []
    if len(v) != 4 or not all(math.isfinite(x) for x in v) or v[:2] == v[2:]:
        raise ValueError(f"--line {text!r}: expected X0,Y0,X1,Y1, four finite pixel coordinates of two different "
                         "points, e.g. --line 320,0,320,480")
    return (v[0], v[1]), (v[2], v[3])


def _parse_zone(text: str) -> list[tuple[float, float]]:
    """--zone 'x0,y0,x1,y1,x2,y2,...' -> the polygon's points (3 or more, enclosing an area)."""
    from sam3edge.runtime.tracking import ZoneCounter

    try:
        v = [float(x) for x in text.split(",")]
    except ValueError:
        v = []
    if len(v) < 6 or len(v) % 2:
        raise ValueError(f"--zone {text!r}: expected X0,Y0,X1,Y1,X2,Y2[,...], three or more points in pixels, "
                         "e.g. --zone 0,120,320,120,320,240,0,240")
    points = list(zip(v[0::2], v[1::2]))
    ZoneCounter(points, f"--zone {text!r}")  # the same checks as the counter's: finite, some area
    return points


def _parse_group(text: str) -> tuple[str, ...]:
    """--exclusive 'ripe apple,unripe apple' -> the phrases (two or more, different)."""
    group = tuple(p.strip() for p in text.split(","))
    if len(group) < 2 or not all(group) or len(set(group)) != len(group):
        raise ValueError(f"--exclusive {text!r}: expected two or more different comma-separated phrases, e.g. "
                         "--exclusive 'ripe apple,unripe apple,bruised apple'")
    return group


def _cmd_segment(args) -> int:
    from sam3edge.runtime.segment import segment_source

    lines = [_parse_line(x) for x in args.line or []]  # refused before the bundle loads
    if lines and not args.track:
        raise ValueError("--line counts tracked objects: add --track")
    exclusive = [_parse_group(x) for x in args.exclusive or []]
    if exclusive and not args.track:
        raise ValueError("--exclusive groups tracked objects: add --track")
    zones = [_parse_zone(x) for x in args.zone or []]
    if zones and not args.track:
        raise ValueError("--zone counts tracked objects: add --track")
    exemplars = _exemplar_args(args)
    seg = _load_segmenter(args)
    if exemplars:
        seg = _WithExemplars(seg, exemplars)
    summary = segment_source(seg, args.input, args.out, score_threshold=args.threshold, top_k=args.top_k,
                             masks=not args.no_masks, overlays=not args.no_overlays, stride=args.stride,
                             max_frames=args.max_frames, progress=not args.quiet, overwrite=args.overwrite,
                             track=args.track, lines=lines, topic=args.topic, bag_out=args.bag_out,
                             video_out=args.video_out, fps=args.fps, exclusive=exclusive, zones=zones)
    if summary["skipped"]:
        print(f"sam3edge segment: skipped {len(summary['skipped'])} unreadable file(s), e.g. "
              f"{summary['skipped'][0]['file']}: {summary['skipped'][0]['error']} (listed in "
              f"{summary['predictions']})", file=sys.stderr)
    if summary["frames"] == 0:  # a camera or URL that delivered nothing is a failure, not an empty success
        print(f"sam3edge segment: error: {args.input} delivered no frame; nothing was segmented "
              f"(an empty {summary['predictions']} was written)", file=sys.stderr)
        return 1
    print(f"{summary['frames']} frame(s), {summary['instances']} instance(s) of {', '.join(seg.concepts)} with "
          f"{seg.backend_name}: {summary['ms_per_frame']:.1f} ms of work per frame, {summary['fps']:.1f} fps "
          f"(pipelined); wrote {summary['predictions']} (and one line per frame in {summary['lines']})"
          + (f" and overlays in {summary['overlays']}" if summary["overlays"] else "")
          + (f"; results bag {summary['bag']}" if summary.get("bag") else "")
          + (f"; annotated video {summary['video']}" if summary.get("video") else ""))
    tracking = summary.get("tracking")
    if tracking:
        print("unique objects: " + (", ".join(f"{p} {n}" for p, n in tracking["unique"].items()) or "none")
              + f" (tracks in {tracking['mot']})")
        for i, counts in enumerate(tracking["lines"]):
            print(f"line {i + 1}: " + (", ".join(f"{p} in {c['in']} / out {c['out']}" for p, c in counts.items())
                                       or "no crossing"))
        for i, counts in enumerate(tracking["zones"]):
            print(f"zone {i + 1}: " + (", ".join(f"{p} inside {c['inside']}, entered {c['entered']}, exited "
                                                 f"{c['exited']}, {c['unique']} seen inside"
                                                 for p, c in counts.items()) or "nothing inside"))
    return 0


def _cmd_bench(args) -> int:
    from sam3edge.runtime.bench import format_summary, load_images, orchard_frames, run_bench, write_report

    seg = _load_segmenter(args)
    if args.images:
        images, source = load_images(args.images, limit=args.n_images), str(args.images)
    else:
        images, source = orchard_frames(args.n_images), f"{args.n_images} orchard scenes, 480x640 (seed 0)"
    command = "sam3edge bench " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["bench"] else None
    report = run_bench(seg, images, runs=args.runs, warmup=args.warmup, frames=args.frames, threads=args.threads,
                       images_source=source, command=command)
    if args.data or args.vs_teacher:  # the torch side: evaluation code, the PyTorch teacher
        from sam3edge.eval.bench_accuracy import accuracy_on_dataset, vs_teacher

        if args.data:
            report["accuracy"] = accuracy_on_dataset(seg, args.data, known_only=args.known_only)
        if args.vs_teacher:
            report["teacher"] = vs_teacher(seg, resolve_model(args.vs_teacher), images[:args.teacher_images],
                                           threads=args.threads)
    paths = write_report(report, args.out)
    print(format_summary(report))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def _cmd_quickstart(args) -> int:
    from sam3edge.quickstart import QuickstartConfig, format_table, run_quickstart

    cfg = QuickstartConfig(out=args.out, teacher=args.teacher, images=args.images, data=args.data,
                           student=args.student, n_train=args.n_train, n_eval=args.n_eval, steps=args.steps,
                           stage2_steps=args.stage2_steps, threads=args.threads)
    result = run_quickstart(cfg, progress=not args.quiet)
    print()
    print(format_table(result))
    print(f"\nwrote {args.out}/quickstart.md, bundles {args.out}/orchard-*-int8.sam3edge, overlays {args.out}/overlays")
    return 0


def _cmd_build_engines(args) -> int:
    import json

    from sam3edge.export.spec import ExportSpec
    from sam3edge.export.tensorrt import build_bundle_engines
    from sam3edge.runtime.bundle import Bundle

    bundle = Bundle.open(args.bundle)
    if bundle.target != "tensorrt":
        raise ValueError(f"{args.bundle} is a {bundle.target} bundle; engines are built for tensorrt bundles "
                         "(export with --target tensorrt or a Jetson / nvidia-gpu --profile)")
    config = json.loads(bundle.resolve("graphs/tensorrt.json").read_text())
    paths = {name: bundle.graph_path(name) for name in bundle.manifest["graphs"]}
    engines = build_bundle_engines(paths, ExportSpec.from_json(bundle.manifest["export_spec"]), config)
    for name, path in engines.items():
        print(f"{name}: {path}")
    return 0


def _cmd_devices(args) -> int:
    from sam3edge.devices.host import can_export, can_run, detect
    from sam3edge.devices.profiles import list_profiles

    host, profiles = detect(), list_profiles()
    rows = []
    for p in profiles.values():
        (exp, why_exp), (run, why_run) = can_export(p, host), can_run(p, host)
        rows.append({"profile": p.name, "target": p.target, "precision": p.precision,
                     "precisions": list(p.precisions), "input_size": p.input_size,
                     "memory_budget_mb": p.memory_budget_mb, "backend": p.runtime["backend"],
                     "export_here": exp, "export_note": why_exp, "run_here": run, "run_note": why_run,
                     "description": p.description})
    if args.json:
        print(json.dumps({"host": host.to_json(), "profiles": rows}, indent=1))
        return 0
    print(f"host: {host.system}, {host.isa}, {host.cores} cores; int8 kernels: {host.int8_kernels}")
    print(f"  onnxruntime {host.onnxruntime or '-'}: {', '.join(host.ort_providers) or 'not installed'}")
    print(f"  OpenVINO {host.openvino or '-'}: {', '.join(host.openvino_devices) or 'not installed'}")
    print(f"  TensorRT: {host.tensorrt or 'not installed'}; NVIDIA GPUs: {host.cuda_devices}; "
          f"Jetson: {host.jetson or 'no'}; coremltools: {host.coremltools or 'not installed'}")
    print()
    head = ("profile", "target", "precision", "input", "budget MB", "export here", "run here")
    table = [(r["profile"], r["target"], "/".join(r["precisions"]).replace(r["precision"], r["precision"] + "*"),
              str(r["input_size"]), str(r["memory_budget_mb"]),
              "yes" if r["export_here"] and r["export_note"] == "yes" else
              (r["export_note"] if r["export_here"] else "no: " + r["export_note"]),
              "yes" if r["run_here"] and r["run_note"] == "yes" else
              (r["run_note"] if r["run_here"] else "no: " + r["run_note"])) for r in rows]
    widths = [max(len(h), *(len(t[i]) for t in table)) for i, h in enumerate(head)]
    for line in (head, tuple("-" * w for w in widths), *table):
        print("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip())
    print("\n* default precision. `sam3edge export RUN --profile PROFILE` exports for a profile; "
          "a profile can also be your own .json file (same fields).")
    return 0


def _cmd_concepts_list(args) -> int:
    from sam3edge.runtime.bundle import Bundle

    bundle = Bundle.open(args.bundle)
    visual = bundle.manifest.get("visual_concepts") or {}
    for c in bundle.concepts:
        v = visual.get(c)
        print(c + (f"  (visual: {len(v['boxes'])} box(es) with {v['phrase']!r} on a {v['image_size'][1]} x "
                   f"{v['image_size'][0]} image, {v['added']})" if isinstance(v, dict) else ""))
    return 0


def _cmd_concepts_add(args) -> int:
    from sam3edge.runtime.exemplars import parse_box

    boxes = [parse_box(b) for b in args.box]  # refused before the bundle loads
    if not args.image.is_file():
        raise FileNotFoundError(f"--image {args.image} does not exist")
    from sam3edge.runtime.visual_concept import add_visual_concept

    manifest = add_visual_concept(args.bundle, args.name, args.image, boxes, phrase=args.phrase,
                                  backend=args.backend, threads=args.threads)
    print(f"added {args.name!r} to {args.bundle} ({len(boxes)} box(es) with {args.phrase!r}); it now has "
          f"{len(manifest['concepts'])} concepts: segment with --concept {args.name!r}")
    return 0


def _cmd_students(args) -> int:
    from sam3edge.models.complexity import complexity
    from sam3edge.models.registry import get_student_spec, list_students

    names = args.names or list_students()
    rows = []
    for name in names:
        spec = get_student_spec(name)
        h = spec.heads
        rows.append({"name": name, "backbone": spec.backbone, "input_size": spec.input_size,
                     "mask_size": spec.mask_size, "hidden_size": h.hidden_size, "encoder_layers": h.encoder_layers,
                     "decoder_layers": h.decoder_layers, "num_queries": h.num_queries, "text_mode": spec.text_mode,
                     "teacher": spec.teacher, "export": spec.to_dict()["export"], "description": spec.description,
                     **complexity(spec).to_dict()})
    if args.json != "-":
        head = (f"{'name':20s} {'backbone':23s} {'input':>5s} {'C/enc/dec/Q':>13s} {'params M':>8s} "
                f"{'no text':>7s} {'GFLOPs':>7s} {'top-K':>7s}  {'text':7s} teacher")
        print(head)
        print("-" * len(head))
        for r in rows:
            heads = f"{r['hidden_size']}/{r['encoder_layers']}/{r['decoder_layers']}/{r['num_queries']}"
            print(f"{r['name']:20s} {r['backbone']:23s} {r['input_size']:5d} {heads:>13s} "
                  f"{r['params_total'] / 1e6:8.2f} {r['params_without_text'] / 1e6:7.2f} {r['gflops']:7.1f} "
                  f"{r['gflops_topk']:7.1f}  {r['text_mode']:7s} {r['teacher']}")
        print("params: total (with a text encoder of the entry's size) and without it (concept-cache deployment). "
              "GFLOPs: one image + one phrase, 2 x multiply-adds of conv / linear / matmul / attention only "
              "(torch FlopCounterMode); 'top-K': masks for the export top-K queries only.")
    if args.json:
        text = json.dumps(rows, indent=1)
        if args.json == "-":
            print(text)
        else:
            from sam3edge.atomic import atomic_write_text

            atomic_write_text(args.json, text)
            print(f"wrote {args.json}")
    return 0


def _cmd_distill(args) -> int:
    from sam3edge.data.vocabulary import parse_phrases
    from sam3edge.distill.config import DistillConfig

    if args.concepts:
        concepts = parse_phrases(args.concepts)
    elif Path(args.images).suffix.lower() == ".json":
        from sam3edge.data.coco import ConceptDataset

        concepts = ConceptDataset.load(args.images).phrases  # the dataset's own phrases
    else:
        raise ValueError("--concepts is required with an image folder: pass 'ripe apple,leaf' or a file")
    stages = [int(s) for s in str(args.stages).split(",") if s.strip()]
    overrides = {"input_size": args.input_size} if args.input_size else {}
    if args.text:
        overrides["text_mode"] = args.text
    cfg = DistillConfig(teacher=resolve_model(args.teacher), images=str(args.images), concepts=concepts,
                        student=args.student, out=str(args.out), stages=stages, steps=args.steps,
                        stage1_steps=args.stage1_steps, batch=args.batch, pairs=args.pairs, lr=args.lr,
                        stage1_lr=args.stage1_lr, text_steps=args.text_steps, text_corpus=args.text_corpus,
                        amp=True if args.amp else None, seed=args.seed, init_heads=not args.no_init_heads,
                        init_layers=args.init_layers, init_queries=args.init_queries,
                        holdout=args.holdout, exemplars=args.exemplars, threads=args.threads,
                        student_overrides=overrides, backbone_weights=args.backbone_weights)
    # torch loads only once the settings are known to be good: a refusal answers in a second
    import torch

    from sam3edge.distill.run import distill

    device = args.device
    if device == "auto":
        device = f"cuda:{_local_rank()}" if torch.cuda.is_available() else "cpu"
    report = distill(cfg, resume=True, progress=not args.quiet, device=device)
    ev = report.get("eval", {})
    if ev:
        print(json.dumps({"vs_teacher": ev.get("vs_teacher"), "vs_ground_truth": ev.get("vs_ground_truth")},
                         indent=1))
        print(f"student: {Path(args.out) / 'student'}   report: {Path(args.out) / 'report.json'}")
    return 0


def _local_rank() -> int:
    import os

    return int(os.environ.get("LOCAL_RANK", 0))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sam3edge", description="SAM3 concept segmentation, distilled for the edge.")
    sub = p.add_subparsers(dest="verb", metavar="VERB")

    data = sub.add_parser("data", help="generate or convert datasets")
    dsub = data.add_subparsers(dest="what", metavar="KIND", required=True)
    o = dsub.add_parser("orchard", help="render the synthetic orchard concept domain (SA-Co layout)")
    o.add_argument("--out", required=True, type=Path, help="output folder (images/ + annotations.json)")
    o.add_argument("--n", type=int, default=100, help="number of images")
    o.add_argument("--seed", type=int, default=0)
    o.add_argument("--size", type=int, default=224, help="image side in pixels")
    o.add_argument("--distractors", type=int, default=2, help="absent distractor phrases asked per image")
    o.add_argument("--synonym-rate", type=float, default=0.0, help="ask a concept by a synonym this often")
    o.add_argument("--quiet", action="store_true")
    o.set_defaults(func=_cmd_data_orchard)
    ov = dsub.add_parser("orchard-video", help="render a camera moving along an orchard row, with ground-truth "
                                               "identities (video + MOT-challenge gt.txt)")
    ov.add_argument("--out", required=True, type=Path, help="new output folder")
    ov.add_argument("--seed", type=int, default=0)
    ov.add_argument("--frames", type=int, default=300)
    ov.add_argument("--width", type=int, default=320)
    ov.add_argument("--height", type=int, default=240)
    ov.add_argument("--speed", type=float, default=2.0, help="camera speed along the row, pixels per frame")
    ov.add_argument("--quiet", action="store_true")
    ov.set_defaults(func=_cmd_data_orchard_video)

    e = sub.add_parser("eval", help="evaluate a SAM3 model on an SA-Co style dataset (cgF1, mask IoU, ...)")
    e.add_argument("--model", required=True, help="model directory, hub id, or a bundled name: orchard-toy")
    e.add_argument("--data", required=True, type=Path, help="SA-Co style annotations.json")
    e.add_argument("--threshold", type=float, default=0.5, help="score threshold (SAM3's cgF1 uses 0.5)")
    e.add_argument("--json", type=Path, help="also write the report as JSON here")
    e.add_argument("--predictions", type=Path, help="also write the COCO-style predictions here")
    e.add_argument("--device", default="cpu")
    e.add_argument("--threads", type=int, default=0)
    e.add_argument("--quiet", action="store_true")
    e.set_defaults(func=_cmd_eval)

    d = sub.add_parser("distill", help="distill a student from a SAM3 teacher on your images (cached, resumable)")
    d.add_argument("--teacher", required=True, help="teacher directory, hub id, or a bundled name: orchard-toy")
    d.add_argument("--images", required=True,
                   help="image folder, or an SA-Co/COCO annotations.json (adds ground truth)")
    d.add_argument("--concepts", help="'a,b,c' or a file (one phrase per line); default: the JSON's phrases")
    d.add_argument("--student", required=True, help="registry name (see `sam3edge students`), e.g. toy, edge-s")
    d.add_argument("--out", required=True, type=Path, help="run directory (running again resumes it)")
    d.add_argument("--stages", default="1,2", help="1 = encoders onto teacher features, 2 = end to end")
    d.add_argument("--steps", type=int, default=1000, help="stage-2 steps")
    d.add_argument("--stage1-steps", type=int, default=None, help="stage-1 steps (default: steps / 2)")
    d.add_argument("--batch", type=int, default=4, help="images per step")
    d.add_argument("--pairs", type=int, default=4, help="phrases per image per step")
    d.add_argument("--lr", type=float, default=4e-4, help="stage-2 learning rate")
    d.add_argument("--stage1-lr", type=float, default=1e-3, help="stage-1 learning rate")
    d.add_argument("--text", choices=list(TEXT_MODES),
                   help="the student's text path: cache (the teacher's features of the run's phrases only), "
                        "encoder (its own text encoder), both (cache for known phrases, an encoder distilled on a "
                        "broad phrase corpus for any other); default: the registry entry's")
    d.add_argument("--text-steps", type=int, default=None,
                   help=f"text-encoder distillation steps (default: the stage-1 steps, at least {TEXT_STEPS_MIN})")
    d.add_argument("--text-corpus", type=int, default=12000,
                   help="phrases of the corpus a text encoder is distilled on (5 %% held out for the report)")
    d.add_argument("--input-size", type=int, default=0, help="student input size (default: its registry entry)")
    d.add_argument("--holdout", type=float, default=0.1, help="fraction of images kept out for the report")
    d.add_argument("--exemplars", type=float, default=0.0,
                   help="fraction of stage-2 prompts of a found concept that carry an exemplar box, in equal "
                        "shares: the teacher's best instance as a positive box with the phrase, the same box alone, "
                        "and the phrase with a negative box on one of its instances; the cache then holds the "
                        "teacher's answers to those prompts (default 0: text prompts only)")
    d.add_argument("--amp", action="store_true", help="bf16 autocast (default: on for CUDA)")
    d.add_argument("--no-init-heads", action="store_true", help="do not start the heads from the teacher's")
    d.add_argument("--backbone-weights", metavar="FILE|timm",
                   help="start the backbone from a local timm-layout weights file (.safetensors / .pth), or from "
                        "timm's pretrained weights ('timm', needs the Hugging Face hub); default: random")
    d.add_argument("--init-layers", default="first", choices=["first", "last", "spread"],
                   help="teacher layers the student's layers start from, per stack (default: the first ones)")
    d.add_argument("--init-queries", default="first", choices=["first", "used"],
                   help="teacher query slots the student keeps: the first ones, or those the teacher uses most "
                        "on the training images")
    d.add_argument("--resume", action="store_true", help="accepted for clarity: a run directory always resumes")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    d.add_argument("--threads", type=int, default=0)
    d.add_argument("--quiet", action="store_true")
    d.set_defaults(func=_cmd_distill)

    x = sub.add_parser("export", help="export a distilled student to a verified bundle "
                                      "(ONNX / OpenVINO / Core ML / TensorRT; fp32, fp16, int8)")
    x.add_argument("source", help="distillation run directory (holding student/) or a saved student directory")
    x.add_argument("--profile", help="device profile (see `sam3edge devices`) or a profile .json: sets target and "
                                    "precision, and the memory budget the graphs must fit")
    x.add_argument("--target", help="onnx (default), openvino, coreml or tensorrt")
    x.add_argument("--precision", help="fp32 (default), fp16 or int8 (calibrated on --calib)")
    x.add_argument("--calib", help="folder of domain images for int8 calibration and verification "
                                   "(default: the run's own images)")
    x.add_argument("--concepts", help="the bundle's concepts ('a,b' or a file; default: all the student knows); "
                                      "phrases the student's cache lacks are encoded by its teacher")
    x.add_argument("--teacher", help="the teacher that encodes new --concepts (default: the run's own teacher)")
    x.add_argument("--out", required=True, help="bundle directory to write, e.g. orchard.sam3edge")
    x.add_argument("--overwrite", action="store_true", help="replace an existing bundle")
    x.add_argument("--force", action="store_true", help="write the bundle even if verification fails")
    x.add_argument("--ops", choices=["auto", "fused", "plain"], default="auto",
                   help="fused: the decoder's attentions and mask path as sam3edge fused-op nodes with ONNX function "
                        "bodies (TensorRT: plugins); plain: their standard-operator decomposition; auto (default): "
                        "fused for onnx and openvino, plain for tensorrt and coreml")
    x.add_argument("--quiet", action="store_true")
    x.set_defaults(func=_cmd_export)

    sg = sub.add_parser("segment", help="segment images, a folder, a video or a camera with a bundle "
                                        "(overlay PNGs + COCO-style JSON)")
    sg.add_argument("bundle", help="a NAME.sam3edge bundle directory (sam3edge export)")
    sg.add_argument("input", help="image, folder, video file, camera index (0) or stream URL")
    sg.add_argument("--concept", action="append", help="a concept phrase (repeat for more; default: the bundle's)")
    sg.add_argument("--box", action="append", metavar="X0,Y0,X1,Y1[:neg]",
                    help="an exemplar box on the input image, in its pixels: more like this (or, with :neg, not "
                         "like this); repeat for more (at most 16). With no --concept the prompt is the boxes alone "
                         "(SAM3's 'visual'). One image input only; onnx and openvino bundles")
    sg.add_argument("--out", required=True, type=Path, help="output directory")
    _runtime_args(sg)
    sg.add_argument("--threshold", type=float, default=0.5, help="score threshold (default 0.5)")
    sg.add_argument("--top-k", type=int, default=None, help="keep at most this many instances per frame")
    sg.add_argument("--no-masks", action="store_true", help="boxes and scores only (faster)")
    sg.add_argument("--no-overlays", action="store_true", help="write only the JSON")
    sg.add_argument("--stride", type=int, default=1, help="every Nth frame of a video")
    sg.add_argument("--max-frames", type=int, default=None)
    sg.add_argument("--overwrite", action="store_true",
                    help="replace an earlier run's results in --out (JSON, JSON lines, tracks, overlays, bag, video)")
    sg.add_argument("--track", action="store_true",
                    help="identities across frames (ByteTrack per concept): track ids in the results, tracks.txt "
                         "(MOT challenge), unique objects per concept; --threshold then starts tracks, and "
                         "detections down to 0.1 keep them alive")
    sg.add_argument("--line", action="append", metavar="X0,Y0,X1,Y1",
                    help="with --track: count crossings of this line segment (pixels), in and out per concept")
    sg.add_argument("--zone", action="append", metavar="X0,Y0,X1,Y1,X2,Y2,...",
                    help="with --track: count objects in this polygon (pixels): inside now, entries, exits, and "
                         "distinct objects seen inside, per concept")
    sg.add_argument("--exclusive", action="append", metavar="'A,B,...'",
                    help="with --track: phrases that are states of one kind of object ('ripe apple,unripe "
                         "apple'): one identity per object across them, counted once under its likeliest phrase")
    sg.add_argument("--video-out", action="store_true",
                    help="write OUT/annotated.mp4: masks, labels, track ids and counts drawn on every frame")
    sg.add_argument("--fps", type=float, default=None, help="frame rate of --video-out (default: the source's)")
    sg.add_argument("--topic", help="for a ROS 2 bag input: the image topic (default: its only one)")
    sg.add_argument("--bag-out", action="store_true",
                    help="also write the results as a ROS 2 bag (OUT/results_bag: vision_msgs detections + mask "
                         "images, stamped like the camera messages); needs the rosbags package")
    sg.add_argument("--quiet", action="store_true")
    sg.set_defaults(func=_cmd_segment)

    q = sub.add_parser("quickstart", help="the whole loop on the embedded default in minutes: distil a student "
                                          "from the toy teacher, export ONNX + OpenVINO int8, segment, compare")
    q.add_argument("--out", type=Path, default=Path("runs/quickstart"), help="work directory (rerunning resumes)")
    q.add_argument("--teacher", default="orchard-toy", help="teacher directory (default: the bundled orchard-toy)")
    q.add_argument("--images", help="a folder of your domain's images to distil on (default: rendered orchard)")
    q.add_argument("--data", help="an SA-Co / COCO annotations.json to score on (default: rendered orchard)")
    q.add_argument("--student", default="toy-fast", help="registry student (see `sam3edge students`; default toy-fast, "
                                                        "the fast multi-concept heads)")
    q.add_argument("--steps", type=int, default=900, help="stage-1 distillation steps (default 900)")
    q.add_argument("--stage2-steps", type=int, default=QuickstartConfig.stage2_steps,
                   help=f"stage-2 (end-to-end) steps (default {QuickstartConfig.stage2_steps}; 0: stage 1 only, "
                        "enough for --student toy)")
    q.add_argument("--n-train", type=int, default=160, help="rendered training scenes (default 160)")
    q.add_argument("--n-eval", type=int, default=40, help="rendered held-out scenes (default 40)")
    q.add_argument("--threads", type=int, default=2)
    q.add_argument("--quiet", action="store_true")
    q.set_defaults(func=_cmd_quickstart)

    bn = sub.add_parser("bench", help="latency per stage, throughput, memory (and accuracy, speed-up vs the "
                                      "teacher) of a bundle on this host: JSON + Markdown + PNG")
    bn.add_argument("bundle")
    bn.add_argument("--concept", action="append", help="concepts to run (default: the bundle's)")
    _runtime_args(bn)
    bn.add_argument("--runs", type=int, default=50, help="timed runs (default 50)")
    bn.add_argument("--warmup", type=int, default=5)
    bn.add_argument("--frames", type=int, default=200, help="frames of the throughput passes")
    bn.add_argument("--images", help="image folder / video to time on (default: rendered orchard scenes)")
    bn.add_argument("--n-images", type=int, default=8)
    bn.add_argument("--data", help="a COCO / SA-Co annotations.json: adds cgF1 and friends")
    bn.add_argument("--known-only", action="store_true", help="with --data: score only the phrases the bundle knows")
    bn.add_argument("--vs-teacher", help="a SAM3 teacher directory (or orchard-toy): speed-up and agreement")
    bn.add_argument("--teacher-images", type=int, default=4, help="images the teacher runs on (it is slow)")
    bn.add_argument("--out", type=Path, default=Path("runs/bench"), help="report directory (default runs/bench)")
    bn.set_defaults(func=_cmd_bench)

    be = sub.add_parser("build-engines", help="build a TensorRT bundle's engines on this GPU (cached in the bundle)")
    be.add_argument("bundle")
    be.set_defaults(func=_cmd_build_engines)

    dv = sub.add_parser("devices", help="list the device profiles and what this host can export and run")
    dv.add_argument("--json", action="store_true", help="print host facts and profiles as JSON")
    dv.set_defaults(func=_cmd_devices)

    cn = sub.add_parser("concepts", help="a bundle's concepts: list them, or add one from exemplar boxes")
    csub = cn.add_subparsers(dest="concepts_command", required=True)
    cl = csub.add_parser("list", help="the bundle's concepts (visual ones with where they came from)")
    cl.add_argument("bundle")
    cl.set_defaults(func=_cmd_concepts_list)
    ca = csub.add_parser("add", help="store the prompt of boxes drawn on one image as a concept: later images "
                                     "are segmented for it without boxes")
    ca.add_argument("bundle", help="a bundle with an exemplar encoder (rewritten in place, atomically)")
    ca.add_argument("--name", required=True, help="the new concept's name (what set_concepts / --concept take)")
    ca.add_argument("--image", required=True, type=Path, help="the image the boxes are drawn on")
    ca.add_argument("--box", action="append", required=True, metavar="X0,Y0,X1,Y1[:neg]",
                    help="an exemplar box in the image's pixels (repeat for more; :neg for a negative one)")
    ca.add_argument("--phrase", default="visual",
                    help="the phrase the boxes go with (default 'visual': SAM3's prompt of boxes alone)")
    ca.add_argument("--backend", default="auto", help="auto, onnxruntime or openvino")
    ca.add_argument("--threads", type=int, default=0)
    ca.set_defaults(func=_cmd_concepts_add)

    st = sub.add_parser("students", help="list the registered student architectures with parameters and GFLOPs")
    st.add_argument("names", nargs="*", help="only these registry entries (default: all)")
    st.add_argument("--json", metavar="PATH", help="also write the table as JSON here ('-': print JSON only)")
    st.set_defaults(func=_cmd_students)
    return p


def _runtime_args(p) -> None:
    p.add_argument("--backend", default="auto", help="auto, onnxruntime, openvino, tensorrt or coreml")
    p.add_argument("--device", default=None, help="backend device: cpu, cuda, tensorrt (onnxruntime); CPU, GPU, "
                                                  "NPU (OpenVINO); ALL, CPU_AND_NE (Core ML)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads of the backend (0: its default)")
    p.add_argument("--resize", default="stretch", choices=["stretch", "letterbox"],
                   help="how frames are fitted to the square input (stretch: as the students were trained)")


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a process manager stopping the robot's job): unwinds like Ctrl-C, so every command
    keeps what it finished (``segment`` writes its results of every finished frame)."""


def _on_sigterm(signum, frame):
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    import signal
    import threading

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    previous = None
    if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread only
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return _run(args)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _run(args) -> int:
    try:
        return args.func(args)
    except PermissionError as e:  # before OSError: say which path and what to do
        where = f" {e.filename!r}" if e.filename else ""
        print(f"sam3edge {args.verb}: error: no permission to write or read{where} ({e.strerror or e}); choose "
              "a path you can write to (e.g. --out under your home directory)", file=sys.stderr)
        return 2
    except (FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, ValueError, RuntimeError,
            KeyError, ImportError) as e:  # ImportError: an optional backend that is not installed (says which extra)
        print(f"sam3edge {args.verb}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # disk full, read-only file system, too many open files ...
        where = f" ({e.filename})" if e.filename else ""
        print(f"sam3edge {args.verb}: error: {e.strerror or e}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        # writes are atomic: what was being written is dropped, what existed before is untouched
        what = "terminated (SIGTERM)" if isinstance(e, Terminated) else "interrupted"
        print(f"\nsam3edge {args.verb}: {what}; finished outputs are kept, the unfinished one was not written",
              file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130


if __name__ == "__main__":
    raise SystemExit(main())
