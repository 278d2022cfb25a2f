"""The synthetic corpus: determinism, correct answers (checked by small independent evaluators
that read the rendered text), the question/answer split, held-out surface forms, spec effects
and input validation."""

from __future__ import annotations

import ast
import hashlib
import operator
import os
import random
import re
import subprocess
import sys

import pytest

from tokreason.experiments.data.synthetic import (
    FAMILIES,
    GENERATOR_VERSION,
    Problem,
    ProblemSpec,
    generate_corpus,
    generate_problems,
    make_document,
    sample_problem,
)

SEEN = ProblemSpec()
UNSEEN = ProblemSpec(templates="unseen")

# One distinctive marker per held-out surface form.
UNSEEN_MARKERS = {
    "arithmetic": ("= ?\nA:", "[calc]", "=>"),
    "variables": (":=", "Q: If"),
    "comparison": (" | ", "with < or >"),
    "word_problem": ("Problem:", "Solution:", "•", "→"),
}
ALL_MARKERS = tuple(m for ms in UNSEEN_MARKERS.values() for m in ms) + ("Q:", "\nA:")


def _problems(family: str, spec: ProblemSpec, n: int = 600, seed: int = 3) -> list[Problem]:
    return generate_problems(seed, n, "test", spec, families=(family,))


# --------------------------------------------------------------------------------------------
# independent evaluators


_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}


def _eval_expr(src: str) -> int:
    def ev(node: ast.AST) -> int:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            return _BINOPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        raise AssertionError(f"unexpected syntax in {src!r}")

    return ev(ast.parse(src.replace("×", "*"), mode="eval"))


def _eval_arithmetic(question: str) -> int:
    words = re.findall(
        r"(Start with|Begin with|Take the number|[Aa]dd|[Ss]ubtract|Take away|[Mm]ultiply by|"
        r"[Mm]ultiply the result by) (\d+)",
        question,
    )
    if words:  # sentence-per-step form, applied in order
        value = int(words[0][1])
        for verb, n in words[1:]:
            verb = verb.lower()
            value = value + int(n) if verb == "add" else value * int(n) if "multiply" in verb else value - int(n)
        return value
    exprs = re.findall(r"[\d(][\d()+\-*× ]*[\d)]", question)
    return _eval_expr(max(exprs, key=len))


def _eval_variables(question: str) -> int:
    env: dict[str, int] = {}

    def val(tok: str) -> int:
        return env[tok] if tok.isalpha() else int(tok)

    ops = {"plus": "+", "minus": "-", "times": "*", "+": "+", "-": "-", "*": "*"}
    fns = {"+": operator.add, "-": operator.sub, "*": operator.mul}
    for clause in re.split(r"[.;,?]\s*|\band\b", question):
        clause = re.sub(r"^\s*(Q: If|Let|Set|Suppose|Then)\s+", "", clause).strip()
        if m := re.fullmatch(r"([a-z]) (?:is|equals|=|:=) ([a-z]|\d+) (plus|minus|times|[-+*]) ([a-z]|\d+)", clause):
            env[m[1]] = fns[ops[m[3]]](val(m[2]), val(m[4]))
        elif m := re.fullmatch(r"([a-z]) (?:be|is|=|:=|starts at) (\d+)", clause):
            env[m[1]] = int(m[2])
        elif m := re.fullmatch(r"([a-z]) is (\w+) (more|less) than ([a-z])", clause):
            env[m[1]] = val(m[4]) + val(m[2]) if m[3] == "more" else val(m[4]) - val(m[2])
        elif m := re.fullmatch(r"([a-z]) is ([a-z]) multiplied by (\d+)", clause):
            env[m[1]] = val(m[2]) * int(m[3])
        elif m := re.fullmatch(r"Add (\w+) to ([a-z]) to get ([a-z])", clause):
            env[m[3]] = val(m[2]) + val(m[1])
        elif m := re.fullmatch(r"Subtract (\w+) from ([a-z]) to get ([a-z])", clause):
            env[m[3]] = val(m[2]) - val(m[1])
        elif m := re.fullmatch(r"Multiply ([a-z]) by (\d+) to get ([a-z])", clause):
            env[m[3]] = val(m[1]) * int(m[2])
    query = re.findall(r"\b([a-z])\b", question)[-1]  # the last variable named is the one asked for
    return env[query]


