"""The runtime examples of examples/ (README: Examples) run torch-free on a small bundle and refuse bad paths."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

from sam3edge.runtime.bundle import Bundle

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
# Run each example as a script with torch (and OpenCV / PyAV) unimportable: the runtime examples must not need them.
TORCH_BLOCKED = (
    "import runpy, sys\n"
    "for name in ('torch', 'cv2', 'av'): sys.modules[name] = None\n"
    "sys.argv = sys.argv[1:]\n"
    "runpy.run_path(sys.argv[0], run_name='__main__')\n"
)


def run_example(name: str, *args) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-c", TORCH_BLOCKED, str(EXAMPLES / name), *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=300)


def test_segment_image_writes_an_overlay_png_of_the_input_size(toy_bundles, scenes, tmp_path):
    image = sorted(scenes.glob("*.png"))[0]
    out = tmp_path / "overlay.png"
    proc = run_example("segment_image.py", toy_bundles["onnx"], image, "--concept", "ripe apple", "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert out.is_file()
    with Image.open(out) as picture, Image.open(image) as original:
        assert picture.format == "PNG"
        assert picture.size == original.size


def test_segment_image_names_a_missing_bundle(scenes, tmp_path):
    missing = tmp_path / "no-such.sam3edge"
    proc = run_example("segment_image.py", missing, sorted(scenes.glob("*.png"))[0], "--out", tmp_path / "o.png")
    assert proc.returncode != 0
    assert str(missing) in proc.stderr
    assert not (tmp_path / "o.png").exists()


def test_count_per_concept_prints_a_table_naming_every_concept(toy_bundles, scenes):
    concepts = Bundle.open(toy_bundles["openvino"]).concepts
    assert concepts
    proc = run_example("count_per_concept.py", toy_bundles["openvino"], scenes)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    header = lines[0]
    assert all(c in header for c in concepts), proc.stdout
    for png in scenes.glob("*.png"):  # one row per image, one count per concept
        row = next(line for line in lines if line.startswith(png.name))
        assert len(row.split()) == 1 + len(concepts)
        assert all(field.isdigit() for field in row.split()[1:])
    assert lines[-1].startswith("total")
