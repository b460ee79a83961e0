"""tok_train and tok_eval end to end on the synthetic twin, as a user runs them."""

from __future__ import annotations

import pytest
import requests

from nanochat.dataset import get_data_dir
from nanochat.synthetic import write_shards
from nanochat.tokenizer import get_token_bytes, get_tokenizer
from scripts import tok_eval, tok_train


@pytest.fixture
def synthetic_base(base_dir, monkeypatch):
    monkeypatch.setenv("NANOCHAT_DATASET", "synthetic")
    write_shards(get_data_dir(), num_shards=3, chars_per_shard=60_000)
    return base_dir


def test_tok_train_then_tok_eval(synthetic_base, monkeypatch, capsys):
    tok_train.main(["--vocab_size=600", "--max_chars=100000", "--doc_cap=2000"])
    out = capsys.readouterr().out
    assert "vocab size 600" in out
    tok = get_tokenizer()
    assert tok.get_vocab_size() == 600
    assert get_token_bytes().shape == (600,)
    report = (synthetic_base / "report" / "tokenizer-training.md").read_text()
    assert "trained_vocab_size: 600" in report

    results = tok_eval.main(["--references=", "--shard_chars=20000"])
    assert set(results) == {"news", "code", "math", "korean", "science", "train-shard", "val-shard"}
    # trained on this distribution, the tokenizer compresses its shards far better than bytes
    assert results["val-shard"]["ours"] > 2.0
    assert results["korean"]["ours"] == pytest.approx(1.0, abs=0.05)  # unseen script: about a token per byte
    assert (synthetic_base / "report" / "tokenizer-evaluation.md").exists()


def test_reference_encoding_offline_gives_a_one_line_note(monkeypatch, tmp_path):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))  # nothing cached

    def offline(*args, **kwargs):
        raise requests.ConnectionError("no network")

    monkeypatch.setattr(requests, "get", offline)
    monkeypatch.setattr(requests.Session, "request", offline)
    reference, note = tok_eval.load_reference("gpt2")
    assert reference is None
    assert note.startswith("note: gpt2 not compared") and "\n" not in note


def test_tok_train_without_data_says_what_to_run(base_dir):
    with pytest.raises(SystemExit, match="nanochat.dataset"):
        tok_train.main(["--vocab_size=300"])


def test_tok_eval_without_tokenizer_says_what_to_run(base_dir):
    with pytest.raises(SystemExit, match="tok_train"):
        tok_eval.main(["--references="])
