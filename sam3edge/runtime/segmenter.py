"""``Segmenter``: a bundle on a backend -> every instance of each concept in an image, at its original size.

::

    seg = Segmenter.load("orchard.sam3edge")              # backend="auto": the bundle's target's runtime
    seg.set_concepts(["ripe apple", "leaf"])               # cached phrases, or new ones via the text encoder
    inst = seg.segment("tree.jpg", score_threshold=0.5)    # Instances: boxes, masks at H x W, scores, presence

``segment`` is three stages a stream can pipeline (each frame's stages in order, frames overlapped):
``prepare`` (to the S x S uint8 frame; pure), ``infer`` (image encoder once, decoder over all concepts;
the backend) and ``postprocess`` (threshold, boxes and masks back to the original image; pure).

The scores are the decoder graph's, which are the student's own evaluation scores: sigmoid(query logit) x
presence (``Sam3Heads.forward_topk``, ``ConceptOutputs.scores``); masks are the logits of the S/4 grid
resized bilinearly to H x W and thresholded at 0 (probability 0.5). Torch-free (numpy, Pillow and the
backend's package).

Threads: one Segmenter may be called from several threads; every call returns its own image's results
(onnxruntime and OpenVINO on CPU run calls concurrently, each OpenVINO thread with its own infer request;
TensorRT, Core ML and static-shape OpenVINO devices run them one at a time). A call answers the concepts
that were set when it started.
"""

from __future__ import annotations

import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from sam3edge.runtime.backends import BACKEND_NAMES, Backend, create_backend
from sam3edge.runtime.bundle import Bundle, BundleError
from sam3edge.runtime.concepts import check_phrases
from sam3edge.runtime.exemplars import PADDING_LABEL, VISUAL, exemplar_inputs
from sam3edge.runtime.image import RESIZE_MODES, Resize, as_rgb_uint8
from sam3edge.runtime.instances import Instances
from sam3edge.runtime.int8_scheme import warn_if_kernels_differ
from sam3edge.runtime.names import DECODER_GRAPH, MAX_PHRASE_CHARS, TEXT_GRAPH

__all__ = ["MAX_PHRASE_CHARS", "Prepared", "RawOutputs", "Segmenter"]

STAGES = ("preprocess", "image_encoder", "text", "decoder", "postprocess")


@dataclass(frozen=True)
class Prepared:
    """One image in the student's input frame: ``frame`` uint8 RGB [1, S, S, 3], the ``resize`` that maps
    back to the original, whose (H, W) is ``image_size``."""

    frame: np.ndarray
    resize: Resize
    image_size: tuple[int, int]


class RawOutputs(NamedTuple):
    """The decoder graph's outputs for P concepts (numpy, the export spec's dtypes), and the concepts they answer."""

    scores: np.ndarray  # float32 [P, K], best first per concept
    boxes: np.ndarray  # float32 [P, K, 4] xyxy normalised to the S x S frame
    presence: np.ndarray  # float32 [P]
    masks: np.ndarray  # float32 [P, K, S/4, S/4] logits
    indices: np.ndarray  # int64 [P, K] query slots
    phrases: tuple[str, ...]  # the P concepts, as set_concepts got them


