"""
Saving and loading checkpoints, in nanochat's file layout so its checkpoints load here.

A checkpoint dir (one per stage and model tag, e.g. base_checkpoints/d20/) holds, per step:

    model_{step:06d}.pt             the model's state dict (written by rank 0)
    meta_{step:06d}.json            model_config plus whatever the training script adds (rank 0)
    optim_{step:06d}_rank{r}.pt     rank r's optimizer state dicts, as a list

Every file is written atomically (temp file, fsync, rename), and the meta file last, after
every rank's optimizer file is on disk, so a crash mid-save never leaves a half-written file
under a final name, and a step "exists" only once all of its files are complete. The meta
records how many optimizer shards the step has (`optim_ranks`), so resume can tell a step
that is complete for every rank from one a crashed rank left short.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from typing import IO, Any

import torch
import torch.distributed as dist

from nanochat.common import NanochatError, atomic_write, command_here, found_elsewhere, get_base_dir, get_dist_info, logger
from nanochat.gpt import GPT, GPTConfig, saved_config
from nanochat.stages import get_stage
from nanochat.tokenizer import RustBPETokenizer, get_tokenizer, get_tokenizer_dir

# torch.compile wraps the model, and a compiled model's state dict keys carry this prefix
COMPILED_PREFIX = "_orig_mod."

_META_RE = re.compile(r"meta_(\d+)\.json")
_TAG_RE = re.compile(r"d(\d+)")
_STEP_RE = re.compile(r"(?:meta|model|optim)_(\d+)")
_TMP_RE = re.compile(r".+\.tmp-(\d+)")  # common.atomic_write's temp files


class CheckpointError(NanochatError):
    """A checkpoint is missing, incomplete, corrupt, or does not match the code or tokenizer."""


def _model_path(checkpoint_dir: str, step: int) -> str:
    return os.path.join(checkpoint_dir, f"model_{step:06d}.pt")


def _meta_path(checkpoint_dir: str, step: int) -> str:
    return os.path.join(checkpoint_dir, f"meta_{step:06d}.json")


def _optim_path(checkpoint_dir: str, step: int, rank: int) -> str:
    return os.path.join(checkpoint_dir, f"optim_{step:06d}_rank{rank}.pt")


# ---- writing ----


class _HashingWriter:
    """A file that hashes what passes through it, so a checksum costs no second read of a 5 GB file."""

    def __init__(self, f: IO[bytes]) -> None:
        self.f, self.sha = f, hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        return self.f.write(data)

    def flush(self) -> None:
        self.f.flush()


def _save_hashed(path: str, obj: Any) -> str:
    """torch.save obj to path atomically; returns the file's sha256."""
    digest = {}

    def write(f: IO[bytes]) -> None:
        writer = _HashingWriter(f)
        torch.save(obj, writer)
        digest["sha256"] = writer.sha.hexdigest()

    atomic_write(path, write)
    return digest["sha256"]


def _sha256(path: str) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            sha.update(block)
    return sha.hexdigest()


def remove_stale_temp_files(checkpoint_dir: str) -> list[str]:
    """Delete `*.tmp-PID` files that interrupted saves left behind (their process is gone)."""
    removed = []
    for name in os.listdir(checkpoint_dir) if os.path.isdir(checkpoint_dir) else []:
        m = _TMP_RE.fullmatch(name)
        if m and not _process_alive(int(m.group(1))):
            os.remove(os.path.join(checkpoint_dir, name))
            removed.append(name)
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def save_checkpoint(
    checkpoint_dir: str,
    step: int,
    model_data: dict[str, torch.Tensor],
    optimizer_data: list[dict[str, Any]] | None,
    meta_data: dict[str, Any],
    rank: int | None = None,
) -> None:
    """
    Rank 0 writes the model and the meta; every rank writes its own optimizer state (the
    distributed optimizers keep only a shard per rank) unless optimizer_data is None.
    rank defaults to this process's torchrun rank. The meta records the sha256 of every file
    of the step, which loading checks: a corrupt file, or a file of another run under the same
    name, is refused instead of loaded.
    """
    if rank is None:
        rank = get_dist_info()[1]
    os.makedirs(checkpoint_dir, exist_ok=True)
    checksums = {}
    if rank == 0:
        if "model_config" not in meta_data:
            raise ValueError("meta_data needs 'model_config' (the GPTConfig fields) or the checkpoint cannot be loaded")
        meta_data = {**meta_data, "model_config": saved_config(meta_data["model_config"])}
        json.dumps(meta_data)  # a meta that is not JSON fails before anything is written
        remove_stale_temp_files(checkpoint_dir)
        model_path = _model_path(checkpoint_dir, step)
        checksums[os.path.basename(model_path)] = _save_hashed(model_path, model_data)
        logger.info("saved model to %s", model_path)
    if optimizer_data is not None:
        optim_path = _optim_path(checkpoint_dir, step, rank)
        checksums[os.path.basename(optim_path)] = _save_hashed(optim_path, optimizer_data)
        logger.info("saved optimizer state to %s", optim_path)
    if dist.is_available() and dist.is_initialized():
        # the meta is the step's completion marker: rank 0 writes it only once every rank's files
        # are on disk (a rank that dies before this point leaves the step without a meta, never
        # half-done); gathering every rank's checksums is that synchronization point
        gathered: list[dict[str, str]] = [{} for _ in range(dist.get_world_size())]
        dist.all_gather_object(gathered, checksums)
        checksums = {name: digest for part in gathered for name, digest in part.items()}
    if rank == 0:
        meta_data = {**meta_data, "checksums": checksums}
        if optimizer_data is not None:  # every rank writes a shard; resume needs all of them
            meta_data["optim_ranks"] = get_dist_info()[3]
        meta_path = _meta_path(checkpoint_dir, step)
        atomic_write(meta_path, lambda f: f.write(json.dumps(meta_data, indent=2).encode("utf-8")))
        logger.info("saved metadata to %s", meta_path)


