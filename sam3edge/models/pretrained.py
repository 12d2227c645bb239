"""Starting a student's backbone from pretrained weights: a local file, or timm's own where a hub is reachable.

Students are built with random backbones (``pretrained=False``: nothing downloads at run time). A run may start
the backbone from

* a local file (``.safetensors``, ``.pth`` / ``.bin``) of the same timm model, in timm's layout (the full
  classifier's or a features-only one), as robots and air-gapped machines need;
* ``"timm"``: timm's default pretrained weights for the model, fetched from the Hugging Face hub. Only where the
  hub is reachable; otherwise the error says so and how to get a file instead.

Either way the source and the sha256 of the weights are recorded in the run's report.
"""

from __future__ import annotations

import hashlib
from pathlib import Path


def _digest(state: dict) -> str:
    h = hashlib.sha256()
    for name in sorted(state):
        h.update(name.encode())
        h.update(state[name].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def load_pretrained_backbone(student, source: str) -> dict:
    """Load ``source`` ("timm" or a weights file) into ``student.image_encoder.backbone``; returns what was loaded:
    ``{"source", "file" or "hub_id", "sha256" (of the loaded backbone tensors)}``."""
    from sam3edge.models.image_encoder import load_backbone_weights

    encoder = student.image_encoder
    name = encoder.backbone_name
    if source == "timm":
        record = {"source": "timm", "hub_id": _timm_hub_id(name)}
        state = _timm_pretrained_state(name)
        own = encoder.backbone.state_dict()
        missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
        if missing:
            raise ValueError(f"timm's pretrained {name!r} lacks {len(missing)} backbone tensors (e.g. {missing[:3]})")
        encoder.backbone.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"backbone weights {source!r}: no such file; pass a local .safetensors / .pth of "
                                    f"timm model {name!r}, or 'timm' where the Hugging Face hub is reachable")
        load_backbone_weights(encoder.backbone, path, name)
        record = {"source": "file", "file": str(path.resolve())}
    record["sha256"] = _digest(encoder.backbone.state_dict())
    return record


def _timm_hub_id(name: str) -> str | None:
    import timm

    cfg = timm.models.get_pretrained_cfg(name)
    return getattr(cfg, "hf_hub_id", None) if cfg is not None else None


def _timm_pretrained_state(name: str) -> dict:
    """The features-only state dict of timm's pretrained ``name``, or a RuntimeError saying the hub is unreachable."""
    import timm

    try:
        model = timm.create_model(name, pretrained=True, features_only=True)
    except Exception as e:  # huggingface_hub / urllib raise many types when offline
        hub = _timm_hub_id(name) or name
        raise RuntimeError(
            f"could not fetch timm's pretrained weights for {name!r} from the Hugging Face hub ({hub}): "
            f"{type(e).__name__}: {str(e)[:200]}. This machine cannot reach the hub: download the weights where it "
            "can (e.g. timm.create_model(name, pretrained=True) and save its state_dict with safetensors) and pass "
            "the file instead of 'timm'") from e
    return model.state_dict()
