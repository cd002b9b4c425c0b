"""torchrun entry point for tests/integration/test_training_ddp.py: train as app.training.trainer does
(its own setup and fit), then save this rank's parameters to OUT_DIR/rank<N>.pt. With `unsynchronised`
the model is not wrapped in DistributedDataParallel, so the ranks' gradients are never averaged
(MODE: synchronised or unsynchronised).

    torchrun --nproc_per_node 2 tests/integration/ddp_rank_parameters.py OUT_DIR MODE TRAINER_ARGS...
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as torch_dist

from app.training import trainer


def main(out_dir: str, mode: str, *argv: str) -> None:
    if mode == "unsynchronised":
        trainer.DistributedDataParallel = lambda module: module  # each rank steps on its own gradients
    cfg = trainer.TrainConfig(**vars(trainer.build_parser().parse_args(argv)))
    dist = trainer.setup_distributed(cfg.device)
    run = trainer.setup_run(cfg, dist)
    trainer.fit(run)
    state = {name: p.detach().cpu().clone() for name, p in run.model.named_parameters()}
    torch.save(state, Path(out_dir) / f"rank{dist.rank}.pt")
    torch_dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
