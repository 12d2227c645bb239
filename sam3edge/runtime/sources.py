"""Frames to segment, from an image file, a folder of images, a video file, a camera or a stream URL.

``open_source(spec)`` returns a ``FrameSource``: iterate it for ``Frame(index, image, name,
timestamp_s)`` with ``image`` uint8 RGB [H, W, 3]; ``len()`` works where the number of frames is
known (images, folders, video files as their container reports it); ``close()`` or a ``with``
block releases the decoder.

Images are read with Pillow. Video files are decoded with OpenCV (``pip install
opencv-python-headless``) or, where OpenCV is missing or cannot open the file, PyAV (``pip install
av``); cameras and URLs need OpenCV. Both are imported only when a video is opened, so this module
imports with numpy and Pillow alone.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile

from sam3edge.runtime.image import as_rgb_uint8

__all__ = ["VIDEO_SUFFIXES", "Frame", "FrameSource", "SourceError", "image_suffixes", "open_source"]

VIDEO_SUFFIXES = frozenset({
    ".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv", ".ts", ".mts",
    ".m2ts", ".3gp", ".ogv", ".mjpeg", ".mjpg", ".h264", ".h265", ".hevc",
})
_URL_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://", "srt://")
_VIDEO_BACKENDS = ("auto", "opencv", "pyav")
_URL_TIMEOUT_MS = 10_000


class SourceError(RuntimeError):
    """A source exists but cannot be opened or decoded (an unreadable video, a camera or URL that does not open)."""


@dataclass(frozen=True, eq=False)
class Frame:
    """One frame of a source.

    Attributes:
        index: position of the frame in its source (video frame number, image number in the folder),
            counted before ``stride``, so with ``stride=5`` the indices are 0, 5, 10, ...
        image: uint8 [H, W, 3], RGB (BGR when the source was opened with ``bgr_to_rgb=False``).
        name: a name to file results under: the file name for images (path relative to the folder),
            ``"<video stem>_<index:06d>"`` for videos, ``"camera<i>_<index:06d>"`` for cameras.
        timestamp_s: seconds into the video (from its timestamps), seconds since opening for cameras
            and URLs, None for still images.
    """

    index: int
    image: np.ndarray
    name: str
    timestamp_s: float | None = None


def image_suffixes() -> frozenset[str]:
    """File suffixes (lower case, with the dot) that Pillow can read, e.g. ``.png``, ``.jpg``.

    Formats Pillow only identifies (HDF5, GRIB, BUFR, WMF: stub plugins) are left out.
    """
    extensions = Image.registered_extensions()  # loads every plugin, so Image.OPEN is complete
    readable = {fmt for fmt, (factory, _) in Image.OPEN.items()
                if not (isinstance(factory, type) and issubclass(factory, ImageFile.StubImageFile))}
    return frozenset(ext for ext, fmt in extensions.items() if fmt in readable)


class FrameSource:
    """An iterable of ``Frame``; ``len()`` where known (else TypeError), ``close()``, and a context manager.

    ``stride`` keeps every Nth frame (indices 0, N, 2N, ...), ``max_frames`` stops after that many
    kept frames. File and folder sources can be iterated again from the start; live ones continue.
    """

    description = "source"

    def __init__(self, stride: int = 1, max_frames: int | None = None, bgr_to_rgb: bool = True):
        if not isinstance(stride, int) or stride < 1:
            raise ValueError(f"{self.description}: stride must be an integer >= 1, got {stride!r}")
        if max_frames is not None and (not isinstance(max_frames, int) or max_frames < 0):
            raise ValueError(f"{self.description}: max_frames must be None or an integer >= 0, got {max_frames!r}")
        self.stride = stride
        self.max_frames = max_frames
        self.bgr_to_rgb = bgr_to_rgb
        self.closed = False

    @property
    def length(self) -> int | None:
        """Number of frames an iteration yields (after stride and max_frames), or None when unknown."""
        total = self._source_length()
        if total is None:
            return None
        kept = math.ceil(total / self.stride)
        return kept if self.max_frames is None else min(kept, self.max_frames)

    def __len__(self) -> int:
        n = self.length
        if n is None:
            raise TypeError(f"{self.description}: the number of frames is not known in advance")
        return n

    def __iter__(self) -> Iterator[Frame]:
        if self.closed:
            raise ValueError(f"{self.description} is closed")
        frames = self._frames()
        return frames if self.max_frames is None else _first(frames, self.max_frames)

    def close(self) -> None:
        """Release the decoder or device; iterating afterwards raises ValueError."""
        self.closed = True

    def __enter__(self) -> FrameSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.description} stride={self.stride} length={self.length}>"

    def _color(self, rgb: np.ndarray) -> np.ndarray:
        return rgb if self.bgr_to_rgb else np.ascontiguousarray(rgb[..., ::-1])

    def _source_length(self) -> int | None:
        raise NotImplementedError

    def _frames(self) -> Iterator[Frame]:
        raise NotImplementedError


def _first(frames: Iterator[Frame], n: int) -> Iterator[Frame]:
    """The first ``n`` frames; the decoder is closed as soon as they are out (not one frame later)."""
    try:
        if n == 0:
            return
        for count, frame in enumerate(frames, 1):
            yield frame
            if count >= n:
                return
    finally:
        frames.close()


class ImageFilesSource(FrameSource):
    """Still images, read with Pillow in the order given (one file, or a folder's sorted files)."""

    def __init__(self, files: list[Path], root: Path | None, description: str, **options):
        self.description = description
        super().__init__(**options)
        self.files = files
        self.root = root
        self.skipped: list[dict] = []  # folder files that could not be read: {"file", "error"}

    def _source_length(self) -> int:
        return len(self.files)

    def _frames(self) -> Iterator[Frame]:
        for index in range(0, len(self.files), self.stride):
            path = self.files[index]
            name = path.relative_to(self.root).as_posix() if self.root is not None else path.name
            try:
                image = as_rgb_uint8(path)
            except (ValueError, OSError) as e:
                if self.root is None:  # the one image asked for: its error is the answer
                    raise
                # one unreadable file of a folder must not stop the run and lose every other frame
                warnings.warn(f"skipping {path}: {e}", stacklevel=2)
                self.skipped.append({"file": name, "error": str(e)})
                continue
            yield Frame(index, self._color(image), name, None)


def _folder_images(folder: Path, recursive: bool) -> list[Path]:
    suffixes = image_suffixes()
    candidates = sorted(p for p in (folder.rglob("*") if recursive else folder.iterdir())
                        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    images = [p for p in candidates if p.suffix.lower() in suffixes]
    skipped = [p.relative_to(folder).as_posix() for p in candidates if p.suffix.lower() not in suffixes]
    if skipped:
        shown = ", ".join(skipped[:5]) + (f" and {len(skipped) - 5} more" if len(skipped) > 5 else "")
        warnings.warn(f"{folder}: skipping {len(skipped)} file(s) that are not images: {shown}", stacklevel=3)
    if not images:
        hint = "" if recursive else " (images in subfolders are only read with recursive=True)"
        raise ValueError(f"{folder}: no image files found{hint}; expected files ending in .jpg, .png, ...")
    return images


def _import_cv2(purpose: str):
    try:
        import cv2
    except ImportError as e:
        raise ImportError(f"{purpose} needs OpenCV: pip install opencv-python-headless") from e
    return cv2


def _import_av(purpose: str):
    try:
        import av
    except ImportError as e:
        raise ImportError(f"{purpose} needs PyAV: pip install av") from e
    return av


class OpenCVSource(FrameSource):
    """Frames decoded by OpenCV's VideoCapture: a video file, a camera index or a stream URL."""

    def __init__(self, target: str | int, description: str, name_prefix: str, live: bool, capture, **options):
        self.description = description
        super().__init__(**options)
        self.target = target
        self.name_prefix = name_prefix
        self.live = live
        self._capture = capture  # opened by the caller: opening is where a bad source is reported
        cv2 = _import_cv2(description)
        self._fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self._count = None if live or count <= 0 else count

    def _source_length(self) -> int | None:
        return self._count

    def _reopen(self):
        cv2 = _import_cv2(self.description)
        if self._capture is None:
            self._capture = cv2.VideoCapture(self.target)
            if not self._capture.isOpened():
                raise SourceError(f"{self.description}: could not be opened again")
        return cv2, self._capture

    def _frames(self) -> Iterator[Frame]:
        cv2, capture = self._reopen()
        if not self.live:
            self._capture = None  # a second iteration of a file starts from its first frame
        start = time.monotonic()
        index = -1
        try:
            while True:
                index += 1
                if index % self.stride:
                    if not capture.grab():  # skip without decoding
                        break
                    continue
                ok, bgr = capture.read()
                if not ok or bgr is None:
                    break
                image = np.ascontiguousarray(bgr[..., ::-1]) if self.bgr_to_rgb else bgr
                timestamp = self._timestamp(cv2, capture, index, start)
                yield Frame(index, image, f"{self.name_prefix}_{index:06d}", timestamp)
        finally:
            if not self.live:
                capture.release()
        if self.live and not self.closed:
            warnings.warn(f"{self.description} stopped delivering frames after frame {index - 1}", stacklevel=2)

    def _timestamp(self, cv2, capture, index: int, start: float) -> float | None:
        if self.live:
            return time.monotonic() - start
        msec = capture.get(cv2.CAP_PROP_POS_MSEC)
        if msec > 0 or index == 0:
            return msec / 1000.0
        return index / self._fps if self._fps > 0 else None

    def close(self) -> None:
        if self._capture is not None:
            self._capture.release()
            self._capture = None
        super().close()


class PyAVSource(FrameSource):
    """A video file decoded by PyAV (FFmpeg's libraries), frames converted to RGB by libswscale."""

    def __init__(self, path: Path, **options):
        self.description = f"video {path}"
        super().__init__(**options)
        self.path = path
        av = _import_av(self.description)
        try:
            with av.open(str(path)) as container:
                if not container.streams.video:
                    raise SourceError(f"{path}: the file has no video stream")
                self._count = int(container.streams.video[0].frames or 0) or None
        except av.FFmpegError as e:
            raise SourceError(f"{path}: PyAV cannot read this video ({e}); convert it to H.264 .mp4") from e

    def _source_length(self) -> int | None:
        return self._count

    def _frames(self) -> Iterator[Frame]:
        av = _import_av(self.description)
        with av.open(str(self.path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for index, frame in enumerate(container.decode(stream)):
                if self.closed:
                    return
                if index % self.stride:
                    continue
                image = frame.to_ndarray(format="rgb24" if self.bgr_to_rgb else "bgr24")
                timestamp = None if frame.time is None else float(frame.time)
                yield Frame(index, image, f"{self.path.stem}_{index:06d}", timestamp)


def _open_video(path: Path, backend: str, options: dict) -> FrameSource:
    description = f"video {path}"
    tried = []
    if backend in ("auto", "opencv"):
        try:
            cv2 = _import_cv2(f"reading {description}")
        except ImportError:
            if backend == "opencv":
                raise
            tried.append("OpenCV (not installed: pip install opencv-python-headless)")
        else:
            capture = cv2.VideoCapture(str(path))
            if capture.isOpened():
                return OpenCVSource(str(path), description, path.stem, False, capture, **options)
            capture.release()
            tried.append("OpenCV (could not open it)")
    if backend in ("auto", "pyav"):
        try:
            return PyAVSource(path, **options)
        except ImportError:
            if backend == "pyav":
                raise
            tried.append("PyAV (not installed: pip install av)")
        except SourceError as e:
            tried.append(f"PyAV ({e.__cause__ or e})")
    if all("not installed" in t for t in tried):
        raise ImportError(f"reading {description} needs OpenCV or PyAV: pip install opencv-python-headless (or av)")
    raise SourceError(
        f"{path}: cannot read this video; tried {'; '.join(tried)}. Install the other decoder "
        "(pip install opencv-python-headless or av), or convert the file to H.264 .mp4 (ffmpeg -i in out.mp4)"
    )


def _open_live(target: str | int, options: dict) -> FrameSource:
    is_camera = isinstance(target, int)
    description = f"camera {target}" if is_camera else f"stream {target}"
    cv2 = _import_cv2(description)
    if is_camera:
        capture = cv2.VideoCapture(target)
    else:
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, _URL_TIMEOUT_MS, cv2.CAP_PROP_READ_TIMEOUT_MSEC, _URL_TIMEOUT_MS]
        capture = cv2.VideoCapture(target, cv2.CAP_ANY, params)
    if not capture.isOpened():
        capture.release()
        if is_camera:
            raise SourceError(
                f"camera {target} cannot be opened: is a camera connected at index {target} (on Linux "
                f"/dev/video{target}), and not used by another program? Try another index."
            )
        raise SourceError(f"stream {target} cannot be opened: check the URL, the network and the credentials")
    prefix = f"camera{target}" if is_camera else "stream"
    return OpenCVSource(target, description, prefix, True, capture, **options)


def open_source(spec, bgr_to_rgb: bool = True, *, stride: int = 1, max_frames: int | None = None,
                recursive: bool = False, video_backend: str = "auto", topic: str | None = None) -> FrameSource:
    """A ``FrameSource`` of ``spec``: what it is is told from the spec itself.

    Args:
        spec: an image file; a folder of images (sorted by path; files that are not images are
            skipped with a warning); a video file (suffix in ``VIDEO_SUFFIXES``); a camera index
            (an int, or a string of digits such as ``"0"``); or a stream URL (``rtsp://``,
            ``http(s)://``, ``rtmp://``, ``udp://``, ...).
        bgr_to_rgb: frames are RGB (default). False gives every frame in BGR order, OpenCV's, for
            code that hands frames to OpenCV (``cv2.imshow``, ``cv2.imwrite``) without converting.
        stride: keep every ``stride``-th frame (skipped video frames are not decoded by OpenCV).
        max_frames: stop after this many frames (after ``stride``); None for all.
        recursive: for folders, also read images in subfolders.
        video_backend: ``"auto"`` (OpenCV, else PyAV), ``"opencv"`` or ``"pyav"``, for video files.
        topic: for a ROS 2 bag (a rosbag2 directory), the image topic to read (None: its only one);
            see :mod:`sam3edge.runtime.rosbag`.

    Raises:
        FileNotFoundError: a path that does not exist.
        ValueError: a folder without images, a file that is neither an image nor a video, bad options.
        ImportError: a video, camera or URL without the package needed to decode it (named in the message).
        SourceError: a video that cannot be decoded, a camera or URL that cannot be opened.
    """
    options = {"stride": stride, "max_frames": max_frames, "bgr_to_rgb": bgr_to_rgb}
    if video_backend not in _VIDEO_BACKENDS:
        raise ValueError(f"open_source: video_backend must be one of {_VIDEO_BACKENDS}, got {video_backend!r}")
    if isinstance(spec, bool) or not isinstance(spec, (int, str, os.PathLike)):
        raise ValueError(
            f"open_source: expected a path, a camera index or a URL, got {type(spec).__name__}; "
            "to stream frames you already have, pass an iterable of arrays to run_stream instead"
        )
    if isinstance(spec, (str, os.PathLike)) and not str(os.fspath(spec)).strip():
        # Path("") is the current directory: an empty argument (an unset shell variable) would segment it
        raise ValueError("open_source: the input is an empty string; pass an image, a folder, a video, a camera "
                         "index such as 0, or a URL")
    if isinstance(spec, int) or (isinstance(spec, str) and spec.strip().isdigit()):
        return _open_live(int(spec), options)
    if isinstance(spec, str) and spec.lower().startswith(_URL_SCHEMES):
        return _open_live(spec, options)
    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"open_source: {path} does not exist (expected an image, a folder, a video, "
                                "a camera index such as 0, or a URL such as rtsp://...)")
    if path.is_dir() and (path / "metadata.yaml").is_file():
        from sam3edge.runtime.rosbag import RosbagSource

        return RosbagSource(path, topic=topic, **options)
    if topic is not None:
        raise ValueError(f"open_source: topic={topic!r} is for ROS 2 bags; {path} is not one (no metadata.yaml)")
    if path.is_dir():
        return ImageFilesSource(_folder_images(path, recursive), path, f"folder {path}", **options)
    suffix = path.suffix.lower()
    if suffix in VIDEO_SUFFIXES:
        return _open_video(path, video_backend, options)
    if suffix in image_suffixes():
        return ImageFilesSource([path], None, f"image {path}", **options)
    raise ValueError(
        f"open_source: {path} is neither an image nor a video by its suffix {suffix!r}; "
        f"images: .jpg, .png, ... (what Pillow reads), videos: {', '.join(sorted(VIDEO_SUFFIXES))}"
    )
