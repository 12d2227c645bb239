"""Launched by tests/test_ddp.py under ``torchrun`` (or as one process): a few Trainer steps of the toy student.

Writes ``OUT/rank{r}.json`` with a checksum of every parameter after training (batch-norm running
statistics are buffers, local to each rank as in any DDP run without SyncBatchNorm), and (rank 0) the
trainer's ``log.csv``. Not a test module itself (no ``test_`` prefix).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from sam3edge.distill.distributed import init_from_env, rank_world
from sam3edge.distill.losses import SetCriterion
from sam3edge.distill.run import StudentPairStage
from sam3edge.distill.scene_batches import OrchardBatches
from sam3edge.distill.trainer import TrainConfig, Trainer
from sam3edge.models.registry import create_student


class PairStage(StudentPairStage):
    def train(self, mode: bool = True):
        # Batch norm normalises by the statistics of each rank's own images (SyncBatchNorm needs CUDA) and
        # dropout draws different masks for a differently split batch, so the check that DDP's arithmetic
        # equals one process runs with both frozen: what remains is exactly the gradient path.
        super().train(mode)
        for m in self.modules():
            if isinstance(m, (torch.nn.modules.batchnorm._BatchNorm, torch.nn.Dropout)):
                m.eval()
        return self


def main(out: str, steps: int) -> None:
    torch.set_num_threads(1)
    init_from_env("cpu")
    rank, world = rank_world()
    torch.manual_seed(0)
    student = create_student("toy", input_size=64, text_mode="encoder").train()
    batches = OrchardBatches(student.tokenizer, seed=5, images_per_batch=4, pairs_per_image=2, image_size=64,
                             mask_size=(16, 16))
    cfg = TrainConfig(steps=steps, lr=1e-3, warmup=1, log_every=1, ckpt_every=1000, seed=0)
    trainer = Trainer(PairStage(student), SetCriterion(), batches, cfg, Path(out) / "run", progress=False)
    trainer.fit(resume=False)
    sums = {k: float(v.detach().double().sum()) for k, v in student.named_parameters()}
    (Path(out) / f"rank{rank}.json").write_text(json.dumps({"world": world, "sums": sums}))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
