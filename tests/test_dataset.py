"""
nanochat.dataset: finding shards, splitting them, reading them rank by rank, and downloading
them against a real HTTP server on 127.0.0.1 that fails in the ways networks do.
"""

import io
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import ModuleType

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nanochat import dataset
from nanochat.dataset import (
    BASE_URL,
    MAX_SHARD,
    DownloadError,
    ShardError,
    download_shard,
    download_shards,
    get_data_dir,
    get_dataset_name,
    index_to_filename,
    list_parquet_files,
    open_parquet,
    parquets_iter_batched,
    shard_url,
    split_files,
)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = dict(max_attempts=3, backoff_s=0.001, timeout_s=5.0)  # retries without the real waits


def shard_docs(index: int, n: int = 10) -> list[str]:
    return [f"shard {index} document {j}: " + "lorem ipsum " * (j % 7) for j in range(n)]


def shard_bytes(index: int, n: int = 10, row_group_size: int = 3) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.table({"text": shard_docs(index, n)}), buf, row_group_size=row_group_size)
    return buf.getvalue()


def write_shards(data_dir, num_shards: int, n: int = 10, row_group_size: int = 3) -> list[str]:
    os.makedirs(data_dir, exist_ok=True)
    paths = []
    for i in range(num_shards):
        path = os.path.join(data_dir, index_to_filename(i))
        with open(path, "wb") as f:
            f.write(shard_bytes(i, n, row_group_size))
        paths.append(path)
    return paths


def leftovers(data_dir) -> list[str]:
    """Files that are not a complete shard (temp files, lock files): what no download may leave."""
    return [n for n in os.listdir(data_dir) if not n.endswith(".parquet")]


@pytest.fixture
def base_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(tmp_path))
    monkeypatch.delenv("NANOCHAT_DATASET", raising=False)
    return tmp_path


# -----------------------------------------------------------------------------
# names, dataset selection, data dirs


def test_index_filename_and_url():
    assert index_to_filename(42) == "shard_00042.parquet"
    assert index_to_filename(MAX_SHARD) == "shard_01822.parquet"
    assert shard_url(0) == f"{BASE_URL}/shard_00000.parquet"
    assert BASE_URL == "https://huggingface.co/datasets/karpathy/fineweb-edu-100b-shuffle/resolve/main"
    assert shard_url(7, "http://127.0.0.1:8000/") == "http://127.0.0.1:8000/shard_00007.parquet"


def test_dataset_name_from_env(base_dir, monkeypatch):
    assert get_dataset_name() == "fineweb"
    monkeypatch.setenv("NANOCHAT_DATASET", "synthetic")
    assert get_dataset_name() == "synthetic"
    monkeypatch.setenv("NANOCHAT_DATASET", "FineWeb-edu")
    with pytest.raises(ValueError, match="fineweb, synthetic"):
        get_dataset_name()


def test_data_dir_follows_dataset(base_dir, monkeypatch):
    assert get_data_dir() == os.path.join(base_dir, "base_data")
    assert get_data_dir("synthetic") == os.path.join(base_dir, "base_data_synthetic")
    monkeypatch.setenv("NANOCHAT_DATASET", "synthetic")
    assert get_data_dir() == os.path.join(base_dir, "base_data_synthetic")
    assert get_data_dir("fineweb") == os.path.join(base_dir, "base_data")
    with pytest.raises(ValueError, match="fineweb, synthetic"):
        get_data_dir("c4")


# -----------------------------------------------------------------------------
# listing and splitting


def test_list_ignores_temp_and_lock_files_and_sorts(base_dir):
    data_dir = get_data_dir()
    paths = write_shards(data_dir, 3)
    for junk in ("shard_00003.parquet.abc123.tmp", "shard_00001.parquet.lock", ".shard_00009.parquet", "notes.txt"):
        open(os.path.join(data_dir, junk), "w").close()
    assert list_parquet_files() == paths
    assert split_files("train") == paths[:2]
    assert split_files("val") == paths[2:]


def test_val_is_the_last_shard_even_when_listed_out_of_order(base_dir):
    data_dir = get_data_dir()
    write_shards(data_dir, 12)  # 10 and 11 sort after 9 only because of the zero padding
    assert os.path.basename(split_files("val")[0]) == "shard_00011.parquet"
    assert len(split_files("train")) == 11


