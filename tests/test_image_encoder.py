"""Student image encoder: SAM3's position encoding, the 3 head levels per timm family, uint8 input, weights."""

from __future__ import annotations

import pytest
import torch

from sam3edge.models.image_encoder import ImageEncoder, ImageFeatures
from sam3edge.models.position_encoding import sine_position_encoding

FAMILIES = ["repvit_m0_9", "repvit_m1_1", "efficientvit_b0", "efficientvit_b1", "tiny_vit_5m_224",
            "mobilenetv4_conv_small"]
WIDTH = 32


def test_position_encoding_equals_transformers_fpn_levels():
    from sam3edge.models.sam3_load import build_sam3, tiny_sam3_config

    model = build_sam3(tiny_sam3_config(image_size=56, vision_layers=1, vision_hidden=32, window_size=4))
    with torch.no_grad():
        out = model.get_vision_features(pixel_values=torch.randn(2, 3, 56, 56))
    assert len(out.fpn_position_encoding) == 4
    for level, pos in zip(out.fpn_hidden_states, out.fpn_position_encoding):
        ours = sine_position_encoding(*level.shape, dtype=level.dtype)
        assert ours.shape == pos.shape
        assert (ours - pos).abs().max().item() <= 1e-6


def test_position_encoding_puts_rows_before_columns_on_non_square_levels():
    from transformers.models.sam3.modeling_sam3 import Sam3SinePositionEmbedding

    ref = Sam3SinePositionEmbedding(num_position_features=32, normalize=True)((1, 64, 5, 9), "cpu", torch.float32)
    ours = sine_position_encoding(1, 64, 5, 9)
    assert (ours - ref).abs().max().item() <= 1e-6
    assert not torch.allclose(ours, sine_position_encoding(1, 64, 9, 5).transpose(2, 3))


def test_position_encoding_rejects_widths_not_multiple_of_4():
    with pytest.raises(ValueError, match="multiple of 4"):
        sine_position_encoding(1, 30, 4, 4)


@pytest.mark.parametrize("backbone", FAMILIES)
def test_encoder_gives_three_levels_at_strides_4_8_16_with_sam3_positions(backbone):
    torch.manual_seed(0)
    enc = ImageEncoder(backbone, width=WIDTH).eval()
    # every family here has strides 4, 8, 16, 32 (MobileNetV4 also 2, which must be skipped)
    assert enc.backbone_strides == [4, 8, 16, 32]
    assert enc.backbone.feature_info.reduction() == [4, 8, 16, 32]
    with torch.no_grad():
        feats = enc(torch.rand(1, 3, 64, 96))
    assert isinstance(feats, ImageFeatures)
    assert [tuple(x.shape) for x in feats.levels] == [(1, WIDTH, 16, 24), (1, WIDTH, 8, 12), (1, WIDTH, 4, 6)]
    for x, p in zip(feats.levels, feats.pos):
        assert torch.isfinite(x).all()
        assert torch.equal(p, sine_position_encoding(*x.shape))


def test_uint8_input_in_either_layout_equals_float_input():
    enc = ImageEncoder("efficientvit_b0", width=WIDTH).eval()
    img = torch.randint(0, 256, (2, 64, 64, 3), dtype=torch.uint8)
    with torch.no_grad():
        ref = enc(img.permute(0, 3, 1, 2).float() / 255)
        nhwc = enc.forward_uint8(img)
        nchw = enc.forward_uint8(img.permute(0, 3, 1, 2).contiguous())
        mean_only = enc(img.permute(0, 3, 1, 2).float())  # forgetting the /255 must show
    for a, b, c, d in zip(ref.levels, nhwc.levels, nchw.levels, mean_only.levels):
        assert torch.allclose(a, b, atol=1e-5) and torch.allclose(a, c, atol=1e-5)
        assert not torch.allclose(a, d, atol=1e-3)
    # normalisation is the backbone's ImageNet one, applied inside the module and saved with it
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        manual = enc.neck(enc.backbone((img.permute(0, 3, 1, 2).float() / 255 - mean) / std))
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(ref.levels, manual))
    assert "pixel_mean" in enc.state_dict() and "pixel_std" in enc.state_dict()


