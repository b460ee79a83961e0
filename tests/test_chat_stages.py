"""Mid-training, SFT and RL: their data handling, their losses, and exact resume, with tiny models."""

from __future__ import annotations

from functools import partial

import torch

from nanochat.dataloader import packed_conversation_loader, sft_batch, sft_loader
from nanochat.rl import LossConfig, policy_loss, rollout_batches
from nanochat.training import StepBatches, train_step_token_normalized
from scripts import chat_rl, chat_sft, mid_train
from tasks.common import TaskMixture
from tasks.gsm8k import GSM8K
from tasks.smoltalk import SmolTalk
from tiny import make_batches, make_tiny_model, resume_matches

NO_AUTOCAST = torch.autocast("cpu", enabled=False)


# ---- data ----


def test_mid_packing_fills_rows_without_losing_tokens(offline, tiny_tokenizer):
    dataset = SmolTalk(split="test", stop=40)
    B, T = 2, 32
    batches = list(packed_conversation_loader(dataset, tiny_tokenizer, B, T))
    stream = [t for i in range(len(dataset)) for t in tiny_tokenizer.render_conversation(dataset[i], max_tokens=1 << 30)[0]]
    assert len(batches) == (len(stream) - 1) // (B * T)  # only the last partial batch is dropped
    for k, (inputs, targets, state) in enumerate(batches):
        window = torch.tensor(stream[k * B * T : (k + 1) * B * T + 1])
        assert torch.equal(inputs.flatten(), window[:-1]) and torch.equal(targets.flatten(), window[1:])
    assert 0 < batches[-1][2]["progress"] <= 1


def test_mid_loader_resumes_exactly(offline, tiny_tokenizer):
    dataset = SmolTalk(split="test", stop=60)
    loader = packed_conversation_loader(dataset, tiny_tokenizer, 2, 16, loop=True)
    run = [next(loader) for _ in range(40)]
    for k in (3, 17, 29):
        resumed = packed_conversation_loader(dataset, tiny_tokenizer, 2, 16, loop=True, resume_state=run[k][2])
        for j in range(5):
            x, y, state = next(resumed)
            assert torch.equal(x, run[k + 1 + j][0]) and torch.equal(y, run[k + 1 + j][1]) and state == run[k + 1 + j][2]


def test_sft_targets_are_exactly_the_assistant_tokens(offline, tiny_tokenizer):
    conversations = [GSM8K(split="test")[i] for i in range(3)]
    inputs, targets = sft_batch(conversations, tiny_tokenizer, max_len=10_000)
    for row, conversation in enumerate(conversations):
        ids, mask = tiny_tokenizer.render_conversation(conversation)
        n = len(ids) - 1
        assert inputs[row, :n].tolist() == ids[:-1]
        assert targets[row, :n].tolist() == [t if m else -1 for t, m in zip(ids[1:], mask[1:])]
        assert (targets[row, n:] == -1).all()  # padding is never a target
    # truncation keeps max_len inputs
    short_inputs, short_targets = sft_batch(conversations, tiny_tokenizer, max_len=20)
    assert short_inputs.shape == short_targets.shape == (3, 20)


def test_sft_loader_strides_ranks_and_resumes(offline, tiny_tokenizer, monkeypatch):
    dataset = SmolTalk(split="test", stop=30)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    loader = sft_loader(dataset, tiny_tokenizer, 3, 64, loop=True)
    run = [next(loader) for _ in range(8)]
    first, _ = sft_batch([dataset[i] for i in (1, 3, 5)], tiny_tokenizer, 64)
    assert torch.equal(run[0][0], first)
    resumed = sft_loader(dataset, tiny_tokenizer, 3, 64, loop=True, resume_state=run[4][2])
    assert torch.equal(next(resumed)[0], run[5][0])


# ---- the token-normalized loss ----