def test_missing_folder_says_what_to_run(base_dir):
    with pytest.raises(FileNotFoundError) as e:
        list_parquet_files()
    message = str(e.value)
    assert get_data_dir() in message and "python -m nanochat.dataset -n 8" in message
    assert "NANOCHAT_DATASET=synthetic" in message


def test_folder_with_only_temp_files_counts_as_empty(base_dir):
    data_dir = get_data_dir()
    os.makedirs(data_dir)
    open(os.path.join(data_dir, "shard_00000.parquet.x1.tmp"), "w").close()
    with pytest.raises(FileNotFoundError, match="python -m nanochat.dataset"):
        split_files("train")


def test_one_shard_is_not_enough(base_dir):
    write_shards(get_data_dir(), 1)
    with pytest.raises(FileNotFoundError, match="at least 2"):
        split_files("train")


def test_bad_split_name(base_dir):
    write_shards(get_data_dir(), 2)
    with pytest.raises(ValueError, match="'train' or 'val'"):
        split_files("validation")


# -----------------------------------------------------------------------------
# reading


def test_iter_batched_yields_row_groups_in_order(base_dir):
    write_shards(get_data_dir(), 3, n=10, row_group_size=3)
    batches = list(parquets_iter_batched("train"))
    docs0, docs1 = shard_docs(0), shard_docs(1)
    expected = [docs0[0:3], docs0[3:6], docs0[6:9], docs0[9:], docs1[0:3], docs1[3:6], docs1[6:9], docs1[9:]]
    assert batches == expected
    assert [d for b in parquets_iter_batched("val") for d in b] == shard_docs(2)


def test_iter_batched_strided_ranks_are_disjoint_and_complete(base_dir):
    write_shards(get_data_dir(), 3, n=10, row_group_size=3)
    rank0 = [d for b in parquets_iter_batched("train", start=0, step=2) for d in b]
    rank1 = [d for b in parquets_iter_batched("train", start=1, step=2) for d in b]
    assert not set(rank0) & set(rank1)
    assert Counter(rank0 + rank1) == Counter(shard_docs(0) + shard_docs(1))
    # rank 0 gets row groups 0 and 2 of each shard
    assert rank0 == shard_docs(0)[0:3] + shard_docs(0)[6:9] + shard_docs(1)[0:3] + shard_docs(1)[6:9]


def test_iter_batched_follows_the_synthetic_env(base_dir, monkeypatch):
    write_shards(get_data_dir("synthetic"), 2)
    monkeypatch.setenv("NANOCHAT_DATASET", "synthetic")
    assert [d for b in parquets_iter_batched("val") for d in b] == shard_docs(1)


def test_truncated_shard_is_a_shard_error(tmp_path):
    path = tmp_path / "shard_00000.parquet"
    data = shard_bytes(0, n=200)
    path.write_bytes(data[: len(data) - 50])  # the tail (footer) is cut off, as after an interrupted copy
    with pytest.raises(ShardError) as e:
        open_parquet(str(path))
    assert str(path) in str(e.value) and "delete it" in str(e.value)
    assert "python -m nanochat.dataset" in str(e.value)


@pytest.mark.parametrize("content", [os.urandom(5000), b"", b"<html>rate limited</html>"])
def test_non_parquet_is_a_shard_error(tmp_path, content):
    path = tmp_path / "shard_00003.parquet"
    path.write_bytes(content)
    with pytest.raises(ShardError, match="shard_00003.parquet.*delete it"):
        open_parquet(str(path))


def test_parquet_without_text_column_is_a_shard_error(tmp_path):
    path = tmp_path / "shard_00000.parquet"
    pq.write_table(pa.table({"content": ["a", "b"]}), path)
    with pytest.raises(ShardError, match="no 'text' column"):
        open_parquet(str(path))


def test_damaged_page_behind_intact_footer_is_a_shard_error(base_dir):
    paths = write_shards(get_data_dir(), 2)
    data = bytearray(open(paths[0], "rb").read())
    data[4:40] = b"\xff" * 36  # overwrite the first page header, right after the leading magic
    open(paths[0], "wb").write(bytes(data))
    with pytest.raises(ShardError, match="shard_00000.parquet: row group 0"):
        list(parquets_iter_batched("train"))


# -----------------------------------------------------------------------------
# downloading from a real local HTTP server


