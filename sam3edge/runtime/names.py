"""The shared words, defined once: export targets, precisions, a bundle's graph names, the text context length.

Everything else (the export registry, device profiles, student specs, the bundle reader, tokenizers, the text
encoder) imports them from here; this module imports nothing, so the torch-free runtime owns the vocabulary
and the torch side reuses it. What each target *does* with them lives in ``sam3edge.export.targets``.
"""

from __future__ import annotations

TARGETS = ("onnx", "openvino", "coreml", "tensorrt")  # a bundle's ``target``; one export module each
PRECISIONS = ("fp32", "fp16", "int8")  # a bundle's ``precision`` (a target supports a subset)

IMAGE_GRAPH, DECODER_GRAPH, TEXT_GRAPH = "image_encoder", "decoder", "text_encoder"
REQUIRED_GRAPHS = (IMAGE_GRAPH, DECODER_GRAPH)  # every bundle holds these
GRAPH_NAMES = (*REQUIRED_GRAPHS, TEXT_GRAPH)  # the text encoder only in open-vocabulary bundles

MAX_PHRASE_CHARS = 300  # a concept phrase's length limit (CLIP reads ~30 tokens anyway)
CONTEXT_LENGTH = 32  # token slots per phrase: SAM3's text encoder has max_position_embeddings=32
