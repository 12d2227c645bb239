"""The `sam3edge` command line: only working verbs, readable errors, real outputs."""

from __future__ import annotations

import json
import subprocess
import sys

from sam3edge.cli import build_parser, main


def test_help_lists_exactly_the_working_verbs():
    sub = next(a for a in build_parser()._actions if a.dest == "verb")
    assert sorted(sub.choices) == ["bench", "build-engines", "concepts", "data", "devices", "distill", "eval",
                                   "export", "quickstart", "segment", "students"]
    out = subprocess.run([sys.executable, "-m", "sam3edge.cli", "--help"], capture_output=True, text=True, check=True)
    assert "data" in out.stdout and "eval" in out.stdout


def test_data_orchard_writes_an_sa_co_dataset(tmp_path, capsys):
    assert main(["data", "orchard", "--out", str(tmp_path / "o"), "--n", "2", "--seed", "4", "--size", "96",
                 "--quiet"]) == 0
    data = json.loads((tmp_path / "o" / "annotations.json").read_text())
    assert len({im["file_name"] for im in data["images"]}) == 2
    assert all((tmp_path / "o" / im["file_name"]).is_file() for im in data["images"])


def test_eval_prints_cgf1_and_writes_json(tiny_sam3_dir, orchard_small, tmp_path, capsys):
    out_json = tmp_path / "report.json"
    assert main(["eval", "--model", str(tiny_sam3_dir), "--data", str(orchard_small), "--json", str(out_json),
                 "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "cgF1" in printed or "cgf1" in printed.lower()
    report = json.loads(out_json.read_text())
    n_pairs = len(json.loads(orchard_small.read_text())["images"])
    assert report["aggregate"]["pairs"] == n_pairs
    assert -1.0 <= report["aggregate"]["cgf1"] <= 1.0


def test_eval_errors_name_the_bad_input_and_exit_2(tmp_path, orchard_small, tiny_sam3_dir, capsys):
    assert main(["eval", "--model", str(tmp_path / "missing"), "--data", str(orchard_small)]) == 2
    assert "missing" in capsys.readouterr().err
    assert main(["eval", "--model", str(tiny_sam3_dir), "--data", str(tmp_path / "none.json")]) == 2
    assert "none.json" in capsys.readouterr().err


def test_os_errors_missing_backends_and_ctrl_c_end_in_a_message_not_a_traceback(tmp_path, monkeypatch, capsys):
    """A read-only --out (as root chmod does not stop writes, so the error is raised where the write happens), a
    backend that is not installed and Ctrl-C each give one line naming the problem and an exit status (issue 15)."""
    import sam3edge.data.orchard_dataset as od

    def fail(exc):
        def raiser(*args, **kwargs):
            raise exc
        return raiser

    cases = [(PermissionError(13, "Permission denied", "/readonly/out"), 2, "/readonly/out"),
             (OSError(28, "No space left on device", str(tmp_path / "o")), 2, "No space left on device"),
             (ImportError("TensorRT is not installed: pip install sam3edge[tensorrt]"), 2, "sam3edge[tensorrt]"),
             (KeyboardInterrupt(), 130, "interrupted")]
    for exc, code, words in cases:
        monkeypatch.setattr(od, "write_orchard_dataset", fail(exc))
        assert main(["data", "orchard", "--out", str(tmp_path / "o"), "--n", "1", "--quiet"]) == code, exc
        err = capsys.readouterr().err
        assert words in err and "Traceback" not in err and err.startswith(("sam3edge data", "\nsam3edge data"))


def test_bad_distill_numbers_are_refused_before_torch_loads(tmp_path):
    code = ("import sys; from sam3edge.cli import main; "
            f"rc = main(['distill', '--teacher', 'orchard-toy', '--student', 'toy', '--images', {str(tmp_path)!r}, "
            "'--concepts', 'apple', '--out', 'x', '--threads', '100000']); print('TORCH', 'torch' in sys.modules); "
            "sys.exit(rc)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "threads=100000" in out.stderr and "TORCH False" in out.stdout


def test_the_core_install_leaves_the_backend_to_an_extra():
    """onnxruntime and onnxruntime-gpu install the same module: the core must not pull either (issue 15), and the
    device's one-command installs ('.[cpu]', '.[gpu]', '.[openvino]') must each bring one backend."""
    from pathlib import Path

    import tomllib

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    names = [d.split(">")[0].split("<")[0].split("=")[0].strip() for d in project["dependencies"]]
    assert not any(n.startswith(("onnxruntime", "openvino", "torch")) for n in names), names
    extras = project["optional-dependencies"]
    assert [d.split(">")[0] for d in extras["cpu"]] == ["onnxruntime"]
    assert [d.split(">")[0] for d in extras["gpu"]] == ["onnxruntime-gpu"]
    assert [d.split(">")[0] for d in extras["openvino"]] == ["openvino"]
