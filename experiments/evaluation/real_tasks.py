"""Real benchmarks (GSM8K, CommonsenseQA, MMLU-Pro, MATH-500, GPQA) read into `Benchmark`s.

Each benchmark is read in its standard record format, from a local file (.jsonl, .json, .csv,
.parquet) or through `datasets.load_dataset(hub, config, split=split)`, and asked zero-shot in
plain text (the models here are base LMs, not chat models):

- gsm8k: "Question: {question}\\nAnswer:"; exact match on the last number of a greedy solution,
  and the direct answer " {number}" scored teacher-forced (as Quiet-STaR reports it).
- csqa, mmlu_pro, gpqa: the question, then one "X. option" line per option, then "Answer:";
  likelihood accuracy over the continuations " A", " B", ..., and exact match on the letter the
  generation gives. GPQA's four options are shuffled per question, reproducibly.
- math500: "Problem: {problem}\\nPut the final answer in \\boxed{}.\\nSolution:"; exact match on
  the last \\boxed{} of the generation, both sides through `normalize_math_answer`.

A record that lacks a field a benchmark needs is a `UserError` naming the file, the first bad
line (jsonl) or record index (0-based, everything else) and the field. A generation with no
parsable answer is not an error: the extractor returns None and the caller scores it wrong."""
from __future__ import annotations

import csv
import functools
import hashlib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tokreason.experiments.errors import UserError, first_line
from tokreason.experiments.evaluation.tasks import Benchmark, Example
from tokreason.methods.verifier import last_boxed

REAL_BENCHMARKS: tuple[str, ...] = ("gsm8k", "csqa", "mmlu_pro", "math500", "gpqa")

LETTERS = "ABCDEFGHIJ"  # MMLU-Pro has up to ten options
FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


class BadRecord(Exception):
    """What is wrong with one record; the loader adds where the record is."""


# ---------------------------------------------------------------- extractors and normalisers

# A number as written in text: thousands separators only in groups of three (so "1,2,3" is three
# numbers), an optional "$", and a minus only when it is not a subtraction ("10-3" ends in 3).
_NUMBER_IN_TEXT = re.compile(r"(?:(?<![\w)])(-))?\$?((?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?)")
_WHOLE_NUMBER = re.compile(r"(-?)\$?((?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?)\.?")


def _canonical(sign: str, digits: str) -> str:
    """One spelling per value: no commas, no leading zeros, no trailing fractional zeros
    ("1,000.50" -> "1000.5", "18.0" -> "18", "-0" -> "0")."""
    whole, _, fraction = digits.replace(",", "").partition(".")
    whole, fraction = whole.lstrip("0") or "0", fraction.rstrip("0")
    number = whole + ("." + fraction if fraction else "")
    return "-" + number if sign and number != "0" else number


def canonical_number(text: str) -> str | None:
    """`text` as a canonical number ("$1,000." -> "1000"), or None when it is not one number."""
    match = _WHOLE_NUMBER.fullmatch(text.strip())
    return _canonical(match.group(1), match.group(2)) if match else None


def last_number(text: str) -> str | None:
    """The last number in `text`, canonical: commas dropped, "$" and a trailing period ignored,
    trailing fractional zeros dropped ("... is $1,000.00." -> "1000"); None when there is none."""
    matches = list(_NUMBER_IN_TEXT.finditer(text))
    if not matches:
        return None
    return _canonical(matches[-1].group(1) or "", matches[-1].group(2))


def choice_letter(text: str, letters: Sequence[str]) -> str | None:
    """The option letter a generation gives: MMLU-Pro's "answer is (X)" first, else the first
    standalone valid letter ("B", "(C)", "B. Paris"); None when there is none. A lone article
    "A" (or "I" among ten letters) reads as a letter: the usual cost of this extraction."""
    valid = "".join(re.escape(letter) for letter in letters)
    if not valid:
        return None
    stated = re.search(rf"(?i:answer is):?\s*\(?([{valid}])\)?(?![A-Za-z0-9])", text)
    if stated:
        return stated.group(1)
    standalone = re.search(rf"(?<![A-Za-z0-9])([{valid}])(?![A-Za-z0-9])", text)
    return standalone.group(1) if standalone else None


