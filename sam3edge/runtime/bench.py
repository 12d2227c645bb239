"""Benchmark a bundle on this host: per-stage latency, throughput, memory, size - torch-free.

::

    seg = Segmenter.load("orchard.sam3edge", threads=4)
    images = orchard_frames(8)                         # or load_images("photos/")
    report = run_bench(seg, images, runs=50, warmup=5, frames=200, threads=4)
    print(format_summary(report))
    write_report(report, "benchmarks/results")         # bench_<host>_<device>_<backend>_<precision>.{json,md,png}

Latency is ``Segmenter.segment`` end to end (image in, instances with masks at the original size out, score
threshold 0.5) and each stage of it (``Segmenter.timings``: preprocess, image_encoder, text, decoder,
postprocess). *Graph time* is image_encoder + text + decoder: what the backend spends in the graphs.
*Runtime overhead* is everything else ``segment`` costs (resizing in, masks out, Python glue), as a
fraction of graph time: ``(e2e - graph) / graph`` over the mean times. Throughput is ``run_stream`` over
the images cycled, one pass sequential and one pipelined.

The accuracy sections (``accuracy`` on an SA-Co dataset, ``teacher`` against the PyTorch teacher) need the
evaluation code and torch: they live in :mod:`sam3edge.eval.bench_accuracy` and are added to the report by
the caller. Standard library, numpy, Pillow and the backend's package only.
"""

from __future__ import annotations

import gc
import json
import platform
import re
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from sam3edge.runtime.segmenter import STAGES
from sam3edge.runtime.stream import peak_rss_mb, run_stream

__all__ = ["BENCH_FORMAT", "bench_environment", "format_summary", "load_images", "orchard_frames",
           "report_stem", "run_bench", "run_latency", "run_throughput", "to_markdown", "write_report"]

BENCH_FORMAT = "sam3edge-bench"
BENCH_VERSION = 1
GRAPH_STAGES = ("image_encoder", "text", "decoder")
PERCENTILES = (50, 90, 99)


# ---- images ---------------------------------------------------------------------------------------
def orchard_frames(n: int = 8, height: int = 480, width: int = 640, seed: int = 0) -> list[np.ndarray]:
    """``n`` synthetic orchard scenes as uint8 RGB [height, width, 3] (camera-like 480 x 640 by default).

    Rendered square at max(height, width) and centre-cropped, so objects keep their shape. The renderer
    (``sam3edge.data.orchard``) needs numpy only - no torch - so a torch-free device can benchmark without
    any image of its own.
    """
    from sam3edge.data.orchard import render_scene, scene_rng

    if n < 1 or height < 1 or width < 1:
        raise ValueError(f"orchard_frames: n, height and width must be >= 1, got {n}, {height}, {width}")
    side = max(height, width, 64)
    top, left = (side - height) // 2, (side - width) // 2
    return [np.ascontiguousarray(render_scene(scene_rng(seed, i), side).image[top:top + height, left:left + width])
            for i in range(n)]


def load_images(source, limit: int = 16) -> list[np.ndarray]:
    """Up to ``limit`` frames of ``source`` (image, folder, video: anything ``open_source`` opens) in memory."""
    from sam3edge.runtime.sources import open_source

    with open_source(source, max_frames=limit) as frames:
        images = [f.image for f in frames]
    if not images:
        raise ValueError(f"{source}: no frames to benchmark on")
    return images


def _check_images(images) -> list:
    if isinstance(images, np.ndarray) or not isinstance(images, (list, tuple)) or not images:
        raise ValueError("images must be a non-empty list of images (uint8 RGB [H, W, 3] arrays, PIL images or "
                         "paths); see orchard_frames() or load_images(folder)")
    return list(images)


# ---- latency --------------------------------------------------------------------------------------
def _percentiles(values_ms) -> dict:
    v = np.asarray(values_ms, np.float64)
    p = np.percentile(v, PERCENTILES) if v.size else [0.0] * len(PERCENTILES)
    out = {f"p{q}": round(float(x), 4) for q, x in zip(PERCENTILES, p)}
    out["mean"] = round(float(v.mean()) if v.size else 0.0, 4)
    return out


