"""
Pieces every training script shares: precision, batch arithmetic, schedules, the training
step, throughput accounting, and the RNG state that exact resume restores.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import random
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from nanochat.common import NanochatError, compute_cleanup, get_dist_info, print0


class NonFiniteLossError(NanochatError):
    pass


def resolve_dtype(device_type: str, dtype: str) -> torch.dtype:
    """'auto' is bf16 on CUDA and fp32 elsewhere; bf16 on CPU only when asked for."""
    if dtype == "auto":
        return torch.bfloat16 if device_type == "cuda" else torch.float32
    if dtype not in ("bfloat16", "float32"):
        raise ValueError(f"--dtype must be auto, bfloat16 or float32, not {dtype!r}")
    return getattr(torch, dtype)


def autocast_context(device_type: str, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """Mixed precision where it is asked for; fp32 means no autocast at all (bitwise-reproducible on CPU)."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.amp.autocast(device_type=device_type, dtype=dtype)


def grad_accum_steps_for(total_batch_size: int, device_batch_size: int, seq_len: int, world_size: int) -> int:
    """How many micro-batches each rank runs per step so the global batch is total_batch_size tokens."""
    tokens_per_micro_step = device_batch_size * seq_len * world_size
    if total_batch_size % tokens_per_micro_step:
        raise ValueError(
            f"--total_batch_size={total_batch_size} is not a multiple of device_batch_size × seq_len × world_size "
            f"= {device_batch_size} × {seq_len} × {world_size} = {tokens_per_micro_step}"
        )
    return total_batch_size // tokens_per_micro_step


def lr_multiplier(step: int, num_iterations: int, warmup_ratio: float = 0.0, warmdown_ratio: float = 0.2,
                  final_lr_frac: float = 0.0) -> float:
    """Linear warmup, constant, then linear warmdown to final_lr_frac at the last step."""
    warmup = round(warmup_ratio * num_iterations)
    warmdown = round(warmdown_ratio * num_iterations)
    if step < warmup:
        return (step + 1) / warmup
    if step <= num_iterations - warmdown:
        return 1.0
    progress = (num_iterations - step) / warmdown
    return progress + (1 - progress) * final_lr_frac


def muon_momentum(step: int, start: float = 0.85, end: float = 0.95, ramp_steps: int = 300) -> float:
    """Muon's momentum warms up from start to end over the first ramp_steps steps."""
    frac = min(step / ramp_steps, 1.0)
    return (1 - frac) * start + frac * end


def apply_schedule(optimizers: list[torch.optim.Optimizer], lr_mult: float, momentum: float | None = None) -> None:
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = group["initial_lr"] * lr_mult
            if momentum is not None and "momentum" in group:
                group["momentum"] = momentum


class StepBatches:
    """
    A micro-batch stream grouped into optimizer steps and read one step ahead. The training
    step takes this step's micro-batches, then fetches micro-batch i of the next step right
    after launching micro-batch i's backward, so on a GPU the data loading overlaps the device's
    work instead of waiting behind the step's final sync. A rank whose data runs out holds a
    short next step; `have_next_step` tells every rank, the same way, whether all of them can
    run another full step, so no rank leaves the loop while the others still call collectives.
    """

    def __init__(self, batches: Iterator[tuple], grad_accum_steps: int) -> None:
        self.batches, self.grad_accum_steps = batches, grad_accum_steps
        self.ahead: list[tuple] = []
        self.exhausted = False
        for _ in range(grad_accum_steps):
            self.fetch_one()

    def fetch_one(self) -> None:
        """Read one more micro-batch of the next step (nothing once it is full or the data ended)."""
        if self.exhausted or len(self.ahead) == self.grad_accum_steps:
            return
        try:
            self.ahead.append(next(self.batches))
        except StopIteration:
            self.exhausted = True

    def have_next_step(self) -> bool:
        """Whether every rank holds a full next step: one tiny collective, the same answer on all ranks."""
        return all_ranks(len(self.ahead) == self.grad_accum_steps)

    def take(self) -> list[tuple]:
        """This step's micro-batches; the next step's are read by fetch_one as the step runs."""
        if len(self.ahead) < self.grad_accum_steps:
            raise RuntimeError("the data ran out: check have_next_step() before every step")
        step, self.ahead = self.ahead, []
        return step