# ---- reading ----


def _complete_steps(checkpoint_dir: str) -> list[int]:
    """Steps whose meta and model files are both present, ascending. Temp files never match."""
    steps = []
    for name in os.listdir(checkpoint_dir):
        m = _META_RE.fullmatch(name)
        if m and os.path.isfile(_model_path(checkpoint_dir, int(m.group(1)))):
            steps.append(int(m.group(1)))
    return sorted(steps)


def _unreadable(path: str, checkpoint_dir: str, step: int, err: Exception) -> CheckpointError:
    return CheckpointError(
        f"could not read {path} ({type(err).__name__}: {err}); it is truncated or corrupt. "
        f"Delete step {step}'s files and load an earlier step (complete steps: {_complete_steps(checkpoint_dir)})"
    )


def _torch_load(path: str, checkpoint_dir: str, step: int, device: torch.device | str) -> Any:
    # weights_only: a checkpoint is data, and unpickling arbitrary objects could run code
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # a truncated zip, a bad pickle, a wrong magic number: all fail differently
        raise _unreadable(path, checkpoint_dir, step, e) from e


def _verify_checksum(path: str, meta_data: dict[str, Any], checkpoint_dir: str, step: int) -> None:
    """Refuse a file whose bytes are not the ones its step's meta recorded (checkpoints older than checksums pass)."""
    expected = meta_data.get("checksums", {}).get(os.path.basename(path))
    if expected is None or _sha256(path) == expected:
        return
    earlier = [s for s in _complete_steps(checkpoint_dir) if s < step]
    fallback = f"load step {earlier[-1]} instead (--model_step / --resume_from_step)" if earlier else "no earlier step to fall back to"
    raise CheckpointError(
        f"{path} does not match the checksum its meta recorded: it is truncated or corrupt, or a save of "
        f"another run replaced it after step {step} was saved; {fallback}"
    )


def _require_file(path: str, checkpoint_dir: str) -> None:
    if not os.path.isfile(path):
        steps = _complete_steps(checkpoint_dir) if os.path.isdir(checkpoint_dir) else []
        raise CheckpointError(f"checkpoint file {path} is missing; complete steps in {checkpoint_dir}: {steps}")


def load_checkpoint(
    checkpoint_dir: str,
    step: int,
    device: torch.device | str,
    load_optimizer: bool = False,
    rank: int | None = None,
) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]] | None, dict[str, Any]]:
    """
    (model_data, optimizer_data or None, meta_data) of one step, tensors on `device`.
    rank (default: this process's torchrun rank) picks the optimizer shard to resume.
    """
    meta_path = _meta_path(checkpoint_dir, step)
    model_path = _model_path(checkpoint_dir, step)
    _require_file(meta_path, checkpoint_dir)
    _require_file(model_path, checkpoint_dir)
    try:
        with open(meta_path, encoding="utf-8") as f:
            meta_data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise _unreadable(meta_path, checkpoint_dir, step, e) from e
    if not isinstance(meta_data, dict):
        raise _unreadable(meta_path, checkpoint_dir, step, ValueError("not a JSON object"))
    _verify_checksum(model_path, meta_data, checkpoint_dir, step)
    model_data = _torch_load(model_path, checkpoint_dir, step, device)
    optimizer_data = None
    if load_optimizer:
        if rank is None:
            rank = get_dist_info()[1]
        optim_path = _optim_path(checkpoint_dir, step, rank)
        if not os.path.isfile(optim_path):
            prefix = f"optim_{step:06d}_rank"
            saved = sorted(n for n in os.listdir(checkpoint_dir) if n.startswith(prefix) and n.endswith(".pt"))
            raise CheckpointError(
                f"no optimizer state for rank {rank} at {optim_path} (found {saved}); resume with the "
                "number of ranks the checkpoint was saved with, or start without loading the optimizer"
            )
        _verify_checksum(optim_path, meta_data, checkpoint_dir, step)
        optimizer_data = _torch_load(optim_path, checkpoint_dir, step, device)
    logger.info("loaded checkpoint step %d from %s", step, checkpoint_dir)
    return model_data, optimizer_data, meta_data


