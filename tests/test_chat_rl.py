"""chat_rl's pieces (nanochat.rl): the knobs-off update, KL, clipping, dynamic sampling, rewards, pass@k."""

from __future__ import annotations

import copy
import itertools
import math
import time
from functools import partial

import pytest
import torch

from nanochat import rl
from nanochat.checkpoint_manager import save_checkpoint
from nanochat.engine import Engine
from nanochat.execution import SandboxUnavailable, check_sandbox
from nanochat.preference import as_reward_model, load_reward_model, reward_dir, score_conversation
from nanochat.rl import (Group, LossConfig, ProblemSampler, RewardPool, group_advantages, pass_at_k, policy_loss,
                         rollout_batches, rollout_statistics)
from nanochat.training import StepBatches, train_step_token_normalized
from scripts import chat_rl
import test_pref_data
from test_pref_data import ParityTask
from tiny import assert_bitwise_equal, make_tiny_model, resume_matches, tiny_gpt

NO_AUTOCAST = torch.autocast("cpu", enabled=False)
CPU = torch.device("cpu")
ROWS = [[1, 2, 3, 7, 8, 9, 4], [1, 2, 3, 10, 11], [1, 2, 5, 6, 12, 13, 14, 15], [1, 2, 5, 6, 30]]
MASKS = [[0, 0, 0, 1, 1, 1, 1], [0, 0, 0, 1, 0], [0, 0, 0, 0, 1, 1, 0, 1], [0, 0, 0, 0, 1]]
ADVANTAGES = [0.7, -0.7, 0.25, -0.25]


def _todays_update(model) -> dict:
    """chat_rl's update before the knobs, written out: −Σ advantage · log p over sampled tokens, token-normalized."""
    def loss_fn(model, inputs, targets, advantages):
        nll = model(inputs, targets, loss_reduction="none").view_as(targets)
        return (nll * advantages[:, None]).sum()

    batches = []
    for start in range(0, len(ROWS), 3):
        chunk = range(start, min(start + 3, len(ROWS)))
        width = max(len(ROWS[i]) for i in chunk) - 1
        inputs = [ROWS[i][:-1] + [0] * (width - len(ROWS[i]) + 1) for i in chunk]
        targets = [[t if m else -1 for t, m in zip(ROWS[i][1:], MASKS[i][1:])] + [-1] * (width - len(ROWS[i]) + 1)
                   for i in chunk]
        batches.append((torch.tensor(inputs), torch.tensor(targets), torch.tensor([ADVANTAGES[i] for i in chunk])))
    optimizers = model.setup_optimizers(unembedding_lr=0.05, embedding_lr=0.05, matrix_lr=0.01)
    train_step_token_normalized(model, optimizers, StepBatches(iter(batches), len(batches)), NO_AUTOCAST, loss_fn=loss_fn)
    return model.state_dict()


def _update(model, cfg: LossConfig, ref=None, counters=None, epochs: int = 1, weights=None) -> dict:
    micro = list(rollout_batches(ROWS, MASKS, ADVANTAGES, weights or [1.0] * len(ROWS), 0, 3, CPU))
    micro = [(*b, rollout_statistics(model, ref, b[0], b[1], cfg)) for b in micro]
    optimizers = model.setup_optimizers(unembedding_lr=0.05, embedding_lr=0.05, matrix_lr=0.01)
    loss_fn = partial(policy_loss, cfg=cfg, counters=counters if counters is not None else {"clipped": 0.0, "kl": 0.0})
    for _ in range(epochs):
        train_step_token_normalized(model, optimizers, StepBatches(iter(micro), len(micro)), NO_AUTOCAST, loss_fn=loss_fn)
    return model.state_dict()


def test_knobs_off_update_equals_todays_bitwise():
    assert LossConfig().plain
    assert_bitwise_equal(_update(make_tiny_model(), LossConfig()), _todays_update(make_tiny_model()))


def test_knobs_off_script_defaults_switched_back_are_plain():
    args = chat_rl.parse_args(["--top_k=50", "--tis_cap=0", "--train_stop_token=0"])
    assert (args.kl_coef, args.ppo_epochs, args.num_minibatches, args.adv_norm, args.loss_agg, args.overlong,
            args.dynamic_sampling) == (0.0, 1, 1, "none", "token", "none", False)
    assert chat_rl.parse_args([]).top_k is None and chat_rl.parse_args(["--top_k=none"]).top_k is None


def test_kl_is_zero_at_the_first_step_and_grows_as_the_policy_moves():
    model = make_tiny_model()
    ref = copy.deepcopy(model).requires_grad_(False)
    cfg = LossConfig(kl_coef=0.1)
    counters = {"clipped": 0.0, "kl": 0.0}
    _update(model, cfg, ref, counters)
    assert counters["kl"] == 0.0  # the first step's policy is the reference: k3 is exactly 0
    _update(model, cfg, ref, counters)
    assert counters["kl"] > 0.0


