"""Initialisations that make DETR-style heads trainable from scratch in minutes, not days.

transformers initialises SAM3's decoder reference boxes near zero, so every query starts at the
image centre with the same box (sigmoid(0) = 0.5) and weight decay keeps them there: measured on
the orchard toy teacher, after 1000 steps all 16 reference boxes were still within 0.02 of
(0.5, 0.5, 0.5, 0.5) and box GIoU had stalled at ~0.13. Spreading the queries over a grid gives each
one a region to specialise in (as anchor-based detectors do), and the refinement layers only
learn local offsets.
"""

from __future__ import annotations

import math

import torch


@torch.no_grad()
def grid_reference_boxes(num_queries: int, box_size: float = 0.2) -> torch.Tensor:
    """Inverse-sigmoid cxcywh boxes [Q, 4] whose centres tile the image on a ceil(sqrt(Q)) grid."""
    side = math.ceil(math.sqrt(num_queries))
    ys, xs = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    centres = (torch.stack([xs.flatten(), ys.flatten()], 1).float() + 0.5) / side
    boxes = torch.cat([centres[:num_queries], torch.full((num_queries, 2), box_size)], 1)
    return torch.logit(boxes.clamp(1e-3, 1 - 1e-3))


@torch.no_grad()
def init_sam3_reference_grid(sam3_model, box_size: float = 0.2) -> None:
    """Set a transformers ``Sam3Model``'s decoder reference boxes to :func:`grid_reference_boxes`."""
    emb = sam3_model.detr_decoder.reference_points.weight
    emb.copy_(grid_reference_boxes(emb.shape[0], box_size).to(emb))


HEAD_MODULES = ("geometry_encoder", "detr_encoder", "detr_decoder", "mask_decoder", "dot_product_scoring",
                "text_projection")


@torch.no_grad()
def xavier_init_heads(sam3_model) -> int:
    """Re-initialise the heads' linear layers with Xavier-uniform weights and zero biases.

    transformers draws them from N(0, 0.02), the right scale for *loading* weights, but at width 64 it
    makes every attention map nearly uniform: measured on the toy config, query/key projection
    gradients in the decoder's cross-attention were ~1e-5 against ~3e-2 for values, so queries could
    not learn where to look. DETR trains from Xavier for this reason. Layers that transformers
    initialised to exactly zero (box-refinement outputs) stay zero; query contents are redrawn from
    N(0, 1). Returns the number of linear layers changed.
    """
    changed = 0
    for prefix in HEAD_MODULES:
        module = getattr(sam3_model, prefix)
        for m in module.modules() if isinstance(module, torch.nn.Module) else []:
            if isinstance(m, torch.nn.Linear) and m.weight.abs().max() > 0:
                torch.nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    torch.nn.init.zeros_(m.bias)
                changed += 1
    # Query contents drawn N(0, 1) as DETR's nn.Embedding does: at N(0, 0.02) every query starts with
    # the same (near-zero) content and, measured at step 1250 of a toy-teacher run, all 16 queries still
    # gave identical logits and identical masks (the phrase's semantic mask) - a collapsed solution.
    torch.nn.init.normal_(sam3_model.detr_decoder.query_embed.weight, std=1.0)
    return changed


@torch.no_grad()
def sincos_position_embeddings(num_patches: int, dim: int, amplitude: float = 1.0) -> torch.Tensor:
    """Fixed 2-D sin-cos position embeddings [1, num_patches, dim] (MAE style) on a square patch grid."""
    side = math.isqrt(num_patches)
    if side * side != num_patches or dim % 4:
        raise ValueError(f"need a square patch grid and dim % 4 == 0, got {num_patches} patches, dim {dim}")
    ys, xs = torch.meshgrid(torch.arange(side).float(), torch.arange(side).float(), indexing="ij")
    q = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(q).float() / q)
    x, y = xs.flatten()[:, None] * omega, ys.flatten()[:, None] * omega
    return amplitude * torch.cat([x.sin(), x.cos(), y.sin(), y.cos()], 1)[None]


@torch.no_grad()
def init_vit_position_sincos(sam3_model, amplitude: float = 0.5) -> None:
    """Start the SAM3 ViT's absolute position embeddings from 2-D sin-cos instead of N(0, 0.02).

    SAM3's ViT also uses RoPE, which is relative: with near-zero absolute embeddings its features are
    translation-equivariant, so two identical apples get identical pixel embeddings and no query's
    mask embedding can pick one of them (masks are a dot product). Measured on the orchard toy
    teacher: every query converged to the phrase's semantic mask. Absolute position from step 0
    lets queries separate instances by where they are.
    """
    pe = sam3_model.vision_encoder.backbone.embeddings.position_embeddings
    pe.copy_(sincos_position_embeddings(pe.shape[1], pe.shape[2], amplitude).to(pe))


@torch.no_grad()
def init_rpb_locality(sam3_model, strength: float = 12.0) -> None:
    """Initialise the decoder's box relative-position-bias MLPs to a locality prior.

    Each MLP maps a pixel's (log-scaled) offsets from a box's two edges to per-head attention biases.
    Two hidden units measure how far the pixel lies outside the box (relu(-d0), relu(d1)) and the
    output adds ``-strength`` times that to every head, so from step 0 a query looks inside its
    reference box and its surroundings rather than at the whole image. Other hidden units start
    silent (zero output weights) and are free to learn.
    """
    dec = sam3_model.detr_decoder
    for mlp in (dec.box_rpb_embed_x, dec.box_rpb_embed_y):
        mlp.layer1.weight[:2].zero_()
        mlp.layer1.bias[:2].zero_()
        mlp.layer1.weight[0, 0] = -1.0
        mlp.layer1.weight[1, 1] = 1.0
        mlp.layer2.weight.zero_()
        mlp.layer2.bias.zero_()
        mlp.layer2.weight[:, :2] = -strength
