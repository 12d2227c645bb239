"""int8 arithmetic per CPU: instruction-set classes, the schemes bundles hold, and when the runtime warns."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from sam3edge.runtime.cpu import CpuInfo, int8_kernels
from sam3edge.runtime.int8_scheme import (
    INT16_MAX,
    SCHEMES,
    Int8KernelWarning,
    bundle_scheme,
    host_warning,
    warn_if_kernels_differ,
)


def saturating_pair_dot(a: np.ndarray, w: np.ndarray) -> np.ndarray:
    """u8 x s8 dot products as x86 vpmaddubsw + vpmaddwd compute them without VNNI: adjacent products are
    added in pairs into a signed 16-bit sum that saturates, then the pairs are summed in 32 bits.
    a: uint8 [N, K], w: int8 [K, M] (K even) -> int64 [N, M]."""
    prod = a.astype(np.int64)[:, :, None] * w.astype(np.int64)[None]  # [N, K, M]
    pairs = prod[:, 0::2] + prod[:, 1::2]
    return np.clip(pairs, -INT16_MAX - 1, INT16_MAX).sum(1)


def test_seven_bit_weights_cannot_saturate_pair_sums_and_eight_bit_ones_do():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (64, 256)).astype(np.uint8)
    a[:, :8] = 255  # the worst case: large activations against large weights of one sign
    for bits, weight_max in ((7, 64), (8, 127)):
        w = rng.integers(-weight_max, weight_max + 1, (256, 32)).astype(np.int64)
        w[:8] = weight_max
        exact = a.astype(np.int64) @ w
        clipped = saturating_pair_dot(a, w)
        if bits == 7:
            np.testing.assert_array_equal(clipped, exact)
        else:
            assert (clipped != exact).any()
    assert SCHEMES["u8s8-w7"].max_pair_sum == 32640 <= INT16_MAX and SCHEMES["u8s8-w7"].saturation_free
    assert not SCHEMES["u8s8-w8"].saturation_free and not SCHEMES["s8s8-w8"].saturation_free
    assert SCHEMES["w8-float-activations"].saturation_free  # weight-only: no integer arithmetic at all
    assert SCHEMES["u8u8"].saturation_free and SCHEMES["u8u8"].max_pair_sum == 0  # u8 x u8 widens first


def test_the_targets_write_schemes_that_cannot_saturate_on_any_cpu():
    from sam3edge.export.targets import EXPORT_TARGETS

    for name in ("onnx", "openvino"):  # what runs on CPUs
        assert SCHEMES[EXPORT_TARGETS[name].int8_scheme].saturation_free, name
    assert EXPORT_TARGETS["tensorrt"].int8_scheme == "s8s8-w8"  # TensorRT's parser takes symmetric int8 only


@pytest.mark.parametrize("machine,flags,expected", [
    ("x86_64", {"avx2", "avx512f", "avx512bw", "avx512_vnni"}, "x86-vnni"),
    ("x86_64", {"avx2", "avx_vnni"}, "x86-vnni"),  # Alder Lake and later: VNNI on 256-bit vectors
    ("x86_64", {"avx2", "avx512f", "avx512bw"}, "x86-avx512"),  # Skylake-SP: AVX-512 but no VNNI
    ("x86_64", {"avx2", "fma"}, "x86-avx2"),  # the AMD EPYC of issue 19
    ("x86_64", {"sse4_1"}, "x86-sse"),
    ("AMD64", {"avx2"}, "x86-avx2"),
    ("aarch64", {"asimd", "asimddp"}, "arm64-dot"),  # Jetson Orin's Cortex-A78AE
    ("aarch64", {"asimd"}, "arm64-neon"),
    ("riscv64", set(), "generic"),
])
def test_instruction_sets_map_to_int8_kernel_classes(machine, flags, expected):
    assert int8_kernels(machine, flags) == expected


AVX2 = CpuInfo("x86_64", "AMD EPYC", ("avx2", "fma"), "x86-avx2")
VNNI = CpuInfo("x86_64", "Intel Xeon", ("avx2", "avx512f", "avx512bw", "avx512_vnni"), "x86-vnni")
ORIN = CpuInfo("aarch64", "ARMv8 Processor rev 1 (v8l)", ("asimd", "asimddp"), "arm64-dot")


def manifest(precision="int8", scheme="u8s8-w7", verified_on="x86-vnni") -> dict:
    m = {"precision": precision, "verification": {"ran": True, "host": {"int8_kernels": verified_on}}}
    if scheme is not None:
        m["quantization"] = {"scheme": scheme}
    return m


def test_an_old_full_range_bundle_verified_on_vnni_warns_on_an_avx2_cpu_that_results_can_be_wrong():
    old = manifest(scheme=None, verified_on=None)  # written before schemes and hosts were recorded
    assert bundle_scheme(old).name == "u8s8-w8"
    text = host_warning(old, AVX2)
    assert "clipped here, so results can be wrong" in text and "u8s8-w7" in text and "AMD EPYC" in text
    assert "clipped here" in host_warning(manifest(scheme="u8s8-w8"), AVX2)
    # verified where the sums were clipped, run where they are not: the verified figures do not hold either
    assert "differ from the verified ones" in host_warning(manifest(scheme="u8s8-w8", verified_on="x86-avx2"), VNNI)


def test_a_saturation_free_bundle_warns_mildly_on_other_kernels_and_not_at_all_on_the_same_ones():
    assert host_warning(manifest(verified_on="x86-vnni"), VNNI) is None
    assert host_warning(manifest(verified_on="x86-avx2"), AVX2) is None
    text = host_warning(manifest(verified_on="x86-vnni"), ORIN)
    assert "cannot saturate" in text and "rounding only" in text and "arm64-dot" in text
    assert host_warning(manifest(precision="fp32", scheme=None), AVX2) is None
    assert host_warning(manifest(scheme="w8-float-activations"), AVX2) is None  # Core ML: weight-only int8


def test_the_warning_is_issued_for_cpu_backends_only():
    old = manifest(scheme=None, verified_on=None)
    with pytest.warns(Int8KernelWarning, match="results can be wrong"):
        assert warn_if_kernels_differ(old, "onnxruntime:CPUExecutionProvider", AVX2)
    with pytest.warns(Int8KernelWarning):
        warn_if_kernels_differ(old, "openvino:CPU", AVX2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert warn_if_kernels_differ(old, "tensorrt:cuda:0", AVX2) is None
        assert warn_if_kernels_differ(old, "openvino:GPU", AVX2) is None
        assert warn_if_kernels_differ(manifest(verified_on="x86-avx2"), "onnxruntime:CPUExecutionProvider",
                                      AVX2) is None


def test_cpu_info_describes_this_host():
    from sam3edge.runtime.cpu import KERNEL_CLASSES, cpu_info

    info = cpu_info()
    assert info.int8_kernels in KERNEL_CLASSES and info.machine
    assert info.describe().startswith(info.model)
    assert set(info.to_json()) >= {"machine", "model", "isa", "int8_kernels", "describe"}
