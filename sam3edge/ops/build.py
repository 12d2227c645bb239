"""Building the CUDA kernels of :mod:`sam3edge.ops`: an ahead-of-time compile check, and the torch extension.

``csrc/sam3edge_ops.cu`` holds the kernels behind a plain C ABI (no torch headers), so ``nvcc`` can
compile them for any architecture on a machine without a GPU (CI does, for the edge and server
GPUs in :data:`ARCHITECTURES`); ``csrc/binding.cpp`` wraps them for PyTorch and is built on first
use on a GPU machine, for that GPU, into a cache folder keyed by the sources' hash.

    python -m sam3edge.ops.build --archs 80,87,90      # compile check (object + one cubin per arch)
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

CSRC = Path(__file__).resolve().parent / "csrc"
SOURCES = ("sam3edge_ops.cu", "binding.cpp")
KERNELS = CSRC / "sam3edge_ops.cu"
ARCHITECTURES = {  # compute capability -> the devices it is built for (all that CUDA 13's nvcc targets)
    "75": "Turing (T4, RTX 20xx)",
    "80": "Ampere data centre (A100, A30)",
    "86": "Ampere desktop / Jetson-class (RTX 30xx, A10)",
    "87": "Jetson AGX Orin, Orin NX, Orin Nano",
    "89": "Ada (RTX 40xx, L4, L40)",
    "90": "Hopper (H100, H200)",
    "100": "Blackwell data centre (B200)",
    "120": "Blackwell desktop (RTX 50xx)",
}
CI_ARCHITECTURES = ("80", "87", "90")
NVCC_FLAGS = ("-std=c++17", "-O3")


def cuda_home() -> Path | None:
    """The CUDA toolkit folder holding ``include/cuda_runtime.h``: $CUDA_HOME / $CUDA_PATH, /usr/local/cuda, or
    two levels above the real ``nvcc`` (often a wrapper script in /usr/local/bin)."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(str(Path(nvcc).resolve().parent.parent))
    for c in candidates:
        if c and (Path(c) / "include" / "cuda_runtime.h").is_file():
            return Path(c)
    return None


def nvcc_path() -> Path:
    home = cuda_home()
    for cand in ([home / "bin" / "nvcc"] if home else []) + [Path(p) for p in [shutil.which("nvcc")] if p]:
        if cand.is_file():
            return cand
    raise RuntimeError("nvcc (the CUDA toolkit's compiler) was not found: install the CUDA toolkit (JetPack on a "
                       "Jetson) or set CUDA_HOME to its folder")


def _gencode(archs) -> list[str]:
    out = []
    for a in archs:
        a = str(a).removeprefix("sm_")
        if a not in ARCHITECTURES:
            raise ValueError(f"unknown CUDA architecture {a!r}; known: {', '.join(ARCHITECTURES)}")
        out.append(f"-gencode=arch=compute_{a},code=sm_{a}")
    return out


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")


def cubin_arch(path: Path) -> int:
    """The SM version a cubin (CUDA ELF) was compiled for, from its ELF header flags."""
    data = Path(path).read_bytes()[:64]
    if data[:4] != b"\x7fELF":
        raise ValueError(f"{path} is not an ELF file")
    flags = struct.unpack_from("<I", data, 48)[0]  # e_flags of a 64-bit ELF
    # CUDA ELF ABI v8 (CUDA >= 12.8) keeps the SM in bits 8..15; older ABIs in bits 0..7.
    return (flags >> 8) & 0xFF if data[8] >= 8 else flags & 0xFF


def compile_kernels(out_dir: str | Path, archs=CI_ARCHITECTURES) -> dict:
    """Compile the kernels with nvcc: one object with every arch, and one cubin per arch; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    nvcc = str(nvcc_path())
    obj = out_dir / "sam3edge_ops.o"
    _run([nvcc, *NVCC_FLAGS, *_gencode(archs), "-c", str(KERNELS), "-o", str(obj)])
    cubins = {}
    for a in archs:
        cubins[str(a)] = out_dir / f"sam3edge_ops_sm{a}.cubin"
        _run([nvcc, *NVCC_FLAGS, *_gencode([a]), "-cubin", str(KERNELS), "-o", str(cubins[str(a)])])
    return {"object": obj, "cubins": cubins}


def sources_hash() -> str:
    h = hashlib.sha256()
    for name in (*SOURCES, "sam3edge_ops.h"):
        h.update((CSRC / name).read_bytes())
    return h.hexdigest()[:16]


def cache_dir() -> Path:
    root = os.environ.get("SAM3EDGE_OPS_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"),
                                                         "sam3edge", "ops")
    return Path(root) / sources_hash()


def build_extension(archs, build_directory: str | Path | None = None, verbose: bool = False):
    """Compile and import the torch extension for ``archs`` (e.g. ``("87",)``); needs nvcc, not a GPU."""
    home = cuda_home()
    if home is None:
        raise RuntimeError("building the sam3edge CUDA ops needs the CUDA toolkit (nvcc and headers): install it or "
                           "set CUDA_HOME")
    import torch.utils.cpp_extension as cpp

    # torch reads CUDA_HOME when cpp_extension is first imported; a wrapper nvcc on PATH can mislead it.
    os.environ["CUDA_HOME"] = str(home)
    cpp.CUDA_HOME = str(home)
    build = Path(build_directory) if build_directory else cache_dir()
    build.mkdir(parents=True, exist_ok=True)
    try:
        return cpp.load(name=f"sam3edge_ops_{sources_hash()}", sources=[str(CSRC / s) for s in SOURCES],
                        extra_cflags=["-O3"], extra_cuda_cflags=[*NVCC_FLAGS, *_gencode(archs)],
                        build_directory=str(build), verbose=verbose)
    except Exception as e:
        raise RuntimeError(f"building the sam3edge CUDA ops for sm_{', sm_'.join(map(str, archs))} failed in "
                           f"{build}: {e}") from e


@functools.lru_cache(maxsize=1)
def load_extension(verbose: bool = False):
    """The compiled torch extension (module with ``prompt_attention``, ``box_attention``, ``mask_topk``), built for
    the visible GPU on first use (a minute or two) and cached; raises ``RuntimeError`` saying what is missing."""
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError("the sam3edge CUDA ops need a CUDA GPU visible to torch; on CPU the custom ops run their "
                           "PyTorch reference")
    major, minor = torch.cuda.get_device_capability()
    arch = f"{major}{minor}"
    if arch not in ARCHITECTURES:
        raise RuntimeError(f"this GPU is sm_{arch}; the sam3edge CUDA ops are built for "
                           f"{', '.join('sm_' + a for a in ARCHITECTURES)}")
    return build_extension((arch,), verbose=verbose)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="compile the sam3edge CUDA kernels (no GPU needed)")
    ap.add_argument("--archs", default=",".join(CI_ARCHITECTURES), help="compute capabilities, e.g. 80,87,90")
    ap.add_argument("--out", help="folder for the object and cubins (default: a temporary folder)")
    args = ap.parse_args(argv)
    archs = [a.strip() for a in args.archs.split(",") if a.strip()]
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="sam3edge_ops_"))
    try:
        built = compile_kernels(out, archs)
    except (ValueError, RuntimeError) as e:  # unknown arch, no nvcc, a compile error: the message says which
        print(f"error: {e}", file=sys.stderr)
        return 2
    for a, cubin in built["cubins"].items():
        print(f"sm_{a} ({ARCHITECTURES[a]}): {cubin} ({cubin.stat().st_size} bytes, ELF arch sm_{cubin_arch(cubin)})")
    print(f"object with {len(archs)} architectures: {built['object']} ({built['object'].stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
