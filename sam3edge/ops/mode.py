"""The switch between the plain PyTorch heads and the fused ops.

Off by default: training and the plain export run the unfused modules. Inside ``with fused_ops():``
the heads call ``torch.ops.sam3edge.*`` instead (one node per op in ``torch.export`` and ONNX,
CUDA kernels on a GPU). The switch is read when a forward runs (or is traced), so a traced graph
keeps whichever path was active.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager

_state = threading.local()


def fused_ops_enabled() -> bool:
    return getattr(_state, "enabled", False)


@contextmanager
def fused_ops(enabled: bool = True):
    """Run (or trace) the heads with the fused ops while the context is active."""
    if enabled:
        from . import library  # noqa: F401  (registers torch.ops.sam3edge.*)
    previous = fused_ops_enabled()
    _state.enabled = bool(enabled)
    try:
        yield
    finally:
        _state.enabled = previous
