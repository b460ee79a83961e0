"""The reward model: the Bradley–Terry loss by hand, where the score is read, a short run, loading by tag, exact resume."""

from __future__ import annotations

import math

import pytest
import torch

from nanochat.preference import (as_reward_model, bradley_terry_loss, held_out_sums, load_reward_model, pair_batch,
                                 reply_rewards, score_conversation, with_reply)
from scripts import chat_rm
from tasks.preferences import PERTURBATIONS, PreferenceTwin, preference_datasets
from tiny import resume_matches, tiny_gpt


def test_bradley_terry_loss_by_hand():
    rewards = torch.tensor([2.0, -1.0, 0.5, 0.0])  # two pairs: chosen (2, −1), rejected (0.5, 0)
    out = bradley_terry_loss(rewards)
    assert out.losses.tolist() == pytest.approx([math.log1p(math.exp(-1.5)), math.log1p(math.exp(1.0))])
    assert out.accuracy.item() == 0.5 and out.margin.item() == pytest.approx((1.5 - 1.0) / 2)
    # the centering term: 0.1·(r_c + r_r)² per pair
    centered = bradley_terry_loss(rewards, center_coef=0.1)
    assert (centered.losses - out.losses).tolist() == pytest.approx([0.1 * 2.5 ** 2, 0.1 * 1.0 ** 2])


def test_the_score_is_read_at_the_replys_last_token(tiny_tokenizer):
    model = as_reward_model(tiny_gpt(tiny_tokenizer.get_vocab_size(), 512, jitter=0.05))  # room for every reply
    with torch.no_grad():
        model.lm_head.weight.normal_()  # a head that says something
    pairs = PreferenceTwin("test", size=4)
    inputs, targets = pair_batch([pairs[0], pairs[1]], tiny_tokenizer, 512)
    with torch.no_grad():
        rewards = reply_rewards(model, inputs, targets)
        scores = model(inputs)[..., 0]
    for row in range(4):
        last = int((targets[row] >= 0).nonzero().max())
        assert targets[row, last] == tiny_tokenizer.encode_special("<|assistant_end|>")
        assert rewards[row].item() == pytest.approx(scores[row, last].item())
    # one conversation alone scores the same as in its padded batch
    alone = score_conversation(model, tiny_tokenizer, with_reply(pairs[0], pairs[0]["chosen"]))
    assert alone == pytest.approx(rewards[0].item(), abs=1e-5)


RM_ARGS = ["--device_type=cpu", "--device_batch_size=4", "--target_pairs_per_step=8", "--max_pairs=400",
           "--eval_pairs=40", "--init_lr_frac=0.5", "--unembedding_lr=0.05"]


def test_a_short_run_learns_and_the_model_loads_by_tag(sft_checkpoint, capsys):
    results = chat_rm.main(RM_ARGS + ["--num_iterations=30", "--eval_every=30", "--eval_pairs=100"])
    assert "compile off (batch shapes vary)" in capsys.readouterr().out  # rows padded per batch
    # a random 128-token model is no judge (many held-out replies do not fit, and its overall
    # held-out loss wanders around log 2 with the twin's draw), but it learns something: the zero-init
    # head scores every reply 0 (a tie counts as wrong), and the kinds with a word to see (a
    # refusal, another name) are told apart on held-out pairs
    assert results["val_accuracy"] > 0 and results["val_margin"] > 0
    assert results["val_accuracy/refusal"] > 0.5 and results["val_accuracy/wrong_identity"] > 0.5
    model, tokenizer, meta = load_reward_model("cpu", "d1")
    evals = meta["loop_state"]["evals"]
    assert meta["step"] == 30 and evals["val_loss"][-1][1] < evals["val_loss"][0][1]
    pair = PreferenceTwin("test", size=5)[3]  # a wrong identity: short enough for 128 tokens
    chosen, rejected = (score_conversation(model, tokenizer, with_reply(pair, pair[k])) for k in ("chosen", "rejected"))
    assert math.isfinite(chosen) and chosen != rejected
    assert (sft_checkpoint / "report" / "reward-model.md").exists()


def test_chat_rm_resumes_bitwise(sft_checkpoint):
    args = RM_ARGS + ["--num_iterations=4", "--save_every=2", "--eval_every=-1", "--max_pairs=24"]
    resume_matches(chat_rm.main, args, sft_checkpoint / "chatrm_checkpoints" / "d1", 4, 2)


def test_held_out_accuracy_per_kind_matches_a_count_by_hand(tiny_tokenizer):
    model = as_reward_model(tiny_gpt(tiny_tokenizer.get_vocab_size(), 512, jitter=0.05))
    with torch.no_grad():
        model.lm_head.weight.normal_()
    pairs = PreferenceTwin("test", size=13)  # kinds in turn, so uneven counts per kind
    right: dict[str, list[bool]] = {}
    for i in range(len(pairs)):
        pair = pairs[i]
        chosen, rejected = (score_conversation(model, tiny_tokenizer, with_reply(pair, pair[k])) for k in ("chosen", "rejected"))
        right.setdefault(pair["kind"], []).append(chosen > rejected)

    def chunk_sums(chunk, inputs, targets):
        out = bradley_terry_loss(reply_rewards(model, inputs, targets))
        return [out.accuracy * len(chunk)], out.right

    sums, count, by_kind = held_out_sums(pairs, tiny_tokenizer, 4, 512, torch.device("cpu"), ["accuracy"], chunk_sums)
    assert count == 13 and sums["accuracy"] == pytest.approx(sum(map(sum, right.values())))
    assert by_kind == pytest.approx({kind: sum(r) / len(r) for kind, r in right.items()})


def test_twin_kinds_trains_on_those_kinds_and_reports_every_kind_held_out(sft_checkpoint):
    results = chat_rm.main(RM_ARGS + ["--num_iterations=2", "--eval_every=-1", "--twin_kinds=refusal,truncated"])
    assert {k for k in results if k.startswith("val_accuracy/")} == {f"val_accuracy/{k}" for k in PERTURBATIONS}
    train, _ = preference_datasets("ultrafeedback", twin_kinds=("refusal", "truncated"), max_pairs=50)
    assert {train[i]["kind"] for i in range(len(train))} == {"refusal", "truncated"}
    with pytest.raises(SystemExit, match="--twin_kinds picks pairs of the offline twin"):
        chat_rm.main(RM_ARGS + ["--twin_kinds=refusal", "--data_files=pairs.jsonl"])
    with pytest.raises(SystemExit):  # an unknown kind is an argparse error
        chat_rm.main(RM_ARGS + ["--twin_kinds=rudeness"])
