from __future__ import annotations

import pytest
import torch

from nanochat.engine import ContextFullError, Engine
from nanochat.gpt import GPT, GPTConfig
from scripted import ScriptedModel


def real_model(vocab: int, n_kv_head: int = 2, seed: int = 0, smear: bool = False) -> GPT:
    torch.manual_seed(seed)
    model = GPT(GPTConfig(sequence_len=64, vocab_size=vocab, n_layer=2, n_head=4, n_kv_head=n_kv_head, n_embd=64, smear=smear))
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


# --- the compiled decode step (Engine(compile=...)) ---------------------------------------------
# Each Engine compiles its own step (~5-15 s on 2 CPU cores), so these tests share one where they can.


@pytest.fixture(scope="module")
def compiled_pair(tiny_tokenizer):
    """A GQA model with an eager and a compiled engine; the compiled one is compiled once for the module."""
    model = real_model(tiny_tokenizer.get_vocab_size(), n_kv_head=2, seed=5)
    return model, Engine(model, tiny_tokenizer, compile="off"), Engine(model, tiny_tokenizer, compile="on")


def test_compiled_decoding_gives_the_eager_tokens(compiled_pair, tiny_tokenizer):
    """Greedy and sampled (fp32, same seed): the compiled step yields the stream eager decoding yields."""
    from torch._dynamo.utils import counters

    model, eager, compiled = compiled_pair
    prompt = tiny_tokenizer.encode("the cat sat on", prepend="<|bos|>")
    reference = list(model.generate(prompt, max_tokens=30, temperature=0.0))
    cut = next((i for i, t in enumerate(reference) if t in compiled.stop_tokens), len(reference))
    for num_samples in (3, 1):  # a batch, then one row: a graph each
        greedy = compiled.generate_batch(prompt, num_samples=num_samples, max_tokens=30, temperature=0.0)
        assert greedy == eager.generate_batch(prompt, num_samples=num_samples, max_tokens=30, temperature=0.0)
        assert greedy[0][0] == prompt + reference[:cut]
    assert compiled.decode_path == "compiled (inductor, frozen weights)"
    assert set(compiled.decoder.compile_s) == {"batch 1", "batch 2+"}
    graphs = counters["stats"]["unique_graphs"]
    # other batches, prompts and lengths: the same two graphs, no recompiling
    for num_samples, text, kwargs in [(1, "over hill", dict(temperature=1.0, seed=0)),
                                      (5, "the cat sat on", dict(temperature=0.8, top_k=50, seed=1)),
                                      (4, "apple river and", dict(temperature=1.3, top_k=5, seed=3, max_tokens=50))]:
        p = tiny_tokenizer.encode(text, prepend="<|bos|>")
        kwargs = {"max_tokens": 25, **kwargs}
        assert list(compiled.generate(p, num_samples, **kwargs)) == list(eager.generate(p, num_samples, **kwargs))
    assert counters["stats"]["unique_graphs"] == graphs


