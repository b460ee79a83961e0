"""
A 2-rank save where rank 1 dies while writing its optimizer file: the step must not get a
meta (its completion marker). Run by tests/test_gpu_path.py under torchrun.
"""

from __future__ import annotations

import os
import sys

import torch

from nanochat import checkpoint_manager
from nanochat.common import compute_init
from nanochat.resume import save_training_checkpoint

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from tiny import make_tiny_model  # noqa: E402


def main(checkpoint_dir: str) -> None:
    _, rank, _, _, _ = compute_init("cpu")
    model = make_tiny_model()
    optimizers = model.setup_optimizers()
    meta = {"model_config": vars(model.config)}
    save_training_checkpoint(checkpoint_dir, 1, model, optimizers, meta, {"rank": rank})  # a good step
    real_write = checkpoint_manager.atomic_write

    def dying_write(path, write):
        if rank == 1 and "optim_" in path:
            os._exit(3)  # killed mid-save, before its optimizer file exists
        real_write(path, write)

    checkpoint_manager.atomic_write = dying_write
    save_training_checkpoint(checkpoint_dir, 2, model, optimizers, meta, {"rank": rank})
    torch.save("unreachable", os.path.join(checkpoint_dir, "rank0_finished_save_2"))


if __name__ == "__main__":
    main(sys.argv[1])
