"""Tracking and counting: identities through motion, occlusion and misses; counters; the orchard row's ground truth."""

from __future__ import annotations

import numpy as np
import pytest

from sam3edge.runtime.instances import Instances
from sam3edge.runtime.tracking import (
    ByteTracker,
    LineCounter,
    TrackCounter,
    TrackerConfig,
    ZoneCounter,
    box_iou,
    create_tracker,
)


def _frame(dets: list[tuple[str, float, list[float]]], size=(240, 320)) -> Instances:
    """Instances from (phrase, score, xyxy) triples (no masks)."""
    phrases = [d[0] for d in dets]
    return Instances(phrases, [0] * len(dets), [d[1] for d in dets], np.asarray([d[2] for d in dets], np.float32)
                     .reshape(-1, 4), None, {}, size)


def _ids_by_truth(tracker, frames, truth_ids):
    """Run ``tracker`` over frames; map each truth id to the track ids it got (via the box it was given)."""
    got: dict[int, set[int]] = {}
    for inst, ids in zip(frames, truth_ids):
        out = tracker.update(inst)
        for box, tid in zip(out.boxes.tolist(), out.track_ids.tolist()):
            k = next(i for i, b in zip(ids, inst.boxes.tolist()) if b == box)
            got.setdefault(k, set()).add(tid)
    return got


def test_two_crossing_objects_keep_their_identities_through_a_miss_and_a_low_score_frame():
    frames, truth = [], []
    for t in range(40):
        a = [10 + 4 * t, 50, 40 + 4 * t, 80]  # moving right
        b = [200 - 3 * t, 120, 230 - 3 * t, 150]  # moving left, below
        dets = [("ripe apple", 0.9, a), ("ripe apple", 0.85, b)]
        ids = [1, 2]
        if 10 <= t < 14:  # b hidden for four frames: no detection at all
            dets, ids = dets[:1], ids[:1]
        if t == 20:  # a half hidden: a low score, still the same apple
            dets[0] = ("ripe apple", 0.2, a)
        frames.append(_frame(dets))
        truth.append(ids)
    got = _ids_by_truth(ByteTracker(), frames, truth)
    assert len(got[1]) == 1 and len(got[2]) == 1 and got[1] != got[2]


def test_a_one_frame_false_positive_never_gets_an_id_and_low_scores_start_nothing():
    tracker = ByteTracker(TrackerConfig(min_hits=2))
    out = tracker.update(_frame([("leaf", 0.95, [0, 0, 20, 20]), ("leaf", 0.3, [100, 100, 130, 130])]))
    assert len(out) == 0  # tentative: not reported yet
    out = tracker.update(_frame([("leaf", 0.3, [100, 100, 130, 130])]))  # the first one vanished
    assert len(out) == 0 and tracker.live_tracks == 0


def test_concepts_are_tracked_apart_with_unique_ids_and_counted():
    tracker, counter = create_tracker(min_hits=1), TrackCounter()
    for t in range(5):
        box = [10 + t, 10, 40 + t, 40]
        out = tracker.update(_frame([("ripe apple", 0.9, box), ("leaf", 0.9, box)]))
        counter.update(out)
        assert len(set(out.track_ids.tolist())) == 2
    assert counter.counts == {"ripe apple": 1, "leaf": 1}


def test_a_track_ends_after_max_missed_frames_and_a_return_is_a_new_object():
    tracker = ByteTracker(TrackerConfig(min_hits=1, max_missed=3))
    first = tracker.update(_frame([("apple", 0.9, [10, 10, 40, 40])])).track_ids[0]
    for _ in range(4):
        tracker.update(_frame([]))
    again = tracker.update(_frame([("apple", 0.9, [10, 10, 40, 40])])).track_ids[0]
    assert again != first


def test_the_motion_model_keeps_a_fast_object_matched_where_its_last_box_would_not():
    """A 30 px box that starts slowly, then moves 24 px a frame: consecutive boxes overlap at IoU 0.11, below the
    first association's 0.2, so only the constant-velocity prediction keeps the identity."""
    xs = [0, 5, 10, 34, 58, 82, 106, 130, 154]
    dets = [_frame([("apple", 0.9, [x, 10, x + 30, 40])]) for x in xs]
    assert box_iou([[34, 10, 64, 40]], [[58, 10, 88, 40]])[0, 0] < TrackerConfig().match_iou
    tracker = ByteTracker(TrackerConfig(min_hits=1))
    ids = [tracker.update(d).track_ids.tolist() for d in dets]
    assert ids == [[1]] * len(xs)