_MAX_WORDS = ("top scorer", "most coins", "ran the farthest", "heaviest", "biggest collector", "tallest",
              "oldest", "fastest", "richest", "largest", "larger", "highest")
_MIN_WORDS = ("lowest scorer", "fewest coins", "shortest distance", "lightest", "smallest collector", "shortest",
              "youngest", "slowest", "poorest", "smallest", "smaller", "lowest")


def _eval_comparison(question: str) -> str:
    if m := re.fullmatch(r"Compare (\d+) and (\d+) with < or >: \d+", question):
        return "<" if int(m[1]) < int(m[2]) else ">"
    if m := re.fullmatch(r"Sorted from (smallest|largest) to \w+, (.*) become", question):
        nums = sorted(map(int, re.findall(r"\d+", m[2])), reverse=m[1] == "largest")
        return ", ".join(map(str, nums))
    tail = question.rsplit(".", 1)[-1] if "\n" not in question else question.rsplit("\n", 1)[-1]
    want_max = any(w in tail for w in _MAX_WORDS) and not any(w in tail for w in _MIN_WORDS)
    if question.startswith("Which is"):
        nums = list(map(int, re.findall(r"\d+", question)))
        return str(max(nums) if want_max else min(nums))
    facts = re.findall(r"([A-Z][a-z]+) is (\w+ than) ([A-Z][a-z]+)\.", question)
    if facts:  # chained relation: first[i] > second[i]
        above = {a: b for a, _, b in facts}
        people = set(above) | set(above.values())
        top = (people - set(above.values())).pop()
        order = [top]
        while order[-1] in above:
            order.append(above[order[-1]])
        if m := re.search(r"Is ([A-Z][a-z]+) \w+ than ([A-Z][a-z]+)\?$", question):
            return "Yes" if order.index(m[1]) < order.index(m[2]) else "No"
        return order[0] if want_max else order[-1]
    pairs = re.findall(r"([A-Z][a-z]+) (?:scored |has |ran |weighs |collected |is )?(\d+)", question)
    assert len(pairs) >= 2, question
    return (max if want_max else min)(pairs, key=lambda p: int(p[1]))[0]


def _eval_word_problem(question: str) -> int:
    have: dict[str, int] = {}
    share = None
    body = re.sub(r"^Problem: ", "", question)
    for sent in re.split(r"(?<=[.?])\s+|\n", body):
        sent = sent.removeprefix("• ")
        if m := re.fullmatch(r"(\w+) has (\d+) \w+(?: and (\w+) has (\d+) \w+)?\.", sent):
            have[m[1]] = int(m[2])
            if m[3]:
                have[m[3]] = int(m[4])
        elif m := re.fullmatch(r"(\w+) buys (\d+) \w+ of (\d+) \w+ each\.", sent):
            have[m[1]] += int(m[2]) * int(m[3])
        elif m := re.fullmatch(r"(\w+) (?:buys|finds|gets) (\d+) (?:more )?\w+(?: as a gift)?\.", sent):
            have[m[1]] += int(m[2])
        elif m := re.fullmatch(r"(\w+) (?:loses|sells|gives away) (\d+) \w+\.", sent):
            have[m[1]] -= int(m[2])
        elif m := re.fullmatch(r"(\w+) gives (\d+) \w+ to (\w+)\.", sent):
            have[m[1]] -= int(m[2])
            have[m[3]] += int(m[2])
        elif m := re.fullmatch(r"The number of \w+ (\w+) has (doubles|triples)\.", sent):
            have[m[1]] *= 2 if m[2] == "doubles" else 3
        elif m := re.fullmatch(r"(\w+) shares all the \w+ equally among (\d+) \w+\.", sent):
            share = have[m[1]] // int(m[2])
    assert all(v >= 0 for v in have.values()), question
    if re.search(r"each \w+ get", question):
        return share
    if "together" in question:
        return sum(have.values())
    m = re.search(r"does (\w+) have now\?", question) or re.search(r"(\w+) has(?: now is)?$", question)
    return have[m[1]]


