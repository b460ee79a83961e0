"""DPO: the losses by hand, the final-reply mask, the reference computed once, a short run that learns, exact resume."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nanochat.checkpoint_manager import load_model
from nanochat.preference import pair_batch, preference_loss, reference_logprobs, sequence_logprobs
from scripts import chat_dpo, chat_eval
from tasks.preferences import PreferenceTwin
from tiny import resume_matches, tiny_gpt

NO_AUTOCAST = torch.autocast("cpu", enabled=False)
SEQ = 128  # the sft_checkpoint fixture's context

# (2B,) reply log-probabilities, chosen first: one pair
POLICY, REFERENCE, LENGTHS = torch.tensor([-1.0, -3.0]), torch.tensor([-2.0, -2.0]), torch.tensor([2, 4])


def test_losses_against_values_by_hand():
    # sigmoid: β·[(−1 + 2) − (−3 + 2)] = 0.5 · 2 = 1, so the loss is log(1 + e^−1)
    out = preference_loss("sigmoid", 0.5, POLICY, REFERENCE)
    assert out.losses.item() == pytest.approx(math.log1p(math.exp(-1)))
    assert out.chosen_rewards.item() == pytest.approx(0.5) and out.rejected_rewards.item() == pytest.approx(-0.5)
    assert out.margin.item() == pytest.approx(1.0) and out.accuracy.item() == 1.0
    # ipo: (2 − 1/(2·0.5))² = 1
    assert preference_loss("ipo", 0.5, POLICY, REFERENCE).losses.item() == pytest.approx(1.0)
    # simpo: 0.5·(−1/2) − 0.5·(−3/4) − 0.1 = 0.025, no reference at all
    out = preference_loss("simpo", 0.5, POLICY, None, LENGTHS, gamma=0.1)
    assert out.losses.item() == pytest.approx(math.log1p(math.exp(-0.025)))
    assert out.chosen_rewards.item() == pytest.approx(-0.25)
    with pytest.raises(ValueError, match="loss must be one of"):
        preference_loss("hinge", 0.5, POLICY, REFERENCE)


def test_policy_equal_to_reference_gives_log_2_and_zero_margins():
    policy = torch.tensor([-5.0, -1.0, -7.5, -2.0, -3.0, -0.5])
    out = preference_loss("sigmoid", 0.1, policy, policy.clone())
    assert torch.allclose(out.losses, torch.full((3,), math.log(2)))
    assert (out.chosen_rewards == 0).all() and (out.rejected_rewards == 0).all() and out.margin.item() == 0
    assert out.accuracy.item() == 0  # a tie is not a preference


def test_targets_cover_only_the_final_reply(tiny_tokenizer):
    pair = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there"},
                         {"role": "user", "content": "Sky?"}], "chosen": "It is blue.", "rejected": "Red."}
    inputs, targets = pair_batch([pair], tiny_tokenizer, max_len=1000)
    end = tiny_tokenizer.encode_special("<|assistant_end|>")
    assert inputs.shape[0] == 2
    for row, reply in enumerate(("It is blue.", "Red.")):
        assert [t for t in targets[row].tolist() if t >= 0] == tiny_tokenizer.encode(reply) + [end]
        n = len(tiny_tokenizer.encode(reply)) + 1
        last = int((targets[row] >= 0).nonzero().max())
        assert (targets[row, last - n + 1 : last + 1] >= 0).all()  # one contiguous run, at the end of the row
    # a prompt too long for max_len leaves the reply no targets, never an earlier turn's
    _, cut = pair_batch([pair], tiny_tokenizer, max_len=8)
    assert (cut == -1).all()


def test_sequence_logprobs_and_the_reference_are_the_model_on_the_reply(tiny_tokenizer):
    model = tiny_gpt(tiny_tokenizer.get_vocab_size(), SEQ, jitter=0.05)
    pairs = PreferenceTwin("test", size=6)
    inputs, targets = pair_batch([pairs[0], pairs[1]], tiny_tokenizer, SEQ)
    with torch.no_grad():
        logp, lengths = sequence_logprobs(model, inputs, targets)
        by_hand = torch.log_softmax(model(inputs), -1).gather(2, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(logp, (by_hand * (targets >= 0)).sum(1), atol=1e-4)
    assert lengths.tolist() == (targets >= 0).sum(1).tolist()
    # computed in fixed chunks: the same numbers whichever pairs a caller asks for first
    ref = reference_logprobs(model, pairs, [0, 1, 2, 3], tiny_tokenizer, 2, SEQ, torch.device("cpu"), NO_AUTOCAST)
    assert ref[0] == pytest.approx((logp[0].item(), logp[2].item()), abs=1e-5)
    assert ref[1] == pytest.approx((logp[1].item(), logp[3].item()), abs=1e-5)


DPO_ARGS = ["--device_type=cpu", "--device_batch_size=4", "--target_pairs_per_step=8", "--max_pairs=400",
            "--eval_pairs=40", "--init_lr_frac=0.5"]


def test_dpo_raises_held_out_preference_accuracy_and_saves_a_dpo_model(sft_checkpoint):
    results = chat_dpo.main(DPO_ARGS + ["--num_iterations=30", "--eval_every=30"])
    model, _, meta = load_model("dpo", "cpu", "eval")  # what chat_eval, chat_cli and chat_web -i dpo load
    assert model.config.sequence_len == SEQ
    evals = meta["loop_state"]["evals"]
    # at step 0 the policy is the reference: loss log 2, every pair a tie, no KL
    assert evals["val_loss"][0] == [0, pytest.approx(math.log(2))]
    assert evals["val_accuracy"][0] == [0, 0.0] and evals["val_kl"][0] == [0, pytest.approx(0.0, abs=1e-6)]
    assert results["val_loss"] < math.log(2) - 0.05 and results["val_accuracy"] > 0 and results["val_margin"] > 0
    assert results["val_kl"] > 0
    assert "val_accuracy" in (sft_checkpoint / "report" / "chat-dpo.md").read_text()
    chat_eval.main(["-i", "dpo", "-a", "GSM8K", "--max_problems=2", "--max_new_tokens=4"])
    assert (sft_checkpoint / "report" / "chat-evaluation-dpo.md").exists()


@pytest.mark.parametrize("loss", ["ipo", "simpo"])
def test_the_other_losses_train(sft_checkpoint, loss):
    results = chat_dpo.main(DPO_ARGS + ["--num_iterations=6", "--eval_every=-1", f"--loss={loss}", "--beta=0.5"])
    assert math.isfinite(results["val_loss"])


def test_chat_dpo_resumes_bitwise(sft_checkpoint):
    args = DPO_ARGS + ["--num_iterations=4", "--save_every=2", "--eval_every=-1", "--max_pairs=24"]
    resume_matches(chat_dpo.main, args, sft_checkpoint / "chatdpo_checkpoints" / "d1", 4, 2)
    meta = json.loads((sft_checkpoint / "chatdpo_checkpoints" / "d1" / "meta_000004.json").read_text())
    assert meta["data_states"][0]["index"] == 32 - 24  # 4 steps of 8 pairs: the loader went round the 24 once


def test_malformed_pairs_are_skipped_and_counted_and_too_few_is_one_clear_line(sft_checkpoint, tmp_path):
    good = {"chosen": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}],
            "rejected": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Go away."}]}
    same = {**good, "rejected": good["chosen"]}
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in [good, same, {"chosen": good["chosen"]}] * 2))
    with pytest.raises(SystemExit, match=r"too few well-formed pairs .*2 pairs \(4 malformed skipped: .*chosen == rejected 2"):
        chat_dpo.main(DPO_ARGS + [f"--data_files={path}", "--num_iterations=2"])


@pytest.mark.slow
def test_two_ranks_with_uneven_shares_of_pairs(sft_checkpoint):
    # 11 train pairs (6 and 5 a rank, each rank going round its own) and 5 held out (3 and 2)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "scripts.chat_dpo",
           "--", "--device_type=cpu", "--device_batch_size=2", "--target_pairs_per_step=4", "--max_pairs=11",
           "--eval_pairs=5", "--num_iterations=4", "--eval_every=2"]
    proc = subprocess.run(cmd, cwd=Path(__file__).resolve().parents[1], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    meta = json.loads((sft_checkpoint / "chatdpo_checkpoints" / "d1" / "meta_000004.json").read_text())
    assert [state["rank"] for state in meta["data_states"]] == [0, 1]
    assert 0 <= meta["val_accuracy"] <= 1 and math.isfinite(meta["val_loss"])
    # rows padded per batch: never compiled unless asked, whatever the device
    assert "compile off (batch shapes vary)" in proc.stdout


def test_sft_coef_adds_the_chosen_replys_mean_token_nll(tiny_tokenizer):
    model = tiny_gpt(tiny_tokenizer.get_vocab_size(), 512, jitter=0.05)
    pairs = PreferenceTwin("test", size=2)
    inputs, targets = pair_batch([pairs[0], pairs[1]], tiny_tokenizer, 512)
    reference = torch.tensor([-5.0, -6.0, -7.0, -8.0])
    args = chat_dpo.parse_args(["--beta=0.3"])
    plain = chat_dpo.dpo_stats(model, NO_AUTOCAST, args)(inputs, targets, reference)["loss"]
    args.sft_coef = 0.5
    rpo = chat_dpo.dpo_stats(model, NO_AUTOCAST, args)(inputs, targets, reference)["loss"]
    with torch.no_grad():  # the chosen rows' per-token cross-entropy, by hand from the logits
        logp = torch.log_softmax(model(inputs[:2]).float(), -1)
        nlls = [-(logp[i][targets[i] >= 0].gather(1, targets[i][targets[i] >= 0][:, None])).mean() for i in range(2)]
    assert (rpo - plain).item() == pytest.approx(0.5 * sum(nlls).item() / 2, rel=1e-5)
