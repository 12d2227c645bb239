"""ROS 2 recordings without ROS: camera topics of a rosbag2 bag in, results written back as a bag ROS tools open.

Uses the ``rosbags`` package (pure Python, no ROS installation: ``pip install 'sam3edge[ros]'``), imported lazily.

* :class:`RosbagSource` - a :class:`~sam3edge.runtime.sources.FrameSource` of one image topic of a rosbag2 bag
  (a directory with ``metadata.yaml``, SQLite3 or MCAP storage): ``sensor_msgs/msg/Image`` (rgb8, bgr8, rgba8,
  bgra8, mono8, mono16) or ``sensor_msgs/msg/CompressedImage`` (JPEG / PNG). ``topic=None`` takes the bag's only
  image topic (an error lists them when there are several). Each frame keeps its message's header stamp and
  frame id (:meth:`RosbagSource.header`).
* :class:`RosbagResultWriter` - a new rosbag2 bag (MCAP) with ``<prefix>/detections``
  (``vision_msgs/msg/Detection2DArray``: per instance its box centre and size in pixels, ``class_id`` = the
  concept phrase, ``score``, ``id`` = the track id when tracked, else the instance's index) and ``<prefix>/masks``
  (``sensor_msgs/msg/Image``, mono16: pixel = 1 + the instance's index in that frame's detections, 0 = none),
  both stamped with the camera message's header, so they line up with the camera topic in rviz / Foxglove.
  ``vision_msgs`` (ROS 2 Humble's 4.x definitions) is not in ``rosbags``' built-in type stores; its definitions are
  registered from text and written into the bag, so readers need nothing installed.

A live ROS 2 node would be a thin adapter on ``Segmenter.stream`` over a subscription; it is not included: there
is no ROS here to test one against.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from sam3edge.runtime.sources import Frame, FrameSource

IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
INSTALL_HINT = "pip install 'sam3edge[ros]' (the rosbags package: reads and writes ROS 2 bags, no ROS needed)"

# vision_msgs 4.x (ROS 2 Humble), the message definitions the result bag uses
VISION_MSGS = {
    "vision_msgs/msg/Point2D": "float64 x\nfloat64 y\n",
    "vision_msgs/msg/Pose2D": "vision_msgs/Point2D position\nfloat64 theta\n",
    "vision_msgs/msg/BoundingBox2D": "vision_msgs/Pose2D center\nfloat64 size_x\nfloat64 size_y\n",
    "vision_msgs/msg/ObjectHypothesis": "string class_id\nfloat64 score\n",
    "vision_msgs/msg/ObjectHypothesisWithPose": "vision_msgs/ObjectHypothesis hypothesis\n"
                                                "geometry_msgs/PoseWithCovariance pose\n",
    "vision_msgs/msg/Detection2D": "std_msgs/Header header\nvision_msgs/ObjectHypothesisWithPose[] results\n"
                                   "vision_msgs/BoundingBox2D bbox\nstring id\n",
    "vision_msgs/msg/Detection2DArray": "std_msgs/Header header\nvision_msgs/Detection2D[] detections\n",
}


def _rosbags():
    try:
        import rosbags.rosbag2 as rosbag2
        from rosbags.typesys import Stores, get_types_from_msg, get_typestore
    except ImportError as e:
        raise ImportError(f"reading or writing ROS 2 bags needs the rosbags package: {INSTALL_HINT}") from e
    return rosbag2, Stores, get_types_from_msg, get_typestore


def typestore():
    """ROS 2 Humble's message types plus vision_msgs."""
    _, stores, get_types_from_msg, get_typestore = _rosbags()
    store = get_typestore(stores.ROS2_HUMBLE)
    types = {}
    for name, text in VISION_MSGS.items():
        types.update(get_types_from_msg(text, name))
    store.register(types)
    return store


def is_bag(path: Path) -> bool:
    """A rosbag2 directory (``metadata.yaml`` inside)."""
    return Path(path).is_dir() and (Path(path) / "metadata.yaml").is_file()


