"""The export spec of a student: the single source every target's settings come from.

``export_spec(student)`` describes the graphs of its bundle (see :mod:`sam3edge.export.graphs`):
names, dtypes and shapes of every input and output (``DYNAMIC_AXES`` mark the dynamic axes: prompts, prompt
tokens, exemplar boxes),
and the verification thresholds per precision. Targets read names and shapes from here (ONNX
dynamic axes, TensorRT optimisation profiles, OpenVINO reshapes); the bundle's manifest stores it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from sam3edge.runtime.names import CONTEXT_LENGTH, DECODER_GRAPH, EXEMPLAR_GRAPH, IMAGE_GRAPH, TEXT_GRAPH


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name
    shape: tuple  # ints, or one of sam3edge.runtime.names.DYNAMIC_AXES for a dynamic axis


@dataclass(frozen=True)
class GraphSpec:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


@dataclass(frozen=True)
class Thresholds:
    """What an exported bundle must keep of PyTorch's answers on the verification images.

    mask_iou: mean IoU of PyTorch's kept instances (score >= 0.5) with the export's mask of the same
    query slot; recall: fraction of PyTorch's kept instances the export also keeps (same slot, IoU >=
    0.5); score_mae: mean absolute score difference over the top-K slots; text_cosine: lowest cosine
    similarity of a token's text-encoder features (bundles with a text encoder graph).
    """

    mask_iou: float
    recall: float
    score_mae: float
    text_cosine: float


THRESHOLDS = {
    "fp32": Thresholds(mask_iou=0.99, recall=0.98, score_mae=1e-3, text_cosine=0.9999),
    "fp16": Thresholds(mask_iou=0.95, recall=0.9, score_mae=0.02, text_cosine=0.999),
    "int8": Thresholds(mask_iou=0.80, recall=0.75, score_mae=0.08, text_cosine=0.97),
}


@dataclass(frozen=True)
class ExportSpec:
    student: str
    input_size: int
    width: int
    top_k: int
    text_mode: str
    text_length: int
    graphs: tuple[GraphSpec, ...]
    thresholds: dict = field(default_factory=lambda: {k: asdict(v) for k, v in THRESHOLDS.items()})
    heads: str = "sam3"  # HeadsConfig.head_type: what feat0..feat2 hold (sam3edge.export.graphs)

    def graph(self, name: str) -> GraphSpec:
        for g in self.graphs:
            if g.name == name:
                return g
        raise KeyError(f"no graph {name!r} in the export spec of {self.student!r}; "
                       f"graphs: {', '.join(g.name for g in self.graphs)}")

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> ExportSpec:
        """The spec as a bundle's manifest stores it (``manifest["export_spec"]``)."""
        def tensors(items):
            return tuple(TensorSpec(t["name"], t["dtype"], tuple(t["shape"])) for t in items)

        graphs = tuple(GraphSpec(g["name"], tensors(g["inputs"]), tensors(g["outputs"])) for g in d["graphs"])
        return cls(student=d["student"], input_size=d["input_size"], width=d["width"], top_k=d["top_k"],
                   text_mode=d["text_mode"], text_length=d["text_length"], graphs=graphs,
                   thresholds=d.get("thresholds", {}), heads=d.get("heads", "sam3"))


def export_spec(student, text_length: int | None = None, exemplars: bool = False) -> ExportSpec:
    """The :class:`ExportSpec` of a :class:`~sam3edge.models.student.Sam3Student`. ``exemplars``: the bundle carries
    the exemplar encoder graph, and its decoder's ``text`` takes any number of tokens (text_length text tokens,
    then exemplar tokens)."""
    s, c = student.image_size, student.spec.heads.in_width
    k = student.spec.export.top_k
    if text_length is None:
        text_length = int(student.concepts.features.shape[1]) if student.concepts is not None else CONTEXT_LENGTH
    heads = student.spec.heads
    if heads.head_type == "fast":  # shared pixel embeddings, coarsest level, fusion grid (export.graphs)
        g = s // heads.fusion_stride
        feats = (TensorSpec("feat0", "float32", (1, heads.pixel_dim, s // 4, s // 4)),
                 TensorSpec("feat1", "float32", (1, c, s // 16, s // 16)),
                 TensorSpec("feat2", "float32", (1, heads.hidden_size, g, g)))
    else:
        feats = tuple(TensorSpec(f"feat{i}", "float32", (1, c, s // d, s // d)) for i, d in enumerate((4, 8, 16)))
    tokens = "tokens" if exemplars else text_length
    graphs = [
        GraphSpec(IMAGE_GRAPH, (TensorSpec("image", "uint8", (1, s, s, 3)),), feats),
        GraphSpec(DECODER_GRAPH,
                  (*feats, TensorSpec("text", "float32", ("prompts", tokens, c)),
                   TensorSpec("text_mask", "bool", ("prompts", tokens))),
                  (TensorSpec("scores", "float32", ("prompts", k)), TensorSpec("boxes", "float32", ("prompts", k, 4)),
                   TensorSpec("presence", "float32", ("prompts",)),
                   TensorSpec("masks", "float32", ("prompts", k, s // 4, s // 4)),
                   TensorSpec("indices", "int64", ("prompts", k)))),
    ]
    if exemplars:
        graphs.append(GraphSpec(
            EXEMPLAR_GRAPH,
            (feats[2], TensorSpec("boxes", "float32", ("prompts", "exemplars", 4)),
             TensorSpec("box_labels", "int64", ("prompts", "exemplars"))),
            (TensorSpec("tokens", "float32", ("prompts", "exemplar_tokens", c)),
             TensorSpec("tokens_mask", "bool", ("prompts", "exemplar_tokens")))))
    if student.has_text_encoder:
        n = CONTEXT_LENGTH
        graphs.append(GraphSpec(
            TEXT_GRAPH,
            (TensorSpec("input_ids", "int64", ("prompts", n)), TensorSpec("attention_mask", "int64", ("prompts", n))),
            (TensorSpec("text", "float32", ("prompts", n, c)), TensorSpec("text_mask", "bool", ("prompts", n)))))
    return ExportSpec(student=student.spec.name, input_size=s, width=c, top_k=k, text_mode=student.text_mode,
                      text_length=text_length, graphs=tuple(graphs), heads=heads.head_type)