def run_latency(segmenter, images, runs: int = 50, warmup: int = 5, score_threshold: float = 0.5) -> dict:
    """Time ``segmenter.segment`` (masks on) over ``images`` cycled: ``warmup`` untimed runs, then ``runs``.

    Returns ``{"runs", "warmup", "score_threshold", "stages": {stage: {p50, p90, p99, mean}}, "e2e": {...},
    "graph": {...}, "overhead": fraction, "overhead_ms", "unaccounted_ms", "instances_per_frame",
    "text_encoder_ms"}`` in milliseconds. ``overhead`` = (mean e2e - mean graph) / mean graph;
    ``unaccounted_ms`` = mean of e2e minus the sum of the stages (what no stage timer covers);
    ``text_encoder_ms`` is the time to encode the current concepts anew (None without a text encoder): the
    cost of changing prompts, which the per-frame ``text`` stage (0 once the concepts are set) does not show.
    """
    images = _check_images(images)
    if isinstance(runs, bool) or not isinstance(runs, int) or runs < 1:
        raise ValueError(f"runs must be an int >= 1, got {runs!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be an int >= 0, got {warmup!r}")
    for i in range(warmup):
        segmenter.segment(images[i % len(images)], score_threshold=score_threshold)
    stage_ms = {s: [] for s in STAGES}
    e2e, counts = [], []
    gc.collect()
    for i in range(runs):
        t0 = time.perf_counter()
        inst = segmenter.segment(images[i % len(images)], score_threshold=score_threshold)
        e2e.append((time.perf_counter() - t0) * 1e3)
        for s in STAGES:
            stage_ms[s].append(float(segmenter.timings.get(s, 0.0)))
        counts.append(len(inst))
    e2e_a = np.asarray(e2e)
    graph = np.sum([stage_ms[s] for s in GRAPH_STAGES], axis=0)
    staged = np.sum([stage_ms[s] for s in STAGES], axis=0)
    graph_mean = float(graph.mean())
    return {
        "runs": runs, "warmup": warmup, "score_threshold": float(score_threshold), "images": len(images),
        "image_size": [int(v) for v in np.shape(images[0])[:2]] if isinstance(images[0], np.ndarray) else None,
        "stages": {s: _percentiles(stage_ms[s]) for s in STAGES},
        "e2e": _percentiles(e2e_a),
        "graph": _percentiles(graph),
        "overhead": round((float(e2e_a.mean()) - graph_mean) / graph_mean, 4) if graph_mean > 0 else None,
        "overhead_ms": round(float((e2e_a - graph).mean()), 4),
        "unaccounted_ms": round(float((e2e_a - staged).mean()), 4),
        "instances_per_frame": round(float(np.mean(counts)), 3),
        "text_encoder_ms": _text_encoder_ms(segmenter),
    }


def _text_encoder_ms(segmenter, repeats: int = 3) -> float | None:
    """Median time to encode the current concepts with the bundle's text encoder (None without one)."""
    if not segmenter.bundle.has_text_encoder or not segmenter.concepts:
        return None
    times = []
    for _ in range(repeats + 1):  # the first call warms the graph up
        t0 = time.perf_counter()
        segmenter.encode_text(segmenter.concepts)
        times.append((time.perf_counter() - t0) * 1e3)
    return round(float(np.median(times[1:])), 4)


# ---- throughput -----------------------------------------------------------------------------------
def run_throughput(segmenter, images, frames: int = 200, score_threshold: float = 0.5, queue_size: int = 4,
                   warmup: int = 2) -> dict:
    """Frames per second of ``run_stream`` over ``images`` cycled to ``frames`` frames, sequential then pipelined.

    Returns ``{"frames", "sequential_fps", "pipelined_fps", "pipelined_gain", "sequential": {...},
    "pipelined": {...}, "rss_start_mb", "rss_end_mb", "rss_peak_mb"}``; each mode's dict has frames, seconds,
    fps and its stages' mean/p50/p90 ms (``StreamStats``). RSS: at the start of the first pass, the end of the
    last, the highest sampled during both (MB; None where the platform does not tell).
    """
    images = _check_images(images)
    if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1:
        raise ValueError(f"frames must be an int >= 1, got {frames!r}")
    for i in range(warmup):
        segmenter.segment(images[i % len(images)], score_threshold=score_threshold)
    stats = {}
    for mode in ("sequential", "pipelined"):
        source = (images[i % len(images)] for i in range(frames))
        stats[mode] = run_stream(segmenter, source, score_threshold=score_threshold, queue_size=queue_size,
                                 pipelined=mode == "pipelined")
    seq, pipe = stats["sequential"], stats["pipelined"]
    peaks = [s.rss_peak_mb for s in (seq, pipe) if s.rss_peak_mb is not None]
    return {
        "frames": frames,
        "sequential_fps": round(seq.fps, 3), "pipelined_fps": round(pipe.fps, 3),
        "pipelined_gain": round(pipe.fps / seq.fps, 3) if seq.fps > 0 else None,
        **{mode: _stream_dict(s) for mode, s in stats.items()},
        "rss_start_mb": _round(seq.rss_start_mb), "rss_end_mb": _round(pipe.rss_end_mb),
        "rss_peak_mb": _round(max(peaks)) if peaks else None,
    }