def test_clip_engages_only_outside_the_range():
    model = make_tiny_model()
    cfg = LossConfig(clip_low=0.2, clip_high=0.28)
    inputs, targets, _, weights = next(rollout_batches(ROWS[:1], MASKS[:1], [1.0], [1.0], 0, 1, CPU))
    old = rollout_statistics(model, None, inputs, targets, cfg)["old_logp"]
    for ratio, advantage, clipped in [(1.1, 1.0, False), (0.9, -1.0, False), (1.5, 1.0, True), (1.5, -1.0, False),
                                      (0.5, -1.0, True), (0.5, 1.0, False)]:
        counters = {"clipped": 0.0, "kl": 0.0}
        stats = {"old_logp": old - math.log(ratio)}  # the rollout policy made these tokens ratio times less likely
        model.zero_grad()
        policy_loss(model, inputs, targets, torch.tensor([advantage]), weights, stats, cfg, counters).backward()
        grad = sum(float(p.grad.abs().sum()) for p in model.parameters() if p.grad is not None)
        assert (counters["clipped"] > 0) == clipped, (ratio, advantage)
        assert (grad == 0.0) == clipped, (ratio, advantage)  # a clipped token gives no gradient


def test_ppo_epochs_and_sequence_weights_run():
    model = make_tiny_model()
    counters = {"clipped": 0.0, "kl": 0.0}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    after = _update(model, LossConfig(clip_low=0.2, clip_high=0.28, tis_cap=2.0, top_k=5), counters=counters, epochs=3,
                    weights=[2.0, 0.5, 1.0, 1.0])
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_advantages():
    assert group_advantages([[1.0, 0.0, 0.0, 1.0]], "none", CPU) == [[0.5, -0.5, -0.5, 0.5]]
    (group,) = group_advantages([[1.0, 0.0, 0.0, 1.0]], "group", CPU)
    assert all(abs(abs(a) - 1.0) < 1e-5 for a in group)
    assert group_advantages([[1.0, 1.0]], "group", CPU) == [[0.0, 0.0]]


def test_pass_at_k_is_the_unbiased_estimator():
    for n, c in [(5, 0), (5, 2), (8, 3), (8, 8)]:
        outcomes = [True] * c + [False] * (n - c)
        for k in range(1, n + 1):
            subsets = list(itertools.combinations(outcomes, k))
            assert abs(pass_at_k(n, c, k) - sum(any(s) for s in subsets) / len(subsets)) < 1e-12


def test_problem_sampler_is_a_function_of_the_key():
    one = ProblemSampler({"a": list(range(10))}, {"a": None})
    assert [one(k)[2] for k in range(12)] == list(range(10)) + [0, 1]
    mix = ProblemSampler({"a": list(range(10)), "b": list(range(30))}, {"a": 3.0, "b": None})
    draws = [mix(k)[0] for k in range(4000)]
    assert draws == [mix(k)[0] for k in range(4000)]
    assert 0.07 < draws.count("a") / draws.count("b") < 0.13  # weight 3 against b's size, 30


def test_rollouts_keep_the_sampled_stop_token_and_tell_truncated_answers(tiny_tokenizer):
    engine = Engine(tiny_gpt(tiny_tokenizer.get_vocab_size(), jitter=0.5), tiny_tokenizer)
    prompt = tiny_tokenizer.render_for_completion({"messages": [{"role": "user", "content": "hi"},
                                                                {"role": "assistant", "content": ""}]})
    todays = engine.generate_batch(prompt, num_samples=6, max_tokens=5, temperature=1.0, top_k=50, seed=3)
    rows, masks, _ = engine.generate_rows([prompt], [6], max_tokens=5, temperature=1.0, top_k=50, seed=3)
    assert (rows, masks) == todays
    rows, masks, truncated = engine.generate_rows([prompt], [6], keep_stop=True, max_tokens=5, temperature=1.0, top_k=50,
                                                 seed=3)
    for row, mask, cut, old in zip(rows, masks, truncated, todays[0]):
        if cut:
            assert row == old and len(row) == len(prompt) + 5
        else:
            assert row[:-1] == old and row[-1] in engine.stop_tokens and mask[-1] == 1


class WordyParityTask(ParityTask):
    """ParityTask whose prompts differ in length from one problem to the next."""

    def get_example(self, index: int) -> dict:
        return {"messages": [{"role": "user", "content": "say " + "something else " * (1 + 3 * index)},
                             {"role": "assistant", "content": "something"}]}