def test_tracker_arguments_are_checked():
    for bad in ({"high_score": 1.5}, {"low_score": 0.7, "high_score": 0.5}, {"max_missed": -1}, {"min_hits": 0},
                {"match_iou": float("nan")}, {"min_hits": True}):
        with pytest.raises(ValueError, match="TrackerConfig"):
            TrackerConfig(**bad)
    with pytest.raises(ValueError, match="unknown tracker"):
        create_tracker("deepsort")
    with pytest.raises(TypeError, match="Instances"):
        ByteTracker().update([])
    with pytest.raises(ValueError, match="track_ids"):
        TrackCounter().update(_frame([("a", 0.9, [0, 0, 1, 1])]))
    with pytest.raises(ValueError, match="same point"):
        LineCounter((5, 5), (5, 5))


def test_line_counter_counts_each_crossing_once_per_direction_and_only_through_the_segment():
    line = LineCounter((100, 0), (100, 100))  # vertical, pointing down: "in" is right -> left? see below
    tracker = ByteTracker(TrackerConfig(min_hits=1))
    for t in range(30):  # one object left -> right at y 50 (through the segment), one at y 150 (beside it)
        out = tracker.update(_frame([("apple", 0.9, [10 * t, 40, 10 * t + 20, 60]),
                                     ("apple", 0.9, [10 * t, 140, 10 * t + 20, 160])]))
        line.update(out)
    # direction (0, +1) in image coordinates; its right-hand side is -x: moving to +x goes right -> left = "out"
    assert line.counts == {"apple": {"in": 0, "out": 1}}


def test_track_ids_survive_select_and_json():
    inst = Instances(["a", "b"], [0, 1], [0.9, 0.8], [[0, 0, 2, 2], [1, 1, 3, 3]], None, {}, (4, 4), [7, 9])
    assert inst.select([1]).track_ids.tolist() == [9]
    assert Instances.from_json(inst.to_json()).track_ids.tolist() == [7, 9]
    assert [c["track_id"] for c in inst.to_coco(1)] == [7, 9]
    with pytest.raises(ValueError, match="track_ids"):
        Instances(["a"], [0], [0.9], [[0, 0, 1, 1]], None, {}, (2, 2), [1, 2])


def test_orchard_row_ids_are_consistent_and_the_tracker_on_ground_truth_keeps_them():
    """The row's ground truth: every id keeps its category; boxes move with the camera; ByteTrack fed the ground
    truth boxes gives each apple one identity (IDF1 of the tracker alone)."""
    from sam3edge.data.orchard_video import APPLE_IDS, OrchardRow

    row = OrchardRow(seed=11, frames=160, speed=3.0)
    categories, frames, truth = {}, [], []
    for t in range(len(row)):
        image, objects = row.frame(t)
        assert image.shape == (240, 320, 3) and image.dtype == np.uint8
        for o in objects:
            assert categories.setdefault(o["id"], o["category_id"]) == o["category_id"]
            x0, y0, x1, y1 = o["box"]
            assert 0 <= x0 < x1 <= 320 and 0 <= y0 < y1 <= 240
        apples = [o for o in objects if o["category_id"] in APPLE_IDS]
        frames.append(_frame([(str(o["category_id"]), 0.9, o["box"]) for o in apples]))
        truth.append([o["id"] for o in apples])
    assert row.unique_ids() == len({k for ids in truth for k in ids}) >= 3
    got = _ids_by_truth(ByteTracker(), frames, truth)
    switches = sum(len(v) - 1 for v in got.values())
    assert switches <= 1, got
    with pytest.raises(ValueError, match="speed"):
        OrchardRow(seed=1, frames=10, speed=500)
    with pytest.raises(IndexError):
        row.frame(len(row))