def _stream_dict(s) -> dict:
    return {"frames": s.frames, "seconds": round(s.seconds, 4), "fps": round(s.fps, 3),
            "stages": {name: {"mean": round(st.mean_ms, 4), "p50": round(st.p50_ms, 4), "p90": round(st.p90_ms, 4)}
                       for name, st in s.stages.items()}}


def _round(v: float | None, digits: int = 2) -> float | None:
    return None if v is None else round(float(v), digits)


# ---- the environment ------------------------------------------------------------------------------
def _host_label(host) -> str:
    """A short, stable name of the machine for file names: the Jetson board or the CPU model (not the hostname)."""
    if host.jetson:
        return host.jetson.replace("NVIDIA", "").replace("Developer Kit", "")
    cpu = re.sub(r"\((R|TM|tm|r)\)|\bCPU\b|\bProcessor\b|@.*$|\b\d+-Core\b", " ", host.cpu or "")
    cpu = " ".join(cpu.split())
    return cpu if cpu and cpu.lower() not in ("arm", "i386", "x86_64", "aarch64", "arm64") else \
        f"{host.system}-{host.machine}"


def _backend_device(full_name: str) -> tuple[str, str]:
    """``onnxruntime:CPUExecutionProvider`` -> (onnxruntime, cpu); ``openvino:GPU`` -> (openvino, gpu)."""
    backend, _, device = full_name.partition(":")
    device = device.replace("ExecutionProvider", "") or "default"
    return backend, device.lower()


def bench_environment(segmenter, threads: int | None = None) -> dict:
    """``{"bundle", "host", "backend"}``: what was measured, on what, how (see :func:`run_bench`)."""
    from sam3edge.devices.host import detect
    from sam3edge.runtime.cpu import cpu_info

    bundle = segmenter.bundle
    host, cpu = detect(), cpu_info()
    backend, device = _backend_device(segmenter.backend_name)
    if threads is None:  # the backend records what it was asked for; 0 means its own default (one per core)
        threads = getattr(getattr(segmenter, "_backend", None), "threads", None)
    return {
        "bundle": {"name": bundle.path.name, "path": str(bundle.path), "target": bundle.target,
                   # what ran (a TensorRT fp16 bundle's fp32 graphs on a CPU ran fp32), and what the bundle says
                   "precision": getattr(getattr(segmenter, "_backend", None), "executed_precision", bundle.precision),
                   "bundle_precision": bundle.precision, "input_size": bundle.input_size,
                   "concepts": len(segmenter.concepts), "concept_phrases": list(segmenter.concepts),
                   "text_encoder": bundle.has_text_encoder, "size_mb": round(bundle.size_bytes / 2**20, 3),
                   "int8_scheme": (bundle.manifest.get("quantization") or {}).get("scheme"),
                   "verified_on": ((bundle.manifest.get("verification") or {}).get("host") or {}).get("describe"),
                   "int8_warning": getattr(segmenter, "int8_warning", None)},
        "host": {"label": _host_label(host), "system": host.system, "machine": host.machine, "cpu": host.cpu,
                 "cores": host.cores, "onnxruntime": host.onnxruntime, "openvino": host.openvino,
                 "tensorrt": host.tensorrt, "cuda_devices": host.cuda_devices, "jetson": host.jetson,
                 "python": platform.python_version(), "isa": cpu.describe(), "int8_kernels": cpu.int8_kernels},
        "backend": {"name": backend, "device": device, "full_name": segmenter.backend_name,
                    "threads": threads},
    }


def run_bench(segmenter, images, runs: int = 50, warmup: int = 5, frames: int = 200, threads: int | None = None,
              images_source: str = "", command: str | None = None) -> dict:
    """The torch-free report: environment, latency, throughput and the process's peak RSS (VmHWM).

    The peak RSS is read right after the throughput passes, before any accuracy or teacher section loads the
    evaluation code or torch, so it is the runtime's own footprint (plus whatever the caller imported).
    ``accuracy`` and ``teacher`` start as None for :mod:`sam3edge.eval.bench_accuracy` to fill.
    """
    from sam3edge import __version__

    images = _check_images(images)
    report = {"format": BENCH_FORMAT, "version": BENCH_VERSION, "sam3edge": __version__,
              "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "command": command,
              **bench_environment(segmenter, threads),
              "images": {"source": images_source, "count": len(images)}}
    report["latency"] = run_latency(segmenter, images, runs=runs, warmup=warmup)
    report["throughput"] = run_throughput(segmenter, images, frames=frames, warmup=0)
    report["memory"] = {"peak_rss_mb": _round(peak_rss_mb())}
    report["accuracy"] = None
    report["teacher"] = None
    return report


