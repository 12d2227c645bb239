"""Device profiles: data files that validate, clear errors for bad ones, host detection, export --profile."""

from __future__ import annotations

import json

import pytest

from sam3edge.devices.host import Host, can_export, can_run, detect
from sam3edge.devices.profiles import get_profile, list_profiles, load_profile_file

REQUIRED_PROFILES = {"jetson-orin-nano", "jetson-orin-nx", "jetson-agx-orin", "intel-cpu", "intel-gpu", "intel-npu",
                     "apple-m", "apple-iphone", "x86-cpu", "nvidia-gpu"}


def _profile_json(tmp_path, **changes):
    data = get_profile("x86-cpu").to_json()
    data.pop("source")
    data.update(changes)
    path = tmp_path / f"{data['name']}.json"
    path.write_text(json.dumps(data))
    return path


def test_every_required_device_has_a_valid_profile_naming_backend_precision_size_and_budget():
    profiles = list_profiles()
    assert REQUIRED_PROFILES <= set(profiles)
    for p in profiles.values():
        assert p.precision in p.precisions and p.input_size % 32 == 0 and p.memory_budget_mb > 0
        assert p.runtime["backend"] in ("onnxruntime", "openvino", "coreml", "tensorrt")
    assert profiles["jetson-orin-nx"].backend_options["dla_core"] == 0  # the NX has DLA cores; the Nano has none
    assert profiles["jetson-orin-nano"].backend_options["dla_core"] is None
    assert profiles["intel-npu"].runtime["device"] == "NPU" and profiles["apple-iphone"].target == "coreml"


def test_an_unknown_profile_error_lists_the_profiles():
    with pytest.raises(ValueError, match="unknown device profile 'jetson-tx1'; profiles: apple-iphone, apple-m, "):
        get_profile("jetson-tx1")


def test_a_users_profile_file_loads_and_bad_ones_name_file_and_field(tmp_path):
    assert get_profile(str(_profile_json(tmp_path, name="my-box"))).name == "my-box"
    with pytest.raises(ValueError, match=r"bad\.json: precision 'int4' is not in its precisions"):
        path = tmp_path / "bad.json"
        path.write_text(json.dumps(json.loads(_profile_json(tmp_path).read_text()) | {"precision": "int4"}))
        load_profile_file(path)
    with pytest.raises(ValueError, match="lacks field.*memory_budget_mb"):
        data = json.loads(_profile_json(tmp_path).read_text())
        del data["memory_budget_mb"]
        (tmp_path / "nobudget.json").write_text(json.dumps(data))
        load_profile_file(tmp_path / "nobudget.json")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match="broken.json is not valid JSON"):
        get_profile(str(tmp_path / "broken.json"))
    with pytest.raises(FileNotFoundError, match="missing.json does not exist"):
        get_profile(str(tmp_path / "missing.json"))


def test_this_host_is_detected_and_each_profile_says_why_it_cannot_run_here():
    host = detect()
    assert host.cores >= 1 and "CPUExecutionProvider" in host.ort_providers
    profiles = list_profiles()
    assert can_run(profiles["x86-cpu"], host) == (True, "yes")
    ok, why = can_run(profiles["apple-iphone"], host)
    assert not ok and "iOS app" in why
    jetson = Host(system="Linux", machine="aarch64", cpu="ARMv8", cores=8, ort_providers=["CPUExecutionProvider"],
                  tensorrt="10.3.0", cuda_devices=1, jetson="NVIDIA Jetson Orin NX Engineering Reference Developer Kit",
                  export_packages={"torch": True, "onnx": True})
    assert can_run(profiles["jetson-orin-nx"], jetson) == (True, "yes")
    ok, why = can_run(profiles["jetson-agx-orin"], jetson)
    assert not ok and "not AGX Orin" in why
    ok, why = can_run(profiles["intel-npu"], jetson)
    assert not ok and "OpenVINO is not installed" in why
    ok, why = can_export(profiles["intel-cpu"], Host(system="Linux", machine="x86_64", cpu="x", cores=2,
                                                     export_packages={"torch": True}))
    assert not ok and "onnx, openvino" in why and "nncf" in why


def test_cli_devices_lists_profiles_and_host_as_json(capsys):
    from sam3edge.cli import main

    assert main(["devices", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    rows = {r["profile"]: r for r in out["profiles"]}
    assert REQUIRED_PROFILES <= set(rows) and rows["x86-cpu"]["run_here"] is True
    assert out["host"]["cores"] >= 1
    assert main(["devices"]) == 0
    text = capsys.readouterr().out
    assert "jetson-orin-nano" in text and "run here" in text


def test_export_for_a_profile_records_it_and_enforces_its_memory_budget(toy_student_dir, scenes, tmp_path):
    from sam3edge.export.bundle import export_bundle

    tight = _profile_json(tmp_path, name="tiny-mcu", precision="fp32", memory_budget_mb=1, input_size=128)
    with pytest.raises(ValueError, match="over device profile 'tiny-mcu'.s memory budget of 1 MB"):
        export_bundle(toy_student_dir, tmp_path / "b.sam3edge", profile=str(tight), calib=scenes, n_verify=2,
                      progress=False)
    assert not (tmp_path / "b.sam3edge").exists()
    m = export_bundle(toy_student_dir, tmp_path / "b.sam3edge", profile=str(tight), calib=scenes, n_verify=2,
                      progress=False, force=True)
    assert m["target"] == "onnx" and m["precision"] == "fp32"  # the profile's
    assert m["device_profile"]["name"] == "tiny-mcu" and m["device_profile"]["input_size_matches"] is True
    assert m["verification"]["forced"] and "memory budget" in m["verification"]["failed"][0]
    # everything else verified: the only failure is the budget
    assert len(m["verification"]["failed"]) == 1 and m["verification"]["recall"] == 1.0


def test_export_refuses_a_target_or_precision_the_profile_does_not_run(toy_student_dir, scenes, tmp_path):
    from sam3edge.export.bundle import export_bundle

    with pytest.raises(ValueError, match="'intel-gpu' runs precisions fp16, int8; got 'fp32'"):
        export_bundle(toy_student_dir, tmp_path / "x.sam3edge", precision="fp32", profile="intel-gpu", calib=scenes)
    with pytest.raises(ValueError, match="exports to onnx, not 'openvino'"):
        export_bundle(toy_student_dir, tmp_path / "x.sam3edge", target="openvino", profile="x86-cpu", calib=scenes)
    with pytest.raises(ValueError, match="unknown device profile 'pi5'"):
        export_bundle(toy_student_dir, tmp_path / "x.sam3edge", profile="pi5", calib=scenes)
    assert not (tmp_path / "x.sam3edge").exists()
