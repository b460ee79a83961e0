"""
Short stories with named characters, consistent pronouns and counts that add up.
"""

from __future__ import annotations

import random

from nanochat.synthetic.arithmetic import THINGS
from nanochat.synthetic.facts import DAYS, SOUNDS
from nanochat.synthetic.words import make_person, plural, two_people

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
    thing, things = rng.choice(THINGS)
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