# ---- output ---------------------------------------------------------------------------------------
def _slug(text: str) -> str:
    """Lowercase, only [a-z0-9-] (underscores separate the file name's fields), runs of others as one '-'."""
    return re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-") or "unknown"


def report_stem(report: dict) -> str:
    """``bench_{host}_{device}_{backend}_{precision}``, each field sanitised to [a-z0-9-]."""
    try:
        fields = (report["host"]["label"], report["backend"]["device"], report["backend"]["name"],
                  report["bundle"]["precision"])
    except (KeyError, TypeError) as e:
        raise ValueError(f"not a bench report (missing {e}); make it with run_bench()") from e
    return "bench_" + "_".join(_slug(f) for f in fields)


def _ms(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f} %"


def _num(v, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _chart_rows(report: dict) -> list[tuple[str, dict[str, float]]]:
    lat = report["latency"]
    stages = {s: float(lat["stages"][s]["p50"]) for s in STAGES}
    other = float(lat["e2e"]["p50"]) - sum(stages.values())
    if other > 0:
        stages["other"] = other
    b = report["bundle"]
    rows = [(f"{report['backend']['name']} {b['precision']} {b['input_size']}px", stages)]
    teacher = report.get("teacher")
    if teacher and teacher.get("teacher_p50_ms") is not None:
        speedup = teacher.get("speedup")
        rows.append((f"PyTorch teacher{f' ({speedup:.0f}x)' if speedup else ''}",
                     {"teacher": float(teacher["teacher_p50_ms"])}))
    return rows


def to_markdown(report: dict) -> str:
    """A small Markdown block (facts line, latency table, summary table) to paste into an issue."""
    b, h, be, lat, thr = (report[k] for k in ("bundle", "host", "backend", "latency", "throughput"))
    versions = ", ".join(f"{k} {h[k]}" for k in ("onnxruntime", "openvino", "tensorrt") if h.get(k))
    threads = be.get("threads")
    lines = [
        f"### sam3edge bench: {b['name']}",
        "",
        f"{b['target']} {b['precision']}, {b['input_size']} px, {b['concepts']} concepts, {b['size_mb']:.2f} MB | "
        f"{be['full_name']}, threads {threads if threads else 'default'} | {h.get('isa') or h['cpu']} "
        f"({h['cores']} cores), {h['system']}{', ' + versions if versions else ''} | sam3edge {report.get('sam3edge')}",
        "",
        *([f"**Warning:** {b['int8_warning']}", ""] if b.get("int8_warning") else []),
        f"Latency over {lat['runs']} runs ({lat['warmup']} warm-up), masks at the original size, score >= "
        f"{lat['score_threshold']}:",
        "",
        "| stage | p50 ms | p90 ms | p99 ms | mean ms |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, row in [*lat["stages"].items(), ("graph (encoder + text + decoder)", lat["graph"]),
                      ("**end to end**", lat["e2e"])]:
        lines.append(f"| {name} | {_ms(row['p50'])} | {_ms(row['p90'])} | {_ms(row['p99'])} | {_ms(row['mean'])} |")
    lines += ["", "| metric | value |", "|---|---:|",
              f"| runtime overhead (e2e - graph) / graph | {_pct(lat['overhead'])} ({_ms(lat['overhead_ms'])} ms) |",
              f"| throughput sequential / pipelined | {thr['sequential_fps']:.1f} / {thr['pipelined_fps']:.1f} fps "
              f"({thr['frames']} frames) |",
              f"| instances per frame | {lat['instances_per_frame']:.2f} |",
              f"| peak RSS (process) | {_num(report['memory']['peak_rss_mb'], 1)} MB |",
              f"| RSS while streaming start / end / peak | {_num(thr['rss_start_mb'], 1)} / "
              f"{_num(thr['rss_end_mb'], 1)} / {_num(thr['rss_peak_mb'], 1)} MB |"]
    if lat.get("text_encoder_ms") is not None:
        lines.append(f"| text encoder ({b['concepts']} concepts) | {_ms(lat['text_encoder_ms'])} ms |")
    acc = report.get("accuracy")
    if acc:
        lines.append(f"| cgF1 / pmF1 / IL_MCC on {Path(acc['data']).name} ({acc['pairs']} pairs) | "
                     f"{_num(acc['cgf1'])} / {_num(acc['pmf1'])} / {_num(acc['il_mcc'])} |")
    t = report.get("teacher")
    if t:
        lines += [f"| PyTorch teacher p50 / speed-up | {_ms(t['teacher_p50_ms'])} ms / {_num(t['speedup'], 1)}x |",
                  f"| agreement with teacher: recall / precision / mean IoU | {_num(t['recall'])} / "
                  f"{_num(t['precision'])} / {_num(t['mean_iou'])} |"]
    if report.get("command"):
        lines += ["", f"Reproduce: `{report['command']}`"]
    return "\n".join(lines) + "\n"


def _json_safe(value):
    """``value`` with NaN / infinity as None (JSON has neither) and numpy scalars as Python numbers."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def write_report(report: dict, out_dir: str | Path) -> dict[str, Path]:
    """Write ``bench_{host}_{device}_{backend}_{precision}`` .json, .md and .png (per-stage p50 bars, plus the
    teacher's where measured) into ``out_dir``, each atomically. Returns ``{"json", "markdown", "chart"}``."""
    from sam3edge.atomic import atomic_write_text
    from sam3edge.runtime.chart import stacked_bars

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; pass a directory for the bench results")
    stem = report_stem(report)
    paths = {"json": out / f"{stem}.json", "markdown": out / f"{stem}.md", "chart": out / f"{stem}.png"}
    atomic_write_text(paths["json"], json.dumps(_json_safe(report), indent=2, allow_nan=False) + "\n")
    atomic_write_text(paths["markdown"], to_markdown(report))
    b = report["bundle"]
    stacked_bars(_chart_rows(report), paths["chart"],
                 title=f"{b['name']}: p50 per stage on {report['host']['label']} ({report['backend']['full_name']})")
    return paths


def format_summary(report: dict) -> str:
    """A few lines for the terminal: what ran where, e2e and per-stage p50, overhead, fps, memory, accuracy."""
    b, h, be, lat, thr = (report[k] for k in ("bundle", "host", "backend", "latency", "throughput"))
    e2e = lat["e2e"]
    stages = "  ".join(f"{s} {lat['stages'][s]['p50']:.2f}" for s in STAGES)
    lines = [
        f"{b['name']} ({b['target']} {b['precision']}, {b['input_size']} px, {b['concepts']} concepts, "
        f"{b['size_mb']:.2f} MB) on {be['full_name']}, threads {be.get('threads') or 'default'} | "
        f"{h.get('isa') or h['cpu']}, {h['cores']} cores",
        *([f"  WARNING      {b['int8_warning']}"] if b.get("int8_warning") else []),
        f"  end to end   p50 {e2e['p50']:.2f}  p90 {e2e['p90']:.2f}  p99 {e2e['p99']:.2f} ms  "
        f"({lat['runs']} runs, {lat['instances_per_frame']:.1f} instances/frame)",
        f"  stages p50   {stages} ms",
        f"  overhead     {_pct(lat['overhead'])} of graph time ({lat['overhead_ms']:.2f} ms per frame outside "
        f"the graphs)",
        f"  throughput   {thr['sequential_fps']:.1f} fps sequential, {thr['pipelined_fps']:.1f} fps pipelined "
        f"({thr['frames']} frames)",
        f"  memory       peak RSS {_num(report['memory']['peak_rss_mb'], 1)} MB (streaming "
        f"{_num(thr['rss_start_mb'], 1)} -> {_num(thr['rss_end_mb'], 1)} MB)",
    ]
    acc = report.get("accuracy")
    if acc:
        lines.append(f"  accuracy     cgF1 {acc['cgf1']:.4f}  pmF1 {acc['pmf1']:.4f}  IL_MCC {acc['il_mcc']:.4f} "
                     f"on {acc['pairs']} pairs of {Path(acc['data']).name} ({acc['ms_per_image']:.1f} ms/image)")
    t = report.get("teacher")
    if t:
        lines.append(f"  vs teacher   {t['teacher_p50_ms']:.1f} ms p50 -> speed-up {_num(t['speedup'], 1)}x; "
                     f"recall {_num(t['recall'])}  precision {_num(t['precision'])}  mean IoU {_num(t['mean_iou'])} "
                     f"({t['teacher_instances']} teacher instances)")
    return "\n".join(lines)

