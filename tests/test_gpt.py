from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from nanochat.gpt import GPT, GPTConfig, KVCache, config_for_depth


def make_model(n_head: int = 4, n_kv_head: int = 4, n_layer: int = 2, n_embd: int = 64, vocab: int = 300, seed: int = 0,
               smear: bool = False) -> GPT:
    torch.manual_seed(seed)
    model = GPT(GPTConfig(sequence_len=64, vocab_size=vocab, n_layer=n_layer, n_head=n_head, n_kv_head=n_kv_head, n_embd=n_embd,
                          smear=smear))
    model.init_weights()
    with torch.no_grad():  # the zero-initialized projections and head would hide most bugs
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def test_state_dict_names_are_nanochats():
    model = make_model(n_layer=2)
    expected = {"transformer.wte.weight", "lm_head.weight"}
    for i in range(2):
        expected |= {f"transformer.h.{i}.attn.{n}.weight" for n in ("c_q", "c_k", "c_v", "c_proj")}
        expected |= {f"transformer.h.{i}.mlp.{n}.weight" for n in ("c_fc", "c_proj")}
    assert set(model.state_dict()) == expected
    assert set(make_model(n_layer=2, smear=True).state_dict()) == expected | {"smear_lambda"}


def test_depth_dial():
    cfg = config_for_depth(20, vocab_size=65536)
    assert (cfg.n_embd, cfg.n_head, cfg.n_kv_head, cfg.n_layer, cfg.sequence_len) == (1280, 10, 10, 20, 2048)
    assert config_for_depth(1, 512).n_head == 1  # width 64 still gets one head
    assert config_for_depth(4, 512, n_kv_head=2).n_kv_head == 2
    with pytest.raises(ValueError, match="n_kv_head"):
        GPTConfig(n_head=4, n_kv_head=3, n_embd=64)


def test_fresh_model_predicts_uniform_and_is_zero_init():
    torch.manual_seed(0)
    model = GPT(GPTConfig(sequence_len=16, vocab_size=100, n_layer=1, n_head=2, n_kv_head=2, n_embd=32))
    model.init_weights()
    assert model.lm_head.weight.abs().sum() == 0
    assert model.transformer.h[0].attn.c_proj.weight.abs().sum() == 0
    idx = torch.randint(0, 100, (2, 8))
    assert model(idx, idx).item() == pytest.approx(math.log(100), rel=1e-6)


