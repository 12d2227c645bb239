"""Fast multi-concept heads: per-image work once per frame, a small per-concept part on a coarse grid.

SAM3's heads (:class:`~sam3edge.models.heads.Sam3Heads`) run a full-resolution pixel decoder and a
fusion encoder over every image token *per concept*: a robot asking for 16 concepts pays 16 of them.
Here the work splits where "once" meets "many":

per image (:meth:`FastHeads.image_context`, exported inside the image graph)
    * pixel embeddings [B, m, S/4, S/4], concept-agnostic: SAM3's pixel decoder (``mask_dim`` 0: the heads'
      width, starts from the teacher) or a narrow FPN (the image encoder's neck already gives the two fine
      levels at ``mask_dim`` channels, ``HeadsConfig.fpn_widths``; a 1x1 lateral brings the coarse level to
      it, top-down sum, a depthwise-separable 3x3 + GroupNorm + ReLU at strides 8 and 4);
    * grid tokens [B, C, g, g] at ``fusion_stride`` (16: the coarsest level through a 1x1 projection;
      32: that level pooled 2x2), where concepts meet the image.
per concept (:meth:`FastHeads.decode`; the prompt axis is the batch axis, one graph call for all)
    * fusion: ``encoder_layers`` pre-norm layers of cross-attention from the grid tokens to the prompt
      tokens + FFN (no self-attention over image tokens, the quadratic part SAM3 repeats per concept);
      with 0 layers the decoder attends to the frame's grid tokens, whose key / value projections then run
      once per frame for every prompt (the concept reaches the queries through their text cross-attention);
    * SAM3's DETR decoder (queries, presence token, BoxRPB, box refinement) and dot-product scoring on
      the fused grid; their parameter names are SAM3's, so they start from a teacher where widths match;
    * masks for the top-K queries only: a query's mask embedding (3-layer MLP to ``mask_dim``) dotted with
      the shared pixel embeddings ("prototype", as YOLACT / Mask2Former); with ``mask_mode="coarse"``
      plus a second embedding dotted with the *fused* grid tokens and upsampled, so concept-dependent
      image evidence reaches the mask without a per-concept pixel decoder.

:class:`FastHeads` keeps :class:`Sam3Heads`' call (``forward`` / ``forward_topk`` on FPN levels) so
distillation, evaluation and export treat both alike.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sam3edge.models.heads.outputs import HeadOutputs
from sam3edge.models.heads_config import HeadsConfig

from .attention import Attention, padding_bias
from .detr_decoder import DetrDecoder
from .fusion_encoder import FusionEncoderLayer
from .geometry_encoder import GeometryEncoder
from .layers import MLP, FeedForward, check_text, cxcywh_to_xyxy
from .mask_decoder import MaskEmbedder, PixelDecoder
from .scoring import DotProductScoring


class SeparableConv(nn.Sequential):
    """Depthwise 3x3 + pointwise 1x1 + GroupNorm(8) + ReLU: ~1/8 of a dense 3x3's cost at these widths."""

    def __init__(self, dim: int):
        super().__init__(nn.Conv2d(dim, dim, 3, padding=1, groups=dim), nn.Conv2d(dim, dim, 1), nn.GroupNorm(8, dim),
                         nn.ReLU())


class NarrowPixelDecoder(nn.Module):
    """FPN levels of ``cfg.fpn_widths`` channels at S/4 .. S/16 (fine to coarse) -> pixel features [B, m, S/4, S/4]
    with m < C: 1x1 laterals to m channels (none where a level already has m), top-down sum, a separable 3x3
    at strides 8 and 4."""

    def __init__(self, cfg: HeadsConfig):
        super().__init__()
        m = cfg.pixel_dim
        self.lateral = nn.ModuleList([nn.Identity() if c == m else nn.Conv2d(c, m, 1) for c in cfg.fpn_widths])
        self.refine = nn.ModuleList([SeparableConv(m) for _ in range(2)])

    def forward(self, levels: list[torch.Tensor]) -> torch.Tensor:
        x = self.lateral[2](levels[2])
        for i, conv in zip((1, 0), self.refine):
            x = conv(self.lateral[i](levels[i]) + F.interpolate(x, size=levels[i].shape[-2:], mode="nearest"))
        return x