class ShardServer:
    """
    Serves shard bytes on 127.0.0.1, misbehaving per request as scripted: each request takes the
    next action of `script` and the last one repeats. Actions: ok, 500, cut (the right
    Content-Length but the connection closes halfway), slow (pauses halfway), html (200 with a
    non-parquet body).
    """

    def __init__(self, files: dict[str, bytes], script: list[str]):
        self.files, self.script = files, list(script)
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server.respond(self)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def full_downloads(self) -> int:
        return sum(action in ("ok", "slow") for _, action in self.requests)

    def respond(self, h: BaseHTTPRequestHandler) -> None:
        name = h.path.lstrip("/")
        with self.lock:
            action = self.script.pop(0) if len(self.script) > 1 else self.script[0]
            self.requests.append((name, action))
        if name not in self.files:
            h.send_error(404)
            return
        if action == "500":
            h.send_error(500)
            return
        body = b"<html>try again later</html>" if action == "html" else self.files[name]
        h.send_response(200)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        half = len(body) // 2
        h.wfile.write(body[:half])
        if action == "cut":
            return  # the server closes the socket with half the promised bytes sent
        if action == "slow":
            h.wfile.flush()
            time.sleep(0.3)
        h.wfile.write(body[half:])

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve():
    servers = []

    def start(script: list[str], num_shards: int = 1) -> tuple[ShardServer, dict[str, bytes]]:
        files = {index_to_filename(i): shard_bytes(i, n=400, row_group_size=64) for i in range(num_shards)}
        servers.append(ShardServer(files, script))
        return servers[-1], files

    yield start
    for s in servers:
        s.close()


def test_download_retries_server_errors(tmp_path, serve):
    server, files = serve(["500", "500", "ok"])
    path = download_shard(0, str(tmp_path), server.url, **FAST)
    assert path == str(tmp_path / "shard_00000.parquet")
    assert open(path, "rb").read() == files["shard_00000.parquet"]
    assert [a for _, a in server.requests] == ["500", "500", "ok"]
    assert leftovers(tmp_path) == []


def test_download_always_cut_short_leaves_nothing(tmp_path, serve):
    server, _ = serve(["cut"])
    with pytest.raises(DownloadError) as e:
        download_shard(0, str(tmp_path), server.url, **FAST)
    message = str(e.value)
    assert f"{server.url}/shard_00000.parquet" in message and "3 attempts" in message
    assert "python -m nanochat.dataset" in message and "\n" not in message
    assert len(server.requests) == 3
    assert not (tmp_path / "shard_00000.parquet").exists()
    assert leftovers(tmp_path) == []
    with pytest.raises(FileNotFoundError):
        list_parquet_files(str(tmp_path))


def test_download_cut_once_then_succeeds(tmp_path, serve):
    server, files = serve(["cut", "ok"])
    path = download_shard(0, str(tmp_path), server.url, **FAST)
    assert open(path, "rb").read() == files["shard_00000.parquet"]
    assert len(server.requests) == 2
    assert leftovers(tmp_path) == []
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask  # as readable as any file the user writes


def test_download_rejects_a_body_that_is_not_parquet(tmp_path, serve):
    server, _ = serve(["html"])
    with pytest.raises(DownloadError, match="not a readable parquet file"):
        download_shard(0, str(tmp_path), server.url, **FAST)
    assert len(server.requests) == 3
    assert os.listdir(tmp_path) == []  # no temp file, no lock file


def test_download_does_not_retry_not_found(tmp_path, serve):
    server, _ = serve(["ok"])
    with pytest.raises(DownloadError, match="404"):
        download_shard(5, str(tmp_path), server.url, **FAST)
    assert len(server.requests) == 1


def test_present_shard_is_not_downloaded_again(tmp_path, serve):
    server, _ = serve(["ok"])
    (path,) = write_shards(tmp_path, 1)
    before = open(path, "rb").read()
    assert download_shard(0, str(tmp_path), server.url, **FAST) == path
    assert server.requests == []
    assert open(path, "rb").read() == before


def test_stale_temp_file_from_a_killed_download_is_removed(tmp_path, serve):
    server, files = serve(["ok"])
    stale = tmp_path / "shard_00000.parquet.k1ll3d.tmp"
    stale.write_bytes(b"half a shard")
    path = download_shard(0, str(tmp_path), server.url, **FAST)
    assert open(path, "rb").read() == files["shard_00000.parquet"]
    assert not stale.exists()