def test_uint8_path_exports_with_torch_export():
    class Uint8Graph(torch.nn.Module):  # as an export wrapper does: named tensors out, uint8 NHWC in
        def __init__(self, encoder):
            super().__init__()
            self.encoder = encoder

        def forward(self, image):
            feats = self.encoder.forward_uint8(image)
            return (*feats.levels, *feats.pos)

    graph = Uint8Graph(ImageEncoder("efficientvit_b0", width=WIDTH).eval())
    img = torch.randint(0, 256, (1, 64, 64, 3), dtype=torch.uint8)
    exported = torch.export.export(graph, (img,)).module()(img)
    with torch.no_grad():
        eager = graph(img)
    assert len(exported) == 6
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(exported, eager))


def test_sizes_not_multiple_of_32_are_rejected_with_a_hint():
    enc = ImageEncoder("efficientvit_b0", width=WIDTH)
    with pytest.raises(ValueError, match="multiple of 32.*96x64"):
        enc(torch.rand(1, 3, 80, 64))
    with pytest.raises(ValueError, match="uint8"):
        enc.forward_uint8(torch.rand(1, 64, 64, 3))


def test_backbone_without_stride_4_is_upsampled_in_the_neck():
    enc = ImageEncoder("repvit_m0_9", width=WIDTH, backbone_strides=(8, 16, 32)).eval()
    assert enc.backbone.feature_info.reduction() == [8, 16, 32]
    with torch.no_grad():
        feats = enc(torch.rand(1, 3, 64, 64))
    assert [x.shape[-1] for x in feats.levels] == [16, 8, 4]
    with pytest.raises(ValueError, match="strides"):
        ImageEncoder("repvit_m0_9", width=WIDTH, backbone_strides=(4, 16))


def test_width_must_suit_the_position_encoding():
    with pytest.raises(ValueError, match="multiple of 4"):
        ImageEncoder("efficientvit_b0", width=30)


def test_local_timm_checkpoint_is_loaded_and_a_foreign_one_refused(tmp_path):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(1)
    full = timm.create_model("efficientvit_b0", pretrained=False)  # classifier model, as timm's hub files
    save_file({k: v.contiguous() for k, v in full.state_dict().items()}, tmp_path / "b0.safetensors")
    # reference: timm's own loader from the same local file
    ref = timm.create_model("efficientvit_b0", pretrained=True, features_only=True,
                            pretrained_cfg_overlay=dict(file=str(tmp_path / "b0.safetensors"))).eval()
    loaded = ImageEncoder("efficientvit_b0", width=WIDTH, weights_path=tmp_path / "b0.safetensors").eval()
    torch.manual_seed(2)
    random = ImageEncoder("efficientvit_b0", width=WIDTH).eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        for a, b, c in zip(ref(x), loaded.backbone(x), random.backbone(x)):
            assert torch.allclose(a, b) and not torch.allclose(a, c)
    # a features-only state dict (e.g. a student's backbone) loads too, from a torch file
    torch.save(loaded.backbone.state_dict(), tmp_path / "backbone.pth")
    again = ImageEncoder("efficientvit_b0", width=WIDTH, weights_path=tmp_path / "backbone.pth")
    assert all(torch.equal(a, b) for a, b in zip(again.backbone.state_dict().values(),
                                                 loaded.backbone.state_dict().values()))
    with pytest.raises(ValueError, match="b0.safetensors.*does not fit timm model 'efficientvit_b1'"):
        ImageEncoder("efficientvit_b1", width=WIDTH, weights_path=tmp_path / "b0.safetensors")
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        ImageEncoder("efficientvit_b0", width=WIDTH, weights_path=tmp_path / "nope.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="could not read backbone weights .*junk.safetensors"):
        ImageEncoder("efficientvit_b0", width=WIDTH, weights_path=tmp_path / "junk.safetensors")