def test_data_orchard_video_writes_a_video_and_mot_ground_truth(tmp_path, capsys):
    import json

    from sam3edge.cli import main

    cv2 = pytest.importorskip("cv2")
    out = tmp_path / "row"
    assert main(["data", "orchard-video", "--out", str(out), "--frames", "24", "--seed", "3", "--quiet"]) == 0
    info = json.loads((out / "gt.json").read_text())
    cap = cv2.VideoCapture(str(out / info["video"]))
    n = 0
    while cap.read()[0]:
        n += 1
    assert n == 24 and info["frames"] == 24
    rows = [line.split(",") for line in (out / "gt.txt").read_text().splitlines()]
    assert rows and {int(r[0]) for r in rows} <= set(range(1, 25))
    per_cat: dict = {}
    for r in rows:
        per_cat.setdefault(info["categories"][r[7]], set()).add(int(r[1]))
    assert {k: len(v) for k, v in per_cat.items()} == info["unique"]
    assert main(["data", "orchard-video", "--out", str(out), "--frames", "5", "--quiet"]) == 2  # never replaced
    assert "already exists" in capsys.readouterr().err


def test_greedy_assignment_without_scipy_gives_the_hungarian_pairs_on_separated_objects(monkeypatch):
    import sam3edge.runtime.tracking as tracking

    rng = np.random.default_rng(3)
    frames = []
    for t in range(30):
        dets = [("apple", 0.9, [60 * k + 2 * t, 10 + 40 * (k % 2), 60 * k + 2 * t + 30, 40 + 40 * (k % 2)])
                for k in range(5)] + [("leaf", float(rng.uniform(0.3, 1.0)), [200, 150, 230, 180])]
        frames.append(_frame(dets))
    tracker = ByteTracker()
    hungarian = [tracker.update(f).track_ids.tolist() for f in frames]
    monkeypatch.setattr(tracking, "_LSA", [None])
    tracker = ByteTracker()
    greedy = [tracker.update(f).track_ids.tolist() for f in frames]
    assert greedy == hungarian and len({i for ids in hungarian for i in ids}) == 6
    # competing candidates: the solver (or greedy) takes the better pair, never two tracks for one box
    iou = np.array([[0.9, 0.3], [0.8, 0.0]])
    rows, cols = tracking._match(*np.nonzero(iou >= 0.2), iou[iou >= 0.2])  # the candidate pairs at IoU >= 0.2
    assert sorted(zip(rows.tolist(), cols.tolist())) in ([(0, 0)], [(0, 1), (1, 0)])


def test_duplicate_boxes_on_one_object_get_one_identity():
    tracker = ByteTracker(TrackerConfig(min_hits=1))
    out = tracker.update(_frame([("apple", 0.9, [10, 10, 40, 40]), ("apple", 0.8, [11, 11, 40, 41]),
                                 ("leaf", 0.8, [11, 11, 40, 41])]))
    assert out.phrases == ["apple", "leaf"] and out.scores.tolist() == pytest.approx([0.9, 0.8])
    off = ByteTracker(TrackerConfig(min_hits=1, nms_iou=1.0)).update(
        _frame([("apple", 0.9, [10, 10, 40, 40]), ("apple", 0.8, [11, 11, 40, 41])]))
    assert len(off) == 2


def test_a_tracker_and_its_counters_shared_by_threads_stay_consistent():
    """Eight threads share one tracker and one pair of counters. Tracker: each thread feeds its own still object
    (to the tracker every call is a frame, so each concept misses the others' frames): one identity per concept,
    unique across threads. Counters: each thread's object, with its own track id, moves across the line once."""
    import threading

    tracker = ByteTracker(TrackerConfig(min_hits=1, max_missed=10_000))
    counter, line = TrackCounter(min_frames=1), LineCounter((150, 0), (150, 1000))
    ids: dict[str, set] = {}

    def run(k: int):
        phrase = f"concept {k}"
        for t in range(60):
            out = tracker.update(_frame([(phrase, 0.9, [100, 40 * k, 120, 40 * k + 20])], (1000, 1000)))
            ids.setdefault(phrase, set()).update(out.track_ids.tolist())
            moving = _frame([(phrase, 0.9, [120 + t, 40 * k, 140 + t, 40 * k + 20])], (1000, 1000))
            moving.track_ids = np.asarray([1000 + k])
            counter.update(moving)
            line.update(moving)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert all(len(v) == 1 for v in ids.values()) and len(set.union(*ids.values())) == 8
    assert counter.counts == {f"concept {k}": 1 for k in range(8)}
    assert line.counts == {f"concept {k}": {"in": 0, "out": 1} for k in range(8)}


