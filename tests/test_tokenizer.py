from __future__ import annotations

import pickle

import pytest
import regex
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import shared_data_path
from nanochat.tokenizer import (
    SPECIAL_TOKENS,
    SPLIT_PATTERN,
    RustBPETokenizer,
    TokenizerNotFoundError,
    get_token_bytes,
    get_tokenizer,
    get_tokenizer_dir,
)


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_round_trip_arbitrary_unicode(tiny_tokenizer, text):
    assert tiny_tokenizer.decode(tiny_tokenizer.encode(text)) == text


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(SPECIAL_TOKENS + ["<|", "|>", "bos", "x", " ", "\n"]), max_size=30).map("".join))
def test_specials_never_come_from_ordinary_text(tiny_tokenizer, text):
    special_ids = {tiny_tokenizer.encode_special(s) for s in SPECIAL_TOKENS}
    ids = tiny_tokenizer.encode(text)
    assert not special_ids & set(ids)
    assert tiny_tokenizer.decode(ids) == text


def test_vocab_layout(tiny_tokenizer):
    # 256 bytes + 247 merges + 9 specials, the specials last and in order
    assert tiny_tokenizer.get_vocab_size() == 512
    assert tiny_tokenizer.get_special_tokens() == set(SPECIAL_TOKENS)
    assert [tiny_tokenizer.encode_special(s) for s in SPECIAL_TOKENS] == list(range(503, 512))
    assert tiny_tokenizer.get_bos_token_id() == 503
    assert tiny_tokenizer.id_to_token(503) == "<|bos|>"


def test_split_pattern_groups_digits_by_two():
    assert regex.findall(SPLIT_PATTERN, "12345 abc") == ["12", "34", "5", " abc"]


def test_encode_prepend_append_and_batches(tiny_tokenizer):
    bos = tiny_tokenizer.get_bos_token_id()
    end = tiny_tokenizer.encode_special("<|assistant_end|>")
    plain = tiny_tokenizer.encode("the cat sat")
    assert tiny_tokenizer.encode("the cat sat", prepend="<|bos|>", append=end) == [bos] + plain + [end]
    batch = tiny_tokenizer.encode(["the cat sat", "", "dog"], prepend=bos, num_threads=2)
    assert batch == [[bos] + plain, [bos], [bos] + tiny_tokenizer.encode("dog")]


def test_unknown_special_token_names_it(tiny_tokenizer):
    with pytest.raises(ValueError, match=r"<\|nope\|>"):
        tiny_tokenizer.encode_special("<|nope|>")
    with pytest.raises(ValueError, match="nope"):
        tiny_tokenizer.encode("x", prepend="<|nope|>")


def test_vocab_size_too_small_is_refused():
    with pytest.raises(ValueError, match="at least 265"):
        RustBPETokenizer.train_from_iterator(["abc"], vocab_size=200)


# ---- conversations ----


def _expected_rendering(tok, pieces):
    """Build ids/mask from (text-or-special, mask) pieces, encoding each piece on its own."""
    ids, mask = [], []
    for piece, m in pieces:
        piece_ids = [tok.encode_special(piece)] if piece in SPECIAL_TOKENS else tok.encode(piece)
        ids += piece_ids
        mask += [m] * len(piece_ids)
    return ids, mask


CONVERSATION = {
    "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "how many apples?"},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "three bags of 4 is "},
                {"type": "python", "text": "3*4"},
                {"type": "python_output", "text": "12"},
                {"type": "text", "text": " so 12 apples."},
            ],
        },
        {"role": "user", "content": "thanks"},
        {"role": "assistant", "content": "you are welcome"},
    ]
}