_UNIT_AT_END = re.compile(r"^(.*?\S)\s*\\(?:text|mbox|mathrm)\{\s*[A-Za-z][A-Za-z .]*\}(?:\^\{?\d+\}?)?$")
_TEXT_WRAPPER = re.compile(r"\\(?:text|textbf|textrm|mbox|mathrm)\{([^{}]*)\}")
_VARIABLE_ASSIGNMENT = re.compile(r"^\s*(?:[A-Za-z]|\\[A-Za-z]+)(?:_\{?\w+\}?)?\s*=(.+)$")
_FRAC_ARGUMENT = r"(\{[^{}]*\}|\\[A-Za-z]+|[^\\{}])"
_SHORT_FRAC = re.compile(r"\\frac" + _FRAC_ARGUMENT + _FRAC_ARGUMENT)


def _braced(argument: str) -> str:
    return argument if argument.startswith("{") else "{" + argument + "}"


def normalize_math_answer(answer: str) -> str:
    """A MATH final answer in one spelling, so equal answers compare equal as strings (in the
    spirit of Hendrycks et al.'s normaliser): no "$", \\left/\\right, spacing commands, degrees,
    percent signs, trailing units ("10\\text{ inches}" -> "10"), whitespace or trailing period;
    \\dfrac/\\tfrac -> \\frac; \\frac12 -> \\frac{1}{2}; 1/2 -> \\frac{1}{2}; \\sqrt2 -> \\sqrt{2};
    .5 -> 0.5; 1,000 -> 1000; "x = 3" -> "3"; \\text{Evelyn} -> Evelyn."""
    s = answer.replace("\n", " ").strip().rstrip(".")
    s = s.replace("\\$", "").replace("$", "")
    s = re.sub(r"\\(?:left|right)(?![A-Za-z])", "", s)
    s = re.sub(r"\\[!,;:]", "", s).replace("\\ ", " ").replace("\\displaystyle", "")
    s = re.sub(r"\\[dt]frac", r"\\frac", s)
    s = re.sub(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ", "", s).replace("°", "")
    s = s.replace("\\%", "").replace("%", "")
    unit = _UNIT_AT_END.match(s)
    if unit:
        s = unit.group(1)
    s = _TEXT_WRAPPER.sub(r"\1", s)
    if s.count("=") == 1:
        assignment = _VARIABLE_ASSIGNMENT.match(s)
        if assignment:
            s = assignment.group(1)
    s = re.sub(r"\s+", "", s)
    s = re.sub(r"\\sqrt(\w)", r"\\sqrt{\1}", s)
    s = _SHORT_FRAC.sub(lambda m: "\\frac" + _braced(m.group(1)) + _braced(m.group(2)), s)
    s = re.sub(r"^(-?)(\d+)/(\d+)$", r"\1\\frac{\2}{\3}", s)
    s = re.sub(r"(?<![\w.])\.(\d)", r"0.\1", s)
    if re.fullmatch(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?", s):
        s = s.replace(",", "")
    return s.rstrip(".")


# ---------------------------------------------------------------- record fields

def _text(record: dict, field: str) -> str:
    value = record.get(field)
    if value is None:
        raise BadRecord(f"missing field {field!r}")
    if not isinstance(value, str):
        raise BadRecord(f"field {field!r} must be a string, not {type(value).__name__}")
    if not value.strip():
        raise BadRecord(f"field {field!r} is empty")
    return value.strip()


def _string_list(record: dict, field: str) -> list[str]:
    value = record.get(field)
    if value is None:
        raise BadRecord(f"missing field {field!r}")
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise BadRecord(f"field {field!r} must be a list of strings")
    if len(value) < 2:
        raise BadRecord(f"field {field!r} must have at least two options, not {len(value)}")
    return [v.strip() for v in value]


def _index(value, field: str, size: int) -> int:
    # CSV cells are read as text, so "3" is as good as 3
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < size:
        raise BadRecord(f"field {field!r} must be an option index 0..{size - 1}, not {value!r}")
    return value


def lettered_prompt(question: str, options: Sequence[str], letters: Sequence[str]) -> str:
    lines = [f"Question: {question}"] + [f"{letter}. {option}" for letter, option in zip(letters, options)]
    return "\n".join(lines + ["Answer:"])


def _lettered_example(question: str, options: Sequence[str], letters: Sequence[str], gold: int) -> dict:
    return dict(prompt=lettered_prompt(question, options, letters), answer=letters[gold],
                choices=tuple(" " + letter for letter in letters), gold=gold)


# ---------------------------------------------------------------- one record -> Example fields

def gsm8k_example(record: dict, seed: int) -> dict:
    question = _text(record, "question")
    solution = _text(record, "answer")
    if "####" not in solution:
        raise BadRecord("field 'answer' has no final '#### <number>'")
    number = canonical_number(solution.rsplit("####", 1)[1])
    if number is None:
        raise BadRecord("field 'answer' has no number after its final '####'")
    return dict(prompt=f"Question: {question}\nAnswer:", answer=number, target=" " + number)


def csqa_example(record: dict, seed: int) -> dict:
    question = _text(record, "question")
    choices = record.get("choices")
    if choices is None:
        raise BadRecord("missing field 'choices'")
    labels = choices.get("label") if isinstance(choices, dict) else None
    texts = choices.get("text") if isinstance(choices, dict) else None
    if not (isinstance(labels, (list, tuple)) and isinstance(texts, (list, tuple)) and len(labels) == len(texts) >= 2
            and all(isinstance(t, str) for t in texts)):
        raise BadRecord("field 'choices' must be {'label': [...], 'text': [...]} with equal lists of two or more")
    if not all(isinstance(label, str) and re.fullmatch(r"[A-Z]", label) for label in labels) or len(set(labels)) < len(labels):
        raise BadRecord(f"field 'choices' must have distinct single capital letters as labels, not {list(labels)}")
    if record.get("answerKey") == "":
        raise BadRecord("field 'answerKey' is empty (CommonsenseQA's test split has no answers; use validation)")
    key = _text(record, "answerKey")
    if key not in labels:
        raise BadRecord(f"field 'answerKey' must be one of the labels {', '.join(labels)}, not {key!r}")
    return _lettered_example(question, [t.strip() for t in texts], labels, list(labels).index(key))


def mmlu_pro_example(record: dict, seed: int) -> dict:
    question = _text(record, "question")
    options = _string_list(record, "options")
    if len(options) > len(LETTERS):
        raise BadRecord(f"field 'options' has {len(options)} options; at most {len(LETTERS)} are lettered")
    letters = LETTERS[:len(options)]
    index = record.get("answer_index")
    letter = record.get("answer")
    if index is None and letter is None:
        raise BadRecord("missing field 'answer' (or 'answer_index')")
    if index is not None:
        index = _index(index, "answer_index", len(options))
    if letter is not None:
        if not (isinstance(letter, str) and letter.strip() in letters):
            raise BadRecord(f"field 'answer' must be one of the letters {letters[0]}..{letters[-1]}, not {letter!r}")
        if index is not None and letters.index(letter.strip()) != index:
            raise BadRecord(f"field 'answer_index' ({index}) disagrees with field 'answer' ({letter.strip()!r})")
    gold = index if index is not None else letters.index(letter.strip())
    return _lettered_example(question, options, letters, gold)


def math500_example(record: dict, seed: int) -> dict:
    problem = _text(record, "problem")
    answer = _text(record, "answer")
    return dict(prompt=f"Problem: {problem}\nPut the final answer in \\boxed{{}}.\nSolution:", answer=answer)


GPQA_OPTION_FIELDS = ("Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3")


def gpqa_order(question: str, seed: int) -> list[int]:
    """The shown order of GPQA's four options (0 = the correct one): sorted by a SHA-256 of the
    seed, the question and the option's slot, so it is the same in every process and Python."""
    def key(slot: int) -> bytes:
        return hashlib.sha256(f"{seed}\0{question}\0{slot}".encode()).digest()
    return sorted(range(len(GPQA_OPTION_FIELDS)), key=key)


def gpqa_example(record: dict, seed: int) -> dict:
    question = _text(record, "Question")
    options = [_text(record, field) for field in GPQA_OPTION_FIELDS]
    order = gpqa_order(question, seed)
    return _lettered_example(question, [options[slot] for slot in order], LETTERS[:len(order)], order.index(0))


# ---------------------------------------------------------------- the benchmarks

@dataclass(frozen=True)
class Format:
    needs: str                                # the fields a record needs, for error messages
    build: Callable[[dict, int], dict]        # (record, seed) -> Example fields other than id
    own_id: str | None                        # the record's own id field, if the format has one
    lettered: bool                            # extract an option letter from generations
    max_new_tokens: int
    stop: tuple[str, ...]
    description: str
    extract: Callable[[str], str | None] | None = None
    normalize: Callable[[str], str] = str.strip


FORMATS: dict[str, Format] = {
    "gsm8k": Format(
        "question, answer", gsm8k_example, None, False, 256, ("\nQuestion:",),
        "GSM8K: exact match on the last number of a greedy solution; direct-answer likelihood of the number",
        extract=last_number),
    "csqa": Format(
        "question, choices, answerKey", csqa_example, "id", True, 8, ("\n",),
        "CommonsenseQA: likelihood accuracy over the option letters; exact match on the generated letter"),
    "mmlu_pro": Format(
        "question, options, answer or answer_index", mmlu_pro_example, "question_id", True, 32, ("\nQuestion:",),
        "MMLU-Pro: likelihood accuracy over up to ten option letters; exact match on 'answer is (X)' or the first letter"),
    "math500": Format(
        "problem, answer", math500_example, "unique_id", False, 512, ("\nProblem:",),
        "MATH-500: exact match of the last \\boxed{} answer after MATH answer normalisation",
        extract=last_boxed, normalize=normalize_math_answer),
    "gpqa": Format(
        "Question, " + ", ".join(GPQA_OPTION_FIELDS), gpqa_example, "Record ID", True, 8, ("\n",),
        "GPQA: four shuffled options; likelihood accuracy over the letters; exact match on the generated letter"),
}
assert tuple(FORMATS) == REAL_BENCHMARKS


def unknown_benchmark_message(name: str, valid: Sequence[str] = REAL_BENCHMARKS) -> str:
    return f"unknown benchmark {name!r}; valid: {', '.join(valid)}"


# ---------------------------------------------------------------- reading records

def _read_jsonl(name: str, path: Path, limit: int | None) -> list[tuple[str, object]]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append((f"line {lineno}", json.loads(line)))
            except json.JSONDecodeError as e:
                raise UserError(f"{name} file {path} line {lineno}: not valid JSON ({e.msg})") from None
            if limit is not None and len(rows) >= limit:
                break
    return rows


def _read_json(name: str, path: Path, limit: int | None) -> list[tuple[str, object]]:
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{name} file {path} line {e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(records, list):
        raise UserError(f"{name} file {path} must hold a JSON list of records, not a {type(records).__name__}")
    return [(f"record {i}", record) for i, record in enumerate(records[:limit])]


def _read_tabular(name: str, path: Path, limit: int | None) -> list[tuple[str, object]]:
    import datasets

    kind = path.suffix[1:]
    features = None
    if kind == "csv":
        # every column as text: otherwise a column of numeric answers is read as int or float
        with open(path, newline="", encoding="utf-8") as f:
            header = next(csv.reader(f), None)
        if not header:
            raise UserError(f"{name} file {path} has no records")
        features = datasets.Features({column: datasets.Value("string") for column in header})
    try:
        table = datasets.load_dataset(kind, data_files=str(path), split="train", features=features)
    except Exception as e:  # datasets and pyarrow raise many types for a malformed file
        raise UserError(f"{name} file {path}: cannot read it as {kind} ({first_line(e)})") from None
    if limit is not None:
        table = table.select(range(min(limit, len(table))))
    return [(f"record {i}", record) for i, record in enumerate(table)]


def read_file_records(name: str, path: Path, limit: int | None) -> list[tuple[str, object]]:
    """(where, record) pairs of a local file: where is "line N" for jsonl, "record N" else."""
    if not path.exists():
        raise UserError(f"{name} file {path} does not exist")
    if not path.is_file():
        raise UserError(f"{name} file {path} is not a file (a folder of data files goes in 'hub')")
    if path.suffix not in FILE_SUFFIXES:
        raise UserError(f"{name} file {path} has an unknown format {path.suffix!r}; use {', '.join(FILE_SUFFIXES)}")
    try:
        if path.suffix == ".jsonl":
            return _read_jsonl(name, path, limit)
        if path.suffix == ".json":
            return _read_json(name, path, limit)
        return _read_tabular(name, path, limit)
    except UnicodeDecodeError as e:
        raise UserError(f"{name} file {path} is not UTF-8 text: byte 0x{e.object[e.start]:02x} at offset {e.start}") from None
    except OSError as e:
        raise UserError(f"{name} file {path} cannot be read: {e.strerror or e}") from None


def read_hub_records(name: str, hub: str, config: str | None, split: str,
                     limit: int | None) -> list[tuple[str, object]]:
    import datasets

    try:
        table = datasets.load_dataset(hub, config, split=split)
    except Exception as e:  # datasets raises many types (DatasetNotFoundError, ValueError, ConnectionError, ...)
        raise UserError(f"cannot load {name} dataset {hub!r} (config {config!r}, split {split!r}): {first_line(e)}") from None
    if limit is not None:
        table = table.select(range(min(limit, len(table))))
    return [(f"record {i}", record) for i, record in enumerate(table)]


# ---------------------------------------------------------------- the entry point

def load_real_benchmark(name: str, source: Mapping, limit: int | None, seed: int = 0) -> Benchmark:
    """Benchmark `name` read from `source`: its `path` (a local file) when set, else
    `datasets.load_dataset(hub, config, split=split)`. `limit`: the first `limit` records in
    file order (None: all); every record is checked whatever the limit, so a bad line is found
    the first time, not when a later run reads further. `seed` only moves GPQA's option shuffle."""
    if name not in FORMATS:
        raise UserError(unknown_benchmark_message(name))
    if limit is not None and limit < 1:
        raise UserError(f"{name}: limit must be a positive number of examples or None, not {limit}")
    fmt = FORMATS[name]
    path, hub = source.get("path"), source.get("hub")
    config, split = source.get("config"), str(source.get("split") or "test")
    if path:
        origin = f"file {path}"
        rows = read_file_records(name, Path(str(path)), None)
    elif hub:
        origin = f"dataset {hub}" + (f" ({config})" if config else "") + f" split {split}"
        rows = read_hub_records(name, str(hub), config, split, None)
    else:
        raise UserError(f"{name}: no source; set its path (a local file) or hub (a datasets name or folder)")
    if not rows:
        raise UserError(f"{name} {origin} has no records")

    fields, own_ids = [], []
    for where, record in rows:
        try:
            if not isinstance(record, dict):
                raise BadRecord(f"not an object but a {type(record).__name__}")
            fields.append(fmt.build(record, seed))
        except BadRecord as e:
            raise UserError(f"{name} {origin} {where}: {e} ({name} records need: {fmt.needs})") from None
        own = record.get(fmt.own_id) if fmt.own_id else None
        own_ids.append(str(own).strip() if isinstance(own, (str, int)) and not isinstance(own, bool) else "")
    # the record's own ids survive a reordered or cut file; positions are the fallback
    if all(own_ids) and len(set(own_ids)) == len(own_ids):
        ids = [f"{name}-{own}" for own in own_ids]
    else:
        ids = [f"{name}-{i}" for i in range(len(rows))]
    examples = [Example(id=example_id, **example) for example_id, example in zip(ids, fields)][:limit]

    extract = fmt.extract
    if fmt.lettered:
        # the letters any example offers; a letter outside an example's own options scores wrong
        letters = sorted({choice.strip() for example in examples for choice in example.choices})
        extract = functools.partial(choice_letter, letters=tuple(letters))
    return Benchmark(name, examples, extract=extract, normalize=fmt.normalize, max_new_tokens=fmt.max_new_tokens,
                     stop=fmt.stop, description=fmt.description, extra={"source": origin})