def all_ranks(flag: bool) -> bool:
    """True on every rank when flag is true on every rank (the logical AND across ranks)."""
    if not get_dist_info()[0]:
        return flag
    # gloo cannot all_reduce on a CUDA tensor and NCCL only can: put it where the backend works
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    t = torch.tensor(int(flag), device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def train_step(
    model: torch.nn.Module,
    optimizers: list[torch.optim.Optimizer],
    batches: StepBatches,
    autocast: contextlib.AbstractContextManager,
) -> tuple[torch.Tensor, tuple]:
    """
    One optimizer step over the next grad_accum_steps micro-batches. Each batch is (inputs,
    targets, *extra); returns the mean loss (a detached tensor, not synced) and the last batch's
    extras (e.g. the loader state). Gradients are averaged across ranks inside the distributed
    optimizers' step, so there is no DDP wrapper and no no_sync trick.
    """
    micro_batches = batches.take()
    total = torch.zeros((), device=next(model.parameters()).device)
    extra: tuple = ()
    for inputs, targets, *extra in micro_batches:
        with autocast:
            loss = model(inputs, targets)
        total += loss.detach()
        (loss / len(micro_batches)).backward()  # the mean over micro-batches, as one big batch would give
        batches.fetch_one()  # the GPU is still busy with this backward: read the next step's data now
    for opt in optimizers:
        opt.step()
    model.zero_grad(set_to_none=True)
    return total / len(micro_batches), tuple(extra)


def train_step_token_normalized(
    model: torch.nn.Module,
    optimizers: list[torch.optim.Optimizer],
    batches: StepBatches,
    autocast: contextlib.AbstractContextManager,
    loss_fn=None,
) -> tuple[torch.Tensor, int, tuple]:
    """
    One optimizer step whose loss is the sum over every target token of the step (all
    micro-batches, all ranks) divided by their count: micro-batches with more targets weigh
    more, and one with none contributes nothing (never NaN). Targets of -1 are ignored.
    `loss_fn(model, inputs, targets, *extra)` gives a summed loss (default: cross-entropy).
    Returns the mean loss per target token, the token count, and the last batch's extras.
    """
    micro_batches = batches.take()
    device = next(model.parameters()).device
    # the normalizer must be known before the first backward, so count every rank's targets first
    num_tokens = torch.tensor(sum(int((b[1] >= 0).sum()) for b in micro_batches), device=device)
    ddp, _, _, world_size = get_dist_info()
    if ddp:
        dist.all_reduce(num_tokens, op=dist.ReduceOp.SUM)
    # the distributed optimizers average gradients over ranks; scaling by world_size makes that a sum
    scale = world_size / max(int(num_tokens), 1)
    total = torch.zeros((), device=device)
    extra: tuple = ()
    for inputs, targets, *extra in micro_batches:
        with autocast:
            if loss_fn is None:
                loss_sum = model(inputs, targets, loss_reduction="sum")
            else:
                loss_sum = loss_fn(model, inputs, targets, *extra)
        total += loss_sum.detach()
        (loss_sum * scale).backward()
        batches.fetch_one()  # overlap the next step's data loading with this backward
    for opt in optimizers:
        opt.step()
    model.zero_grad(set_to_none=True)
    if ddp:
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total / max(int(num_tokens), 1), int(num_tokens), tuple(extra)


class StepLog:
    """
    The loop state a resumed run must continue (smoothed loss, training time, eval history)
    and the one log line per step: loss, LR multiplier, step time, tok/s, MFU, total time, and
    the time left (from the mean step time after this process's first 10, which compile and warm up).
    """

    def __init__(self, tokens_per_step: int, flops_per_token: float = 0.0, peak: float | None = None,
                 world_size: int = 1, state: dict | None = None, beta: float = 0.9) -> None:
        self.tokens_per_step, self.flops_per_token, self.peak, self.world_size = tokens_per_step, flops_per_token, peak, world_size
        self.state = state or {"ema": 0.0, "count": 0, "total_time": 0.0, "evals": {}}
        self.beta = beta
        self.steps_this_process = 0
        self.steady_time, self.steady_steps = 0.0, 0
        self.mfu: float | None = None

    @property
    def smooth_loss(self) -> float:
        """The debiased exponential moving average of the training loss."""
        return self.state["ema"] / (1 - self.beta ** max(self.state["count"], 1))

    def step(self, step: int, num_iterations: int | None, loss: float, dt: float, lrm: float,
             tokens: int | None = None, **extra: float) -> dict:
        """Record and print one step; `tokens` overrides tokens_per_step when steps vary in size."""
        self.state["ema"] = self.beta * self.state["ema"] + (1 - self.beta) * loss
        self.state["count"] += 1
        self.track(step, "train_loss", self.smooth_loss)  # the report's loss curve
        self.steps_this_process += 1
        self.state["total_time"] += dt
        if self.steps_this_process > 10:  # the first steps include compilation and warm-up: not typical of the rest
            self.steady_time, self.steady_steps = self.steady_time + dt, self.steady_steps + 1
        tok_per_s = (self.tokens_per_step if tokens is None else tokens) / dt
        self.mfu = 100 * self.flops_per_token * tok_per_s / (self.peak * self.world_size) if self.peak else None
        where = f"{step:05d}/{num_iterations:05d} ({100 * step / num_iterations:.2f}%)" if num_iterations else f"{step:05d}"
        extras = "".join(f" | {k}: {v:.4g}" for k, v in extra.items())
        print0(f"step {where} | loss: {self.smooth_loss:.6f} | lrm: {lrm:.2f} | dt: {dt * 1000:.2f}ms | "
               f"tok/s: {tok_per_s:,.0f} | mfu: {f'{self.mfu:.2f}%' if self.mfu is not None else 'n/a'}"
               f"{extras} | total time: {self.state['total_time'] / 60:.2f}m{self._eta(step, num_iterations, dt)}")
        metrics = {"step": step, "train/loss": self.smooth_loss, "train/lrm": lrm, "train/dt": dt, "train/tok_per_s": tok_per_s}
        if self.mfu is not None:
            metrics["train/mfu"] = self.mfu
        return {**metrics, **{f"train/{k}": v for k, v in extra.items()}}

    def _eta(self, step: int, num_iterations: int | None, dt: float) -> str:
        """' | eta: 12.3m' when the run's length is known (evaluations and saves not included)."""
        if not num_iterations:
            return ""
        per_step = self.steady_time / self.steady_steps if self.steady_steps else dt
        return f" | eta: {max(num_iterations - step - 1, 0) * per_step / 60:.1f}m"

    def track(self, step: int, name: str, value: float) -> None:
        """Keep a metric's history (for the report's curves) without printing it."""
        self.state["evals"].setdefault(name, []).append([step, value])

    def eval(self, step: int, name: str, value: float) -> dict:
        self.track(step, name, value)
        print0(f"step {step:05d} | {name}: {value:.4f}")
        return {"step": step, name: value}

    def history(self, name: str) -> list[list[float]]:
        return self.state["evals"].get(name, [])


def check_finite(loss: float, step: int) -> None:
    if not math.isfinite(loss):
        raise NonFiniteLossError(
            f"loss is {loss} at step {step}: training stopped and nothing was saved at this step; "
            "the last good checkpoint is intact (resume with --resume and, say, a lower learning rate)"
        )


def stop_if_not_finite(loss: float, step: int) -> None:
    """End the run (exit status 1, nothing saved at this step) on a NaN or infinite loss."""
    try:
        check_finite(loss, step)
    except NonFiniteLossError as e:
        print0(f"error: {e}")
        compute_cleanup()
        sys.exit(1)


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """The mean over ranks (for logging a loss every rank agrees on)."""
    if get_dist_info()[0]:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.AVG)
    return value


