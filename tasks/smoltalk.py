"""
SmolTalk: general chat conversations.
Hub: HuggingFaceTB/smol-smoltalk, splits train and test; column `messages`, a list of
{"role", "content"}: an optional system message, then user and assistant alternating.

Offline twin: multi-turn chats generated from nanochat/synthetic.py's material (greetings,
training-side questions on the fact tables, short stories, spelling, arithmetic in words,
tiny functions to complete as HumanEval asks them), 5000 train and 500 test, each
conversation from its own seeded RNG. Rows from the hub or data_files= are shuffled with
seed 42, as nanochat does, so `stop=N` takes a random subset.
"""

from __future__ import annotations

import random

from nanochat import synthetic as syn
from tasks.common import GeneratedRows, Task, load_rows, validate_messages

SPLITS = ("train", "test")
TWIN_SIZES = {"train": 5000, "test": 500}

# -----------------------------------------------------------------------------
# Offline twin: each exchange is a (user, assistant) pair

_SYSTEM_PROMPTS = ["You are a helpful assistant.", "You are a friendly assistant. Keep your answers short.",
                   "You are nanochat, a small and helpful language model."]


def _greeting(rng):
    hello = rng.choice(["Hi!", "Hello!", "Hey there.", "Good morning!", "Hi, how are you?", "Hello, anyone there?"])
    reply = rng.choice(["Hello! How can I help you today?", "Hi! What would you like to talk about?",
                        "Hello! I am here and happy to help. What can I do for you?"])
    return hello, reply


def _thanks(rng):
    return (rng.choice(["Thanks!", "Thank you.", "Great, thanks a lot!", "That helps, thank you."]),
            rng.choice(["You're welcome!", "Happy to help!", "Any time. Let me know if you have another question."]))


def _fact(rng):
    question = rng.choice(syn.ALL_KINDS)(rng)
    return question.text, question.statement


def _story(rng):
    ask = rng.choice(["Can you tell me a short story?", "Tell me a story, please.",
                      "Write a very short story for a child.", "I'd like to hear a little story."])
    return ask, syn.make_story(rng)


def _spell(rng):
    word = rng.choice(syn.WORDS)
    ask = rng.choice([f"How do you spell {word}?", f"Can you spell the word {word}?", f"Spell {word} for me."])
    return ask, f"The word {word} is spelled {'-'.join(word)}. It has {syn.plural(len(word), 'letter', 'letters')}."


def _arithmetic(rng):
    a, b = rng.randint(0, 12), rng.randint(0, 12)
    if rng.random() < 0.5:
        op_word, symbol, value = "plus", "+", a + b
    elif a >= b:
        op_word, symbol, value = "minus", "-", a - b
    else:
        op_word, symbol, value = "times", "*", a * b
    words = [syn.number_to_words(x) for x in (a, b, value)]
    ask = rng.choice([f"What is {words[0]} {op_word} {words[1]}?", f"How much is {a} {op_word} {b}?"])
    return ask, f"{words[0].capitalize()} {op_word} {words[1]} is {words[2]} ({a} {symbol} {b} = {value})."


def _code(rng):
    """A function stub as HumanEval gives it; the reply is the body that completes it."""
    problem = syn.make_code_problem(rng, held_out=False)
    return problem.prompt, problem.solution


_TOPICS = [_fact, _fact, _story, _spell, _arithmetic, _code]


def _twin_row(rng: random.Random, i: int) -> dict:
    messages: list[dict] = []
    if rng.random() < 0.2:
        messages.append({"role": "system", "content": rng.choice(_SYSTEM_PROMPTS)})
    exchanges = []
    if rng.random() < 0.3:
        exchanges.append(_greeting(rng))
    for _ in range(rng.randint(1, 3)):
        # only training-side questions: no held-out question of any twin is ever asked here
        exchanges.append(syn.draw(rng, lambda r: r.choice(_TOPICS)(r), False, lambda exchange: exchange[0]))
    if rng.random() < 0.3:
        exchanges.append(_thanks(rng))
    for user, assistant in exchanges:
        messages.append({"role": "user", "content": user})
        messages.append({"role": "assistant", "content": assistant})
    return {"messages": messages}


def smoltalk_twin(split: str) -> GeneratedRows:
    return GeneratedRows(f"smoltalk-twin-{split}", TWIN_SIZES[split], _twin_row)

# -----------------------------------------------------------------------------
# Task


class SmolTalk(Task):
    def __init__(self, split: str = "train", data_files=None, offline: bool | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        if split not in SPLITS:
            raise ValueError(f"SmolTalk split must be one of {SPLITS}, not {split!r}")
        self.split = split
        self.ds = load_rows("HuggingFaceTB/smol-smoltalk", None, split, data_files, offline, lambda: smoltalk_twin(split))

    def num_examples(self) -> int:
        return len(self.ds)

    def get_example(self, index: int) -> dict:
        # validated on access: checking all ~460k hub rows up front would slow every start-up
        messages = self.ds[index]["messages"]
        try:
            validate_messages(messages)
        except ValueError as e:
            raise ValueError(f"SmolTalk {self.split} row {index}: {e}") from None
        return {"messages": [{"role": m["role"], "content": m["content"]} for m in messages]}