def _missing_optimizer_shards(checkpoint_dir: str, step: int) -> list[str]:
    """The optimizer files a step's meta promises (`optim_ranks`) that are not on disk."""
    try:
        with open(_meta_path(checkpoint_dir, step), encoding="utf-8") as f:
            ranks = json.load(f).get("optim_ranks", 0)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return []  # an unreadable meta is reported, with its path, when the step is loaded
    return [os.path.basename(p) for r in range(ranks) if not os.path.isfile(p := _optim_path(checkpoint_dir, step, r))]


def find_last_step(checkpoint_dir: str, with_optimizer: bool = False) -> int:
    """
    The largest step with a complete checkpoint (a leftover model file without meta is an
    interrupted save). with_optimizer (what resume asks for) also skips, saying so, a step
    whose meta promises optimizer shards that are not all on disk.
    """
    if not os.path.isdir(checkpoint_dir):
        raise CheckpointError(f"checkpoint dir {checkpoint_dir} does not exist")
    steps = _complete_steps(checkpoint_dir)
    if not steps:
        raise CheckpointError(f"no complete checkpoint (meta_*.json with its model_*.pt) in {checkpoint_dir}")
    if not with_optimizer:
        return steps[-1]
    for step in reversed(steps):
        missing = _missing_optimizer_shards(checkpoint_dir, step)
        if not missing:
            return step
        logger.warning("skipping step %d of %s: its optimizer files %s are missing (an interrupted save)",
                       step, checkpoint_dir, missing)
    raise CheckpointError(f"no step in {checkpoint_dir} has all of its optimizer files; start a fresh run")


def _step_files(checkpoint_dir: str, step: int) -> list[str]:
    """A step's files, meta first (so a step deleted halfway never looks complete)."""
    prefix = f"optim_{step:06d}_rank"
    optims = sorted(os.path.join(checkpoint_dir, n) for n in os.listdir(checkpoint_dir) if n.startswith(prefix))
    return [p for p in (_meta_path(checkpoint_dir, step), _model_path(checkpoint_dir, step), *optims) if os.path.exists(p)]


def clear_checkpoints(checkpoint_dir: str) -> None:
    """Delete every step's files in checkpoint_dir (what --overwrite does before a fresh run)."""
    steps = {int(m.group(1)) for n in os.listdir(checkpoint_dir) if (m := _STEP_RE.match(n))}
    for step in sorted(steps):
        for path in _step_files(checkpoint_dir, step):
            os.remove(path)
    remove_stale_temp_files(checkpoint_dir)


def prune_checkpoints(checkpoint_dir: str, keep_last: int) -> list[int]:
    """
    Delete all but the newest keep_last complete steps (keep_last < 1 keeps everything) and
    return the steps deleted. Only complete steps count as kept, so the step a resume would
    pick is never removed; each step's meta goes first, so a step deleted halfway is never
    mistaken for a complete one.
    """
    if keep_last < 1 or not os.path.isdir(checkpoint_dir):
        return []
    steps = _complete_steps(checkpoint_dir)
    complete = [s for s in steps if not _missing_optimizer_shards(checkpoint_dir, s)]
    kept = set(complete[-keep_last:])
    doomed = [s for s in steps if s < min(kept, default=0)]
    for step in doomed:
        for path in _step_files(checkpoint_dir, step):
            os.remove(path)
        logger.info("deleted checkpoint step %d of %s (--keep_last=%d)", step, checkpoint_dir, keep_last)
    return doomed


def _elsewhere(checkpoints_dir: str) -> str:
    """The other known base dirs that hold this stage's checkpoints, for a "not found" message."""
    relative = os.path.relpath(checkpoints_dir, get_base_dir())
    return "" if relative.startswith("..") else found_elsewhere(relative)


