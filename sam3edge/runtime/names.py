"""The shared words, defined once: export targets, precisions, a bundle's graph names, the text context length.

Everything else (the export registry, device profiles, student specs, the bundle reader, tokenizers, the text
encoder) imports them from here; this module imports nothing, so the torch-free runtime owns the vocabulary
and the torch side reuses it. What each target *does* with them lives in ``sam3edge.export.targets``.
"""

from __future__ import annotations

TARGETS = ("onnx", "openvino", "coreml", "tensorrt")  # a bundle's ``target``; one export module each
PRECISIONS = ("fp32", "fp16", "int8")  # a bundle's ``precision`` (a target supports a subset)

IMAGE_GRAPH, DECODER_GRAPH, TEXT_GRAPH = "image_encoder", "decoder", "text_encoder"
EXEMPLAR_GRAPH = "exemplar_encoder"  # exemplar boxes -> prompt tokens appended to a concept's text tokens
REQUIRED_GRAPHS = (IMAGE_GRAPH, DECODER_GRAPH)  # every bundle holds these
# the text encoder only in open-vocabulary bundles; the exemplar encoder in bundles of targets that carry it
GRAPH_NAMES = (*REQUIRED_GRAPHS, TEXT_GRAPH, EXEMPLAR_GRAPH)
# Dynamic axes of a graph's tensors (the spec writes them as these strings instead of a size): the number of
# prompts, of prompt tokens per prompt (text + exemplar tokens, decoders of bundles with an exemplar encoder), of
# exemplar boxes per prompt and of the exemplar encoder's tokens (boxes + 1).
DYNAMIC_AXES = ("prompts", "tokens", "exemplars", "exemplar_tokens")
MAX_EXEMPLARS = 16  # exemplar boxes per concept in one call (SAM3 is trained with a handful)

MAX_PHRASE_CHARS = 300  # a concept phrase's length limit (CLIP reads ~30 tokens anyway)
CONTEXT_LENGTH = 32  # token slots per phrase: SAM3's text encoder has max_position_embeddings=32
