"""
Things every stage needs: where files live, which device to use, distributed set-up,
rank-0 printing, logging, seeding, a stand-in for wandb, and a script's entry point (the one
place the library's typed errors become a one-line exit).
"""

from __future__ import annotations

import errno
import functools
import gc
import logging
import os
import random
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import timedelta
from typing import IO, Any, ParamSpec, TypeVar

import torch
import torch.distributed as dist

from nanochat.errors import NanochatError, NonFiniteLossError, PlanOnly

logger = logging.getLogger("nanochat")
P = ParamSpec("P")
T = TypeVar("T")


def run_main(main: Callable[[], T]) -> T:
    """
    Run a script's main: the library's typed errors, and a full disk, end the run with one line
    and exit status 1; --dry_run's PlanOnly ends it with status 0. Anything else is a bug and
    keeps its traceback. Returns what main returns.
    """
    try:
        return main()
    except PlanOnly:
        compute_cleanup()  # every rank printed the same plan: leave the process group together
        sys.exit(0)
    except NanochatError as e:
        if e.every_rank:
            compute_cleanup()
        if isinstance(e, NonFiniteLossError):
            # every rank holds the same (averaged) loss: one line, in the step log where it happened
            print0(f"error: {e}")
            sys.exit(1)
        sys.exit(f"error: {e}")
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        sys.exit(f"error: no space left on the device ({e.filename or 'writing a file'}): free some (a stage's older "
                 "checkpoints go with --keep_last) and rerun with --resume; the last complete checkpoint is intact")


def script_main(main: Callable[P, T]) -> Callable[P, T]:
    """
    Decorates a script's main(argv) so it runs through run_main: every caller (the command line,
    speedrun.sh, a test) gets the same one-line exits.
    """

    @functools.wraps(main)
    def run(*args: P.args, **kwargs: P.kwargs) -> T:
        return run_main(lambda: main(*args, **kwargs))

    return run


def default_base_dir() -> str:
    """Where runs live when NANOCHAT_BASE_DIR is not set (speedrun.sh's GPU profile too)."""
    return os.path.join(os.path.expanduser("~"), ".cache", "nanochat")


def cpu_base_dir() -> str:
    """Where speedrun.sh's CPU profile puts its run, apart from any real one."""
    return os.path.join(os.path.expanduser("~"), ".cache", "nanochat-cpu")


def get_base_dir() -> str:
    """
    The folder holding tokenizer, data and checkpoints: $NANOCHAT_BASE_DIR or ~/.cache/nanochat.
    Not created here: reading from a missing folder must leave nothing behind, so each writer
    creates the folder it writes into.
    """
    return os.environ.get("NANOCHAT_BASE_DIR") or default_base_dir()


def env_for(base_dir: str) -> str:
    """
    The environment to put before a command so it reads `base_dir`: NANOCHAT_BASE_DIR unless it
    is the default, and NANOCHAT_DATASET=synthetic where the folder holds only the offline twin's
    shards (the CPU speedrun's). Ends with a space when not empty, ready to prepend.
    """
    parts = []
    if os.path.abspath(base_dir) != os.path.abspath(default_base_dir()):
        parts.append(f"NANOCHAT_BASE_DIR={base_dir}")
    if os.path.isdir(os.path.join(base_dir, "base_data_synthetic")) and not os.path.isdir(os.path.join(base_dir, "base_data")):
        parts.append("NANOCHAT_DATASET=synthetic")
    return "".join(f"{p} " for p in parts)


def command_here(command: str) -> str:
    """`command` as the user must type it to reach this process's base dir and data from a fresh shell."""
    prefix = env_for(get_base_dir())
    if os.environ.get("NANOCHAT_DATASET") == "synthetic" and "NANOCHAT_DATASET" not in prefix:
        prefix += "NANOCHAT_DATASET=synthetic "
    return prefix + command


def found_elsewhere(relative: str) -> str:
    """
    For a "not found" message: the other known base dirs (~/.cache/nanochat and the CPU
    speedrun's ~/.cache/nanochat-cpu) that do hold `relative`, and how to point a command at
    them; empty when none does.
    """
    here = os.path.abspath(get_base_dir())
    hits = [d for d in dict.fromkeys((default_base_dir(), cpu_base_dir()))
            if os.path.abspath(d) != here and os.path.exists(os.path.join(d, relative))]
    return "".join(f"; {d} has {relative} (a run there): {_how_to_reach(d)}" for d in hits)


def _how_to_reach(base_dir: str) -> str:
    env = env_for(base_dir).strip()
    if os.path.abspath(base_dir) == os.path.abspath(default_base_dir()):
        return "unset NANOCHAT_BASE_DIR" + (f" and put `{env}` before the command" if env else "")
    return f"put `{env}` before the command"


def _fsync_dir(directory: str) -> None:
    """Make a rename in `directory` durable: without this a power loss can undo os.replace."""
    if os.name != "posix":  # Windows cannot open a directory; its renames are journaled anyway
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some network and FUSE filesystems refuse fsync on a directory; the data is already synced
        pass
    finally:
        os.close(fd)


def atomic_write(path: str, write: Callable[[IO[bytes]], None]) -> None:
    """
    Write a file through a temp file in the same folder, then rename: `path` is always either
    the old file, the complete new one, or absent, whatever kills the process mid-write.
    """
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        # after a failure (even KeyboardInterrupt) no partial temp file is left behind
        if os.path.exists(tmp):
            os.remove(tmp)
    _fsync_dir(os.path.dirname(path) or ".")


