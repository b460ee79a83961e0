"""
Offline twin of the pretraining data: synthetic text in FineWeb-Edu's parquet layout.

With no network (tests, CI, the CPU demo) the pipeline still needs text that a tiny model
can visibly learn from in minutes. So the text here is heavily templated and regular
(arithmetic word problems in GSM8K's exact format, spelling drills, simple facts, short
stories), yet varied enough in names, numbers and phrasing that it cannot just be memorized.

The generators are plain functions of a `random.Random`, so later stages (mid-training,
SFT, RL, spelling tasks) can draw fresh examples from the same distribution.

Usage: python -m nanochat.synthetic --data_dir=DIR -n 8
"""

from __future__ import annotations

import argparse
import operator
import os
import random
import string
from concurrent.futures import ProcessPoolExecutor
from typing import NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from nanochat.common import atomic_write

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
# Arithmetic word problems in GSM8K's format

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
    ("notebook", "notebooks", 2, 6), ("pencil", "pencils", 1, 3), ("book", "books", 5, 15),
    ("toy car", "toy cars", 3, 9), ("apple", "apples", 1, 3), ("sandwich", "sandwiches", 4, 8),
    ("ticket", "tickets", 5, 12), ("shirt", "shirts", 8, 15), ("cupcake", "cupcakes", 2, 5),
    ("ball", "balls", 3, 8), ("comic", "comics", 2, 7), ("plant", "plants", 4, 10),
]
_THINGS = [("cookie", "cookies"), ("sticker", "stickers"), ("marble", "marbles"), ("candy", "candies"),
           ("card", "cards"), ("apple", "apples"), ("flower", "flowers"), ("shell", "shells"),
           ("crayon", "crayons"), ("stamp", "stamps"), ("grape", "grapes"), ("balloon", "balloons")]
_VEHICLES = ["car", "train", "bus", "truck", "boat"]


def _shopping_total(rng: random.Random):
    p = make_person(rng)
    (s1, pl1, lo1, hi1), (s2, pl2, lo2, hi2) = rng.sample(_SHOP_ITEMS, 2)
    n1, c1, n2, c2 = rng.randint(2, 6), rng.randint(lo1, hi1), rng.randint(2, 6), rng.randint(lo2, hi2)
    q = (f"{p.name} buys {n1} {pl1} for ${c1} each and {n2} {pl2} for ${c2} each. "
         f"How much money does {p.he} spend in total?")
    step1, t1 = _calc(n1, "*", c1, money=True)
    step2, t2 = _calc(n2, "*", c2, money=True)
    step3, total = _calc(t1, "+", t2, money=True)
    lines = [f"The {pl1} cost {step1}.", f"The {pl2} cost {step2}.", f"In total {p.he} spends {step3}."]
    return q, lines, total


def _money_change(rng: random.Random):
    p = make_person(rng)
    _, pl, lo, hi = rng.choice(_SHOP_ITEMS)
    n, price = rng.randint(2, 6), rng.randint(lo, hi)
    bill = next(b for b in (10, 20, 50, 100) if b > n * price)
    q = (f"{p.name} buys {n} {pl} that cost ${price} each. {p.he.capitalize()} pays with a ${bill} bill. "
         f"How much change does {p.he} get?")
    step1, cost = _calc(n, "*", price, money=True)
    step2, change = _calc(bill, "-", cost, money=True)
    lines = [f"The {pl} cost {step1}.", f"{p.he.capitalize()} gets {step2} in change."]
    return q, lines, change


def _sharing(rng: random.Random):
    p = make_person(rng)
    _, things = rng.choice(_THINGS)
    k, each = rng.randint(2, 8), rng.randint(2, 12)
    if rng.random() < 0.5:
        q = (f"{p.name} has {k * each} {things} and shares them equally among {k} friends. "
             f"How many {things} does each friend get?")
        step, share = _calc(k * each, "/", k)
        return q, [f"Each friend gets {step} {things}."], share
    keep = rng.randint(1, 10)
    total = k * each + keep
    q = (f"{p.name} has {total} {things}. {p.he.capitalize()} keeps {keep} for {p.him}self and shares "
         f"the rest equally among {k} friends. How many {things} does each friend get?")
    step1, rest = _calc(total, "-", keep)
    step2, share = _calc(rest, "/", k)
    lines = [f"{p.he.capitalize()} shares {step1} {things}.", f"Each friend gets {step2} {things}."]
    return q, lines, share


