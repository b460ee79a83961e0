"""bench.py runs and reports what it claims (speeds themselves are not tested)."""

from __future__ import annotations

import json

import pytest

from scripts import bench


def test_train_benchmark_json(tmp_path):
    out = tmp_path / "bench.json"
    # a run too short to compile: the default path is one of these, whatever this CPU has
    result = bench.main(["--out", str(out), "train", "--depth=1", "--vocab_size=256", "--seq_len=32", "--batch=2",
                         "--steps=1", "--rounds=2", "--warmup=1", "--paths=float32_plain_loss,float32,bfloat16",
                         "--run_tokens=1", "--loss_steps=3", "--device_type=cpu"])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    r = result["results"]
    assert set(r) == {"float32_plain_loss", "float32", "bfloat16"}
    assert result["baseline"] == "float32_plain_loss"  # the first path is every ratio's baseline
    assert r["float32_plain_loss"]["speedup_vs_float32_plain_loss"] == 1.0
    assert r["float32_plain_loss"]["peak_memory_vs_float32_plain_loss"] == 1.0
    assert r["float32"]["chunked_loss"] and not r["float32_plain_loss"]["chunked_loss"]
    for entry in r.values():
        assert entry["tok_per_s"] > 0 and entry["peak_memory_gib"] > 0 and entry["estimated_peak_gib"] > 0
        assert entry["speedup_vs_float32_plain_loss"] > 0 and entry["peak_memory_vs_float32_plain_loss"] > 0
        assert not entry["compiled"]
    assert r["float32"]["mfu_percent"] is None  # CPU: no peak known
    assert result["num_params"] == 2 * 256 * 64 + 12 * 64 * 64
    default = result["default"]
    assert default["path"] in r and default["choice"].startswith("precision: ") and "compile off" in default["choice"]
    check = result["loss_check"]
    assert check["steps"] == 3 and set(check["losses"]) == {"float32", default["path"]}
    assert check["within_2_percent"] == (abs(check["default_vs_float32_relative"]) <= 0.02)


def test_train_benchmark_adds_the_default_path_and_rejects_unknown_ones(monkeypatch):
    from nanochat import precision

    monkeypatch.setattr(precision, "cpu_bf16_feature", lambda: "avx512_bf16")
    result = bench.main(["train", "--depth=1", "--vocab_size=256", "--seq_len=16", "--batch=2", "--steps=1",
                         "--rounds=1", "--warmup=0", "--paths=float32", "--run_tokens=1", "--loss_steps=0",
                         "--device_type=cpu"])
    assert list(result["results"]) == ["float32", "bfloat16"] and result["default"]["path"] == "bfloat16"
    assert "loss_check" not in result
    for bad in ("float16", "bfloat16_plain_loss_compile", "float32_compile_plain_loss"):
        with pytest.raises(SystemExit):
            bench.main(["train", f"--paths={bad}", "--device_type=cpu"])


def test_decode_benchmark_json():
    # batches of 2 and more, to compile one graph (per dtype) rather than two
    result = bench.main(["decode", "--depth=1", "--vocab_size=256", "--prompt_len=4", "--new_tokens=6",
                         "--batches=2,3", "--naive_max_batch=2", "--rl_problems=1", "--rl_samples=4", "--rl_batch=2",
                         "--rounds=1", "--device_type=cpu"])
    r = result["results"]
    assert result["baseline"] == "engine_eager" and set(r) == {"batch_2", "batch_3", "rl_rollout"}
    paths = result["paths"]
    assert paths["engine_eager"].startswith("eager") and paths["engine_compiled"].startswith("compiled")
    assert paths["engine_bf16_compiled"].startswith("compiled")
    assert set(result["compile_s"]) == set(result["bf16_compile_s"]) == {"batch 2+"}
    assert result["compile_s"]["batch 2+"] > 0
    for batch in ("batch_2", "batch_3"):
        for name in ("engine_eager", "engine_compiled", "reference", "engine_bf16", "engine_bf16_compiled"):
            assert r[batch][f"{name}_tok_per_s"] > 0
        for name in ("engine_compiled", "reference", "engine_bf16", "engine_bf16_compiled"):
            assert r[batch][f"{name}_speedup_vs_engine_eager"] > 0
        assert r[batch]["engine_compiled_same_tokens_as_engine_eager"] is True
        n = batch.removeprefix("batch_")
        assert r[batch]["engine_compiled_rows_same_as_engine_eager"] == f"{n}/{n}"
        assert r[batch]["reference_same_tokens_as_engine_eager"] is True
    assert "naive_tok_per_s" in r["batch_2"] and "naive_tok_per_s" not in r["batch_3"]  # only up to --naive_max_batch
    assert r["batch_2"]["naive_speedup_vs_engine_eager"] > 0
    rl = r["rl_rollout"]
    assert rl["engine_eager_tok_per_s"] > 0 and rl["engine_compiled_tok_per_s"] > 0
    assert rl["engine_compiled_speedup_vs_engine_eager"] > 0
    assert rl["engine_compiled_same_tokens_as_engine_eager"] is True and rl["engine_compiled_rows_same_as_engine_eager"] == "4/4"


def test_tokenizer_benchmark_json():
    result = bench.main(["tokenizer", "--text=synthetic", "--chars=50000", "--vocab_size=400", "--threads=2"])
    assert result["vocab_size"] == 400
    assert result["bytes_per_token"] > 1.5  # merges compress the synthetic text
    assert result["encode_batch_tokens_per_s"] > 0 and result["train_chars_per_s"] > 0


def test_rollouts_benchmark_json():
    """Batched across problems against one batch per problem: both paths timed, and their greedy answers the same."""
    result = bench.main(["rollouts", "--depth=1", "--vocab_size=256", "--problems=3", "--samples=2", "--rows=4",
                         "--prompt_len=4", "--new_tokens=6", "--rounds=1", "--device_type=cpu"])
    r = result["results"]
    assert result["prompt_lens"] == [4, 8, 12] and result["baseline"] == "per_problem"
    assert r["per_problem_tok_per_s"] > 0 and r["batched_tok_per_s"] > 0
    assert r["batched_speedup_vs_per_problem"] == pytest.approx(r["batched_tok_per_s"] / r["per_problem_tok_per_s"])
    assert r["batched_same_greedy_tokens_as_per_problem"] is True