def _token_normalized_params(micro_batches: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
    model = make_tiny_model()
    optimizers = model.setup_optimizers()
    loss, _, _ = train_step_token_normalized(model, optimizers, StepBatches(iter(micro_batches), len(micro_batches)),
                                             NO_AUTOCAST)
    assert torch.isfinite(loss)
    return model.state_dict()


def test_token_normalization_is_invariant_to_micro_batching_and_empty_batches():
    x, y = next(make_batches(rows=4))
    y = y.clone()
    y[0, :10] = -1  # rows with very different numbers of targets
    y[2, :] = -1
    whole = _token_normalized_params([(x, y)])
    split = _token_normalized_params([(x[i : i + 1], y[i : i + 1]) for i in range(4)])  # one micro-batch has no targets
    for name in whole:
        torch.testing.assert_close(split[name], whole[name], atol=2e-6, rtol=1e-5, msg=name)
    # a step whose every target is masked is a no-op, not NaN
    model = make_tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss, n, _ = train_step_token_normalized(model, model.setup_optimizers(), StepBatches(iter([(x, torch.full_like(y, -1))]), 1),
                                             NO_AUTOCAST)
    assert n == 0 and loss.item() == 0.0
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


def test_policy_gradient_raises_the_probability_of_rewarded_answers(tiny_tokenizer):
    model = make_tiny_model()
    prompt, good, bad = [1, 2, 3], [7, 8, 9], [10, 11, 12]
    rows = [prompt + good, prompt + bad]
    masks = [[0, 0, 0, 1, 1, 1], [0, 0, 0, 1, 0, 1]]  # the bad row's middle token was forced: never trained on
    advantages = [0.5, -0.5]
    batches = list(rollout_batches(rows, masks, advantages, [1.0, 1.0], pad=0, device_batch_size=1,
                                   device=torch.device("cpu")))
    assert batches[1][1].tolist() == [[-1, -1, 10, -1, 12]]

    def logprob(seq):
        with torch.no_grad():
            return -model(torch.tensor([seq[:-1]]), torch.tensor([[-1, -1] + seq[3:]]), loss_reduction="sum").item()

    before_good, before_bad = logprob(rows[0]), logprob(rows[1])
    optimizers = model.setup_optimizers(unembedding_lr=0.05, embedding_lr=0.05, matrix_lr=0.01)
    loss_fn = partial(policy_loss, stats={}, cfg=LossConfig(), counters={})
    train_step_token_normalized(model, optimizers, StepBatches(iter(batches), 2), NO_AUTOCAST, loss_fn=loss_fn)
    assert logprob(rows[0]) > before_good and logprob(rows[1]) < before_bad


# ---- the scripts: exact resume ----


def test_mid_train_resumes_bitwise(base_checkpoint):
    args = ["--device_type=cpu", "--device_batch_size=2", "--total_batch_size=128", "--num_iterations=4",
            "--save_every=2", "--eval_every=-1", "--eval_tokens=256", "--spelling_size=50"]
    resume_matches(mid_train.main, args, base_checkpoint / "mid_checkpoints" / "d1", 4, 2)
    assert (base_checkpoint / "report" / "midtraining.md").exists()


def test_chat_sft_resumes_bitwise(base_checkpoint):
    args = ["--source=base", "--device_type=cpu", "--device_batch_size=2", "--target_examples_per_step=4",
            "--num_iterations=4", "--save_every=2", "--eval_every=-1", "--eval_steps=2", "--eval_metrics_every=-1",
            "--smoltalk_size=50", "--spelling_size=20"]
    resume_matches(chat_sft.main, args, base_checkpoint / "chatsft_checkpoints" / "d1", 4, 2)


def test_chat_rl_resumes_bitwise(base_checkpoint):
    args = ["--source=base", "--device_type=cpu", "--num_samples=3", "--device_batch_size=2", "--examples_per_step=2",
            "--max_new_tokens=6", "--num_iterations=4", "--save_every=2", "--eval_every=-1", "--eval_examples=2"]
    resume_matches(chat_rl.main, args, base_checkpoint / "chatrl_checkpoints" / "d1", 4, 2)


def test_chat_rl_with_every_knob_resumes_bitwise(base_checkpoint):
    args = ["--source=base", "--device_type=cpu", "--num_samples=3", "--device_batch_size=2", "--examples_per_step=2",
            "--max_new_tokens=6", "--num_iterations=4", "--save_every=2", "--eval_every=-1", "--eval_examples=2",
            "--eval_samples=2", "--tasks=GSM8K:1,SimpleSpelling:1", "--top_k=5", "--kl_coef=0.1", "--ppo_epochs=2",
            "--num_minibatches=2", "--dynamic_sampling", "--max_refills=1", "--adv_norm=group", "--loss_agg=sequence",
            "--overlong=penalty"]
    resume_matches(chat_rl.main, args, base_checkpoint / "chatrl_checkpoints" / "d1", 4, 2)


def test_mixture_of_twins_is_what_mid_train_uses(offline):
    train, val = mid_train.build_mixtures(spelling_size=100)
    assert isinstance(train, TaskMixture) and len(train) > len(val) > 0
