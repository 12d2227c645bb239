"""Latency charts as PNG with Pillow only (no matplotlib on robots): stacked horizontal bars, one per row.

``stacked_bars(rows, path)`` draws each row's stages (e.g. preprocess, image encoder, text, decoder,
postprocess) end to end in milliseconds, with the total at the bar's end and a legend, so a reader
sees at a glance where the time goes and how backends / precisions compare.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

STAGE_COLORS = [(66, 133, 244), (219, 68, 55), (244, 180, 0), (15, 157, 88), (171, 71, 188), (0, 172, 193),
                (255, 112, 67), (158, 157, 36)]


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one bitmap size
        return ImageFont.load_default()


def stacked_bars(rows: list[tuple[str, dict[str, float]]], path: str | Path, title: str = "",
                 unit: str = "ms", width: int = 1000) -> Path:
    """Write a PNG of one stacked bar per ``(label, {stage: value})`` row; stages keep their first-seen order."""
    from sam3edge.atomic import atomic_write

    if not rows:
        raise ValueError("no rows to chart")
    stages: list[str] = []
    for _, parts in rows:
        for stage, value in parts.items():
            if not np.isfinite(value) or value < 0:
                raise ValueError(f"stage {stage!r} has value {value!r}; chart values must be finite and >= 0")
            if stage not in stages:
                stages.append(stage)
    font, small = _font(16), _font(13)
    label_w = min(360, max(int(font.getlength(label)) for label, _ in rows) + 20)
    bar_h, gap, top = 26, 12, 50 if title else 20
    legend_h = 30
    height = top + len(rows) * (bar_h + gap) + legend_h + 20
    img = Image.new("RGB", (width, height), (255, 255, 255))
    d = ImageDraw.Draw(img)
    if title:
        d.text((10, 14), title, fill=(0, 0, 0), font=font)
    longest = max(sum(parts.values()) for _, parts in rows) or 1.0
    plot_w = width - label_w - 110
    for i, (label, parts) in enumerate(rows):
        y = top + i * (bar_h + gap)
        d.text((10, y + 5), label, fill=(0, 0, 0), font=font)
        x = float(label_w)
        for stage in stages:
            w = parts.get(stage, 0.0) / longest * plot_w
            if w > 0:
                d.rectangle([x, y, x + max(w, 1.0), y + bar_h], fill=STAGE_COLORS[stages.index(stage) %
                                                                                  len(STAGE_COLORS)])
            x += w
        d.text((x + 6, y + 6), f"{sum(parts.values()):.1f} {unit}", fill=(0, 0, 0), font=small)
    x, y = 10, height - legend_h - 5
    for j, stage in enumerate(stages):
        d.rectangle([x, y + 4, x + 14, y + 18], fill=STAGE_COLORS[j % len(STAGE_COLORS)])
        d.text((x + 20, y + 4), stage, fill=(0, 0, 0), font=small)
        x += 40 + int(small.getlength(stage))
    path = Path(path)
    atomic_write(path, lambda f: img.save(f, format="PNG"))
    return path
