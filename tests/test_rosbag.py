"""ROS 2 bags without ROS: camera topics in (every encoding we claim), results back as a bag the same library reads."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("rosbags")

from sam3edge.runtime.rosbag import RosbagSource, _decode, typestore  # noqa: E402
from sam3edge.runtime.sources import open_source  # noqa: E402

STAMP0 = 1_700_000_000  # seconds


def _image_msg(store, rgb: np.ndarray, i: int, encoding: str = "rgb8"):
    t = store.types
    h, w = rgb.shape[:2]
    if encoding == "bgr8":
        data = np.ascontiguousarray(rgb[..., ::-1])
    elif encoding == "mono8":
        data = np.ascontiguousarray(rgb[..., 0])
    elif encoding == "mono16":
        data = np.ascontiguousarray((rgb[..., 0].astype(np.uint16) * 257).astype("<u2"))
    else:
        data = rgb
    raw = np.frombuffer(data.tobytes(), np.uint8)
    header = t["std_msgs/msg/Header"](stamp=t["builtin_interfaces/msg/Time"](sec=STAMP0 + i, nanosec=1000 * i),
                                      frame_id="cam_front")
    return t["sensor_msgs/msg/Image"](header=header, height=h, width=w, encoding=encoding, is_bigendian=0,
                                      step=len(raw) // h, data=raw)


def _frame(i: int) -> np.ndarray:
    rgb = np.zeros((64, 96, 3), np.uint8)
    rgb[20:36, 6 * i:6 * i + 16] = (230, 30, 30)
    rgb[50:60, 80:90] = (10 * i, 100, 100)  # neither concept of the fake segmenter
    return rgb


def _write_bag(path, n: int = 12, second_topic: bool = True):
    from rosbags.rosbag2 import Writer

    store = typestore()
    with Writer(path, version=9) as w:
        cam = w.add_connection("/camera/image_raw", "sensor_msgs/msg/Image", typestore=store)
        other = w.add_connection("/camera/depth", "sensor_msgs/msg/Image", typestore=store) if second_topic else None
        imu = w.add_connection("/imu/temperature", "std_msgs/msg/Float64", typestore=store)
        for i in range(n):
            t_ns = (STAMP0 + i) * 1_000_000_000 + 5  # receive time differs from the header stamp
            w.write(cam, t_ns, store.serialize_cdr(_image_msg(store, _frame(i), i), "sensor_msgs/msg/Image"))
            if other is not None:
                w.write(other, t_ns, store.serialize_cdr(_image_msg(store, _frame(0), i, "mono8"),
                                                         "sensor_msgs/msg/Image"))
            w.write(imu, t_ns, store.serialize_cdr(store.types["std_msgs/msg/Float64"](data=20.0 + i),
                                                   "std_msgs/msg/Float64"))
    return path


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "mono8", "mono16"])
def test_image_messages_decode_to_rgb(encoding):
    store = typestore()
    rgb = _frame(3)
    got = _decode(_image_msg(store, rgb, 3, encoding), "sensor_msgs/msg/Image", "test")
    want = np.repeat(rgb[..., :1], 3, axis=2) if encoding.startswith("mono") else rgb
    np.testing.assert_array_equal(got, want)
    bad = _image_msg(store, rgb, 3)
    bad.encoding = "bayer_rggb8"
    with pytest.raises(ValueError, match="bayer_rggb8"):
        _decode(bad, "sensor_msgs/msg/Image", "test")


def test_a_bag_is_a_frame_source_of_one_image_topic(tmp_path):
    bag = _write_bag(tmp_path / "rec")
    with pytest.raises(ValueError, match="several image topics.*--topic"):
        open_source(bag)
    with pytest.raises(ValueError, match="no image topic '/camera/left'"):
        open_source(bag, topic="/camera/left")
    src = open_source(bag, topic="/camera/image_raw", stride=2)
    assert isinstance(src, RosbagSource) and len(src) == 6
    frames = list(src)
    assert [f.index for f in frames] == [0, 2, 4, 6, 8, 10]
    for f in frames:
        np.testing.assert_array_equal(f.image, _frame(f.index))
        assert src.header(f.index) == (STAMP0 + f.index, 1000 * f.index, "cam_front")
        assert f.timestamp_s == pytest.approx(STAMP0 + f.index + 1e-6 * f.index)
    with pytest.raises(ValueError, match="topic='/x' is for ROS 2 bags"):
        open_source(tmp_path, topic="/x")


def test_segment_writes_a_result_bag_stamped_like_the_camera(tmp_path):
    """A tracked run on a bag: the result bag has one detections and one mask message per frame, each with the
    camera message's header; detections carry the phrase, score, box and track id; the mask image labels them."""
    from rosbags.rosbag2 import Reader
    from test_runtime_stream import FakeSegmenter

    from sam3edge.runtime.segment import segment_source

    bag = _write_bag(tmp_path / "rec", second_topic=False)
    seg = FakeSegmenter()
    seg.backend_name = "fake"
    summary = segment_source(seg, bag, tmp_path / "out", score_threshold=0.3, overlays=False, progress=False,
                             track=True, bag_out=True)
    assert summary["frames"] == 12 and summary["bag"] == str(tmp_path / "out" / "results_bag")
    store = typestore()
    with Reader(tmp_path / "out" / "results_bag") as reader:
        counts = {c.topic: c.msgcount for c in reader.connections}
        assert counts == {"/sam3edge/detections": 12, "/sam3edge/masks": 12}
        dets, masks = [], []
        for conn, _, raw in reader.messages():
            msg = store.deserialize_cdr(raw, conn.msgtype)
            (dets if conn.topic.endswith("detections") else masks).append(msg)
    assert [(m.header.stamp.sec, m.header.stamp.nanosec) for m in dets] == \
        [(STAMP0 + i, 1000 * i) for i in range(12)]
    assert {m.header.frame_id for m in dets + masks} == {"cam_front"}
    ids = {d.id for m in dets for d in m.detections}
    assert len(ids) == 1 and sum(len(m.detections) for m in dets) == 11  # reported from frame 1 (min_hits 2)
    d = dets[5].detections[0]
    assert d.results[0].hypothesis.class_id == "red thing" and 0.3 <= d.results[0].hypothesis.score <= 1
    assert abs(d.bbox.center.position.x - (30 + 8)) <= 2 and abs(d.bbox.size_x - 16) <= 3
    label = np.frombuffer(bytes(masks[5].data), "<u2").reshape(masks[5].height, masks[5].width)
    assert masks[5].encoding == "mono16" and set(np.unique(label)) == {0, 1}
    ys, xs = np.nonzero(label == 1)
    assert abs(xs.mean() - 38) <= 2 and abs(ys.mean() - 28) <= 2
