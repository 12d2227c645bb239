"""The student registry: named :class:`StudentSpec` entries and the one door to build them.

    create_student("edge-s")                       # a Sam3Student, random weights, eval mode
    create_student("edge-s", input_size=640, num_queries=80, text_mode="encoder")
    list_students()                                # registry names, in registration order

A new size is one ``@register_student`` function returning a spec. Entries:

* ``toy`` - for the bundled orchard toy teacher (``benchmarks/train_toy_teacher.py``): its heads
  are exactly the teacher's (width 64, 4 attention heads, 2 fusion-encoder and 3 decoder layers,
  16 queries), so they start from the teacher's weights. Input 256 px, so its S/16 grid is the
  teacher's 16 x 16 token grid (224 px / patch 14): the teacher's heads, fed the teacher's own
  features resampled to a 14 x 14 grid (a 224 px student), keep only 81 % of its cgF1; on the
  matching grid 100 % (``benchmarks/grid_oracle.py``).
* ``edge-s`` / ``edge-m`` / ``edge-l`` - for the real SAM3 (``facebook/sam3``): head width 256, 8
  attention heads and SAM3's FFN widths, so every kept tensor loads from SAM3 (the first layers
  and the first queries, see :func:`~sam3edge.models.student.init_heads_from_teacher`), with fewer
  layers and queries than SAM3's 6 / 6 / 200 and inputs of 512-768 px instead of 1008. At width
  256 the heads cannot go much below ~12 M parameters: SAM3's exemplar ROI projection (3.2 M),
  mask decoder (2.3 M) and scoring MLP (1.2 M) have no layer count to cut.
* ``toy-fast`` / ``edge-s-fast`` / ``edge-m-fast`` / ``edge-l-fast`` - the same encoders with fast
  multi-concept heads (:class:`~sam3edge.models.heads.fast.FastHeads`): pixel embeddings once per frame,
  each concept only fused on a coarse grid, decoded and given top-K masks, so a frame's cost grows slowly
  with the number of concepts. Their fusion / decoder / scoring tensors keep SAM3's names and start from
  the teacher where shapes allow; the pixel path is new and trained by stage 2.
* ``efficientsam3-style`` - the approach of EfficientSAM3 (arXiv 2511.15833) for comparison: a
  timm encoder in front of SAM3's full-size heads (6 + 6 layers, 200 queries).
"""

from __future__ import annotations

from collections.abc import Callable

from sam3edge.models.heads_config import HeadsConfig
from sam3edge.models.student_spec import ExportDefaults, StudentSpec, TextEncoderConfig

__all__ = ["STUDENTS", "StudentSpec", "create_student", "get_student_spec", "list_students", "register_student"]

STUDENTS: dict[str, StudentSpec] = {}


def register_student(entry: Callable[[], StudentSpec] | StudentSpec):
    """Register a spec, or (as a decorator) the spec a zero-argument function returns, under ``spec.name``.

    Returns its argument unchanged. A name registered twice is a ValueError (an entry would be lost).
    """
    spec = entry() if callable(entry) else entry
    if not isinstance(spec, StudentSpec):
        raise TypeError(f"register_student expects a StudentSpec (or a function returning one), got {type(spec)}")
    if spec.name in STUDENTS:
        raise ValueError(f"a student named {spec.name!r} is already registered; pick another name")
    STUDENTS[spec.name] = spec
    return entry


def list_students() -> list[str]:
    """Registered student names, in registration order."""
    return list(STUDENTS)


def get_student_spec(name: str, **overrides) -> StudentSpec:
    """The spec of ``name`` with flat ``overrides`` (see ``StudentSpec.override_keys``) applied."""
    if name not in STUDENTS:
        raise ValueError(f"unknown student {name!r}; registered students: {', '.join(STUDENTS)}")
    return STUDENTS[name].with_overrides(**overrides)


def create_student(name: str, concepts=None, **overrides):
    """A :class:`~sam3edge.models.student.Sam3Student` of registry entry ``name`` (random weights, eval mode).

    concepts: an optional :class:`~sam3edge.runtime.concepts.ConceptCache` for text mode "cache".
    overrides: flat spec fields, e.g. ``input_size=640``, ``num_queries=80``, ``text_mode="encoder"``,
    ``text_layers=2``, ``export_top_k=5``. Raises ValueError for an unknown name (listing the
    registered ones), an unknown override key, or an input size that is not a multiple of 32.
    """
    from sam3edge.models.student import Sam3Student

    return Sam3Student(get_student_spec(name, **overrides), concepts=concepts, overrides=overrides).eval()


def _sam3_heads(**sizes) -> HeadsConfig:
    # SAM3's widths (hidden 256, 8 heads, FFN 2048, ROI 7) so each kept tensor has SAM3's shape.
    return HeadsConfig(**sizes)


@register_student
def _toy() -> StudentSpec:
    heads = HeadsConfig(hidden_size=64, geometry_layers=1, geometry_heads=4, geometry_ffn_size=256,
                        encoder_layers=2, encoder_heads=4, encoder_ffn_size=256, decoder_layers=3, decoder_heads=4,
                        decoder_ffn_size=256, num_queries=16, mask_heads=4)
    return StudentSpec(
        name="toy", backbone="efficientvit_b0", input_size=256, heads=heads,
        text_encoder=TextEncoderConfig(width=64, layers=2, heads=4),  # the toy teacher's text width: its table copies
        text_mode="cache", export=ExportDefaults(precision="fp32", top_k=10), teacher="orchard-toy",
        description="orchard toy teacher's heads (64 wide, 2+3 layers, 16 queries) on EfficientViT-B0, "
                    "256 px (the teacher's 16x16 grid)")


