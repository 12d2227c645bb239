"""Runtime image handling: any input kind -> uint8 RGB, and the input-frame transform and its inverse."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from sam3edge.data.images import resize_batch
from sam3edge.runtime.image import MAX_PIXELS, Resize, as_rgb_uint8

ODD_SIZES = [(37, 301), (301, 37), (480, 640), (1, 1), (1000, 3), (64, 64)]


@pytest.fixture
def rgb():
    return np.random.default_rng(0).integers(0, 256, (23, 31, 3), dtype=np.uint8)


def test_runtime_imports_without_torch_pycocotools_scipy_or_cv2():
    code = (
        "import sys\n"
        "for name in ('torch', 'pycocotools', 'scipy', 'cv2'): sys.modules[name] = None\n"
        "import sam3edge.runtime.image, sam3edge.runtime.instances\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ---- as_rgb_uint8: every accepted kind gives the same pixels --------------------------------------


def test_contiguous_uint8_rgb_is_returned_without_a_copy(rgb):
    assert as_rgb_uint8(rgb) is rgb


def test_bgr_frames_give_the_rgb_pixels(rgb):
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    np.testing.assert_array_equal(as_rgb_uint8(bgr, bgr=True), rgb)
    bgra = np.concatenate([bgr, np.full(rgb.shape[:2] + (1,), 7, np.uint8)], axis=-1)
    np.testing.assert_array_equal(as_rgb_uint8(bgra, bgr=True), rgb)


def test_rgba_drops_alpha_without_premultiplying(rgb):
    alpha = np.random.default_rng(1).integers(0, 256, rgb.shape[:2] + (1,), dtype=np.uint8)
    out = as_rgb_uint8(np.concatenate([rgb, alpha], axis=-1))
    np.testing.assert_array_equal(out, rgb)
    assert out.flags.c_contiguous


def test_gray_becomes_three_equal_channels(rgb):
    gray = rgb[..., 0]
    for arr in (gray, gray[..., None]):
        out = as_rgb_uint8(arr)
        assert out.shape == rgb.shape and out.dtype == np.uint8
        for c in range(3):
            np.testing.assert_array_equal(out[..., c], gray)


def test_uint16_covers_the_full_16_bit_range(rgb):
    np.testing.assert_array_equal(as_rgb_uint8(rgb.astype(np.uint16) * 257), rgb)
    every = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    expected = np.floor(every / 257 + 0.5).astype(np.uint8)
    np.testing.assert_array_equal(as_rgb_uint8(every)[..., 0], expected)
    np.testing.assert_array_equal(as_rgb_uint8(every.astype(">u2"))[..., 0], expected)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_floats_in_unit_range_give_the_uint8_pixels(rgb, dtype):
    np.testing.assert_array_equal(as_rgb_uint8((rgb / 255).astype(dtype)), rgb)


def test_bool_is_black_and_white():
    mask = np.eye(4, dtype=bool)
    np.testing.assert_array_equal(as_rgb_uint8(mask)[..., 1], mask * 255)


def test_non_contiguous_views_come_back_contiguous(rgb):
    view = rgb[::2, 1::3]
    out = as_rgb_uint8(view)
    assert out.flags.c_contiguous
    np.testing.assert_array_equal(out, view)


@pytest.mark.parametrize(
    "mode,make",
    [
        ("RGB", lambda a: Image.fromarray(a)),
        ("RGBA", lambda a: Image.fromarray(np.dstack([a, np.full(a.shape[:2], 9, np.uint8)]))),
        ("P", lambda a: Image.fromarray(a).quantize(256)),
        ("L", lambda a: Image.fromarray(a[..., 0])),
        ("LA", lambda a: Image.fromarray(a[..., 0]).convert("LA")),
        ("I;16", lambda a: Image.fromarray(a[..., 0].astype(np.uint16) * 257)),
        ("I", lambda a: Image.fromarray(a[..., 0].astype(np.int32) * 257)),
        ("F", lambda a: Image.fromarray((a[..., 0] / 255).astype(np.float32))),
        ("1", lambda a: Image.fromarray(a[..., 0] > 127)),
    ],
)
def test_pil_images_of_any_mode_give_their_rgb_pixels(rgb, mode, make):
    im = make(rgb)
    assert im.mode == mode
    out = as_rgb_uint8(im)
    assert out.shape == rgb.shape and out.dtype == np.uint8 and out.flags.writeable
    if mode == "P":
        expected = np.asarray(im.convert("RGB"))
    elif mode == "RGB" or mode == "RGBA":
        expected = rgb
    elif mode == "1":
        expected = np.repeat(((rgb[..., :1] > 127) * 255).astype(np.uint8), 3, axis=2)
    else:
        expected = np.repeat(rgb[..., :1], 3, axis=2)
    np.testing.assert_array_equal(out, expected)


def test_png_path_pil_and_numpy_give_the_same_pixels(tmp_path, rgb):
    path = tmp_path / "frame.png"
    Image.fromarray(rgb).save(path)
    np.testing.assert_array_equal(as_rgb_uint8(path), rgb)
    np.testing.assert_array_equal(as_rgb_uint8(str(path)), rgb)
    with Image.open(path) as im:
        np.testing.assert_array_equal(as_rgb_uint8(im), rgb)


def test_16_bit_png_path_is_scaled_to_8_bit(tmp_path, rgb):
    path = tmp_path / "depth16.png"
    Image.fromarray(rgb[..., 0].astype(np.uint16) * 257).save(path)
    np.testing.assert_array_equal(as_rgb_uint8(path), np.repeat(rgb[..., :1], 3, axis=2))


def test_missing_and_unreadable_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        as_rgb_uint8(tmp_path / "nope.jpg")
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    with pytest.raises(ValueError, match="notes.png"):
        as_rgb_uint8(bad)


# ---- as_rgb_uint8: bad inputs say what is wrong -----------------------------------------------------


@pytest.mark.parametrize(
    "arr,message",
    [
        (np.zeros((2, 8, 8, 3), np.uint8), "batch of 2 images"),
        (np.zeros((3, 8, 9), np.uint8), "looks like CHW; transpose to HWC"),
        (np.zeros((1, 8, 9), np.float32), "looks like CHW; transpose to HWC"),
        (np.zeros((8, 8, 2), np.uint8), "has 2 channels"),
        (np.zeros((8, 8, 5), np.uint8), "has 5 channels"),
        (np.zeros(8, np.uint8), r"\(1 dimensions\) is not an image"),
        (np.zeros((0, 8, 3), np.uint8), "empty"),
        (np.zeros((8, 0), np.uint8), "empty"),
        (np.full((4, 4, 3), 1.5, np.float32), r"must be in \[0, 1\]"),
        (np.full((4, 4, 3), -0.25), r"must be in \[0, 1\]"),
        (np.full((4, 4, 3), np.nan, np.float32), "NaN"),
        (np.zeros((4, 4, 3), np.int64), "unsupported dtype int64"),
        (np.zeros((4, 4, 3), np.complex128), "unsupported dtype complex128"),
        (np.zeros((4, 4, 3), object), "unsupported dtype object"),
    ],
)
def test_bad_arrays_raise_a_value_error_naming_the_problem(arr, message):
    with pytest.raises(ValueError, match=message) as info:
        as_rgb_uint8(arr)
    assert "accepted" in str(info.value) or "empty" in message


def test_images_over_100_megapixels_are_refused_naming_the_size():
    huge = np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (10001, 10000, 3))  # no memory behind it
    assert huge.shape[0] * huge.shape[1] > MAX_PIXELS
    with pytest.raises(ValueError, match="10001 x 10000"):
        as_rgb_uint8(huge)


# ---- Resize: the input frame ------------------------------------------------------------------------


@pytest.mark.parametrize("hw", [(37, 301), (480, 640), (64, 64), (2, 2), (700, 500)])
def test_stretch_equals_resize_batch_of_training(hw):
    image = np.random.default_rng(hw[0]).integers(0, 256, hw + (3,), dtype=np.uint8)
    expected, sizes = resize_batch(image, 64)
    frame = Resize.fit(*hw, 64).apply(image)
    assert sizes == [hw]
    np.testing.assert_array_equal(frame, expected[0])


@pytest.mark.parametrize("hw", [(37, 301), (301, 37), (480, 640), (1, 1), (1000, 3)])
def test_letterbox_keeps_the_aspect_and_pads_bottom_right(hw):
    image = np.random.default_rng(1).integers(0, 256, hw + (3,), dtype=np.uint8)
    resize = Resize.fit(*hw, 64, "letterbox", pad_value=114)
    h, w = resize.scaled_size
    assert max(h, w) == 64
    scale = 64 / max(hw)  # one scale for both axes, each side rounded to whole pixels
    assert abs(h - max(1.0, hw[0] * scale)) <= 0.5 and abs(w - max(1.0, hw[1] * scale)) <= 0.5
    frame = resize.apply(image)
    assert frame.shape == (64, 64, 3) and frame.dtype == np.uint8
    np.testing.assert_array_equal(frame[:h, :w], np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR)))
    assert (frame[h:] == 114).all() and (frame[:, w:] == 114).all()


def test_apply_refuses_an_image_of_another_size():
    with pytest.raises(ValueError, match="fitted to 10 x 20"):
        Resize.fit(10, 20, 32).apply(np.zeros((20, 10, 3), np.uint8))


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(height=0, width=4, size=8), "height must be a positive integer"),
        (dict(height=4, width=4, size=8, mode="crop"), "mode must be one of"),
        (dict(height=4, width=4, size=8, pad_value=300), "pad_value"),
    ],
)
def test_resize_rejects_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Resize(**kwargs)


@pytest.mark.parametrize("mode", ["stretch", "letterbox"])
@pytest.mark.parametrize("hw", ODD_SIZES)
def test_boxes_round_trip_to_the_pixel(mode, hw):
    height, width = hw
    resize = Resize.fit(height, width, 1008, mode)
    boxes = np.array([[0, 0, width, height], [width * 0.25, height * 0.1, width * 0.5, height * 0.9],
                      [width, height, width, height]])
    back = resize.boxes_to_original(resize.boxes_to_input(boxes))
    np.testing.assert_allclose(back, boxes, rtol=0, atol=1e-6)


def test_whole_frame_boxes_map_to_the_whole_image_and_are_clipped():
    stretch = Resize.fit(37, 301, 64)
    np.testing.assert_allclose(stretch.boxes_to_original([[0, 0, 1, 1], [-0.5, -0.5, 2, 2]]),
                               [[0, 0, 301, 37]] * 2)
    letterbox = Resize.fit(37, 301, 64, "letterbox")
    h, w = letterbox.scaled_size
    np.testing.assert_allclose(letterbox.boxes_to_original([[0, 0, w / 64, h / 64]]), [[0, 0, 301, 37]])
    # A box reaching into the padding stops at the image edge.
    np.testing.assert_allclose(letterbox.boxes_to_original([[0.5, 0, 1, 1]]), [[150.5, 0, 301, 37]])


@settings(max_examples=200, deadline=None)
@given(
    height=st.integers(1, 5000),
    width=st.integers(1, 5000),
    size=st.integers(8, 1536),
    mode=st.sampled_from(["stretch", "letterbox"]),
    fractions=st.lists(st.floats(0, 1), min_size=4, max_size=4),
)
def test_property_box_round_trip_over_random_sizes(height, width, size, mode, fractions):
    resize = Resize.fit(height, width, size, mode)
    xs = sorted(fractions[:2])
    ys = sorted(fractions[2:])
    box = np.array([[xs[0] * width, ys[0] * height, xs[1] * width, ys[1] * height]])
    normalised = resize.boxes_to_input(box)
    assert (normalised >= 0).all() and (normalised <= 1 + 1e-12).all()
    np.testing.assert_allclose(resize.boxes_to_original(normalised), box, rtol=0, atol=1e-6)


# ---- Resize: masks back to the original image -------------------------------------------------------


def _rectangle_logits(resize: Resize, box_px: np.ndarray, m: int) -> np.ndarray:
    """[1, m, m] logits of a box drawn in original pixels, as a decoder would predict it in the input frame.

    Signed distance to the box's edges in logit cells (positive inside): piecewise linear, so a bilinear
    resample puts the zero crossing on the true edge.
    """
    x0, y0, x1, y1 = resize.boxes_to_input(box_px[None])[0] * m
    centres = np.arange(m) + 0.5
    dx = np.minimum(centres - x0, x1 - centres)
    dy = np.minimum(centres - y0, y1 - centres)
    return np.minimum(dy[:, None], dx[None, :])[None].astype(np.float32)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return (a & b).sum() / max(1, (a | b).sum())


@pytest.mark.parametrize("mode", ["stretch", "letterbox"])
@pytest.mark.parametrize(
    "hw,fractions",
    [
        ((37, 301), (0.2, 0.3, 0.7, 0.9)),
        ((301, 37), (0.2, 0.3, 0.7, 0.9)),
        ((480, 640), (0.2, 0.3, 0.7, 0.9)),
        ((64, 64), (0.1, 0.1, 0.5, 0.6)),
        ((1000, 3), (0.0, 0.3, 1.0, 0.9)),
        ((1, 1), (0.0, 0.0, 1.0, 1.0)),
    ],
)
def test_rectangle_masks_come_back_at_original_resolution(mode, hw, fractions):
    height, width = hw
    box = np.round(np.array(fractions) * [width, height, width, height]).astype(int)
    drawn = np.zeros(hw, bool)
    drawn[box[1]:box[3], box[0]:box[2]] = True
    resize = Resize.fit(height, width, 256, mode)
    rendered = box.astype(float)
    if mode == "letterbox" and width < 4:
        rendered[2] = width * 8  # one input pixel, a quarter logit cell, wide: a decoder marks the whole cell
    masks = resize.masks_to_original(_rectangle_logits(resize, rendered, 64))
    assert masks.shape == (1, height, width) and masks.dtype == bool
    assert _iou(masks[0], drawn) >= 0.95


def test_letterbox_padding_never_leaks_into_the_mask():
    resize = Resize.fit(480, 640, 64, "letterbox")  # the image fills the top 12 of 16 logit rows
    logits = np.full((1, 16, 16), -1.0, np.float32)
    logits[:, 12:] = 1.0
    assert not resize.masks_to_original(logits).any()
    assert Resize.fit(480, 640, 64).masks_to_original(logits).any()


def test_masks_of_no_instances_are_an_empty_stack():
    masks = Resize.fit(5, 7, 32).masks_to_original(np.zeros((0, 8, 8), np.float32))
    assert masks.shape == (0, 5, 7) and masks.dtype == bool


def test_masks_to_original_wants_a_stack_of_logit_maps():
    with pytest.raises(ValueError, match=r"\[N, m, m\]"):
        Resize.fit(5, 7, 32).masks_to_original(np.zeros((8, 8)))


def test_a_phone_photo_is_read_upright_by_its_exif_orientation_on_both_sides(tmp_path):
    """EXIF orientation 6 (rotate 90 degrees clockwise to view) on a 4 x 6 sensor image: read as 6 x 4, upright,
    by the runtime and by training's loader alike (they are one function)."""
    import numpy as np
    from PIL import Image

    from sam3edge.data.images import load_image, to_rgb_array
    from sam3edge.runtime.image import as_rgb_uint8

    sensor = np.zeros((4, 6, 3), np.uint8)
    sensor[0, 0] = (255, 0, 0)  # top-left of the sensor
    im = Image.fromarray(sensor)
    exif = im.getexif()
    exif[0x0112] = 6
    path = tmp_path / "phone.jpg"
    im.save(path, exif=exif, quality=100, subsampling=0)
    upright = as_rgb_uint8(path)
    assert upright.shape == (6, 4, 3)
    assert upright[0, -1, 0] > 200 and upright[0, -1, 1] < 60  # the sensor's top-left is now top-right
    np.testing.assert_array_equal(load_image(path), upright)
    # 32-bit gray ('I' mode) images: the training side once turned them to zeros; now one reader for both
    gray = Image.fromarray(np.full((3, 3), 1000, np.int32), mode="I")
    np.testing.assert_array_equal(to_rgb_array(gray), as_rgb_uint8(gray))
    assert to_rgb_array(gray).max() > 0


