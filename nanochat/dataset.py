"""
The pretraining text: FineWeb-Edu, pre-shuffled into 1823 parquet shards on the Hugging Face
hub, or its offline twin written by nanochat/synthetic/ in the same layout. Each shard has
one `text` column stored in row groups of ~1024 documents. The last shard on disk is the
validation split; all the others are train.

    python -m nanochat.dataset -n 8                              # download 8 FineWeb-Edu shards
    NANOCHAT_DATASET=synthetic python -m nanochat.dataset -n 8   # write the offline twin

Everything downstream (tokenizer training, the data loader) finds its shards through
get_data_dir() / parquets_iter_batched(), so NANOCHAT_DATASET alone picks the data.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import suppress

import pyarrow as pa
import pyarrow.parquet as pq
import requests
from tqdm import tqdm

from nanochat.common import NanochatError, file_lock, found_elsewhere, get_base_dir, stream_url_to_file

BASE_URL = "https://huggingface.co/datasets/karpathy/fineweb-edu-100b-shuffle/resolve/main"
MAX_SHARD = 1822  # the last shard index on the hub, so there are MAX_SHARD + 1 shards

# dataset name -> folder under the base dir; the twin gets its own folder so the two never mix
_DATA_DIRS = {"fineweb": "base_data", "synthetic": "base_data_synthetic"}

HOW_TO_GET_DATA = (
    "run `python -m nanochat.dataset -n 8` to download FineWeb-Edu shards, "
    "or `NANOCHAT_DATASET=synthetic python -m nanochat.dataset -n 8` to write the offline twin"
)


def _one_line(error: BaseException) -> str:
    """pyarrow's messages span lines; ours go into one-line errors."""
    return " ".join(str(error).split())


class DataNotFoundError(NanochatError, FileNotFoundError):
    """No shards (or too few) where a stage looks for them: the fix is to download or write them."""


class ShardError(NanochatError):
    """A shard on disk that cannot be read: the fix is to delete it and fetch it again."""


class DownloadError(NanochatError):
    """A shard that could not be downloaded after every retry."""


def index_to_filename(index: int) -> str:
    return f"shard_{index:05d}.parquet"


def shard_url(index: int, base_url: str = BASE_URL) -> str:
    return f"{base_url.rstrip('/')}/{index_to_filename(index)}"


def get_dataset_name() -> str:
    """$NANOCHAT_DATASET, so one variable switches every stage to the offline twin."""
    name = os.environ.get("NANOCHAT_DATASET") or "fineweb"
    if name not in _DATA_DIRS:
        raise ValueError(f"NANOCHAT_DATASET must be one of {', '.join(_DATA_DIRS)}, not {name!r}")
    return name


def get_data_dir(dataset: str | None = None) -> str:
    """The shard folder of `dataset` (default: $NANOCHAT_DATASET); not created here, so a missing one shows."""
    dataset = get_dataset_name() if dataset is None else dataset
    if dataset not in _DATA_DIRS:
        raise ValueError(f"dataset must be one of {', '.join(_DATA_DIRS)}, not {dataset!r}")
    return os.path.join(get_base_dir(), _DATA_DIRS[dataset])


def _other_data_hint(data_dir: str) -> str:
    """Where shards were found instead: the other dataset in this base dir, or this dataset in another base dir."""
    if os.path.dirname(os.path.abspath(data_dir)) != os.path.abspath(get_base_dir()):
        return ""  # a folder the caller chose: nothing to compare it with
    name = os.path.basename(data_dir)
    for dataset, folder in _DATA_DIRS.items():
        other = os.path.join(get_base_dir(), folder)
        if folder != name and os.path.isdir(other) and any(n.endswith(".parquet") for n in os.listdir(other)):
            return f" (this base dir has {dataset} shards in {other}: set NANOCHAT_DATASET={dataset} to use them)"
    return found_elsewhere(name)


def list_parquet_files(data_dir: str | None = None) -> list[str]:
    """Complete shards in order; the zero-padded names make name order the index order."""
    data_dir = get_data_dir() if data_dir is None else data_dir
    names = os.listdir(data_dir) if os.path.isdir(data_dir) else []
    # Writers use temp names that do not end in .parquet, so a half-written file never counts;
    # hidden files are skipped in case another writer names its temps that way.
    paths = sorted(os.path.join(data_dir, n) for n in names if n.endswith(".parquet") and not n.startswith("."))
    if not paths:
        raise DataNotFoundError(f"no parquet shards in {data_dir}{_other_data_hint(data_dir)}: {HOW_TO_GET_DATA}")
    return paths


