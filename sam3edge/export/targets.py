"""The export targets: one module each, registered here with what they support (checked before any work).

A target module provides ``export_<name>(student, out_dir, precision, images, text, mask[, options])`` ->
graph name -> path, and a way to run the written graphs on this host for verification. Adding a target
is one module and one entry here.
"""

from __future__ import annotations

import importlib
import platform
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sam3edge.runtime.cpu import cpu_info


@dataclass(frozen=True)
class Target:
    name: str
    precisions: tuple[str, ...]
    module: str  # sam3edge.export.<module>
    graph_format: str  # what the bundle's graphs/ holds
    takes_options: bool = False  # export_<name>() takes a device profile's backend_options
    fused_ops: bool = False  # export_<name>() takes fused=True (the sam3edge fused-op nodes, sam3edge.ops)
    fused_by_default: bool = False  # what `--ops auto` means for this target
    int8_scheme: str = "u8u8"  # what its int8 graphs hold (sam3edge.runtime.int8_scheme.SCHEMES)

    def export(self, student, out_dir: Path, precision: str, images, text, mask, options: dict | None = None,
               fused: bool = False) -> dict[str, Path]:
        if fused and not self.fused_ops:
            raise ValueError(f"target {self.name} cannot carry the fused ops (its converter starts from PyTorch, "
                             "not from the ONNX graph with their function bodies); export it with --ops plain")
        mod = importlib.import_module(f"sam3edge.export.{self.module}")
        fn = getattr(mod, f"export_{self.name}")
        kwargs = ({"options": options} if self.takes_options else {}) | ({"fused": True} if fused else {})
        return fn(student, out_dir, precision, images, text, mask, **kwargs)

    def int8_ranges(self, paths: dict[str, Path]) -> dict[str, dict] | None:
        """Per graph, what its integer kernels multiply (``weight_max``, ``max_pair_sum``), read from the written
        files; None where the format holds no integer arithmetic to check (Core ML's weight-only int8)."""
        if self.name == "coreml":
            return None
        if self.name == "openvino":
            from sam3edge.export.openvino import int8_ranges
        else:
            from sam3edge.export.onnx import int8_ranges
        return {name: int8_ranges(path) for name, path in paths.items() if Path(path).suffix in (".onnx", ".xml")}

    def verification_runner(self, paths: dict[str, Path], precision: str) -> tuple[Callable | None, str]:
        """(runner, what it runs) on this host; runner None (and why) where this host cannot run the graphs."""
        if self.name == "onnx":
            from sam3edge.export.verify import onnx_runner

            return onnx_runner(paths), f"onnxruntime CPU ({cpu_info().describe()})"
        if self.name == "openvino":
            from sam3edge.export.openvino import openvino_runner

            return openvino_runner(paths), f"OpenVINO CPU ({cpu_info().describe()}), f32 inference precision"
        if self.name == "coreml":
            if platform.system() != "Darwin":
                return None, ("Core ML prediction needs macOS: the packages were converted and their specs checked "
                              "here, not run; verify on a Mac with `pytest -m macos`")
            from sam3edge.export.coreml import coreml_runner

            return coreml_runner(paths), "Core ML on macOS"
        from sam3edge.export.tensorrt import verification_runner

        return verification_runner(paths, precision)


TARGETS = {t.name: t for t in (
    # onnxruntime runs the fused nodes' function bodies and OpenVINO their inlined form, both torch-free and
    # faster than the plain graph (benchmarks/results/fused_ops_cpu_*.md); TensorRT's plugins need torch and the
    # CUDA extension on the device, so there they are opt-in; Core ML converts from PyTorch (plain only).
    Target("onnx", ("fp32", "fp16", "int8"), "onnx", "ONNX (opset 18)", fused_ops=True, fused_by_default=True),
    Target("openvino", ("fp32", "fp16", "int8"), "openvino", "OpenVINO IR (.xml + .bin)", fused_ops=True,
           fused_by_default=True, int8_scheme="u8s8-w7"),
    Target("coreml", ("fp32", "fp16", "int8"), "coreml", "Core ML ML Program (.mlpackage)",
           int8_scheme="w8-float-activations"),
    Target("tensorrt", ("fp16", "int8"), "tensorrt", "ONNX for TensorRT + tensorrt.json (engines built on the GPU)",
           takes_options=True, fused_ops=True, int8_scheme="s8s8-w8"),
)}
