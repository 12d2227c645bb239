"""The export targets: one module each, registered here with what they support (checked before any work).

A target module ``sam3edge.export.<module>`` provides

* ``export_<name>(student, out_dir, precision, images, text, mask[, options][, fused])`` -> graph name -> path;
* ``verification_runner(paths, precision)`` -> (runner or None, what it runs / why not on this host);
* ``int8_ranges(path)`` -> what a written graph's integer kernels multiply, unless the format's int8 holds no
  integer arithmetic (then the module has none).

Adding a target is one module, one entry here and its name in :data:`sam3edge.runtime.names.TARGETS`
(a test holds the two lists equal). Nothing falls through: an unknown name is a KeyError naming the targets.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


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
    exemplars: bool = False  # its bundles carry the exemplar encoder (exemplar-box prompts; export.graphs)
    packages: tuple[str, ...] = ("torch", "onnx")  # what exporting needs installed (int8 adds int8_packages)
    int8_packages: tuple[str, ...] = ()
    extra: str = "export"  # the pip extra that installs them

    def export(self, student, out_dir: Path, precision: str, images, text, mask, options: dict | None = None,
               fused: bool = False) -> dict[str, Path]:
        if fused and not self.fused_ops:
            raise ValueError(f"target {self.name} cannot carry the fused ops (its converter starts from PyTorch, "
                             "not from the ONNX graph with their function bodies); export it with --ops plain")
        fn = getattr(self._module(), f"export_{self.name}")
        kwargs = ({"options": options} if self.takes_options else {}) | ({"fused": True} if fused else {})
        return fn(student, out_dir, precision, images, text, mask, **kwargs)

    def _module(self):
        return importlib.import_module(f"sam3edge.export.{self.module}")

    def int8_ranges(self, paths: dict[str, Path]) -> dict[str, dict] | None:
        """Per graph, what its integer kernels multiply (``weight_max``, ``max_pair_sum``), read from the written
        files; None where the format holds no integer arithmetic to check (Core ML's weight-only int8)."""
        ranges = getattr(self._module(), "int8_ranges", None)
        if ranges is None:
            return None
        return {name: ranges(path) for name, path in paths.items() if Path(path).suffix in (".onnx", ".xml")}

    def verification_runner(self, paths: dict[str, Path], precision: str) -> tuple[Callable | None, str]:
        """(runner, what it runs) on this host; runner None (and why) where this host cannot run the graphs."""
        return self._module().verification_runner(paths, precision)


EXPORT_TARGETS = {t.name: t for t in (
    # onnxruntime runs the fused nodes' function bodies and OpenVINO their inlined form, both torch-free and
    # faster than the plain graph (benchmarks/results/fused_ops_cpu_*.md); TensorRT's plugins need torch and the
    # CUDA extension on the device, so there they are opt-in; Core ML converts from PyTorch (plain only).
    Target("onnx", ("fp32", "fp16", "int8"), "onnx", "ONNX (opset 18)", fused_ops=True, fused_by_default=True,
           exemplars=True),
    Target("openvino", ("fp32", "fp16", "int8"), "openvino", "OpenVINO IR (.xml + .bin)", fused_ops=True,
           fused_by_default=True, exemplars=True, int8_scheme="u8s8-w7", packages=("torch", "onnx", "openvino"),
           int8_packages=("nncf",)),
    Target("coreml", ("fp32", "fp16", "int8"), "coreml", "Core ML ML Program (.mlpackage)",
           int8_scheme="w8-float-activations", packages=("torch", "coremltools"), extra="coreml", exemplars=True),
    Target("tensorrt", ("fp16", "int8"), "tensorrt", "ONNX for TensorRT + tensorrt.json (engines built on the GPU)",
           takes_options=True, fused_ops=True, int8_scheme="s8s8-w8", exemplars=True),
)}
