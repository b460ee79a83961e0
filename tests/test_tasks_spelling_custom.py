"""Tests for tasks/spellingbee.py and tasks/customjson.py (CPU, no network)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from nanochat.synthetic import WORDS
from tasks.common import TaskMixture, assistant_text, validate_messages
from tasks.customjson import (
    IDENTITY_TWIN_FILE,
    CustomJSON,
    download_identity_conversations,
    get_identity_conversations,
    write_identity_conversations,
)
from tasks.spellingbee import WORD_LIST_FILE, SimpleSpelling, SpellingBee, load_words

_COUNT_CALL = re.compile(r"'([a-z]+)'\.count\('([a-z])'\)")


class FakeResponse:
    def __init__(self, content: bytes, status: int = 200):
        self.content, self.status_code = content, status

    def raise_for_status(self):
        import requests

        if self.status_code != 200:
            raise requests.HTTPError(f"{self.status_code} error")


@pytest.fixture
def offline(monkeypatch):
    import requests

    monkeypatch.setenv("NANOCHAT_DATASET", "synthetic")
    monkeypatch.setattr(requests, "get", lambda *a, **k: (_ for _ in ()).throw(AssertionError("network used")))

# -----------------------------------------------------------------------------
# SpellingBee


def test_spellingbee_counts_are_right(offline, tiny_tokenizer):
    task = SpellingBee(size=600, split="train")
    assert len(task) == 600 and task.eval_type == "generative"
    counts = []
    for ex in task:
        question = ex["messages"][0]["content"]
        parts = ex["messages"][1]["content"]
        assert [p["type"] for p in parts] == ["text", "python", "python_output", "text"]
        word, letter = _COUNT_CALL.fullmatch(parts[1]["text"]).groups()
        assert word in WORDS and word in question and letter in question
        count = word.count(letter)  # recount
        counts.append(count)
        assert parts[2]["text"] == str(count)
        assert parts[3]["text"].endswith(f"#### {count}")
        # the spelled-out lines give back the word, and the running tally ends at the count
        spelled = parts[0]["text"].split("\n\n")[1].split("\n")
        assert "".join(line[0] for line in spelled) == word
        tallies = [int(line.split("<- ")[1]) for line in spelled if "<-" in line]
        assert tallies == list(range(1, count + 1))
        gold = assistant_text(ex["messages"][1])
        assert task.evaluate(ex, gold) and task.reward(ex, gold) == 1.0
        assert task.reward(ex, gold.replace(f"#### {count}", f"#### {count + 1}")) == 0.0
    # each count a word offers is equally likely: no answer is right most of the time whatever the word
    assert max(counts.count(c) for c in set(counts)) < 0.5 * len(counts)
    assert counts.count(0) > 0.2 * len(counts) and sum(c >= 2 for c in counts) > 0.08 * len(counts)
    tiny_tokenizer.render_conversation(task[0])


def test_spellingbee_phrasings_and_languages(offline):
    questions = [ex["messages"][0]["content"] for ex in SpellingBee(size=400, split="train")]
    assert len({q.split()[0] for q in questions}) > 10
    assert any(q.startswith("¿") for q in questions)  # Spanish
    assert any("Buchstabe" in q or "Wie" in q for q in questions)  # German
    assert any("Combien" in q for q in questions)  # French
    assert not any("{" in q for q in questions)


def test_spellingbee_python_part_matches_the_calculator(offline):
    calculator = pytest.importorskip("nanochat.calculator")
    for ex in SpellingBee(size=200, split="test"):
        parts = ex["messages"][1]["content"]
        assert str(calculator.use_calculator(parts[1]["text"])) == parts[2]["text"]


def test_spellingbee_deterministic_and_splits_differ(offline):
    a, b = SpellingBee(size=100, split="train"), SpellingBee(size=100, split="train")
    assert list(a) == list(b)
    assert SpellingBee(size=1000, split="train")[57] == a[57]  # example i does not depend on size
    assert a[-1] == a[99] and SpellingBee(size=100, split="train", start=90)[0] == a[90]  # random access
    test = SpellingBee(size=100, split="test")
    # every example has its own RNG, and no test seed is a train seed: their draws never coincide
    train_draws = {a.rng_for(i).random() for i in range(2000)}
    test_draws = {test.rng_for(i).random() for i in range(2000)}
    assert len(train_draws) == len(test_draws) == 2000 and not train_draws & test_draws
    assert sum(x == y for x, y in zip(a, test)) < 5
    with pytest.raises(IndexError):
        a[100]


def test_simple_spelling(offline, tiny_tokenizer):
    task = SimpleSpelling(size=300, split="train")
    for ex in task:
        reply = ex["messages"][1]["content"]
        word, letters = reply.split(":")
        assert word in ex["messages"][0]["content"] and word in WORDS
        assert letters.split(",") == list(word)
        assert task.evaluate(ex, reply) and not task.evaluate(ex, f"{word}:{letters[:-1]}")
        assert task.reward(ex, reply) == 1.0
    tiny_tokenizer.render_conversation(task[0])
    assert list(SimpleSpelling(size=20, split="test")) != list(SimpleSpelling(size=20, split="train"))
    mixed = TaskMixture([SpellingBee(size=10), SimpleSpelling(size=10)])
    assert len(mixed) == 20


def test_word_list_download_and_reuse(base_dir, monkeypatch):
    import requests

    calls = []

    def fake_get(url, timeout=None):
        calls.append(url)
        return FakeResponse(b"aardvark\r\nApple\r\nbee\r\n\r\nzebra\r\nco-op\r\n")

    monkeypatch.setattr(requests, "get", fake_get)
    words = load_words(offline=False)
    assert words == ["aardvark", "bee", "zebra"]
    assert calls == ["https://raw.githubusercontent.com/dwyl/english-words/master/words_alpha.txt"]
    assert sorted(p.name for p in base_dir.iterdir()) == [WORD_LIST_FILE]  # no temp file left
    # the second time the file on disk is used
    monkeypatch.setattr(requests, "get", lambda *a, **k: pytest.fail("downloaded twice"))
    assert SpellingBee(size=5, offline=False).words == words
    monkeypatch.setattr(requests, "get", lambda *a, **k: FakeResponse(b"", status=503))
    (base_dir / WORD_LIST_FILE).unlink()
    with pytest.raises(RuntimeError, match="word list"):
        load_words(offline=False)
    assert not (base_dir / WORD_LIST_FILE).exists()


def test_offline_words_are_synthetic(offline):
    assert load_words() == list(WORDS)
    assert SpellingBee(size=3, words=["abc"])[0]["messages"][1]["content"][1]["text"].startswith("'abc'.count(")

# -----------------------------------------------------------------------------
# CustomJSON


def _write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


GOOD = json.dumps([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}])


@pytest.mark.parametrize("bad_line,reason", [
    ('[{"role": "user", "content": "hi"}', "invalid JSON"),
    ('[{"role": "assistant", "content": "hi"}, {"role": "user", "content": "x"}]', "role"),
    ('[{"role": "user", "content": "hi"}, {"role": "user", "content": "x"}]', "role"),
    ('[{"role": "user", "content": "hi"}]', "end with an assistant"),
    ('[{"role": "user", "content": "hi"}, {"role": "assistant", "content": 5}]', "string"),
    ('[{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}]', "empty"),
    ('{"conversation": []}', "messages"),
    ('"just a string"', "list"),
    ('[{"role": "user", "content": "hi"}, {"role": "assistant", "content": [{"type": "text", "text": "x"}]}]', "string"),
])
def test_customjson_rejects_broken_lines_with_their_number(tmp_path, bad_line, reason):
    path = _write_lines(tmp_path / "chats.jsonl", [GOOD, GOOD, bad_line, GOOD])
    with pytest.raises(ValueError, match=reason) as info:
        CustomJSON(path)
    assert str(path) in str(info.value) and "line 3" in str(info.value)


def test_customjson_loads_lists_and_objects(tmp_path, tiny_tokenizer):
    obj = json.dumps({"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "2+2?"},
                                   {"role": "assistant", "content": "4"}]})
    path = _write_lines(tmp_path / "chats.jsonl", [GOOD, "", obj])
    task = CustomJSON(str(path))
    assert len(task) == 2
    assert task[0]["messages"][1]["content"] == "hello" and task[1]["messages"][0]["role"] == "system"
    for ex in task:
        tiny_tokenizer.render_conversation(ex)
    task[0]["messages"][0]["content"] = "changed"  # examples are copies
    assert task[0]["messages"][0]["content"] == "hi"
    with pytest.raises(FileNotFoundError):
        CustomJSON(tmp_path / "missing.jsonl")
    with pytest.raises(ValueError, match="no conversations"):
        CustomJSON(_write_lines(tmp_path / "empty.jsonl", [""]))


def test_identity_conversations_round_trip(tmp_path, tiny_tokenizer):
    path = write_identity_conversations(tmp_path / "identity.jsonl", n=60)
    text = Path(path).read_text()
    lines = text.splitlines()
    assert len(lines) == 60
    again = write_identity_conversations(tmp_path / "again.jsonl", n=60)
    assert Path(again).read_text() == text  # deterministic
    task = CustomJSON(path)
    assert len(task) == 60
    assert [ex["messages"] for ex in task] == [json.loads(line) for line in lines]
    text = " ".join(m["content"] for ex in task for m in ex["messages"])
    assert "nanochat" in text and "small" in text
    for ex in task:
        validate_messages(ex["messages"])
        tiny_tokenizer.render_conversation(ex)
    assert len({json.dumps(ex["messages"]) for ex in task}) > 40  # varied


def test_get_identity_conversations_offline_and_online(base_dir, monkeypatch):
    import requests

    monkeypatch.setattr(requests, "get", lambda *a, **k: pytest.fail("network used offline"))
    path = get_identity_conversations(offline=True)
    assert path == str(base_dir / IDENTITY_TWIN_FILE) and len(CustomJSON(path)) > 0
    monkeypatch.setattr(requests, "get", lambda url, timeout=None: FakeResponse((GOOD + "\n").encode()))
    online = get_identity_conversations(offline=False)
    assert online != path and len(CustomJSON(online)) == 1


def test_download_identity_conversations_errors_clearly(tmp_path, monkeypatch):
    import requests

    def refuse(url, timeout=None):
        raise requests.ConnectionError("no route to host")

    monkeypatch.setattr(requests, "get", refuse)
    target = tmp_path / "identity.jsonl"
    with pytest.raises(RuntimeError, match="identity conversations.*no route to host"):
        download_identity_conversations(target)
    assert not target.exists() and list(tmp_path.iterdir()) == []