def test_concurrent_downloads_of_one_shard_fetch_it_once(tmp_path, serve):
    server, files = serve(["slow"])  # slow, so the callers overlap while the first one downloads
    barrier = threading.Barrier(3)
    results, errors = [], []

    def worker():
        barrier.wait()
        try:
            results.append(download_shard(0, str(tmp_path), server.url, **FAST))
        except Exception as e:  # reported below; an exception in a thread would otherwise vanish
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert results == [str(tmp_path / "shard_00000.parquet")] * 3
    assert len(server.requests) == 1 and server.full_downloads() == 1
    assert open(results[0], "rb").read() == files["shard_00000.parquet"]
    assert leftovers(tmp_path) == []


def test_download_shards_in_parallel(tmp_path, serve):
    server, files = serve(["ok"], num_shards=4)
    paths = download_shards(4, str(tmp_path), num_workers=2, base_url=server.url)
    assert paths == [str(tmp_path / index_to_filename(i)) for i in range(4)]
    for i, path in enumerate(paths):
        assert open(path, "rb").read() == files[index_to_filename(i)]
    assert len(server.requests) == 4
    # a second run resumes: nothing left to fetch
    assert download_shards(4, str(tmp_path), num_workers=2, base_url=server.url) == paths
    assert len(server.requests) == 4


def test_download_shards_rejects_impossible_counts(tmp_path):
    for n in (0, -2, MAX_SHARD + 2):
        with pytest.raises(ValueError, match="num_files"):
            download_shards(n, str(tmp_path))


# -----------------------------------------------------------------------------
# the command line


def run_cli(base_dir, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "NANOCHAT_BASE_DIR": str(base_dir)}
    env.pop("NANOCHAT_DATASET", None)
    return subprocess.run(
        [sys.executable, "-m", "nanochat.dataset", *args],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60,
    )


def test_cli_downloads_from_a_mirror(tmp_path, serve):
    server, files = serve(["ok"], num_shards=2)
    result = run_cli(tmp_path, "-n", "2", "--dataset", "fineweb", "--base_url", server.url)
    assert result.returncode == 0, result.stderr
    data_dir = os.path.join(tmp_path, "base_data")
    for name, body in files.items():
        assert open(os.path.join(data_dir, name), "rb").read() == body
    assert data_dir in result.stdout and "shard_00001.parquet" in result.stdout


def test_cli_failure_is_one_clear_line(tmp_path, serve):
    server, _ = serve(["ok"], num_shards=1)  # shard 1 is missing on the server: a 404
    result = run_cli(tmp_path, "-n", "2", "--base_url", server.url)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("nanochat.dataset: error:") and f"{server.url}/shard_00001.parquet" in last
    assert "python -m nanochat.dataset" in last


def test_cli_rejects_too_few_shards_and_bad_env(base_dir, monkeypatch, capsys):
    with pytest.raises(SystemExit) as e:
        dataset.main(["-n", "1"])
    assert e.value.code == 1
    assert "at least 2" in capsys.readouterr().err
    monkeypatch.setenv("NANOCHAT_DATASET", "openwebtext")
    with pytest.raises(SystemExit) as e:
        dataset.main(["-n", "8"])
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert "NANOCHAT_DATASET" in err and len(err.strip().splitlines()) == 1


def test_cli_synthetic_calls_the_offline_writer(base_dir, monkeypatch, capsys):
    calls = []

    def fake_write_shards(data_dir, num_shards=8, seed=0, chars_per_shard=500_000, num_workers=1):
        calls.append((data_dir, num_shards))
        return write_shards(data_dir, num_shards)

    fake = ModuleType("nanochat.synthetic")
    fake.write_shards = fake_write_shards
    monkeypatch.setitem(sys.modules, "nanochat.synthetic", fake)
    monkeypatch.setenv("NANOCHAT_DATASET", "synthetic")
    dataset.main(["-n", "3"])
    synthetic_dir = os.path.join(base_dir, "base_data_synthetic")
    assert calls == [(synthetic_dir, 3)]
    assert synthetic_dir in capsys.readouterr().out
    assert len(split_files("train")) == 2  # and the rest of the pipeline finds them through the env