def _reference_forward(model: GPT, idx: torch.Tensor) -> torch.Tensor:
    """The architecture written out independently: explicit attention with a causal mask and repeated KV heads."""
    cfg = model.config
    hd = cfg.n_embd // cfg.n_head
    T = idx.size(1)
    inv_freq = 1.0 / (10000 ** (torch.arange(0, hd, 2).double() / hd))
    ang = torch.arange(T).double()[:, None] * inv_freq[None, :]
    cos, sin = ang.cos().float()[None, :, None, :], ang.sin().float()[None, :, None, :]

    def rope(x):
        x1, x2 = x[..., : hd // 2], x[..., hd // 2 :]
        return torch.cat([x1 * cos + x2 * sin, -x1 * sin + x2 * cos], dim=-1)

    def rms(x):
        return x / torch.sqrt((x * x).mean(-1, keepdim=True) + torch.finfo(x.dtype).eps)

    e = model.transformer.wte.weight[idx]
    if cfg.smear:  # plus a multiple of the embedding of the token before (none before the first)
        before = torch.cat([torch.zeros_like(e[:, :1]), e[:, :-1]], dim=1)
        e = e + model.smear_lambda * before
    x = rms(e)
    for block in model.transformer.h:
        a = block.attn
        h = rms(x)
        q = rms(rope((h @ a.c_q.weight.T).view(*idx.shape, cfg.n_head, hd))).transpose(1, 2)
        k = rms(rope((h @ a.c_k.weight.T).view(*idx.shape, cfg.n_kv_head, hd))).transpose(1, 2)
        v = (h @ a.c_v.weight.T).view(*idx.shape, cfg.n_kv_head, hd).transpose(1, 2)
        rep = cfg.n_head // cfg.n_kv_head
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        att = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
        att = att.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf")).softmax(-1)
        y = (att @ v).transpose(1, 2).reshape(*idx.shape, cfg.n_embd)
        x = x + y @ a.c_proj.weight.T
        m = block.mlp
        x = x + (torch.relu(rms(x) @ m.c_fc.weight.T) ** 2) @ m.c_proj.weight.T
    logits = rms(x) @ model.lm_head.weight.T
    return 15 * torch.tanh(logits / 15)


@pytest.mark.parametrize("n_kv_head,smear", [(4, False), (2, False), (1, False), (2, True)])
def test_forward_matches_an_independent_implementation(n_kv_head, smear):
    model = make_model(n_kv_head=n_kv_head, smear=smear)
    idx = torch.randint(0, 300, (2, 24))
    with torch.no_grad():
        torch.testing.assert_close(model(idx), _reference_forward(model, idx), atol=1e-4, rtol=1e-4)


def test_loss_reductions_and_ignore_index():
    model = make_model()
    idx = torch.randint(0, 300, (2, 10))
    targets = idx.clone()
    targets[0, :4] = -1
    with torch.no_grad():
        logits = model(idx)
        per_token = model(idx, targets, loss_reduction="none")
        ref = F.cross_entropy(logits.view(-1, 300), targets.view(-1), ignore_index=-1, reduction="none")
        torch.testing.assert_close(per_token, ref)
        assert per_token.view(2, 10)[0, :4].abs().sum() == 0
        torch.testing.assert_close(model(idx, targets), ref.sum() / 16)
    assert logits.abs().max() < 15


@pytest.mark.parametrize("n_kv_head,smear", [(4, False), (2, False), (2, True)])
def test_kv_cache_decoding_equals_full_forward(n_kv_head, smear):
    model = make_model(n_kv_head=n_kv_head, smear=smear)
    idx = torch.randint(0, 300, (3, 30))
    cfg = model.config
    with torch.no_grad():
        full = model(idx)
        # capacity 4 forces the cache to grow several times
        cache = KVCache(3, cfg.n_kv_head, 4, cfg.n_embd // cfg.n_head, cfg.n_layer)
        pieces = [model(idx[:, :10], kv_cache=cache)]  # prefill
        pieces.append(model(idx[:, 10:15], kv_cache=cache))  # a chunk after a cached prefix
        pieces += [model(idx[:, t : t + 1], kv_cache=cache) for t in range(15, 30)]  # token by token
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-5)
    assert cache.get_pos() == 30


@pytest.mark.parametrize("smear", [False, True])
def test_kv_cache_prefill_broadcasts_one_row_to_many(smear):
    model = make_model(n_kv_head=2, smear=smear)
    cfg = model.config
    prompt = torch.randint(0, 300, (1, 12))
    nxt = torch.randint(0, 300, (4, 1))
    hd = cfg.n_embd // cfg.n_head
    with torch.no_grad():
        one = KVCache(1, cfg.n_kv_head, 16, hd, cfg.n_layer)
        model(prompt, kv_cache=one)
        many = KVCache(4, cfg.n_kv_head, 16, hd, cfg.n_layer)
        many.prefill(one)
        out = model(nxt, kv_cache=many)[:, -1]
        full = model(torch.cat([prompt.expand(4, -1), nxt], dim=1))[:, -1]
    torch.testing.assert_close(out, full, atol=1e-5, rtol=1e-5)


def test_smear_mixes_in_only_the_token_before():
    """Position 0 has no token before it (the model without smear); later positions depend on their predecessor, never on later tokens."""
    smeared = make_model(smear=True)
    plain = make_model()
    plain.load_state_dict({k: v for k, v in smeared.state_dict().items() if k != "smear_lambda"})
    idx = torch.randint(0, 300, (2, 12))
    changed = idx.clone()
    changed[:, 6] = (changed[:, 6] + 1) % 300
    with torch.no_grad():
        a, b = smeared(idx), smeared(changed)
        torch.testing.assert_close(a[:, 0], plain(idx)[:, 0], atol=1e-5, rtol=1e-5)
        assert not torch.allclose(a[:, 1:], plain(idx)[:, 1:], atol=1e-3)
        torch.testing.assert_close(a[:, :6], b[:, :6])  # causal: a change at 6 moves nothing before it
        nxt = idx[:, 5:6]
        with pytest.raises(ValueError, match="last_ids"):
            smeared.decode_step(nxt, torch.tensor([5]), torch.arange(6), torch.zeros(2, 2, 2, 4, 8, 16))


def test_generate_greedy_is_argmax_of_full_forward():
    model = make_model()
    tokens = [5, 17, 42]
    generated = list(model.generate(tokens, max_tokens=6, temperature=0.0))
    seq = list(tokens)
    with torch.no_grad():
        for _ in range(6):
            seq.append(model(torch.tensor([seq]))[0, -1].argmax().item())
    assert generated == seq[3:]
    # sampling is reproducible by seed and differs across seeds
    a = list(model.generate(tokens, max_tokens=8, temperature=1.0, seed=1))
    assert a == list(model.generate(tokens, max_tokens=8, temperature=1.0, seed=1))
    assert a != list(model.generate(tokens, max_tokens=8, temperature=1.0, seed=2))
    assert all(t in torch.topk(model(torch.tensor([tokens]))[0, -1], 1).indices.tolist()
               for t in model.generate(tokens, max_tokens=1, temperature=1.0, top_k=1))


def test_estimate_flops_formula():
    model = make_model(n_layer=2, n_embd=64, n_head=4, vocab=300)
    non_embedding = sum(p.numel() for p in model.parameters()) - 300 * 64
    assert model.estimate_flops() == 6 * non_embedding + 12 * 2 * 4 * 16 * 64
    # per layer: q,k,v,proj (4·d²) + MLP (8·d²); plus the head
    assert non_embedding == 2 * 12 * 64 * 64 + 300 * 64


def test_sampler_follows_the_distribution():
    from nanochat.gpt import sample_next_token

    probs = torch.tensor([0.1, 0.0, 0.6, 0.3, 0.0])
    logits = probs.clamp(min=1e-30).log().expand(20000, -1).contiguous()
    rng = torch.Generator().manual_seed(0)
    samples = sample_next_token(logits, rng, temperature=1.0)[:, 0]
    freq = torch.bincount(samples, minlength=5).float() / len(samples)
    assert freq[1] == 0 and freq[4] == 0  # zero-probability tokens never come out
    torch.testing.assert_close(freq, probs, atol=0.015, rtol=0)
    # top-k keeps the k most likely and renormalizes them
    top2 = sample_next_token(logits, rng, temperature=1.0, top_k=2)[:, 0]
    freq2 = torch.bincount(top2, minlength=5).float() / len(top2)
    torch.testing.assert_close(freq2, torch.tensor([0.0, 0.0, 2 / 3, 1 / 3, 0.0]), atol=0.015, rtol=0)
    # temperature sharpens: at 0.5 the weights square before renormalizing
    sharp = sample_next_token(logits, rng, temperature=0.5)[:, 0]
    p2 = probs**2 / (probs**2).sum()
    torch.testing.assert_close(torch.bincount(sharp, minlength=5).float() / len(sharp), p2, atol=0.015, rtol=0)
