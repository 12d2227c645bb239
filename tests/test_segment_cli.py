"""`sam3edge segment` / `build-engines` and the latency chart: real bundles, real files, readable errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from sam3edge.cli import main


@pytest.fixture(scope="module")
def frames_dir(tmp_path_factory):
    from sam3edge.data.orchard import render_scene, scene_rng

    folder = tmp_path_factory.mktemp("frames")
    for i in range(2):
        Image.fromarray(render_scene(scene_rng(21, i), 240).image[:, :200]).save(folder / f"view {i}.png")
    return folder


def test_segment_a_folder_writes_overlays_and_coco_json(toy_bundles, frames_dir, tmp_path, capsys):
    from sam3edge.runtime.instances import decode_rle

    out = tmp_path / "out"
    assert main(["segment", str(toy_bundles["onnx"]), str(frames_dir), "--concept", "ripe apple", "--concept",
                 "leaf", "--out", str(out), "--threshold", "0", "--top-k", "3", "--threads", "2", "--quiet"]) == 0
    assert "2 frame(s)" in capsys.readouterr().out
    coco = json.loads((out / "predictions.json").read_text())
    assert [c["name"] for c in coco["categories"]] == ["ripe apple", "leaf"]
    assert [(i["file_name"].split("/")[-1], i["height"], i["width"]) for i in coco["images"]] == \
        [("view 0.png", 240, 200), ("view 1.png", 240, 200)]
    # the toy student's encoder is random (scores ~1e-4): threshold 0 and top-3 keep 3 instances per frame
    assert [a["image_id"] for a in coco["annotations"]] == [1, 1, 1, 2, 2, 2]
    for a in coco["annotations"]:
        assert a["category_id"] in (1, 2) and 0 <= a["score"] <= 1
        assert decode_rle(a["segmentation"]).shape == (240, 200)
        x, y, w, h = a["bbox"]
        assert 0 <= x <= x + w <= 200 and 0 <= y <= y + h <= 240
    overlays = sorted(p.name for p in (out / "overlays").iterdir())
    assert overlays == ["view_0.png", "view_1.png"]
    assert np.asarray(Image.open(out / "overlays" / "view_0.png")).shape == (240, 200, 3)


def test_segment_a_video_file_frame_by_frame(toy_bundles, tmp_path, capsys):
    cv2 = pytest.importorskip("cv2")
    from sam3edge.data.orchard import render_scene, scene_rng

    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (160, 120))
    for i in range(6):
        writer.write(np.ascontiguousarray(render_scene(scene_rng(5, i), 160).image[:120, :, ::-1]))
    writer.release()
    out = tmp_path / "v"
    assert main(["segment", str(toy_bundles["openvino"]), str(video), "--out", str(out), "--stride", "2",
                 "--no-overlays", "--quiet"]) == 0
    coco = json.loads((out / "predictions.json").read_text())
    assert [i["frame_index"] for i in coco["images"]] == [0, 2, 4]
    assert not (out / "overlays").exists()


def test_a_source_that_delivers_no_frame_is_a_failure(toy_bundles, tmp_path, capsys):
    cv2 = pytest.importorskip("cv2")
    video = tmp_path / "empty.avi"  # a valid container without a frame (as a camera that never delivers)
    cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (160, 120)).release()
    assert main(["segment", str(toy_bundles["onnx"]), str(video), "--out", str(tmp_path / "o"), "--quiet"]) == 1
    assert "delivered no frame" in capsys.readouterr().err


def test_segment_errors_name_the_problem_and_write_nothing(toy_bundles, frames_dir, tmp_path, capsys):
    out = tmp_path / "never"
    cases = [
        ([str(toy_bundles["onnx"]), str(tmp_path / "missing.png")], "missing.png"),
        ([str(toy_bundles["onnx"]), str(frames_dir), "--concept", " "], "empty phrase"),
        ([str(toy_bundles["onnx"]), str(frames_dir), "--concept", "x" * 10_000], "characters"),
        ([str(toy_bundles["onnx"]), str(frames_dir), "--concept", "giraffe"], "ripe apple"),  # lists the known ones
        ([str(tmp_path), str(frames_dir)], "manifest.json"),
        ([str(toy_bundles["onnx"]), str(frames_dir), "--backend", "tflite"], "onnxruntime"),
        ([str(toy_bundles["onnx"]), ""], "empty string"),  # not the current directory
    ]
    for args, expected in cases:
        assert main(["segment", *args, "--out", str(out), "--quiet"]) == 2, args
        assert expected in capsys.readouterr().err, args
    assert not out.exists()


def test_build_engines_refuses_a_bundle_that_is_not_for_tensorrt(toy_bundles, capsys):
    assert main(["build-engines", str(toy_bundles["onnx"])]) == 2
    assert "is a onnx bundle" in capsys.readouterr().err


def test_the_latency_chart_draws_one_bar_per_row_with_stage_colours(tmp_path):
    from sam3edge.runtime.chart import STAGE_COLORS, stacked_bars

    path = stacked_bars([("onnx fp32", {"image encoder": 10.0, "decoder": 30.0}),
                         ("onnx int8", {"image encoder": 5.0, "decoder": 10.0})], tmp_path / "c.png", title="t")
    img = np.asarray(Image.open(path).convert("RGB"))
    colours = {tuple(c) for c in img.reshape(-1, 3)}
    assert STAGE_COLORS[0] in colours and STAGE_COLORS[1] in colours
    rows = [np.nonzero((img == STAGE_COLORS[1]).all(-1).any(0))[0] for _ in range(1)]
    assert len(rows[0]) > 100  # the longest decoder bar spans a good part of the width
    with pytest.raises(ValueError, match="finite"):
        stacked_bars([("x", {"decoder": float("nan")})], tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


def test_bench_writes_json_markdown_and_chart_named_by_host_backend_and_precision(toy_bundles, tmp_path, capsys):
    out = tmp_path / "bench"
    assert main(["bench", str(toy_bundles["onnx"]), "--runs", "3", "--warmup", "1", "--frames", "6", "--n-images",
                 "2", "--threads", "2", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "end to end" in text and "overhead" in text
    files = sorted(p.name for p in out.iterdir())
    assert len(files) == 3 and all(f.startswith("bench_") and "_onnxruntime_fp32" in f for f in files)
    report = json.loads(next(out.glob("*.json")).read_text())
    lat = report["latency"]
    assert lat["e2e"]["p50"] <= lat["e2e"]["p90"] <= lat["e2e"]["p99"] and lat["overhead"] >= 0
    assert report["throughput"]["pipelined_fps"] > 0 and report["bundle"]["precision"] == "fp32"
    assert main(["bench", str(toy_bundles["onnx"]), "--data", str(tmp_path / "none.json"), "--runs", "1",
                 "--frames", "2", "--n-images", "1", "--out", str(out)]) == 2
    assert "no such annotation file" in capsys.readouterr().err


def test_an_unreadable_file_is_skipped_and_results_never_mix_or_vanish(toy_bundles, frames_dir, tmp_path, capsys):
    """One broken file of a folder is skipped and listed (it stopped the run and lost the JSON); an --out with
    an earlier run's results is refused without --overwrite, and replaced whole with it; a second run on the
    same --out while one is writing is refused."""
    import shutil

    folder = tmp_path / "frames"
    shutil.copytree(frames_dir, folder)
    (folder / "broken.png").write_bytes(b"\x89PNG not really")
    out = tmp_path / "out"
    args = ["segment", str(toy_bundles["onnx"]), str(folder), "--out", str(out), "--threshold", "0", "--top-k", "1",
            "--quiet"]
    with pytest.warns(UserWarning, match="broken.png"):
        assert main(args) == 0
    assert "skipped 1 unreadable file" in capsys.readouterr().err
    coco = json.loads((out / "predictions.json").read_text())
    assert len(coco["images"]) == 2 and coco["info"]["complete"] is True
    assert [s["file"] for s in coco["info"]["skipped"]] == ["broken.png"]

    (folder / "view 1.png").unlink()  # the second run sees one frame: no stale overlay may survive
    assert main(args) == 2
    assert "earlier run" in capsys.readouterr().err
    assert len(json.loads((out / "predictions.json").read_text())["images"]) == 2  # untouched
    (out / "overlays" / "keep.txt").write_text("not an overlay")
    with pytest.warns(UserWarning):
        assert main([*args, "--overwrite"]) == 0
    assert sorted(p.name for p in (out / "overlays").iterdir()) == ["keep.txt", "view_0.png"]
    assert len(json.loads((out / "predictions.json").read_text())["images"]) == 1

    (out / ".sam3edge-segment.lock").write_text("")  # a run in progress
    assert main([*args, "--overwrite"]) == 2
    assert "another `sam3edge segment` is writing" in capsys.readouterr().err


def test_a_run_stopped_by_an_error_keeps_every_finished_frame(toy_bundles, frames_dir, tmp_path, monkeypatch):
    import sam3edge.runtime.overlay as overlay
    from sam3edge.runtime.segment import segment_source
    from sam3edge.runtime.segmenter import Segmenter

    seg = Segmenter.load(toy_bundles["onnx"], threads=1)
    real_save, calls = overlay.save_overlay, []

    def overlay_then_fail(path, image, inst):  # the disk fills up while the second frame's overlay is written
        calls.append(path)
        if len(calls) == 2:
            raise OSError("No space left on device")
        real_save(path, image, inst)

    monkeypatch.setattr(overlay, "save_overlay", overlay_then_fail)
    with pytest.raises(OSError, match="No space left"):
        segment_source(seg, frames_dir, tmp_path / "o", score_threshold=0.0, progress=False)
    coco = json.loads((tmp_path / "o" / "predictions.json").read_text())
    assert coco["info"]["complete"] is False and len(coco["images"]) == 1
    lines = (tmp_path / "o" / "predictions.jsonl").read_text().splitlines()
    assert [json.loads(x)["image"] for x in lines] == coco["images"]
    assert not (tmp_path / "o" / ".sam3edge-segment.lock").exists()


def test_a_ctrl_c_while_a_frame_is_being_written_lands_between_frames(toy_bundles, tmp_path, monkeypatch):
    """The signal arrives in the middle of the third frame's writes (CI once caught a SIGTERM between the COCO
    list and the lines file): the frame is finished in both or in neither, and the run stops right after it."""
    import signal

    import sam3edge.runtime.segment as segment
    from sam3edge.runtime.segmenter import Segmenter

    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(6):
        Image.fromarray(np.full((40, 56, 3), 40 * i, np.uint8)).save(frames / f"f{i}.png")
    seg = Segmenter.load(toy_bundles["onnx"], threads=1)
    real_json, calls = segment.json, []

    class Json:  # json.dumps of a frame's line record is inside the frame's writes
        loads = staticmethod(real_json.loads)

        @staticmethod
        def dumps(obj, **kw):
            if "image" in obj:
                calls.append(obj["image"]["id"])
                if len(calls) == 3:
                    signal.raise_signal(signal.SIGINT)
            return real_json.dumps(obj, **kw)

    monkeypatch.setattr(segment, "json", Json)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # Python's own, whatever ran before
    try:
        with pytest.raises(KeyboardInterrupt):
            segment.segment_source(seg, frames, tmp_path / "o", score_threshold=0.0, progress=False, overlays=False)
    finally:
        signal.signal(signal.SIGINT, previous)
    coco = json.loads((tmp_path / "o" / "predictions.json").read_text())
    records = [json.loads(x) for x in (tmp_path / "o" / "predictions.jsonl").read_text().splitlines()]
    assert coco["info"]["complete"] is False
    assert [r["image"] for r in records] == coco["images"] and [i["id"] for i in coco["images"]] == [1, 2, 3]
    assert [a["id"] for a in coco["annotations"]] == list(range(1, len(coco["annotations"]) + 1))
    assert [a["image_id"] for a in coco["annotations"]] == [a["image_id"] for r in records for a in r["annotations"]]


@pytest.mark.parametrize("how", ["SIGTERM", "SIGINT", "SIGKILL"])
def test_killing_a_running_segment_keeps_every_finished_frame(toy_bundles, tmp_path, how):
    """A video run stopped from outside: SIGTERM / SIGINT unwind (exit 143 / 130) and write the COCO JSON of every
    finished frame; even SIGKILL leaves predictions.jsonl with one valid line per finished frame."""
    import signal
    import subprocess
    import sys
    import time

    cv2 = pytest.importorskip("cv2")
    video = tmp_path / "long.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 30, (96, 64))
    for i in range(3000):
        frame = np.full((64, 96, 3), (i * 7) % 256, np.uint8)
        frame[20:40, (i % 70):(i % 70) + 20] = (30, 30, 230)
        writer.write(frame)
    writer.release()
    out = tmp_path / "o"
    proc = subprocess.Popen([sys.executable, "-m", "sam3edge.cli", "segment", str(toy_bundles["onnx"]), str(video),
                             "--out", str(out), "--no-overlays", "--quiet", "--threshold", "0", "--threads", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = out / "predictions.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and \
            (not lines.exists() or lines.read_text().count("\n") < 5):
        time.sleep(0.05)
    assert proc.poll() is None, f"the run ended before it was stopped: {proc.communicate()}"
    proc.send_signal(getattr(signal, how))
    _, err = proc.communicate(timeout=60)
    context = f"{how}: exit {proc.returncode}; stderr ends {err[-1500:]!r}"  # a failure here says how the run ended
    records = [json.loads(x) for x in lines.read_text().splitlines()]
    assert len(records) >= 5 and [r["image"]["frame_index"] for r in records] == list(range(len(records))), context
    assert all(r["ms"] > 0 and isinstance(r["annotations"], list) for r in records), context
    if how == "SIGKILL":
        assert proc.returncode == -signal.SIGKILL
        return
    assert proc.returncode == {"SIGTERM": 143, "SIGINT": 130}[how], context
    assert ("terminated" if how == "SIGTERM" else "interrupted") in err
    coco = json.loads((out / "predictions.json").read_text())
    assert coco["info"]["complete"] is False
    assert coco["images"] == [r["image"] for r in records] and len(coco["images"]) < 3000
    assert [a["image_id"] for a in coco["annotations"]] == [a["image_id"] for r in records for a in r["annotations"]]
    assert not (out / ".sam3edge-segment.lock").exists()


def test_segment_line_arguments_are_refused_before_the_bundle_loads(tmp_path, capsys):
    missing = str(tmp_path / "missing.sam3edge")  # never opened: the arguments are refused first
    assert main(["segment", missing, "x.mp4", "--out", str(tmp_path / "o"), "--track", "--line", "1,2,3"]) == 2
    assert "X0,Y0,X1,Y1" in capsys.readouterr().err
    assert main(["segment", missing, "x.mp4", "--out", str(tmp_path / "o"), "--track", "--line", "5,5,5,5"]) == 2
    assert "two different points" in capsys.readouterr().err
    assert main(["segment", missing, "x.mp4", "--out", str(tmp_path / "o"), "--line", "0,0,10,10"]) == 2
    assert "add --track" in capsys.readouterr().err
    assert main(["segment", missing, "x.mp4", "--out", str(tmp_path / "o"), "--exclusive", "a,b"]) == 2
    assert "add --track" in capsys.readouterr().err
    assert main(["segment", missing, "x.mp4", "--out", str(tmp_path / "o"), "--zone", "0,0,9,0,9,9"]) == 2
    assert "add --track" in capsys.readouterr().err
    for bad in ("0,0,9,0", "0,0,9,0,9", "0,0,1,1,2,2", "a,b,c,d,e,f"):
        assert main(["segment", missing, "x.mp4", "--out", str(tmp_path / "o"), "--track", "--zone", bad]) == 2
        assert "zone" in capsys.readouterr().err
    for bad in ("ripe apple", "a,,b", "a,a"):
        assert main(["segment", missing, "x.mp4", "--out", str(tmp_path / "o"), "--track", "--exclusive", bad]) == 2
        assert "two or more different" in capsys.readouterr().err
