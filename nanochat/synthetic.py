"""
The offline twins' material: synthetic text in FineWeb-Edu's parquet layout, and the
generators every offline task draws from (facts and the questions about them, arithmetic
word problems, spelling drills, tiny Python functions, stories).

With no network (tests, CI, the CPU demo) the pipeline still needs data that a tiny model
can visibly learn from in minutes, and on which each stage's effect shows. So the text is
templated and regular, yet varied enough in names, numbers and phrasing that it cannot just
be memorized; and every held-out question is one that no training text contains:

- the facts (colours, animals, capitals, calendar, words) are stated in the pretraining
  text in several ways, so the multiple-choice twins (ARC, MMLU) and the CORE twin can ask
  about them;
- a question belongs to the held-out side or the training side by a hash of its words
  (`is_held_out`), never by chance: the pretraining text, SmolTalk and every train split
  only ever use training-side questions, every test split only held-out ones.

The generators are plain functions of a `random.Random`, so tasks can draw fresh examples
from the same distribution.

Usage: python -m nanochat.synthetic --data_dir=DIR -n 8
"""

from __future__ import annotations

import argparse
import hashlib
import operator
import os
import random
import re
import string
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import NamedTuple, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from nanochat.common import atomic_write

T = TypeVar("T")

# -----------------------------------------------------------------------------
# Held-out questions: decided by the question's words, so no training text can hold one

HELD_OUT_PERCENT = 20


def question_key(text: str) -> str:
    """The words of a text, lowercased and single-spaced: quoting, case and punctuation do not make a new question."""
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