def test_compiled_step_follows_forced_tokens(compiled_pair):
    """Whatever tokens are fed back (sampled or forced by the tool), the step's logits are forward's."""
    from nanochat.gpt import KVCache

    model, eager, compiled = compiled_pair
    cfg = model.config
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, cfg.vocab_size, (1, 9), generator=g)
    with torch.inference_mode():
        prefill = KVCache(1, cfg.n_kv_head, 9, cfg.n_embd // cfg.n_head, cfg.n_layer)
        model(prompt, kv_cache=prefill)
        steps = {name: engine._decode_forward(prefill, 3, 9 + 20)[0] for name, engine in (("e", eager), ("c", compiled))}
        for _ in range(20):
            ids = torch.randint(0, cfg.vocab_size, (3, 1), generator=g)
            torch.testing.assert_close(steps["c"](ids), steps["e"](ids), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("masked", [False, True])
def test_decode_step_equals_forward(masked):
    """GPT.decode_step (uncompiled): the window ending at pos (CPU), or the whole cache masked past pos (CUDA graphs)."""
    from nanochat.gpt import KVCache

    torch.manual_seed(0)
    model = GPT(GPTConfig(sequence_len=32, vocab_size=128, n_layer=2, n_head=4, n_kv_head=2, n_embd=64))
    model.init_weights()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    idx = torch.randint(0, 128, (2, 20))
    cfg = model.config
    with torch.inference_mode():
        full = model(idx)
        cache = KVCache(2, cfg.n_kv_head, 24, cfg.n_embd // cfg.n_head, cfg.n_layer)
        model(idx[:, :8], kv_cache=cache)
        cache.cache[:, :, :, :, 8:] = 1e4  # stale values past pos must not leak in when masked
        positions = torch.arange(24)
        for t in range(8, 20):
            window = positions if masked else positions[: t + 1]
            logits = model.decode_step(idx[:, t : t + 1], positions[t : t + 1], window, cache.cache, masked)
            torch.testing.assert_close(logits, full[:, t], atol=1e-5, rtol=1e-5)


def test_decode_step_with_a_position_per_row_equals_forward():
    """Rows whose prompts differ in length, each prefilled alone, then decoded together at their own positions."""
    from nanochat.gpt import KVCache

    model = real_model(128, seed=1)
    cfg = model.config
    lengths, steps = [5, 9, 12], 8
    torch.manual_seed(1)
    sequences = [torch.randint(0, 128, (1, n + steps)) for n in lengths]
    with torch.inference_mode():
        cache = KVCache(3, cfg.n_kv_head, max(lengths) + steps, cfg.n_embd // cfg.n_head, cfg.n_layer)
        cache.cache.fill_(1e4)  # what a row has not written must not leak into it
        for b, (seq, n) in enumerate(zip(sequences, lengths)):
            alone = KVCache(1, cfg.n_kv_head, n, cfg.n_embd // cfg.n_head, cfg.n_layer)
            model(seq[:, :n], kv_cache=alone)
            cache.cache[:, :, b : b + 1, :, :n] = alone.cache[:, :, :, :, :n]
        positions = torch.arange(cache.cache.size(4))
        pos = torch.tensor(lengths)
        for t in range(steps):
            ids = torch.cat([seq[:, n + t : n + t + 1] for seq, n in zip(sequences, lengths)])
            logits = model.decode_step(ids, pos, positions[: int(pos.max()) + 1], cache.cache, masked=True)
            for b, (seq, n) in enumerate(zip(sequences, lengths)):
                torch.testing.assert_close(logits[b], model(seq[:, : n + t + 1])[0, -1], atol=1e-5, rtol=1e-5)
            pos = pos + 1


def _cut(tokens: list[int], stops: set[int]) -> list[int]:
    return tokens[: next((i for i, t in enumerate(tokens) if t in stops), len(tokens))]


def test_generate_many_gives_each_prompts_greedy_answers(tiny_tokenizer):
    """Prompts of different lengths decoded as one batch: each row answers as its prompt's own generate does."""
    model = real_model(tiny_tokenizer.get_vocab_size(), seed=2)
    engine = Engine(model, tiny_tokenizer)
    texts = ["the cat", "over the hill and far away we", "apple river stone"]
    prompts = [tiny_tokenizer.encode(t, prepend="<|bos|>") for t in texts]
    counts = [2, 1, 3]
    columns = list(engine.generate_many(prompts, counts, max_tokens=16, temperature=0.0))
    assert engine.decode_path.startswith("eager (prompts of different lengths")
    assert len({len(p) for p in prompts}) == 3 and all(len(c) == sum(counts) for c, _ in columns)
    row = 0
    for prompt, n in zip(prompts, counts):
        alone, _ = engine.generate_batch(prompt, num_samples=1, max_tokens=16, temperature=0.0)
        for _ in range(n):
            got = _cut([c[row] for c, _ in columns], engine.stop_tokens)
            assert got == alone[0][len(prompt):]
            row += 1


def test_generate_many_of_one_prompt_is_generate(tiny_tokenizer):
    model = real_model(tiny_tokenizer.get_vocab_size(), seed=3)
    engine = Engine(model, tiny_tokenizer, compile="off")
    prompt = tiny_tokenizer.encode("the cat sat on", prepend="<|bos|>")
    kwargs = dict(max_tokens=12, temperature=1.0, seed=5)
    assert list(engine.generate_many([prompt], [4], **kwargs)) == list(engine.generate(prompt, 4, **kwargs))
    with pytest.raises(ValueError):
        list(engine.generate_many([prompt, prompt], [4]))


def test_generate_many_runs_a_model_with_its_own_forward_one_prompt_at_a_time(tiny_tokenizer):
    """A scripted model (its own forward, no decode step by row): the tools still run, rows as generate's."""
    tok = tiny_tokenizer
    sp = tok.encode_special
    script = tok.encode("so ") + [sp("<|python_start|>")] + tok.encode("3*4+1") + [sp("<|python_end|>")] \
        + [sp("<|assistant_end|>")]
    prompts = [[tok.get_bos_token_id()], tok.encode("a longer prompt", prepend="<|bos|>")]
    engine = Engine(ScriptedModel(tok.get_vocab_size(), script), tok)
    columns = list(engine.generate_many(prompts, [2, 1], max_tokens=30, temperature=0.0))
    alone, masks = engine.generate_batch(prompts[1], 1, max_tokens=30, temperature=0.0)
    for row in range(3):
        assert _cut([c[row] for c, _ in columns], engine.stop_tokens) == alone[0][len(prompts[1]):]
        assert [m[row] for _, m in columns][: len(masks[0]) - len(prompts[1])] == masks[0][len(prompts[1]):]
    assert 0 in masks[0]  # the calculator's output was forced


def test_auto_compiles_after_enough_eager_decoding_and_not_on_changed_weights(tiny_tokenizer, monkeypatch):
    import nanochat.engine as engine_module

    monkeypatch.setattr(engine_module, "COMPILE_AFTER_S", 1e-9)
    model = real_model(tiny_tokenizer.get_vocab_size(), seed=3)
    auto, eager = Engine(model, tiny_tokenizer), Engine(model, tiny_tokenizer, compile="off")
    assert auto.compile == "auto"
    prompt = tiny_tokenizer.encode("over hill", prepend="<|bos|>")
    kwargs = dict(num_samples=2, max_tokens=12, temperature=1.0, seed=4)
    first = auto.generate_batch(prompt, **kwargs)
    assert auto.decode_path.startswith("eager (compile='auto'") and auto.decoder is None
    assert auto.generate_batch(prompt, **kwargs) == first == eager.generate_batch(prompt, **kwargs)
    assert auto.decode_path.startswith("compiled") and auto.decoder is not None
    one = dict(kwargs, num_samples=1)  # one row runs another graph: it waits for its own share of eager decoding
    assert auto.generate_batch(prompt, **one) == eager.generate_batch(prompt, **one)
    assert auto.decode_path.startswith("eager (compile='auto': 0.0 s decoded at this batch size")
    assert auto.generate_batch(prompt, **kwargs) == first and auto.decode_path.startswith("compiled")
    with torch.no_grad():  # an optimizer step: the frozen graph is stale, and these weights new
        for p in model.parameters():
            p.mul_(1.1)
    changed = auto.generate_batch(prompt, **kwargs)
    assert auto.decoder is None and auto.decode_path.startswith("eager (compile='auto': 0.0 s")
    assert changed == eager.generate_batch(prompt, **kwargs)


def test_compile_on_decodes_eagerly_where_it_cannot_compile(tiny_tokenizer, monkeypatch):
    tok = tiny_tokenizer
    hello = tok.encode("hello there")
    scripted = Engine(ScriptedModel(tok.get_vocab_size(), hello + [tok.encode_special("<|assistant_end|>")]), tok,
                      compile="on")
    assert scripted.generate_batch([tok.get_bos_token_id()], max_tokens=20, temperature=0.0)[0] == [[tok.get_bos_token_id()] + hello]
    assert scripted.decode_path == "eager (ScriptedModel has its own forward)"
    with pytest.raises(ValueError, match="compile must be one of"):
        Engine(scripted.model, tok, compile="yes")

    model = real_model(tok.get_vocab_size())
    prompt = tok.encode("the cat", prepend="<|bos|>")
    kwargs = dict(num_samples=2, max_tokens=8, temperature=1.0, seed=1)
    expected = Engine(model, tok, compile="off").generate_batch(prompt, **kwargs)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        engine = Engine(model, tok, compile="on")
        engine.generate_batch(prompt, **kwargs)
        assert engine.decode_path.startswith("eager (autocast is on")

    def no_compiler(fn, **kwargs):
        def fails(*args):
            raise RuntimeError("no C++ compiler here")
        return fails

    monkeypatch.setattr(torch, "compile", no_compiler)
    engine = Engine(model, tok, compile="on")
    assert engine.generate_batch(prompt, **kwargs) == expected  # the step that failed to compile ran eagerly
    assert engine.decode_path == "eager (compiling failed: RuntimeError: no C++ compiler here)"
    assert engine.generate_batch(prompt, **kwargs) == expected and engine.decoder is None


def test_static_shape_step_as_cuda_graphs_need_it(tiny_tokenizer):
    """The CUDA path's decoder on CPU: a fixed-size cache per power of two, masked past pos, kept between calls."""
    from nanochat.engine import CompiledDecoder

    model = real_model(tiny_tokenizer.get_vocab_size(), n_kv_head=2, seed=6)
    eager, static = Engine(model, tiny_tokenizer, compile="off"), Engine(model, tiny_tokenizer, compile="on")
    static.decoder = CompiledDecoder(model, static=True)
    prompt = tiny_tokenizer.encode("the cat sat on", prepend="<|bos|>")
    for kwargs in (dict(temperature=0.0, max_tokens=20), dict(temperature=1.0, seed=2, max_tokens=30)):
        assert static.generate_batch(prompt, 3, **kwargs) == eager.generate_batch(prompt, 3, **kwargs)
        assert static.decode_path == "compiled (inductor, frozen weights, static shapes)"
    kept = static.decoder._static_cache[1]
    assert kept.cache.size(4) == 64  # prompt + 30 tokens, rounded up
    # two generations at once: the second may not share the first's cache
    kwargs = dict(temperature=1.0, seed=9, max_tokens=15)
    first, second = static.generate(prompt, 3, **kwargs), static.generate(prompt, 3, **kwargs)
    together = [(next(first), next(second)) for _ in range(15)]
    expected = list(eager.generate(prompt, 3, **kwargs))
    assert [a for a, _ in together] == expected and [b for _, b in together] == expected
    first.close(), second.close()
    static.generate_batch(prompt, 3, **kwargs)
    assert static.decoder._static_cache[1] is kept and not static.decoder._static_busy


# --- a smear model (GPTConfig.smear): every decode path carries each row's previous token ---------


def test_smear_decode_steps_equal_forward():
    """decode_step with last_ids, one position for all rows and a position per row, gives forward's logits."""
    from nanochat.gpt import KVCache

    model = real_model(128, seed=7, smear=True)
    cfg = model.config
    idx = torch.randint(0, 128, (2, 20), generator=torch.Generator().manual_seed(7))
    with torch.inference_mode():
        full = model(idx)
        cache = KVCache(2, cfg.n_kv_head, 24, cfg.n_embd // cfg.n_head, cfg.n_layer)
        model(idx[:, :8], kv_cache=cache)
        positions = torch.arange(24)
        for t in range(8, 20):
            logits = model.decode_step(idx[:, t : t + 1], positions[t : t + 1], positions[: t + 1], cache.cache,
                                       last_ids=idx[:, t - 1 : t])
            torch.testing.assert_close(logits, full[:, t], atol=1e-5, rtol=1e-5)
        # rows at different positions (generate_many's step): row 1 four tokens behind row 0
        cache.reset()
        model(idx[:, :8], kv_cache=cache)
        pos = torch.tensor([8, 4])
        ids = torch.stack([idx[0, 8:9], idx[1, 4:5]])
        logits = model.decode_step(ids, pos, positions[:9], cache.cache, masked=True, last_ids=torch.stack([idx[0, 7:8], idx[1, 3:4]]))
        torch.testing.assert_close(logits, torch.stack([full[0, 8], full[1, 4]]), atol=1e-5, rtol=1e-5)


def test_smear_engine_paths_give_the_models_own_tokens(tiny_tokenizer):
    """Eager, compiled (CPU graphs) and static-shape decoding, one prompt or several: the tokens of GPT.generate."""
    from nanochat.engine import CompiledDecoder

    model = real_model(tiny_tokenizer.get_vocab_size(), seed=8, smear=True)
    eager, compiled = Engine(model, tiny_tokenizer, compile="off"), Engine(model, tiny_tokenizer, compile="on")
    static = Engine(model, tiny_tokenizer, compile="on")
    static.decoder = CompiledDecoder(model, static=True)
    prompts = [tiny_tokenizer.encode(t, prepend="<|bos|>") for t in ("the cat sat on", "over hill", "apple river stone and")]
    for prompt in prompts[:2]:
        reference = _cut(list(model.generate(prompt, max_tokens=20, temperature=0.0)), eager.stop_tokens)
        for engine in (eager, compiled, static):
            rows, _ = engine.generate_batch(prompt, num_samples=3, max_tokens=20, temperature=0.0)
            assert all(row == prompt + reference for row in rows)
    assert compiled.decode_path.startswith("compiled") and static.decode_path.startswith("compiled")
    sampled = dict(max_tokens=16, temperature=1.0, seed=4)
    assert compiled.generate_batch(prompts[0], 3, **sampled) == eager.generate_batch(prompts[0], 3, **sampled)
    columns = list(eager.generate_many(prompts, [2, 1, 2], max_tokens=12, temperature=0.0))
    row = 0
    for prompt, n in zip(prompts, [2, 1, 2]):
        alone = _cut(list(model.generate(prompt, max_tokens=12, temperature=0.0)), eager.stop_tokens)
        for _ in range(n):
            assert _cut([c[row] for c, _ in columns], eager.stop_tokens) == alone
            row += 1
