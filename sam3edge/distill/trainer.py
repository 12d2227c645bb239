"""A trainer for any SAM3-family model against abstract pair targets.

The model maps a :class:`~sam3edge.distill.targets.PairBatch` to
:class:`~sam3edge.models.heads.outputs.HeadOutputs`; ``batches[k]`` is the batch of step ``k`` (so a
resumed run continues the exact data stream); the criterion turns outputs and targets into a loss.
AdamW, linear warm-up then cosine decay, gradient clipping, bf16 autocast on CUDA, a progress
bar, periodic evaluation, atomic checkpoints and exact resume. Logs: ``log.csv`` and, where the
``tensorboard`` package is installed (the ``distill`` extra), TensorBoard event files in ``tb/``
(a resumed run purges the steps it writes again).

Under ``torchrun`` (a process group initialised, e.g. by
:func:`~sam3edge.distill.distributed.init_from_env`) the model is wrapped in DDP, each rank trains on
its shard of every global batch (batch norm synchronised on CUDA; on CPU, where SyncBatchNorm
does not run, each rank normalises by its own images), logged figures are means over ranks, and only rank 0 writes logs,
checkpoints and evaluations (every rank resumes from them).
"""

from __future__ import annotations

import csv
import json
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from sam3edge.atomic import atomic_write_text
from sam3edge.distill.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from sam3edge.distill.distributed import barrier, is_distributed, mean_over_ranks, rank_world, shard

# Learned positions and lookup tables: decay would pull them to zero (reference boxes to the centre).
NO_DECAY_SUFFIXES = ("query_embed.weight", "reference_points.weight", "presence_token.weight", "position_embeddings",
                     "position_embedding.weight", "token_embedding.weight", "label_embed.weight", "cls_embed.weight")


