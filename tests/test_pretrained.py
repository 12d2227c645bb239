"""Students start from pretrained backbone weights: a local file (air-gapped), or timm's where a hub is reachable."""

from __future__ import annotations

import pytest
import torch


def test_a_local_weights_file_loads_into_the_backbone_and_is_recorded(tmp_path):
    import timm
    from safetensors.torch import save_file

    from sam3edge.models.pretrained import load_pretrained_backbone
    from sam3edge.models.registry import create_student

    torch.manual_seed(3)
    full = timm.create_model("efficientvit_b0", pretrained=False)  # the full classifier's layout, as timm saves
    path = tmp_path / "b0.safetensors"
    save_file({k: v.contiguous() for k, v in full.state_dict().items()}, str(path))
    student = create_student("toy")
    before = {k: v.clone() for k, v in student.image_encoder.backbone.state_dict().items()}
    record = load_pretrained_backbone(student, str(path))
    after = student.image_encoder.backbone.state_dict()
    stem = next(k for k in after if k.endswith("weight") and after[k].dim() == 4)
    assert not torch.equal(before[stem], after[stem])
    same = [v for k, v in full.state_dict().items() if k.replace(".", "_") == stem.replace(".", "_")]
    assert len(same) == 1 and torch.equal(after[stem], same[0])
    assert record["source"] == "file" and record["file"] == str(path.resolve()) and len(record["sha256"]) == 64
    assert load_pretrained_backbone(create_student("toy"), str(path))["sha256"] == record["sha256"]

    other = tmp_path / "other.safetensors"  # another model's weights never load silently
    save_file({k: v.contiguous() for k, v in timm.create_model("resnet18").state_dict().items()}, str(other))
    with pytest.raises(ValueError, match="does not fit timm model 'efficientvit_b0'"):
        load_pretrained_backbone(create_student("toy"), str(other))


def test_timm_weights_without_a_hub_say_so_and_missing_files_are_refused_before_any_work(tmp_path, monkeypatch):
    import huggingface_hub.constants

    from sam3edge.distill.config import DistillConfig
    from sam3edge.models.pretrained import load_pretrained_backbone
    from sam3edge.models.registry import create_student

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # as on a robot: the hub cannot be reached
    # huggingface_hub reads the variable once, at import (timm was imported above): without this the call goes to
    # the network and fails after its retries (46 s here), the same error, slower
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # and nothing is cached
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    with pytest.raises(RuntimeError, match="cannot reach the hub.*pass the file"):
        load_pretrained_backbone(create_student("toy"), "timm")
    with pytest.raises(ValueError, match="backbone_weights='nope.pth'"):
        DistillConfig(teacher="t", images="i", concepts=["apple"], student="toy", out="o", backbone_weights="nope.pth")