def test_masks_resized_in_a_window_equal_the_full_size_resize():
    """masks_to_original resizes only the window a mask can be positive in (issue 14: 8 masks at 640 x 480 took
    18 ms); every pixel must equal a full-size Pillow bilinear resize of the same logits, stretched or letterboxed."""
    from PIL import Image

    from sam3edge.runtime.image import Resize

    def full_size(r, logits):
        h, w = r.scaled_size
        region = (0.0, 0.0, w * logits.shape[2] / r.size, h * logits.shape[1] / r.size)
        return np.stack([np.asarray(Image.fromarray(x).resize((r.width, r.height), Image.BILINEAR, box=region)) > 0
                         for x in logits])

    rng = np.random.default_rng(7)
    for trial in range(24):
        height, width = (int(v) for v in rng.integers(9, 700, 2))
        m = int(rng.choice([16, 40, 64]))
        r = Resize.fit(height, width, 128, ("stretch", "letterbox")[trial % 2])
        logits = rng.normal(-3, 1, (5, m, m)).astype(np.float32)
        yy, xx = np.mgrid[:m, :m]
        for k in range(3):
            cy, cx, radius = rng.integers(0, m, 3)
            logits[k] += 6 * ((yy - cy) ** 2 + (xx - cx) ** 2 < (radius % 9 + 1) ** 2)
        logits[3] = -1.0  # no positive cell
        logits[4, 0, 0] = logits[4, -1, -1] = 4.0  # corners (the letterbox's padding for the last one)
        np.testing.assert_array_equal(r.masks_to_original(logits), full_size(r, logits))
