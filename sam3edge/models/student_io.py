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

from sam3edge.atomic import atomic_directory, written_by_us
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
    """Write ``student`` to ``directory`` (atomically; an existing one is replaced only if it is a student directory
    this package wrote, else FileExistsError); returns the directory."""
    from safetensors.torch import save_file

    out = Path(directory)
    out.parent.mkdir(parents=True, exist_ok=True)
    config = {"format": FORMAT, "format_version": FORMAT_VERSION, "name": student.spec.name,
              "overrides": student.overrides, "spec": student.spec.to_dict(),
              "concepts": CONCEPTS_DIR if student.concepts is not None else None}
    text = json.dumps(config, indent=2)  # before any file is written: a non-JSON override fails here
    with atomic_directory(out, replace=written_by_us(CONFIG_FILE, FORMAT), what="student directory") as tmp:
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


LAYER_STACKS = ("geometry_encoder", "detr_encoder", "detr_decoder")  # the stacks whose layer count a student cuts
LAYER_CHOICES = ("first", "last", "spread")


def choose_layers(rule, student_layers: int, teacher_layers: int, stack: str = "") -> list[int]:
    """Teacher layer indices for the student's ``student_layers`` layers of one stack.

    rule: "first" (teacher layers 0..n-1: SAM3 supervises every decoder layer, so its first layers
    already give usable boxes and scores, and each keeps the input its predecessor gave it),
    "last" (the final n, closest to the teacher's outputs), "spread" (evenly spaced, first and last
    included), or explicit indices (one per student layer, increasing, each < teacher_layers).
    """
    if isinstance(rule, str):
        if rule not in LAYER_CHOICES:
            raise ValueError(f"unknown layer choice {rule!r} for {stack or 'a stack'}; use one of "
                             f"{', '.join(LAYER_CHOICES)} or a list of teacher layer indices")
        n = min(student_layers, teacher_layers)
        if rule == "first":
            return list(range(n))
        if rule == "last":
            return list(range(teacher_layers - n, teacher_layers))
        if n == 1:
            return [0]
        return [round(i * (teacher_layers - 1) / (n - 1)) for i in range(n)]
    idx = [int(i) for i in rule]
    if len(idx) != student_layers or sorted(set(idx)) != idx or not all(0 <= i < teacher_layers for i in idx):
        raise ValueError(f"{stack or 'layer'} indices {idx}: need {student_layers} increasing, distinct teacher "
                         f"layer indices in 0..{teacher_layers - 1}")
    return idx


def _stack_depth(state: Mapping[str, torch.Tensor], stack: str) -> int:
    prefix = f"{stack}.layers."
    ids = {int(k[len(prefix):].split(".", 1)[0]) for k in state if k.startswith(prefix)}
    return max(ids) + 1 if ids else 0


