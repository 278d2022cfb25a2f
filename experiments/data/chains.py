"""The embedded world: chains of elementary steps on a ten-hour clock (the digits 0-9).

A problem starts the clock at a digit and applies a few moves (forward d, back d, double), each
one step of modular arithmetic a small model learns as a table; the answer is where the clock
ends. One move at a time is within the embedded model's reach; all of them at once, in the
single forward pass that predicts the answer, is not, and the less the longer the chain.

Documents carry the procedural knowledge the way worked solutions do: a `worked` document writes
the position after each move, an `answer-only` document states the answer alone. Where the working
is written (`worked_style`): `thought`, between the thought markers right before the answer (the
embedded default: the base has read worked steps in the methods' own format), or `plain`, as a
sentence of the text before the question ("Working: 4 8."), the markers never around it (the papers'
premise: a base that has read working as text, and a method that moves it into thoughts). Evaluation asks for the answer directly, so thinking helps only
when a thought carries the intermediate positions (see the README, "The embedded laboratory").

Surface forms: "seen" ones make the corpus; "unseen" ones (other words for the same moves) are
held out for a shifted benchmark. Moves of min_move..max_move are the corpus's; larger moves are
a shift.

Determinism: each (seed, split) seeds its own random.Random from a SHA-256 of (seed, split,
GENERATOR_VERSION); a corpus of N documents is a prefix of the corpus of N + k."""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

from tokreason.methods.thoughts import THOUGHT_END, THOUGHT_START

GENERATOR_VERSION = 2  # bump whenever the generated text changes (it is part of cache keys)
MOVES = ("forward", "back", "double")
WORKED_STYLES = ("thought", "plain")
PLAIN_WORKING = "Working:"  # worked_style=plain: "<statement> Working: 4 8. <question> 8."


@dataclass(frozen=True)
class ChainSpec:
    min_steps: int = 1       # moves per problem
    max_steps: int = 3
    min_move: int = 1        # the d of "forward d" / "back d"
    max_move: int = 6
    templates: str = "seen"  # seen (the corpus's surface forms) | unseen (held out)

    def __post_init__(self) -> None:
        for name in ("min_steps", "max_steps", "min_move", "max_move"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}={value!r} is not valid; it must be an integer >= 1")
        if self.min_steps > self.max_steps:
            raise ValueError(f"min_steps={self.min_steps} > max_steps={self.max_steps}")
        if self.min_move > self.max_move or self.max_move > 9:
            raise ValueError(f"moves {self.min_move}..{self.max_move} are not valid; they must lie in 1..9")
        if self.templates not in ("seen", "unseen"):
            raise ValueError(f"templates={self.templates!r} is not valid; valid: seen, unseen")


@dataclass(frozen=True)
class Chain:
    question: str              # up to where the answer starts (never ends in whitespace)
    answer: str                # " 7": the final position, leading space included
    working: tuple[int, ...]   # the position after each move (the last is the answer)
    start: int
    moves: tuple[tuple[str, int], ...]
    ask_from: int = 0          # where the asking clause ("The hand is now on") starts in question

    @property
    def thought(self) -> str:
        """The working as a thought's text: the position after each move, each after a space (" 4 8"),
        so that each is one token and the same token as a digit of the question or the answer."""
        return "".join(f" {v}" for v in self.working)

    def text(self, worked: bool, style: str = "thought") -> str:
        """The problem as a document: the answer alone, or with its working (module doc: `style`)."""
        if not worked:
            return f"{self.question}{self.answer}."
        if style == "plain":
            statement, ask = self.question[: self.ask_from], self.question[self.ask_from:]
            return f"{statement}{PLAIN_WORKING}{self.thought}. {ask}{self.answer}."
        return f"{self.question}{THOUGHT_START}{self.thought}{THOUGHT_END}{self.answer}."


# Surface forms: openings, the clause of each move, the question. {s} the start, {d} the move.
FORMS = {
    "seen": {
        "opening": ["The clock shows {s}.", "A dial points at {s}.", "The hand is on {s}."],
        "forward": ["moves {d} forward", "turns {d} forward", "goes {d} forward"],
        "back": ["moves {d} back", "turns {d} back", "goes {d} back"],
        "double": ["doubles", "doubles its number"],
        "subject": ["It", "Then it"],
        "question": ["Now it shows", "It ends on", "The hand is now on"],
    },
    "unseen": {
        "opening": ["The counter reads {s}.", "We begin with the digit {s}."],
        "forward": ["gains {d}", "is raised by {d}"],
        "back": ["loses {d}", "is lowered by {d}"],
        "double": ["is multiplied by two", "is times two"],
        "subject": ["The value", "After that it"],
        "question": ["The counter finally reads", "In the end the digit is"],
    },
}


def apply(position: int, move: str, d: int) -> int:
    if move == "forward":
        return (position + d) % 10
    if move == "back":
        return (position - d) % 10
    return (2 * position) % 10


def _rng(seed: int, split: str) -> random.Random:
    digest = hashlib.sha256(f"chains|{GENERATOR_VERSION}|{seed}|{split}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def make_chain(rng: random.Random, spec: ChainSpec) -> Chain:
    forms = FORMS[spec.templates]
    start, steps = rng.randrange(10), rng.randint(spec.min_steps, spec.max_steps)
    moves, working, position = [], [], start
    for _ in range(steps):
        move = rng.choice(MOVES)
        d = rng.randint(spec.min_move, spec.max_move) if move != "double" else 0
        position = apply(position, move, d)
        moves.append((move, d))
        working.append(position)
    clauses = [rng.choice(forms[m]).format(d=d) for m, d in moves]
    body = f"{rng.choice(forms['subject'])} " + ", then ".join(clauses) + "."
    statement = f"{rng.choice(forms['opening']).format(s=start)} {body} "
    question = f"{statement}{rng.choice(forms['question'])}"
    return Chain(question, f" {position}", tuple(working), start, tuple(moves), len(statement))


def generate_chains(seed: int, n: int, split: str, spec: ChainSpec = ChainSpec()) -> list[Chain]:
    rng = _rng(seed, split)
    return [make_chain(rng, spec) for _ in range(n)]


def generate_documents(seed: int, n: int, split: str, spec: ChainSpec = ChainSpec(), worked_fraction: float = 0.5,
                       per_document: int = 1, worked_style: str = "thought") -> list[str]:
    """n documents of `per_document` problems each; a problem is worked with probability
    worked_fraction (drawn from the same seeded stream, so the corpus is reproducible), its
    working written as worked_style says (the module doc)."""
    if not 0 <= worked_fraction <= 1:
        raise ValueError(f"worked_fraction={worked_fraction} is not valid; it must be in [0, 1]")
    if worked_style not in WORKED_STYLES:
        raise ValueError(f"worked_style={worked_style!r} is not valid; valid: {', '.join(WORKED_STYLES)}")
    rng = _rng(seed, split)
    docs = []
    for _ in range(n):
        chains = [make_chain(rng, spec) for _ in range(per_document)]
        docs.append(" ".join(c.text(rng.random() < worked_fraction, worked_style) for c in chains))
    return docs
