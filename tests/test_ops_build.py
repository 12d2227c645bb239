"""The CUDA kernels compile with nvcc for the Jetson Orin (sm_87), Hopper (sm_90) and Ampere (sm_80) on a machine
without a GPU, and the build helpers refuse what they cannot do with a clear message."""

from __future__ import annotations

import shutil

import pytest

from sam3edge.ops import build


def test_kernels_compile_for_orin_hopper_and_ampere(tmp_path):
    if build.cuda_home() is None and shutil.which("nvcc") is None:
        pytest.skip("no CUDA toolkit (nvcc) on this machine")
    out = build.compile_kernels(tmp_path, archs=("80", "87", "90"))
    assert out["object"].stat().st_size > 100_000  # three architectures' code in one object
    for arch, cubin in out["cubins"].items():
        assert build.cubin_arch(cubin) == int(arch), f"{cubin} was not built for sm_{arch}"
        assert b"box_attention" in cubin.read_bytes() and b"mask_logits" in cubin.read_bytes()


def test_unknown_architecture_is_refused_before_compiling(tmp_path):
    with pytest.raises(ValueError, match="unknown CUDA architecture '61'"):
        build.compile_kernels(tmp_path, archs=("61",))


def test_cubin_arch_rejects_a_file_that_is_not_elf(tmp_path):
    bad = tmp_path / "x.cubin"
    bad.write_bytes(b"not an elf file at all, just text" * 3)
    with pytest.raises(ValueError, match="not an ELF file"):
        build.cubin_arch(bad)


def test_extension_cache_is_keyed_by_the_sources(monkeypatch, tmp_path):
    monkeypatch.setenv("SAM3EDGE_OPS_CACHE", str(tmp_path))
    assert build.cache_dir() == tmp_path / build.sources_hash()
    assert len(build.sources_hash()) == 16


def test_load_extension_without_a_gpu_says_so():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: the extension would build")
    build.load_extension.cache_clear()
    with pytest.raises(RuntimeError, match="need a CUDA GPU"):
        build.load_extension()


@pytest.mark.slow
def test_torch_extension_compiles_links_and_refuses_cpu_tensors(tmp_path):
    """binding.cpp + the kernels build as a torch extension for the Jetson Orin (about two minutes on 2 cores);
    nothing can run without a GPU, but the binding's first check answers."""
    import torch

    if build.cuda_home() is None:
        pytest.skip("no CUDA toolkit (nvcc and headers) on this machine")
    ext = build.build_extension(("87",), build_directory=tmp_path)
    for name in ("prompt_attention", "box_attention", "mask_topk"):
        assert callable(getattr(ext, name))
    q = torch.randn(1, 4, 8)
    with pytest.raises(RuntimeError, match="q must be a CUDA tensor"):
        ext.prompt_attention(q, q, q, torch.zeros(1, 4), 2, 0.5)


def test_build_cli_reports_a_bad_architecture_without_a_traceback(capsys):
    assert build.main(["--archs", "61"]) == 2
    assert "unknown CUDA architecture '61'" in capsys.readouterr().err
