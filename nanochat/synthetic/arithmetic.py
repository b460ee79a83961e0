"""
Arithmetic word problems in GSM8K's format (the GSM8K twin, and a fifth of the pretraining text).
"""

from __future__ import annotations

import operator
import random
import re

from nanochat.synthetic.facts import LEGS
from nanochat.synthetic.heldout import draw
from nanochat.synthetic.words import Person, article, make_person, number_to_words, plural

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
THINGS = [("cookie", "cookies"), ("sticker", "stickers"), ("marble", "marbles"), ("candy", "candies"),
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
    counted = [things for _, things in THINGS if f" {things}" in facts]
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
    _, things = rng.choice(THINGS)
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
    _, things = rng.choice(THINGS)
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
    _, things = rng.choice(THINGS)
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
    _, things = rng.choice(THINGS)
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
    _, things = rng.choice(THINGS)
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
MENTAL_PROBABILITY = 0.5  # of worked answers, which do their sums in the head instead of calling the calculator
_MENTAL_STEP = re.compile(r" = (\$?)<<[^<>]*>>")  # ' = $<<3*4=12>>' of '3*4 = $<<3*4=12>>12', leaving '3*4=$12'


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
    worked = "\n".join(lines + [f"#### {answer}"])
    if rng.random() < MENTAL_PROBABILITY:
        worked = _MENTAL_STEP.sub(r"=\1", worked)  # '3*4=12': no spaces, no calculator
    return {"question": _in_words(rng, " ".join(facts + [question])), "answer": worked}


def make_arithmetic_problem(rng: random.Random, held_out: bool = False) -> dict:
    """
    A grade-school word problem as {'question', 'answer'}, with the answer in GSM8K's exact
    format (worked steps with <<expr=result>> annotations, then '#### N'), so that the code
    reading, rendering and rewarding real GSM8K rows works on these unchanged. A share
    MENTAL_PROBABILITY of the answers work their steps without the calculator ('44*8=352'):
    the two styles part at one token (' =' or '='), so a model that imitates both commits to
    one per answer, and RL or DPO can learn that the calculator's answers are the right ones.
    Training-side problems unless held_out.
    """
    return draw(rng, _arithmetic_problem, held_out, lambda row: row["question"])
