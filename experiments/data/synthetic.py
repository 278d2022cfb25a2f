"""Seeded synthetic corpus of procedural text.

Every sentence group is a *problem*: a short text whose last few tokens (the answer) need a
multi-step computation over what came before. The same generator is the embedded default
pretraining corpus and the source of benchmark problems, so every problem knows where its
answer starts (`Problem.question` / `Problem.answer`).

Four families: arithmetic, variable tracking, comparisons and word problems. Each family has
"seen" surface forms (the only ones used in corpora by default) and "unseen" ones held out for a
shifted benchmark split; `ProblemSpec` controls operand sizes, the number of steps and which
surface forms are drawn.

Determinism: each (seed, split) pair seeds its own `random.Random` from a SHA-256 of
(seed, split, GENERATOR_VERSION), so output is identical across processes and Python runs, and
a corpus of N documents is a prefix of the corpus of N + k documents with the same seed/split.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Callable, Sequence, TypeVar

GENERATOR_VERSION: int = 1  # bump whenever the generated text changes (it is part of cache keys)

FAMILIES: tuple[str, ...] = ("arithmetic", "variables", "comparison", "word_problem")
TEMPLATE_SETS: tuple[str, ...] = ("seen", "unseen")


@dataclass(frozen=True)
class ProblemSpec:
    min_digits: int = 1  # operand sizes, in decimal digits
    max_digits: int = 3
    min_steps: int = 1  # number of operations / chained facts
    max_steps: int = 3
    templates: str = "seen"  # "seen" (corpus surface forms) or "unseen" (held-out surface forms)

    def __post_init__(self) -> None:
        for name in ("min_digits", "max_digits", "min_steps", "max_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"ProblemSpec.{name}={value!r} is invalid; it must be an integer >= 1")
        if self.min_digits > self.max_digits:
            raise ValueError(f"ProblemSpec min_digits={self.min_digits} > max_digits={self.max_digits}")
        if self.min_steps > self.max_steps:
            raise ValueError(f"ProblemSpec min_steps={self.min_steps} > max_steps={self.max_steps}")
        if self.templates not in TEMPLATE_SETS:
            raise ValueError(f"ProblemSpec.templates={self.templates!r} is invalid; valid: {', '.join(TEMPLATE_SETS)}")


@dataclass(frozen=True)
class Problem:
    family: str
    question: str  # text up to where the answer starts; never ends in whitespace
    answer: str  # exactly as it follows the question, leading space included (e.g. " 42")
    text: str  # question + answer + closing (e.g. "." or " apples."), as it appears in the corpus


# --------------------------------------------------------------------------------------------
# vocabulary

_NAMES = (
    "Ann", "Ben", "Cara", "Dev", "Eli", "Fay", "Gus", "Hana", "Ivo", "Jade", "Kai", "Lena",
    "Milo", "Nia", "Omar", "Pia", "Quinn", "Rosa", "Sam", "Tara", "Uma", "Vic", "Wes", "Yuri",
    "Zoe", "Leo", "Mia", "Noah", "Ravi", "Sofia", "Theo", "Ines", "Ali", "Chen", "Emma", "Lucas",
    "Maya", "Aiko", "Bruno", "Dara", "Felix", "Greta", "Hugo", "Iris", "Jonas", "Kira",
)
_OBJECTS = (
    ("apple", "apples"), ("marble", "marbles"), ("sticker", "stickers"), ("coin", "coins"),
    ("book", "books"), ("pencil", "pencils"), ("cookie", "cookies"), ("card", "cards"),
    ("shell", "shells"), ("stamp", "stamps"), ("balloon", "balloons"), ("crayon", "crayons"),
    ("egg", "eggs"), ("flower", "flowers"), ("bead", "beads"), ("ticket", "tickets"),
)
_CONTAINERS = ("bags", "boxes", "packs", "jars", "baskets")
_LETTERS = "abcdefghjkmnpqrstuvwxyz"  # no i, l, o: easy to misread

# (fact format, word for the maximum, word for the minimum); facts read "<Name> <verb> <v> <unit>"
_ATTRIBUTES = (
    ("{e} scored {v} points", "top scorer", "lowest scorer"),
    ("{e} has {v} coins", "one with the most coins", "one with the fewest coins"),
    ("{e} ran {v} meters", "one who ran the farthest", "one who ran the shortest distance"),
    ("{e} weighs {v} grams", "heaviest", "lightest"),
    ("{e} collected {v} stamps", "biggest collector", "smallest collector"),
    ("{e} is {v} cm tall", "tallest", "shortest"),
)
# (relation, word for the first of the order, word for the last)
_RELATIONS = (
    ("taller than", "tallest", "shortest"),
    ("older than", "oldest", "youngest"),
    ("faster than", "fastest", "slowest"),
    ("heavier than", "heaviest", "lightest"),
    ("richer than", "richest", "poorest"),
)

_DOC_INTROS = (
    "Here are some practice exercises.",
    "Let us work through a few problems.",
    "Some quick exercises.",
    "Warm-up set.",
    "Read each one carefully.",
    "A few worked examples follow.",
)
_CONNECTORS = ("Next.", "Here is another.", "One more.", "Moving on.", "Try this one too.", "Now a new one.")


# --------------------------------------------------------------------------------------------
# numbers and operation chains (shared by several families)


# random.randint / random.choice are slow (rejection sampling through several Python frames);
# these draws are the hot path of corpus generation, so use one random() call each. The bias is
# below 2**-40 for the ranges used here; huge ranges fall back to the exact method.
def _randint(rng: random.Random, lo: int, hi: int) -> int:
    span = hi - lo + 1
    return lo + int(rng.random() * span) if span < 1 << 40 else rng.randint(lo, hi)


T = TypeVar("T")


def _choice(rng: random.Random, seq: Sequence[T]) -> T:
    return seq[int(rng.random() * len(seq))]


def _num(rng: random.Random, lo_digits: int, hi_digits: int) -> int:
    """A positive integer with a digit count drawn uniformly from [lo_digits, hi_digits]."""
    d = _randint(rng, lo_digits, hi_digits)
    return _randint(rng, 1 if d == 1 else 10 ** (d - 1), 10**d - 1)


def _factor(rng: random.Random, spec: ProblemSpec) -> int:
    # Multipliers have at most two digits so chained products stay readable.
    d = min(_randint(rng, spec.min_digits, spec.max_digits), 2)
    return _randint(rng, 2 if d == 1 else 10 ** (d - 1), 10**d - 1)


def _subtrahend(rng: random.Random, spec: ProblemSpec, value: int) -> int | None:
    """An in-range operand <= value (so results stay non-negative), or None if none exists."""
    if value < 10 ** (spec.min_digits - 1) or value < 1:
        return None
    d = _randint(rng, spec.min_digits, min(spec.max_digits, len(str(value))))
    return _randint(rng, 1 if d == 1 else 10 ** (d - 1), min(10**d - 1, value))


def _value_cap(spec: ProblemSpec) -> int:
    return 10 ** (spec.max_digits + 3)


def _next_op(rng: random.Random, spec: ProblemSpec, value: int) -> tuple[str, int]:
    """One left-to-right step: (op, operand) with op in + - *, keeping every value >= 0 and bounded."""
    r = rng.random()
    if r < 0.3:
        n = _factor(rng, spec)
        if value * n <= _value_cap(spec):
            return "*", n
    elif r < 0.65:
        n = _subtrahend(rng, spec, value)
        if n is not None:
            return "-", n
    return "+", _num(rng, spec.min_digits, spec.max_digits)


def _apply(op: str, a: int, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def _steps(rng: random.Random, spec: ProblemSpec) -> int:
    return _randint(rng, spec.min_steps, spec.max_steps)


def _join_list(items: Sequence[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _distinct_nums(rng: random.Random, spec: ProblemSpec, k: int) -> list[int]:
    lo = 1 if spec.min_digits == 1 else 10 ** (spec.min_digits - 1)
    k = min(k, 10**spec.max_digits - lo)  # tiny ranges cannot hold many distinct values
    seen: set[int] = set()
    out: list[int] = []
    while len(out) < k:
        v = _num(rng, spec.min_digits, spec.max_digits)
        if v not in seen:
            seen.add(v)
            out.append(v)
    return out


# A template renders (question, answer, closing). Templates draw their own content so that a
# family can mix structurally different problem types.
Rendered = tuple[str, str, str]
Template = Callable[[random.Random, ProblemSpec], Rendered]


# --------------------------------------------------------------------------------------------
# arithmetic: chained + - x, evaluated left to right (parentheses make the written form agree)


def _arith_chain(rng: random.Random, spec: ProblemSpec) -> tuple[int, list[tuple[str, int]], int]:
    value = start = _num(rng, spec.min_digits, spec.max_digits)
    ops = []
    for _ in range(_steps(rng, spec)):
        op, n = _next_op(rng, spec, value)
        ops.append((op, n))
        value = _apply(op, value, n)
    return start, ops, value


def _expr(start: int, ops: list[tuple[str, int]], times: str) -> str:
    s, additive = str(start), False
    for op, n in ops:
        if op == "*":
            if additive:  # (a + b) x c: left-to-right value with standard precedence
                s = f"({s})"
            s, additive = f"{s} {times} {n}", False
        else:
            s, additive = f"{s} {op} {n}", True
    return s


def _arith_compute(rng: random.Random, spec: ProblemSpec) -> Rendered:
    start, ops, value = _arith_chain(rng, spec)
    lead = _choice(rng, ("Compute", "Calculate", "Evaluate"))
    cue = _choice(rng, ("The result is", "The value is", "This gives"))
    return f"{lead} {_expr(start, ops, '×')}. {cue}", f" {value}", "."


def _arith_equals(rng: random.Random, spec: ProblemSpec) -> Rendered:
    start, ops, value = _arith_chain(rng, spec)
    lead = _choice(rng, ("Working it out,", "Step by step,", "Doing the math,"))
    return f"{lead} {_expr(start, ops, '*')} equals", f" {value}", "."


def _arith_question(rng: random.Random, spec: ProblemSpec) -> Rendered:
    start, ops, value = _arith_chain(rng, spec)
    return f"What is {_expr(start, ops, '×')}? The answer is", f" {value}", "."


def _arith_person(rng: random.Random, spec: ProblemSpec) -> Rendered:
    start, ops, value = _arith_chain(rng, spec)
    name = _choice(rng, _NAMES)
    verb = _choice(rng, ("works out", "computes", "checks"))
    return f"{name} {verb} {_expr(start, ops, '*')} and gets", f" {value}", "."


def _arith_words(rng: random.Random, spec: ProblemSpec) -> Rendered:
    start, ops, value = _arith_chain(rng, spec)
    parts = [_choice(rng, ("Start with {n}.", "Begin with {n}.", "Take the number {n}.")).format(n=start)]
    for op, n in ops:
        if op == "+":
            form = _choice(rng, ("Add {n}.", "Then add {n}.", "Add {n} to it."))
        elif op == "-":
            form = _choice(rng, ("Subtract {n}.", "Take away {n}.", "Then subtract {n}."))
        else:
            form = _choice(rng, ("Multiply by {n}.", "Multiply the result by {n}.", "Then multiply by {n}."))
        parts.append(form.format(n=n))
    cue = _choice(rng, ("The final number is", "You end up with", "Now the number is"))
    return " ".join(parts) + " " + cue, f" {value}", "."


def _arith_qa(rng: random.Random, spec: ProblemSpec) -> Rendered:
    start, ops, value = _arith_chain(rng, spec)
    return f"Q: {_expr(start, ops, '*')} = ?\nA:", f" {value}", ""


def _arith_arrow(rng: random.Random, spec: ProblemSpec) -> Rendered:
    start, ops, value = _arith_chain(rng, spec)
    return f"[calc] {_expr(start, ops, '*')} =>", f" {value}", ""


# --------------------------------------------------------------------------------------------
# variable tracking: a chain of definitions, each from an earlier variable


def _var_program(rng: random.Random, spec: ProblemSpec) -> tuple[list[tuple[str, str, str, str]], str, int]:
    """Statements (target, source, op, operand) with op '' for the initial assignment; the query
    variable and its value. Operands are constants or (for + and -) earlier variables."""
    steps = _steps(rng, spec)
    names = rng.sample(_LETTERS, steps + 1) if steps + 1 <= len(_LETTERS) else [f"v{i}" for i in range(steps + 1)]
    values = {names[0]: _num(rng, spec.min_digits, spec.max_digits)}
    stmts = [(names[0], "", "", str(values[names[0]]))]
    for i in range(1, steps + 1):
        src = names[i - 1] if i == 1 or rng.random() < 0.7 else _choice(rng, names[:i])
        op, n = _next_op(rng, spec, values[src])
        operand = str(n)
        others = [v for v in names[:i] if v != src]
        if op != "*" and others and rng.random() < 0.3:  # reference another earlier variable
            other = _choice(rng, others)
            if op == "+" or values[other] <= values[src]:
                operand, n = other, values[other]
        values[names[i]] = _apply(op, values[src], n)
        stmts.append((names[i], src, op, operand))
    query = names[-1]
    return stmts, query, values[query]


_OP_WORDS = {"+": "plus", "-": "minus", "*": "times"}


def _vars_let(rng: random.Random, spec: ProblemSpec) -> Rendered:
    stmts, q, value = _var_program(rng, spec)
    (a, _, _, v0), rest = stmts[0], stmts[1:]
    parts = [f"Let {a} be {v0}."]
    for t, s, op, o in rest:
        parts.append(f"{t} {_choice(rng, ('is', 'equals'))} {s} {_OP_WORDS[op]} {o}.")
    cue = _choice(rng, ("So {q} is", "Therefore {q} equals", "That means {q} is"))
    return " ".join(parts) + " " + cue.format(q=q), f" {value}", "."


def _vars_formula(rng: random.Random, spec: ProblemSpec) -> Rendered:
    stmts, q, value = _var_program(rng, spec)
    (a, _, _, v0), rest = stmts[0], stmts[1:]
    parts = [f"Set {a} = {v0}."]
    for j, (t, s, op, o) in enumerate(rest):
        parts.append(f"{'Then ' if j == 0 else ''}{t} = {s} {op} {o}.")
    return " ".join(parts) + f" {_choice(rng, ('So', 'Now', 'Hence'))} {q} =", f" {value}", "."


def _vars_more_less(rng: random.Random, spec: ProblemSpec) -> Rendered:
    stmts, q, value = _var_program(rng, spec)
    (a, _, _, v0), rest = stmts[0], stmts[1:]
    parts = [f"{a} starts at {v0}."]
    for t, s, op, o in rest:
        if op == "+":
            parts.append(f"{t} is {o} more than {s}.")
        elif op == "-":
            parts.append(f"{t} is {o} less than {s}.")
        else:
            parts.append(f"{t} is {s} multiplied by {o}.")
    return " ".join(parts) + f" The value of {q} is", f" {value}", "."


def _vars_steps(rng: random.Random, spec: ProblemSpec) -> Rendered:
    stmts, q, value = _var_program(rng, spec)
    (a, _, _, v0), rest = stmts[0], stmts[1:]
    parts = [f"Suppose {a} is {v0}."]
    for t, s, op, o in rest:
        if op == "+":
            parts.append(f"Add {o} to {s} to get {t}.")
        elif op == "-":
            parts.append(f"Subtract {o} from {s} to get {t}.")
        else:
            parts.append(f"Multiply {s} by {o} to get {t}.")
    return " ".join(parts) + f" What is {q}? {q} is", f" {value}", "."


def _vars_walrus(rng: random.Random, spec: ProblemSpec) -> Rendered:
    stmts, q, value = _var_program(rng, spec)
    body = "; ".join(f"{t} := {o}" if not op else f"{t} := {s} {op} {o}" for t, s, op, o in stmts)
    return f"{body}; output {q}:", f" {value}", ""


def _vars_qa(rng: random.Random, spec: ProblemSpec) -> Rendered:
    stmts, q, value = _var_program(rng, spec)
    defs = [f"{t} = {o}" if not op else f"{t} = {s} {op} {o}" for t, s, op, o in stmts]
    return f"Q: If {_join_list(defs)}, what is {q}?\nA:", f" {value}", ""


# --------------------------------------------------------------------------------------------
# comparisons: attributes, chained relations, extremes and orderings


def _cmp_attribute(rng: random.Random, spec: ProblemSpec) -> Rendered:
    fact, top, bottom = _choice(rng, _ATTRIBUTES)
    vals = _distinct_nums(rng, spec, _steps(rng, spec) + 1)
    people = rng.sample(_NAMES, len(vals))
    facts = _join_list([fact.format(e=e, v=v) for e, v in zip(people, vals)])
    want_max = rng.random() < 0.5
    pick = max if want_max else min
    winner = people[vals.index(pick(vals))]
    lead = _choice(rng, ("So the", "Of them, the", "Among them, the"))
    return f"{facts}. {lead} {top if want_max else bottom} is", f" {winner}", "."


def _cmp_chain(rng: random.Random, spec: ProblemSpec) -> Rendered:
    rel, first, last = _choice(rng, _RELATIONS)
    order = rng.sample(_NAMES, min(_steps(rng, spec) + 1, len(_NAMES)))  # order[0] is the most
    facts = [f"{order[i]} is {rel} {order[i + 1]}." for i in range(len(order) - 1)]
    rng.shuffle(facts)
    body = " ".join(facts)
    r = rng.random()
    if r < 0.35:
        return f"{body} So the {first} is", f" {order[0]}", "."
    if r < 0.7:
        return f"{body} So the {last} is", f" {order[-1]}", "."
    x, y = rng.sample(order, 2)
    yes = order.index(x) < order.index(y)
    return f"{body} Is {x} {rel} {y}?", " Yes" if yes else " No", "."


def _cmp_extreme(rng: random.Random, spec: ProblemSpec) -> Rendered:
    vals = _distinct_nums(rng, spec, _steps(rng, spec) + 1)
    want_max = rng.random() < 0.5
    ans = max(vals) if want_max else min(vals)
    nums = [str(v) for v in vals]
    if len(vals) == 2:
        word = "larger" if want_max else "smaller"
        return f"Which is {word}, {nums[0]} or {nums[1]}? The {word} one is", f" {ans}", "."
    word = "largest" if want_max else "smallest"
    return f"Which is the {word} of {_join_list(nums)}? The {word} is", f" {ans}", "."


def _cmp_sort(rng: random.Random, spec: ProblemSpec) -> Rendered:
    vals = _distinct_nums(rng, spec, _steps(rng, spec) + 1)
    up = rng.random() < 0.5
    ordered = ", ".join(str(v) for v in sorted(vals, reverse=not up))
    how = "from smallest to largest" if up else "from largest to smallest"
    return f"Sorted {how}, {_join_list([str(v) for v in vals])} become", f" {ordered}", "."


def _cmp_table(rng: random.Random, spec: ProblemSpec) -> Rendered:
    label = _choice(rng, ("points", "coins", "meters", "grams", "votes"))
    vals = _distinct_nums(rng, spec, _steps(rng, spec) + 1)
    people = rng.sample(_NAMES, len(vals))
    want_max = rng.random() < 0.5
    winner = people[vals.index(max(vals) if want_max else min(vals))]
    row = " | ".join(f"{e} {v}" for e, v in zip(people, vals))
    return f"{label}: {row}\n{'highest' if want_max else 'lowest'}:", f" {winner}", ""


def _cmp_symbol(rng: random.Random, spec: ProblemSpec) -> Rendered:
    a, b = _distinct_nums(rng, spec, 2)
    return f"Compare {a} and {b} with < or >: {a}", " <" if a < b else " >", f" {b}"


# --------------------------------------------------------------------------------------------
# word problems: one or two people, buy / find / lose / give / bags of / double / share


def _plural(n: int, obj: tuple[str, str]) -> str:
    return f"{n} {obj[0] if n == 1 else obj[1]}"


def _gain_sentence(rng: random.Random, who: str, n: int, obj: tuple[str, str]) -> str:
    form = _choice(rng, ("{w} buys {n} more {o}.", "{w} finds {n} {o}.", "{w} gets {n} {o} as a gift."))
    return form.format(w=who, n=n, o=obj[0] if n == 1 else obj[1])


def _story_start(rng: random.Random, spec: ProblemSpec):
    """The object, one or two people, what they have and the sentence that says it."""
    obj = _choice(rng, _OBJECTS)
    p, q = rng.sample(_NAMES, 2)
    two = rng.random() < 0.5
    lo, hi = spec.min_digits, spec.max_digits
    have = {p: _num(rng, lo, hi)}
    if two:
        have[q] = _num(rng, lo, hi)
        sents = [f"{p} has {_plural(have[p], obj)} and {q} has {_plural(have[q], obj)}."]
    else:
        sents = [f"{p} has {_plural(have[p], obj)}."]
    return obj, p, q, two, have, sents


def _story(rng: random.Random, spec: ProblemSpec) -> tuple[list[str], tuple[str, str], str, str, int]:
    """Story sentences, the object, the target kind ('person', 'each', 'total'), the target name
    and the answer."""
    obj, p, q, two, have, sents = _story_start(rng, spec)
    lo, hi = spec.min_digits, spec.max_digits
    steps = _steps(rng, spec)
    cap = _value_cap(spec)
    for i in range(steps):
        who = q if two and rng.random() < 0.4 else p
        other = p if who == q else q
        r = rng.random()
        if i == steps - 1 and r < 0.2 and have[who] >= 4:  # share equally, only as the last step
            ks = [k for k in range(2, 10) if have[who] % k == 0]
            if ks:
                k = _choice(rng, ks)
                group = _choice(rng, ("friends", "classmates", "cousins"))
                sents.append(f"{who} shares all the {obj[1]} equally among {k} {group}.")
                return sents, obj, "each", group[:-1], have[who] // k
        if r < 0.3:
            n = _num(rng, lo, hi)
            sents.append(_gain_sentence(rng, who, n, obj))
            have[who] += n
            continue
        if r < 0.45:
            k = _randint(rng, 2, 5)
            n = _factor(rng, spec)
            if have[who] + k * n <= cap:
                sents.append(f"{who} buys {k} {_choice(rng, _CONTAINERS)} of {n} {obj[1]} each.")
                have[who] += k * n
                continue
        elif r < 0.55:
            k = _choice(rng, (2, 3))
            if have[who] * k <= cap:
                sents.append(f"The number of {obj[1]} {who} has {'doubles' if k == 2 else 'triples'}.")
                have[who] *= k
                continue
        n = _subtrahend(rng, spec, have[who])
        if n is None:  # nothing in range to take away: a gain keeps counts non-negative
            n = _num(rng, lo, hi)
            sents.append(_gain_sentence(rng, who, n, obj))
            have[who] += n
        elif two and rng.random() < 0.5:
            sents.append(f"{who} gives {_plural(n, obj)} to {other}.")
            have[who] -= n
            have[other] += n
        else:
            form = _choice(rng, ("{w} loses {n}.", "{w} sells {n}.", "{w} gives away {n}."))
            sents.append(form.format(w=who, n=_plural(n, obj)))
            have[who] -= n
    if two and rng.random() < 0.3:
        return sents, obj, "total", f"{p} and {q}", have[p] + have[q]
    target = q if two and rng.random() < 0.5 else p
    return sents, obj, "person", target, have[target]


def _how_many(obj: tuple[str, str], kind: str, target: str) -> str:
    if kind == "each":
        return f"How many {obj[1]} does each {target} get?"
    if kind == "total":
        return f"How many {obj[1]} do {target} have together?"
    return f"How many {obj[1]} does {target} have now?"


def _statement(kind: str, target: str) -> str:
    """The sentence start right before the answer, lower-cased where it may follow a comma."""
    if kind == "each":
        return f"each {target} gets"
    if kind == "total":
        return "together they have"
    return f"{target} has"


def _cap(s: str) -> str:
    return s[0].upper() + s[1:]


def _unit(n: int, obj: tuple[str, str]) -> str:
    return f" {obj[0] if n == 1 else obj[1]}."


def _wp_ask(rng: random.Random, spec: ProblemSpec) -> Rendered:
    sents, obj, kind, target, ans = _story(rng, spec)
    return f"{' '.join(sents)} {_how_many(obj, kind, target)} {_cap(_statement(kind, target))}", f" {ans}", _unit(ans, obj)


def _wp_end(rng: random.Random, spec: ProblemSpec) -> Rendered:
    sents, obj, kind, target, ans = _story(rng, spec)
    lead = _choice(rng, ("In the end,", "After all this,", "At the end of the day,"))
    return f"{' '.join(sents)} {lead} {_statement(kind, target)}", f" {ans}", _unit(ans, obj)


def _wp_count(rng: random.Random, spec: ProblemSpec) -> Rendered:
    sents, obj, kind, target, ans = _story(rng, spec)
    subject = {"each": f"each {target} gets", "total": "they have together"}.get(kind, f"{target} has now")
    return f"{' '.join(sents)} The number of {obj[1]} {subject} is", f" {ans}", "."


def _wp_answer(rng: random.Random, spec: ProblemSpec) -> Rendered:
    sents, obj, kind, target, ans = _story(rng, spec)
    return f"{' '.join(sents)} {_how_many(obj, kind, target)} The answer is", f" {ans}", "."


def _wp_problem(rng: random.Random, spec: ProblemSpec) -> Rendered:
    sents, obj, kind, target, ans = _story(rng, spec)
    return f"Problem: {' '.join(sents)} {_how_many(obj, kind, target)}\nSolution:", f" {ans}", ""


def _wp_bullets(rng: random.Random, spec: ProblemSpec) -> Rendered:
    sents, obj, kind, target, ans = _story(rng, spec)
    bullets = "\n".join(f"• {s}" for s in sents)
    return f"{bullets}\n{_how_many(obj, kind, target)} →", f" {ans}", ""


# --------------------------------------------------------------------------------------------
# registry and public API

_TEMPLATES: dict[str, dict[str, tuple[Template, ...]]] = {
    "arithmetic": {
        "seen": (_arith_compute, _arith_equals, _arith_question, _arith_person, _arith_words),
        "unseen": (_arith_qa, _arith_arrow),
    },
    "variables": {
        "seen": (_vars_let, _vars_formula, _vars_more_less, _vars_steps),
        "unseen": (_vars_walrus, _vars_qa),
    },
    "comparison": {
        "seen": (_cmp_attribute, _cmp_chain, _cmp_extreme, _cmp_sort),
        "unseen": (_cmp_table, _cmp_symbol),
    },
    "word_problem": {
        "seen": (_wp_ask, _wp_end, _wp_count, _wp_answer),
        "unseen": (_wp_problem, _wp_bullets),
    },
}


def _check_families(families: Sequence[str]) -> tuple[str, ...]:
    families = tuple(families)
    if not families:
        raise ValueError(f"families is empty; valid families: {', '.join(FAMILIES)}")
    for f in families:
        if f not in _TEMPLATES:
            raise ValueError(f"unknown family {f!r}; valid families: {', '.join(FAMILIES)}")
    return families


def _check_spec(spec: ProblemSpec) -> None:
    if not isinstance(spec, ProblemSpec):
        raise ValueError(f"spec must be a ProblemSpec, got {type(spec).__name__}")


def _rng_for(seed: int, split: str) -> random.Random:
    # hashlib, not hash(): str hashing is salted per process (PYTHONHASHSEED).
    digest = hashlib.sha256(f"tokreason-synthetic|{seed}|{split}|{GENERATOR_VERSION}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def sample_problem(rng: random.Random, family: str, spec: ProblemSpec) -> Problem:
    """One problem of `family` drawn with `rng`, using the surface forms named by spec.templates."""
    if family not in _TEMPLATES:
        raise ValueError(f"unknown family {family!r}; valid families: {', '.join(FAMILIES)}")
    _check_spec(spec)
    question, answer, closing = _choice(rng, _TEMPLATES[family][spec.templates])(rng, spec)
    return Problem(family, question, answer, question + answer + closing)


def make_document(
    rng: random.Random,
    spec: ProblemSpec,
    families: Sequence[str] = FAMILIES,
    min_problems: int = 2,
    max_problems: int = 6,
) -> str:
    """Several problems joined into one document, sometimes with short connecting sentences."""
    families = _check_families(families)
    _check_spec(spec)
    if not 1 <= min_problems <= max_problems:
        raise ValueError(f"need 1 <= min_problems <= max_problems, got {min_problems} and {max_problems}")
    sep = "\n" if rng.random() < 0.5 else " "
    parts = [_choice(rng, _DOC_INTROS)] if rng.random() < 0.3 else []
    for i in range(_randint(rng, min_problems, max_problems)):
        if i and rng.random() < 0.2:
            parts.append(_choice(rng, _CONNECTORS))
        parts.append(sample_problem(rng, _choice(rng, families), spec).text)
    return sep.join(parts)


def generate_corpus(
    seed: int, num_docs: int, split: str, spec: ProblemSpec = ProblemSpec(), families: Sequence[str] = FAMILIES
) -> list[str]:
    """`num_docs` documents for (seed, split); deterministic, and a prefix of any longer corpus."""
    families = _check_families(families)
    _check_spec(spec)
    if num_docs < 0:
        raise ValueError(f"num_docs={num_docs} is invalid; it must be >= 0")
    rng = _rng_for(seed, split)
    return [make_document(rng, spec, families) for _ in range(num_docs)]


def generate_problems(
    seed: int, num: int, split: str, spec: ProblemSpec, families: Sequence[str] = FAMILIES
) -> list[Problem]:
    """`num` problems for (seed, split), cycling through `families` so each gets an equal share."""
    families = _check_families(families)
    _check_spec(spec)
    if num < 0:
        raise ValueError(f"num={num} is invalid; it must be >= 0")
    rng = _rng_for(seed, split)
    return [sample_problem(rng, families[i % len(families)], spec) for i in range(num)]