# --------------------------------------------------------------------------------------------
# tests


def test_version_and_families() -> None:
    assert isinstance(GENERATOR_VERSION, int) and GENERATOR_VERSION >= 1
    assert FAMILIES == ("arithmetic", "variables", "comparison", "word_problem")


def test_same_seed_and_split_is_identical_and_prefix_stable() -> None:
    a = generate_corpus(7, 200, "train")
    assert a == generate_corpus(7, 200, "train")
    assert generate_corpus(7, 50, "train") == a[:50]
    assert generate_problems(7, 40, "test", SEEN) == generate_problems(7, 40, "test", SEEN)


def test_different_split_or_seed_differs() -> None:
    a = generate_corpus(7, 100, "train")
    assert a != generate_corpus(7, 100, "validation")
    assert a != generate_corpus(8, 100, "train")
    assert set(a).isdisjoint(generate_corpus(7, 100, "validation"))


def test_identical_in_a_process_with_another_hash_seed() -> None:
    code = (
        "import hashlib; from tokreason.experiments.data.synthetic import generate_corpus, generate_problems, ProblemSpec;"
        "c = generate_corpus(11, 300, 'pretrain');"
        "p = generate_problems(11, 100, 'test', ProblemSpec(templates='unseen'));"
        "print(hashlib.sha256(repr((c, p)).encode()).hexdigest())"
    )
    expected = hashlib.sha256(
        repr((generate_corpus(11, 300, "pretrain"), generate_problems(11, 100, "test", UNSEEN))).encode()
    ).hexdigest()
    for hash_seed in ("0", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        assert out.stdout.strip() == expected


@pytest.mark.parametrize("spec", [SEEN, UNSEEN, ProblemSpec(min_digits=2, max_digits=4, min_steps=2, max_steps=5)])
@pytest.mark.parametrize("family", FAMILIES)
def test_text_is_question_plus_answer_plus_closing(family: str, spec: ProblemSpec) -> None:
    for p in _problems(family, spec, n=300):
        assert p.family == family
        assert p.text.startswith(p.question + p.answer)
        closing = p.text[len(p.question + p.answer) :]
        assert re.fullmatch(r"|\.| [a-z]+\.| \d+", closing), (p.text, closing)
        assert p.answer.startswith(" ") and p.answer.strip(), p
        assert p.question == p.question.rstrip(), p


EVALUATORS = {
    "arithmetic": lambda q: str(_eval_arithmetic(q)),
    "variables": lambda q: str(_eval_variables(q)),
    "comparison": _eval_comparison,
    "word_problem": lambda q: str(_eval_word_problem(q)),
}


@pytest.mark.parametrize(
    "spec", [SEEN, UNSEEN, ProblemSpec(min_digits=1, max_digits=1, min_steps=4, max_steps=6), ProblemSpec(3, 4, 1, 2)]
)
@pytest.mark.parametrize("family", FAMILIES)
def test_answers_are_correct(family: str, spec: ProblemSpec) -> None:
    for p in _problems(family, spec):
        assert p.answer.strip() == EVALUATORS[family](p.question), p


def test_answers_are_non_negative_integers() -> None:
    for family in ("arithmetic", "variables", "word_problem"):
        for p in _problems(family, ProblemSpec(min_digits=1, max_digits=3, min_steps=3, max_steps=6)):
            assert p.answer.strip().isdigit(), p


def test_unseen_markers_never_occur_in_seen_corpus() -> None:
    corpus = "\n".join(generate_corpus(0, 5000, "train"))
    corpus += "\n".join(p.text for p in generate_problems(0, 2000, "test", SEEN))
    for marker in ALL_MARKERS:
        assert marker not in corpus, marker


@pytest.mark.parametrize("family", FAMILIES)
def test_every_unseen_problem_uses_a_held_out_form(family: str) -> None:
    problems = _problems(family, UNSEEN, n=400)
    for p in problems:
        assert any(m in p.text for m in UNSEEN_MARKERS[family]), p
    for marker in UNSEEN_MARKERS[family]:  # every held-out form is actually drawn
        assert any(marker in p.text for p in problems), marker


def test_seen_forms_are_varied() -> None:
    # Each family draws from several surface forms: count distinct question "shapes".
    for family in FAMILIES:
        shapes = {re.sub(r"[A-Z][a-z]+|\b[a-z]\b|\d+", "#", p.question)[:12] for p in _problems(family, SEEN)}
        assert len(shapes) >= 4, (family, shapes)


def _question_numbers(family: str, spec: ProblemSpec) -> list[int]:
    return [int(n) for p in _problems(family, spec, n=300) for n in re.findall(r"\d+", p.question)]


def test_larger_digits_give_larger_operands() -> None:
    small = ProblemSpec(min_digits=1, max_digits=1)
    big = ProblemSpec(min_digits=4, max_digits=5)
    assert max(_question_numbers("comparison", small)) <= 9
    assert min(_question_numbers("comparison", big)) >= 1000
    for family in ("arithmetic", "variables", "word_problem"):
        s, b = _question_numbers(family, small), _question_numbers(family, big)
        assert sum(b) / len(b) > 100 * sum(s) / len(s), family
    # leading operands of arithmetic are always in range
    for p in _problems("arithmetic", big, n=200):
        assert 1000 <= int(re.search(r"\d+", p.question)[0]) < 100_000


def test_steps_control_the_number_of_operations() -> None:
    for steps in (1, 4):
        spec = ProblemSpec(min_steps=steps, max_steps=steps)
        for p in _problems("arithmetic", spec, n=200):
            if "with" in p.question or "number" in p.question:  # sentence-per-step form
                continue
            expr = max(re.findall(r"[\d(][\d()+\-*× ]*[\d)]", p.question), key=len)
            assert len(re.findall(r" [-+*×] ", expr)) == steps, p
        for p in _problems("variables", spec, n=200):
            assert len(set(re.findall(r"\b([a-z])\b", p.question))) == steps + 1, p


def test_make_document_and_corpus_shape() -> None:
    rng = random.Random(0)
    docs = [make_document(rng, SEEN, families=("arithmetic",), min_problems=1, max_problems=1) for _ in range(50)]
    assert all(doc == doc.strip() and doc for doc in docs)
    corpus = generate_corpus(1, 300, "train")
    assert len(corpus) == 300 and len(set(corpus)) == 300
    # single-family documents contain only that family's text
    arith = generate_corpus(1, 50, "train", families=("arithmetic",))
    assert not any("How many" in d or " than " in d for d in arith)
    assert generate_corpus(1, 0, "train") == []


def test_problems_cycle_through_families() -> None:
    problems = generate_problems(0, 40, "test", SEEN)
    assert [p.family for p in problems] == list(FAMILIES) * 10


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(min_digits=0),
        dict(min_digits=3, max_digits=2),
        dict(min_steps=0),
        dict(min_steps=4, max_steps=3),
        dict(templates="held_out"),
    ],
)
def test_bad_spec_raises(kwargs: dict) -> None:
    with pytest.raises(ValueError, match=str(next(iter(kwargs.values())))):
        ProblemSpec(**kwargs)


def test_unknown_family_raises() -> None:
    with pytest.raises(ValueError, match="geometry"):
        sample_problem(random.Random(0), "geometry", SEEN)
    with pytest.raises(ValueError, match="geometry"):
        generate_corpus(0, 10, "train", families=("arithmetic", "geometry"))
    with pytest.raises(ValueError, match="geometry"):
        generate_problems(0, 10, "test", SEEN, families=("geometry",))
    with pytest.raises(ValueError):
        generate_problems(0, 10, "test", SEEN, families=())