@dataclass
class TrainConfig:
    steps: int = 1000
    lr: float = 3e-4
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.05
    warmup: int = 100
    grad_clip: float = 1.0
    amp: bool | None = None  # None: bf16 autocast when training on CUDA
    log_every: int = 10
    eval_every: int = 0
    ckpt_every: int = 200
    keep_checkpoints: int = 2
    tensorboard: bool = True  # also write TensorBoard events to RUN/tb when tensorboard is installed
    seed: int = 0
    lr_mult: dict[str, float] = field(default_factory=dict)  # parameter-name prefix -> lr multiplier

    def lr_at(self, step: int) -> float:
        """Learning rate of step ``step`` (0-based): linear warm-up, then cosine to ``min_lr_ratio``."""
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        t = (step - self.warmup) / max(1, self.steps - self.warmup)
        return self.lr * (self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


class Trainer:
    """Train ``model`` for ``config.steps`` steps, writing logs and checkpoints under ``run_dir``."""

    def __init__(self, model: torch.nn.Module, criterion: Callable, batches, config: TrainConfig,
                 run_dir: str | Path, eval_fn: Callable[[torch.nn.Module, int], dict] | None = None,
                 device: str | torch.device = "cpu", progress: bool = True):
        self.model, self.criterion, self.batches, self.cfg = model.to(device), criterion, batches, config
        self.run_dir, self.eval_fn, self.device, self.progress = Path(run_dir), eval_fn, torch.device(device), progress
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.rank, self.world = rank_world()
        self.main = self.rank == 0
        self.train_model = self.model
        self._tb = None  # SummaryWriter, opened at the first logged row (after resume sets the step)
        if is_distributed():
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index or 0] if self.device.type == "cuda" else None
            if self.device.type == "cuda":  # batch statistics over the global batch, as one process would see
                self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
            self.train_model = DistributedDataParallel(self.model, device_ids=ids, find_unused_parameters=True)
        self.opt = torch.optim.AdamW(self._param_groups(), lr=config.lr, weight_decay=config.weight_decay)
        self.step = 0
        self.history: list[dict] = []

    def _param_groups(self) -> list[dict]:
        """Groups by lr multiplier and by weight decay: biases, norms, embeddings, query and reference
        boxes get none (decay would pull learned positions back to the image centre)."""
        groups: dict[tuple[float, bool], list] = {}
        for name, p in self.model.named_parameters():
            if not p.requires_grad:
                continue
            mult = next((m for prefix, m in self.cfg.lr_mult.items() if name.startswith(prefix)), 1.0)
            decay = p.ndim >= 2 and not name.endswith(NO_DECAY_SUFFIXES)
            groups.setdefault((mult, decay), []).append(p)
        return [{"params": ps, "lr_mult": m, "weight_decay": self.cfg.weight_decay if d else 0.0}
                for (m, d), ps in groups.items()]

    @property
    def amp(self) -> bool:
        return self.device.type == "cuda" if self.cfg.amp is None else self.cfg.amp

    def resume(self) -> bool:
        """Load the newest checkpoint of ``run_dir`` if there is one; True if it did."""
        path = latest_checkpoint(self.ckpt_dir)
        if path is None:
            return False
        state = load_checkpoint(path, self.model, self.opt)
        self.step = int(state["step"])
        self.history = [r for r in state.get("history", []) if r["step"] <= self.step]
        self._truncate_log(self.step)
        return True

    def _truncate_log(self, step: int) -> None:
        """Drop log rows written after the checkpoint we resume from: they will be written again."""
        log = self.run_dir / "log.csv"
        if not log.is_file():
            return
        with log.open(newline="") as f:
            rows = list(csv.reader(f))
        if rows:
            keep = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) <= step]
            atomic_write_text(log, "".join(",".join(r) + "\n" for r in keep))

    def _log(self, row: dict) -> None:
        if not self.main:
            return
        log = self.run_dir / "log.csv"
        new = not log.is_file()
        with log.open("a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(row))
            if new:
                w.writeheader()
            w.writerow(row)
        tb = self._tensorboard(row["step"])
        if tb is not None:
            for k, v in row.items():
                if k != "step":
                    tb.add_scalar(k, v, row["step"])

    def _tensorboard(self, step: int):
        if self._tb is None and self.cfg.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard not installed: log.csv only
                self._tb = False
                return None
            tb_dir = self.run_dir / "tb"
            _after_earlier_event_files(tb_dir)
            # purge_step: events of an earlier (killed) attempt at these steps are dropped by TensorBoard
            self._tb = SummaryWriter(str(tb_dir), purge_step=step)
        return self._tb or None

    def save(self) -> Path | None:
        path = None
        if self.main:
            if self._tb:
                self._tb.flush()
            path = save_checkpoint(self.ckpt_dir, self.step, self.model, self.opt,
                                   {"config": asdict(self.cfg), "history": self.history}, self.cfg.keep_checkpoints)
        barrier()  # no rank runs ahead of (or resumes from) a checkpoint still being written
        return path

    def fit(self, resume: bool = True, time_limit_s: float | None = None) -> list[dict]:
        """Train from the current (or resumed) step to ``config.steps``; returns the evaluation history."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.main:
            atomic_write_text(self.run_dir / "train_config.json", json.dumps(asdict(self.cfg), indent=1))
        if resume:
            self.resume()
        else:
            torch.manual_seed(self.cfg.seed)
        start = time.time()
        bar = tqdm(total=self.cfg.steps, initial=self.step, desc="train",
                   disable=not (self.progress and self.main), unit="step")
        running: dict[str, float] = {}
        self.model.train()
        while self.step < self.cfg.steps:
            parts = self._train_step(self.batches[self.step])
            for k, v in parts.items():
                running[k] = running.get(k, 0.0) + v
            self.step += 1
            bar.update(1)
            if self.step % self.cfg.log_every == 0 or self.step == self.cfg.steps:
                n = self.step % self.cfg.log_every or self.cfg.log_every
                row = {"step": self.step, "lr": self.cfg.lr_at(self.step - 1)} | mean_over_ranks(
                    {k: v / n for k, v in running.items()})
                self._log(row)
                bar.set_postfix(loss=f"{row['total']:.3f}")
                running = {}
            if self.eval_fn and self.cfg.eval_every and self.step % self.cfg.eval_every == 0:
                self.evaluate()
            if self.step % self.cfg.ckpt_every == 0 or self.step == self.cfg.steps:
                self.save()
            if time_limit_s is not None and self._all_agree(time.time() - start > time_limit_s):
                self.save()
                break
        bar.close()
        if self._tb:
            self._tb.close()
            self._tb = None
        return self.history

    def _all_agree(self, flag: bool) -> bool:
        """True on every rank if it is True on any (ranks must stop at the same step)."""
        if not is_distributed():
            return flag
        t = torch.tensor([int(flag)])
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return bool(t.item())

    def evaluate(self) -> dict:
        metrics = {"step": self.step}
        if self.main:
            self.model.eval()
            with torch.no_grad():
                metrics |= self.eval_fn(self.model, self.step)
            self.model.train()
            self.history.append(metrics)
            atomic_write_text(self.run_dir / "eval_history.json", json.dumps(self.history, indent=1))
        barrier()
        return metrics

    def _train_step(self, batch) -> dict[str, float]:
        lr = self.cfg.lr_at(self.step)
        for g in self.opt.param_groups:
            g["lr"] = lr * g.get("lr_mult", 1.0)
        batch = shard(batch, self.rank, self.world).to(self.device)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            out = self.train_model(batch)
        loss, parts = self.criterion(_float_outputs(out), batch.targets)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()} at step {self.step}: lower the learning rate")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.grad_clip:
            parts["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip))
        self.opt.step()
        return parts


def _float_outputs(out):
    """Losses are computed in fp32 even when the forward ran under bf16 autocast."""
    for name, v in vars(out).items():
        if torch.is_tensor(v) and v.is_floating_point():
            setattr(out, name, v.float())
    return out


def _after_earlier_event_files(tb_dir: Path, max_wait: float = 3.0) -> None:
    """Wait (at most ``max_wait`` s) until a new event file's name sorts after the earlier attempts'.

    TensorBoard reads a run's event files in name order, and the name is
    ``events.out.tfevents.<unix seconds>.<host>.<pid>.<writer counter>``: a writer opened in the same
    second as an earlier one can sort before it (counter "10" < "9", another pid), and then the killed
    attempt's steps are read last and purge the resumed ones. A new second sorts last whatever follows.
    """
    stamps = []
    for f in tb_dir.glob("events.out.tfevents.*") if tb_dir.is_dir() else ():
        parts = f.name.split(".")
        if len(parts) > 3 and parts[3].isdigit():
            stamps.append(int(parts[3]))
    if not stamps:
        return
    latest = max(stamps)
    wait = latest + 1 - time.time()
    if wait > max_wait:  # an event file from the future (clock changed): do not hang on it
        warnings.warn(
            f"{tb_dir}: an event file is stamped {latest}, later than now ({time.time():.0f}); "
            "TensorBoard may show this run's resumed steps out of order (log.csv is right)",
            stacklevel=3,
        )
        return
    if wait > 0:
        time.sleep(wait)
