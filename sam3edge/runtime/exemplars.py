"""Exemplar boxes: "more like this one" (positive) and "not like this one" (negative) prompts on one image.

SAM3 takes, besides a noun phrase, boxes drawn on the image it segments; each becomes prompt tokens
(its geometry encoder: the box, the image features inside it, its label) appended to the phrase's
tokens. Boxes alone are SAM3's visual-only prompt: the phrase is then :data:`VISUAL`.

:func:`exemplar_inputs` checks what a caller gives and turns it into the exemplar encoder graph's
inputs; every refusal names the box, the image size and what to do. Coordinates are pixel-edge
coordinates of the original image (see :mod:`sam3edge.runtime.image`): a box ``[x0, y0, x1, y1]``
with ``0 <= x0 < x1 <= W`` and ``0 <= y0 < y1 <= H``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from sam3edge.runtime.names import MAX_EXEMPLARS

__all__ = ["MAX_EXEMPLARS", "PADDING_LABEL", "VISUAL", "Exemplar", "exemplar_inputs", "parse_box"]

VISUAL = "visual"  # SAM3's phrase for a prompt of boxes alone (transformers' Sam3Processor uses the same word)
PADDING_LABEL = -10  # the exemplar encoder graph's label of an empty slot (SAM3's)


@dataclass(frozen=True)
class Exemplar:
    """One box ``(x0, y0, x1, y1)`` in the original image's pixels; ``positive=False``: a negative exemplar."""

    box: tuple[float, float, float, float]
    positive: bool = True


def _as_exemplar(item, where: str) -> Exemplar:
    if isinstance(item, Exemplar):
        box, positive = item.box, item.positive
    elif isinstance(item, Sequence) and not isinstance(item, str) and len(item) == 2:
        box, positive = item
    else:
        box, positive = item, True
    if not isinstance(positive, (bool, np.bool_)) and positive not in (0, 1):
        raise ValueError(f"{where}: label {positive!r} must be True (positive) or False (negative)")
    try:
        b = np.asarray(box, dtype=np.float64)
    except (TypeError, ValueError):
        b = None
    if b is None or b.shape != (4,):
        raise ValueError(f"{where}: {item!r:.80} is not a box; give [x0, y0, x1, y1] in pixels, or (box, False) "
                         "for a negative exemplar")
    return Exemplar(tuple(float(v) for v in b), bool(positive))


def _check(e: Exemplar, height: int, width: int, where: str) -> None:
    x0, y0, x1, y1 = e.box
    if not all(np.isfinite(e.box)):
        raise ValueError(f"{where}: box {list(e.box)} has a NaN or infinite coordinate")
    if not (x1 > x0 and y1 > y0):
        raise ValueError(f"{where}: box {list(e.box)} has no area (it needs x0 < x1 and y0 < y1, pixel-edge "
                         "coordinates [x0, y0, x1, y1])")
    if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
        raise ValueError(f"{where}: box {list(e.box)} reaches outside the {width} x {height} image (x in [0, "
                         f"{width}], y in [0, {height}]); clip it to the image")


def exemplar_inputs(exemplars, phrases: Sequence[str], height: int, width: int
                    ) -> tuple[list[list[Exemplar]], int]:
    """Checked exemplars per concept: ``exemplars`` is a list (every concept gets it) or a mapping
    phrase -> list (the others get none) of boxes ``[x0, y0, x1, y1]``, ``(box, positive)`` pairs or
    :class:`Exemplar`; ``phrases`` the concepts set now; ``height`` x ``width`` the image's size.
    Returns (per concept, its exemplars; the largest count). Raises ValueError naming what is wrong."""
    if isinstance(exemplars, Mapping):
        unknown = [k for k in exemplars if k not in phrases]
        if unknown:
            raise ValueError(f"exemplars for {', '.join(map(repr, unknown))}, which is not among the concepts set now "
                             f"({', '.join(map(repr, phrases))}); call set_concepts first")
        given = {k: v for k, v in exemplars.items()}
    elif isinstance(exemplars, Sequence) and not isinstance(exemplars, str):
        given = dict.fromkeys(phrases, exemplars)
    else:
        raise ValueError(f"exemplars must be a list of boxes or a dict phrase -> boxes, got {type(exemplars).__name__}")
    out = []
    for p in phrases:
        items = given.get(p, [])
        if isinstance(items, (str, bytes)) or not isinstance(items, (Sequence, np.ndarray)):
            raise ValueError(f"exemplars of {p!r} must be a list of boxes, got {type(items).__name__}")
        items = list(items)
        if len(items) == 4 and all(isinstance(v, (int, float, np.number)) for v in items):  # one bare box
            items = [items]
        if len(items) > MAX_EXEMPLARS:
            raise ValueError(f"{len(items)} exemplar boxes for {p!r}; at most {MAX_EXEMPLARS} per concept")
        checked = []
        for i, item in enumerate(items):
            e = _as_exemplar(item, f"exemplar {i} of {p!r}")
            _check(e, height, width, f"exemplar {i} of {p!r}")
            checked.append(e)
        out.append(checked)
    return out, max((len(x) for x in out), default=0)


def parse_box(text: str) -> Exemplar:
    """``"x0,y0,x1,y1"`` or ``"x0,y0,x1,y1:neg"`` (``:pos`` is the default) -> :class:`Exemplar` (the CLI's
    ``--box``); ValueError with the expected form otherwise."""
    form = "x0,y0,x1,y1 in pixels, optionally followed by :neg (a negative exemplar) or :pos"
    coords, _, label = str(text).partition(":")
    if label not in ("", "pos", "neg"):
        raise ValueError(f"--box {text!r}: label {label!r} is not pos or neg; expected {form}")
    parts = coords.split(",")
    try:
        values = [float(v) for v in parts]
    except ValueError:
        values = []
    if len(values) != 4:
        raise ValueError(f"--box {text!r}: expected {form}")
    return Exemplar(tuple(values), label != "neg")
