"""Loading a transformers ``Sam3Model``'s head weights into our :class:`~sam3edge.models.heads.Sam3Heads`.

Our heads keep transformers' parameter names, so the conversion only selects the five head
prefixes (and drops the ``detector_model.`` prefix that ``Sam3VideoModel`` checkpoints add); its
value is in the checks: every tensor must exist and have the shape our config expects, and the
first one that does not is named with what to do about it.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

HEAD_PREFIXES = ("geometry_encoder.", "detr_encoder.", "detr_decoder.", "mask_decoder.", "dot_product_scoring.")
WRAPPER_PREFIXES = ("detector_model.",)


def heads_state_dict_from_sam3(sam3_state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The head tensors of a ``Sam3Model`` state dict, under :class:`Sam3Heads`' names.

    Vision trunk, text encoder and text projection entries are left out. Keys may carry the
    ``detector_model.`` prefix of a ``Sam3VideoModel`` checkpoint.
    """
    out = {}
    for name, tensor in sam3_state_dict.items():
        for wrapper in WRAPPER_PREFIXES:
            if name.startswith(wrapper):
                name = name[len(wrapper):]
        if name.startswith(HEAD_PREFIXES):
            out[name] = tensor
    return out


def load_sam3_heads(heads, sam3_state_dict: Mapping[str, torch.Tensor], strict: bool = True) -> None:
    """Copy a ``Sam3Model``'s head weights into ``heads`` (a :class:`Sam3Heads`), checking every tensor.

    Raises ValueError naming the first tensor (in ``heads``' order) whose shape differs, or, with
    ``strict``, the first one missing from or unexpected in the checkpoint. Nothing is copied
    unless every check passes. With ``strict=False`` missing tensors keep their current values
    (e.g. a student with more queries than the teacher) - shapes must still match.
    """
    source = heads_state_dict_from_sam3(sam3_state_dict)
    if not source:
        raise ValueError("the state dict holds no SAM3 head weights (no key starts with any of "
                         f"{', '.join(HEAD_PREFIXES)}); pass a transformers Sam3Model's state_dict()")
    fix = ("build the heads from the checkpoint's own config: Sam3Heads.from_sam3(model) or "
           "Sam3Heads(HeadsConfig.from_sam3_config(model.config))")
    target = heads.state_dict()
    for name, expected in target.items():
        if name not in source:
            if strict:
                raise ValueError(f"SAM3 checkpoint has no tensor {name!r} (expected shape {tuple(expected.shape)}); "
                                 f"{fix}, or pass strict=False to keep this tensor's current value")
            continue
        got = source[name]
        if tuple(got.shape) != tuple(expected.shape):
            raise ValueError(f"shape mismatch for {name!r}: our heads expect {tuple(expected.shape)}, the SAM3 "
                             f"checkpoint has {tuple(got.shape)}; {fix}")
    unexpected = [n for n in source if n not in target]
    if strict and unexpected:
        raise ValueError(f"SAM3 checkpoint has head tensor {unexpected[0]!r} that our heads lack "
                         f"({len(unexpected)} such); {fix}, or pass strict=False to ignore them")
    with torch.no_grad():
        for name, tensor in target.items():
            if name in source:
                tensor.copy_(source[name].to(device=tensor.device, dtype=tensor.dtype))