def _decode(msg, msgtype: str, where: str) -> np.ndarray:
    """uint8 RGB [H, W, 3] of an Image / CompressedImage message."""
    if msgtype.endswith("CompressedImage"):
        from PIL import Image

        try:
            return np.asarray(Image.open(io.BytesIO(bytes(msg.data))).convert("RGB"))
        except Exception as e:
            raise ValueError(f"{where}: the compressed image ({msg.format!r}) cannot be decoded: {e}") from e
    enc, h, w = msg.encoding.lower(), int(msg.height), int(msg.width)
    channels = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1, "8uc1": 1, "8uc3": 3, "mono16": 1,
                "16uc1": 1}
    if enc not in channels:
        raise ValueError(f"{where}: image encoding {msg.encoding!r} is not supported; expected one of "
                         f"{', '.join(channels)} or a CompressedImage")
    c = channels[enc]
    dtype = np.dtype(">u2" if msg.is_bigendian else "<u2") if enc in ("mono16", "16uc1") else np.dtype(np.uint8)
    row = w * c * dtype.itemsize
    data = np.frombuffer(bytes(msg.data), np.uint8)
    if int(msg.step) < row or len(data) < int(msg.step) * h:
        raise ValueError(f"{where}: {len(data)} bytes with step {msg.step} do not hold a {w} x {h} {enc} image")
    rows = data[: int(msg.step) * h].reshape(h, int(msg.step))[:, :row]
    img = np.ascontiguousarray(rows).view(dtype).reshape(h, w, c)
    if dtype.itemsize == 2:
        img = (img.astype(np.float32) / 257.0 + 0.5).astype(np.uint8)
    if c == 1:
        return np.repeat(img, 3, axis=2)
    if enc.startswith("bgr"):
        img = img[..., 2::-1] if c == 3 else img[..., [2, 1, 0]]
    return np.ascontiguousarray(img[..., :3])


