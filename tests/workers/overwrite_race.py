"""
A 2-rank --overwrite where rank 1 looks at the checkpoint folder late: every rank must still see
the old run and meet rank 0 after it deleted it. Run by tests/test_gpu_path.py under torchrun.
"""

from __future__ import annotations

import os
import sys
import time

import torch
import torch.distributed as dist

from nanochat import resume
from nanochat.common import compute_cleanup, compute_init
from nanochat.resume import save_training_checkpoint, start_fresh

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from tiny import make_tiny_model  # noqa: E402


def main(checkpoint_dir: str) -> None:
    _, rank, _, _, _ = compute_init("cpu")
    model = make_tiny_model()
    save_training_checkpoint(checkpoint_dir, 1, model, model.setup_optimizers(), {"model_config": vars(model.config)},
                             {"rank": rank})  # the old run
    real_find = resume.find_last_step

    def late_find(*args, **kwargs):
        if rank == 1:
            time.sleep(2)  # long after rank 0 has looked and, without a barrier, deleted
        return real_find(*args, **kwargs)

    resume.find_last_step = late_find
    start_fresh(checkpoint_dir, overwrite=True)
    total = torch.tensor([float(rank + 1)])
    dist.all_reduce(total)  # both ranks got here, together
    assert total.item() == 3.0 and not os.listdir(checkpoint_dir), os.listdir(checkpoint_dir)
    print(f"rank {rank}: overwrite done")
    compute_cleanup()  # leave the process group together: a rank exiting inside it can abort the other


if __name__ == "__main__":
    main(sys.argv[1])