def _ages(rng: random.Random):
    a, b = two_people(rng)
    age = rng.randint(4, 15)
    kind = rng.randrange(3)
    if kind == 0:
        diff, years = rng.randint(2, 30), rng.randint(2, 10)
        q = (f"{a.name} is {age} years old. {b.name} is {diff} years older than {a.name}. "
             f"How old will {b.name} be in {years} years?")
        step1, b_age = _calc(age, "+", diff)
        step2, later = _calc(b_age, "+", years)
        return q, [f"{b.name} is {step1} years old.", f"In {years} years {b.he} will be {step2} years old."], later
    if kind == 1:
        times, years = rng.randint(2, 4), rng.randint(2, 9)
        q = (f"{a.name} is {age} years old. {a.his.capitalize()} grandmother is {times} times as old as {a.him}. "
             f"How old was {a.his} grandmother {years} years ago?")
        step1, gm = _calc(age, "*", times)
        step2, before = _calc(gm, "-", years)
        return q, [f"The grandmother is {step1} years old.", f"{years} years ago she was {step2} years old."], before
    diff = rng.randint(1, age - 2)
    q = f"{a.name} is {age} years old and {b.name} is {diff} years younger. What is the sum of their ages?"
    step1, b_age = _calc(age, "-", diff)
    step2, total = _calc(age, "+", b_age)
    return q, [f"{b.name} is {step1} years old.", f"Together they are {step2} years old."], total


def _speed_time(rng: random.Random):
    vehicle, unit = rng.choice(_VEHICLES), rng.choice(["miles", "kilometers"])
    kind = rng.randrange(3)
    if kind == 0:
        speed, hours = rng.randint(2, 12) * 5, rng.randint(2, 6)
        q = f"A {vehicle} travels at {speed} {unit} per hour for {hours} hours. How many {unit} does it travel?"
        step, dist = _calc(speed, "*", hours)
        return q, [f"It travels {step} {unit}."], dist
    if kind == 1:
        s1, h1, s2, h2 = rng.randint(2, 12) * 5, rng.randint(1, 4), rng.randint(2, 12) * 5, rng.randint(1, 4)
        q = (f"A {vehicle} travels at {s1} {unit} per hour for {plural(h1, 'hour', 'hours')} and then at {s2} "
             f"{unit} per hour for {plural(h2, 'hour', 'hours')}. How many {unit} does it travel in total?")
        step1, d1 = _calc(s1, "*", h1)
        step2, d2 = _calc(s2, "*", h2)
        step3, total = _calc(d1, "+", d2)
        lines = [f"First it travels {step1} {unit}.", f"Then it travels {step2} {unit}.",
                 f"In total it travels {step3} {unit}."]
        return q, lines, total
    p = make_person(rng)
    speed, hours = rng.randint(2, 6), rng.randint(2, 8)
    q = f"{p.name} walks at {speed} {unit} per hour. How many hours does it take {p.him} to walk {speed * hours} {unit}?"
    step, h = _calc(speed * hours, "/", speed)
    return q, [f"It takes {p.him} {step} hours."], h


def _picking(rng: random.Random):
    p, friend = two_people(rng)
    _, things = rng.choice(_THINGS)
    first, times = rng.randint(3, 15), rng.randint(2, 4)
    give = rng.randint(1, first * (times + 1) - 2)
    q = (f"{p.name} collects {first} {things} on Monday and {times} times as many on Tuesday. "
         f"{p.he.capitalize()} gives {give} {things} to {friend.name}. How many {things} does {p.name} have left?")
    step1, second = _calc(first, "*", times)
    step2, total = _calc(first, "+", second)
    step3, left = _calc(total, "-", give)
    lines = [f"On Tuesday {p.he} collects {step1} {things}.", f"Altogether {p.he} has {step2} {things}.",
             f"After giving some away {p.he} has {step3} {things} left."]
    return q, lines, left