# Peak dense bf16 tensor FLOP/s, from the vendors' data sheets (without sparsity).
PEAK_BF16_FLOPS = {
    "H200": 989e12,
    "H100 NVL": 835e12,
    "H100 PCIe": 756e12,
    "H100": 989e12,
    "H800": 989e12,
    "GH200": 989e12,
    "B200": 2250e12,
    "A100": 312e12,
    "A800": 312e12,
    "A10G": 70e12,
    "A10": 125e12,
    "A6000": 155e12,
    "L40S": 362e12,
    "L40": 181e12,
    "L4": 121e12,
    "RTX 4090": 165e12,
    "RTX 3090": 71e12,
}


def peak_flops(device: torch.device, override: float = 0.0) -> float | None:
    """The device's peak bf16 FLOP/s for MFU, or None when unknown (CPU, unlisted GPU) and not given."""
    if override > 0:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, flops in PEAK_BF16_FLOPS.items():  # longest, most specific names are listed first
        if key in name:
            return flops
    return None


def peak_memory_mib(device: torch.device) -> float | None:
    """The most memory the device has held in tensors so far, in MiB (CUDA only: torch keeps no CPU statistics)."""
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def finish_line(results: dict[str, Any], device: torch.device) -> None:
    """Record the device's peak memory in a stage's results and print the stage's closing line."""
    peak = peak_memory_mib(device)
    results["peak_memory_mib"] = peak if peak is not None else "n/a"
    print0(f"peak memory: {f'{peak:,.0f} MiB' if peak is not None else 'n/a (not tracked on this device)'} | "
           f"training time: {results.get('training_time_min', 0):.2f}m")