def outside_box_axes(boxes: torch.Tensor, h: int, w: int, grow: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """boxes [N, K, 4] normalised xyxy -> (dy [N, K, h], dx [N, K, w]): each pixel row's (column's) centre distance
    (normalised units) outside its box grown by ``grow`` of its size + 2 pixels per side; 0 inside. Continuous in
    the box, so exported graphs agree with PyTorch at the edges. :func:`outside_box` is their sum over the grid."""
    x0, y0, x1, y1 = boxes.unbind(-1)
    mx = grow * (x1 - x0).abs() + 2.0 / w
    my = grow * (y1 - y0).abs() + 2.0 / h
    xs = (torch.arange(w, dtype=boxes.dtype, device=boxes.device) + 0.5) / w
    ys = (torch.arange(h, dtype=boxes.dtype, device=boxes.device) + 0.5) / h
    dx = torch.relu((x0 - mx)[..., None] - xs) + torch.relu(xs - (x1 + mx)[..., None])  # [N, K, w]
    dy = torch.relu((y0 - my)[..., None] - ys) + torch.relu(ys - (y1 + my)[..., None])  # [N, K, h]
    return dy, dx


def outside_box(boxes: torch.Tensor, h: int, w: int, grow: float = 0.1) -> torch.Tensor:
    """boxes [N, K, 4] normalised xyxy -> [N, K, h, w]: each pixel centre's distance outside its grown box (L1 over
    the axes; see :func:`outside_box_axes`); 0 inside."""
    dy, dx = outside_box_axes(boxes, h, w, grow)
    return dy[..., :, None] + dx[..., None, :]


class FusionLayer(nn.Module):
    """Pre-norm cross-attention from grid tokens to prompt tokens, then FFN (names as SAM3's fusion layer)."""

    def __init__(self, cfg: HeadsConfig):
        super().__init__()
        d = cfg.hidden_size
        self.cross_attn = Attention(d, cfg.encoder_heads)
        self.layer_norm2 = nn.LayerNorm(d)
        self.dropout = nn.Dropout(cfg.dropout)
        self.mlp = FeedForward(d, cfg.encoder_ffn_size, cfg.activation, cfg.ffn_dropout)
        self.layer_norm3 = nn.LayerNorm(d)

    def forward(self, image: torch.Tensor, prompt: torch.Tensor, prompt_bias: torch.Tensor) -> torch.Tensor:
        """image [N, HW, C], prompt [N, P, C], prompt_bias [N, 1, 1, P] -> [N, HW, C]."""
        image = image + self.dropout(self.cross_attn(self.layer_norm2(image), prompt, prompt, prompt_bias))
        return image + self.dropout(self.mlp(self.layer_norm3(image)))


class FastFusion(nn.Module):
    """``encoder_layers`` fusion layers on the grid tokens: cross-attention only (:class:`FusionLayer`) or, with
    ``fusion_self_attention``, SAM3's own layer (self-attention among grid tokens first; teacher-initialised)."""

    def __init__(self, cfg: HeadsConfig):
        super().__init__()
        self.self_attention = cfg.fusion_self_attention
        layer = FusionEncoderLayer if self.self_attention else FusionLayer
        self.layers = nn.ModuleList([layer(cfg) for _ in range(cfg.encoder_layers)])

    def forward(self, tokens: torch.Tensor, pos: torch.Tensor, prompt: torch.Tensor,
                prompt_bias: torch.Tensor) -> torch.Tensor:
        """tokens [N, HW, C], pos [1 or N, HW, C], prompt [N, P, C], prompt_bias [N, 1, 1, P] -> [N, HW, C]."""
        for layer in self.layers:
            if self.self_attention:
                tokens = layer(tokens, pos.expand(tokens.shape[0], -1, -1), prompt, prompt_bias)
            else:
                tokens = layer(tokens, prompt, prompt_bias)
        return tokens


class FastMasks(nn.Module):
    """The mask path. Per image: pixel embeddings (:meth:`pixels`). Per concept: the top-K queries' mask
    embeddings dotted with them, plus (``coarse``) a second embedding dotted with the fused grid, upsampled.

    At ``mask_dim == hidden_size`` the pixel path is SAM3's own pixel decoder + instance projection (names and
    shapes as SAM3's, so it starts from the teacher) run once per frame instead of once per concept;
    narrower, it is :class:`NarrowPixelDecoder` (trained by stage 2).
    """

    def __init__(self, cfg: HeadsConfig):
        super().__init__()
        d, m = cfg.hidden_size, cfg.pixel_dim
        self.mode = cfg.mask_mode
        self.box_prior = float(cfg.box_prior)
        self.pixel_decoder = PixelDecoder(cfg) if m == d else NarrowPixelDecoder(cfg)
        self.instance_projection = nn.Conv2d(m, m, kernel_size=1)
        self.mask_embedder = MaskEmbedder(cfg, out_dim=m)
        self.semantic_embedder = nn.Linear(d, m)
        if self.mode == "coarse":
            self.coarse_embedder = MLP(d, d, d, num_layers=2)
            with torch.no_grad():  # starts silent: a teacher-initialised prototype path is not disturbed at step 0
                self.coarse_embedder.layer2.weight.zero_()
                self.coarse_embedder.layer2.bias.zero_()

    def pixels(self, levels: list[torch.Tensor]) -> torch.Tensor:
        """FPN levels (fine to coarse) -> projected pixel embeddings [B, m, S/4, S/4]; concept-agnostic."""
        return self.instance_projection(self.pixel_decoder(levels))

    def masks(self, queries: torch.Tensor, pixels: torch.Tensor, grid: torch.Tensor | None,
              boxes: torch.Tensor | None = None) -> torch.Tensor:
        """queries [N, K, C]; pixels [N or 1, m, H, W]; grid [N, C, g, g] fused tokens; boxes [N, K, 4] the queries'
        normalised xyxy boxes (used with ``box_prior``) -> logits [N, K, H, W]."""
        logits = torch.matmul(self.mask_embedder(queries), pixels.flatten(2)).unflatten(-1, pixels.shape[-2:])
        if self.mode == "coarse":
            coarse = torch.matmul(self.coarse_embedder(queries), grid.flatten(2)).unflatten(-1, grid.shape[-2:])
            logits = logits + F.interpolate(coarse, size=pixels.shape[-2:], mode="bilinear", align_corners=False)
        if self.box_prior and boxes is not None:
            # Two broadcast subtractions of the scaled per-axis terms, never the [N, K, H, W] distance map itself:
            # at 16 concepts x 20 masks x 128^2 each full-size op costs the ONNX graph ~4 ms.
            dy, dx = outside_box_axes(boxes.detach(), *pixels.shape[-2:])
            logits = logits - (self.box_prior * dy)[..., :, None] - (self.box_prior * dx)[..., None, :]
        return logits

    def semantic(self, pooled: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
        """pooled prompt [N, C], pixels [N or 1, m, H, W] -> semantic logits [N, 1, H, W]."""
        return torch.matmul(self.semantic_embedder(pooled)[:, None], pixels.flatten(2)).unflatten(-1, pixels.shape[-2:])


class FastHeads(nn.Module):
    """See the module docstring. Same calls as :class:`~sam3edge.models.heads.Sam3Heads`."""

    def __init__(self, config: HeadsConfig):
        super().__init__()
        if config.head_type != "fast":
            raise ValueError(f"FastHeads needs HeadsConfig(head_type='fast'), got {config.head_type!r}")
        self.config = config
        d, e = config.hidden_size, config.in_width
        self.grid_proj = nn.Conv2d(e, d, 1)
        if e == d:
            with torch.no_grad():  # starts as the identity: teacher-initialised fusion and decoder see what they know
                self.grid_proj.weight.copy_(torch.eye(d)[:, :, None, None])
                self.grid_proj.bias.zero_()
        # A decoder narrower than its inputs (input_dim): prompt tokens are projected on entry, once per concept.
        self.prompt_proj = nn.Linear(e, d) if e != d else None
        self.geometry_encoder = GeometryEncoder(config)
        # Exemplar tokens live where text tokens do (in_width wide), so a graph's ``text`` input carries both and a
        # stored visual concept is a concept-cache entry like any phrase; the decoder projects them with the text.
        self.exemplar_proj = nn.Linear(d, e) if e != d else None
        self.detr_encoder = FastFusion(config)
        self.detr_decoder = DetrDecoder(config)
        self.dot_product_scoring = DotProductScoring(config)
        self.mask_decoder = FastMasks(config)

    # ---- per image ---------------------------------------------------------------------------------
    def image_context(self, levels: list[torch.Tensor], pos: list[torch.Tensor]
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """FPN levels / positions (fine to coarse) of B images -> pixel embeddings [B, m, S/4, S/4], grid tokens
        [B, C, g, g] and their position encoding [B, C, g, g] (g = S / fusion_stride)."""
        grid = self.grid_proj(levels[-1])
        if self.config.fusion_stride == 32:
            grid = F.avg_pool2d(grid, 2)
        return self.mask_decoder.pixels(levels), grid, self.grid_position(pos[-1])

    def grid_position(self, coarse_pos: torch.Tensor) -> torch.Tensor:
        """The coarsest level's position encoding [B, in_width, S/16, S/16] -> the fusion grid's [B, C, g, g]: pooled
        as the grid is (the same sine encoding at the heads' own width where that differs from the level's)."""
        if self.config.in_width != self.config.hidden_size:
            from sam3edge.models.position_encoding import sine_position_encoding

            coarse_pos = sine_position_encoding(coarse_pos.shape[0], self.config.hidden_size, *coarse_pos.shape[-2:],
                                                dtype=coarse_pos.dtype, device=coarse_pos.device)
        return F.avg_pool2d(coarse_pos, 2) if self.config.fusion_stride == 32 else coarse_pos

    # ---- per concept -------------------------------------------------------------------------------
    def exemplar_tokens(self, grid: torch.Tensor, grid_pos: torch.Tensor, boxes: torch.Tensor,
                        labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Exemplar boxes [N, K, 4] (normalised cxcywh; labels [N, K]: 1 positive, 0 negative, -10 padding, None =
        all positive) on one frame's grid / grid_pos [1 or N, C, g, g] -> prompt tokens [N, K + 1, in_width] and
        their mask [N, K + 1]: the text tokens' space, appended to them as SAM3 appends its geometry tokens."""
        tokens, mask = self.geometry_encoder.prompt_tokens(boxes, labels, grid, grid_pos)
        return (tokens if self.exemplar_proj is None else self.exemplar_proj(tokens)), mask

    def decode(self, grid: torch.Tensor, grid_pos: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor,
               input_boxes: torch.Tensor | None = None, input_boxes_labels: torch.Tensor | None = None):
        """grid, grid_pos [N or 1, C, g, g] (one frame's grid serves all N prompts); text [N, L, C], text_mask [N, L]
        -> (queries [L, N, Q, C], boxes [L, N, Q, 4] cxcywh, presence logits [L, N, 1], prompt, prompt_mask,
        fused grid [N, C, g, g], or the shared grid [1, C, g, g] with no fusion layers)."""
        prompt, prompt_mask = text, text_mask.bool()
        if input_boxes is not None and input_boxes.shape[1] > 0:
            geo, geo_mask = self.exemplar_tokens(grid, grid_pos, input_boxes, input_boxes_labels)
            prompt, prompt_mask = torch.cat([prompt, geo], dim=1), torch.cat([prompt_mask, geo_mask], dim=1)
        if self.prompt_proj is not None:
            prompt = self.prompt_proj(prompt)
        bias = padding_bias(prompt_mask, prompt.dtype)
        h, w = grid.shape[-2:]
        tokens = grid.flatten(2).transpose(1, 2)
        pos = grid_pos.flatten(2).transpose(1, 2)
        if len(self.detr_encoder.layers):  # per-concept fusion: each prompt gets its own image tokens
            tokens = self.detr_encoder(tokens.expand(prompt.shape[0], -1, -1), pos, prompt, bias)
        queries, boxes, presence = self.detr_decoder(tokens, pos, h, w, prompt, bias)
        fused = tokens.transpose(1, 2).unflatten(-1, (h, w))
        return queries, boxes, presence, prompt, prompt_mask, fused

    def _check(self, fpn_features, text_features, text_mask) -> None:
        widths = self.config.fpn_widths
        if len(fpn_features) != 3 or any(f.dim() != 4 or f.shape[1] != c for f, c in zip(fpn_features, widths)):
            raise ValueError(f"fpn_features must be 3 levels [N, C, H, W] with C = {widths}, got "
                             f"{[tuple(f.shape) for f in fpn_features]}")
        check_text(text_features, text_mask, self.config.in_width)

    def forward(self, fpn_features: list[torch.Tensor], fpn_pos: list[torch.Tensor], text_features: torch.Tensor,
                text_mask: torch.Tensor, input_boxes: torch.Tensor | None = None,
                input_boxes_labels: torch.Tensor | None = None) -> HeadOutputs:
        """N (image, prompt) pairs, as :meth:`Sam3Heads.forward` (training: every query, every decoder layer)."""
        self._check(fpn_features, text_features, text_mask)
        pixels, grid, grid_pos = self.image_context(list(fpn_features), list(fpn_pos))
        queries, boxes, presence, prompt, prompt_mask, fused = self.decode(grid, grid_pos, text_features, text_mask,
                                                                           input_boxes, input_boxes_labels)
        scoring = self.dot_product_scoring
        pooled = scoring.pooled_prompt(prompt, prompt_mask)
        logits = scoring.score(queries, pooled)
        xyxy = cxcywh_to_xyxy(boxes)
        return HeadOutputs(
            logits=logits[-1], boxes=xyxy[-1], presence_logits=presence[-1],
            mask_logits=self.mask_decoder.masks(queries[-1], pixels, fused, xyxy[-1]),
            semantic_logits=self.mask_decoder.semantic(pooled, pixels),
            aux_logits=logits, aux_boxes=xyxy, aux_presence_logits=presence,
            prompt_boxes=input_boxes, prompt_labels=input_boxes_labels,
        )

    def topk_from_context(self, pixels: torch.Tensor, grid: torch.Tensor, grid_pos: torch.Tensor,
                          text: torch.Tensor, text_mask: torch.Tensor, k: int):
        """The export path: one frame's context (pixels [1, m, H, W], grid / grid_pos [1, C, g, g]) x P prompts
        -> :class:`~sam3edge.models.heads.TopKOutputs` [P, k ...]; masks only for the k best queries."""
        from . import TopKOutputs

        q = self.config.num_queries
        if not 1 <= k <= q:
            raise ValueError(f"k={k} must be between 1 and num_queries={q}")
        queries, boxes, presence, prompt, prompt_mask, fused = self.decode(grid, grid_pos, text, text_mask)
        scoring = self.dot_product_scoring
        logits = scoring.score(queries[-1], scoring.pooled_prompt(prompt, prompt_mask))
        prob = presence[-1].sigmoid()
        scores, idx = (logits.sigmoid() * prob).topk(k, dim=1)
        top = queries[-1].gather(1, idx[..., None].expand(-1, -1, queries.shape[-1]))
        top_boxes = cxcywh_to_xyxy(boxes[-1].gather(1, idx[..., None].expand(-1, -1, 4)))
        masks = self.mask_decoder.masks(top, pixels, fused, top_boxes)
        return TopKOutputs(scores=scores, boxes=top_boxes, mask_logits=masks, presence=prob, indices=idx)

    def forward_topk(self, fpn_features: list[torch.Tensor], fpn_pos: list[torch.Tensor], text_features: torch.Tensor,
                     text_mask: torch.Tensor, input_boxes: torch.Tensor | None = None,
                     input_boxes_labels: torch.Tensor | None = None, k: int = 10):
        """As :meth:`Sam3Heads.forward_topk` (N pairs, each with its own levels)."""
        self._check(fpn_features, text_features, text_mask)
        if input_boxes is not None:
            raise ValueError("FastHeads.forward_topk takes text prompts only; exemplar boxes go through forward()")
        pixels, grid, grid_pos = self.image_context(list(fpn_features), list(fpn_pos))
        out = [self.topk_from_context(pixels[i:i + 1], grid[i:i + 1], grid_pos[i:i + 1], text_features[i:i + 1],
                                      text_mask[i:i + 1], k) for i in range(text_features.shape[0])]
        return type(out[0])(*(torch.cat(t) for t in zip(*out)))