def is_held_out(question: str) -> bool:
    """Whether a question is reserved for evaluation: a stable hash of its key (not Python's salted hash())."""
    digest = hashlib.sha256(question_key(question).encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") % 100 < HELD_OUT_PERCENT


def draw(rng: random.Random, make: Callable[[random.Random], T], held_out: bool,
         question: Callable[[T], str]) -> T:
    """make(rng) again and again until the item's question is on the asked side (held out or training)."""
    for _ in range(10_000):
        item = make(rng)
        if is_held_out(question(item)) == held_out:
            return item
    raise RuntimeError(f"{make.__name__} made no {'held-out' if held_out else 'training'} question in 10,000 tries")

# -----------------------------------------------------------------------------
# Vocabulary: written into the module so nothing has to be downloaded

WORDS: list[str] = """
able about above across act add after again age ago agree air all almost alone along
also always among angle animal answer apple april arm army around arrive art ask
autumn baby back bad bag ball banana band bank basket bath beach bear beautiful bed
bee before begin behind bell below best better between bird birthday black blanket
blue boat body bone book bottle bottom box boy bread break bridge bright bring brother
brown build busy butter button cake call camera candle candy captain card care carpet
carrot carry castle cat catch chair chalk change cheese cherry chicken child circle
city class clean clock close cloud coat coffee cold color come cookie corner cotton
count country cousin cover cow crayon cream cup dance danger dark daughter day deep
desert dinner doctor dog dollar door down dragon draw dream dress drink drum duck
early earth east easy egg elephant empty engine enough evening every face fair family
farm father feather fence field finger fire fish flag floor flower fly follow food
foot forest fork friend frog fruit full funny garden gate giraffe girl glass glove
gold good grape grass green ground group grow guitar hair hammer hand happy hat heart
heavy hello help hill history holiday honey horse hospital hour house hundred ice idea
island jacket jelly journey juice jump kettle key king kitchen kite kitten ladder lake
lamp language large laugh leaf lemon letter library light lion listen little lunch
machine magic mango market marble meadow milk minute mirror money monkey month moon
morning mother mountain mouse music nature needle nest night noise north number ocean
orange paint paper parent park party pencil people pepper picture piano pillow planet
plant pocket potato purple puzzle queen question rabbit rain rainbow reason river road
rocket room rope salad school science season shadow sheep shell ship shoe silver
sister sleep snake snow soccer sock soup south spider spoon spring square star
station stone story strawberry street summer sun sweater table teacher thunder ticket
tiger tomato tooth towel tower town train travel tree turtle umbrella uncle valley
vegetable village violin voice wagon water weather window winter wizard wolf wonder
world yellow yesterday zebra
""".split()

FEMALE_NAMES = ["Mia", "Lily", "Emma", "Anna", "Sara", "Zoe", "Ava", "Nora", "Ella", "Grace",
                "Ruby", "Chloe", "Maya", "Lucy", "Hannah", "Olivia", "Sofia", "Amy", "Julia", "Rose"]
MALE_NAMES = ["Tom", "Sam", "Ben", "Jack", "Leo", "Max", "Noah", "Liam", "Owen", "Finn",
              "Luke", "Ryan", "Adam", "Eli", "Omar", "Hugo", "Kai", "Theo", "Jake", "Dan"]


class Person(NamedTuple):
    name: str
    he: str   # subject pronoun
    him: str  # object pronoun
    his: str  # possessive


def make_person(rng: random.Random, avoid: str | None = None) -> Person:
    """A random named person with matching pronouns, so every template stays grammatical."""
    while True:
        if rng.random() < 0.5:
            person = Person(rng.choice(FEMALE_NAMES), "she", "her", "her")
        else:
            person = Person(rng.choice(MALE_NAMES), "he", "him", "his")
        if person.name != avoid:
            return person


def two_people(rng: random.Random) -> tuple[Person, Person]:
    """Two people with different names, so 'he met him' is never ambiguous about who is who."""
    a = make_person(rng)
    return a, make_person(rng, avoid=a.name)


def article(word: str) -> str:
    """'a dog' but 'an owl'."""
    return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"


def plural(n: int, singular: str, plural_form: str) -> str:
    """'1 apple' but '3 apples': stories quote counts, and a wrong plural is a visible error."""
    return f"{n} {singular if n == 1 else plural_form}"


def number_to_words(n: int) -> str:
    """English words for 0 <= n < 1000 (e.g. 347 -> 'three hundred forty-seven')."""
    ones = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
            "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
            "eighteen", "nineteen"]
    tens = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
    assert 0 <= n < 1000, n
    if n < 20:
        return ones[n]
    if n < 100:
        return tens[n // 10] + ("" if n % 10 == 0 else "-" + ones[n % 10])
    rest = n % 100
    return ones[n // 100] + " hundred" + ("" if rest == 0 else " " + number_to_words(rest))

# -----------------------------------------------------------------------------
# Facts: stated in the pretraining text, asked about by the multiple-choice twins

COLORS = [("the sky", "blue"), ("grass", "green"), ("snow", "white"), ("a banana", "yellow"),
          ("a ripe tomato", "red"), ("coal", "black"), ("an orange", "orange"), ("a lemon", "yellow"),
          ("milk", "white"), ("a strawberry", "red"), ("a carrot", "orange"), ("chocolate", "brown"),
          ("a frog", "green"), ("a crow", "black"), ("a lime", "green"), ("a plum", "purple"),
          ("the sea", "blue"), ("a pumpkin", "orange"), ("a cherry", "red"), ("a polar bear", "white")]
ALL_COLORS = sorted({color for _, color in COLORS} | {"pink", "grey"})
SOUNDS = [("dog", "woof"), ("cat", "meow"), ("cow", "moo"), ("duck", "quack"), ("sheep", "baa"),
          ("pig", "oink"), ("horse", "neigh"), ("owl", "hoot"), ("lion", "roar"), ("bee", "buzz"),
          ("frog", "ribbit"), ("mouse", "squeak"), ("snake", "hiss"), ("rooster", "cock-a-doodle-doo")]
LEGS = [("spider", 8), ("ant", 6), ("bee", 6), ("dog", 4), ("cat", 4), ("horse", 4), ("bird", 2),
        ("chicken", 2), ("duck", 2), ("cow", 4), ("beetle", 6), ("snake", 0), ("fish", 0)]
BABIES = [("cat", "kitten"), ("dog", "puppy"), ("cow", "calf"), ("sheep", "lamb"), ("horse", "foal"),
          ("duck", "duckling"), ("frog", "tadpole"), ("bear", "cub"), ("goat", "kid"), ("pig", "piglet"),
          ("chicken", "chick"), ("kangaroo", "joey"), ("owl", "owlet"), ("swan", "cygnet")]
HOMES = [("bee", "hive"), ("bird", "nest"), ("spider", "web"), ("rabbit", "burrow"), ("bear", "den"),
         ("horse", "stable"), ("pig", "sty"), ("dog", "kennel"), ("ant", "anthill"), ("fish", "pond"),
         ("cow", "barn"), ("chicken", "coop")]
SENSES = [("see", "eyes"), ("hear", "ears"), ("smell", "nose"), ("taste", "tongue"), ("touch", "fingers")]
CAPITALS = [("France", "Paris"), ("Spain", "Madrid"), ("Italy", "Rome"), ("Germany", "Berlin"),
            ("Japan", "Tokyo"), ("Egypt", "Cairo"), ("Canada", "Ottawa"), ("Kenya", "Nairobi"),
            ("Peru", "Lima"), ("Norway", "Oslo"), ("Greece", "Athens"), ("Brazil", "Brasilia"),
            ("China", "Beijing"), ("India", "New Delhi"), ("Mexico", "Mexico City"), ("Australia", "Canberra"),
            ("Portugal", "Lisbon"), ("Ireland", "Dublin"), ("Poland", "Warsaw"), ("Sweden", "Stockholm"),
            ("Austria", "Vienna"), ("Chile", "Santiago"), ("Cuba", "Havana"), ("Thailand", "Bangkok"),
            ("Argentina", "Buenos Aires"), ("Nigeria", "Abuja"), ("Vietnam", "Hanoi"), ("New Zealand", "Wellington"),
            ("Ghana", "Accra"), ("Colombia", "Bogota")]
CONTINENTS = {"France": "Europe", "Spain": "Europe", "Italy": "Europe", "Germany": "Europe", "Japan": "Asia",
              "Egypt": "Africa", "Canada": "North America", "Kenya": "Africa", "Peru": "South America",
              "Norway": "Europe", "Greece": "Europe", "Brazil": "South America", "China": "Asia", "India": "Asia",
              "Mexico": "North America", "Australia": "Oceania", "Portugal": "Europe", "Ireland": "Europe",
              "Poland": "Europe", "Sweden": "Europe", "Austria": "Europe", "Chile": "South America",
              "Cuba": "North America", "Thailand": "Asia", "Argentina": "South America", "Nigeria": "Africa",
              "Vietnam": "Asia", "New Zealand": "Oceania", "Ghana": "Africa", "Colombia": "South America"}
OPPOSITES = [("hot", "cold"), ("big", "small"), ("up", "down"), ("fast", "slow"), ("happy", "sad"),
             ("day", "night"), ("open", "closed"), ("wet", "dry"), ("old", "young"), ("light", "dark"),
             ("full", "empty"), ("early", "late"), ("loud", "quiet"), ("hard", "soft"), ("high", "low")]
# words whose opposites blur into each other: never offered as a wrong answer to one another
_CONFUSABLE = [{"up", "down", "high", "low"}, {"day", "night", "light", "dark"}, {"old", "young"}]
PLURALS = [("mouse", "mice"), ("child", "children"), ("foot", "feet"), ("tooth", "teeth"), ("goose", "geese"),
           ("man", "men"), ("woman", "women"), ("person", "people"), ("box", "boxes"), ("baby", "babies"),
           ("knife", "knives"), ("leaf", "leaves"), ("wolf", "wolves"), ("city", "cities"), ("bus", "buses"),
           ("glass", "glasses")]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December"]
ORDINALS = ["first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth",
            "tenth", "eleventh", "twelfth"]


def _cap(text: str) -> str:
    """Capitalize the first letter only ('the sky' -> 'The sky', 'New Delhi' stays)."""
    return text[0].upper() + text[1:]


def _legs(n: int) -> str:
    return "no legs" if n == 0 else plural(n, "leg", "legs")


class Question(NamedTuple):
    """A question about one fact: its answer, wrong answers to offer beside it, and the fact as a sentence."""
    text: str
    answer: str
    pool: list[str]  # candidate wrong answers (any that equal the answer are skipped)
    subject: str  # MMLU-style subject
    statement: str


def _q_color(rng: random.Random) -> Question:
    thing, color = rng.choice(COLORS)
    text = rng.choice(["What color is {t}?", "Which color is {t}?", "What is the color of {t}?",
                       "Which color best describes {t}?"]).format(t=thing)
    return Question(text, color, ALL_COLORS, "science", f"{_cap(thing)} is {color}.")


def _q_sound(rng: random.Random) -> Question:
    animal, sound = rng.choice(SOUNDS)
    text = rng.choice(["What sound does {a} make?", "What does {a} say?", "Which sound does {a} make?",
                       "What noise does {a} make?"]).format(a=article(animal))
    return Question(text, sound, [s for _, s in SOUNDS], "science", f"{_cap(article(animal))} says {sound}.")


def _q_legs(rng: random.Random) -> Question:
    animal, legs = rng.choice(LEGS)
    text = rng.choice(["How many legs does {a} have?", "How many legs has {a} got?",
                       "What is the number of legs of {a}?"]).format(a=article(animal))
    return Question(text, str(legs), ["0", "2", "4", "6", "8"], "science", f"{_cap(article(animal))} has {_legs(legs)}.")


def _q_baby(rng: random.Random) -> Question:
    animal, baby = rng.choice(BABIES)
    text = rng.choice(["What is a baby {a} called?", "What do we call a young {a}?",
                       "What is the name for a baby {a}?"]).format(a=animal)
    return Question(text, baby, [b for _, b in BABIES], "science", f"A baby {animal} is called {article(baby)}.")


def _q_home(rng: random.Random) -> Question:
    animal, home = rng.choice(HOMES)
    text = rng.choice(["Where does {a} live?", "What is the home of {a} called?",
                       "In what kind of home does {a} live?"]).format(a=article(animal))
    return Question(text, home, [h for _, h in HOMES], "science", f"{_cap(article(animal))} lives in {article(home)}.")


def _q_sense(rng: random.Random) -> Question:
    verb, part = rng.choice(SENSES)
    text = rng.choice(["Which body part do you use to {v}?", "What do you {v} with?",
                       "Which part of the body helps you {v}?"]).format(v=verb)
    return Question(text, part, [p for _, p in SENSES], "science", f"We {verb} with our {part}.")


def _q_animal_for_sound(rng: random.Random) -> Question:
    animal, sound = rng.choice(SOUNDS)
    text = rng.choice(["Which animal says {s}?", "Which animal makes the sound {s}?",
                       "Which animal goes {s}?"]).format(s=sound)
    return Question(text, animal, [a for a, _ in SOUNDS], "science", f"{_cap(article(animal))} says {sound}.")


def _q_animal_for_baby(rng: random.Random) -> Question:
    animal, baby = rng.choice(BABIES)
    text = rng.choice(["{B} is the baby of which animal?", "Which animal has a baby called {b}?",
                       "A young animal called {b} grows up to be what?"]).format(B=_cap(article(baby)), b=article(baby))
    return Question(text, animal, [a for a, _ in BABIES], "science", f"A baby {animal} is called {article(baby)}.")


def _q_animal_for_home(rng: random.Random) -> Question:
    animal, home = rng.choice(HOMES)
    text = rng.choice(["Which animal lives in {h}?", "{H} is the home of which animal?",
                       "Which animal has {h} as its home?"]).format(H=_cap(article(home)), h=article(home))
    return Question(text, animal, [a for a, _ in HOMES if a != animal], "science",
                    f"{_cap(article(animal))} lives in {article(home)}.")


def _q_thing_for_color(rng: random.Random) -> Question:
    thing, color = rng.choice(COLORS)
    text = rng.choice(["Which of these is {c}?", "Which of these things is {c}?",
                       "Which one of these is usually {c}?"]).format(c=color)
    return Question(text, thing, [t for t, c in COLORS if c != color], "science", f"{_cap(thing)} is {color}.")


def _q_capital(rng: random.Random) -> Question:
    country, capital = rng.choice(CAPITALS)
    text = rng.choice(["What is the capital of {c}?", "Which city is the capital of {c}?",
                       "What is the capital city of {c}?", "Name the capital of {c}."]).format(c=country)
    return Question(text, capital, [c for _, c in CAPITALS], "high_school_geography",
                    f"The capital of {country} is {capital}.")


def _q_country_for_capital(rng: random.Random) -> Question:
    country, capital = rng.choice(CAPITALS)
    text = rng.choice(["{c} is the capital of which country?", "Which country has {c} as its capital?",
                       "Of which country is {c} the capital?"]).format(c=capital)
    return Question(text, country, [c for c, _ in CAPITALS], "high_school_geography",
                    f"{capital} is the capital of {country}.")


def _q_continent(rng: random.Random) -> Question:
    country, continent = rng.choice(sorted(CONTINENTS.items()))
    text = rng.choice(["On which continent is {c}?", "{c} is on which continent?",
                       "Which continent is {c} in?"]).format(c=country)
    return Question(text, continent, sorted(set(CONTINENTS.values())), "high_school_geography",
                    f"{country} is in {continent}.")


def _q_day(rng: random.Random) -> Question:
    i, after = rng.randrange(7), rng.random() < 0.5
    word, answer = ("after", DAYS[(i + 1) % 7]) if after else ("before", DAYS[(i - 1) % 7])
    text = rng.choice(["Which day comes {w} {d}?", "What day comes {w} {d}?",
                       "What is the day {w} {d}?"]).format(w=word, d=DAYS[i])
    return Question(text, answer, [d for d in DAYS if d != DAYS[i]], "miscellaneous",
                    f"The day {word} {DAYS[i]} is {answer}.")


def _q_month(rng: random.Random) -> Question:
    i, kind = rng.randrange(12), rng.randrange(3)
    if kind == 2:
        text = rng.choice(["Which month is the {o} month of the year?", "What is the {o} month of the year?"])
        return Question(text.format(o=ORDINALS[i]), MONTHS[i], MONTHS, "miscellaneous",
                        f"{MONTHS[i]} is the {ORDINALS[i]} month of the year.")
    word, answer = ("after", MONTHS[(i + 1) % 12]) if kind == 0 else ("before", MONTHS[(i - 1) % 12])
    text = rng.choice(["Which month comes {w} {m}?", "What month comes {w} {m}?",
                       "What is the month {w} {m}?"]).format(w=word, m=MONTHS[i])
    return Question(text, answer, [m for m in MONTHS if m != MONTHS[i]], "miscellaneous",
                    f"The month {word} {MONTHS[i]} is {answer}.")


def _q_opposite(rng: random.Random) -> Question:
    a, b = rng.choice(OPPOSITES)
    if rng.random() < 0.5:
        a, b = b, a
    blocked = set().union(*(group for group in _CONFUSABLE if a in group or b in group))
    pool = [w for pair in OPPOSITES for w in pair if w not in blocked and w != a]
    text = rng.choice(["What is the opposite of {a}?", "Which word means the opposite of {a}?",
                       "What word is the opposite of {a}?"]).format(a=a)
    return Question(text, b, pool, "miscellaneous", f"The opposite of {a} is {b}.")


def _q_plural(rng: random.Random) -> Question:
    word, plural_form = rng.choice(PLURALS)
    text = rng.choice(["What is the plural of {w}?", "Which word is the plural of {w}?",
                       "How do you say more than one {w}?"]).format(w=word)
    pool = [word + "s", word + "es", word + "en", word.rstrip("y") + "ies"]
    return Question(text, plural_form, pool, "miscellaneous", f"The plural of {word} is {plural_form}.")


def _q_sum(rng: random.Random) -> Question:
    a, b = rng.randint(1, 6), rng.randint(1, 6)
    text = rng.choice(["What is {a} plus {b}?", "How much is {a} plus {b}?", "What do you get when you add {a} and {b}?"])
    pool = [str(a + b + d) for d in (-3, -2, -1, 1, 2, 3) if a + b + d >= 0]
    return Question(text.format(a=a, b=b), str(a + b), pool, "elementary_mathematics", f"{a} plus {b} equals {a + b}.")


# the multiple-choice twins: ARC asks about nature, MMLU about the world, the calendar, words and sums
ARC_EASY_KINDS = [_q_color, _q_sound, _q_legs, _q_baby, _q_home, _q_sense]
ARC_CHALLENGE_KINDS = [_q_animal_for_sound, _q_animal_for_baby, _q_animal_for_home, _q_thing_for_color]
MMLU_KINDS = [_q_capital, _q_country_for_capital, _q_continent, _q_day, _q_month, _q_opposite, _q_plural, _q_sum]
ALL_KINDS = ARC_EASY_KINDS + ARC_CHALLENGE_KINDS + MMLU_KINDS


def make_question(rng: random.Random, kinds: list[Callable[[random.Random], Question]], held_out: bool) -> Question:
    """A question of one of the kinds, from the held-out or the training side."""
    return draw(rng, lambda r: r.choice(kinds)(r), held_out, lambda q: q.text)


class MultipleChoice(NamedTuple):
    question: str
    choices: list[str]
    answer: int  # index of the right choice
    subject: str


def make_multiple_choice(rng: random.Random, kinds: list[Callable[[random.Random], Question]], held_out: bool,
                         num_choices: int = 4) -> MultipleChoice:
    """A question with the right answer and num_choices - 1 distinct wrong ones, in random order."""
    q = make_question(rng, kinds, held_out)
    wrong = rng.sample(sorted(set(q.pool) - {q.answer}), num_choices - 1)
    choices = wrong + [q.answer]
    rng.shuffle(choices)
    return MultipleChoice(q.text, choices, choices.index(q.answer), q.subject)


QUIZ_LETTERS = "ABCD"


def make_quiz(rng: random.Random) -> str:
    """
    A training-side multiple-choice question with its answer, as quizzes on the web print them.
    The lines up to the choices are exactly tasks.common.render_mc's, so what the base model
    learns here (find the line with the right answer, say its letter) carries over to chat.
    """
    mc = make_multiple_choice(rng, ALL_KINDS, held_out=False)
    lines = [f"Multiple Choice question: {mc.question}"]
    lines += [f"{letter}: {choice}" for letter, choice in zip(QUIZ_LETTERS, mc.choices)]
    lines += ["Answer:", QUIZ_LETTERS[mc.answer]]  # the letter alone at a line start: the same token as in chat
    return "\n".join(lines)


def make_fact(rng: random.Random) -> str:
    """One true sentence from the fact tables, or a training-side question followed by its answer."""
    if rng.random() < 0.3:
        q = make_question(rng, ALL_KINDS, held_out=False)
        return f"{q.text} {q.statement}"
    kind = rng.randrange(8)
    if kind == 0:
        thing, color = rng.choice(COLORS)
        return rng.choice([f"The color of {thing} is {color}.", f"{_cap(thing)} is {color}."])
    if kind == 1:
        animal, sound = rng.choice(SOUNDS)
        return rng.choice([f"{_cap(article(animal))} says {sound}.", f"The sound {article(animal)} makes is {sound}."])
    if kind == 2:
        animal, legs = rng.choice(LEGS)
        return f"{_cap(article(animal))} has {_legs(legs)}."
    if kind == 3:
        animal, baby = rng.choice(BABIES)
        return rng.choice([f"A baby {animal} is called {article(baby)}.", f"{_cap(article(baby))} is a young {animal}."])
    if kind == 4:
        animal, home = rng.choice(HOMES)
        return rng.choice([f"{_cap(article(animal))} lives in {article(home)}.",
                           f"The home of {article(animal)} is called {article(home)}."])
    if kind == 5:
        country, capital = rng.choice(CAPITALS)
        return rng.choice([f"The capital of {country} is {capital}.", f"{capital} is the capital of {country}.",
                           f"{capital} is a city in {country}, in {CONTINENTS[country]}."])
    if kind == 6:
        n = rng.randint(0, 999) if rng.random() < 0.5 else rng.randint(0, 100)
        return rng.choice([f"The number {n} is written as {number_to_words(n)}.",
                           f"{_cap(number_to_words(n))} is the number {n}."])
    return rng.choice(ALL_KINDS)(rng).statement  # the other tables, stated the way their questions answer

# -----------------------------------------------------------------------------
# Arithmetic word problems in GSM8K's format
#
# Each template takes 2 to 4 calculator steps, with numbers up to three digits; now and then
# a sentence with a number that does not matter is slipped in, so the model has to read which
# numbers the question is about rather than use them all, and some counts are written in words,
# which the model has to turn into digits for the calculator.

_OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.floordiv}


def _calc(*terms: int | str, money: bool = False) -> tuple[str, int]:
    """
    One worked step with a calculator annotation, e.g. ('3*4 = <<3*4=12>>12', 12).
    terms alternate numbers and operators and are folded left to right, which matches
    Python's evaluation because all operators share one precedence level and every division
    is exact; that keeps the annotation's expression evaluating to the stated result.
    """
    ops = terms[1::2]
    assert set(ops) <= {"+", "-"} or set(ops) <= {"*", "/"}, terms
    value = terms[0]
    for op, b in zip(ops, terms[2::2]):
        assert op != "/" or value % b == 0, terms
        value = _OPS[op](value, b)
    expr = "".join(str(t) for t in terms)
    dollar = "$" if money else ""
    return f"{expr} = {dollar}<<{expr}={value}>>{value}", value


_SHOP_ITEMS = [  # (singular, plural, lowest price, highest price)
    ("notebook", "notebooks", 2, 9), ("pencil", "pencils", 1, 4), ("book", "books", 5, 25),
    ("toy car", "toy cars", 3, 15), ("apple", "apples", 1, 3), ("sandwich", "sandwiches", 4, 12),
    ("ticket", "tickets", 5, 40), ("shirt", "shirts", 8, 35), ("cupcake", "cupcakes", 2, 6),
    ("ball", "balls", 3, 12), ("comic", "comics", 2, 9), ("plant", "plants", 4, 20),
]
_BIG_ITEMS = [("bike", 120, 450), ("tablet", 150, 600), ("guitar", 90, 350), ("tent", 60, 240), ("desk", 80, 300)]
_THINGS = [("cookie", "cookies"), ("sticker", "stickers"), ("marble", "marbles"), ("candy", "candies"),
           ("card", "cards"), ("apple", "apples"), ("flower", "flowers"), ("shell", "shells"),
           ("crayon", "crayons"), ("stamp", "stamps"), ("grape", "grapes"), ("balloon", "balloons")]
_VEHICLES = ["car", "train", "bus", "truck", "boat"]
_FARM = [("chicken", "chickens"), ("cow", "cows"), ("duck", "ducks"), ("horse", "horses"), ("spider", "spiders"),
         ("ant", "ants"), ("dog", "dogs"), ("beetle", "beetles")]


def _distractor(rng: random.Random, p: Person, about_p: bool, facts: str) -> str:
    """
    A sentence with a number that has nothing to do with the question (about p when the
    problem is). Some look relevant: someone else's count of the very things the question
    counts, so the model has to read whose things are asked about.
    """
    generic = [f"It is {rng.randint(2, 35)} degrees outside.", f"The shop opened {rng.randint(2, 99)} years ago.",
               f"The bus ride takes {rng.randint(5, 55)} minutes."]
    personal = [f"{p.name} has {plural(rng.randint(2, 9), 'cousin', 'cousins')}.",
                f"{p.his.capitalize()} house is {rng.randint(2, 900)} meters from the school.",
                f"{p.he.capitalize()} has {plural(rng.randint(2, 6), 'pet fish', 'pet fish')} at home."]
    if "years old" not in facts:  # an age problem states the ages that matter
        personal.append(f"{p.name} is {rng.randint(7, 60)} years old.")
    counted = [things for _, things in _THINGS if f" {things}" in facts]
    if counted:
        other = make_person(rng, avoid=p.name)
        if other.name not in facts:
            generic = generic + [f"{other.name} has {rng.randint(2, 90)} {counted[0]}."] * 2
    return rng.choice(generic + personal if about_p else generic)


def _running_total(rng, p):
    """
    A count that changes two to four times, one sentence each: the steps only come out right
    if every sentence is read, in order, which is what separates a model that follows the text
    from one that has learned a template's shape.
    """
    _, things = rng.choice(_THINGS)
    friend = make_person(rng, avoid=p.name)
    count = rng.randint(5, 60)
    facts, lines = [f"{p.name} has {count} {things}."], []
    num_steps = rng.randint(2, 4)  # calculator steps, as every template takes
    while len(lines) < num_steps:
        kind = rng.choice(["gain", "lose", "packs", "times", "share"])
        if kind == "packs" and len(lines) + 2 > num_steps:
            kind = "gain"
        if kind == "times" and count <= 150:
            k = rng.randint(2, 3)
            facts.append(rng.choice([f"Then {p.he} has {k} times as many {things} as before.",
                                     f"{p.he.capitalize()} {['doubles', 'triples'][k - 2]} {p.his} {things}."]))
            step, count = _calc(count, "*", k)
            lines.append(f"{p.he.capitalize()} then has {step} {things}.")
        elif kind == "share" and any(count % k == 0 and count // k >= 2 for k in (2, 3, 4)):
            k = rng.choice([k for k in (2, 3, 4) if count % k == 0 and count // k >= 2])
            facts.append(f"{p.he.capitalize()} splits them into {k} equal piles and keeps one pile.")
            step, count = _calc(count, "/", k)
            lines.append(f"One pile has {step} {things}.")
        elif kind == "packs":
            packs, per_pack = rng.randint(2, 6), rng.randint(3, 12)
            facts.append(f"{p.he.capitalize()} buys {packs} packs with {per_pack} {things} in each pack.")
            step1, bought = _calc(packs, "*", per_pack)
            step2, count = _calc(count, "+", bought)
            lines += [f"The packs hold {step1} {things}.", f"{p.he.capitalize()} now has {step2} {things}."]
        elif kind == "lose" and count > 3:
            n = rng.randint(1, count - 2)
            facts.append(rng.choice([f"{p.he.capitalize()} gives {n} {things} to {friend.name}.",
                                     f"{p.he.capitalize()} loses {n} {things} on the way home."]))
            step, count = _calc(count, "-", n)
            lines.append(f"{p.he.capitalize()} has {step} {things} left.")
        else:
            n = rng.randint(2, 60)
            facts.append(rng.choice([f"{friend.name} gives {p.him} {n} more {things}.",
                                     f"{p.he.capitalize()} finds {n} more {things}."]))
            step, count = _calc(count, "+", n)
            lines.append(f"{p.he.capitalize()} then has {step} {things}.")
    return facts, f"How many {things} does {p.name} have now?", lines, count


def _shopping(rng, p):
    (s1, pl1, lo1, hi1), (s2, pl2, lo2, hi2) = rng.sample(_SHOP_ITEMS, 2)
    n1, c1, n2, c2 = rng.randint(2, 12), rng.randint(lo1, hi1), rng.randint(2, 12), rng.randint(lo2, hi2)
    facts = [f"{p.name} buys {n1} {pl1} for ${c1} each and {n2} {pl2} for ${c2} each."]
    step1, t1 = _calc(n1, "*", c1, money=True)
    step2, t2 = _calc(n2, "*", c2, money=True)
    step3, total = _calc(t1, "+", t2, money=True)
    lines = [f"The {pl1} cost {step1}.", f"The {pl2} cost {step2}."]
    if total < 500 and rng.random() < 0.5:
        bill = next(b for b in (20, 50, 100, 200, 500) if b > total)
        facts.append(f"{p.he.capitalize()} pays with a ${bill} bill.")
        step4, change = _calc(bill, "-", total, money=True)
        return facts, f"How much change does {p.he} get?", lines + [f"Together they cost {step3}.",
                                                                  f"{p.he.capitalize()} gets {step4} back."], change
    return facts, f"How much money does {p.he} spend in total?", lines + [f"In total {p.he} spends {step3}."], total


def _sharing(rng, p):
    _, things = rng.choice(_THINGS)
    k, each, keep = rng.randint(2, 9), rng.randint(3, 40), rng.randint(2, 30)
    extra = rng.randint(5, 60)
    total = k * each + keep - extra
    if total < 10:
        total, extra = total + extra, 0
    facts = [f"{p.name} has {total} {things}."]
    lines = []
    if extra:
        facts.append(f"{p.his.capitalize()} aunt gives {p.him} {extra} more.")
        step, total = _calc(total, "+", extra)
        lines.append(f"{p.he.capitalize()} then has {step} {things}.")
    facts.append(f"{p.he.capitalize()} keeps {keep} for {p.him}self and shares the rest equally among {k} friends.")
    step1, rest = _calc(total, "-", keep)
    step2, share = _calc(rest, "/", k)
    lines += [f"{p.he.capitalize()} shares {step1} {things}.", f"Each friend gets {step2} {things}."]
    return facts, f"How many {things} does each friend get?", lines, share


def _ages(rng, p):
    b = make_person(rng, avoid=p.name)
    age, diff, times = rng.randint(4, 15), rng.randint(2, 30), rng.randint(2, 4)
    facts = [f"{p.name} is {age} years old.", f"{b.name} is {diff} years older than {p.name}.",
             f"Their grandfather is {times} times as old as {b.name}."]
    step1, b_age = _calc(age, "+", diff)
    step2, gf = _calc(b_age, "*", times)
    if rng.random() < 0.5:
        step3, total = _calc(age, "+", b_age, "+", gf)
        return facts, "What is the sum of their three ages?", [
            f"{b.name} is {step1} years old.", f"The grandfather is {step2} years old.",
            f"Together they are {step3} years old."], total
    years = rng.randint(2, 20)
    step3, later = _calc(gf, "+", years)
    return facts, f"How old will the grandfather be in {years} years?", [
        f"{b.name} is {step1} years old.", f"The grandfather is {step2} years old.",
        f"In {years} years he will be {step3} years old."], later


def _travel(rng, p):
    vehicle, unit = rng.choice(_VEHICLES), rng.choice(["miles", "kilometers"])
    s1, h1, s2, h2 = rng.randint(4, 24) * 5, rng.randint(2, 6), rng.randint(4, 24) * 5, rng.randint(2, 6)
    facts = [f"A {vehicle} travels at {s1} {unit} per hour for {h1} hours.",
             f"Then it travels at {s2} {unit} per hour for {h2} hours."]
    step1, d1 = _calc(s1, "*", h1)
    step2, d2 = _calc(s2, "*", h2)
    lines = [f"First it travels {step1} {unit}.", f"Then it travels {step2} {unit}."]
    if d1 != d2 and rng.random() < 0.4:
        big, small, which = (d1, d2, "first") if d1 > d2 else (d2, d1, "second")
        step3, more = _calc(big, "-", small)
        return facts, f"How many more {unit} does it travel in the {which} part than in the other?", lines + [
            f"The difference is {step3} {unit}."], more
    step3, total = _calc(d1, "+", d2)
    return facts, f"How many {unit} does it travel in total?", lines + [f"In total it travels {step3} {unit}."], total


def _collecting(rng, p):
    friend = make_person(rng, avoid=p.name)
    _, things = rng.choice(_THINGS)
    first, times = rng.randint(3, 60), rng.randint(2, 5)
    give = rng.randint(1, first * (times + 1) - 2)
    facts = [f"{p.name} collects {first} {things} on Monday and {times} times as many on Tuesday.",
             f"{p.he.capitalize()} gives {give} {things} to {friend.name}."]
    step1, second = _calc(first, "*", times)
    step2, total = _calc(first, "+", second)
    step3, left = _calc(total, "-", give)
    return facts, f"How many {things} does {p.name} have left?", [
        f"On Tuesday {p.he} collects {step1} {things}.", f"Altogether {p.he} has {step2} {things}.",
        f"After giving some away {p.he} has {step3} {things} left."], left


def _baking(rng, p):
    batches, per_batch, box = rng.randint(3, 9), rng.randint(8, 24), rng.randint(2, 6)
    made = batches * per_batch
    boxes = rng.randint(2, (made - 1) // box)
    sold = made - boxes * box
    facts = [f"A baker named {p.name} makes {batches} batches of muffins with {per_batch} muffins in each batch.",
             f"{p.he.capitalize()} sells {sold} muffins and packs the rest into boxes of {box}."]
    step1, total = _calc(batches, "*", per_batch)
    step2, rest = _calc(total, "-", sold)
    step3, n_boxes = _calc(rest, "/", box)
    return facts, f"How many boxes does {p.he} fill?", [
        f"{p.he.capitalize()} makes {step1} muffins.", f"{p.he.capitalize()} has {step2} muffins left to pack.",
        f"{p.he.capitalize()} fills {step3} boxes."], n_boxes


def _saving(rng, p):
    item, lo, hi = rng.choice(_BIG_ITEMS)
    price, start, weeks = rng.randint(lo, hi), rng.randint(10, 200), rng.randint(3, 15)
    least = max(5, -(-(price + 1 - start) // weeks))  # enough to afford it
    weekly = rng.randint(least, least + 25)
    facts = [f"{p.name} has ${start} in {p.his} piggy bank.", f"{p.he.capitalize()} saves ${weekly} every week for {weeks} weeks.",
             f"Then {p.he} buys {article(item)} for ${price}."]
    step1, saved = _calc(weekly, "*", weeks, money=True)
    step2, total = _calc(start, "+", saved, money=True)
    step3, left = _calc(total, "-", price, money=True)
    return facts, f"How much money does {p.he} have left?", [
        f"{p.he.capitalize()} saves {step1}.", f"{p.he.capitalize()} then has {step2}.",
        f"After buying the {item} {p.he} has {step3} left."], left


def _reading(rng, p):
    per_day, days, weekend = rng.randint(5, 40), rng.randint(2, 7), rng.randint(10, 90)
    pages = per_day * days + weekend + rng.randint(2, 300)
    facts = [f"A book has {pages} pages.", f"{p.name} reads {per_day} pages a day for {days} days.",
             f"On the weekend {p.he} reads {weekend} more pages."]
    step1, read = _calc(per_day, "*", days)
    step2, total = _calc(read, "+", weekend)
    step3, left = _calc(pages, "-", total)
    return facts, "How many pages are left to read?", [
        f"During the week {p.he} reads {step1} pages.", f"Altogether {p.he} reads {step2} pages.",
        f"There are {step3} pages left."], left


def _garden(rng, p):
    rows, per_row, extra = rng.randint(3, 15), rng.randint(3, 20), rng.randint(2, 50)
    eaten = rng.randint(1, rows * per_row // 2)
    facts = [f"{p.name} plants a garden with {rows} rows of {per_row} tulips.",
             f"Later {p.he} plants {extra} more tulips.", f"Rabbits eat {eaten} of the tulips."]
    step1, planted = _calc(rows, "*", per_row)
    step2, total = _calc(planted, "+", extra)
    step3, left = _calc(total, "-", eaten)
    return facts, "How many tulips are in the garden now?", [
        f"The rows hold {step1} tulips.", f"With the new ones there are {step2} tulips.",
        f"Now there are {step3} tulips."], left


def _school_trip(rng, p):
    classes, seats = rng.randint(3, 9), rng.randint(10, 40)
    buses = rng.randint(2, 9)
    going = buses * seats
    per_class = -(-going // classes) + rng.randint(1, 10)  # so some students are absent
    absent = classes * per_class - going
    facts = [f"A school has {classes} classes with {per_class} students in each class.",
             f"On the day of the trip {absent} students are absent.",
             f"The others ride in buses that hold {seats} students each."]
    step1, students = _calc(classes, "*", per_class)
    step2, rest = _calc(students, "-", absent)
    step3, n_buses = _calc(rest, "/", seats)
    return facts, "How many buses are full?", [
        f"The school has {step1} students.", f"{step2} students go on the trip.",
        f"They fill {step3} buses."], n_buses


def _farm_legs(rng, p):
    (s1, pl1), (s2, pl2) = rng.sample(_FARM, 2)
    legs = dict(LEGS)
    n1, n2 = rng.randint(2, 60), rng.randint(2, 60)
    facts = [f"{p.name} has a farm with {n1} {pl1} and {n2} {pl2}."]
    step1, l1 = _calc(n1, "*", legs[s1])
    step2, l2 = _calc(n2, "*", legs[s2])
    step3, total = _calc(l1, "+", l2)
    return facts, "How many legs do these animals have in total?", [
        f"The {pl1} have {step1} legs.", f"The {pl2} have {step2} legs.", f"Together they have {step3} legs."], total


def _wages(rng, p):
    rate, hours, days = rng.randint(8, 30), rng.randint(2, 8), rng.randint(2, 6)
    item, lo, hi = rng.choice(_BIG_ITEMS)
    price = rng.randint(lo, min(hi, rate * hours * days - 1)) if rate * hours * days > lo else None
    facts = [f"{p.name} earns ${rate} an hour.", f"{p.he.capitalize()} works {hours} hours a day for {days} days."]
    step1, per_day = _calc(rate, "*", hours, money=True)
    step2, earned = _calc(per_day, "*", days, money=True)
    lines = [f"Each day {p.he} earns {step1}.", f"In {days} days {p.he} earns {step2}."]
    if price is None:
        return facts, f"How much does {p.he} earn?", lines, earned
    facts.append(f"{p.he.capitalize()} spends ${price} on {article(item)}.")
    step3, left = _calc(earned, "-", price, money=True)
    return facts, "How much of the money is left?", lines + [f"{p.he.capitalize()} has {step3} left."], left


def _stamps(rng, p):
    b = make_person(rng, avoid=p.name)
    _, things = rng.choice(_THINGS)
    x, more, k = rng.randint(5, 90), rng.randint(3, 60), rng.randint(2, 4)
    facts = [f"{p.name} has {x} {things}.", f"{b.name} has {more} more {things} than {p.name}.",
             f"Their teacher has {k} times as many {things} as {b.name}."]
    step1, y = _calc(x, "+", more)
    step2, z = _calc(y, "*", k)
    step3, total = _calc(x, "+", y, "+", z)
    return facts, f"How many {things} do the three of them have altogether?", [
        f"{b.name} has {step1} {things}.", f"The teacher has {step2} {things}.",
        f"Altogether they have {step3} {things}."], total


def _store(rng, p):
    _, things = rng.choice(_THINGS)
    morning, afternoon = rng.randint(10, 150), rng.randint(10, 150)
    stock = morning + afternoon + rng.randint(5, 400)
    boxes, per_box = rng.randint(2, 9), rng.randint(6, 24)
    facts = [f"A store has {stock} {things}.", f"It sells {morning} in the morning and {afternoon} in the afternoon.",
             f"In the evening it gets {boxes} boxes with {per_box} {things} in each box."]
    step1, rest = _calc(stock, "-", morning, "-", afternoon)
    step2, new = _calc(boxes, "*", per_box)
    step3, now = _calc(rest, "+", new)
    return facts, f"How many {things} does the store have now?", [
        f"After the sales it has {step1} {things}.", f"The boxes hold {step2} {things}.",
        f"Now it has {step3} {things}."], now


def _tickets(rng, p):
    adults, kids = rng.randint(2, 9), rng.randint(2, 12)
    adult, child = rng.randint(8, 30), rng.randint(3, 15)
    place = rng.choice(["the zoo", "the museum", "a concert", "the fair"])
    facts = [f"{adults} adults and {kids} children go to {place}.",
             f"An adult ticket costs ${adult} and a child ticket costs ${child}."]
    step1, a = _calc(adults, "*", adult, money=True)
    step2, c = _calc(kids, "*", child, money=True)
    step3, total = _calc(a, "+", c, money=True)
    return facts, "How much do the tickets cost in total?", [
        f"The adult tickets cost {step1}.", f"The child tickets cost {step2}.", f"In total they cost {step3}."], total


def _bus_rides(rng, p):
    people, trips, days = rng.randint(12, 60), rng.randint(2, 9), rng.randint(2, 7)
    facts = [f"A bus carries {people} people on each trip.", f"It makes {trips} trips a day."]
    step1, per_day = _calc(people, "*", trips)
    step2, total = _calc(per_day, "*", days)
    return facts, f"How many people does it carry in {days} days?", [
        f"Each day it carries {step1} people.", f"In {days} days it carries {step2} people."], total


_ARITHMETIC_TEMPLATES = [_shopping, _sharing, _ages, _travel, _collecting, _baking, _saving, _reading, _garden,
                         _school_trip, _farm_legs, _wages, _stamps, _store, _tickets, _bus_rides]
DISTRACTOR_PROBABILITY = 0.5
RUNNING_TOTAL_PROBABILITY = 0.5  # the fixed templates alone are learned almost perfectly by a d4 model
WORD_NUMBER_PROBABILITY = 0.75  # of each count under 100 (not money) in a question


def _in_words(rng: random.Random, text: str) -> str:
    """Some counts written as words ('seven', 'forty-two'): the steps still need the digits."""
    def maybe(m: re.Match) -> str:
        if rng.random() >= WORD_NUMBER_PROBABILITY:
            return m.group(0)
        words = number_to_words(int(m.group(0)))
        at_sentence_start = m.start() == 0 or text[: m.start()].endswith(". ")
        return words.capitalize() if at_sentence_start else words

    return re.sub(r"(?<![$\d])\d{1,2}(?!\d)", maybe, text)


def _arithmetic_problem(rng: random.Random) -> dict:
    p = make_person(rng)
    template = _running_total if rng.random() < RUNNING_TOTAL_PROBABILITY else rng.choice(_ARITHMETIC_TEMPLATES)
    facts, question, lines, answer = template(rng, p)
    if rng.random() < DISTRACTOR_PROBABILITY:
        about_p = p.name in facts[0]  # only then may "he" or "his" in a detail refer to someone
        facts.insert(rng.randint(1, len(facts)), _distractor(rng, p, about_p, " ".join(facts)))  # after the first sentence
    return {"question": _in_words(rng, " ".join(facts + [question])), "answer": "\n".join(lines + [f"#### {answer}"])}


def make_arithmetic_problem(rng: random.Random, held_out: bool = False) -> dict:
    """
    A grade-school word problem as {'question', 'answer'}, with the answer in GSM8K's exact
    format (worked steps with <<expr=result>> annotations, then '#### N'), so that the code
    reading, rendering and rewarding real GSM8K rows works on these unchanged. Training-side
    problems unless held_out.
    """
    return draw(rng, _arithmetic_problem, held_out, lambda row: row["question"])

# -----------------------------------------------------------------------------
# Spelling drills

def _letter_count_question(rng: random.Random) -> tuple[str, str, str]:
    word = rng.choice(WORDS)
    letter = rng.choice(word) if rng.random() < 0.8 else rng.choice(string.ascii_lowercase)
    question = rng.choice([f"How many {letter} are in {word}?",
                           f"How many times does the letter {letter} appear in {word}?",
                           f"Count the letter {letter} in the word {word}."])
    return question, word, letter


def make_spelling_drill(rng: random.Random) -> str:
    """
    A short drill on the letters of a word. Tokenizers hide letters inside tokens, so the
    model has to learn spelling from text that spells words out letter by letter.
    """
    kind = rng.random()
    if kind < 0.45:  # count one letter, with a running tally
        question, word, letter = draw(rng, _letter_count_question, False, lambda q: q[0])
        tally, count = [], 0
        for ch in word:
            if ch == letter:
                count += 1
                tally.append(f"{ch}({count})")
            else:
                tally.append(ch)
        verb = "is" if count == 1 else "are"
        # the python call is the one SpellingBee's answers make: the word as it looks in quotes
        return (f"{question} Spelling it out and counting each {letter}: {'-'.join(tally)}. "
                f"So there {verb} {count} {letter} in {word}. In Python, '{word}'.count('{letter}') is {count}.")
    word = rng.choice(WORDS)
    spelled = "-".join(word)
    if kind < 0.7:
        return rng.choice([f"The word {word} is spelled {spelled}.",
                           f"How do you spell {word}? It is spelled {spelled}.",
                           f"Spell {word}: {spelled}."])
    if kind < 0.82:
        return f"The word {word} is spelled {spelled}. It has {plural(len(word), 'letter', 'letters')}."
    if kind < 0.92:
        return f"The first letter of {word} is {word[0]} and the last letter is {word[-1]}."
    return f"The word {word} spelled backwards is {'-'.join(reversed(word))}."

# -----------------------------------------------------------------------------
# Tiny Python functions in HumanEval's format (a signature, a docstring with an example, a check)


class CodeKind(NamedTuple):
    names: list[str]  # the function's name is one of these, then '_' and a noun
    params: list[tuple[str, str]]  # (name, type hint); the names are chosen per problem
    returns: str
    doc: str  # '{a}', '{b}': the parameters' names
    body: str  # the returned expression
    inputs: Callable[[random.Random], tuple]  # one random call's arguments


def _ints(lo: int, hi: int, n: int) -> Callable[[random.Random], tuple]:
    return lambda rng: tuple(rng.randint(lo, hi) for _ in range(n))


def _a_word(rng: random.Random) -> tuple:
    return (rng.choice(WORDS),)


def _a_list(rng: random.Random) -> tuple:
    return ([rng.randint(0, 20) for _ in range(rng.randint(1, 5))],)


_NUM, _STR, _LIST = [("a", "int"), ("b", "int")], [("s", "str")], [("items", "list")]
CODE_KINDS = [
    CodeKind(["add", "sum", "total"], _NUM, "int", "Return the sum of {a} and {b}.", "{a} + {b}", _ints(0, 99, 2)),
    CodeKind(["subtract", "minus", "difference"], _NUM, "int", "Return {a} minus {b}.", "{a} - {b}", _ints(0, 99, 2)),
    CodeKind(["multiply", "times", "product"], _NUM, "int", "Return the product of {a} and {b}.", "{a} * {b}",
             _ints(0, 20, 2)),
    CodeKind(["larger", "biggest", "maximum"], _NUM, "int", "Return the larger of {a} and {b}.", "max({a}, {b})",
             _ints(0, 99, 2)),
    CodeKind(["smaller", "smallest", "minimum"], _NUM, "int", "Return the smaller of {a} and {b}.", "min({a}, {b})",
             _ints(0, 99, 2)),
    CodeKind(["double", "twice"], _NUM[:1], "int", "Return {a} doubled.", "{a} * 2", _ints(0, 99, 1)),
    CodeKind(["square", "squared"], _NUM[:1], "int", "Return {a} squared.", "{a} * {a}", _ints(0, 30, 1)),
    CodeKind(["is_even", "even"], _NUM[:1], "bool", "Return True if {a} is even and False otherwise.",
             "{a} % 2 == 0", _ints(0, 99, 1)),
    CodeKind(["length", "size", "count"], _STR, "int", "Return the number of characters in {a}.", "len({a})", _a_word),
    CodeKind(["shout", "upper", "loud"], _STR, "str", "Return {a} in upper case.", "{a}.upper()", _a_word),
    CodeKind(["reverse", "backwards", "flip"], _STR, "str", "Return {a} reversed.", "{a}[::-1]", _a_word),
    CodeKind(["first", "head", "front"], _LIST, "int", "Return the first item of {a}.", "{a}[0]", _a_list),
    CodeKind(["total", "sum", "add_up"], _LIST, "int", "Return the sum of the numbers in {a}.", "sum({a})", _a_list),
]
_CODE_NOUNS = ["apples", "coins", "points", "cookies", "stars", "steps", "books", "cards", "birds", "boxes",
               "marbles", "shells", "words", "items", "values", "scores"]
_PARAM_NAMES = {"int": [("a", "b"), ("x", "y"), ("m", "n"), ("first", "second")],
                "str": [("s",), ("word",), ("text",), ("name",)],
                "list": [("items",), ("numbers",), ("values",), ("nums",)]}


class CodeProblem(NamedTuple):
    name: str
    prompt: str  # HumanEval's prompt: imports (none here), signature, docstring
    solution: str  # the body that completes the prompt
    test: str  # defines check(candidate)


def _code_problem(rng: random.Random) -> CodeProblem:
    kind = rng.choice(CODE_KINDS)
    name = f"{rng.choice(kind.names)}_{rng.choice(_CODE_NOUNS)}"
    names = rng.choice(_PARAM_NAMES[kind.params[0][1]])[: len(kind.params)]
    slots = dict(zip("ab", names))
    signature = ", ".join(f"{n}: {hint}" for n, (_, hint) in zip(names, kind.params))
    expr = kind.body.format(**slots)
    compute = eval(f"lambda {', '.join(names)}: {expr}")  # noqa: S307 (our own template, the reference answer)
    example = kind.inputs(rng)
    calls = [kind.inputs(rng) for _ in range(4)]
    prompt = (f"\n\ndef {name}({signature}) -> {kind.returns}:\n"
              f'    """ {kind.doc.format(**slots)}\n'
              f"    >>> {name}({', '.join(map(repr, example))})\n"
              f"    {compute(*example)!r}\n"
              f'    """\n')
    checks = "".join(f"    assert candidate({', '.join(map(repr, args))}) == {compute(*args)!r}\n" for args in calls)
    return CodeProblem(name, prompt, f"    return {expr}\n", f"\n\ndef check(candidate):\n{checks}")


def make_code_problem(rng: random.Random, held_out: bool = False) -> CodeProblem:
    """A tiny function to write, in HumanEval's format; training-side unless held_out (the prompt decides)."""
    return draw(rng, _code_problem, held_out, lambda problem: problem.prompt)


def make_code_snippet(rng: random.Random) -> str:
    """A training-side function written out in full, as code on the web is."""
    problem = make_code_problem(rng)
    return (problem.prompt + problem.solution).strip("\n")

# -----------------------------------------------------------------------------
# Short stories

_PLACES = ["park", "beach", "market", "library", "zoo", "farm", "forest", "lake", "garden", "museum"]
_PETS = [("dog", "woof"), ("cat", "meow"), ("duck", "quack"), ("puppy", "woof"), ("kitten", "meow")]
_FEELINGS = ["happy", "proud", "tired but happy", "glad", "excited"]
_WEATHER = ["sunny", "windy", "rainy", "cloudy", "snowy"]
_RELATIVES = [("mother", "she", "her"), ("father", "he", "him"), ("sister", "she", "her"),
              ("brother", "he", "him"), ("grandmother", "she", "her"), ("grandfather", "he", "him")]
_LOST_THINGS = ["hat", "ball", "book", "scarf", "kite", "toy robot", "blue cup", "red shoe"]
_FURNITURE = ["bed", "sofa", "table", "desk", "chair", "door"]
_BAKED = [("cookie", "cookies"), ("muffin", "muffins"), ("cupcake", "cupcakes"), ("pie", "pies")]


def _story_sharing(rng: random.Random) -> str:
    a, b = two_people(rng)
    place, (pet, sound) = rng.choice(_PLACES), rng.choice(_PETS)
    thing, things = rng.choice(_THINGS)
    n, m = rng.randint(1, 9), rng.randint(1, 9)
    return (f"One {rng.choice(_WEATHER)} morning, {a.name} went to the {place} with {a.his} {pet}. "
            f"{a.he.capitalize()} took {plural(n, thing, things)} in {a.his} bag. "
            f"At the {place}, {a.he} met {b.name}, who had {plural(m, thing, things)}. "
            f"They put their {things} together and counted {n + m}. "
            f"The {pet} said {sound}, and {b.name} laughed. "
            f"When the sun went down, {a.name} walked home feeling {rng.choice(_FEELINGS)}.")


def _story_lost(rng: random.Random) -> str:
    a = make_person(rng)
    relative, r_he, r_him = rng.choice(_RELATIVES)
    item = rng.choice(_LOST_THINGS)
    f1, f2, f3 = rng.sample(_FURNITURE, 3)
    return (f"{a.name} had a favorite {item}. One evening, {a.he} could not find it anywhere. "
            f"{a.he.capitalize()} looked under the {f1} and behind the {f2}, but the {item} was not there. "
            f"Then {a.his} {relative} came in. {r_he.capitalize()} looked next to the {f3} and found the {item}. "
            f"{a.name} was so {rng.choice(_FEELINGS)} that {a.he} hugged {r_him} and said thank you.")


def _story_baking(rng: random.Random) -> str:
    a, b = two_people(rng)
    thing, things = rng.choice(_BAKED)
    made = rng.randint(6, 24)
    eaten = rng.randint(1, made - 2)
    day = rng.choice(DAYS)
    return (f"On {day}, {a.name} and {b.name} baked {plural(made, thing, things)} together. "
            f"The kitchen smelled wonderful. They were hungry, so they ate {plural(eaten, thing, things)}. "
            f"{a.name} put the other {made - eaten} on a plate and carried them to the neighbors. "
            f"The neighbors were very happy, and {b.name} said they should bake again next {day}.")


def _story_animal(rng: random.Random) -> str:
    a = make_person(rng)
    animal, sound = rng.choice(SOUNDS)
    place = rng.choice(_PLACES)
    animals = {"mouse": "mice", "sheep": "sheep"}.get(animal, animal + "s")
    count = rng.randint(2, 7)
    return (f"{a.name} went to the {place} with {a.his} class. There {a.he} saw {count} {animals}. "
            f"Every {animal} said {sound}. {a.name} counted them twice to be sure: there were {count}. "
            f"The next day, {a.he} drew a picture of the {count} {animals} and showed it to {a.his} teacher.")


def _story_weather(rng: random.Random) -> str:
    a, b = two_people(rng)
    weather = rng.choice(_WEATHER)
    plan = {"sunny": "go swimming in the lake", "windy": "fly a kite in the park",
            "rainy": "jump in puddles", "cloudy": "go for a long walk", "snowy": "build a snowman"}[weather]
    hours = rng.randint(1, 4)
    return (f"It was a {weather} day, so {a.name} wanted to {plan}. {a.he.capitalize()} called {b.name} "
            f"and asked {b.him} to come along. {b.name} said yes. They played for {plural(hours, 'hour', 'hours')}. "
            f"Afterwards, {b.name} went home to {b.his} family, and {a.name} went back to {a.his} own house. "
            f"That night, {a.name} dreamed about the {weather} day.")


_STORY_TEMPLATES = [_story_sharing, _story_lost, _story_baking, _story_animal, _story_weather]


def make_story(rng: random.Random) -> str:
    """A short story with named characters, consistent pronouns and counts that add up."""
    return rng.choice(_STORY_TEMPLATES)(rng)

# -----------------------------------------------------------------------------
# Documents and shards

def _make_item(rng: random.Random) -> str:
    """One paragraph: word problems, spelling drills, facts, quizzes, functions, stories."""
    r = rng.random()
    if r < 0.22:
        problem = make_arithmetic_problem(rng)
        return f"Question: {problem['question']}\nAnswer: {problem['answer']}"
    if r < 0.42:
        return make_spelling_drill(rng)
    if r < 0.64:
        return " ".join(make_fact(rng) for _ in range(rng.randint(2, 5)))
    if r < 0.74:
        return make_quiz(rng)
    if r < 0.86:
        return make_code_snippet(rng)
    return make_story(rng)


def make_document(rng: random.Random, min_chars: int = 200, max_chars: int = 1500) -> str:
    """A few paragraphs of mixed kinds, so document lengths vary the way web pages do."""
    target = rng.randint(min_chars, max_chars)
    parts, length = [], 0
    while length < target:
        parts.append(_make_item(rng))
        length += len(parts[-1]) + 2
    return "\n\n".join(parts)


def _shard_rng(seed: int, index: int) -> random.Random:
    # str seeds are hashed with SHA-512: stable across runs and machines, unlike hash()
    return random.Random(f"nanochat-synthetic-{seed}-{index}")


def _fingerprint(seed: int, chars_per_shard: int, docs_per_row_group: int) -> str:
    """What a shard's bytes depend on: this module's code and the arguments. Stored in each shard's metadata."""
    with open(__file__, "rb") as f:
        code = f.read()
    return hashlib.sha256(code + f"|{seed}|{chars_per_shard}|{docs_per_row_group}".encode()).hexdigest()[:16]


_FINGERPRINT_KEY = b"nanochat_synthetic"


def _is_current(path: str, fingerprint: str) -> bool:
    """Whether a shard on disk was written by this code with these arguments (an older twin is rewritten)."""
    try:
        metadata = pq.read_schema(path).metadata or {}
    except (OSError, pa.ArrowException):
        return False
    return metadata.get(_FINGERPRINT_KEY) == fingerprint.encode()


def _write_shard(path: str, seed: int, index: int, chars_per_shard: int, docs_per_row_group: int) -> str:
    rng = _shard_rng(seed, index)
    docs, total = [], 0
    while total < chars_per_shard:
        docs.append(make_document(rng))
        total += len(docs[-1])
    fingerprint = _fingerprint(seed, chars_per_shard, docs_per_row_group)
    table = pa.table({"text": pa.array(docs, type=pa.string())}).replace_schema_metadata({_FINGERPRINT_KEY: fingerprint})
    atomic_write(path, lambda f: pq.write_table(table, f, row_group_size=docs_per_row_group,
                                                  write_page_checksum=True))  # readers verify each page's CRC
    return path


def write_shards(data_dir: str, num_shards: int = 8, seed: int = 0, chars_per_shard: int = 500_000,
                 docs_per_row_group: int = 256, num_workers: int = 1) -> list[str]:
    """
    Write shard_00000.parquet ... in FineWeb-Edu's layout (one 'text' column, several row
    groups); the last shard serves as the validation split. Shard i depends only on (seed, i),
    so it is the same whatever num_shards is, shards can be written in parallel, and shards
    already present are skipped, which makes an interrupted run resumable. A shard written by
    another version of this module (or with other arguments) is written again.
    """
    if num_shards < 2:
        raise ValueError(f"num_shards must be at least 2 (the last shard is the validation split), got {num_shards}")
    os.makedirs(data_dir, exist_ok=True)
    paths = [os.path.join(data_dir, f"shard_{i:05d}.parquet") for i in range(num_shards)]
    fingerprint = _fingerprint(seed, chars_per_shard, docs_per_row_group)
    todo = [i for i, path in enumerate(paths) if not _is_current(path, fingerprint)]
    args = [(paths[i], seed, i, chars_per_shard, docs_per_row_group) for i in todo]
    if num_workers > 1 and len(todo) > 1:
        with ProcessPoolExecutor(max_workers=min(num_workers, len(todo))) as pool:
            futures = [pool.submit(_write_shard, *a) for a in args]
            for future in tqdm(futures, desc="synthetic shards"):
                future.result()
    else:
        for a in tqdm(args, desc="synthetic shards"):
            _write_shard(*a)
    return paths


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Write synthetic pretraining shards (the offline twin of FineWeb-Edu)")
    parser.add_argument("--data_dir", type=str, default=None, help="output folder (default: the dataset module's synthetic folder)")
    parser.add_argument("-n", "--num_shards", type=int, default=8, help="number of shards, the last one is validation")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--chars_per_shard", type=int, default=500_000)
    parser.add_argument("--num_workers", type=int, default=1)
    cli = parser.parse_args()
    if cli.data_dir is None:
        from nanochat.dataset import get_data_dir
        cli.data_dir = get_data_dir("synthetic")
    out = write_shards(cli.data_dir, cli.num_shards, cli.seed, cli.chars_per_shard, num_workers=cli.num_workers)
    print(f"{len(out)} shards in {cli.data_dir}")