def split_files(split: str, data_dir: str | None = None) -> list[str]:
    """The last shard is val and the rest train, so adding shards later only grows train."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', not {split!r}")
    paths = list_parquet_files(data_dir)
    if len(paths) < 2:
        raise DataNotFoundError(
            f"only 1 shard in {os.path.dirname(paths[0])}, need at least 2 (the last one is the validation split): "
            f"{HOW_TO_GET_DATA}"
        )
    return paths[:-1] if split == "train" else paths[-1:]


def _load_parquet(path: str) -> pq.ParquetFile:
    """Open a parquet file that has a text column; ValueError says what is wrong with it."""
    try:
        # shards written with page checksums (the synthetic twin's) are verified page by page: a
        # flipped bit then fails loudly instead of silently changing documents
        pf = pq.ParquetFile(path, page_checksum_verification=True)
    except FileNotFoundError:
        raise
    except (OSError, pa.ArrowException) as e:
        raise ValueError(f"not a readable parquet file ({_one_line(e)})") from e
    if "text" not in pf.schema_arrow.names:
        pf.close()
        raise ValueError(f"no 'text' column (it has {pf.schema_arrow.names})")
    return pf


def open_parquet(path: str) -> pq.ParquetFile:
    """Open a shard, turning pyarrow's errors into one that says how to repair it."""
    try:
        return _load_parquet(path)
    except ValueError as e:
        raise ShardError(f"{path}: {e}; delete it and {HOW_TO_GET_DATA}") from e


def read_texts(pf: pq.ParquetFile, path: str, row_group: int) -> list[str]:
    """One row group's documents; ShardError with the path and the fix when it is damaged."""
    try:
        return pf.read_row_group(row_group, columns=["text"]).column("text").to_pylist()
    except (OSError, pa.ArrowException) as e:  # a damaged page behind an intact footer
        raise ShardError(
            f"{path}: row group {row_group} is unreadable ({_one_line(e)}); delete it and {HOW_TO_GET_DATA}"
        ) from e


def parquets_iter_batched(
    split: str, start: int = 0, step: int = 1, data_dir: str | None = None
) -> Iterator[list[str]]:
    """
    Each row group's documents as one list, visiting row groups start, start+step, ... of every
    shard of the split: with start=rank and step=world_size the ranks read disjoint documents.
    """
    if start < 0 or step < 1:
        raise ValueError(f"need start >= 0 and step >= 1, got start={start}, step={step}")
    for path in split_files(split, data_dir):
        with open_parquet(path) as pf:
            for rg in range(start, pf.num_row_groups, step):
                yield read_texts(pf, path, rg)


# -----------------------------------------------------------------------------
# Downloading


def _is_permanent(error: Exception) -> bool:
    """A 4xx answer (bar timeout and rate limit) will be the same next time, so retrying only wastes time."""
    if not isinstance(error, requests.HTTPError) or error.response is None:
        return False
    status = error.response.status_code
    return 400 <= status < 500 and status not in (408, 429)


