"""Overlays: masks blended in stable per-concept colours, boxes, labels that scale with the image, atomic saves."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from sam3edge.runtime.instances import Instances
from sam3edge.runtime.overlay import PALETTE, concept_color, draw, label_text, save_overlay, side_by_side


def make_instances(height: int, width: int, concept_ids=(0, 2), scores=(0.87, 0.6), with_masks: bool = True):
    """Instance i covers the square [y, y+s) x [x, x+s) with s = min(H, W) // 4, placed left to right."""
    s = min(height, width) // 4
    boxes, masks = [], np.zeros((len(concept_ids), height, width), dtype=bool)
    for i in range(len(concept_ids)):
        x, y = s // 2 + i * (s + s // 2), height // 2 - s // 2
        masks[i, y:y + s, x:x + s] = True
        boxes.append([x, y, x + s, y + s])
    phrases = [f"concept {c}" for c in concept_ids]
    return Instances(phrases, list(concept_ids), list(scores), boxes, masks if with_masks else None, {},
                     (height, width))


@pytest.fixture
def gray():
    return np.full((120, 160, 3), 100, dtype=np.uint8)


def blended(value, color, alpha):
    return np.floor(np.float32(value) * np.float32(1 - alpha) + np.float32(color) * np.float32(alpha) + 0.5)


