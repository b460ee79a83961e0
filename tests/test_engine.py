from __future__ import annotations

import pytest
import torch

from nanochat.engine import ContextFullError, Engine
from nanochat.gpt import GPT, GPTConfig
from scripted import ScriptedModel


def real_model(vocab: int, n_kv_head: int = 2, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    model = GPT(GPTConfig(sequence_len=64, vocab_size=vocab, n_layer=2, n_head=4, n_kv_head=n_kv_head, n_embd=64))
    model.init_weights()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))  # peaked enough that greedy paths are stable
    return model.eval()


def test_greedy_generate_batch_equals_models_own_greedy_generate(tiny_tokenizer):
    model = real_model(tiny_tokenizer.get_vocab_size())
    engine = Engine(model, tiny_tokenizer)
    prompt = tiny_tokenizer.encode("the cat sat on", prepend="<|bos|>")
    reference = list(model.generate(prompt, max_tokens=20, temperature=0.0))
    results, masks = engine.generate_batch(prompt, num_samples=3, max_tokens=20, temperature=0.0)
    stops = engine.stop_tokens
    cut = next((i for i, t in enumerate(reference) if t in stops), len(reference))
    for row, mask in zip(results, masks):
        assert row == prompt + reference[:cut]
        assert mask == [0] * len(prompt) + [1] * cut


def test_streaming_columns_match_batch_and_seeds_reproduce(tiny_tokenizer):
    model = real_model(tiny_tokenizer.get_vocab_size(), n_kv_head=4)
    engine = Engine(model, tiny_tokenizer)
    prompt = tiny_tokenizer.encode("apple river", prepend="<|bos|>")
    kwargs = dict(num_samples=4, max_tokens=12, temperature=1.0, seed=7)
    columns = [c for c, _ in engine.generate(prompt, **kwargs)]
    assert all(len(c) == 4 for c in columns)
    a, _ = engine.generate_batch(prompt, **kwargs)
    b, _ = engine.generate_batch(prompt, **kwargs)
    c, _ = engine.generate_batch(prompt, **{**kwargs, "seed": 8})
    assert a == b and a != c
    assert len({tuple(r) for r in a}) > 1, "samples of one prompt should differ at temperature 1"
    for i, row in enumerate(a):  # the streamed tokens are the batch's rows
        generated = row[len(prompt):]
        assert [col[i] for col in columns[: len(generated)]] == generated


def test_top_k_one_is_greedy(tiny_tokenizer):
    model = real_model(tiny_tokenizer.get_vocab_size())
    engine = Engine(model, tiny_tokenizer)
    prompt = tiny_tokenizer.encode("over hill", prepend="<|bos|>")
    greedy, _ = engine.generate_batch(prompt, num_samples=2, max_tokens=10, temperature=0.0)
    top1, _ = engine.generate_batch(prompt, num_samples=2, max_tokens=10, temperature=1.5, top_k=1, seed=3)
    assert top1 == greedy


def test_rows_stop_at_assistant_end_and_bos(tiny_tokenizer):
    tok = tiny_tokenizer
    hello = tok.encode("hello there")
    end = tok.encode_special("<|assistant_end|>")
    engine = Engine(ScriptedModel(tok.get_vocab_size(), hello + [end] + hello), tok)
    prompt = [tok.get_bos_token_id()]
    results, masks = engine.generate_batch(prompt, num_samples=2, max_tokens=50, temperature=0.0)
    assert results == [prompt + hello] * 2 and masks == [[0] + [1] * len(hello)] * 2
    engine = Engine(ScriptedModel(tok.get_vocab_size(), hello + [tok.get_bos_token_id()]), tok)
    steps = list(engine.generate(prompt, max_tokens=50, temperature=0.0))
    assert len(steps) == len(hello) + 1  # the stream ends with the stop token's step
    engine = Engine(ScriptedModel(tok.get_vocab_size(), hello + [end]), tok)
    assert engine.generate_batch(prompt, max_tokens=3, temperature=0.0)[0] == [prompt + hello[:3]]


@pytest.mark.parametrize("stop", ["<|assistant_end|>", "<|bos|>", "<|user_start|>", "<|user_end|>", "<|assistant_start|>"])
def test_batch_rows_stop_where_a_chat_reply_stops(tiny_tokenizer, stop):
    # RL rollouts and evaluations (generate_batch) end a reply where chat_cli and chat_web do:
    # at the end of the turn, a new document, or the start of another turn
    tok = tiny_tokenizer
    hello = tok.encode("hello there")
    engine = Engine(ScriptedModel(tok.get_vocab_size(), hello + [tok.encode_special(stop)] + hello), tok)
    assert tok.encode_special(stop) in engine.stop_tokens
    results, _ = engine.generate_batch([tok.get_bos_token_id()], max_tokens=50, temperature=0.0)
    assert results == [[tok.get_bos_token_id()] + hello]


