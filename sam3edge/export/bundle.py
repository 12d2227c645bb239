"""``sam3edge export``: a student -> graphs at a precision -> verified against PyTorch -> a bundle.

A bundle is a directory ``NAME.sam3edge/`` (DESIGN.md)::

    manifest.json          format + version, student spec, export spec (graph I/O), target, precision,
                           concepts, sha256 of every file, verification figures, provenance
    graphs/*.onnx | *.xml+*.bin   image_encoder, decoder (ONNX or OpenVINO IR)
    concepts.npy, concepts_mask.npy, concepts.json   the concept cache (teacher text features)
    tokenizer.json         the CLIP tokenizer (torch-free ``tokenizers`` format)

It is assembled in a temporary sibling directory and renamed into place, so a failed or killed
export leaves no partial bundle; an export that fails verification is not written unless forced
(then ``manifest.json`` says so).
"""

from __future__ import annotations

import json
import platform
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from sam3edge.atomic import atomic_directory, written_by_us
from sam3edge.export.targets import EXPORT_TARGETS
from sam3edge.runtime.bundle import FORMAT, FORMAT_VERSION, MANIFEST, check_manifest
from sam3edge.runtime.concepts import sha256_file
from sam3edge.runtime.names import EXEMPLAR_GRAPH, TEXT_GRAPH


def resolve_student_dir(source: str | Path) -> Path:
    """A saved student directory from a distillation run directory (``RUN/student``) or the directory itself."""
    src = Path(source)
    if not src.exists():
        raise FileNotFoundError(f"{src} does not exist; pass a distillation run directory (holding student/) "
                                "or a saved student directory (holding config.json)")
    if (src / "student" / "config.json").is_file():
        return src / "student"
    if (src / "config.json").is_file():
        return src
    raise FileNotFoundError(f"{src} holds neither student/config.json (a distillation run) nor config.json "
                            "(a saved student)")