def test_overlay_imports_without_torch_or_cv2():
    code = (
        "import sys\n"
        "for name in ('torch', 'cv2', 'av'): sys.modules[name] = None\n"
        "import sam3edge.runtime.overlay\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_draw_returns_a_new_uint8_image_and_leaves_the_input_alone(gray):
    before = gray.copy()
    out = draw(gray, make_instances(120, 160))
    assert out.shape == gray.shape and out.dtype == np.uint8
    assert out is not gray and np.array_equal(gray, before)
    assert not np.array_equal(out, gray)


def test_mask_pixels_are_alpha_blended_with_the_concept_colour_and_the_rest_is_untouched(gray):
    inst = make_instances(120, 160)
    out = draw(gray, inst, alpha=0.45, boxes=False, labels=False, outlines=False)
    for i, concept in enumerate(inst.concept_ids):
        inside = out[inst.masks[i]]
        expected = blended(100, concept_color(concept), 0.45)
        assert np.array_equal(inside, np.broadcast_to(expected, inside.shape))
    outside = ~inst.masks.any(axis=0)
    assert np.array_equal(out[outside], gray[outside])


def test_overlapping_masks_show_the_higher_scoring_instance_colour(gray):
    masks = np.zeros((2, 120, 160), dtype=bool)
    masks[:, 40:80, 40:80] = True
    inst = Instances(["low", "high"], [0, 1], [0.3, 0.9], [[40, 40, 80, 80]] * 2, masks, {}, (120, 160))
    out = draw(gray, inst, alpha=1.0, boxes=False, labels=False, outlines=False)
    assert tuple(out[60, 60]) == concept_color(1)


def test_alpha_zero_without_boxes_labels_or_outlines_gives_back_the_image(gray):
    out = draw(gray, make_instances(120, 160), alpha=0.0, boxes=False, labels=False, outlines=False)
    assert np.array_equal(out, gray)


def test_outlines_draw_mask_contours_in_full_colour(gray):
    inst = make_instances(120, 160)
    out = draw(gray, inst, alpha=0.45, boxes=False, labels=False, outlines=True)
    ys, xs = np.nonzero(inst.masks[0])
    assert tuple(out[ys.min(), xs.min()]) == concept_color(inst.concept_ids[0])  # a corner is on the contour
    centre = (ys.min() + ys.max()) // 2, (xs.min() + xs.max()) // 2
    assert tuple(out[centre]) != concept_color(inst.concept_ids[0])  # the inside is blended


def test_box_outline_is_drawn_in_the_concept_colour_inside_the_box(gray):
    inst = make_instances(120, 160, with_masks=False)
    out = draw(gray, inst, boxes=True, labels=False)
    x0, y0, x1, y1 = inst.boxes[1].astype(int)
    color = concept_color(inst.concept_ids[1])
    assert tuple(out[(y0 + y1) // 2, x0]) == color  # left edge, pixel-edge box: first column x0
    assert tuple(out[(y0 + y1) // 2, x1 - 1]) == color  # right edge: last column x1 - 1
    assert tuple(out[(y0 + y1) // 2, x1]) == (100, 100, 100)


def test_same_concept_same_colour_distinct_concepts_distinct_colours():
    assert concept_color(3) == concept_color(3) == PALETTE[3]
    colors = [concept_color(i) for i in range(64)]
    assert len(set(colors)) == 64
    assert all(all(0 <= c <= 255 for c in color) for color in colors)


def test_colour_follows_the_concept_id_not_the_instance_position(gray):
    a = make_instances(120, 160, concept_ids=(5, 1))
    b = make_instances(120, 160, concept_ids=(1, 5))
    out_a = draw(gray, a, alpha=1.0, boxes=False, labels=False, outlines=False)
    out_b = draw(gray, b, alpha=1.0, boxes=False, labels=False, outlines=False)
    assert tuple(out_a[a.masks[0]][0]) == tuple(out_b[b.masks[1]][0]) == concept_color(5)


def test_label_text_is_phrase_and_two_decimal_score():
    assert label_text("ripe apple", 0.8721) == "ripe apple 0.87"
    assert label_text("ripe apple") == "ripe apple"


def _label_rows(image, inst, **options) -> int:
    """Number of image rows the labels change (labels on vs off)."""
    with_labels = draw(image, inst, labels=True, **options)
    without = draw(image, inst, labels=False, **options)
    return int((with_labels != without).any(axis=(1, 2)).sum())


def test_labels_scale_with_the_image_and_are_drawn_at_small_sizes():
    small = np.full((48, 48, 3), 100, np.uint8)
    large = np.full((1440, 1920, 3), 100, np.uint8)
    rows_small = _label_rows(small, make_instances(48, 48, concept_ids=(0,), scores=(0.9,)))
    rows_large = _label_rows(large, make_instances(1440, 1920, concept_ids=(0,), scores=(0.9,)))
    assert rows_small >= 8  # a legible line of text even on a thumbnail
    assert rows_large > 2.5 * rows_small


def test_scores_can_be_left_out_of_labels(gray):
    inst = make_instances(120, 160, concept_ids=(0,), scores=(0.9,))
    assert not np.array_equal(draw(gray, inst, scores=True), draw(gray, inst, scores=False))


def test_label_of_a_box_at_the_top_edge_stays_inside_the_image(gray):
    masks = np.zeros((1, 120, 160), dtype=bool)
    masks[0, 0:30, 140:160] = True
    inst = Instances(["a long phrase at the corner"], [0], [0.9], [[140, 0, 160, 30]], masks, {}, (120, 160))
    out = draw(gray, inst, alpha=0.0, boxes=False, outlines=False)
    changed = (out != gray).any(axis=2)
    assert changed[:20].any() and changed[:, :140].any()  # moved left and drawn below the top edge


def test_empty_instances_give_a_copy_of_the_image(gray):
    out = draw(gray, Instances.empty((120, 160)))
    assert np.array_equal(out, gray) and out is not gray


def test_image_of_another_size_than_the_instances_is_refused(gray):
    with pytest.raises(ValueError, match=r"120 x 160 .* 60 x 80"):
        draw(gray, make_instances(60, 80))


def test_alpha_out_of_range_is_refused(gray):
    with pytest.raises(ValueError, match="alpha"):
        draw(gray, make_instances(120, 160), alpha=1.5)


def test_save_overlay_writes_the_drawn_picture_atomically(tmp_path, gray):
    inst = make_instances(120, 160)
    target = tmp_path / "out" / "overlay.png"
    assert save_overlay(target, gray, inst, alpha=0.5) == target
    assert np.array_equal(np.asarray(Image.open(target)), draw(gray, inst, alpha=0.5))
    save_overlay(target, gray, Instances.empty((120, 160)))  # replaces the existing file
    assert np.array_equal(np.asarray(Image.open(target)), gray)
    assert [p.name for p in target.parent.iterdir()] == ["overlay.png"]  # no temporary file left


def test_save_overlay_leaves_no_temporary_file_when_writing_fails(tmp_path, gray, monkeypatch):
    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", fail)
    with pytest.raises(OSError, match="disk full"):
        save_overlay(tmp_path / "o.png", gray, make_instances(120, 160))
    assert list(tmp_path.iterdir()) == []


def test_save_overlay_refuses_an_unknown_suffix(tmp_path, gray):
    with pytest.raises(ValueError, match="format"):
        save_overlay(tmp_path / "overlay.xyz", gray, make_instances(120, 160))


def test_side_by_side_scales_to_one_height_and_adds_a_title_bar():
    a = np.full((100, 200, 3), 10, np.uint8)
    b = np.full((50, 50, 3), 250, np.uint8)
    out = side_by_side([a, b], ["teacher", "student"], gap=4)
    bar = out.shape[0] - 100
    assert bar > 0 and out.shape[1] == 200 + 4 + 100
    assert np.all(out[bar:, :200] == 10) and np.all(out[bar:, 204:] == 250)
    assert len(np.unique(out[:bar].reshape(-1, 3), axis=0)) > 1  # some title text


def test_side_by_side_without_titles_has_no_bar_and_checks_its_arguments():
    a = np.zeros((30, 40, 3), np.uint8)
    assert side_by_side([a, a], gap=2).shape == (30, 82, 3)
    with pytest.raises(ValueError, match="2 images but 1 titles"):
        side_by_side([a, a], ["only one"])
    with pytest.raises(ValueError, match="no images"):
        side_by_side([])


def test_saved_overlays_are_readable_by_others_and_leave_no_temporary_file(gray, tmp_path):
    """The overlay went through its own mkstemp copy of the atomic write: files came out mode 0600 and unsynced
    (issue 15); it now uses sam3edge.atomic like every other write."""
    from sam3edge.runtime.instances import Instances
    from sam3edge.runtime.overlay import save_overlay

    empty = Instances(phrases=[], concept_ids=np.zeros(0, np.int64), scores=np.zeros(0, np.float32),
                      boxes=np.zeros((0, 4)), masks=np.zeros((0, *gray.shape[:2]), bool), presence={},
                      image_size=gray.shape[:2])
    path = save_overlay(tmp_path / "o.png", gray, empty)
    assert path.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["o.png"]