def test_an_exclusive_group_keeps_one_identity_across_its_phrases_and_counts_it_once_under_the_likeliest():
    """An apple the detector calls "ripe" in most frames and "bruised" in others (sometimes both at once, on one box)
    is one object; declared exclusive, it keeps one identity and is counted once, as ripe. A leaf on the same spot
    stays its own object. Without the group: one identity per phrase, each counted."""
    group = (("ripe apple", "bruised apple"),)
    frames = []
    for t in range(40):
        box = [10 + 3 * t, 50, 40 + 3 * t, 80]
        dets = [("bruised apple" if t % 8 >= 5 else "ripe apple", 0.8, box), ("leaf", 0.9, box)]
        if t % 4 == 1:
            dets.append(("bruised apple", 0.55, [b + 1 for b in box]))  # a weaker duplicate under the other phrase
        frames.append(_frame(dets))
    for exclusive, tracks, counted in ((group, 2, {"ripe apple": 1, "bruised apple": 0, "leaf": 1}),
                                       ((), 3, {"ripe apple": 1, "bruised apple": 1, "leaf": 1})):
        tracker, counter, ids = ByteTracker(TrackerConfig(exclusive=exclusive)), TrackCounter(), set()
        for inst in frames:
            out = tracker.update(inst)
            counter.update(out)
            ids |= set(out.track_ids.tolist())
        assert len(ids) == tracks, exclusive
        assert counter.counts == counted, exclusive
    with pytest.raises(ValueError, match="two or more"):
        TrackerConfig(exclusive=(("ripe apple",),))
    with pytest.raises(ValueError, match="more than one group"):
        TrackerConfig(exclusive=(("a", "b"), ("b", "c")))
    with pytest.raises(ValueError, match="list of phrase groups"):
        TrackerConfig(exclusive="a,b")


def _pan(frames: int, hidden: range, rng: np.random.Generator, speed: float = -3.0):
    """Seven apples on a static scene seen by a camera panning ``speed`` px per frame (boxes jitter by ~1.5 px);
    apple 0 is hidden (no detection) during ``hidden``. Returns (frames, truth ids per frame)."""
    starts = [(60 + 40 * k, 30 + 25 * (k % 3)) for k in range(7)]
    out, truth = [], []
    for t in range(frames):
        dets, ids = [], []
        for k, (x, y) in enumerate(starts):
            if k == 0 and t in hidden:
                continue
            x0 = x + 300 + speed * t
            box = [x0, y, x0 + 24, y + 24] + rng.normal(0, 1.5, 4)
            if 0 <= box[0] and box[2] <= 640:
                dets.append(("apple", 0.9, box.tolist()))
                ids.append(k)
        out.append(_frame(dets, (240, 640)))
        truth.append(ids)
    return out, truth


def test_an_unseen_track_moves_with_the_camera_and_is_found_after_a_long_occlusion():
    """A camera pans over seven apples; one is hidden for 45 frames (135 px of travel). Its own velocity, estimated
    from jittery boxes, drifts; the motion the other tracks share does not: with camera motion on, the apple keeps
    its identity, and the estimate is the pan's."""
    frames, truth = _pan(120, range(30, 75), np.random.default_rng(3))
    tracker = ByteTracker(TrackerConfig(max_missed=60))
    got = _ids_by_truth(tracker, frames, truth)
    assert len(got[0]) == 1 and all(len(v) == 1 for v in got.values())
    assert tracker._camera == pytest.approx([-3.0, 0.0], abs=0.3)


def test_objects_moving_their_own_ways_give_no_camera_motion():
    tracker = ByteTracker()
    for t in range(20):  # three objects: right, left, down
        tracker.update(_frame([("a", 0.9, [10 + 4 * t, 10, 30 + 4 * t, 30]), ("a", 0.9, [300 - 4 * t, 100, 320 - 4 * t,
                                                                                      120]),
                               ("a", 0.9, [150, 10 + 4 * t, 170, 30 + 4 * t])], (480, 640)))
    assert tracker._camera is None


def test_an_object_entering_at_the_border_gets_its_velocity_from_the_edge_it_shows():
    """An apple sliding in from the right border at 3 px per frame: its box grows from the border, whose edge stands
    still; the velocity comes from the edge that is seen (a box on the border does not look slower than it is)."""
    tracker = ByteTracker(TrackerConfig(min_hits=1))
    for t in range(8):
        x0 = 320 - 3 * (t + 1)
        tracker.update(_frame([("apple", 0.9, [x0, 50, 320, 80])]))
    assert tracker._vel[0][[0, 2]] == pytest.approx([-3.0, -3.0])