class RosbagSource(FrameSource):
    """Frames of one image topic of a rosbag2 bag, in recording order (see the module docstring)."""

    def __init__(self, path, topic: str | None = None, **options):
        self.path = Path(path)
        self.description = f"bag {self.path}"
        super().__init__(**options)
        rosbag2, *_ = _rosbags()
        if not is_bag(self.path):
            raise ValueError(f"{self.path} is not a rosbag2 bag (a directory with metadata.yaml)")
        self._store = typestore()
        with rosbag2.Reader(self.path) as reader:
            images = {c.topic: (c.msgtype, c.msgcount) for c in reader.connections if c.msgtype in IMAGE_TYPES}
        if topic is None:
            if not images:
                raise ValueError(f"{self.path} has no image topic ({' or '.join(IMAGE_TYPES)})")
            if len(images) > 1:
                raise ValueError(f"{self.path}: several image topics ({', '.join(sorted(images))}); name one "
                                 "with --topic")
            topic = next(iter(images))
        if topic not in images:
            raise ValueError(f"{self.path}: no image topic {topic!r}; image topics: "
                             f"{', '.join(sorted(images)) or 'none'}")
        self.topic, self.msgtype, self._count = topic, images[topic][0], images[topic][1]
        self.description = f"bag {self.path} topic {topic}"
        self._headers: dict[int, tuple[int, int, str]] = {}

    def _source_length(self) -> int:
        return self._count

    def header(self, index: int) -> tuple[int, int, str]:
        """(stamp seconds, stamp nanoseconds, frame_id) of frame ``index``'s message header (frames yielded so far;
        the receive time when the message has no header stamp)."""
        return self._headers[index]

    def _frames(self) -> Iterator[Frame]:
        rosbag2, *_ = _rosbags()
        with rosbag2.Reader(self.path) as reader:
            conns = [c for c in reader.connections if c.topic == self.topic]
            for i, (conn, t_ns, raw) in enumerate(reader.messages(connections=conns)):
                if i % self.stride:
                    continue
                where = f"{self.path} {self.topic} message {i}"
                msg = self._store.deserialize_cdr(raw, conn.msgtype)
                stamp = msg.header.stamp
                sec, nsec = (int(stamp.sec), int(stamp.nanosec)) if (stamp.sec or stamp.nanosec) else \
                    (t_ns // 1_000_000_000, t_ns % 1_000_000_000)
                self._headers[i] = (sec, nsec, str(msg.header.frame_id))
                if len(self._headers) > 4096:  # flat memory on long bags: headers of frames long finished go
                    for k in list(self._headers)[:2048]:
                        del self._headers[k]
                yield Frame(i, self._color(_decode(msg, conn.msgtype, where)),
                            f"{self.topic.strip('/').replace('/', '_')}_{i:06d}", sec + nsec * 1e-9)


class RosbagResultWriter:
    """Writes results into a new rosbag2 bag at ``path`` (MCAP storage); ``close()`` finishes the bag (a bag that
    is not closed lacks its metadata.yaml, as with ``ros2 bag record`` killed hard)."""

    def __init__(self, path, prefix: str = "/sam3edge"):
        rosbag2, *_ = _rosbags()
        self.path = Path(path)
        if self.path.exists():
            raise FileExistsError(f"{self.path} already exists; the result bag is written to a new path")
        self.prefix = "/" + prefix.strip("/")
        self._store = typestore()
        self._writer = rosbag2.Writer(self.path, version=9, storage_plugin=rosbag2.StoragePlugin.MCAP)
        self._writer.open()
        self.detections = self._writer.add_connection(f"{self.prefix}/detections", "vision_msgs/msg/Detection2DArray",
                                                      typestore=self._store)
        self.masks = self._writer.add_connection(f"{self.prefix}/masks", "sensor_msgs/msg/Image",
                                                 typestore=self._store)
        self.count = 0

    def write(self, instances, stamp: tuple[int, int], frame_id: str = "camera") -> None:
        """One frame's ``Instances`` (masks optional) at header ``stamp`` (seconds, nanoseconds)."""
        s = self._store
        types = s.types
        Header, Time = types["std_msgs/msg/Header"], types["builtin_interfaces/msg/Time"]
        Det, DetArray = types["vision_msgs/msg/Detection2D"], types["vision_msgs/msg/Detection2DArray"]
        Hyp, HypPose = types["vision_msgs/msg/ObjectHypothesis"], types["vision_msgs/msg/ObjectHypothesisWithPose"]
        Box, Pose2D, Point2D = (types["vision_msgs/msg/BoundingBox2D"], types["vision_msgs/msg/Pose2D"],
                                types["vision_msgs/msg/Point2D"])
        PoseCov, Pose = types["geometry_msgs/msg/PoseWithCovariance"], types["geometry_msgs/msg/Pose"]
        Point, Quat = types["geometry_msgs/msg/Point"], types["geometry_msgs/msg/Quaternion"]
        Image = types["sensor_msgs/msg/Image"]
        header = Header(stamp=Time(sec=int(stamp[0]), nanosec=int(stamp[1])), frame_id=str(frame_id))
        ids = instances.track_ids if instances.track_ids is not None else np.arange(len(instances))
        dets = []
        for phrase, score, (x0, y0, x1, y1), tid in zip(instances.phrases, instances.scores.tolist(),
                                                        instances.boxes.tolist(), ids.tolist()):
            pose = PoseCov(pose=Pose(position=Point(x=0.0, y=0.0, z=0.0), orientation=Quat(x=0.0, y=0.0, z=0.0,
                                                                                            w=1.0)),
                           covariance=np.zeros(36, np.float64))
            dets.append(Det(header=header, results=[HypPose(hypothesis=Hyp(class_id=phrase, score=float(score)),
                                                            pose=pose)],
                            bbox=Box(center=Pose2D(position=Point2D(x=(x0 + x1) / 2, y=(y0 + y1) / 2), theta=0.0),
                                     size_x=float(x1 - x0), size_y=float(y1 - y0)), id=str(int(tid))))
        t_ns = int(stamp[0]) * 1_000_000_000 + int(stamp[1])
        array = DetArray(header=header, detections=dets)
        self._writer.write(self.detections, t_ns, s.serialize_cdr(array, "vision_msgs/msg/Detection2DArray"))
        h, w = instances.image_size
        label = np.zeros((h, w), np.uint16)
        if instances.masks is not None:
            for k, m in enumerate(instances.masks):
                label[m & (label == 0)] = k + 1  # overlaps: the first (best-ranked) instance keeps the pixel
        img = Image(header=header, height=h, width=w, encoding="mono16", is_bigendian=0, step=2 * w,
                    data=np.frombuffer(label.astype("<u2").tobytes(), np.uint8))
        self._writer.write(self.masks, t_ns, s.serialize_cdr(img, "sensor_msgs/msg/Image"))
        self.count += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> RosbagResultWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