def test_render_conversation_masks_token_by_token(tiny_tokenizer):
    ids, mask = tiny_tokenizer.render_conversation(CONVERSATION)
    expected = _expected_rendering(
        tiny_tokenizer,
        [
            ("<|bos|>", 0),
            ("<|user_start|>", 0),
            ("be brief\n\nhow many apples?", 0),
            ("<|user_end|>", 0),
            ("<|assistant_start|>", 0),
            ("three bags of 4 is ", 1),
            ("<|python_start|>", 1),
            ("3*4", 1),
            ("<|python_end|>", 1),
            ("<|output_start|>", 0),
            ("12", 0),
            ("<|output_end|>", 0),
            (" so 12 apples.", 1),
            ("<|assistant_end|>", 1),
            ("<|user_start|>", 0),
            ("thanks", 0),
            ("<|user_end|>", 0),
            ("<|assistant_start|>", 0),
            ("you are welcome", 1),
            ("<|assistant_end|>", 1),
        ],
    )
    assert (ids, mask) == expected
    # every masked-in token is assistant-written: decoding them gives exactly that text
    learned = tiny_tokenizer.decode([t for t, m in zip(ids, mask) if m])
    assert learned == "three bags of 4 is <|python_start|>3*4<|python_end|> so 12 apples.<|assistant_end|>you are welcome<|assistant_end|>"


def test_render_conversation_truncates(tiny_tokenizer):
    full_ids, full_mask = tiny_tokenizer.render_conversation(CONVERSATION)
    ids, mask = tiny_tokenizer.render_conversation(CONVERSATION, max_tokens=15)
    assert (ids, mask) == (full_ids[:15], full_mask[:15])


def test_system_message_merged_into_first_user(tiny_tokenizer):
    merged = {"messages": [{"role": "user", "content": "be brief\n\nhow many apples?"}] + CONVERSATION["messages"][2:]}
    assert tiny_tokenizer.render_conversation(CONVERSATION) == tiny_tokenizer.render_conversation(merged)


def test_render_conversation_rejects_bad_order(tiny_tokenizer):
    with pytest.raises(ValueError, match="alternate"):
        tiny_tokenizer.render_conversation({"messages": [{"role": "assistant", "content": "hi"}]})
    with pytest.raises(ValueError, match="message 2 has role 'user', expected 'assistant'"):  # indices as given
        tiny_tokenizer.render_conversation({"messages": [
            {"role": "system", "content": "s"}, {"role": "user", "content": "q"}, {"role": "user", "content": "q"}]})


Q = {"role": "user", "content": "q"}


@pytest.mark.parametrize("conversation,message", [
    (None, "a conversation must be a dict"),
    ([Q], "a conversation must be a dict"),
    ({"msgs": [Q]}, "a conversation must be a dict"),
    ({"messages": "hi"}, "a conversation must be a dict"),
    ({"messages": []}, "at least one message"),
    ({"messages": ["hi"]}, "message 0 must be a dict with 'role' and 'content', not str"),
    ({"messages": [{"content": "q"}]}, "message 0 has no 'role'"),
    ({"messages": [{"role": "user"}]}, "message 0 has no 'content'"),
    ({"messages": [{"role": "robot", "content": "q"}]}, "message 0 has unknown role 'robot'; roles are system, user, assistant"),
    ({"messages": [{"role": ["user"], "content": "q"}]}, r"unknown role \['user'\]"),
    ({"messages": [{"role": "user", "content": None}]}, "user message 0 must have str content, not NoneType"),
    ({"messages": [{"role": "user", "content": ["q"]}]}, "user message 0 must have str content, not list"),
    ({"messages": [{"role": "system", "content": 3}, Q]}, "system message 0 must have str content, not int"),
    ({"messages": [Q, {"role": "system", "content": "s"}]}, "only the first message may be one"),
    ({"messages": [Q, {"role": "assistant", "content": 42}]}, "assistant message 1 content must be str or a list of parts, not int"),
    ({"messages": [Q, {"role": "assistant", "content": ["a"]}]}, "assistant message 1 part 0 must be a dict"),
    ({"messages": [Q, {"role": "assistant", "content": [{"text": "a"}]}]}, "part 0 has unknown part type None"),
    ({"messages": [Q, {"role": "assistant", "content": [{"type": "img", "text": ""}]}]}, "unknown part type 'img'; types are text, python, python_output"),
    ({"messages": [Q, {"role": "assistant", "content": [{"type": "text"}]}]}, "part 0 must have str 'text', not NoneType"),
    ({"messages": [Q, {"role": "assistant", "content": [{"type": "python", "text": b"1+1"}]}]}, "part 0 must have str 'text', not bytes"),
])
def test_malformed_conversation_is_a_value_error_saying_what(tiny_tokenizer, conversation, message):
    # these raised KeyError or TypeError (issue 16); every one is a ValueError that names the problem
    with pytest.raises(ValueError, match=message):
        tiny_tokenizer.render_conversation(conversation)
    if isinstance(conversation, dict) and isinstance(conversation.get("messages"), list) and conversation["messages"]:
        with pytest.raises(ValueError, match=message):
            tiny_tokenizer.render_for_completion(conversation)


