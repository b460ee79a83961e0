"""
Saving a training run so that it can continue exactly, and continuing it. A training
checkpoint holds, beside the model: every rank's optimizer state, data position and RNG
state, and the loop's own state (smoothed loss, training time, eval history). A resumed run
must be the same run: the flags that change the math, and the number of ranks, must match.
The flags: --resume, --resume_from_step, --overwrite, --extend.
"""

from __future__ import annotations

import argparse
import random
import uuid
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from nanochat.checkpoint_manager import (
    CheckpointError,
    clear_checkpoints,
    find_last_step,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)
from nanochat.common import get_dist_info, print0
from nanochat.errors import ResumeError
from nanochat.gpt import saved_config

# flags that change what a run computes are compared on resume; these only change what it
# logs, evaluates, keeps or where it runs, so a resumed run may set them differently
BOOKKEEPING_FLAGS = frozenset({
    "run", "device_type", "compile", "resume", "resume_from_step", "keep_last", "dry_run", "skip_preflight",
    "overwrite", "model_tag", "eval_every", "eval_tokens", "eval_steps", "eval_metrics_every",
    "eval_metrics_max_problems", "eval_examples", "core_metric_every", "core_metric_max_per_task", "sample_every",
    "save_every", "peak_flops", "extend",
})
# the flags that set how long a run trains: with --extend a resumed run may lengthen it
LENGTH_FLAGS = frozenset({"num_iterations", "target_flops", "target_param_data_ratio", "num_epochs"})
RESUME_KEYS = ("data_states", "rng_states", "loop_state")


@dataclass
class ResumeState:
    """Where a training run starts: step 0 and nothing for a fresh run, the saved loop otherwise."""

    step: int = 0
    data_state: Any = None  # this rank's data-loader position
    loop_state: dict | None = None  # StepLog's state: smoothed loss, training time, eval history
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])  # recorded in every meta of the run


