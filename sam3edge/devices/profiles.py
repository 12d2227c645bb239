"""Device profiles: what to export for a device, as data files (``sam3edge/devices/profiles/*.json``).

A profile names the export target and precision that suit a device, the other precisions it can run,
the student input size it was sized for, the runtime backend (and its fallbacks), backend options
(TensorRT workspace / DLA core / optimisation-profile prompt counts, OpenVINO device and hints, Core ML
compute units and deployment target, onnxruntime providers) and a memory budget for the bundle's
graphs. ``sam3edge export --profile NAME`` takes target and precision from it and records the whole
profile in the bundle's manifest; a user's own profile is a JSON file of the same fields, passed by
path. Standard library only: the torch-free runtime reads profiles too.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from importlib.resources import files
from pathlib import Path

from sam3edge.runtime.names import PRECISIONS, TARGETS

BACKENDS = ("onnxruntime", "openvino", "coreml", "tensorrt")
REQUIRED = ("name", "description", "hardware", "target", "precision", "precisions", "input_size", "runtime",
            "backend_options", "memory_budget_mb")


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    description: str
    hardware: dict  # vendor, family (jetson, cpu, gpu, npu, mac, ios), accelerator, memory_gb, match (host model)
    target: str  # export target: onnx, openvino, coreml, tensorrt
    precision: str  # default precision of the export
    precisions: tuple[str, ...]  # every precision the device runs well
    input_size: int  # the student input size the device was sized for
    runtime: dict  # backend (+ device / providers / compute units) and ordered fallbacks "backend:device"
    backend_options: dict
    memory_budget_mb: int  # the bundle's graphs must fit in this
    notes: str = ""
    source: str = field(default="", compare=False)  # the file it came from

    def to_json(self) -> dict:
        d = asdict(self)
        d["precisions"] = list(self.precisions)
        return d


def _profile_dir() -> Path:
    return Path(str(files("sam3edge.devices"))) / "profiles"


def parse_profile(data: dict, source: str) -> DeviceProfile:
    """A :class:`DeviceProfile` from a JSON object, every field checked (errors name ``source`` and the field)."""
    if not isinstance(data, dict):
        raise ValueError(f"{source}: a device profile is a JSON object, got {type(data).__name__}")
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise ValueError(f"{source}: device profile lacks field(s) {', '.join(missing)}; "
                         f"a profile needs {', '.join(REQUIRED)}")
    unknown = sorted(set(data) - set(REQUIRED) - {"notes"})
    if unknown:
        raise ValueError(f"{source}: unknown device profile field(s) {', '.join(unknown)}")
    if data["target"] not in TARGETS:
        raise ValueError(f"{source}: target {data['target']!r} is not one of {', '.join(TARGETS)}")
    precisions = data["precisions"]
    if not isinstance(precisions, list) or not precisions or any(p not in PRECISIONS for p in precisions):
        raise ValueError(f"{source}: precisions must be a non-empty list of {', '.join(PRECISIONS)}, "
                         f"got {precisions!r}")
    if data["precision"] not in precisions:
        raise ValueError(f"{source}: precision {data['precision']!r} is not in its precisions {precisions}")
    size = data["input_size"]
    if not isinstance(size, int) or size < 64 or size % 32:
        raise ValueError(f"{source}: input_size must be a multiple of 32 and >= 64, got {size!r}")
    budget = data["memory_budget_mb"]
    if not isinstance(budget, int | float) or budget <= 0:
        raise ValueError(f"{source}: memory_budget_mb must be a positive number, got {budget!r}")
    runtime = data["runtime"]
    if not isinstance(runtime, dict) or runtime.get("backend") not in BACKENDS:
        raise ValueError(f"{source}: runtime.backend must be one of {', '.join(BACKENDS)}, got "
                         f"{runtime.get('backend') if isinstance(runtime, dict) else runtime!r}")
    for key in ("hardware", "backend_options"):
        if not isinstance(data[key], dict):
            raise ValueError(f"{source}: {key} must be a JSON object")
    return DeviceProfile(**{**data, "precisions": tuple(precisions)}, source=source)


def load_profile_file(path: str | Path) -> DeviceProfile:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"device profile file {path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"device profile {path} is not valid JSON ({e})") from None
    return parse_profile(data, str(path))


def list_profiles() -> dict[str, DeviceProfile]:
    """The built-in profiles by name, sorted."""
    out = {}
    for path in sorted(_profile_dir().glob("*.json")):
        p = load_profile_file(path)
        if p.name != path.stem:
            raise ValueError(f"{path}: profile name {p.name!r} differs from its file name")
        out[p.name] = p
    return out


def get_profile(name_or_path: str | Path) -> DeviceProfile:
    """A built-in profile by name, or a profile JSON file by path; an unknown name lists the known ones."""
    text = str(name_or_path)
    if text.endswith(".json") or Path(text).is_file():
        return load_profile_file(text)
    profiles = list_profiles()
    if text not in profiles:
        raise ValueError(f"unknown device profile {text!r}; profiles: {', '.join(profiles)} "
                         "(or the path of a profile .json file; see `sam3edge devices`)")
    return profiles[text]
