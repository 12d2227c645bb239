"""Frame sources: image files, folders, video files (OpenCV and PyAV), cameras and URLs, with stride and limits.

Every video is written by the test itself (OpenCV's VideoWriter), nothing is downloaded.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from sam3edge.runtime.sources import Frame, SourceError, open_source

FPS = 25.0


def synthetic_frame(i: int, height: int = 48, width: int = 64) -> np.ndarray:
    """uint8 RGB: a colour gradient with a bright square that moves 3 px right per frame (wrapping)."""
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 // max(1, width - 1), y * 255 // max(1, height - 1), np.full_like(x, 80)], -1)
    s = height // 3
    x0 = (3 * i) % (width - s)
    rgb[height // 3:height // 3 + s, x0:x0 + s] = (250, 250, 40)
    return rgb.astype(np.uint8)


def write_video(path, n: int, height: int = 48, width: int = 64, fourcc: str = "MJPG"):
    cv2 = pytest.importorskip("cv2")
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), FPS, (width, height))
    assert writer.isOpened(), f"OpenCV cannot write {fourcc} to {path}"
    for i in range(n):
        writer.write(np.ascontiguousarray(synthetic_frame(i, height, width)[..., ::-1]))
    writer.release()
    return path


def closest_index(image: np.ndarray, candidates) -> int:
    """The frame number whose synthetic frame the decoded image is closest to."""
    errors = {i: np.abs(image.astype(int) - synthetic_frame(i, *image.shape[:2])).mean() for i in candidates}
    return min(errors, key=errors.get)


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    for name, i in [("b.png", 1), ("a.png", 0), ("c.jpg", 2), ("sub/d.png", 3)]:
        Image.fromarray(synthetic_frame(i)).save(root / name)
    (root / "notes.txt").write_text("not an image")
    (root / ".DS_Store").write_bytes(b"\0")
    return root


@pytest.fixture(params=["opencv", "pyav"])
def backend(request):
    pytest.importorskip("cv2")  # writes the videos
    pytest.importorskip("cv2" if request.param == "opencv" else "av")
    return request.param


def test_sources_import_without_torch_cv2_or_av():
    code = (
        "import sys\n"
        "for name in ('torch', 'cv2', 'av'): sys.modules[name] = None\n"
        "import sam3edge.runtime.sources\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ---- images and folders ---------------------------------------------------------------------------


def test_an_image_file_is_one_rgb_frame(tmp_path):
    path = tmp_path / "x.png"
    Image.fromarray(synthetic_frame(7)).save(path)
    with open_source(path) as source:
        assert len(source) == 1
        (frame,) = list(source)
    assert isinstance(frame, Frame)
    assert (frame.index, frame.name, frame.timestamp_s) == (0, "x.png", None)
    assert frame.image.dtype == np.uint8 and np.array_equal(frame.image, synthetic_frame(7))


def test_a_folder_gives_its_images_sorted_and_warns_about_other_files(folder):
    with pytest.warns(UserWarning, match=r"skipping 1 file\(s\) that are not images: notes.txt"):
        source = open_source(folder)
    frames = list(source)
    assert [f.name for f in frames] == ["a.png", "b.png", "c.jpg"]
    assert [f.index for f in frames] == [0, 1, 2] and len(source) == 3
    assert np.array_equal(frames[1].image, synthetic_frame(1))


def test_a_folder_is_read_recursively_on_request(folder):
    with pytest.warns(UserWarning):
        source = open_source(str(folder), recursive=True)
    assert [f.name for f in source] == ["a.png", "b.png", "c.jpg", "sub/d.png"]


def test_a_folder_without_images_is_an_error_that_mentions_recursive(tmp_path):
    (tmp_path / "sub").mkdir()
    Image.fromarray(synthetic_frame(0)).save(tmp_path / "sub" / "a.png")
    with pytest.raises(ValueError, match="no image files.*recursive=True"):
        open_source(tmp_path)


def test_stride_and_max_frames_on_a_folder(tmp_path):
    for i in range(10):
        Image.fromarray(synthetic_frame(i)).save(tmp_path / f"{i:02d}.png")
    source = open_source(tmp_path, stride=3)
    assert [f.index for f in source] == [0, 3, 6, 9] and len(source) == 4
    source = open_source(tmp_path, stride=3, max_frames=2)
    assert [f.name for f in source] == ["00.png", "03.png"] and len(source) == 2
    assert list(open_source(tmp_path, max_frames=0)) == []


def test_bgr_to_rgb_false_gives_bgr_frames(tmp_path):
    Image.fromarray(synthetic_frame(0)).save(tmp_path / "a.png")
    (frame,) = open_source(tmp_path / "a.png", bgr_to_rgb=False)
    assert np.array_equal(frame.image, synthetic_frame(0)[..., ::-1])


def test_a_path_that_does_not_exist_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.mp4 does not exist"):
        open_source(tmp_path / "nothing.mp4")


def test_a_file_that_is_neither_image_nor_video_is_refused(tmp_path):
    (tmp_path / "data.csv").write_text("1,2")
    with pytest.raises(ValueError, match="neither an image nor a video"):
        open_source(tmp_path / "data.csv")


@pytest.mark.parametrize("bad", [1.5, None, ["a.png"], True])
def test_a_spec_of_another_kind_is_refused(bad):
    with pytest.raises(ValueError, match="expected a path, a camera index or a URL"):
        open_source(bad)


@pytest.mark.parametrize("option", [{"stride": 0}, {"max_frames": -1}, {"video_backend": "gstreamer"}])
def test_bad_options_are_refused(tmp_path, option):
    Image.fromarray(synthetic_frame(0)).save(tmp_path / "a.png")
    with pytest.raises(ValueError):
        open_source(tmp_path / "a.png", **option)


def test_a_closed_source_cannot_be_iterated(tmp_path):
    Image.fromarray(synthetic_frame(0)).save(tmp_path / "a.png")
    source = open_source(tmp_path / "a.png")
    source.close()
    with pytest.raises(ValueError, match="closed"):
        iter(source)


# ---- video files ----------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix,fourcc", [(".avi", "MJPG"), (".mp4", "mp4v")])
def test_a_video_file_gives_every_frame_in_order_with_timestamps(tmp_path, backend, suffix, fourcc):
    path = write_video(tmp_path / f"clip{suffix}", 12, fourcc=fourcc)
    with open_source(path, video_backend=backend) as source:
        assert len(source) == 12
        frames = list(source)
    assert [f.index for f in frames] == list(range(12))
    assert frames[5].name == "clip_000005"
    assert frames[5].image.shape == (48, 64, 3) and frames[5].image.dtype == np.uint8
    assert [f.timestamp_s for f in frames] == pytest.approx([i / FPS for i in range(12)], abs=1e-3)
    assert [closest_index(f.image, range(12)) for f in frames] == list(range(12))
    assert np.abs(frames[5].image.astype(int) - synthetic_frame(5)).mean() < 8  # RGB, not BGR


def test_video_stride_and_max_frames_keep_the_right_frames(tmp_path, backend):
    path = write_video(tmp_path / "clip.avi", 20)
    source = open_source(path, video_backend=backend, stride=4, max_frames=3)
    assert len(source) == 3
    frames = list(source)
    assert [f.index for f in frames] == [0, 4, 8]
    assert [closest_index(f.image, range(20)) for f in frames] == [0, 4, 8]


def test_a_video_file_can_be_iterated_again_from_the_start(tmp_path, backend):
    path = write_video(tmp_path / "clip.avi", 5)
    source = open_source(path, video_backend=backend)
    assert [f.index for f in source] == [0, 1, 2, 3, 4]
    assert [f.index for f in source] == [0, 1, 2, 3, 4]
    source.close()


def test_video_frames_in_bgr_on_request(tmp_path, backend):
    path = write_video(tmp_path / "clip.avi", 2)
    (first, _) = open_source(path, bgr_to_rgb=False, video_backend=backend)
    assert np.abs(first.image.astype(int) - synthetic_frame(0)[..., ::-1]).mean() < 8


def test_an_unreadable_video_names_the_file_and_the_decoders(tmp_path):
    pytest.importorskip("cv2")
    path = tmp_path / "broken.mp4"
    path.write_bytes(b"this is not a video" * 100)
    expected = r"broken.mp4: cannot read this video.*pip install opencv-python-headless or av"
    with pytest.raises(SourceError, match=expected):
        open_source(path)


def test_without_opencv_videos_are_read_with_pyav(tmp_path, monkeypatch):
    pytest.importorskip("av")
    path = write_video(tmp_path / "clip.avi", 3)
    monkeypatch.setitem(sys.modules, "cv2", None)
    source = open_source(path)
    assert type(source).__name__ == "PyAVSource"
    assert [f.index for f in source] == [0, 1, 2]


def test_without_any_decoder_a_video_asks_for_one(tmp_path, monkeypatch):
    path = tmp_path / "clip.mp4"
    path.write_bytes(b"\0" * 64)
    monkeypatch.setitem(sys.modules, "cv2", None)
    monkeypatch.setitem(sys.modules, "av", None)
    expected = r"clip.mp4 needs OpenCV or PyAV: pip install opencv-python-headless \(or av\)"
    with pytest.raises(ImportError, match=expected):
        open_source(path)


# ---- cameras and URLs -----------------------------------------------------------------------------


@pytest.mark.parametrize("spec", [99, "99"])
def test_a_camera_that_cannot_be_opened_is_named(spec):
    pytest.importorskip("cv2")
    with pytest.raises(SourceError, match="camera 99 cannot be opened"):
        open_source(spec)


def test_a_camera_without_opencv_asks_for_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)
    with pytest.raises(ImportError, match="camera 0 needs OpenCV: pip install opencv-python-headless"):
        open_source("0")


def test_a_url_that_cannot_be_opened_is_named():
    pytest.importorskip("cv2")
    with pytest.raises(SourceError, match=r"stream http://127.0.0.1:1/clip.mp4 cannot be opened"):
        open_source("http://127.0.0.1:1/clip.mp4")