def get_rng_state() -> dict[str, Any]:
    """Every RNG a training process draws from, as JSON-friendly data."""
    state = {"python": random.getstate(), "torch": torch.get_rng_state().tolist()}
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def save_training_checkpoint(checkpoint_dir: str, step: int, model: torch.nn.Module,
                             optimizers: list[torch.optim.Optimizer], meta: dict[str, Any], data_state: Any,
                             keep_last: int = -1) -> None:
    """
    Everything an exact resume needs: model, every rank's optimizer state, every rank's data
    position and RNG state (gathered into the meta), plus whatever the script puts in `meta`.
    Then only the newest keep_last complete steps are kept (keep_last < 1: all).
    """
    from nanochat.checkpoint_manager import prune_checkpoints, save_checkpoint

    meta = {**meta, "step": step, "data_states": gather_to_all(data_state), "rng_states": gather_to_all(get_rng_state())}
    rank = get_dist_info()[1]
    save_checkpoint(checkpoint_dir, step, model.state_dict(), [o.state_dict() for o in optimizers], meta, rank=rank)
    if rank == 0:  # save_checkpoint returns on rank 0 only once every rank's files are on disk
        prune_checkpoints(checkpoint_dir, keep_last)


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
    from nanochat.checkpoint_manager import CheckpointError, find_last_step, load_checkpoint

    rank = get_dist_info()[1]
    if step is None:
        step = find_last_step(checkpoint_dir, with_optimizer=True)
    model_data, optim_data, meta = load_checkpoint(checkpoint_dir, step, device, load_optimizer=True, rank=rank)
    missing = [k for k in RESUME_KEYS if k not in meta]
    if missing:
        raise CheckpointError(f"step {step} in {checkpoint_dir} has no {missing} in its meta, so it cannot be resumed "
                              "(it was not saved by a training run); start a fresh run with --overwrite")
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


