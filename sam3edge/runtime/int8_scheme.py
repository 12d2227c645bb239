"""The int8 schemes a bundle can hold, and whether a host's integer kernels compute them faithfully.

One definition, read by the exporters (which scheme to write and record in ``manifest.json``) and by the
runtime (whether to warn on this host). Why schemes matter: on x86 CPUs without VNNI, u8 x s8 products are
added in *pairs* into a saturating 16-bit sum (:mod:`sam3edge.runtime.cpu`). With activations in [0, 255]
and weights in [-128, 127] a pair reaches 2 x 255 x 128 = 65280 and is clipped at 32767; measured on an
AVX2-only AMD EPYC, the toy student's presence output moved by 0.23 against 0.007 for the same graph's
exact arithmetic. Weights limited to 7 bits ([-64, 64]) bound every pair by 2 x 255 x 64 = 32640 < 32767,
so the sums cannot saturate on any CPU (``u8s8-w7``, what the OpenVINO target writes: NNCF's weights are
signed). Unsigned weights (``u8u8``, what the ONNX target writes) never reach that instruction: onnxruntime
widens u8 x u8 to 16-bit operands and sums in 32 bits on every CPU, keeps 8-bit weights, and measured more
accurate than 7-bit u8s8 on an AVX2-only CPU, at the same speed within run-to-run spread
(``benchmarks/int8_schemes.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

from sam3edge.runtime.cpu import KERNEL_CLASSES, SATURATING, CpuInfo

INT16_MAX = 32767


class Int8KernelWarning(UserWarning):
    """An int8 bundle runs on a CPU whose integer kernels compute differently from the one it was verified on."""


@dataclass(frozen=True)
class Int8Scheme:
    """activation / weight integer ranges of an int8 graph and where its arithmetic is exact."""

    name: str
    activations: str
    weights: str
    activation_max: int  # largest |activation| a CPU kernel multiplies: 255 (x86 shifts int8 ones into uint8)
    weight_max: int  # largest |quantized weight| (about the zero point, for uint8 weights)
    integer_arithmetic: bool  # False: weight-only int8 (activations stay float); nothing to saturate
    why: str
    weight_type: str = "int8"  # uint8: u8 x u8 kernels, which widen before multiplying (no 16-bit pair sums)

    @property
    def max_pair_sum(self) -> int:
        """The largest |a0 w0 + a1 w1| that a 16-bit u8 x s8 pair sum must hold (0: the scheme forms none)."""
        if not self.integer_arithmetic or self.weight_type != "int8":
            return 0
        return 2 * self.activation_max * self.weight_max

    @property
    def saturation_free(self) -> bool:
        """True when no pair sum can exceed a signed 16-bit integer, on any CPU."""
        return self.max_pair_sum <= INT16_MAX

    def to_json(self) -> dict:
        return {"scheme": self.name, "activations": self.activations, "weights": self.weights,
                "weight_type": self.weight_type,
                "max_pair_sum": self.max_pair_sum, "saturation_free": self.saturation_free, "why": self.why}


SCHEMES = {s.name: s for s in (
    Int8Scheme("u8u8", "uint8, asymmetric, per tensor (calibrated)",
               "uint8, symmetric about 128, per output channel, [0, 255]", 255, 128, True,
               "onnxruntime's u8 x u8 kernels widen to 16-bit operands and sum in 32 bits on every CPU (x86 with or "
               "without VNNI, ARM), so nothing saturates and weights keep 8 bits; measured on an AVX2-only CPU it "
               "kept more of fp32's agreement than 7-bit u8 x s8, at the same speed", weight_type="uint8"),
    Int8Scheme("u8s8-w7", "uint8, asymmetric, per tensor (calibrated)",
               "int8, symmetric, per output channel, 7-bit range [-64, 64]", 255, 64, True,
               "u8 x s8 is the fastest int8 form of onnxruntime and OpenVINO on x86 and ARM; 7-bit weights keep "
               "every pair sum <= 32640, so CPUs without VNNI (16-bit saturating pair sums) compute exactly what "
               "VNNI and ARM CPUs compute"),
    Int8Scheme("s8s8-w8", "int8, symmetric, per tensor (calibrated)",
               "int8, symmetric, per output channel, [-127, 127]", 255, 127, True,
               "the only Q/DQ form TensorRT's ONNX parser takes; NVIDIA GPUs and DLA accumulate int8 products "
               "in 32 bits (an x86 CPU without VNNI would saturate it: these graphs are for TensorRT)"),
    Int8Scheme("w8-float-activations", "float16 (not quantized)", "int8, symmetric, per output channel", 0, 127,
               False, "Core ML int8 compresses weights only; the Neural Engine / GPU compute in float16"),
    Int8Scheme("u8s8-w8", "uint8, asymmetric, per tensor (calibrated)",
               "int8, symmetric, per output channel, [-127, 127]", 255, 127, True,
               "bundles written before sam3edge recorded a scheme: full-range weights, whose pair sums saturate "
               "on x86 CPUs without VNNI"),
)}

#: what an int8 bundle that records no scheme holds (onnx / openvino bundles before the scheme was recorded)
LEGACY = "u8s8-w8"


def bundle_scheme(manifest: dict) -> Int8Scheme | None:
    """The int8 scheme of a bundle's manifest (None: not an int8 bundle)."""
    if manifest.get("precision") != "int8":
        return None
    name = (manifest.get("quantization") or {}).get("scheme", LEGACY)
    return SCHEMES.get(name, SCHEMES[LEGACY])


