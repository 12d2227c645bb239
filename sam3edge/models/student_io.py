"""Saving, loading and initialising a :class:`~sam3edge.models.student.Sam3Student`.

A saved student is a directory:

* ``config.json``        format, registry name, the overrides it was created with and the full spec
                          (every sub-config spelled out), so loading never depends on the registry;
* ``model.safetensors``  every weight (no pickle);
* ``concepts/``          its ConceptCache files, when it has one.

It is written into a temporary sibling directory and renamed into place, so a crash leaves the
old student or the new one, never half of either.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch

from sam3edge.atomic import atomic_directory
from sam3edge.models.student import Sam3Student
from sam3edge.models.student_spec import StudentSpec

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CONCEPTS_DIR = "concepts"
FORMAT = "sam3edge-student"
FORMAT_VERSION = 1
# The only tensors whose first dimension is the query count: a student with fewer queries keeps the first Q.
QUERY_TENSORS = ("detr_decoder.query_embed.weight", "detr_decoder.reference_points.weight")


def save_student(student: Sam3Student, directory: str | Path) -> Path:
    """Write ``student`` to ``directory`` (replaced atomically if it exists); returns the directory."""
    from safetensors.torch import save_file

    out = Path(directory)
    out.parent.mkdir(parents=True, exist_ok=True)
    config = {"format": FORMAT, "format_version": FORMAT_VERSION, "name": student.spec.name,
              "overrides": student.overrides, "spec": student.spec.to_dict(),
              "concepts": CONCEPTS_DIR if student.concepts is not None else None}
    text = json.dumps(config, indent=2)  # before any file is written: a non-JSON override fails here
    with atomic_directory(out) as tmp:
        # clone: tensors that share storage (expanded or tied) cannot be written by safetensors as views
        weights = {k: v.detach().to("cpu").contiguous().clone() for k, v in student.state_dict().items()}
        save_file(weights, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        if student.concepts is not None:
            student.concepts.save(tmp / CONCEPTS_DIR)
        (tmp / CONFIG_FILE).write_text(text, encoding="utf-8")
    return out


def _read_config(directory: Path) -> dict:
    if not directory.exists():
        raise FileNotFoundError(f"student directory {directory} does not exist; save one with save_student")
    if not directory.is_dir():
        raise NotADirectoryError(f"{directory} is a file; pass the directory save_student wrote")
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {directory} is not a saved student (config.json + "
                                f"{WEIGHTS_FILE})")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not readable JSON ({e}); the student is corrupt: save it again") from e
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ValueError(f"{path} is not a sam3edge student config (expected \"format\": \"{FORMAT}\")")
    if config.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: format_version {config.get('format_version')!r}, this sam3edge reads "
                         f"{FORMAT_VERSION}")
    return config


def load_student(directory: str | Path, device: str | torch.device = "cpu") -> Sam3Student:
    """A student saved by :func:`save_student`, in eval mode.

    Raises FileNotFoundError (missing directory, config or weights), ValueError (corrupt config,
    unreadable weights, a missing / unexpected tensor or a shape that differs from the config's,
    naming the first such tensor).
    """
    from safetensors.torch import load_file

    directory = Path(directory)
    config = _read_config(directory)
    try:
        spec = StudentSpec.from_dict(config.get("spec"))
    except (ValueError, TypeError) as e:
        raise ValueError(f"{directory / CONFIG_FILE}: invalid student spec: {e}") from e
    weights_path = directory / WEIGHTS_FILE
    if not weights_path.is_file():
        raise FileNotFoundError(f"{weights_path} is missing; the student directory is incomplete: save it again")
    try:
        weights = load_file(str(weights_path))
    except Exception as e:  # safetensors raises several types for a damaged file
        raise ValueError(f"could not read {weights_path}: {type(e).__name__}: {e}; save the student again") from e
    concepts = None
    if config.get("concepts"):
        from sam3edge.runtime.concepts import ConceptCache

        concepts = ConceptCache.load(directory / CONCEPTS_DIR)
    student = Sam3Student(spec, concepts=concepts, overrides=config.get("overrides") or {})
    expected = student.state_dict()
    for name, tensor in expected.items():
        if name not in weights:
            raise ValueError(f"{weights_path} has no tensor {name!r} (expected {tuple(tensor.shape)}); it does not "
                             f"belong to this {CONFIG_FILE}")
        if tuple(weights[name].shape) != tuple(tensor.shape):
            raise ValueError(f"shape mismatch for {name!r}: {CONFIG_FILE} implies {tuple(tensor.shape)}, "
                             f"{weights_path} has {tuple(weights[name].shape)}; weights and config do not match")
    unexpected = [n for n in weights if n not in expected]
    if unexpected:
        raise ValueError(f"{weights_path} has tensor {unexpected[0]!r} ({len(unexpected)} such) that this "
                         f"{CONFIG_FILE} does not describe; weights and config do not match")
    student.load_state_dict(weights)
    return student.to(device).eval()


def init_heads_from_teacher(student: Sam3Student, teacher) -> dict[str, list[str]]:
    """Start ``student.heads`` from a SAM3 teacher's heads (a ``Sam3Teacher``, ``Sam3Model`` or its state dict).

    Widths must match (head width, attention heads, FFN sizes, ROI size); otherwise a ValueError
    names the first mismatching tensor (nothing is copied). Where the student is smaller the teacher
    is cut, not resampled: student layer i starts from teacher layer i (its first layers, which
    SAM3 trains with auxiliary losses, so they already give usable boxes and scores), and the
    student's Q queries from the teacher's first Q (queries are unordered slots). Returns
    {"loaded": [...], "kept": [...] (student tensors the teacher lacks, left as they were),
    "ignored": [...] (teacher tensors the student has no place for)}.
    """
    from sam3edge.models.convert import heads_state_dict_from_sam3, load_sam3_heads

    model = getattr(teacher, "model", teacher)
    source = heads_state_dict_from_sam3(model if isinstance(model, Mapping) else model.state_dict())
    q = student.spec.heads.num_queries
    for name in QUERY_TENSORS:
        if name in source and source[name].shape[0] > q:
            source[name] = source[name][:q]
    try:
        load_sam3_heads(student.heads, source, strict=False)
    except ValueError as e:
        h = student.spec.heads
        raise ValueError(f"cannot start student {student.spec.name!r} from this teacher's heads: {e}. A student "
                         f"starts from a teacher only if widths match (its heads: hidden_size={h.hidden_size}, "
                         f"FFN {h.encoder_ffn_size}/{h.decoder_ffn_size}, roi_size={h.roi_size}); use a registry "
                         "entry aimed at this teacher, or train the heads from scratch") from e
    target = student.heads.state_dict()
    return {"loaded": [n for n in target if n in source], "kept": [n for n in target if n not in source],
            "ignored": [n for n in source if n not in target]}
