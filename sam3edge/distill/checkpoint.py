"""Training checkpoints: safetensors for tensors, JSON for the rest, written atomically.

A checkpoint is a directory ``step_0000420/`` holding ``model.safetensors``, ``optimizer.safetensors``
(every tensor of the optimizer state, including RNG states) and ``state.json`` (step, param-group
settings, config, metrics). It is written under a temporary name and renamed, and ``latest`` - a
one-line text file naming the newest complete checkpoint - is replaced atomically after it, so a
run killed at any moment resumes from a complete checkpoint. No pickle is ever read.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from sam3edge.atomic import atomic_directory, atomic_write_text


def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"state.{idx}.{k}"] = v.detach().contiguous().cpu()
            else:
                scalars[f"{idx}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def save_checkpoint(ckpt_dir: Path, step: int, model: torch.nn.Module, opt: torch.optim.Optimizer,
                    extra: dict, keep: int = 2) -> Path:
    """Write checkpoint ``step`` under ``ckpt_dir`` atomically; keep the newest ``keep`` checkpoints."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    final = ckpt_dir / f"step_{step:07d}"
    # a checkpoint of the same step (a resumed run writing it again) is ours to replace
    with atomic_directory(final, replace=lambda d: (d / "model.safetensors").is_file(), what="checkpoint") as tmp:
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(_dedupe_shared(state), tmp / "model.safetensors")
        tensors, meta = _optimizer_tensors(opt)
        tensors["rng.cpu"] = torch.get_rng_state()
        if torch.cuda.is_available():
            for i, s in enumerate(torch.cuda.get_rng_state_all()):
                tensors[f"rng.cuda.{i}"] = s
        save_file(tensors, tmp / "optimizer.safetensors")
        (tmp / "state.json").write_text(json.dumps({"step": step, "optimizer": meta, **extra}, indent=1))
    atomic_write_text(ckpt_dir / "latest", final.name + "\n")
    for old in sorted(ckpt_dir.glob("step_*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _dedupe_shared(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors that share memory (tied weights): store clones."""
    seen, out = set(), {}
    for k, v in state.items():
        key = (v.data_ptr(), v.numel(), v.dtype)
        out[k] = v.clone() if key in seen else v
        seen.add(key)
    return out


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    """The newest complete checkpoint, or None. A dangling ``latest`` is an error (a corrupt run dir)."""
    pointer = ckpt_dir / "latest"
    if not pointer.is_file():
        return None
    path = ckpt_dir / pointer.read_text().strip()
    if not (path / "state.json").is_file():
        raise FileNotFoundError(f"{pointer} names {path.name}, which is missing or incomplete; "
                                "delete the pointer to restart from the previous checkpoint")
    return path


def load_checkpoint(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer | None) -> dict:
    """Restore model, optimizer and RNG states from checkpoint ``path``; returns its ``state.json``."""
    try:
        state = json.loads((path / "state.json").read_text())
        weights = load_file(path / "model.safetensors")
        tensors = load_file(path / "optimizer.safetensors") if opt is not None else {}
    except Exception as e:  # safetensors raises its own error types for truncated files
        raise ValueError(f"checkpoint {path} is corrupt ({e}); delete it and resume from an earlier one") from e
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if unexpected or [k for k in missing if not k.endswith("position_ids")]:
        raise ValueError(f"checkpoint {path} does not fit this model: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    if opt is not None:
        meta = state["optimizer"]
        opt_state: dict = {}
        for k, v in tensors.items():
            if k.startswith("state."):
                _, idx, name = k.split(".", 2)
                opt_state.setdefault(int(idx), {})[name] = v
        for k, v in meta["scalars"].items():
            idx, name = k.split(".", 1)
            opt_state.setdefault(int(idx), {})[name] = v
        opt.load_state_dict({"state": opt_state, "param_groups": meta["param_groups"]})
        torch.set_rng_state(tensors["rng.cpu"])
        if torch.cuda.is_available():
            cuda_states = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
            if cuda_states:
                torch.cuda.set_rng_state_all(cuda_states)
    return state