def domain_images(source: Path, calib: str | Path | None, limit: int = 40) -> list[Path]:
    """Calibration / verification images: ``--calib`` DIR, else the run's own teacher-cache images."""
    from sam3edge.data.coco import list_images
    from sam3edge.distill.cache import read_json

    if calib is not None:
        return list_images(Path(calib))[:limit]  # a clear error for a missing or image-less folder
    cache = source / "cache" / "cache.json"
    if cache.is_file():
        images = [Path(p) for p in read_json(cache, "pass --calib DIR instead").get("images", [])]
        images = [p for p in images if p.is_file()]
        if images:
            step = max(1, len(images) // limit)
            return images[::step][:limit]
    raise ValueError(f"no calibration images: {source} is not a distillation run with a teacher cache; pass --calib "
                     "DIR with images of your domain (int8 calibrates on them, every export verifies on them)")


def resolve_target(target: str | None, precision: str | None, profile_name: str | None):
    """(target, precision, profile or None) from ``--profile`` and/or ``--target`` / ``--precision``, checked."""
    profile = None
    if profile_name is not None:
        from sam3edge.devices.profiles import get_profile

        profile = get_profile(profile_name)  # an unknown name lists the profiles
        if target is not None and target != profile.target:
            raise ValueError(f"device profile {profile.name!r} exports to {profile.target}, not {target!r}; "
                             "drop --target or pick another profile")
        target, precision = profile.target, precision or profile.precision
        if precision not in profile.precisions:
            raise ValueError(f"device profile {profile.name!r} runs precisions {', '.join(profile.precisions)}; "
                             f"got {precision!r}")
    target, precision = target or "onnx", precision or "fp32"
    if target not in EXPORT_TARGETS:
        raise ValueError(f"unknown target {target!r}; targets: {', '.join(EXPORT_TARGETS)}")
    if precision not in EXPORT_TARGETS[target].precisions:
        raise ValueError(f"target {target} does not support precision {precision!r}; it supports "
                         f"{', '.join(EXPORT_TARGETS[target].precisions)}")
    return target, precision, profile


def export_bundle(source: str | Path, out: str | Path, target: str | None = None, precision: str | None = None,
                  calib: str | Path | None = None, concepts: list[str] | None = None, overwrite: bool = False,
                  force: bool = False, n_verify: int = 8, progress: bool = True, profile: str | None = None,
                  fused_ops: bool | None = None, teacher: str | Path | None = None) -> dict:
    """Export a student to a verified bundle at ``out``; returns the manifest.

    ``fused_ops``: the decoder carries the sam3edge fused ops (:mod:`sam3edge.ops`) as custom-domain
    ONNX nodes with function bodies (onnx, openvino, tensorrt targets), instead of their plain decomposition;
    None: the target's default (fused for onnx and openvino, plain for tensorrt and coreml).

    ``profile``: a device profile (name or .json path) that sets target and default precision, and
    whose memory budget the graphs must fit (``sam3edge devices`` lists them).
    """
    target, precision, profile = resolve_target(target, precision, profile)
    if fused_ops is None:
        fused_ops = EXPORT_TARGETS[target].fused_by_default
    if fused_ops and not EXPORT_TARGETS[target].fused_ops:
        raise ValueError(f"target {target} cannot carry the fused ops; targets that can: "
                         f"{', '.join(t for t, v in EXPORT_TARGETS.items() if v.fused_ops)}")
    out = Path(out)
    ours = written_by_us(MANIFEST, FORMAT)
    if out.exists() or out.is_symlink():  # refused before the work; checked again at the final rename
        if not overwrite:
            raise FileExistsError(f"{out} already exists; pass --overwrite to replace it")
        if not ours(out):
            raise FileExistsError(f"{out} exists and is not a sam3edge bundle (no {MANIFEST} of format "
                                  f"{FORMAT!r}); --overwrite replaces only bundles: choose another --out")
    student_dir = resolve_student_dir(source)
    # torch and the exporters load only once the arguments are known to be good: a refusal answers in a second
    from tqdm import tqdm

    from sam3edge.data.images import load_image, resize_batch
    from sam3edge.export.spec import export_spec
    from sam3edge.export.verify import compare, compare_text, integer_kernel_check, passes, torch_runner
    from sam3edge.models.student_io import load_student
    from sam3edge.runtime.cpu import cpu_info

    student = load_student(student_dir).eval()
    if student.concepts is None and student.has_text_encoder:
        # a student with its own text encoder: the bundle carries the encoder graph, and a cache of its phrases
        # (``concepts``, else the run's) encoded by that encoder, for the runtime's fast path
        phrases = list(concepts or _run_concepts(Path(source)))
        if not phrases:
            raise ValueError(f"student {student_dir} has a text encoder but no concept list: pass --concepts 'a,b' "
                             "(the phrases the bundle lists; any other phrase goes through its text encoder)")
        import torch

        from sam3edge.runtime.concepts import ConceptCache

        with torch.no_grad():
            feats, mask = student.encode_text(phrases)
        student.set_concepts(ConceptCache(phrases, feats.float().numpy(), mask.numpy().astype(bool),
                                          source=f"{student.spec.name} text encoder"))
    if student.concepts is None:
        raise ValueError(f"student {student_dir} has no concept cache; distil it with --concepts (or set_concepts) "
                         "so the bundle can carry the teacher's text features")
    cache = student.concepts
    if concepts:
        cache = _concepts_for_export(cache, list(concepts), Path(source), teacher, student.spec.heads.in_width)
    files = domain_images(Path(source), calib)
    images, _ = resize_batch([load_image(p) for p in files], student.image_size)
    images = list(images)
    verify = images[-n_verify:] if len(images) > n_verify else images
    calibrate = images[:-n_verify] if len(images) > n_verify else images
    text, mask = cache.features.astype(np.float32), cache.mask.astype(bool)
    spec = export_spec(student, text_length=text.shape[1], exemplars=EXPORT_TARGETS[target].exemplars)

    t0 = time.time()
    bar = tqdm(total=3, desc=f"export {target} {precision}", disable=not progress, unit="step")
    with atomic_directory(out, replace=ours if overwrite else None, what="bundle") as tmp:
        paths = EXPORT_TARGETS[target].export(student, tmp / "graphs", precision, calibrate, text, mask,
                                       options=profile.backend_options if profile else None, fused=fused_ops)
        bar.update(1)
        candidate, runner_name = EXPORT_TARGETS[target].verification_runner(paths, precision)
        if candidate is None:
            report = {"ran": False, "reason": runner_name}
        else:
            reference = torch_runner(student)
            report = compare(reference, candidate, verify, text, mask)
            if TEXT_GRAPH in paths:
                report[TEXT_GRAPH] = compare_text(reference, candidate, list(cache.phrases))
            if getattr(candidate, "exemplars", False):  # every concept with exemplar boxes (one with padding only)
                from sam3edge.export.onnx import exemplar_example

                boxes, labels = exemplar_example(len(text))
                report[EXEMPLAR_GRAPH] = compare(reference, candidate, verify, text, mask, boxes=boxes,
                                                 labels=labels)
            report["ran"], report["runner"] = True, runner_name
            if precision == "int8" and target == "onnx":
                report["integer_kernels"] = integer_kernel_check(paths, verify[:2], text, mask)
        report["host"] = cpu_info().to_json()  # int8 and bf16 kernels differ between CPUs: where this was checked
        report["precision"] = precision
        report["verification_images"] = len(verify)
        report["calibration_images"] = len(calibrate) if precision == "int8" else 0
        failed = (passes(report, precision) if report["ran"] else []) + _profile_checks(profile, paths)
        report["failed"], report["forced"] = failed, bool(failed and force)
        bar.update(1)
        if failed and not force:
            figures = {k: report[k] for k in ('recall', 'mask_iou', 'score_mae') if k in report}
            raise ValueError(f"export verification failed ({'; '.join(failed)}); nothing was written to {out}. "
                             f"Figures: {json.dumps(figures)}. "
                             "Try a higher precision, more calibration images (--calib), or --force")
        cache.save(tmp)
        from importlib.resources import files as package_files

        shutil.copyfile(package_files("sam3edge.assets") / "clip_tokenizer.json", tmp / "tokenizer.json")
        manifest = _manifest(student, spec, target, precision, paths, tmp, cache, report, source, t0)
        manifest["ops"] = "fused" if fused_ops else "plain"
        manifest["quantization"] = _quantization(EXPORT_TARGETS[target], precision, paths)
        if profile is not None:
            manifest["device_profile"] = profile.to_json() | {"input_size_matches": profile.input_size ==
                                                               student.image_size}
        manifest_json = json.dumps(manifest, indent=1)
        manifest = json.loads(manifest_json)  # what a reader of the bundle sees (lists, not tuples)
        check_manifest(manifest)  # the runtime's definition: a bundle it would refuse is never written
        (tmp / MANIFEST).write_text(manifest_json)
        bar.update(1)
    bar.close()
    return manifest


def _quantization(target, precision: str, paths: dict) -> dict | None:
    """The int8 scheme the graphs hold (:mod:`sam3edge.runtime.int8_scheme`) and, per graph, the integer ranges
    read back from the files; an export whose files break its scheme's bound is an error, not a bundle."""
    if precision != "int8":
        return None
    from sam3edge.runtime.int8_scheme import SCHEMES

    scheme = SCHEMES[target.int8_scheme]
    ranges = target.int8_ranges(paths)
    for name, r in (ranges or {}).items():
        if r["weight_types"] not in ([], [scheme.weight_type]) or r["weight_max"] > scheme.weight_max or \
                r["max_pair_sum"] > scheme.max_pair_sum:
            raise RuntimeError(f"{target.name} int8 {name} graph holds {'/'.join(r['weight_types'])} weights up to "
                               f"{r['weight_max']} (pair sums up to {r['max_pair_sum']}), not scheme {scheme.name}'s "
                               f"{scheme.weight_type} up to {scheme.weight_max}: the quantizer ignored a setting; "
                               "nothing was written (report this with your onnxruntime / nncf versions)")
    return scheme.to_json() | {"graphs": ranges}


def _io_dtypes(target: str) -> dict:
    if target == "coreml":  # no uint8, bool or int64 multi-arrays in Core ML
        from sam3edge.export.coreml import COREML_DTYPES

        return COREML_DTYPES
    return {}


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def _graph_bytes(paths: dict) -> int:
    """Bytes on disk of the graphs (an OpenVINO .xml counts its .bin; a Core ML package its whole folder)."""
    total = 0
    for p in paths.values():
        p = Path(p)
        files = [f for f in p.rglob("*") if f.is_file()] if p.is_dir() else [p]
        if p.suffix == ".xml" and p.with_suffix(".bin").is_file():
            files.append(p.with_suffix(".bin"))
        total += sum(f.stat().st_size for f in files)
    return total


def _profile_checks(profile, paths: dict) -> list[str]:
    """What a device profile asks that the export misses: its memory budget for the graphs."""
    if profile is None:
        return []
    mb = _graph_bytes(paths) / 2**20
    if mb > profile.memory_budget_mb:
        return [f"graphs take {mb:.1f} MB, over device profile {profile.name!r}'s memory budget of "
                f"{profile.memory_budget_mb} MB (pick a smaller student or a lower precision)"]
    return []


def _run_record(source: Path) -> dict:
    """A distillation run's distill.json (its teacher, concepts, ...), or {} for a saved student."""
    run = source / "distill.json"
    return json.loads(run.read_text()) if run.is_file() else {}


def _run_concepts(source: Path) -> list[str]:
    """The concept phrases a distillation run trained on, or [] for anything else."""
    concepts = _run_record(source).get("concepts")
    return [str(c) for c in concepts] if isinstance(concepts, list) else []


def _concepts_for_export(cache, phrases: list[str], source: Path, teacher, width: int):
    """The bundle's concept cache: ``phrases`` from the student's cache, and those it lacks encoded by the teacher
    (``teacher``, else the distillation run's own, from its distill.json): a cache-mode student reads the teacher's
    text embeddings, so a new phrase needs only the teacher's text encoder, not a new distillation."""
    from sam3edge.runtime.concepts import ConceptCache, normalize_phrase

    known = {normalize_phrase(p) for p in cache.phrases}
    missing = [p for p in phrases if normalize_phrase(p) not in known]
    if not missing:
        feats, mask = cache.lookup(phrases)
        return ConceptCache(phrases, feats, mask, source=cache.source)
    if teacher is None:
        teacher = _run_record(source).get("teacher")
    if teacher is None:
        raise ValueError(f"{', '.join(repr(p) for p in missing)}: not in the student's concept cache, and {source} "
                         "names no teacher to encode them (it is not a distillation run); pass --teacher DIR, the "
                         "SAM3 teacher the student was distilled from (or orchard-toy)")
    from sam3edge.models.bundled import resolve_model
    from sam3edge.models.teacher import Sam3Teacher

    model = Sam3Teacher.from_pretrained(resolve_model(str(teacher))).eval()
    new = ConceptCache.from_teacher(model, missing)
    if new.features.shape[-1] != width:
        raise ValueError(f"teacher {teacher} gives {new.features.shape[-1]}-wide text embeddings, the student takes "
                         f"{width}: pass the teacher the student was distilled from")
    length = max(cache.features.shape[1], new.features.shape[1])
    feats = np.zeros((len(phrases), length, width), np.float32)
    mask = np.zeros((len(phrases), length), bool)
    for i, p in enumerate(phrases):
        f, m = new.lookup([p]) if p in missing else cache.lookup([p])
        feats[i, :f.shape[1]], mask[i, :m.shape[1]] = f[0], m[0]
    return ConceptCache(phrases, feats, mask, source=f"{cache.source}; added by {teacher}: {', '.join(missing)}")


def _manifest(student, spec, target, precision, paths, root: Path, cache, report, source, t0) -> dict:
    import onnx
    import onnxruntime
    import torch

    from sam3edge import __version__

    graphs = {}
    for g in spec.graphs:
        if g.name in paths:
            dtypes = _io_dtypes(target).get(g.name, {})  # where a format cannot hold the spec's dtype

            def io(tensors, dtypes=dtypes):
                return [vars(t) | {"shape": list(t.shape), "dtype": dtypes.get(t.name, t.dtype)} for t in tensors]

            graphs[g.name] = {"file": paths[g.name].relative_to(root).as_posix(), "inputs": io(g.inputs),
                              "outputs": io(g.outputs)}
    files = {p.relative_to(root).as_posix(): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "student": {"name": student.spec.name, "input_size": student.image_size, "spec": asdict(student.spec)},
        "export_spec": spec.to_json(), "target": target, "precision": precision, "device_profile": None,
        "input": {"size": student.image_size, "dtype": "uint8", "layout": "NHWC", "channels": "RGB",
                  "resize": "square, bilinear (as SAM3's processor)"},
        "graphs": graphs, "concepts": list(cache.phrases), "tokenizer": "tokenizer.json",
        "files": files, "verification": report,
        "provenance": {"source": str(Path(source).resolve()), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                        time.gmtime()),
                       "export_seconds": round(time.time() - t0, 1), "sam3edge": __version__,
                       "torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
                       "openvino": _version("openvino"), "coremltools": _version("coremltools"),
                       "host": platform.machine()},
    }