def test_python_call_gets_forced_calculator_output(tiny_tokenizer):
    tok = tiny_tokenizer
    sp = tok.encode_special
    call = tok.encode("3*4+1")
    script = tok.encode("so ") + [sp("<|python_start|>")] + call + [sp("<|python_end|>")] + tok.encode(" done") + [sp("<|assistant_end|>")]
    engine = Engine(ScriptedModel(tok.get_vocab_size(), script), tok)
    prompt = [tok.get_bos_token_id()]
    results, masks = engine.generate_batch(prompt, num_samples=2, max_tokens=60, temperature=0.0)
    forced = [sp("<|output_start|>")] + tok.encode("13") + [sp("<|output_end|>")]
    expected = prompt + script[: script.index(sp("<|python_end|>")) + 1] + forced + tok.encode(" done")
    assert results == [expected] * 2
    n_before = 1 + len(tok.encode("so ")) + 1 + len(call) + 1
    assert masks[0] == [0] + [1] * (n_before - 1) + [0] * len(forced) + [1] * len(tok.encode(" done"))


def test_refused_python_call_forces_nothing(tiny_tokenizer):
    tok = tiny_tokenizer
    sp = tok.encode_special
    script = [sp("<|python_start|>")] + tok.encode("__import__('os')") + [sp("<|python_end|>")] + tok.encode("ok") + [sp("<|assistant_end|>")]
    engine = Engine(ScriptedModel(tok.get_vocab_size(), script), tok)
    results, masks = engine.generate_batch([tok.get_bos_token_id()], max_tokens=60, temperature=0.0)
    assert results[0][1:] == script[:-1] and all(masks[0][1:])


def test_cache_grows_past_its_initial_size_and_prompt_limits(tiny_tokenizer):
    model = real_model(tiny_tokenizer.get_vocab_size())
    engine = Engine(model, tiny_tokenizer)
    with pytest.raises(ValueError, match="at least one prompt token"):
        list(engine.generate([]))
    with pytest.raises(ContextFullError, match="no room"):
        list(engine.generate([1] * model.max_context))
    assert model.max_context == 64 * 10  # the rotary tables reach 10x the training length
    # a long generation matches the model's own greedy decoding token for token
    prompt = [tiny_tokenizer.get_bos_token_id()]
    columns = [c[0] for c, _ in engine.generate(prompt, max_tokens=80, temperature=0.0)]
    reference = list(model.generate(prompt, max_tokens=len(columns), temperature=0.0))
    assert columns == reference


@pytest.mark.parametrize("temperature,top_k,seed", [(1.0, None, 0), (0.8, 50, 1), (0.0, None, 2), (1.3, 5, 3)])
def test_same_stream_as_the_reference_engine(tiny_tokenizer, temperature, top_k, seed):
    """The Engine yields exactly what today's reference loop (scripts/bench.py) yields for the same seed."""
    from scripts.bench import ReferenceEngine

    model = real_model(tiny_tokenizer.get_vocab_size(), seed=seed)
    prompt = tiny_tokenizer.encode("the cat sat on", prepend="<|bos|>")
    kwargs = dict(num_samples=5, max_tokens=40, temperature=temperature, top_k=top_k, seed=seed)
    ours = list(Engine(model, tiny_tokenizer).generate(prompt, **kwargs))
    assert ours == list(ReferenceEngine(model, tiny_tokenizer).generate(prompt, **kwargs))


def test_same_stream_as_the_reference_engine_with_tools_and_stops(tiny_tokenizer):
    """Rows that call the calculator, stop, and keep sampling after stopping: columns and masks as the reference's."""
    from scripts.bench import ReferenceEngine

    tok = tiny_tokenizer
    sp = tok.encode_special
    script = (tok.encode("so ") + [sp("<|python_start|>")] + tok.encode("3*4+1") + [sp("<|python_end|>")]
              + tok.encode(" done") + [sp("<|python_start|>")] + tok.encode("2+2") + [sp("<|python_end|>")]
              + [sp("<|assistant_end|>")] + tok.encode("more"))
    prompt = [tok.get_bos_token_id()]
    ours = list(Engine(ScriptedModel(tok.get_vocab_size(), script), tok).generate(prompt, 3, 60, temperature=0.0))
    reference = list(ReferenceEngine(ScriptedModel(tok.get_vocab_size(), script), tok).generate(prompt, 3, 60,
                                                                                                   temperature=0.0))
    assert ours == reference
    assert any(0 in masks for _, masks in ours)  # tool output was forced
