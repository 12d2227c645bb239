"""Data-parallel training under ``torchrun``: process group set-up and per-rank shards of a global batch.

Every rank builds the same global batch of step k (batch streams are indexed by step) and keeps
its share of the images: rank r takes images j with j % world == r, with their pairs. Losses
normalise by the instance count of the *global* batch (all-reduced, as DETR does), so DDP's
gradient average equals the single-process gradient of the same global batch.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_from_env(device: str = "cpu") -> bool:
    """Start the process group when launched by torchrun (WORLD_SIZE > 1): NCCL on CUDA, gloo on CPU.

    Returns True if this process is part of a multi-process run.
    """
    if int(os.environ.get("WORLD_SIZE", 1)) <= 1:
        return False
    if not dist.is_initialized():
        backend = "nccl" if str(device).startswith("cuda") and torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend=backend)
    return True


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def global_count(n: float, device: torch.device | str = "cpu") -> float:
    """Mean over ranks of ``n`` (the DETR normaliser): sum over ranks / world; ``n`` itself when single."""
    if not is_distributed():
        return n
    t = torch.tensor([float(n)], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / dist.get_world_size()


def mean_over_ranks(values: dict[str, float]) -> dict[str, float]:
    if not is_distributed() or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64)
    dist.all_reduce(t)
    return dict(zip(keys, (t / dist.get_world_size()).tolist()))


def shard(batch, rank: int, world: int):
    """This rank's share of a global batch (see the module docstring); the batch itself when world is 1."""
    if world <= 1:
        return batch
    from sam3edge.distill.cache_batches import FeatureBatch
    from sam3edge.distill.feature_loss import TextBatch
    from sam3edge.distill.targets import PairBatch

    if isinstance(batch, PairBatch):
        n_img = batch.pixel_values.shape[0]
        imgs = [j for j in range(n_img) if j % world == rank]
        _need(len(imgs), n_img, world)
        remap = {j: k for k, j in enumerate(imgs)}
        pairs = [i for i, j in enumerate(batch.pair_image.tolist()) if j in remap]
        idx = torch.tensor(pairs, dtype=torch.long)
        return PairBatch(batch.pixel_values[imgs], batch.input_ids[idx], batch.attention_mask[idx],
                         torch.tensor([remap[int(batch.pair_image[i])] for i in pairs], dtype=torch.long),
                         [batch.targets[i] for i in pairs],
                         [batch.phrases[i] for i in pairs] if batch.phrases is not None else None)
    if isinstance(batch, FeatureBatch):
        n = batch.pixel_values.shape[0]
        _need(len(range(rank, n, world)), n, world)
        return FeatureBatch(batch.pixel_values[rank::world], [t[rank::world] for t in batch.targets])
    if isinstance(batch, TextBatch):
        n = batch.input_ids.shape[0]
        _need(len(range(rank, n, world)), n, world)
        return TextBatch(batch.input_ids[rank::world], batch.attention_mask[rank::world],
                         (batch.targets[0][rank::world], batch.targets[1][rank::world]))
    raise TypeError(f"cannot shard a {type(batch).__name__} across ranks")


def _need(got: int, n: int, world: int) -> None:
    if got == 0:
        raise ValueError(f"a global batch of {n} images cannot be split over {world} processes; use --batch >= {world}")
