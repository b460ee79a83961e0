"""
Vocabulary and people: the words every twin draws from (written here, so nothing has to be
downloaded), names with matching pronouns, and small grammar helpers.
"""

from __future__ import annotations

import random
from typing import NamedTuple

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
