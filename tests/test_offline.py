"""Offline means offline: the CPU profile does not reach for the network, and downloads leave no lock files."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

from nanochat.common import file_lock
from nanochat.core_eval import write_offline_bundle
from nanochat.tokenizer import get_tokenizer_dir
from scripts import tok_eval

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def no_network(monkeypatch):
    """Any connection attempt fails the test, whatever library makes it."""
    def refuse(self, address, *args, **kwargs):
        raise AssertionError(f"tried the network: {address}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", lambda address, *a, **k: refuse(None, address))


def never_load(name):
    raise AssertionError(f"tok_eval tried to load the {name} reference offline")


@pytest.mark.parametrize("offline_by", ["NANOCHAT_DATASET", "HF_HUB_OFFLINE"])
def test_tok_eval_offline_skips_the_reference_encodings_with_a_note(offline_by, shards, tiny_tokenizer, monkeypatch,
                                                                     capsys, no_network):
    tiny_tokenizer.save(get_tokenizer_dir())
    if offline_by == "NANOCHAT_DATASET":  # the twin's shards: write a few where the synthetic dataset reads them
        from nanochat.dataset import get_data_dir
        from nanochat.synthetic import write_shards

        monkeypatch.setenv("NANOCHAT_DATASET", "synthetic")
        write_shards(get_data_dir(), num_shards=2, chars_per_shard=5_000)
    else:  # the real dataset's folder (the `shards` fixture), with the hub's offline switch on
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(tok_eval, "load_reference", never_load)
    results = tok_eval.main(["--shard_chars=2000"])
    assert all(set(r) == {"ours"} for r in results.values())
    out = capsys.readouterr().out
    assert "GPT-2 / GPT-4 not compared: offline" in out and offline_by in out


def test_tok_eval_online_compares_and_an_explicit_request_is_honoured(shards, tiny_tokenizer, monkeypatch, capsys):
    """Without an offline switch the references are asked for; offline, --references=gpt2 still asks for GPT-2."""
    tiny_tokenizer.save(get_tokenizer_dir())
    asked = []
    monkeypatch.setattr(tok_eval, "load_reference", lambda name: (asked.append(name), (None, f"note: {name} stub"))[1])
    tok_eval.main(["--shard_chars=2000"])
    assert asked == ["gpt2", "gpt4"]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tok_eval.main(["--shard_chars=2000", "--references=gpt2"])
    assert asked == ["gpt2", "gpt4", "gpt2"]


def test_file_lock_excludes_and_leaves_no_file(tmp_path):
    lock_path = str(tmp_path / "shard.lock")
    inside, overlaps, entries = [0], [], []

    def worker(i: int) -> None:
        for _ in range(5):
            with file_lock(lock_path):
                inside[0] += 1
                overlaps.append(inside[0])
                entries.append(i)
                time.sleep(0.002)  # long enough for the others to pile up on the lock
                inside[0] -= 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(entries) == 20 and max(overlaps) == 1  # every entry happened, never two at once
    assert list(tmp_path.iterdir()) == []  # the lock file went with the last holder


def test_the_offline_core_bundle_leaves_no_lock_file(tmp_path, no_network):
    write_offline_bundle(str(tmp_path / "eval_bundle_synthetic"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval_bundle_synthetic"]


def test_wandb_runs_are_ignored_by_git():
    assert "wandb/" in (ROOT / ".gitignore").read_text().splitlines()