@register_student
def _edge_s() -> StudentSpec:
    return StudentSpec(
        name="edge-s", backbone="mobilenetv4_conv_small", input_size=512,
        heads=_sam3_heads(geometry_layers=1, encoder_layers=1, decoder_layers=3, num_queries=50),
        text_encoder=TextEncoderConfig(width=256, layers=3, heads=4), text_mode="both",
        export=ExportDefaults(precision="int8", top_k=20), teacher="facebook/sam3",
        description="all-conv MobileNetV4 (int8-friendly) + 1+3-layer SAM3 heads, 50 queries, 512 px")


@register_student
def _edge_m() -> StudentSpec:
    return StudentSpec(
        name="edge-m", backbone="efficientvit_b1", input_size=640,
        heads=_sam3_heads(geometry_layers=1, encoder_layers=2, decoder_layers=4, num_queries=100),
        text_encoder=TextEncoderConfig(width=384, layers=4, heads=6), text_mode="both",
        export=ExportDefaults(precision="fp16", top_k=20), teacher="facebook/sam3",
        description="EfficientViT-B1 + 2+4-layer SAM3 heads, 100 queries, 640 px")


@register_student
def _edge_l() -> StudentSpec:
    return StudentSpec(
        name="edge-l", backbone="repvit_m1_1", input_size=768,
        heads=_sam3_heads(geometry_layers=1, encoder_layers=3, decoder_layers=4, num_queries=150),
        text_encoder=TextEncoderConfig(width=512, layers=6, heads=8), text_mode="both",
        export=ExportDefaults(precision="fp16", top_k=30), teacher="facebook/sam3",
        description="RepViT-M1.1 + 3+4-layer SAM3 heads, 150 queries, 768 px")


def _fast(base: str, **sizes) -> StudentSpec:
    """Registry entry ``base`` with fast heads (``sizes`` override its HeadsConfig)."""
    import dataclasses

    spec = STUDENTS[base]
    heads = dataclasses.replace(spec.heads, head_type="fast", **sizes)
    return dataclasses.replace(spec, name=f"{base}-fast", heads=heads,
                               description=f"{spec.backbone} + fast multi-concept heads ({heads.encoder_layers} fusion "
                                           f"+ {heads.decoder_layers} decoder layers at stride {heads.fusion_stride}, "
                                           f"width {heads.hidden_size}, "
                                           f"{heads.num_queries} queries, {heads.pixel_dim}-channel shared pixel "
                                           f"embeddings), {spec.input_size} px")


# toy: the teacher's pixel decoder, once per frame; 2 fusion layers of cross-attention only (the teacher's
# self-attention over the grid, per concept, bought nothing: 100.1 % with it, 100.8 % without, seed 777); concept
# evidence reaches masks through the fused grid ("coarse": 62-69 % of the teacher's cgF1 against 59-65 % for
# prototype masks) and each mask is held to its query's box (box_prior: 64.7 % -> 100 %; 102-104 % on seeds
# 4242 / 9001 / 31337; benchmarks/results/*toy-fast*.md).
BOX_PRIOR = 100.0  # logits drop by 100 per image width outside a query's grown box (~1.6 per mask pixel at 64 px)
register_student(_fast("toy", mask_dim=0, fusion_stride=16, mask_mode="coarse", box_prior=BOX_PRIOR))
# edge-s / edge-m: no per-concept fusion over image tokens (the decoder's queries read the frame's grid, projected
# once per frame), and a decoder half the teacher's width (input_dim: text and the coarsest level stay 256 wide, so
# the SAM3 concept cache and stage 1 still fit): per concept only the queries, scoring and top-K masks remain, at a
# quarter of a 256-wide decoder's matmul cost (ONNX Runtime, 16 concepts: decoder 157.5 -> 81.9 ms, random weights;
# python benchmarks/decoder_graph.py, benchmarks/results/decoder_graph_x86-vnni.md).
_NARROW = dict(hidden_size=128, input_dim=256, geometry_heads=4, encoder_heads=4, decoder_heads=4, mask_heads=4,
               decoder_ffn_size=512)
register_student(_fast("edge-s", mask_dim=64, fusion_stride=32, encoder_layers=0, decoder_layers=3,
                       box_prior=BOX_PRIOR, **_NARROW))
register_student(_fast("edge-m", mask_dim=64, fusion_stride=32, encoder_layers=0, decoder_layers=4,
                       box_prior=BOX_PRIOR, **_NARROW))
register_student(_fast("edge-l", mask_dim=96, fusion_stride=32, encoder_layers=1, decoder_layers=4,
                       decoder_ffn_size=1024, mask_mode="coarse", box_prior=BOX_PRIOR))


@register_student
def _efficientsam3_style() -> StudentSpec:
    return StudentSpec(
        name="efficientsam3-style", backbone="repvit_m1_1", input_size=1024, heads=HeadsConfig(),
        text_encoder=TextEncoderConfig(width=512, layers=6, heads=8), text_mode="encoder",
        export=ExportDefaults(precision="fp16", top_k=30), teacher="facebook/sam3",
        description="reference: EfficientSAM3's approach, RepViT-M1.1 + SAM3's full heads (6+6 layers, 200 "
                    "queries); 1024 px since SAM3's 1008 is not a multiple of 32")