def test_a_line_counter_forgets_tracks_unseen_for_1000_frames_and_keeps_counting():
    line = LineCounter((100, 0), (100, 100))
    for t in range(3000):  # a new identity every frame, each seen once: the counter must not keep them all
        inst = _frame([("apple", 0.9, [50, 40, 60, 50])])
        inst.track_ids = np.asarray([t])
        line.update(inst)
    assert len(line._tracks) <= 1000 + 256
    for x in (80, 120):  # an old identity crosses afterwards: still counted
        inst = _frame([("apple", 0.9, [x - 5, 40, x + 5, 50])])
        inst.track_ids = np.asarray([2999])
        line.update(inst)
    assert line.counts == {"apple": {"in": 0, "out": 1}}


def test_an_apple_coming_out_from_behind_a_leaf_in_part_matches_its_unseen_track():
    """Hidden for 20 frames, an apple comes back only in part (half its width, beside where its whole box would
    be): plain IoU with the predicted box is below the match threshold, the buffered IoU of a long-unseen track is
    not, so it keeps its identity; a track seen in the last frame is held to the plain IoU."""
    frames, truth = [], []
    for t in range(60):
        dets, ids = [("apple", 0.9, [100 + 40 * k, 60, 124 + 40 * k, 84]) for k in range(1, 4)], [1, 2, 3]
        if not 20 <= t < 40:
            box = [60.0, 150.0, 84.0, 174.0] if t < 20 else [80.0, 146.0, 92.0, 170.0]  # back: right half, shifted
            dets.append(("apple", 0.9, box))
            ids.append(0)
        frames.append(_frame(dets))
        truth.append(ids)
    assert box_iou([[60, 150, 84, 174]], [[80, 146, 92, 170]])[0, 0] < TrackerConfig().match_iou
    got = _ids_by_truth(ByteTracker(), frames, truth)
    assert len(got[0]) == 1
    assert len(_ids_by_truth(ByteTracker(TrackerConfig(buffer=0.0)), frames, truth)[0]) == 2


def test_a_zone_counts_objects_inside_entries_exits_and_distinct_objects_per_concept():
    """An L-shaped zone (concave: its notch is outside). Apple 1 walks right through the lower bar (enters, exits);
    apple 2 is born inside and stays (inside, unique, no entry); apple 3 comes from the right into the notch only
    (never inside); a leaf enters and stays."""
    zone = ZoneCounter([(100, 100), (300, 100), (300, 200), (200, 200), (200, 300), (100, 300)])  # notch: x > 200,
    tracker = ByteTracker(TrackerConfig(min_hits=1))                                             # y > 200
    for t in range(50):
        out = tracker.update(_frame([("apple", 0.9, [40 + 8 * t, 140, 60 + 8 * t, 160]),  # 1: y 150, x 50 -> 442
                                     ("apple", 0.9, [140, 240, 160, 260]),               # 2: still at (150, 250)
                                     ("apple", 0.9, [390 - 4 * t, 240, 410 - 4 * t, 260]),  # 3: x 400 -> 204
                                     ("leaf", 0.9, [40 + 4 * min(t, 25), 120, 60 + 4 * min(t, 25), 140])],
                                    (480, 640)))
        zone.update(out)
    assert zone.counts["apple"] == {"inside": 1, "entered": 1, "exited": 1, "unique": 2}, zone.counts
    assert zone.counts["leaf"] == {"inside": 1, "entered": 1, "exited": 0, "unique": 1}
    pts = np.array([[150, 150], [250, 150], [250, 250], [150, 250], [50, 50], [350, 150]], float)
    assert zone.contains(pts).tolist() == [True, True, False, True, False, False]
    for bad in ([(0, 0), (1, 1)], [(0, 0), (1, 1), (2, 2)], [(0, 0), (1, float("nan")), (2, 0)]):
        with pytest.raises(ValueError, match="zone"):
            ZoneCounter(bad)


def test_a_counted_identity_with_scores_of_zero_goes_to_the_phrase_it_had_most_often():
    counter = TrackCounter(min_frames=1)
    for phrase in ("a", "b", "b", "b"):
        inst = _frame([(phrase, 0.0, [0, 0, 10, 10])])
        inst.track_ids = np.asarray([7])
        counter.update(inst)
    assert counter.label(7) == "b" and counter.counts == {"a": 0, "b": 1}
