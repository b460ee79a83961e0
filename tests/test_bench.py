"""bench.py runs and reports what it claims (speeds themselves are not tested)."""

from __future__ import annotations

import json

from scripts import bench


def test_train_benchmark_json(tmp_path):
    out = tmp_path / "bench.json"
    result = bench.main(["--out", str(out), "train", "--depth=1", "--vocab_size=256", "--seq_len=32", "--batch=2",
                         "--steps=2", "--warmup=1", "--dtypes=float32,bfloat16", "--device_type=cpu"])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    r = result["results"]
    assert set(r) == {"float32", "bfloat16"} and r["float32"]["speedup_vs_float32"] == 1.0
    assert r["bfloat16"]["tok_per_s"] > 0 and r["float32"]["mfu_percent"] is None  # CPU: no peak known
    assert result["num_params"] == 2 * 256 * 64 + 12 * 64 * 64


def test_tokenizer_benchmark_json():
    result = bench.main(["tokenizer", "--text=synthetic", "--chars=50000", "--vocab_size=400", "--threads=2"])
    assert result["vocab_size"] == 400
    assert result["bytes_per_token"] > 1.5  # merges compress the synthetic text
    assert result["encode_batch_tokens_per_s"] > 0 and result["train_chars_per_s"] > 0