def find_largest_model(checkpoints_dir: str) -> str:
    """The model tag to load by default: the deepest `d<N>`, else the most recently modified folder."""
    if not os.path.isdir(checkpoints_dir):
        raise CheckpointError(f"checkpoints dir {checkpoints_dir} does not exist{_elsewhere(checkpoints_dir)}")
    tags = [name for name in os.listdir(checkpoints_dir) if os.path.isdir(os.path.join(checkpoints_dir, name))]
    if not tags:
        raise CheckpointError(f"no model tags (subfolders) in {checkpoints_dir}{_elsewhere(checkpoints_dir)}")
    depths = {int(m.group(1)): tag for tag in tags if (m := _TAG_RE.fullmatch(tag))}
    if depths:
        return depths[max(depths)]
    return max(tags, key=lambda tag: os.path.getmtime(os.path.join(checkpoints_dir, tag)))


# ---- building models ----


def _mismatch_report(expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor], limit: int = 5) -> str:
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    shapes = [f"{k}: checkpoint {tuple(got[k].shape)} vs config {tuple(v.shape)}"
              for k, v in expected.items() if k in got and got[k].shape != v.shape]
    parts = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
        if items:
            more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
            parts.append(f"{label}: {items[:limit]}{more}")
    return "; ".join(parts)


def build_model(
    checkpoint_dir: str, step: int, device: torch.device | str, phase: str
) -> tuple[GPT, RustBPETokenizer, dict[str, Any]]:
    """A GPT with the weights of one step, in train or eval mode, and the tokenizer it was trained with."""
    if phase not in ("train", "eval"):
        raise ValueError(f"phase must be 'train' or 'eval', not {phase!r}")
    device = torch.device(device)
    model_data, _, meta_data = load_checkpoint(checkpoint_dir, step, device)
    model_data = {k.removeprefix(COMPILED_PREFIX): v for k, v in model_data.items()}

    meta_path = _meta_path(checkpoint_dir, step)
    try:
        config = GPTConfig(**meta_data["model_config"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{meta_path} has no valid model_config ({type(e).__name__}: {e})") from e

    # check the tokenizer before building: a model with the wrong vocabulary decodes nonsense
    tokenizer = get_tokenizer()
    if tokenizer.get_vocab_size() != config.vocab_size:
        raise CheckpointError(
            f"the tokenizer in {get_tokenizer_dir()} has vocab size {tokenizer.get_vocab_size()}, but the model in "
            f"{checkpoint_dir} was trained with vocab size {config.vocab_size}; use the tokenizer it was trained with"
        )

    # build on the meta device (no memory, no init), then give it real storage on `device`
    with torch.device("meta"):
        model = GPT(config)
    model.to_empty(device=device)
    model.init_weights()  # fills the rotary buffers, which are not in the state dict
    expected = model.state_dict()
    if expected.keys() != model_data.keys() or any(model_data[k].shape != v.shape for k, v in expected.items()):
        raise CheckpointError(
            f"{_model_path(checkpoint_dir, step)} does not match the config in {meta_path} ({config}): "
            f"{_mismatch_report(expected, model_data)}"
        )
    # keep the dtypes the model is built with: nanochat saves the embedding in bf16 on CUDA,
    # and with assign=True a bf16 tensor would otherwise replace an fp32 parameter
    model_data = {k: v.to(expected[k].dtype) for k, v in model_data.items()}
    model.load_state_dict(model_data, strict=True, assign=True)
    model.train(phase == "train")
    logger.info("loaded model from %s (step %d, %s)", checkpoint_dir, step, config)
    return model, tokenizer, meta_data


def checkpoint_dir_for(source: str, model_tag: str) -> str:
    """Where a stage saves (and later stages load) the checkpoints of one model tag."""
    return os.path.join(get_stage(source).checkpoints_dir(), model_tag)


def load_model(
    source: str, device: torch.device | str, phase: str, model_tag: str | None = None, step: int | None = None
) -> tuple[GPT, RustBPETokenizer, dict[str, Any]]:
    """
    The model a stage produced: by default its deepest model tag at its last step. The meta
    also names the tag it chose ("model_tag"), so a stage that trains on saves under the same one.
    """
    stage = get_stage(source)
    checkpoints_dir = stage.checkpoints_dir()
    try:
        if model_tag is None:
            model_tag = find_largest_model(checkpoints_dir)
        checkpoint_dir = os.path.join(checkpoints_dir, model_tag)
        if step is None:
            step = find_last_step(checkpoint_dir)
    except CheckpointError as e:
        raise CheckpointError(f"{e}; to make one here, train a {source} model with `{command_here(f'python -m {stage.script}')}`") from e
    model, tokenizer, meta = build_model(checkpoint_dir, step, device, phase)
    return model, tokenizer, {**meta, "model_tag": model_tag}