def test_problems_sampled_together_answer_as_each_alone(tiny_tokenizer):
    """Greedy: a decode batch across problems (prompts of different lengths, a problem split over batches) changes no answer."""
    engine = Engine(tiny_gpt(tiny_tokenizer.get_vocab_size(), 256, jitter=0.5), tiny_tokenizer)
    task, pool = WordyParityTask(), RewardPool(2)
    sampling = rl.SamplingConfig(max_new_tokens=7, top_k=None, batch_size=4)
    problems = [("Parity", task, i) for i in range(3)]
    together = rl.sample_groups(engine, tiny_tokenizer, problems, 3, sampling, 0, 0.0, pool)
    assert len({g.prompt_len for g in together}) == 3
    for group, (name, _, index) in zip(together, problems):
        alone = rl.sample_group(engine, tiny_tokenizer, name, task, index, 3, sampling, 0, 0.0, pool)
        assert (group.rows, group.masks, group.truncated, group.rewards) == \
            (alone.rows, alone.masks, alone.truncated, alone.rewards)
        assert group.conversation == alone.conversation and len(group.rows[0]) > group.prompt_len
    pool.close()


def test_evaluation_greedy_is_each_problem_alone_and_pass_at_k_grows_with_k(tiny_tokenizer):
    engine = Engine(tiny_gpt(tiny_tokenizer.get_vocab_size(), 256, jitter=0.5), tiny_tokenizer)
    task, pool = WordyParityTask(size=6), RewardPool(2)
    sampling = rl.SamplingConfig(max_new_tokens=5, top_k=None, batch_size=4)
    args = chat_rl.parse_args(["--eval_examples=5", "--eval_samples=4"])
    results = chat_rl.evaluate(engine, tiny_tokenizer, {"Parity": task}, args, sampling, pool)
    alone = [rl.sample_group(engine, tiny_tokenizer, "Parity", task, i, 1, sampling, 0, 0.0, pool).rewards[0]
             for i in range(5)]
    none = chat_rl.evaluate(engine, tiny_tokenizer, {"Parity": task}, chat_rl.parse_args(["--eval_examples=0"]),
                            sampling, pool)
    pool.close()
    assert none == {}  # no problems: no numbers, not zeros
    assert results["Parity/greedy_pass@1"] == sum(alone) / 5
    passes = [results[f"Parity/pass@{k}"] for k in (1, 2, 4)]
    assert passes == sorted(passes) and 0 < passes[0] < passes[-1] <= 1


def test_chat_rl_decodes_a_steps_problems_together(parity_policy, monkeypatch):
    """Two problems × 4 answers in rows of 8: one decode batch per step holding both prompts, not one per problem."""
    calls = []
    original = Engine.generate_many

    def spy(self, prompts, num_samples, **kwargs):
        calls.append(list(num_samples))
        return original(self, prompts, num_samples, **kwargs)

    monkeypatch.setattr(Engine, "generate_many", spy)
    chat_rl.main(["--device_type=cpu", "--dtype=float32", "--tasks=Parity", "--num_samples=4", "--device_batch_size=8",
                  "--examples_per_step=2", "--max_new_tokens=4", "--num_iterations=2", "--eval_every=-1",
                  "--eval_examples=0"])
    assert calls == [[4, 4], [4, 4]]


def test_dynamic_sampling_never_trains_on_a_zero_variance_group(base_checkpoint, monkeypatch):
    trained, sampled = [], []

    def fake_groups(engine, tokenizer, problems, num_samples, args, seed, temperature, pool):
        groups = []
        for task_name, _, index in problems:
            # every other problem's answers all score the same
            rewards = [1.0] * num_samples if index % 2 else [float(i % 2) for i in range(num_samples)]
            groups.append(Group(task_name, [[1, 2, 3]] * num_samples, [[0, 1, 1]] * num_samples, [False] * num_samples,
                                rewards))
        sampled.extend(groups)
        return groups

    def spy(group_rewards, *rest):
        trained.extend(group_rewards)
        return group_advantages(group_rewards, *rest)

    monkeypatch.setattr(chat_rl, "sample_groups", fake_groups)
    monkeypatch.setattr(chat_rl, "group_advantages", spy)
    chat_rl.main(["--source=base", "--device_type=cpu", "--num_samples=4", "--device_batch_size=4",
                  "--examples_per_step=4", "--num_iterations=3", "--eval_every=-1", "--eval_examples=0",
                  "--dynamic_sampling", "--max_refills=1"])
    assert any(g.zero_variance for g in sampled)
    assert trained and all(max(r) > min(r) for r in trained)


def _sandbox_missing() -> str | None:
    try:
        check_sandbox()
    except SandboxUnavailable as e:
        return str(e)
    return None


