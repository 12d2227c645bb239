"""`kill -9` during teacher caching and during training, then run again: the run completes, nothing lost or doubled."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.slow


def _start(args: list[str]) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "sam3edge.cli", "distill", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 300) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if ready():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return
        if proc.poll() is not None:
            raise AssertionError("the run ended before it could be killed:\n" + proc.stdout.read()[-3000:])
        time.sleep(0.01)
    proc.kill()
    raise AssertionError("timed out waiting for the moment to kill")


def _steps(log: Path) -> list[int]:
    with log.open(newline="") as f:
        return [int(r["step"]) for r in csv.DictReader(f)]


def test_kill_during_cache_and_training_then_resume(toy_width_teacher, tmp_path):
    from sam3edge.data.orchard import render_scene, scene_rng
    from sam3edge.distill.cache import TeacherCache, item_path

    images = tmp_path / "images"
    images.mkdir()
    for i in range(150):
        Image.fromarray(render_scene(scene_rng(4, i), 112).image).save(images / f"s{i:04d}.png")
    run = tmp_path / "run"
    args = ["--teacher", str(toy_width_teacher), "--images", str(images), "--concepts", "ripe apple,leaf", "--student",
            "toy", "--input-size", "64", "--out", str(run), "--steps", "60", "--stage1-steps", "20", "--batch", "2",
            "--pairs", "2", "--threads", "1", "--quiet", "--no-init-heads", "--holdout", "0.02", "--device", "cpu"]

    # 1. killed while caching
    items = run / "cache" / "items"
    _kill_when(_start(args), lambda: items.is_dir() and sum(1 for _ in items.glob("*/*.safetensors")) >= 5)
    missing = TeacherCache(run / "cache").missing()
    assert 0 < len(missing) < 150  # killed part way: some items written, some not

    # 2. killed while training (stage 2 has logged and checkpointed)
    log2 = run / "stage2" / "log.csv"
    _kill_when(_start(args), lambda: log2.is_file() and len(log2.read_text().splitlines()) >= 4)
    assert TeacherCache(run / "cache").missing() == []

    # 3. run again: completes
    proc = _start(args)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    assert _steps(run / "stage1" / "log.csv") == list(range(10, 21, 10))
    assert _steps(log2) == list(range(10, 61, 10))  # every step logged once: nothing duplicated or lost
    assert (run / "student" / "config.json").is_file() and (run / "report.json").is_file()
    cache = TeacherCache(run / "cache")
    assert cache.missing() == [] and not list(items.glob("*/.*.tmp"))
    # the cache equals one built in a single uninterrupted go
    from sam3edge.distill.cache import build_cache
    from sam3edge.models.teacher import Sam3Teacher

    again = build_cache(Sam3Teacher.from_pretrained(toy_width_teacher), cache.spec.images[:3], cache.spec.phrases,
                        tmp_path / "again", feature_sizes=cache.spec.feature_sizes, mask_size=cache.spec.mask_size,
                        progress=False)
    for i in range(3):
        a, b = cache.item(i), again.item(i)
        for k in a:  # same teacher, same image; only the thread count may differ (last-bit rounding)
            np.testing.assert_allclose(a[k].float().numpy(), b[k].float().numpy(), rtol=1e-3, atol=1e-3)
    assert item_path(run / "cache", 0).is_file()
