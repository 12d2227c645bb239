"""Within one process, a student's fp32 graphs are exported once and reused.

Every target and precision starts from the same fp32 ONNX graphs, and ``torch.onnx.export(dynamo=True)`` takes
most of an export (about 45 s of 50 for the toy student on 2 cores; verification and quantization are the rest).
A process that exports one student to several targets or precisions (the quickstart: ONNX and OpenVINO int8; a
script writing a bundle per device) pays it once: the graphs are kept in a private temporary folder, keyed by
everything that decides them, and copied out on a later export of the same thing.

The key (:func:`graph_key`) covers the student's class, spec and overrides, every tensor of its state dict
(dtype, shape and bytes), the example inputs the exporter traces with (an image, the concept features and mask),
the export options (fused ops, exemplar graph, opset, the exemplar bound) and the torch version. A student changed
in any weight, or traced on another image size or text length, is exported anew.

Bounded: graphs larger than :data:`MAX_ENTRY_BYTES` are never kept (an 840 M-parameter teacher would double its
disk use), and the oldest entries go when the total passes :data:`MAX_TOTAL_BYTES`. The folder is removed when
the process ends. ``SAM3EDGE_REUSE_GRAPHS=0`` turns reuse off.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

__all__ = ["MAX_ENTRY_BYTES", "MAX_TOTAL_BYTES", "graph_key", "memo_stats", "reuse_graphs"]

MAX_ENTRY_BYTES = 256 * 2**20
MAX_TOTAL_BYTES = 1024 * 2**20

_lock = threading.Lock()
_entries: OrderedDict[str, tuple[Path, dict[str, str], int]] = OrderedDict()  # key -> (folder, name -> file, bytes)
_stats = {"hits": 0, "misses": 0}
_root: tempfile.TemporaryDirectory | None = None


def _digest_array(h, a) -> None:
    if torch.is_tensor(a):  # any dtype (bfloat16 has no numpy twin): its shape, dtype and raw bytes
        t = a.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        return
    a = np.ascontiguousarray(a)
    h.update(f"{a.dtype}{a.shape}".encode())
    h.update(a.tobytes())


def graph_key(student, example: tuple, options: dict) -> str:
    """sha256 of everything that decides a student's fp32 graphs (see the module docstring)."""
    h = hashlib.sha256()
    h.update(f"{type(student).__module__}.{type(student).__qualname__}".encode())
    h.update(repr(getattr(student, "spec", None)).encode())
    h.update(repr(sorted(getattr(student, "overrides", {}).items())).encode())
    for name, t in student.state_dict().items():
        h.update(name.encode())
        _digest_array(h, t)
    for a in example:
        _digest_array(h, a)
    h.update(repr(sorted(options.items())).encode())
    h.update(torch.__version__.encode())
    return h.hexdigest()


def memo_stats() -> dict[str, int]:
    """How many exports were served from the memo (hits) or made (misses) in this process."""
    with _lock:
        return dict(_stats, entries=len(_entries))


def _enabled() -> bool:
    return os.environ.get("SAM3EDGE_REUSE_GRAPHS", "1").strip() not in ("0", "false", "no", "off")


def reuse_graphs(make_key: Callable[[], str], out_dir: Path, export: Callable[[Path], dict[str, Path]],
                 expected_bytes: int = 0) -> dict[str, Path]:
    """The graphs of ``make_key()`` in ``out_dir`` (name -> path): copied from the memo, or made by
    ``export(folder)`` (which writes them into ``folder`` and returns name -> path) and kept when small enough.
    ``expected_bytes`` (the weights' size): over :data:`MAX_ENTRY_BYTES`, the graphs are written straight to
    ``out_dir`` and no key is computed (hashing gigabytes of weights would buy nothing)."""
    global _root
    out_dir = Path(out_dir)
    if not _enabled() or expected_bytes > MAX_ENTRY_BYTES:
        with _lock:
            _stats["misses"] += 1
        return export(out_dir)
    key = make_key()
    with _lock:  # one export at a time: torch's exporter is not made for concurrent calls either
        hit = _entries.get(key)
        if hit is None or not hit[0].is_dir():
            _entries.pop(key, None)
            if _root is None:
                _root = tempfile.TemporaryDirectory(prefix="sam3edge-graphs-")
            folder = Path(tempfile.mkdtemp(dir=_root.name))
            try:
                paths = export(folder)
            except BaseException:
                shutil.rmtree(folder, ignore_errors=True)
                raise
            size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
            hit = (folder, {name: str(p.relative_to(folder)) for name, p in paths.items()}, size)
            _stats["misses"] += 1
            if size <= MAX_ENTRY_BYTES:
                _entries[key] = hit
                _evict()
        else:
            _entries.move_to_end(key)
            _stats["hits"] += 1
        folder, names, _ = hit
        out_dir.mkdir(parents=True, exist_ok=True)
        for f in sorted(folder.rglob("*")):  # every file the exporter wrote (external weights included)
            if f.is_file():
                dst = out_dir / f.relative_to(folder)
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(f, dst)
        if key not in _entries:
            shutil.rmtree(folder, ignore_errors=True)
        return {name: out_dir / rel for name, rel in names.items()}


def _evict() -> None:
    while len(_entries) > 1 and sum(size for _, _, size in _entries.values()) > MAX_TOTAL_BYTES:
        _, (folder, _, _) = _entries.popitem(last=False)
        shutil.rmtree(folder, ignore_errors=True)