@pytest.mark.skipif(_sandbox_missing() is not None, reason="no sandbox on this machine")
def test_hostile_code_answers_cost_at_most_their_timeout(offline):
    from tasks.humaneval import HumanEval

    task = HumanEval(timeout=2.0)
    conversation = task[0]
    entry = conversation["entry_point"]
    hostile = [f"def {entry}(*a, **k):\n    while True: pass\n",
               f"import os\ndef {entry}(*a, **k):\n    while True: os.fork()\n{entry}()\n",
               f"def {entry}(*a, **k):\n    while True: print('x' * 100000)\n{entry}()\n"]
    right = "```python\n" + conversation["messages"][1]["content"] + "\n```"
    pool = RewardPool(workers=4)
    t0 = time.monotonic()
    rewards = pool.score(task, conversation, hostile + [right])
    elapsed = time.monotonic() - t0
    pool.close()
    assert rewards == [0.0, 0.0, 0.0, 1.0]
    assert elapsed < 2.0 + 3.0  # all four at once: one timeout, plus sandbox start-up and clean-up


# ---- against a reward model ----

parity_policy = test_pref_data.parity_policy  # a fixture: a policy whose answers to ParityTask are right about half the time

@pytest.fixture
def reward_model(parity_policy, tiny_tokenizer):
    """A tiny reward model saved as chat_rm saves one (tag d1), its head random so its scores differ."""
    model = as_reward_model(tiny_gpt(tiny_tokenizer.get_vocab_size(), 128, n_head=2, n_kv_head=1, jitter=0.05, seed=3))
    with torch.no_grad():
        model.lm_head.weight.normal_()
    save_checkpoint(reward_dir("d1"), 0, model.state_dict(), None, {"model_config": vars(model.config), "step": 0})
    return parity_policy


RM_ARGS = ["--device_type=cpu", "--dtype=float32", "--tasks=Parity", "--num_samples=4", "--device_batch_size=3",
           "--examples_per_step=2", "--max_new_tokens=6", "--eval_every=-1", "--eval_examples=0", "--reward_model=d1",
           "--rm_weight=0.7", "--task_weight=0.4"]


def test_kl_is_on_by_default_against_a_reward_model():
    assert chat_rl.parse_args(["--reward_model=d1"]).kl_coef == chat_rl.RM_KL_COEF > 0
    assert chat_rl.parse_args(["--reward_model=d1", "--kl_coef=0"]).kl_coef == 0.0  # unless switched off
    assert chat_rl.parse_args([]).kl_coef == 0.0
    with pytest.raises(SystemExit):  # a weight with nothing to weigh against
        chat_rl.parse_args(["--rm_weight=2"])


def test_the_reward_is_the_weighted_reward_model_score_plus_the_weighted_task_reward(reward_model, monkeypatch):
    sampled, trained, configs = [], [], []

    def sample_spy(*args):
        sampled.extend(rl.sample_groups(*args))
        return sampled[-len(args[2]):]

    def advantages_spy(group_rewards, *rest):
        trained.extend(group_rewards)
        return group_advantages(group_rewards, *rest)

    def loss_spy(*args, cfg, **kwargs):
        configs.append(cfg)
        return policy_loss(*args, cfg=cfg, **kwargs)

    monkeypatch.setattr(chat_rl, "sample_groups", sample_spy)
    monkeypatch.setattr(chat_rl, "group_advantages", advantages_spy)
    monkeypatch.setattr(chat_rl, "policy_loss", loss_spy)
    results = chat_rl.main(RM_ARGS + ["--num_iterations=2"])
    model, tokenizer, _ = load_reward_model("cpu", "d1")
    task = ParityTask("train")
    scores = []
    assert len(sampled) == len(trained) == 4
    for group, rewards in zip(sampled, trained):  # each group as sampled, before the reward model's score was added
        for row, got in zip(group.rows, rewards):
            text = tokenizer.decode(row[group.prompt_len:])  # the fixture's replies never stop: no stop token to drop
            conversation = {"messages": [*group.conversation["messages"][:-1], {"role": "assistant", "content": text}]}
            scores.append(score_conversation(model, tokenizer, conversation))  # one at a time, not batched
            assert got == pytest.approx(0.7 * scores[-1] + 0.4 * task.reward(group.conversation, text), abs=1e-5)
    assert len(set(scores)) > 1
    assert configs and all(cfg.kl_coef == chat_rl.RM_KL_COEF for cfg in configs)
    # the score, the task's reward and the answer length are logged side by side
    assert results["rm_score_first_step"] == pytest.approx(sum(scores[:8]) / 8, abs=1e-5)
    assert results["task_reward_last_step"] == sum(task.reward(g.conversation, tokenizer.decode(r[g.prompt_len:]))
                                                   for g in sampled[2:] for r in g.rows) / 8
    assert results["response_len_first_step"] == 6


def test_chat_rl_with_a_reward_model_resumes_bitwise(reward_model):
    resume_matches(chat_rl.main, RM_ARGS + ["--num_iterations=4", "--save_every=2"],
                   reward_model / "chatrl_checkpoints" / "d1", 4, 2)
