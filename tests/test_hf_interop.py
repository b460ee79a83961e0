"""
Hugging Face interop: an exported tiny trained model computes in transformers what it computes
here, its tokenizer encodes and renders chats as ours does, and export -> import gives it back.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import asdict, replace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import random_document, shared_data_path
from nanochat import hf
from nanochat.checkpoint_manager import checkpoint_dir_for, load_checkpoint, load_model, save_checkpoint
from nanochat.engine import Engine
from nanochat.gpt import GPT, GPTConfig
from nanochat.report import Report
from nanochat.tokenizer import SPECIAL_TOKENS, RustBPETokenizer, get_tokenizer_dir
from scripts import export_hf, import_hf

CONVERSATIONS = [
    {"messages": [{"role": "user", "content": "the cat sat on the mat?"}, {"role": "assistant", "content": "far away."}]},
    {"messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is 12*7? café naïve über"},
        {"role": "assistant", "content": [
            {"type": "text", "text": "Let me compute: "},
            {"type": "python", "text": "12*7"},
            {"type": "python_output", "text": "84"},
            {"type": "text", "text": " so 84.\n"},
        ]},
        {"role": "user", "content": "  and twice that?\n\n"},
        {"role": "assistant", "content": "168"},
    ]},
]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # nothing here may reach the hub


@pytest.fixture(scope="module")
def memorized_text(tiny_tokenizer) -> list[int]:
    rng = random.Random(3)
    return tiny_tokenizer.encode(" ".join(random_document(rng) for _ in range(12)), prepend="<|bos|>")


@pytest.fixture(scope="module")
def trained_model(tiny_tokenizer, memorized_text) -> GPT:
    """A depth-2 GQA model that has half memorized a short text, so greedy decoding writes varied tokens."""
    torch.manual_seed(0)
    config = GPTConfig(sequence_len=128, vocab_size=tiny_tokenizer.get_vocab_size(), n_layer=2, n_head=4, n_kv_head=2, n_embd=64)
    model = GPT(config)
    model.init_weights()
    text = torch.tensor(memorized_text)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(60):
        rows = torch.stack([text[s : s + 33] for s in torch.randint(0, len(text) - 33, (8,), generator=g)])
        loss = model(rows[:, :-1], rows[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 3, losses  # it learned: its choices are no longer near-ties
    return model.eval()


@pytest.fixture(scope="module")
def exported(trained_model, tiny_tokenizer, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("hf") / "model")
    hf.export_folder(trained_model, tiny_tokenizer, out, hf.model_card(trained_model, "sft", {"step": 40}, None))
    return out


@pytest.fixture(scope="module")
def hf_model(exported):
    return AutoModelForCausalLM.from_pretrained(exported, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def hf_tokenizer(exported):
    return AutoTokenizer.from_pretrained(exported)


def test_export_writes_a_transformers_nanochat_folder(exported, hf_model):
    config = json.load(open(f"{exported}/config.json"))
    assert config["model_type"] == "nanochat" and config["architectures"] == ["NanoChatForCausalLM"]
    assert type(hf_model).__name__ == "NanoChatForCausalLM"
    assert hf_model.lm_head.weight.data_ptr() != hf_model.model.embed_tokens.weight.data_ptr()  # untied
    card = open(f"{exported}/README.md").read()
    assert "## Architecture" in card and "| layers | 2 |" in card and "`sft`" in card


# ---- the model ----


def _max_logit_diff(model: GPT, hf_model, ids: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(ids) - hf_model(ids).logits).abs().max().item()


def test_logits_match_on_random_tokens(trained_model, hf_model):
    ids = torch.randint(0, trained_model.config.vocab_size, (3, 64), generator=torch.Generator().manual_seed(0))
    assert _max_logit_diff(trained_model, hf_model, ids) < 1e-4


def test_logits_match_on_a_rendered_conversation(trained_model, hf_model, tiny_tokenizer):
    ids, _ = tiny_tokenizer.render_conversation(CONVERSATIONS[1])
    assert 30 < len(ids) <= 128
    assert _max_logit_diff(trained_model, hf_model, torch.tensor([ids])) < 1e-4


@pytest.mark.parametrize("prompt_kind", ["chat", "text"])
def test_greedy_generate_matches_engine(trained_model, hf_model, tiny_tokenizer, memorized_text, prompt_kind):
    if prompt_kind == "chat":
        prompt = tiny_tokenizer.render_for_completion(CONVERSATIONS[0])
    else:
        prompt = memorized_text[:12]  # a prompt whose continuation it has learned
    ours = [column[0] for column, _ in Engine(trained_model, tiny_tokenizer).generate(prompt, max_tokens=32, temperature=0.0)]
    assert tiny_tokenizer.encode_special("<|python_start|>") not in ours  # no tool call: transformers has no calculator
    with torch.no_grad():
        out = hf_model.generate(torch.tensor([prompt]), max_new_tokens=32, do_sample=False)
    theirs = out[0, len(prompt):].tolist()
    stops = {tiny_tokenizer.encode_special("<|assistant_end|>"), tiny_tokenizer.get_bos_token_id()}
    for i, token in enumerate(theirs):  # transformers pads after a stop token; the engine just ends
        if token in stops:
            theirs = theirs[: i + 1]
            break
    assert len(set(ours)) >= 8  # a varied continuation, not one token repeated
    assert theirs == ours


# ---- the tokenizer ----


def _real_texts() -> dict[str, str]:
    shakespeare = shared_data_path("tinyshakespeare", "input.txt").read_text(encoding="utf-8")
    rows = [json.loads(line) for line in shared_data_path("gsm8k", "test.jsonl").read_text(encoding="utf-8").splitlines()]
    return {"shakespeare": shakespeare, "gsm8k": "\n\n".join(r["question"] + "\n" + r["answer"] for r in rows)}


@pytest.mark.shared_data
def test_hf_tokenizer_matches_ours_on_real_text(tiny_tokenizer, hf_tokenizer, tmp_path):
    texts = _real_texts()
    # also a 4096-token vocabulary learned on the real text itself: thousands of merges to recover
    chunks = [t[i : i + 5000] for t in texts.values() for i in range(0, len(t), 5000)]
    real_tokenizer = RustBPETokenizer.train_from_iterator(chunks, vocab_size=4096)
    assert real_tokenizer.get_vocab_size() == 4096
    hf.to_hf_tokenizer(real_tokenizer, model_max_length=1 << 20).save_pretrained(tmp_path)
    for ours, theirs in [(tiny_tokenizer, hf_tokenizer), (real_tokenizer, AutoTokenizer.from_pretrained(tmp_path))]:
        for name, text in texts.items():
            ids = ours.encode(text)
            assert theirs(text, add_special_tokens=False)["input_ids"] == ids, name
            assert theirs.decode(ids) == text, name
        doc = texts["gsm8k"][:2000]
        assert theirs(doc)["input_ids"] == ours.encode(doc, prepend="<|bos|>")  # BOS by default, as in training


WORDS = st.lists(st.sampled_from(["the", " cat", "ka", "lo", " mi", " ", "  ", "\n", "\r\n", "99", "1234", "'s", "café", "😀"]), max_size=30)


# no "|": typed special-token strings are a documented difference (transformers makes them special)
@settings(max_examples=100, deadline=None)
@given(text=st.text(alphabet=st.characters(blacklist_characters="|", blacklist_categories=("Cs",)), max_size=80) | WORDS.map("".join))
def test_hf_tokenizer_matches_ours_on_any_text(hf_tokenizer, tiny_tokenizer, text):
    ids = tiny_tokenizer.encode(text)
    assert hf_tokenizer(text, add_special_tokens=False)["input_ids"] == ids
    assert hf_tokenizer.decode(ids) == text


def test_hf_tokenizer_matches_ours_on_every_special_token(tiny_tokenizer, hf_tokenizer):
    for name in SPECIAL_TOKENS:
        token_id = tiny_tokenizer.encode_special(name)
        assert hf_tokenizer.convert_tokens_to_ids(name) == token_id
        assert hf_tokenizer(name, add_special_tokens=False)["input_ids"] == [token_id]
        assert hf_tokenizer.decode([token_id]) == name
    assert set(hf_tokenizer.all_special_tokens) <= set(SPECIAL_TOKENS)
    assert hf_tokenizer.bos_token_id == tiny_tokenizer.get_bos_token_id()
    assert hf_tokenizer.eos_token_id == tiny_tokenizer.encode_special("<|assistant_end|>")
    assert len(hf_tokenizer) == tiny_tokenizer.get_vocab_size()


def _chat_ids(hf_tokenizer, messages: list[dict], add_generation_prompt: bool) -> list[int]:
    return hf_tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=True)["input_ids"]


@pytest.mark.parametrize("conversation", CONVERSATIONS, ids=["simple", "system-and-tools"])
def test_chat_template_renders_our_ids(hf_tokenizer, tiny_tokenizer, conversation):
    messages = conversation["messages"]
    assert _chat_ids(hf_tokenizer, messages[:-1], True) == tiny_tokenizer.render_for_completion(conversation)
    assert _chat_ids(hf_tokenizer, messages, False) == tiny_tokenizer.render_conversation(conversation, max_tokens=1 << 20)[0]


TEXT = st.text(alphabet=st.characters(blacklist_characters="|", blacklist_categories=("Cs",)), max_size=40)
# a text part is always followed by a tool call: two adjacent text parts are encoded apart by us but
# joined by a template, a documented difference
ASSISTANT = st.one_of(TEXT, st.lists(st.tuples(TEXT, TEXT, TEXT), min_size=1, max_size=2).map(
    lambda groups: [part for text, code, output in groups for part in (
        {"type": "text", "text": text}, {"type": "python", "text": code}, {"type": "python_output", "text": output})]))


@settings(max_examples=40, deadline=None)
@given(system=st.one_of(st.none(), TEXT), turns=st.lists(st.tuples(TEXT, ASSISTANT), min_size=1, max_size=3))
def test_chat_template_renders_our_ids_for_any_conversation(hf_tokenizer, tiny_tokenizer, system, turns):
    messages = [{"role": "system", "content": system}] if system is not None else []
    for user, assistant in turns:
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    conversation = {"messages": messages}
    assert _chat_ids(hf_tokenizer, messages[:-1], True) == tiny_tokenizer.render_for_completion(conversation)


def test_chat_template_refuses_what_render_conversation_refuses(hf_tokenizer, tiny_tokenizer):
    bad = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}, {"role": "assistant", "content": "c"}]
    with pytest.raises(ValueError, match="expected 'assistant'"):
        tiny_tokenizer.render_for_completion({"messages": bad})
    with pytest.raises(Exception, match="expected assistant"):
        _chat_ids(hf_tokenizer, bad[:-1], True)


# ---- export -> import, through the scripts ----


def _save_sft_checkpoint(model: GPT, tokenizer: RustBPETokenizer, tag: str = "d2") -> None:
    tokenizer.save(get_tokenizer_dir())
    meta = {"step": 40, "model_config": asdict(model.config), "val_loss": 1.25}
    save_checkpoint(checkpoint_dir_for("sft", tag), 40, model.state_dict(), None, meta, rank=0)


def test_export_then_import_gives_back_identical_tensors_and_tokenizer(trained_model, tiny_tokenizer, base_dir, tmp_path, monkeypatch):
    _save_sft_checkpoint(trained_model, tiny_tokenizer)
    report = Report(str(base_dir / "report"))
    report.log("Chat evaluation sft", [{"ARC-Easy": 0.3125}])
    report.generate(copy_to=None)
    out = export_hf.main(["-i", "sft", "--out", str(tmp_path / "export")])
    card = (tmp_path / "export" / "README.md").read_text()
    assert "| ARC-Easy |" in card and "0.3125" in card and "val_loss = 1.25" in card  # the report's and the meta's numbers

    fresh = tmp_path / "fresh"
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(fresh))
    checkpoint_dir = import_hf.main(["--model", out, "--to", "mid"])
    assert checkpoint_dir == str(fresh / "mid_checkpoints" / "d2")
    state, _, meta = load_checkpoint(checkpoint_dir, 0, "cpu")
    assert GPTConfig(**meta["model_config"]) == trained_model.config and meta["step"] == 0
    original = trained_model.state_dict()
    assert state.keys() == original.keys()
    assert all(torch.equal(state[k], original[k]) for k in original)

    imported = RustBPETokenizer.from_directory(get_tokenizer_dir())
    assert imported.enc._mergeable_ranks == tiny_tokenizer.enc._mergeable_ranks
    assert imported.enc._special_tokens == tiny_tokenizer.enc._special_tokens
    assert imported.enc._pat_str == tiny_tokenizer.enc._pat_str
    assert torch.equal(torch.load(fresh / "tokenizer" / "token_bytes.pt"), tiny_tokenizer.token_byte_lengths())

    # the later stages load it as their own: same logits as the original
    model, tokenizer, _ = load_model("mid", "cpu", "eval")
    ids = torch.tensor([tokenizer.render_for_completion(CONVERSATIONS[1])])
    with torch.no_grad():
        assert torch.equal(model(ids), trained_model(ids))


# ---- bad input: one line each ----


def _exit_message(main, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as excinfo:
        main(argv)
    message = excinfo.value.code
    assert isinstance(message, str) and message.startswith("error: ") and "\n" not in message, message
    return message


def _edited_copy(exported: str, tmp_path, edit_config=None, remove: str | None = None) -> str:
    folder = str(tmp_path / "edited")
    shutil.copytree(exported, folder)
    if edit_config:
        config = json.load(open(f"{folder}/config.json"))
        edit_config(config)
        json.dump(config, open(f"{folder}/config.json", "w"))
    if remove:
        (tmp_path / "edited" / remove).unlink()
    return folder


def test_export_refuses_a_smear_model(trained_model, tiny_tokenizer, base_dir, tmp_path):
    config = replace(trained_model.config, smear=True)
    _save_sft_checkpoint(GPT(config), tiny_tokenizer, tag="smear")
    message = _exit_message(export_hf.main, ["-i", "sft", "--model_tag", "smear", "--out", str(tmp_path / "export")])
    assert "--smear" in message
    assert not (tmp_path / "export").exists()  # refused before anything is written


def test_import_refuses_another_architecture(exported, base_dir, tmp_path):
    folder = _edited_copy(exported, tmp_path, edit_config=lambda c: c.update(model_type="llama", architectures=["LlamaForCausalLM"]))
    message = _exit_message(import_hf.main, ["--model", folder, "--to", "base"])
    assert "'llama' model" in message and "LlamaForCausalLM" in message
    assert not (base_dir / "base_checkpoints").exists()


def test_import_refuses_a_feature_our_gpt_lacks(exported, base_dir, tmp_path):
    folder = _edited_copy(exported, tmp_path, edit_config=lambda c: c.update(tie_word_embeddings=True, hidden_act="silu"))
    message = _exit_message(import_hf.main, ["--model", folder, "--to", "base"])
    assert "tie_word_embeddings=True" in message and "hidden_act='silu'" in message


def test_import_refuses_a_missing_tokenizer(exported, base_dir, tmp_path):
    folder = _edited_copy(exported, tmp_path, remove="tokenizer.json")
    assert "no tokenizer.json" in _exit_message(import_hf.main, ["--model", folder, "--to", "sft"])
    assert not (base_dir / "tokenizer").exists()


def test_import_refuses_a_vocab_size_mismatch(exported, base_dir, tmp_path):
    folder = _edited_copy(exported, tmp_path, edit_config=lambda c: c.update(vocab_size=600))
    message = _exit_message(import_hf.main, ["--model", folder, "--to", "sft"])
    assert "vocab size mismatch" in message and "600" in message and "512" in message


def _reverse_merges(tokenizer_json: dict) -> None:
    tokenizer_json["model"]["merges"].reverse()


def _drop_python_tokens(tokenizer_json: dict) -> None:
    tokenizer_json["added_tokens"] = [t for t in tokenizer_json["added_tokens"] if "python" not in t["content"]]


@pytest.mark.parametrize("edit, expected", [
    (_reverse_merges, "merges are not in the order of their tokens' ids"),
    (_drop_python_tokens, "lacks nanochat's special tokens ['<|python_start|>', '<|python_end|>']"),
])
def test_import_refuses_a_tokenizer_tiktoken_cannot_reproduce(exported, base_dir, tmp_path, edit, expected):
    folder = _edited_copy(exported, tmp_path)
    tokenizer_json = json.load(open(f"{folder}/tokenizer.json"))
    edit(tokenizer_json)
    json.dump(tokenizer_json, open(f"{folder}/tokenizer.json", "w"))
    assert expected in _exit_message(import_hf.main, ["--model", folder, "--to", "sft"])


def test_import_refuses_a_path_that_is_not_there(base_dir):
    assert "neither a folder nor a hub repo" in _exit_message(import_hf.main, ["--model", "/no/such/model", "--to", "sft"])


def test_import_refuses_to_overwrite_checkpoints_or_a_different_tokenizer(exported, base_dir, trained_model, tiny_tokenizer):
    _save_sft_checkpoint(trained_model, tiny_tokenizer)
    assert "already holds checkpoints" in _exit_message(import_hf.main, ["--model", exported, "--to", "sft"])
    other = RustBPETokenizer.train_from_iterator(["completely different text " * 50], vocab_size=300)
    other.save(get_tokenizer_dir())
    assert "different tokenizer" in _exit_message(import_hf.main, ["--model", exported, "--to", "sft", "--model_tag", "x"])


def test_export_without_a_checkpoint_says_what_to_run(base_dir, tmp_path):
    assert "chat_sft" in _exit_message(export_hf.main, ["-i", "sft", "--out", str(tmp_path / "out")])
