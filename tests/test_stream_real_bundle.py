"""A real bundle over a 2000-frame video: the pipelined stream keeps memory flat (slow: ~1-2 min on 2 cores)."""

from __future__ import annotations

import numpy as np
import pytest


def _stream(bundle: str, video: str) -> tuple[int, list[int], dict, str]:
    from sam3edge.runtime.segmenter import Segmenter
    from sam3edge.runtime.stream import current_rss_mb, run_stream

    seg = Segmenter.load(bundle, threads=2)
    rss, counts = {}, []

    def on_result(frame, inst):
        counts.append(len(inst))
        if frame.index in (200, 1999):
            rss[frame.index] = current_rss_mb()

    stats = run_stream(seg, video, on_result=on_result, score_threshold=0.0, top_k=3, masks=True)
    line = (f"2000 frames at {stats.fps:.1f} fps; RSS at start {stats.rss_start_mb:.1f} MB, frame 200 "
            f"{rss[200]:.1f} MB, frame 1999 {rss[1999]:.1f} MB, end {stats.rss_end_mb:.1f} MB, "
            f"peak {stats.rss_peak_mb:.1f} MB")
    return stats.frames, counts, rss, line


@pytest.mark.slow
def test_a_2000_frame_video_through_a_real_bundle_keeps_memory_flat(toy_bundles, tmp_path):
    import multiprocessing

    import cv2

    video = tmp_path / "orchard.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 30, (128, 96))
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)
    for i in range(2000):
        writer.write(np.roll(base, i, axis=1))  # a panning scene: every frame differs
    writer.release()

    # The stream runs in a fresh process: after the rest of the slow suite, this process's allocator (1.6 GB of
    # earlier fixtures and threads) moved RSS by 8 MB on its own, while the stream alone moves it by 0.1 MB.
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        frames, counts, rss, line = pool.apply(_stream, (str(toy_bundles["onnx"]), str(video)))
    print(line)
    assert frames == 2000 and counts == [3] * 2000  # every frame answered, with masks, in order
    assert rss[1999] - rss[200] < 8.0  # flat: no per-frame growth (0.004 MB/frame would already be 7 MB)