class Segmenter:
    """A loaded bundle on one backend; see the module docstring. Construct with :meth:`load`."""

    def __init__(self, bundle: Bundle, backend: Backend, resize: str, tokenizer=None):
        self.bundle, self._backend, self.resize_mode, self._tokenizer = bundle, backend, resize, tokenizer
        self._prompts: tuple[tuple[str, ...], np.ndarray, np.ndarray] | None = None
        self._text_ms = 0.0
        self.int8_warning: str | None = None  # set by load(): why this CPU may compute the int8 graphs differently
        self.timings: dict[str, float] = dict.fromkeys(STAGES, 0.0)
        # Thread contract: segment / infer / encode_text may be called from several threads and each call gets
        # its own image's results; backends without concurrent calls run one call at a time under this lock.
        self._calls = nullcontext() if backend.concurrent_calls else threading.Lock()

    @classmethod
    def load(cls, bundle: Bundle | str | Path, backend: str = "auto", device: str | None = None, threads: int = 0,
             resize: str = "stretch") -> Segmenter:
        """Open (and verify) a bundle and load its graphs on ``backend``; concepts start as the bundle's own.

        backend: ``auto`` (the bundle's target's runtime on this host; see
        :func:`~sam3edge.runtime.backends.choose_backend`), ``onnxruntime``, ``openvino``, ``tensorrt`` or
        ``coreml``. device: the backend's device (onnxruntime cpu / cuda / tensorrt; OpenVINO CPU / GPU / NPU;
        a CUDA index for TensorRT; Core ML compute units). threads: CPU threads (0: the backend's default).
        resize: ``stretch`` (what the students trained on) or ``letterbox``. Returns a working Segmenter or
        raises (BundleError for the bundle, ValueError for arguments, BackendUnavailable for this host).
        """
        if backend not in BACKEND_NAMES:
            raise ValueError(f"unknown backend {backend!r}; backends: {', '.join(BACKEND_NAMES)}")
        if resize not in RESIZE_MODES:
            raise ValueError(f"unknown resize {resize!r}; resize modes: {', '.join(RESIZE_MODES)}")
        if not isinstance(bundle, Bundle):
            bundle = Bundle.open(bundle)
        cache = bundle.concept_cache()  # read and checked now, not at the first phrase
        width = next((t["shape"][-1] for t in bundle.graph(DECODER_GRAPH)["inputs"] if t["name"] == "text"), None)
        if cache.features.shape[-1] != width:
            raise BundleError(f"bundle {bundle.path}: concept features are {cache.features.shape[-1]} wide, the "
                              f"decoder takes {width}; re-export the bundle")
        tokenizer = bundle.tokenizer() if bundle.has_text_encoder else None
        seg = cls(bundle, create_backend(bundle, backend, device=device, threads=threads), resize, tokenizer)
        seg.int8_warning = warn_if_kernels_differ(bundle.manifest, seg.backend_name)
        concepts = [c for c in bundle.concepts if c != VISUAL]  # a prompt word for boxes alone, not a concept
        if concepts:
            seg.set_concepts(concepts)
        seg.timings = dict.fromkeys(STAGES, 0.0)
        return seg

    def __repr__(self) -> str:
        return f"Segmenter({self.bundle!r}, backend {self.backend_name}, {len(self.concepts)} concepts)"

    @property
    def backend_name(self) -> str:
        """``backend:device``, e.g. ``onnxruntime:CPUExecutionProvider``, ``openvino:CPU``."""
        return self._backend.name

    @property
    def input_size(self) -> int:
        return self.bundle.input_size

    @property
    def concepts(self) -> list[str]:
        """The phrases segmented now, as given to :meth:`set_concepts`."""
        return list(self._prompts[0]) if self._prompts else []

    # ---- concepts ---------------------------------------------------------------------------------
    def set_concepts(self, phrases: list[str], use_cache: bool = True, apply: bool = True
                     ) -> tuple[np.ndarray, np.ndarray]:
        """Segment ``phrases`` from now on: from the bundle's concept cache (case and spacing ignored), else
        through its text encoder graph. ``use_cache=False`` encodes every phrase (bundles with a text encoder).
        Returns their prompt tokens (features float32 [P, L, C], mask bool [P, L]); ``apply=False`` only returns
        them, the concepts segmented stay as they were.

        Raises ValueError for no phrases, a blank, repeated or over-long (> 300 characters) phrase, or a
        phrase a bundle without text encoder does not know (the message lists those it knows).
        On error the previous concepts stay.
        """
        if isinstance(phrases, str) or not isinstance(phrases, (list, tuple)):
            raise ValueError(f"concepts must be a list of phrases, got {type(phrases).__name__}: "
                             f"wrap one phrase as [{phrases!r:.60}]")
        if not phrases:
            raise ValueError("no concepts given: pass at least one noun phrase, e.g. ['ripe apple']")
        for i, p in enumerate(phrases):
            if not isinstance(p, str):
                raise ValueError(f"concepts[{i}] is a {type(p).__name__} ({p!r:.60}), expected a phrase (str)")
            if len(p) > MAX_PHRASE_CHARS:
                raise ValueError(f"concepts[{i}] is {len(p)} characters long ({p[:40]!r}...); a concept is a short "
                                 f"noun phrase of at most {MAX_PHRASE_CHARS} characters")
        check_phrases(list(phrases))  # blank or repeated phrases
        phrases = tuple(phrases)
        cache = self.bundle.concept_cache()
        cached = [use_cache and p in cache for p in phrases]
        new = [p for p, c in zip(phrases, cached) if not c]
        if VISUAL in new and not self.bundle.has_text_encoder:
            raise ValueError(f"{VISUAL!r} (SAM3's phrase for a prompt of exemplar boxes alone) is not in the concept "
                             f"cache of bundle {self.bundle.path}, which has no text encoder: export the run with it "
                             f"among the concepts (sam3edge export RUN --concepts '...,{VISUAL}'), or distil with "
                             "--text both; or give the boxes with a phrase")
        if new and not self.bundle.has_text_encoder:
            known = ", ".join(repr(c) for c in self.bundle.concepts[:50])
            raise ValueError(f"{', '.join(repr(p) for p in new)}: not among the concepts of bundle {self.bundle.path}, "
                             f"which has no text encoder and segments only {known}"
                             f"{' ...' if len(self.bundle.concepts) > 50 else ''}. Export one that has them from "
                             "the distillation run: sam3edge export RUN --concepts 'a,b,...' --out NEW.sam3edge "
                             "(the run's teacher encodes phrases the student's cache lacks; --teacher DIR names "
                             "it); for any phrase on the device, distil with a text encoder (sam3edge distill ... "
                             "--text both) and export that run")
        length, width = self.bundle.text_length, cache.features.shape[-1]
        text = np.zeros((len(phrases), length, width), np.float32)
        mask = np.zeros((len(phrases), length), bool)
        if len(new) < len(phrases):
            idx = [i for i, c in enumerate(cached) if c]
            feats, m = cache.lookup([phrases[i] for i in idx])
            text[idx], mask[idx] = _fit_length(feats, m, length)
        t0 = time.perf_counter()
        if new:
            feats, m = self.encode_text(new)
            idx = [i for i, c in enumerate(cached) if not c]
            text[idx], mask[idx] = _fit_length(feats, m, length)
        text_ms = (time.perf_counter() - t0) * 1e3 if new else 0.0
        if not apply:
            return text, mask
        with self._calls:  # a static-shape backend recompiles here: not while another thread infers
            self._backend.prompts_changed(len(phrases))
            self._prompts = (phrases, text, mask)
        self._text_ms = text_ms
        return text, mask

    def encode_text(self, phrases: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Text features float32 [P, 32, C] and mask bool [P, 32] of ``phrases`` from the bundle's text encoder."""
        if self._tokenizer is None:
            raise ValueError(f"bundle {self.bundle.path} has no text encoder; it segments only its concepts "
                             f"({', '.join(self.bundle.concepts)})")
        context = int(self.bundle.graph(TEXT_GRAPH)["inputs"][0]["shape"][-1])
        ids, attn = self._tokenizer.encode(list(phrases), context_length=context)
        with self._calls:
            return self._backend.text(ids, attn)

    # ---- the three stages -------------------------------------------------------------------------
    def prepare(self, image) -> Prepared:
        """``image`` (a path, PIL image or array; see ``as_rgb_uint8``) -> the uint8 [1, S, S, 3] input frame."""
        t0 = time.perf_counter()
        rgb = as_rgb_uint8(image)
        resize = Resize.fit(rgb.shape[0], rgb.shape[1], self.input_size, self.resize_mode)
        prepared = Prepared(resize.apply(rgb)[None], resize, (rgb.shape[0], rgb.shape[1]))
        self.timings["preprocess"] = (time.perf_counter() - t0) * 1e3
        return prepared

    def infer(self, prepared: Prepared, exemplars=None) -> RawOutputs:
        """The image encoder on the frame, then the decoder over every concept: the graphs' raw outputs.

        ``exemplars``: boxes in the original image's pixels, for every concept (a list) or per concept (a dict
        phrase -> list); each ``[x0, y0, x1, y1]`` (positive), ``(box, False)`` (negative) or an
        :class:`~sam3edge.runtime.exemplars.Exemplar` (see :func:`~sam3edge.runtime.exemplars.exemplar_inputs`).
        Their tokens join the concept's text tokens (boxes alone: set the concept ``"visual"``, SAM3's word).
        Their encoding counts in the ``decoder`` timing.
        """
        if not isinstance(prepared, Prepared):
            raise ValueError(f"infer takes what prepare returns (a Prepared), got {type(prepared).__name__}")
        s = self.input_size
        frame = prepared.frame
        if frame.shape != (1, s, s, 3) or frame.dtype != np.uint8:
            raise ValueError(f"prepared frame is {frame.dtype} {frame.shape}, expected uint8 (1, {s}, {s}, 3)")
        if self._prompts is None:
            raise ValueError("no concepts to segment: call set_concepts([...]) first")
        with self._calls:
            phrases, text, mask = self._prompts  # one read: the concepts this call answers
            boxes = self._exemplar_boxes(exemplars, phrases, prepared) if exemplars is not None else None
            t0 = time.perf_counter()
            features = self._backend.features(frame)
            t1 = time.perf_counter()
            if boxes is not None:
                tokens, tokens_mask = self._backend.exemplars(features, *boxes)
                text, mask = np.concatenate([text, tokens], 1), np.concatenate([mask, tokens_mask], 1)
            out = self._backend.decode(features, text, mask)
            t2 = time.perf_counter()
        self.timings.update(image_encoder=(t1 - t0) * 1e3, decoder=(t2 - t1) * 1e3, text=self._text_ms)
        self._text_ms = 0.0  # reported once, by the first frame after the concepts changed
        raw = RawOutputs(*out, phrases=phrases)
        if raw.scores.shape[0] != len(phrases) or raw.masks.shape[:2] != raw.scores.shape:
            raise RuntimeError(f"the decoder returned scores {raw.scores.shape} and masks {raw.masks.shape} for "
                               f"{len(phrases)} concepts; the bundle's graphs do not follow the export spec")
        return raw

    def exemplar_prompt(self, image, exemplars, phrase: str = VISUAL) -> tuple[np.ndarray, np.ndarray]:
        """The prompt of ``phrase`` with ``exemplars`` (boxes on ``image``, as :meth:`infer` takes them) as one
        concept-cache entry: features float32 [L, C] and mask bool [L], the phrase's tokens then the exemplar
        tokens, valid ones first (the heads read prompt tokens as a set). Stored in a bundle (``sam3edge concepts
        add``) it segments later images with no boxes. ValueError if they do not fit the decoder's L tokens."""
        prepared = self.prepare(image)
        text, mask = self.set_concepts([phrase], apply=False)
        boxes = self._exemplar_boxes(exemplars, (phrase,), prepared)
        if boxes is None:
            raise ValueError("exemplar_prompt needs at least one exemplar box")
        with self._calls:
            tokens, tokens_mask = self._backend.exemplars(self._backend.features(prepared.frame), *boxes)
        feats = np.concatenate([text[0], tokens[0]])[np.concatenate([mask[0], tokens_mask[0]])]
        length = self.bundle.text_length
        if len(feats) > length:
            raise ValueError(f"{phrase!r} and {len(boxes[1][0])} exemplar boxes make {len(feats)} prompt tokens; a "
                             f"concept of this bundle holds {length}: use fewer boxes")
        out, out_mask = np.zeros((length, feats.shape[-1]), np.float32), np.zeros(length, bool)
        out[:len(feats)], out_mask[:len(feats)] = feats, True
        return out, out_mask

    def _exemplar_boxes(self, exemplars, phrases, prepared: Prepared) -> tuple[np.ndarray, np.ndarray] | None:
        """Checked exemplars -> the exemplar encoder's boxes float32 [P, K, 4] (normalised xyxy of the input frame)
        and box_labels int64 [P, K] (1 / 0, padding for concepts with fewer); None when no concept has any."""
        per_concept, k = exemplar_inputs(exemplars, phrases, *prepared.image_size)
        if k == 0:
            return None
        if not self.bundle.has_exemplar_encoder:
            raise ValueError(f"bundle {self.bundle.path} ({self.bundle.target}) takes no exemplar boxes: it has no "
                             "exemplar encoder graph (bundles exported before sam3edge took boxes do not); export "
                             "the run again with this version (every target carries it)")
        boxes = np.zeros((len(phrases), k, 4), np.float32)
        labels = np.full((len(phrases), k), PADDING_LABEL, np.int64)
        for i, items in enumerate(per_concept):
            if items:
                boxes[i, :len(items)] = prepared.resize.boxes_to_input([e.box for e in items])
                labels[i, :len(items)] = [int(e.positive) for e in items]
        return boxes, labels

    def postprocess(self, raw: RawOutputs, prepared: Prepared, score_threshold: float = 0.5,
                    top_k: int | None = None, masks: bool = True) -> Instances:
        """Instances with score >= ``score_threshold`` (best first; at most ``top_k`` of them over all concepts),
        boxes and (if ``masks``) masks in the original image's pixels; presence of every concept."""
        if isinstance(score_threshold, bool) or not isinstance(score_threshold, (int, float, np.floating)) or \
                not 0.0 <= float(score_threshold) <= 1.0:
            raise ValueError(f"score_threshold must be a number in [0, 1], got {score_threshold!r}")
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 0):
            raise ValueError(f"top_k must be None or an int >= 0, got {top_k!r}")
        t0 = time.perf_counter()
        p_idx, k_idx = np.nonzero(raw.scores >= score_threshold)
        order = np.argsort(-raw.scores[p_idx, k_idx], kind="stable")[:top_k]
        p_idx, k_idx = p_idx[order], k_idx[order]
        resize = prepared.resize
        inst = Instances(
            phrases=[raw.phrases[p] for p in p_idx], concept_ids=p_idx, scores=raw.scores[p_idx, k_idx],
            boxes=resize.boxes_to_original(raw.boxes[p_idx, k_idx]).reshape(-1, 4),
            masks=resize.masks_to_original(raw.masks[p_idx, k_idx]) if masks else None,
            presence={p: float(v) for p, v in zip(raw.phrases, raw.presence)}, image_size=prepared.image_size)
        self.timings["postprocess"] = (time.perf_counter() - t0) * 1e3
        return inst

    def segment(self, image, score_threshold: float = 0.5, top_k: int | None = None, masks: bool = True,
                exemplars=None) -> Instances:
        """Every instance of the current concepts in ``image``, at its original resolution (see ``postprocess``);
        ``exemplars``: boxes on this image that show (or, negative, do not show) what is meant (see ``infer``)."""
        prepared = self.prepare(image)
        return self.postprocess(self.infer(prepared, exemplars), prepared, score_threshold, top_k, masks)

    def stream(self, source, score_threshold: float = 0.5, top_k: int | None = None, masks: bool = True,
               queue_size: int = 4, pipelined: bool = True, stop=None):
        """Iterate over ``source`` (a path, folder, video, camera index, URL, or an iterable of images / frames),
        yielding a :class:`~sam3edge.runtime.stream.StreamResult` (``frame``, ``instances``, ``ms``) per frame,
        in order, with decoding, inference and post-processing overlapped (see :func:`~sam3edge.runtime.stream.
        iter_stream`); ``break`` stops it cleanly. ``run_stream`` is the callback form."""
        from sam3edge.runtime.stream import iter_stream

        return iter_stream(self, source, score_threshold=score_threshold, top_k=top_k, masks=masks,
                           queue_size=queue_size, pipelined=pipelined, stop=stop)


def _fit_length(feats: np.ndarray, mask: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Text features [N, L', C] / mask [N, L'] padded (mask False) or cut to the decoder's L tokens."""
    feats, mask = np.asarray(feats, np.float32), np.asarray(mask, bool)
    n, have = mask.shape
    if have > length:
        if mask[:, length:].any():
            raise ValueError(f"phrases of {int(mask.sum(1).max())} tokens do not fit the decoder's {length}")
        return feats[:, :length], mask[:, :length]
    out_f = np.zeros((n, length, feats.shape[-1]), np.float32)
    out_m = np.zeros((n, length), bool)
    out_f[:, :have], out_m[:, :have] = feats, mask
    return out_f, out_m
