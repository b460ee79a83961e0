"""
Run under torchrun: a few optimizer steps of a tiny GPT with the distributed optimizers,
each rank on its slice of a fixed global batch. Rank 0 saves the parameters for the test
to compare with a one-process run on the whole batch.
"""

import sys
from pathlib import Path

import torch

from nanochat.common import compute_cleanup, compute_init
from nanochat.optimizers import DistAdamW, DistMuon
from nanochat.training import StepBatches, train_step

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny import GLOBAL_BATCH, STEPS, make_batches, make_tiny_model  # noqa: E402


def main(out_path: str) -> None:
    _, rank, _, world_size, _ = compute_init("cpu")
    model = make_tiny_model(smear=True)  # smear_lambda: a one-number parameter the sharded AdamW pads
    optimizers = model.setup_optimizers()
    assert isinstance(optimizers[0], DistAdamW) and isinstance(optimizers[1], DistMuon)
    rows = GLOBAL_BATCH // world_size
    batches = ((x[rank * rows : (rank + 1) * rows], y[rank * rows : (rank + 1) * rows]) for x, y in make_batches())
    steps = StepBatches(batches, 1)
    for _ in range(STEPS):
        train_step(model, optimizers, steps, torch.autocast("cpu", enabled=False))
    # the AdamW state is sharded: each rank keeps about 1/world_size of every parameter's moments
    adam_state_numel = sum(s["exp_avg"].numel() for s in optimizers[0].state.values())
    adam_param_numel = sum(p.numel() for g in optimizers[0].param_groups for p in g["params"])
    muon_owned = len(optimizers[1].state)
    if rank == 0:
        torch.save({"params": model.state_dict(), "adam_state_numel": adam_state_numel,
                    "adam_param_numel": adam_param_numel, "muon_owned": muon_owned}, out_path)
    compute_cleanup()


if __name__ == "__main__":
    main(sys.argv[1])