def wants_compile(flag: str, device_type: str, fixed_shapes: bool) -> bool:
    """
    --compile: on, off, or auto = on for CUDA where the batch shapes are fixed (compiling for
    ever-changing shapes would spend its time recompiling instead of speeding up).
    """
    return flag == "on" or (flag == "auto" and device_type == "cuda" and fixed_shapes)


def compile_model(model: torch.nn.Module, compile: bool, fixed_shapes: bool) -> torch.nn.Module:
    """The model the training step calls; the uncompiled one shares its parameters, so saving and sampling use it."""
    return torch.compile(model, dynamic=not fixed_shapes) if compile else model


def plan_or_exit(config: Any, device_batch_size: int, seq_len: int, world_size: int, dtype: torch.dtype,
                 compiled: bool, device: torch.device, args: argparse.Namespace, lines: dict[str, object]) -> None:
    """Print the run's plan; exit after it with --dry_run, or with one line when it will not fit the device."""
    from nanochat.preflight import PreflightError, preflight

    try:
        preflight(config, device_batch_size, seq_len, world_size, dtype, compiled, device, lines,
                  enforce=not args.skip_preflight)
    except PreflightError as e:
        compute_cleanup()
        sys.exit(f"error: {e}")
    if args.dry_run:
        compute_cleanup()
        sys.exit(0)


def resume_if_asked(args: Any, checkpoint_dir: str, model: torch.nn.Module, optimizers: list[torch.optim.Optimizer],
                    device: torch.device, expect: dict[str, Any]) -> ResumeState:
    """
    The --resume / --resume_from_step / --overwrite flags every training script takes. A fresh
    run refuses a model tag that already holds checkpoints (they would be overwritten step by
    step and mixed with this run's) unless --overwrite, which deletes them first. A checkpoint
    that cannot be resumed ends the run with one line saying why.
    """
    from nanochat.checkpoint_manager import CheckpointError, clear_checkpoints, find_last_step

    if args.extend and not args.resume and args.resume_from_step < 0:
        compute_cleanup()
        sys.exit("error: --extend continues a saved run: add --resume (or --resume_from_step=N)")
    if not args.resume and args.resume_from_step < 0:
        try:
            existing = find_last_step(checkpoint_dir)
        except CheckpointError:
            return ResumeState()  # nothing there: a fresh run in a fresh folder
        if not args.overwrite:
            compute_cleanup()
            sys.exit(f"error: {checkpoint_dir} already holds checkpoints of a run (last step {existing}); continue it "
                     "with --resume, start over with --overwrite (deletes them), or pick another --model_tag")
        if get_dist_info()[1] == 0:
            print0(f"--overwrite: deleting the checkpoints in {checkpoint_dir}")
            clear_checkpoints(checkpoint_dir)
        if get_dist_info()[0]:
            dist.barrier()  # no rank starts before the old files are gone
        return ResumeState()
    try:
        step, meta, data_state = resume_training(checkpoint_dir, args.resume_from_step if args.resume_from_step >= 0 else None,
                                                 model, optimizers, device, expect, vars(args),
                                                 extend=getattr(args, "extend", False))
    except (CheckpointError, ValueError) as e:
        compute_cleanup()
        sys.exit(f"error: cannot resume: {e}")
    print0(f"resumed from step {step} of {checkpoint_dir}")
    return ResumeState(step, data_state, meta["loop_state"], meta.get("run_id") or ResumeState().run_id)


def scale_learning_rates(optimizers: list[torch.optim.Optimizer], frac: float) -> None:
    """Start a fine-tuning stage at a fraction of the pretraining learning rates."""
    for opt in optimizers:
        for group in opt.param_groups:
            group["initial_lr"] = group["lr"] = group["lr"] * frac


def gather_to_all(obj: Any) -> list[Any]:
    """Every rank's obj, in rank order (a one-element list without torchrun)."""
    ddp, _, _, world_size = get_dist_info()
    if not ddp:
        return [obj]
    out: list[Any] = [None] * world_size
    dist.all_gather_object(out, obj)
    return out
