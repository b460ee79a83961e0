"""No silent stretches: bench.py and base_loss say what they are doing before each long step."""

from __future__ import annotations

import json

import torch

from nanochat.checkpoint_manager import checkpoint_dir_for, save_checkpoint
from nanochat.gpt import GPT, GPTConfig
from nanochat.loss_eval import SAMPLE_PROMPTS
from nanochat.tokenizer import get_tokenizer
from scripts import base_loss, bench


def test_bench_says_what_it_runs_on_stderr_and_keeps_stdout_json(capsys):
    bench.main(["train", "--depth=1", "--vocab_size=256", "--seq_len=16", "--batch=2", "--steps=1", "--rounds=1", "--warmup=1",
                "--paths=float32,bfloat16", "--run_tokens=1", "--loss_steps=0", "--device_type=cpu"])
    bench.main(["decode", "--depth=1", "--vocab_size=256", "--prompt_len=4", "--new_tokens=4", "--batches=1,2",
                "--device_type=cpu"])
    out, err = capsys.readouterr()
    decoder = json.JSONDecoder()
    first, end = decoder.raw_decode(out)
    second, _ = decoder.raw_decode(out[end:].lstrip())
    assert first["benchmark"] == "train" and second["benchmark"] == "decode"  # stdout holds the JSON and only it
    lines = err.splitlines()
    # one line before each timed thing: every training path, every (batch, decoder) pair's warm-up, each batch's rounds
    assert sum(line.startswith("bench: train ") for line in lines) == 2
    decoders = ("engine_eager", "engine_compiled", "reference", "engine_bf16", "engine_bf16_compiled", "naive")
    for batch in (1, 2):
        assert [line.split(", ")[1].split(":")[0] for line in lines if line.startswith(f"bench: decode batch {batch}, ")] \
            == list(decoders)
        assert sum(line.startswith(f"bench: decode batch {batch}: ") and "rounds" in line for line in lines) == 1


def test_base_loss_announces_each_split_and_the_sampling(synthetic_setup, capsys):
    torch.manual_seed(0)
    config = GPTConfig(sequence_len=32, vocab_size=get_tokenizer().get_vocab_size(), n_layer=1, n_head=1, n_kv_head=1,
                       n_embd=64)
    model = GPT(config)
    model.init_weights()
    save_checkpoint(checkpoint_dir_for("base", "d1"), 3, model.state_dict(), None, {"model_config": vars(config), "step": 3})
    base_loss.main(["--device_type=cpu", "--device_batch_size=2", "--split_tokens=128"])
    lines = capsys.readouterr().out.splitlines()
    announce = [i for i, line in enumerate(lines) if line.endswith("...")]
    assert [lines[i].split(":")[0] for i in announce] == ["train", "val", "sampling greedy completions of 5 prompts..."]
    assert len(SAMPLE_PROMPTS) == 5
    # each announcement comes before its result
    assert lines.index(next(line for line in lines if line.startswith("train bpb"))) > announce[0]
    assert lines.index(next(line for line in lines if line.startswith("  sample:"))) > announce[2]