def _baking_boxes(rng: random.Random):
    p = make_person(rng)
    batches, per_batch, box = rng.randint(2, 6), rng.randint(6, 12), rng.randint(2, 5)
    made = batches * per_batch
    boxes = rng.randint(2, (made - 1) // box)
    sold = made - boxes * box
    q = (f"A baker named {p.name} makes {batches} batches of muffins with {per_batch} muffins in each batch. "
         f"{p.he.capitalize()} sells {sold} muffins and packs the rest into boxes of {box}. "
         f"How many boxes does {p.he} fill?")
    step1, total = _calc(batches, "*", per_batch)
    step2, rest = _calc(total, "-", sold)
    step3, n_boxes = _calc(rest, "/", box)
    lines = [f"{p.he.capitalize()} makes {step1} muffins.", f"{p.he.capitalize()} has {step2} muffins left to pack.",
             f"{p.he.capitalize()} fills {step3} boxes."]
    return q, lines, n_boxes


def _saving(rng: random.Random):
    p = make_person(rng)
    singular, _, lo, hi = rng.choice(_SHOP_ITEMS)
    price, weekly = rng.randint(lo, hi), rng.randint(2, 15)
    weeks = rng.randint(max(2, price // weekly + 1), 10)  # save more than the price
    q = (f"{p.name} saves ${weekly} every week for {weeks} weeks. Then {p.he} spends ${price} on {article(singular)}. "
         f"How much money does {p.he} have left?")
    step1, saved = _calc(weekly, "*", weeks, money=True)
    step2, left = _calc(saved, "-", price, money=True)
    return q, [f"{p.he.capitalize()} saves {step1}.", f"{p.he.capitalize()} has {step2} left."], left


def _reading(rng: random.Random):
    p = make_person(rng)
    per_day, days = rng.randint(5, 30), rng.randint(2, 7)
    pages = per_day * days + rng.randint(2, 120)
    q = (f"A book has {pages} pages. {p.name} reads {per_day} pages a day for {days} days. "
         f"How many pages are left to read?")
    step1, read = _calc(per_day, "*", days)
    step2, left = _calc(pages, "-", read)
    return q, [f"{p.he.capitalize()} reads {step1} pages.", f"There are {step2} pages left."], left


def _three_days(rng: random.Random):
    p = make_person(rng)
    _, things = rng.choice(_THINGS)
    a, b, c = rng.randint(2, 30), rng.randint(2, 30), rng.randint(2, 30)
    q = (f"{p.name} found {a} {things} on Monday, {b} on Tuesday and {c} on Wednesday. "
         f"How many {things} did {p.he} find in all?")
    step, total = _calc(a, "+", b, "+", c)
    return q, [f"{p.he.capitalize()} found {step} {things}."], total


def _garden(rng: random.Random):
    p = make_person(rng)
    rows, per_row, extra = rng.randint(3, 9), rng.randint(3, 9), rng.randint(2, 20)
    q = (f"{p.name} plants a garden with {rows} rows of {per_row} tulips. Later {p.he} plants {extra} more tulips. "
         f"How many tulips are in the garden now?")
    step1, planted = _calc(rows, "*", per_row)
    step2, total = _calc(planted, "+", extra)
    return q, [f"The rows hold {step1} tulips.", f"Now there are {step2} tulips."], total


_ARITHMETIC_TEMPLATES = [_shopping_total, _money_change, _sharing, _ages, _speed_time, _picking,
                         _baking_boxes, _saving, _reading, _three_days, _garden]


def make_arithmetic_problem(rng: random.Random) -> dict:
    """
    A grade-school word problem as {'question', 'answer'}, with the answer in GSM8K's exact
    format (worked steps with <<expr=result>> annotations, then '#### N'), so that the code
    reading, rendering and rewarding real GSM8K rows works on these unchanged.
    """
    question, lines, answer = rng.choice(_ARITHMETIC_TEMPLATES)(rng)
    return {"question": question, "answer": "\n".join(lines + [f"#### {answer}"])}

# -----------------------------------------------------------------------------
# Spelling drills

def make_spelling_drill(rng: random.Random) -> str:
    """
    A short drill on the letters of a word. Tokenizers hide letters inside tokens, so the
    model has to learn spelling from text that spells words out letter by letter.
    """
    word = rng.choice(WORDS)
    spelled = "-".join(word)
    kind = rng.random()
    if kind < 0.45:  # count one letter, with a running tally
        letter = rng.choice(word) if rng.random() < 0.8 else rng.choice(string.ascii_lowercase)
        question = rng.choice([f"How many {letter} are in {word}?",
                               f"How many times does the letter {letter} appear in {word}?",
                               f"Count the letter {letter} in the word {word}."])
        tally, count = [], 0
        for ch in word:
            if ch == letter:
                count += 1
                tally.append(f"{ch}({count})")
            else:
                tally.append(ch)
        verb = "is" if count == 1 else "are"
        return (f"{question} Spelling it out and counting each {letter}: {'-'.join(tally)}. "
                f"So there {verb} {count} {letter} in {word}.")
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
# Simple facts

_COLORS = [("the sky", "blue"), ("grass", "green"), ("snow", "white"), ("a banana", "yellow"),
           ("a ripe tomato", "red"), ("coal", "black"), ("an orange", "orange"), ("a lemon", "yellow"),
           ("milk", "white"), ("a strawberry", "red"), ("a carrot", "orange"), ("chocolate", "brown"),
           ("a frog", "green"), ("a crow", "black"), ("a lime", "green"), ("a plum", "purple"),
           ("the sea", "blue"), ("a pumpkin", "orange"), ("a cherry", "red"), ("a polar bear", "white")]
_SOUNDS = [("dog", "woof"), ("cat", "meow"), ("cow", "moo"), ("duck", "quack"), ("sheep", "baa"),
           ("pig", "oink"), ("horse", "neigh"), ("owl", "hoot"), ("lion", "roar"), ("bee", "buzz"),
           ("frog", "ribbit"), ("mouse", "squeak"), ("snake", "hiss"), ("rooster", "cock-a-doodle-doo")]
_CAPITALS = [("France", "Paris"), ("Spain", "Madrid"), ("Italy", "Rome"), ("Germany", "Berlin"),
             ("Japan", "Tokyo"), ("Egypt", "Cairo"), ("Canada", "Ottawa"), ("Kenya", "Nairobi"),
             ("Peru", "Lima"), ("Norway", "Oslo"), ("Greece", "Athens"), ("Russia", "Moscow"),
             ("China", "Beijing"), ("India", "New Delhi"), ("Mexico", "Mexico City"), ("Australia", "Canberra"),
             ("Portugal", "Lisbon"), ("Ireland", "Dublin"), ("Poland", "Warsaw"), ("Sweden", "Stockholm"),
             ("Austria", "Vienna"), ("Chile", "Santiago"), ("Cuba", "Havana"), ("Thailand", "Bangkok")]
_LEGS = [("spider", 8), ("ant", 6), ("bee", 6), ("dog", 4), ("cat", 4), ("horse", 4), ("bird", 2),
         ("chicken", 2), ("duck", 2), ("cow", 4), ("beetle", 6), ("snake", 0), ("fish", 0)]
_OPPOSITES = [("hot", "cold"), ("big", "small"), ("up", "down"), ("fast", "slow"), ("happy", "sad"),
              ("day", "night"), ("open", "closed"), ("wet", "dry"), ("old", "young"), ("light", "dark"),
              ("full", "empty"), ("early", "late"), ("loud", "quiet"), ("hard", "soft"), ("high", "low")]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December"]
_ORDINALS = ["first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth",
             "tenth", "eleventh", "twelfth"]


def make_fact(rng: random.Random) -> str:
    """One simple true sentence from a fixed table, phrased a few ways, so it can be learned as a fact."""
    kind = rng.randrange(11)
    if kind == 0:
        thing, color = rng.choice(_COLORS)
        return rng.choice([f"The color of {thing} is {color}.", f"{thing.capitalize()} is {color}.",
                           f"What color is {thing}? It is {color}."])
    if kind == 1:
        animal, sound = rng.choice(_SOUNDS)
        a_animal = article(animal)
        return rng.choice([f"{a_animal.capitalize()} says {sound}.", f"The sound {a_animal} makes is {sound}.",
                           f"What does {a_animal} say? {a_animal.capitalize()} says {sound}."])
    if kind == 2:
        country, capital = rng.choice(_CAPITALS)
        return rng.choice([f"The capital of {country} is {capital}.", f"{capital} is the capital of {country}.",
                           f"What is the capital of {country}? The capital of {country} is {capital}."])
    if kind == 3:
        animal, legs = rng.choice(_LEGS)
        return f"{article(animal).capitalize()} has {'no legs' if legs == 0 else plural(legs, 'leg', 'legs')}."
    if kind == 4:
        a, b = rng.choice(_OPPOSITES)
        if rng.random() < 0.5:
            a, b = b, a
        return f"The opposite of {a} is {b}."
    if kind == 5:
        i = rng.randrange(7)
        if rng.random() < 0.5:
            return f"The day after {DAYS[i]} is {DAYS[(i + 1) % 7]}."
        return f"The day before {DAYS[i]} is {DAYS[(i - 1) % 7]}."
    if kind == 6:
        i = rng.randrange(12)
        return rng.choice([f"The month after {MONTHS[i]} is {MONTHS[(i + 1) % 12]}.",
                           f"The month before {MONTHS[i]} is {MONTHS[(i - 1) % 12]}.",
                           f"{MONTHS[i]} is the {_ORDINALS[i]} month of the year."])
    if kind == 7:
        n = rng.randint(0, 999) if rng.random() < 0.5 else rng.randint(0, 100)
        return rng.choice([f"The number {n} is written as {number_to_words(n)}.",
                           f"{number_to_words(n).capitalize()} is the number {n}."])
    if kind == 8:
        a, b = rng.sample(range(100), 2)
        if rng.random() < 0.5:
            return f"{a} is {'greater' if a > b else 'less'} than {b}."
        return f"The larger of {a} and {b} is {max(a, b)}."
    if kind == 9:
        n = rng.randint(0, 100)
        return f"{n} is an {'even' if n % 2 == 0 else 'odd'} number."
    a, b = rng.randint(0, 12), rng.randint(0, 12)
    if rng.random() < 0.5:
        return f"{a} plus {b} equals {a + b}."
    return f"{a} times {b} equals {a * b}."

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
    animal, sound = rng.choice(_SOUNDS)
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
    """One paragraph: ~40% arithmetic, ~20% spelling, ~20% facts, ~20% stories."""
    r = rng.random()
    if r < 0.4:
        problem = make_arithmetic_problem(rng)
        return f"Question: {problem['question']}\nAnswer: {problem['answer']}"
    if r < 0.6:
        return make_spelling_drill(rng)
    if r < 0.8:
        return " ".join(make_fact(rng) for _ in range(rng.randint(2, 5)))
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


def _write_shard(path: str, seed: int, index: int, chars_per_shard: int, docs_per_row_group: int) -> str:
    rng = _shard_rng(seed, index)
    docs, total = [], 0
    while total < chars_per_shard:
        docs.append(make_document(rng))
        total += len(docs[-1])
    table = pa.table({"text": pa.array(docs, type=pa.string())})
    atomic_write(path, lambda f: pq.write_table(table, f, row_group_size=docs_per_row_group))
    return path


def write_shards(data_dir: str, num_shards: int = 8, seed: int = 0, chars_per_shard: int = 500_000,
                 docs_per_row_group: int = 256, num_workers: int = 1) -> list[str]:
    """
    Write shard_00000.parquet ... in FineWeb-Edu's layout (one 'text' column, several row
    groups); the last shard serves as the validation split. Shard i depends only on (seed, i),
    so it is the same whatever num_shards is, shards can be written in parallel, and shards
    already present are skipped, which makes an interrupted run resumable.
    """
    if num_shards < 2:
        raise ValueError(f"num_shards must be at least 2 (the last shard is the validation split), got {num_shards}")
    os.makedirs(data_dir, exist_ok=True)
    paths = [os.path.join(data_dir, f"shard_{i:05d}.parquet") for i in range(num_shards)]
    todo = [i for i, path in enumerate(paths) if not os.path.exists(path)]
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
