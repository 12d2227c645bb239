"""Data-parallel training under torchrun (gloo on CPU) equals one process with the same global batch."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("ddp_worker.py")
STEPS = 4


def _losses(run: Path) -> list[float]:
    with (run / "run" / "log.csv").open(newline="") as f:
        return [float(r["total"]) for r in csv.DictReader(f)]


def _run(cmd: list[str], cwd: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]


@pytest.mark.skipif(shutil.which("torchrun") is None and not Path(sys.executable).with_name("torchrun").exists(),
                    reason="torchrun is not installed with this Python")
def test_torchrun_two_ranks_match_one_process(tmp_path):
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    _run([sys.executable, str(WORKER), str(tmp_path / "one"), str(STEPS)], tmp_path)
    _run([torchrun, "--nproc_per_node", "2", "--master_port", "29517", str(WORKER), str(tmp_path / "two"),
          str(STEPS)], tmp_path)
    r0, r1 = (json.loads((tmp_path / "two" / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["world"] == r1["world"] == 2
    assert r0["sums"] == r1["sums"]  # DDP keeps the ranks' parameters identical, bit for bit
    one, two = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert len(one) == len(two) == STEPS
    for a, b in zip(one, two):
        assert abs(a - b) <= 1e-3 * abs(a) + 1e-4, (one, two)
    single = json.loads((tmp_path / "one" / "rank0.json").read_text())["sums"]
    worst = max(abs(single[k] - r0["sums"][k]) / (1e-3 + abs(single[k])) for k in single)
    assert worst < 1e-2  # same trajectory as one process, up to float summation order
    assert not (tmp_path / "two" / "run" / "checkpoints").exists() or all(
        p.name.startswith("step_") or p.name == "latest" for p in (tmp_path / "two" / "run" / "checkpoints").iterdir())