def host_warning(manifest: dict, host: CpuInfo) -> str | None:
    """A warning when ``host``'s integer kernels are known to compute a bundle's int8 graphs differently from the
    CPU it was verified on; None when they compute the same sums (or the bundle is not int8)."""
    scheme = bundle_scheme(manifest)
    if scheme is None or not scheme.integer_arithmetic:
        return None
    verified = ((manifest.get("verification") or {}).get("host") or {}).get("int8_kernels")
    if verified == host.int8_kernels:
        return None
    where = f"verified on a CPU with {verified} int8 kernels" if verified else "verified on a CPU it does not record"
    here = f"this CPU ({host.describe()}) has {host.int8_kernels}: {KERNEL_CLASSES[host.int8_kernels]}"
    if not scheme.saturation_free and host.saturating:
        return (f"int8 bundle with scheme {scheme.name} ({scheme.weights}) was {where}; {here}. Its pair sums "
                f"reach {scheme.max_pair_sum} > {INT16_MAX} and are clipped here, so results can be wrong. "
                "Re-export the bundle with this sam3edge (7-bit weights, scheme u8s8-w7) or use fp32 / fp16")
    if not scheme.saturation_free and verified in SATURATING:
        return (f"int8 bundle with scheme {scheme.name} was {where}, where its pair sums were clipped; {here}, so its "
                "results differ from the verified ones. Re-export the bundle with this sam3edge (scheme u8s8-w7)")
    return (f"int8 bundle was {where}; {here}. Its scheme {scheme.name} cannot saturate (pair sums <= "
            f"{scheme.max_pair_sum}), so results should differ by rounding only; measure with "
            "`sam3edge bench BUNDLE --data ANNOTATIONS`")


def runs_on_cpu(backend_name: str) -> bool:
    """Whether a runtime backend (``onnxruntime:CPUExecutionProvider``, ``openvino:CPU`` ...) computes on the CPU."""
    device = backend_name.partition(":")[2].lower()
    return device in ("cpu", "cpuexecutionprovider")


def warn_if_kernels_differ(manifest: dict, backend_name: str, host: CpuInfo | None = None) -> str | None:
    """Issue an :class:`Int8KernelWarning` (and return its text) when :func:`host_warning` has one for a bundle
    running on ``backend_name``; None otherwise."""
    import warnings

    from sam3edge.runtime.cpu import cpu_info

    if not runs_on_cpu(backend_name):
        return None
    message = host_warning(manifest, host or cpu_info())
    if message:
        warnings.warn(message, Int8KernelWarning, stacklevel=3)
    return message
