"""
Facts: stated in the pretraining text in several ways, and asked about by the
multiple-choice twins (ARC, MMLU) and the CORE twin bundle.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import NamedTuple

from nanochat.synthetic.heldout import draw
from nanochat.synthetic.words import article, number_to_words, plural

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