def test_render_for_completion_primes_assistant(tiny_tokenizer):
    ids = tiny_tokenizer.render_for_completion(CONVERSATION)
    prefix = {"messages": CONVERSATION["messages"][:-1]}
    prefix_ids, _ = tiny_tokenizer.render_conversation(prefix)
    assert ids == prefix_ids + [tiny_tokenizer.encode_special("<|assistant_start|>")]
    full_ids, _ = tiny_tokenizer.render_conversation(CONVERSATION)
    assert full_ids[: len(ids)] == ids


# ---- save / load ----


def test_save_load_identical_encoder(tiny_tokenizer, base_dir):
    tiny_tokenizer.save(get_tokenizer_dir())
    loaded = get_tokenizer()
    n = tiny_tokenizer.get_vocab_size()
    assert loaded.get_vocab_size() == n
    assert [loaded.enc.decode_single_token_bytes(i) for i in range(n)] == [tiny_tokenizer.enc.decode_single_token_bytes(i) for i in range(n)]
    text = "the naïve cat sat on 12345 mats! <|bos|>"
    assert loaded.encode(text) == tiny_tokenizer.encode(text)
    assert loaded.render_conversation(CONVERSATION) == tiny_tokenizer.render_conversation(CONVERSATION)
    assert not [p for p in (base_dir / "tokenizer").iterdir() if ".tmp" in p.name]


def test_token_bytes_match_each_token(tiny_tokenizer, base_dir):
    tiny_tokenizer.save(get_tokenizer_dir())
    token_bytes = get_token_bytes("cpu")
    assert token_bytes.shape == (tiny_tokenizer.get_vocab_size(),)
    specials = {tiny_tokenizer.encode_special(s) for s in SPECIAL_TOKENS}
    for i in range(tiny_tokenizer.get_vocab_size()):
        expected = 0 if i in specials else len(tiny_tokenizer.enc.decode_single_token_bytes(i))
        assert token_bytes[i].item() == expected
    assert (token_bytes[:256] == 1).all()
    # summing token bytes over an encoding recovers the UTF-8 length of the text
    text = "über café 12345"
    assert token_bytes[torch.tensor(tiny_tokenizer.encode(text))].sum().item() == len(text.encode("utf-8"))


def test_missing_or_corrupt_tokenizer_says_what_to_run(base_dir):
    with pytest.raises(TokenizerNotFoundError, match="scripts.tok_train"):
        get_tokenizer()
    with pytest.raises(TokenizerNotFoundError, match="tok_train"):
        get_token_bytes()
    tok_dir = base_dir / "tokenizer"
    tok_dir.mkdir()
    (tok_dir / "tokenizer.pkl").write_bytes(pickle.dumps({"a": 1})[:5])
    with pytest.raises(TokenizerNotFoundError, match=r"tokenizer\.pkl.*delete it"):
        get_tokenizer()


@pytest.mark.shared_data
def test_train_on_tiny_shakespeare_compresses():
    text = shared_data_path("tinyshakespeare", "input.txt").read_text(encoding="utf-8")
    docs = text.split("\n\n")
    tok = RustBPETokenizer.train_from_iterator(docs, vocab_size=2048)
    assert tok.get_vocab_size() == 2048
    ids = tok.encode(text[:200_000])
    assert tok.decode(ids) == text[:200_000]
    # English at 2k vocab compresses to roughly 3+ bytes per token; bytes alone would be 1.0
    assert len(text[:200_000].encode()) / len(ids) > 3.0
