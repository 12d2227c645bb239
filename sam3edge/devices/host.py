"""What this host can export and run: onnxruntime providers, OpenVINO devices, TensorRT, Jetson, macOS.

Nothing here imports torch, and every probe is guarded: a missing or broken package means "not
available", never an exception. ``can_run(profile, host)`` and ``can_export(profile, host)`` answer
with a reason a user can act on.
"""

from __future__ import annotations

import importlib.util
import os
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sam3edge.devices.profiles import DeviceProfile


@dataclass
class Host:
    system: str  # Linux, Darwin, Windows
    machine: str  # x86_64, aarch64, arm64
    cpu: str
    cores: int
    isa: str = ""  # the instruction set that decides int8 / bf16 kernels (sam3edge.runtime.cpu)
    int8_kernels: str = "generic"
    onnxruntime: str | None = None  # version, None if not installed
    ort_providers: list[str] = field(default_factory=list)
    openvino: str | None = None
    openvino_devices: list[str] = field(default_factory=list)
    tensorrt: str | None = None
    cuda_devices: int = 0
    jetson: str | None = None  # the board's model string, e.g. "NVIDIA Jetson AGX Orin Developer Kit"
    coremltools: str | None = None
    export_packages: dict = field(default_factory=dict)  # onnx, nncf, torch: installed or not

    def to_json(self) -> dict:
        return asdict(self)


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _jetson_model() -> str | None:
    for path in ("/proc/device-tree/model", "/sys/firmware/devicetree/base/model"):
        try:
            model = Path(path).read_bytes().decode(errors="replace").strip("\x00 \n")
        except OSError:
            continue
        if "jetson" in model.lower() or "orin" in model.lower():
            return model
    return "NVIDIA Jetson (model unknown)" if Path("/etc/nv_tegra_release").exists() else None


def _cuda_devices() -> int:
    """NVIDIA GPUs visible through the driver's device nodes (no CUDA library needed to count them)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return 0
    return len(list(Path("/dev").glob("nvidia[0-9]*"))) or (1 if Path("/dev/nvhost-gpu").exists() else 0)


def detect() -> Host:
    from sam3edge.runtime.cpu import cpu_info

    info = cpu_info()
    host = Host(system=platform.system(), machine=platform.machine(), cpu=_cpu_name(), cores=os.cpu_count() or 1,
                isa=info.describe(), int8_kernels=info.int8_kernels)
    if _installed("onnxruntime"):
        try:
            import onnxruntime as ort

            host.onnxruntime, host.ort_providers = ort.__version__, list(ort.get_available_providers())
        except Exception:  # a broken install counts as absent
            pass
    if _installed("openvino"):
        try:
            import openvino as ov

            from sam3edge.runtime.backends.openvino_backend import shared_core

            host.openvino, host.openvino_devices = ov.__version__, list(shared_core().available_devices)
        except Exception:
            pass
    if _installed("tensorrt"):
        try:
            import tensorrt as trt

            host.tensorrt = trt.__version__
        except Exception:
            pass
    if _installed("coremltools"):
        try:
            from importlib.metadata import version

            host.coremltools = version("coremltools")
        except Exception:
            pass
    host.cuda_devices = _cuda_devices()
    host.jetson = _jetson_model()
    from sam3edge.export.targets import EXPORT_TARGETS

    needed = sorted({m for t in EXPORT_TARGETS.values() for m in (*t.packages, *t.int8_packages)})
    host.export_packages = {m: _installed(m) for m in needed}
    return host


def can_export(profile: DeviceProfile, host: Host) -> tuple[bool, str]:
    """Whether ``sam3edge export --profile`` for ``profile`` works on this host, and why not."""
    from sam3edge.export.targets import EXPORT_TARGETS

    pk, target = host.export_packages, EXPORT_TARGETS[profile.target]
    need = [*target.packages, *(target.int8_packages if profile.precision == "int8" else ())]
    missing = [m for m in need if not pk.get(m)]
    if missing:
        return False, f"needs {', '.join(missing)} (pip install 'sam3edge[distill,{target.extra}]')"
    if profile.target == "tensorrt":
        return True, ("yes, engines too" if host.tensorrt and host.cuda_devices
                      else "yes (ONNX graphs; the engine is built on the device)")
    return True, "yes"


def can_run(profile: DeviceProfile, host: Host) -> tuple[bool, str]:
    """Whether this host runs ``profile``'s bundles on its intended hardware, and why not."""
    backend, rt = profile.runtime["backend"], profile.runtime
    if backend == "onnxruntime":
        want = rt.get("providers", ["CPUExecutionProvider"])
        missing = [p for p in want if p not in host.ort_providers]
        return (not missing, "yes" if not missing else f"onnxruntime lacks {', '.join(missing)}")
    if backend == "openvino":
        device = rt.get("device", "CPU")
        if host.openvino is None:
            return False, "OpenVINO is not installed"
        if device not in host.openvino_devices:
            return False, f"no OpenVINO {device} device (this host has: {', '.join(host.openvino_devices) or 'none'})"
        if profile.hardware.get("vendor") == "intel" and device == "CPU" and "intel" not in host.cpu.lower():
            return True, f"yes, but this CPU is not Intel ({host.cpu})"
        return True, "yes"
    if backend == "coreml":
        if profile.hardware.get("family") == "ios":
            return False, "runs inside an iOS app (add the .mlpackage files to the Xcode project)"
        if host.system != "Darwin":
            return False, "Core ML runs on macOS only"
        return (host.coremltools is not None, "yes" if host.coremltools else "coremltools is not installed")
    # tensorrt
    if profile.hardware.get("family") == "jetson":
        if not host.jetson:
            return False, "not a Jetson"
        match = profile.hardware.get("match", "")
        if match and match.lower() not in host.jetson.lower():
            return False, f"this Jetson is a {host.jetson}, not {match}"
    if not host.cuda_devices:
        return False, "no NVIDIA GPU"
    if host.tensorrt is None:
        return False, "TensorRT is not installed (JetPack on Jetson; pip install tensorrt on x86 with CUDA)"
    return True, "yes"