def _fetch(url: str, path: str, timeout_s: float) -> None:
    """One attempt: stream into a temp file beside `path`, check it, then move it into place atomically."""
    # unique per process and thread, and (unlike mkstemp's 0600) created with the usual permissions
    tmp = f"{path}.{os.getpid()}-{threading.get_ident()}.tmp"
    try:
        with open(tmp, "xb") as f:
            stream_url_to_file(url, f, timeout_s)
            f.flush()
            os.fsync(f.fileno())  # the data is on disk before the name says the shard is complete
        _load_parquet(tmp).close()
        os.replace(tmp, path)
    except BaseException:  # also Ctrl-C: never leave a temp file behind
        with suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def download_shard(
    index: int,
    data_dir: str,
    base_url: str = BASE_URL,
    max_attempts: int = 5,
    backoff_s: float = 1.0,
    timeout_s: float = 30.0,
) -> str:
    """
    Make sure shard `index` is in data_dir and return its path. Safe to call from many ranks or
    processes at once: one downloads while the others wait on a file lock and then find it done.
    """
    if max_attempts < 1:
        raise ValueError(f"max_attempts must be at least 1, not {max_attempts}")
    path = os.path.join(data_dir, index_to_filename(index))
    if os.path.exists(path):
        return path
    os.makedirs(data_dir, exist_ok=True)
    url = shard_url(index, base_url)
    with file_lock(path + ".lock"):
        if os.path.exists(path):  # another process finished it while we waited
            return path
        # holding the lock, any temp file of this shard is left over from a killed download
        for stale in glob.glob(glob.escape(path) + ".*.tmp"):
            os.remove(stale)
        for attempt in range(1, max_attempts + 1):
            try:
                _fetch(url, path, timeout_s)
                return path
            except (requests.RequestException, OSError, ValueError) as e:
                last_error = e
            if attempt == max_attempts or _is_permanent(last_error):
                break
            time.sleep(backoff_s * 2 ** (attempt - 1))
    raise DownloadError(
        f"could not download {url} ({attempt} attempt{'s' if attempt > 1 else ''}, "
        f"last error: {_one_line(last_error)}); "
        f"check the network and re-run `python -m nanochat.dataset -n <shards>` (finished shards are kept), "
        f"or use the offline twin with NANOCHAT_DATASET=synthetic"
    )


def download_shards(
    num_files: int, data_dir: str | None = None, num_workers: int = 4, base_url: str = BASE_URL
) -> list[str]:
    """Shards 0..num_files-1 (-1: all of them) in parallel; shards already there are skipped, so re-running resumes."""
    num_files = MAX_SHARD + 1 if num_files == -1 else num_files
    if not 1 <= num_files <= MAX_SHARD + 1:
        raise ValueError(f"num_files must be between 1 and {MAX_SHARD + 1}, or -1 for all, not {num_files}")
    data_dir = get_data_dir("fineweb") if data_dir is None else data_dir
    paths: list[str | None] = [None] * num_files
    # threads are enough: the work is waiting on the network and the disk
    with ThreadPoolExecutor(max_workers=num_workers) as pool:
        futures = {pool.submit(download_shard, i, data_dir, base_url): i for i in range(num_files)}
        try:
            with tqdm(total=num_files, desc="shards", unit="shard") as bar:
                for future in as_completed(futures):
                    paths[futures[future]] = future.result()
                    bar.update(1)
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)  # after a failure, start no new downloads
            raise
    return paths  # type: ignore[return-value]  # every slot was filled or we raised


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Download FineWeb-Edu pretraining shards, or write the offline twin.")
    parser.add_argument("-n", "--num_files", "--num-files", type=int, required=True,
                        help="number of shards, at least 2 since the last is validation (-1: all FineWeb-Edu shards); required")
    parser.add_argument("-w", "--num_workers", "--num-workers", type=int, default=4, help="parallel workers (default: 4)")
    parser.add_argument("--dataset", choices=list(_DATA_DIRS), default=None,
                        help="fineweb or synthetic (default: $NANOCHAT_DATASET, else fineweb)")
    parser.add_argument("--base_url", default=BASE_URL, help="where the FineWeb-Edu shards are served, for a mirror (default: the Hugging Face hub)")
    args = parser.parse_args(argv)
    try:
        dataset = args.dataset or get_dataset_name()
        data_dir = get_data_dir(dataset)
        if args.num_files < 2 and not (dataset == "fineweb" and args.num_files == -1):
            raise ValueError(f"-n must be at least 2 (the last shard is the validation split), not {args.num_files}")
        if dataset == "synthetic":
            from nanochat.synthetic import write_shards

            paths = write_shards(data_dir, num_shards=args.num_files, num_workers=args.num_workers)
        else:
            paths = download_shards(args.num_files, data_dir, args.num_workers, args.base_url)
        on_disk = list_parquet_files(data_dir)
    except (DownloadError, ShardError, ValueError, OSError) as e:
        print(f"nanochat.dataset: error: {e}", file=sys.stderr)
        sys.exit(1)
    print(f"{len(paths)} {dataset} shards ready in {data_dir} "
          f"({len(on_disk)} on disk; the last, {os.path.basename(on_disk[-1])}, is the validation split)")


if __name__ == "__main__":
    main()