@contextmanager
def file_lock(path: str) -> Iterator[None]:
    """
    An exclusive lock between processes (and threads) on the file `path`, which is removed
    before the lock is released, so finished downloads leave no lock files behind. Removing
    it while held is safe: a waiter that then wins the removed file's lock finds it unlinked
    and starts over on a fresh file (filelock checks the link count), so the lock never has
    two holders.
    """
    from filelock import FileLock

    with FileLock(path):
        try:
            yield
        finally:
            with suppress(FileNotFoundError):
                os.remove(path)


def stream_url_to_file(url: str, f: IO[bytes], timeout_s: float = 30.0) -> int:
    """
    Download url into an open file, checking the byte count against Content-Length so a cut
    connection is an error rather than a short file. Returns the bytes written.
    """
    import requests

    # identity encoding, so the bytes counted are the bytes Content-Length promises
    with requests.get(url, stream=True, timeout=timeout_s, headers={"Accept-Encoding": "identity"}) as r:
        r.raise_for_status()
        expected = r.headers.get("Content-Length")
        written = 0
        for chunk in r.iter_content(chunk_size=1 << 20):
            f.write(chunk)
            written += len(chunk)
    if expected is not None and written != int(expected):
        raise OSError(f"connection ended after {written} of {expected} bytes")
    return written


class _ColoredFormatter(logging.Formatter):
    COLORS = {"DEBUG": "\033[36m", "INFO": "\033[32m", "WARNING": "\033[33m", "ERROR": "\033[31m", "CRITICAL": "\033[35m"}
    RESET = "\033[0m"

    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        if not sys.stderr.isatty():
            return message
        color = self.COLORS.get(record.levelname, "")
        return message.replace(record.levelname, f"{color}{record.levelname}{self.RESET}", 1)


def setup_default_logging(level: int = logging.INFO) -> None:
    """One stderr handler on the 'nanochat' logger; calling twice does not add a second."""
    if logger.handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(_ColoredFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False


def get_dist_info() -> tuple[bool, int, int, int]:
    """(ddp, rank, local_rank, world_size) from torchrun's environment variables."""
    if all(k in os.environ for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE")):
        return True, int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"])
    return False, 0, 0, 1


def print0(*args: Any, **kwargs: Any) -> None:
    """print() on rank 0 only, so a torchrun job does not print everything N times."""
    if get_dist_info()[1] == 0:
        print(*args, **kwargs)


def autodetect_device_type() -> str:
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def seed_everything(seed: int) -> None:
    """Seed Python, torch (CPU and every CUDA device) and numpy if it is there."""
    random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    try:
        import numpy as np

        np.random.seed(seed % (2**32))
    except ImportError:
        pass


def configure_cuda(device_type: str) -> None:
    """
    TF32 matmuls and an allocator that fragments less, on CUDA only. Call before the first CUDA
    allocation: the allocator reads its settings once.
    """
    if device_type != "cuda":
        return
    # one API only: setting TF32 through the new `fp32_precision` attributes makes the legacy
    # getters (which inductor's autotuning still calls) raise about "a mix of legacy and new APIs"
    torch.set_float32_matmul_precision("high")
    # training steps allocate many differently sized activations; expandable segments keep the
    # reserved-but-unusable memory low, which is what decides whether d20 at batch 32 fits in 80 GB
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")


def compute_init(device_type: str = "cuda", seed: int = 42) -> tuple[bool, int, int, int, torch.device]:
    """
    Set up this process for training or inference: seeds, matmul precision, and, when run
    under torchrun, the process group (NCCL on CUDA, gloo on CPU). Returns
    (ddp, rank, local_rank, world_size, device).
    """
    if device_type not in ("cuda", "mps", "cpu"):
        raise ValueError(f"device_type must be cuda, mps or cpu, not {device_type!r}")
    if device_type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device_type=cuda was asked for but torch sees no CUDA device; use --device_type=cpu")
    if device_type == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError("device_type=mps was asked for but MPS is not available; use --device_type=cpu")

    seed_everything(seed)
    configure_cuda(device_type)

    ddp, rank, local_rank, world_size = get_dist_info()
    if ddp and device_type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl", device_id=device)
        dist.barrier()
    elif ddp:
        device = torch.device(device_type)
        # gloo can be slow to rendezvous on loaded CI machines; give it room
        dist.init_process_group(backend="gloo", timeout=timedelta(minutes=10))
        dist.barrier()
    else:
        device = torch.device(device_type)
    if rank == 0:
        setup_default_logging()
        logger.info("device %s, world size %d", device, world_size)
    return ddp, rank, local_rank, world_size, device


def compute_cleanup() -> None:
    """Tear down the process group: collect garbage, meet, destroy, in that order."""
    if dist.is_available() and dist.is_initialized():
        # objects in reference cycles (frames of finished steps holding async collective handles)
        # would otherwise be freed at interpreter exit, after the group is gone, where gloo's
        # destructor meets a still-running worker thread and aborts the process (SIGABRT,
        # "terminate called without an active exception", about 1 run in 4 before this)
        gc.collect()
        # ranks that tear down while others still talk can abort gloo; meet first
        dist.barrier()
        dist.destroy_process_group()


class DummyWandb:
    """Takes wandb's calls and does nothing, for --run=dummy."""

    def log(self, *args: Any, **kwargs: Any) -> None:
        pass

    def finish(self) -> None:
        pass


def init_wandb(run: str, project: str, config: dict, master_process: bool) -> Any:
    """A real wandb run unless run == 'dummy' or this is not the master process."""
    if run == "dummy" or not master_process:
        return DummyWandb()
    import wandb

    return wandb.init(project=project, name=run, config=config)
