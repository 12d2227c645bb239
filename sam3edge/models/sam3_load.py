"""Loading and building transformers ``Sam3Model`` checkpoints, with errors a user can act on.

A source is a local directory in ``save_pretrained`` layout (``config.json`` + safetensors) or,
where the machine can reach a model hub, a hub id such as ``facebook/sam3``. Nothing is
downloaded unless a hub id is given explicitly.
"""

from __future__ import annotations

import json
import os
import re
import socket
from pathlib import Path
from urllib.parse import urlparse

import torch

from sam3edge.atomic import atomic_directory, written_by_us

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


def tiny_sam3_config(image_size: int = 224, vision_hidden: int = 64, vision_layers: int = 2, text_hidden: int = 32,
                     text_layers: int = 1, hidden: int = 32, num_queries: int = 8, encoder_layers: int = 1,
                     decoder_layers: int = 2, heads: int = 2, window_size: int = 8):
    """A small ``Sam3Config`` of the real architecture, for tests and the toy teacher.

    ``image_size`` must be a multiple of 14 (SAM3's patch size); the FPN feature sizes follow
    from it (4x, 2x, 1x of the patch grid), as ``backbone_feature_sizes`` must match.
    """
    from transformers import Sam3Config

    if image_size % 14:
        raise ValueError(f"image_size must be a multiple of 14 (the ViT patch size), got {image_size}")
    g = image_size // 14
    return Sam3Config(
        vision_config=dict(
            backbone_config=dict(model_type="sam3_vit_model", hidden_size=vision_hidden,
                                 intermediate_size=4 * vision_hidden, num_hidden_layers=vision_layers,
                                 num_attention_heads=heads, image_size=image_size, patch_size=14,
                                 window_size=window_size, global_attn_indexes=[vision_layers - 1],
                                 pretrain_image_size=image_size),
            fpn_hidden_size=hidden, backbone_feature_sizes=[[4 * g, 4 * g], [2 * g, 2 * g], [g, g]]),
        text_config=dict(vocab_size=49408, hidden_size=text_hidden, intermediate_size=4 * text_hidden,
                         projection_dim=text_hidden, num_hidden_layers=text_layers, num_attention_heads=heads,
                         max_position_embeddings=32),
        geometry_encoder_config=dict(hidden_size=hidden, num_layers=1, num_attention_heads=heads,
                                     intermediate_size=4 * hidden),
        detr_encoder_config=dict(hidden_size=hidden, num_layers=encoder_layers, num_attention_heads=heads,
                                 intermediate_size=4 * hidden),
        detr_decoder_config=dict(hidden_size=hidden, num_layers=decoder_layers, num_queries=num_queries,
                                 num_attention_heads=heads, intermediate_size=4 * hidden),
        mask_decoder_config=dict(hidden_size=hidden, num_attention_heads=heads),
    )


def build_sam3(config, seed: int | None = 0):
    """A randomly initialised ``Sam3Model`` of ``config`` (seeded for reproducibility)."""
    from transformers import Sam3Model

    if seed is not None:
        torch.manual_seed(seed)
    return Sam3Model(config).eval()


def _check_local_dir(path: Path) -> None:
    if not path.exists():
        raise FileNotFoundError(f"model directory {path} does not exist")
    if not path.is_dir():
        raise NotADirectoryError(f"{path} is a file; pass the directory that holds config.json and the weights")
    cfg = path / "config.json"
    if not cfg.is_file():
        what = "is empty" if not any(path.iterdir()) else "has no config.json"
        raise FileNotFoundError(f"model directory {path} {what}; expected a save_pretrained layout "
                                "(config.json + model.safetensors)")
    try:
        data = json.loads(cfg.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{cfg} is not readable JSON ({e}); re-download or re-save the model") from e
    model_type = data.get("model_type") if isinstance(data, dict) else None
    if model_type not in ("sam3", "sam3_video"):
        raise ValueError(f"{cfg}: model_type is {model_type!r}, expected 'sam3' (a transformers Sam3Model)")
    if not any((path / f).is_file() for f in WEIGHT_FILES):
        raise FileNotFoundError(f"model directory {path} has a config but no weights ({', '.join(WEIGHT_FILES)})")


def load_sam3_model(source: str | Path, dtype: torch.dtype | None = None, attn_implementation: str | None = None):
    """A ``Sam3Model`` from a local directory or a hub id, in eval mode."""
    from transformers import Sam3Model

    # fp16 checkpoints (the toy teacher is stored so) are computed in fp32 unless asked otherwise:
    # CPUs run fp16 slowly and less exactly.
    kwargs = {"dtype": dtype or torch.float32}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    path = Path(str(source)).expanduser()
    if path.exists() or not HUB_ID.match(str(source)):
        _check_local_dir(path)
        try:
            return Sam3Model.from_pretrained(path, local_files_only=True, **kwargs).eval()
        except Exception as e:  # safetensors and transformers raise many types for a damaged checkpoint
            raise ValueError(f"could not load a Sam3Model from {path}: {type(e).__name__}: {e}. The weights "
                             "may be truncated or corrupt: re-download or re-save them") from e
    try:  # a model already in the local hub cache loads without any network
        return Sam3Model.from_pretrained(str(source), local_files_only=True, **kwargs).eval()
    except OSError:
        pass
    endpoint = hub_endpoint()
    if not hub_reachable(endpoint):
        raise RuntimeError(
            f"{source!r} is not a local directory and the model hub ({endpoint}) cannot be reached from this "
            f"machine. On a machine that can reach it, run `hf download {source} --local-dir DIR`, copy DIR "
            "here and pass DIR instead of the hub id")
    try:
        return Sam3Model.from_pretrained(str(source), **kwargs).eval()
    except OSError as e:
        raise RuntimeError(
            f"could not fetch {source!r} from the model hub ({type(e).__name__}). This machine may not reach "
            f"the hub: on a machine that can, run `hf download {source} --local-dir DIR`, copy DIR here and "
            "pass --teacher DIR") from e


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


def hub_reachable(endpoint: str, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the hub opens within ``timeout`` s (robots are often offline:
    fail in seconds with a clear message rather than after a minute of download retries)."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False"):
        return False
    url = urlparse(endpoint)
    try:
        with socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout):
            return True
    except OSError:
        return False


def load_tokenizer(source: str | Path):
    """The CLIP tokenizer of a model directory (its ``tokenizer.json``) or the packaged CLIP BPE one."""
    from sam3edge.runtime.tokenizer import ClipTokenizer

    path = Path(str(source)) / "tokenizer.json"
    return ClipTokenizer.from_file(path) if path.is_file() else ClipTokenizer.default()


def save_sam3(model, out: str | Path, dtype: torch.dtype | None = None) -> Path:
    """``save_pretrained`` layout (config.json + model.safetensors) plus the CLIP ``tokenizer.json``.

    Written to a temporary sibling directory and renamed, so a crash never leaves half a model. An existing
    ``out`` is replaced only if it holds a SAM3 model in that layout (``config.json`` of model type sam3).
    """
    import shutil
    from importlib.resources import files

    sam3_config = written_by_us("config.json", "sam3", key="model_type")

    def is_sam3_dir(d: Path) -> bool:
        return sam3_config(d) and (d / "model.safetensors").is_file()

    with atomic_directory(out, replace=is_sam3_dir, what="SAM3 model directory") as tmp:
        m = model if dtype is None else model.to(dtype)
        m.save_pretrained(tmp, safe_serialization=True)
        shutil.copyfile(files("sam3edge.assets") / "clip_tokenizer.json", tmp / "tokenizer.json")
    return Path(out)
