"""Parameters and GFLOPs of a student, measured without allocating it.

The student is built on PyTorch's ``meta`` device (shapes, no storage) and one forward of one
image at the spec's input size and one phrase (32 token slots, as SAM3's tokenizer pads to) runs
under ``torch.utils.flop_counter.FlopCounterMode``. So even SAM3-sized heads at 1024 px are
counted in a second and in no more memory than the interpreter already uses.

What "FLOPs" counts: what ``FlopCounterMode`` counts - 2 x multiply-adds of convolutions, linear
layers, matmul / bmm / einsum-as-matmul and fused attention. Element-wise operations, norms,
softmax, activations, resampling (``interpolate``, ``grid_sample``) and gathers are *not*
counted; they matter for latency on a CPU, so latency is measured separately, never inferred.

Parameters always include a text encoder of the spec's size (counted as if in text mode
"encoder"), so ``params_without_text`` is what a concept-cache deployment ships and
``params_total`` what an open-vocabulary one ships.

The registry's figures are counted once and stored beside this module (``complexity_figures.json``,
each under the sha256 of the spec it was counted on), so ``sam3edge students`` answers without torch;
a spec that changed, or one a user registered, is counted on the spot. After changing a registry entry:
``python -m sam3edge.models.complexity`` (a test fails while a stored figure is stale).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from sam3edge.models.student_spec import StudentSpec

FIGURES = Path(__file__).with_name("complexity_figures.json")


@dataclass
class Complexity:
    """Sizes of one student. gflops_heads: every query's mask (what ``student(images, phrases)``
    computes); gflops_heads_topk: masks of the spec's export ``top_k`` queries only (the export path)."""

    name: str
    input_size: int
    params_image_encoder: int
    params_heads: int
    params_text_encoder: int
    gflops_image_encoder: float
    gflops_text_encoder: float
    gflops_heads: float
    gflops_heads_topk: float
    top_k: int

    @property
    def params_without_text(self) -> int:
        return self.params_image_encoder + self.params_heads

    @property
    def params_total(self) -> int:
        return self.params_without_text + self.params_text_encoder

    @property
    def gflops(self) -> float:
        """One image + one phrase with the text encoder, every query's mask."""
        return self.gflops_image_encoder + self.gflops_text_encoder + self.gflops_heads

    @property
    def gflops_topk(self) -> float:
        """One image + one phrase with the text encoder, masks of the top-K queries only."""
        return self.gflops_image_encoder + self.gflops_text_encoder + self.gflops_heads_topk

    def to_dict(self) -> dict:
        return asdict(self) | {"params_without_text": self.params_without_text, "params_total": self.params_total,
                               "gflops": self.gflops, "gflops_topk": self.gflops_topk}


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def _gflops(fn, *args, **kwargs) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn(*args, **kwargs)
    return counter.get_total_flops() / 1e9


def spec_sha(spec: StudentSpec) -> str:
    """sha256 of everything in ``spec`` (its JSON form, keys sorted): a stored figure holds for this spec only."""
    return hashlib.sha256(json.dumps(spec.to_dict(), sort_keys=True).encode()).hexdigest()


def stored_complexity(spec: StudentSpec, path: Path = FIGURES) -> Complexity | None:
    """The stored figures of ``spec`` (counted on this very spec), or None."""
    try:
        entry = json.loads(path.read_text(encoding="utf-8")).get(spec.name)
    except (OSError, ValueError):
        return None
    if not isinstance(entry, dict) or entry.get("spec_sha") != spec_sha(spec):
        return None
    figures = entry.get("figures", {})
    names = {f.name for f in fields(Complexity)}
    return Complexity(**figures) if set(figures) == names else None


def complexity(spec: StudentSpec) -> Complexity:
    """:func:`stored_complexity` where it holds for ``spec``, else :func:`measure_spec` (imports torch)."""
    return stored_complexity(spec) or measure_spec(spec)


def measure_spec(spec: StudentSpec) -> Complexity:
    """Parameters and GFLOPs of ``spec`` (see the module docstring for what is counted)."""
    import torch

    from sam3edge.models.student import Sam3Student
    from sam3edge.runtime.names import CONTEXT_LENGTH

    with torch.device("meta"):  # shapes only: no weight memory, no initialisation work
        student = Sam3Student(spec.with_overrides(text_mode="encoder")).eval()
        image = torch.empty(1, 3, spec.input_size, spec.input_size)
        ids = torch.zeros(1, CONTEXT_LENGTH, dtype=torch.long)
        mask = torch.ones(1, CONTEXT_LENGTH, dtype=torch.long)
    with torch.no_grad():
        g_image = _gflops(student.encode_images, image)
        feats = student.encode_images(image)
        g_text = _gflops(student.text_encoder, ids, mask)
        text, text_mask = student.text_encoder(ids, mask)
        head_args = (feats.levels, feats.pos, text, text_mask)
        g_heads = _gflops(student.heads, *head_args)
        g_topk = _gflops(student.heads.forward_topk, *head_args, k=spec.export.top_k)
    return Complexity(name=spec.name, input_size=spec.input_size, params_image_encoder=_count(student.image_encoder),
                      params_heads=_count(student.heads), params_text_encoder=_count(student.text_encoder),
                      gflops_image_encoder=g_image, gflops_text_encoder=g_text, gflops_heads=g_heads,
                      gflops_heads_topk=g_topk, top_k=spec.export.top_k)


def measure(name: str, **overrides) -> Complexity:
    """:func:`measure_spec` of registry entry ``name`` with ``overrides`` (see ``create_student``)."""
    from sam3edge.models.registry import get_student_spec

    return measure_spec(get_student_spec(name, **overrides))


def write_figures(path: Path = FIGURES) -> dict:
    """Count every registry entry and store the figures at ``path`` (atomically)."""
    from sam3edge.atomic import atomic_write_text
    from sam3edge.models.registry import get_student_spec, list_students

    data = {}
    for name in list_students():
        spec = get_student_spec(name)
        data[name] = {"spec_sha": spec_sha(spec), "figures": asdict(measure_spec(spec))}
    atomic_write_text(path, json.dumps(data, indent=1) + "\n")
    return data


if __name__ == "__main__":
    print(f"{len(write_figures())} registry entries counted into {FIGURES}")