def get_rng_state() -> dict[str, Any]:
    """Every RNG a training process draws from, as JSON-friendly data."""
    state = {"python": random.getstate(), "torch": torch.get_rng_state().tolist()}
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what get_rng_state returned (JSON turned Python's state tuple into lists)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def gather_to_all(obj: Any) -> list[Any]:
    """Every rank's obj, in rank order (a one-element list without torchrun)."""
    ddp, _, _, world_size = get_dist_info()
    if not ddp:
        return [obj]
    out: list[Any] = [None] * world_size
    dist.all_gather_object(out, obj)
    return out


def save_training_checkpoint(checkpoint_dir: str, step: int, model: torch.nn.Module,
                             optimizers: list[torch.optim.Optimizer], meta: dict[str, Any], data_state: Any,
                             keep_last: int = -1) -> None:
    """
    Everything an exact resume needs: model, every rank's optimizer state, every rank's data
    position and RNG state (gathered into the meta), plus whatever the script puts in `meta`.
    Then only the newest keep_last complete steps are kept (keep_last < 1: all).
    """
    meta = {**meta, "step": step, "data_states": gather_to_all(data_state), "rng_states": gather_to_all(get_rng_state())}
    rank = get_dist_info()[1]
    save_checkpoint(checkpoint_dir, step, model.state_dict(), [o.state_dict() for o in optimizers], meta, rank=rank)
    if rank == 0:  # save_checkpoint returns on rank 0 only once every rank's files are on disk
        prune_checkpoints(checkpoint_dir, keep_last)


def changed_flags(saved: dict[str, Any], now: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """The flags that change the math and differ between a saved run's user_config and this one's."""
    names = (saved.keys() | now.keys()) - BOOKKEEPING_FLAGS
    return {k: (saved.get(k), now.get(k)) for k in sorted(names) if saved.get(k) != now.get(k)}


def extension_check(saved_iterations: Any, new_iterations: Any) -> None:
    """--extend lengthens a run that had a fixed length; it never shortens one or guesses one."""
    if not isinstance(saved_iterations, int) or saved_iterations <= 0:
        raise ValueError("--extend needs a run of a fixed length (its meta records no positive num_iterations; "
                         "a one-pass mid-training run ends with its data); start a new run instead")
    if not isinstance(new_iterations, int) or new_iterations < saved_iterations:
        raise ValueError(f"--extend only lengthens a run: it was planned for {saved_iterations} steps, now "
                         f"{new_iterations}; pass a larger --num_iterations")


def resume_training(checkpoint_dir: str, step: int | None, model: torch.nn.Module,
                    optimizers: list[torch.optim.Optimizer], device: torch.device,
                    expect: dict[str, Any], flags: dict[str, Any] | None = None,
                    extend: bool = False) -> tuple[int, dict[str, Any], Any]:
    """
    Load what save_training_checkpoint wrote (the latest step when step is None) into model and
    optimizers; `expect` lists meta values this run must share with the saved one (model
    config, schedule length...) and `flags` this run's command-line flags, compared with the
    saved run's on every flag that changes the math. With `extend` the run's length
    (expect["num_iterations"] and the flags that set it) may grow. Returns (step, meta, this
    rank's data state).
    """
    rank = get_dist_info()[1]
    if step is None:
        step = find_last_step(checkpoint_dir, with_optimizer=True)
    model_data, optim_data, meta = load_checkpoint(checkpoint_dir, step, device, load_optimizer=True, rank=rank)
    missing = [k for k in RESUME_KEYS if k not in meta]
    if missing:
        raise CheckpointError(f"step {step} in {checkpoint_dir} has no {missing} in its meta, so it cannot be resumed "
                              "(it was not saved by a training run); start a fresh run with --overwrite")
    if "model_config" in expect:  # as the meta holds it (extensions only where on)
        expect = {**expect, "model_config": saved_config(expect["model_config"])}
    differ = {k: (meta.get(k), v) for k, v in expect.items() if meta.get(k) != v}
    if flags is not None and "user_config" in meta:
        differ.update(changed_flags(meta["user_config"], flags))
    if extend:
        extension_check(meta.get("num_iterations"), expect.get("num_iterations"))
        differ = {k: v for k, v in differ.items() if k not in LENGTH_FLAGS}
    if differ:
        details = "; ".join(f"{k}: saved {a}, now {b}" for k, (a, b) in differ.items())
        hint = (" (or, to train a finished run longer on purpose, add --extend)"
                if differ.keys() <= LENGTH_FLAGS and not extend else "")
        raise ValueError(f"the checkpoint in {checkpoint_dir} was trained with other settings ({details}); "
                         f"resume with the same flags{hint}")
    if len(meta["data_states"]) != get_dist_info()[3]:
        raise ValueError(f"the checkpoint was written by {len(meta['data_states'])} ranks; resume with as many")
    model.load_state_dict(model_data)
    for opt, state in zip(optimizers, optim_data):
        opt.load_state_dict(state)
    set_rng_state(meta["rng_states"][rank])
    return step, meta, meta["data_states"][rank]


def resume_if_asked(args: argparse.Namespace, checkpoint_dir: str, model: torch.nn.Module,
                    optimizers: list[torch.optim.Optimizer], device: torch.device,
                    expect: dict[str, Any]) -> ResumeState:
    """
    The --resume / --resume_from_step / --overwrite / --extend flags every training script
    takes. A fresh run refuses a model tag that already holds checkpoints (they would be
    overwritten step by step and mixed with this run's) unless --overwrite, which deletes them
    first. Raises ResumeError, saying why, when the run can neither start nor continue.
    """
    asked = args.resume or args.resume_from_step >= 0
    if args.extend and not asked:
        raise ResumeError("--extend continues a saved run: add --resume (or --resume_from_step=N)")
    if not asked:
        start_fresh(checkpoint_dir, args.overwrite)
        return ResumeState()
    try:
        step, meta, data_state = resume_training(checkpoint_dir, args.resume_from_step if args.resume_from_step >= 0 else None,
                                                 model, optimizers, device, expect, vars(args), extend=args.extend)
    except (CheckpointError, ValueError) as e:
        raise ResumeError(f"cannot resume: {e}") from e
    print0(f"resumed from step {step} of {checkpoint_dir}")
    return ResumeState(step, data_state, meta["loop_state"], meta.get("run_id") or ResumeState().run_id)


def start_fresh(checkpoint_dir: str, overwrite: bool) -> None:
    """A fresh run needs an empty folder: --overwrite empties it, else a run already there is refused."""
    try:
        existing = find_last_step(checkpoint_dir)
    except CheckpointError:
        existing = None
    if get_dist_info()[0]:
        # every rank looks before rank 0 deletes anything: a rank that looked after would find the
        # folder empty, skip the barrier below, and leave rank 0 waiting there for ever
        dist.barrier()
    if existing is None:
        return  # nothing there: a fresh run in a fresh folder
    if not overwrite:
        raise ResumeError(f"{checkpoint_dir} already holds checkpoints of a run (last step {existing}); continue it "
                          "with --resume, start over with --overwrite (deletes them), or pick another --model_tag")
    if get_dist_info()[1] == 0:
        print0(f"--overwrite: deleting the checkpoints in {checkpoint_dir}")
        clear_checkpoints(checkpoint_dir)
    if get_dist_info()[0]:
        dist.barrier()  # no rank starts before the old files are gone