def init_heads_from_teacher(student: Sam3Student, teacher, layers="first", queries="first") -> dict:
    """Start ``student.heads`` from a SAM3 teacher's heads (a ``Sam3Teacher``, ``Sam3Model`` or its state dict).

    Widths must match (head width, attention heads, FFN sizes, ROI size); otherwise a ValueError
    names the first mismatching tensor (nothing is copied). Where the student is smaller the teacher
    is cut, not resampled:

    layers: which teacher layer each student layer starts from, per stack (geometry encoder, fusion
        encoder, DETR decoder): a rule for all stacks ("first" - the default, "last", "spread"; see
        :func:`choose_layers`) or a dict ``{stack: rule or [indices]}``.
    queries: "first" (the teacher's first Q query slots; queries are unordered) or Q teacher query
        indices, e.g. those the teacher uses most on the domain (:func:`rank_teacher_queries`).

    Fast heads (``head_type == "fast"``) start from the teacher wherever a tensor's name and shape match;
    the others stay as initialised ("reshaped" lists those whose name the teacher has in another shape).

    Returns {"loaded": [...], "kept": [...] (student tensors the teacher lacks, left as they were),
    "ignored": [...] (teacher tensors the student has no place for), "layers": {stack: indices},
    "queries": indices}.
    """
    from sam3edge.models.convert import heads_state_dict_from_sam3, load_sam3_heads

    model = getattr(teacher, "model", teacher)
    source = heads_state_dict_from_sam3(model if isinstance(model, Mapping) else model.state_dict())
    teacher_names = list(source)  # before layers are renamed to the student's numbering
    target_names = student.heads.state_dict()
    origin = {k: k for k in source}  # student-side name -> the teacher tensor it comes from
    chosen = {}
    rules = layers if isinstance(layers, Mapping) else dict.fromkeys(LAYER_STACKS, layers)
    unknown = set(rules) - set(LAYER_STACKS)
    if unknown:
        raise ValueError(f"unknown layer stack(s) {sorted(unknown)}; stacks are {', '.join(LAYER_STACKS)}")
    for stack in LAYER_STACKS:
        n_t, n_s = _stack_depth(source, stack), _stack_depth(target_names, stack)
        if not n_t or not n_s:
            continue
        chosen[stack] = idx = choose_layers(rules.get(stack, "first"), n_s, n_t, stack)
        prefix = f"{stack}.layers."
        moved = {f"{prefix}{i}.{k[len(prefix):].split('.', 1)[1]}": k
                 for i, t in enumerate(idx) for k in source if k.startswith(f"{prefix}{t}.")}
        origin = {k: v for k, v in origin.items() if not k.startswith(prefix)} | {
            k: origin[v] for k, v in moved.items()}
        source = {k: v for k, v in source.items() if not k.startswith(prefix)} | {
            k: source[v] for k, v in moved.items()}
    q = student.spec.heads.num_queries
    n_q = next((source[n].shape[0] for n in QUERY_TENSORS if n in source), q)
    if isinstance(queries, str):
        if queries != "first":
            raise ValueError(f"unknown query choice {queries!r}; use 'first' or a list of teacher query indices")
        q_idx = list(range(min(q, n_q)))
    else:
        q_idx = [int(i) for i in queries]
        if len(q_idx) != min(q, n_q) or len(set(q_idx)) != len(q_idx) or not all(0 <= i < n_q for i in q_idx):
            raise ValueError(f"query indices {q_idx[:8]}{'...' if len(q_idx) > 8 else ''}: need {min(q, n_q)} "
                             f"distinct teacher query indices in 0..{n_q - 1}")
    for name in QUERY_TENSORS:
        if name in source:
            source[name] = source[name][q_idx]
    reshaped = []
    if student.spec.heads.head_type == "fast":
        # Fast heads share SAM3's names where they share its parts; a part of another width (a narrower pixel
        # path, a smaller FFN) has nothing to start from and is trained by stage 2.
        reshaped = [n for n, t in target_names.items() if n in source and tuple(source[n].shape) != tuple(t.shape)]
        source = {k: v for k, v in source.items() if k not in reshaped}
    try:
        load_sam3_heads(student.heads, source, strict=False)
    except ValueError as e:
        h = student.spec.heads
        raise ValueError(f"cannot start student {student.spec.name!r} from this teacher's heads: {e}. A student "
                         f"starts from a teacher only if widths match (its heads: hidden_size={h.hidden_size}, "
                         f"FFN {h.encoder_ffn_size}/{h.decoder_ffn_size}, roi_size={h.roi_size}); use a registry "
                         "entry aimed at this teacher, or train the heads from scratch (--no-init-heads)") from e
    used = {origin[n] for n in target_names if n in source}
    return {"loaded": [n for n in target_names if n in source], "kept": [n for n in target_names if n not in source],
            "ignored": [n for n in teacher_names if n not in used], "layers": chosen, "queries": q_idx,
            "reshaped": reshaped}


@torch.no_grad()
def rank_teacher_queries(teacher, images, phrases: list[str], min_score: float = 0.3, batch: int = 4) -> list[int]:
    """The teacher's query slots, most used first, on ``images`` (paths or arrays) x ``phrases``.

    A slot's use is the sum of its scores where it keeps an instance (score >= min_score); ties keep
    the slot order. A student with fewer queries than its teacher keeps the slots this domain needs.
    """
    from sam3edge.data.images import load_image

    use = None
    for s in range(0, len(images), batch):
        chunk = [load_image(i) if isinstance(i, (str, Path)) else i for i in images[s:s + batch]]
        scores = teacher(chunk, list(phrases)).scores.float()  # [B, P, Q]
        u = (scores * (scores >= min_score)).sum(dim=(0, 1))
        use = u if use is None else use + u
    if use is None:
        raise ValueError("rank_teacher_queries needs at least one image")
    order = sorted(range(len(use)), key=lambda i: (-float(use[i]), i))
    return order
