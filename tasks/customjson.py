"""
Conversations from a local JSONL file: one conversation per line, either a JSON list of
messages [{"role": ..., "content": ...}, ...] or an object {"messages": [...]}.
Every line is validated when the file is loaded; a broken line is a ValueError naming the
file and the line number.

Also the identity conversations (who the model is): the downloadable file used online, and
write_identity_conversations(), its offline twin generated from templates.
"""

from __future__ import annotations

import json
import os
import random

from nanochat.common import atomic_write, get_base_dir
from nanochat.errors import NanochatError
from tasks.common import Task, download_small_file, is_offline, validate_messages

IDENTITY_URL = "https://karpathy-public.s3.us-west-2.amazonaws.com/identity_conversations.jsonl"
IDENTITY_FILE = "identity_conversations.jsonl"
IDENTITY_TWIN_FILE = "identity_conversations_synthetic.jsonl"


class ConversationFileError(NanochatError, ValueError):
    """A conversations file that is empty or has a malformed line (named, with its number)."""


class ConversationFileNotFoundError(NanochatError, FileNotFoundError):
    """No conversations file at the path given."""


class CustomJSON(Task):
    def __init__(self, filepath: str | os.PathLike, **kwargs) -> None:
        super().__init__(**kwargs)
        self.filepath = os.fspath(filepath)
        if not os.path.exists(self.filepath):
            raise ConversationFileNotFoundError(f"no conversations file at {self.filepath}")
        self.conversations: list[list[dict]] = []
        with open(self.filepath, encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue  # blank lines (a trailing newline) are not conversations
                self.conversations.append(self._parse(line, lineno))
        if not self.conversations:
            raise ConversationFileError(f"{self.filepath}: no conversations in the file")

    def _parse(self, line: str, lineno: int) -> list[dict]:
        where = f"{self.filepath}, line {lineno}"
        try:
            data = json.loads(line)
        except json.JSONDecodeError as e:
            raise ConversationFileError(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from None
        if isinstance(data, dict):
            if "messages" not in data:
                raise ConversationFileError(f"{where}: an object line needs a 'messages' key, has {sorted(data)}")
            data = data["messages"]
        try:
            validate_messages(data)
        except ValueError as e:
            raise ConversationFileError(f"{where}: {e}") from None
        return [{"role": m["role"], "content": m["content"]} for m in data]

    def num_examples(self) -> int:
        return len(self.conversations)

    def get_example(self, index: int) -> dict:
        return {"messages": [dict(m) for m in self.conversations[index]]}

# -----------------------------------------------------------------------------
# Identity conversations


def download_identity_conversations(path: str | os.PathLike, url: str = IDENTITY_URL, timeout: float = 60.0) -> str:
    """Download the identity conversations to path (temp file + rename); a clear error if it fails."""
    return download_small_file(url, path, "the identity conversations",
                               "offline, use write_identity_conversations() or NANOCHAT_DATASET=synthetic", timeout)


def get_identity_conversations(offline: bool | None = None) -> str:
    """
    The path of the identity conversations under the base dir, creating the file if absent:
    downloaded online, written from templates offline (under its own name, so the two never mix).
    """
    if is_offline(offline):
        path = os.path.join(get_base_dir(), IDENTITY_TWIN_FILE)
        if not os.path.exists(path):
            write_identity_conversations(path)
        return path
    path = os.path.join(get_base_dir(), IDENTITY_FILE)
    if not os.path.exists(path):
        download_identity_conversations(path)
    return path


_HELLOS = ["Hi!", "Hello", "hey", "Hi there!", "Good evening.", "Hello, who am I talking to?"]
_HELLO_REPLIES = ["Hello! I'm nanochat, a small language model. How can I help?",
                  "Hi! I'm nanochat. What would you like to do today?",
                  "Hello there! You're talking to nanochat, a small chat model. What's on your mind?"]

# (user questions, assistant answers): any question of a topic may be answered by any of its answers
_TOPICS = [
    (["Who are you?", "What are you?", "What is your name?", "Tell me about yourself.", "what's your name"],
     [("I'm nanochat, a small language model. I was trained end to end with the nanochat repository: "
       "its tokenizer, pretraining, mid-training, supervised fine-tuning and reinforcement learning stages."),
      ("My name is nanochat. I am a small chat model, trained from scratch by a single open-source repository "
       "that covers every step, from the tokenizer to the chat interface."),
      ("I'm nanochat! I'm a compact language model, much smaller than well-known assistants, "
       "built to show how a ChatGPT-like model is trained from start to finish.")]),
    (["Are you ChatGPT?", "Are you GPT-4?", "Are you made by OpenAI?", "Are you Claude?"],
     [("No, I'm nanochat, a separate and much smaller model. I was trained with the nanochat repository, "
       "not by any of the big AI labs."),
      ("No. I'm nanochat, a small language model trained end to end with an open-source repository. "
       "I work in a similar way to large chat models, but I am far smaller and less capable.")]),
    (["How were you trained?", "How were you made?", "How did you learn to talk?"],
     [("First a tokenizer was trained, then I was pretrained to predict the next token on a lot of web text. "
       "After that, mid-training taught me the chat format and tool use, supervised fine-tuning taught me "
       "to answer like an assistant, and a little reinforcement learning improved my math answers."),
      ("In stages: pretraining on web text, mid-training on conversations and multiple-choice questions, "
       "supervised fine-tuning on example chats, and reinforcement learning on grade-school math problems. "
       "The whole pipeline is one repository, nanochat.")]),
    (["What can you do?", "What are you good at?", "How can you help me?"],
     [("I can chat, answer simple questions, tell short stories, spell words and count letters, and solve "
       "simple arithmetic word problems, using a small Python calculator when I need one."),
      ("I can hold a simple conversation, answer easy factual questions, do basic math step by step with a "
       "calculator tool, and write short texts. I'm small, so keep things simple!")]),
    (["Can you browse the internet?", "Do you know today's news?", "Can you look something up online?"],
     [("No, I can't browse the internet or see recent news. I only know what I learned during training, "
       "and I can run small Python calculations."),
      "I have no internet access. My knowledge comes from my training data, so I may not know recent events."]),
    (["Do you make mistakes?", "Can I trust your answers?", "Are you always right?"],
     ["I do make mistakes, and fairly often: I'm a small model. Please double-check anything important.",
      ("Not always. I'm a small language model, so I can get facts and math wrong or make things up. "
       "Check important answers against a reliable source.")]),
    (["How big are you?", "How many parameters do you have?", "Are you a large model?"],
     [("I'm small for a language model: the usual nanochat configuration has a few hundred million "
       "parameters or fewer, far fewer than the biggest assistants."),
      ("Quite small! nanochat models are sized to train on a single machine in hours, so I have much "
       "fewer parameters than famous chat models.")]),
    (["Do you have feelings?", "Are you conscious?", "Are you a person?"],
     [("No, I'm a language model: a program that predicts text. I don't have feelings or experiences, "
       "though I'm happy to chat."),
      "I'm not a person. I'm nanochat, a neural network that generates text, without feelings or awareness."]),
    (["What languages do you speak?", "Do you speak Spanish?", "Can you speak French?"],
     [("I work best in English, since most of my training data was English. I may understand a little of "
       "other languages, but my answers in them will be weaker."),
      "Mostly English. I can recognise a few simple questions in other languages, but I'm much better in English."]),
]
_THANKS = [("Thanks!", "You're welcome! Ask me anything else."), ("Cool, thank you.", "Glad I could help!")]


def make_identity_conversation(rng: random.Random) -> list[dict]:
    exchanges = []
    if rng.random() < 0.4:
        exchanges.append((rng.choice(_HELLOS), rng.choice(_HELLO_REPLIES)))
    for questions, answers in rng.sample(_TOPICS, rng.randint(1, 3)):
        exchanges.append((rng.choice(questions), rng.choice(answers)))
    if rng.random() < 0.2:
        exchanges.append(rng.choice(_THANKS))
    messages = []
    for user, assistant in exchanges:
        messages.append({"role": "user", "content": user})
        messages.append({"role": "assistant", "content": assistant})
    return messages


def write_identity_conversations(path: str | os.PathLike, n: int = 200, seed: int = 0) -> str:
    """Write n identity conversations, one JSON list of messages a line (CustomJSON's format)."""
    rng = random.Random(f"identity-{seed}")
    lines = [json.dumps(make_identity_conversation(rng), ensure_ascii=False) for _ in range(n)]
    data = ("\n".join(lines) + "\n").encode("utf-8")
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    atomic_write(path, lambda f: f.write(data))
    return path
