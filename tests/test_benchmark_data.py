"""Real benchmark loaders: prompts, choices and gold answers of hand-written records of every
benchmark, the extractors and the MATH normaliser, every file type, a local folder through
`hub`, one-line errors, limits, GPQA's shuffle, and (when present) the real GSM8K test file."""
import json
import re
from pathlib import Path

import datasets
import pytest

from tokreason.experiments.evaluation.real_tasks import (REAL_BENCHMARKS, choice_letter, last_boxed, last_number,
                                                   load_real_benchmark, normalize_math_answer)
from tokreason.experiments.errors import UserError

REAL_GSM8K = Path(__file__).resolve().parents[2] / "shared" / "benchmarks" / "gsm8k" / "test.jsonl"

GSM8K = [
    {"question": "Ann has 3 apples and buys 4 more. How many apples does she have?",
     "answer": "She has 3 + 4 = <<3+4=7>>7 apples.\n#### 7"},
    {"question": "A house costs $80,000 plus $50,000. What is the total?",
     "answer": "80,000 + 50,000 = 130,000\n#### 130,000"},
]
CSQA = [
    {"id": "q1", "question": "Where do you put a book?", "question_concept": "book",
     "choices": {"label": ["A", "B", "C", "D", "E"], "text": ["shelf", "oven", "sky", "river", "shoe"]},
     "answerKey": "A"},
    {"id": "q2", "question": "What is cold?", "question_concept": "cold",
     "choices": {"label": ["A", "B", "C", "D", "E"], "text": ["fire", "sun", "ice", "lava", "oven"]},
     "answerKey": "C"},
]
MMLU_PRO = [
    {"question_id": 70, "question": "2 + 2 = ?", "options": ["3", "4", "5"], "answer": "B", "answer_index": 1,
     "category": "math"},
    {"question_id": 71, "question": "Pick the last.", "options": [str(i) for i in range(10)], "answer": "J",
     "answer_index": 9, "category": "other"},
]
MATH500 = [
    {"problem": "What is $1 + 1$?", "solution": "It is $\\boxed{2}$.", "answer": "2", "subject": "Algebra",
     "level": 1, "unique_id": "test/algebra/1.json"},
    {"problem": "Simplify $\\frac{2}{4}$.", "solution": "$\\boxed{\\frac{1}{2}}$", "answer": "\\frac{1}{2}",
     "subject": "Algebra", "level": 2, "unique_id": "test/algebra/2.json"},
]
GPQA = [
    {"Record ID": f"rec{i}", "Question": f"Which particle is number {i}?", "Correct Answer": f"right {i}",
     "Incorrect Answer 1": f"wrong a{i}", "Incorrect Answer 2": f"wrong b{i}", "Incorrect Answer 3": f"wrong c{i}"}
    for i in range(12)
]


@pytest.fixture(autouse=True)
def private_datasets_cache(tmp_path, monkeypatch):
    # load_dataset caches what it reads; keep that out of the user's cache
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def from_file(name: str, path: Path, limit=None, seed=0):
    return load_real_benchmark(name, {"path": str(path), "hub": None, "config": None, "split": "test"}, limit, seed)


def error_of(name: str, path: Path, **kw) -> str:
    with pytest.raises(UserError) as info:
        from_file(name, path, **kw)
    message = str(info.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------- formats

def test_gsm8k_prompt_answer_target_and_extract(tmp_path):
    bench = from_file("gsm8k", write_jsonl(tmp_path / "test.jsonl", GSM8K))
    first, second = bench.examples
    assert first.id == "gsm8k-0" and second.id == "gsm8k-1"
    assert first.prompt == "Question: Ann has 3 apples and buys 4 more. How many apples does she have?\nAnswer:"
    assert (first.answer, first.target, first.choices, first.gold) == ("7", " 7", (), None)
    assert (second.answer, second.target) == ("130000", " 130000")
    assert bench.extract("80,000 + 50,000 = $130,000.") == "130000"
    assert (bench.max_new_tokens, bench.stop) == (256, ("\nQuestion:",))
    assert bench.description.startswith("GSM8K")


def test_csqa_lettered_prompt_choices_and_gold(tmp_path):
    bench = from_file("csqa", write_jsonl(tmp_path / "dev.jsonl", CSQA))
    first, second = bench.examples
    assert first.id == "csqa-q1"
    assert first.prompt == "Question: Where do you put a book?\nA. shelf\nB. oven\nC. sky\nD. river\nE. shoe\nAnswer:"
    assert first.choices == (" A", " B", " C", " D", " E")
    assert (first.gold, first.answer, first.target) == (0, "A", None)
    assert (second.gold, second.answer) == (2, "C")
    assert bench.extract(" E. shoe") == "E" and bench.extract(" F") is None
    assert (bench.max_new_tokens, bench.stop) == (8, ("\n",))


def test_mmlu_pro_letters_follow_the_number_of_options(tmp_path):
    bench = from_file("mmlu_pro", write_jsonl(tmp_path / "test.jsonl", MMLU_PRO))
    three, ten = bench.examples
    assert three.id == "mmlu_pro-70"
    assert three.prompt == "Question: 2 + 2 = ?\nA. 3\nB. 4\nC. 5\nAnswer:"
    assert three.choices == (" A", " B", " C") and (three.gold, three.answer) == (1, "B")
    assert ten.choices == tuple(" " + c for c in "ABCDEFGHIJ") and (ten.gold, ten.answer) == (9, "J")
    assert ten.prompt.splitlines()[-2:] == ["J. 9", "Answer:"]
    assert bench.extract("I think the answer is (J).") == "J"
    assert bench.max_new_tokens == 32


def test_mmlu_pro_gold_from_either_field_and_they_must_agree(tmp_path):
    only_letter = {k: v for k, v in MMLU_PRO[0].items() if k != "answer_index"}
    only_index = {k: v for k, v in MMLU_PRO[0].items() if k != "answer"}
    bench = from_file("mmlu_pro", write_jsonl(tmp_path / "a.jsonl", [only_letter, only_index]))
    assert [e.gold for e in bench.examples] == [1, 1]
    disagree = {**MMLU_PRO[0], "answer": "C"}
    assert error_of("mmlu_pro", write_jsonl(tmp_path / "b.jsonl", [disagree])) == (
        f"mmlu_pro file {tmp_path / 'b.jsonl'} line 1: field 'answer_index' (1) disagrees with field 'answer' ('C') "
        "(mmlu_pro records need: question, options, answer or answer_index)")


def test_math500_prompt_boxed_extract_and_normalised_match(tmp_path):
    bench = from_file("math500", write_jsonl(tmp_path / "test.jsonl", MATH500))
    first, second = bench.examples
    assert first.id == "math500-test/algebra/1.json"
    assert first.prompt == "Problem: What is $1 + 1$?\nPut the final answer in \\boxed{}.\nSolution:"
    assert (first.answer, first.choices, first.target) == ("2", (), None)
    generated = "We halve: $\\boxed{\\dfrac12}$."
    assert bench.normalize(bench.extract(generated)) == bench.normalize(second.answer) == "\\frac{1}{2}"
    assert (bench.max_new_tokens, bench.stop) == (512, ("\nProblem:",))


def test_gpqa_shuffle_is_deterministic_and_gold_points_at_the_correct_answer(tmp_path):
    path = write_jsonl(tmp_path / "gpqa.jsonl", GPQA)
    bench = from_file("gpqa", path)
    assert bench.examples == from_file("gpqa", path).examples  # same order in a second load
    for record, example in zip(GPQA, bench.examples):
        assert example.id == f"gpqa-{record['Record ID']}"
        assert example.choices == (" A", " B", " C", " D")
        option_lines = example.prompt.splitlines()[1:-1]
        assert sorted(line[3:] for line in option_lines) == sorted(
            record[f] for f in ("Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3"))
        assert option_lines[example.gold] == f"{example.answer}. {record['Correct Answer']}"
    golds = [e.gold for e in bench.examples]
    assert len(set(golds)) > 1, "the correct answer should not always sit in the same place"
    assert golds != [e.gold for e in from_file("gpqa", path, seed=1).examples], "the seed moves the shuffle"


# ---------------------------------------------------------------- extractors and normaliser

@pytest.mark.parametrize("text, number", [
    ("So the total is $1,000.", "1000"),
    ("She ends with -3 apples", "-3"),
    ("It costs 2.50 dollars", "2.5"),
    ("The answer: 18.0", "18"),
    ("10 - 3 = 7", "7"),
    ("pages 4-5", "5"),
    ("First 12, then 1,234,567 in all.", "1234567"),
    ("no number here", None),
    ("", None),
])
def test_last_number(text, number):
    assert last_number(text) == number


@pytest.mark.parametrize("text, content", [
    ("so $\\boxed{\\frac{1}{2}}$", "\\frac{1}{2}"),
    ("\\boxed{\\sqrt{x^{2}+1}} done", "\\sqrt{x^{2}+1}"),
    ("first \\boxed{1}, then \\boxed{2}", "2"),
    ("\\fbox{7}", "7"),
    ("\\boxed 5$", "5"),
    ("\\boxed{3} and then a cut-off \\boxed{4", "3"),
    ("no box at all", None),
    ("\\boxed{}", None),
])
def test_last_boxed(text, content):
    assert last_boxed(text) == content


@pytest.mark.parametrize("raw, normalised", [
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})"),
    ("10\\text{ inches}", "10"),
    ("\\dfrac{1}{2}", "\\frac{1}{2}"),
    ("\\frac12", "\\frac{1}{2}"),
    ("1/2", "\\frac{1}{2}"),
    ("x = 3", "3"),
    (".5", "0.5"),
    ("90^\\circ", "90"),
    ("90^{\\circ}", "90"),
    ("50\\%", "50"),
    ("\\$18.90", "18.90"),
    ("2\\sqrt 3", "2\\sqrt{3}"),
    ("\\text{Evelyn}", "Evelyn"),
    ("5.", "5"),
    ("1,\\!000", "1000"),
    ("(1,2)", "(1,2)"),
    ("$x^2 + 1$", "x^2+1"),
])
def test_normalize_math_answer(raw, normalised):
    assert normalize_math_answer(raw) == normalised


@pytest.mark.parametrize("text, letters, letter", [
    ("B", "ABCDE", "B"),
    (" (C)", "ABCDE", "C"),
    ("The answer is (D).", "ABCD", "D"),
    ("so the answer is J", "ABCDEFGHIJ", "J"),
    ("Hmm, B looks tempting, but the answer is (C)", "ABCD", "C"),
    (" F", "ABCDE", None),
    ("nothing useful", "ABCD", None),
])
def test_choice_letter(text, letters, letter):
    assert choice_letter(text, letters) == letter


# ---------------------------------------------------------------- file types and sources

def test_every_file_type_reads_the_same_examples(tmp_path):
    expected = from_file("gsm8k", write_jsonl(tmp_path / "test.jsonl", GSM8K)).examples
    (tmp_path / "test.json").write_text(json.dumps(GSM8K))
    datasets.Dataset.from_list(GSM8K).to_parquet(str(tmp_path / "test.parquet"))
    datasets.Dataset.from_list(GSM8K).to_csv(str(tmp_path / "test.csv"), index=False)
    for suffix in ("json", "parquet", "csv"):
        assert from_file("gsm8k", tmp_path / f"test.{suffix}").examples == expected, suffix


def test_csv_keeps_numeric_looking_answers_as_text(tmp_path):
    records = [{"problem": "What is 1/2 as a decimal?", "answer": "0.50"}, {"problem": "2 + 1?", "answer": "3"}]
    datasets.Dataset.from_list(records).to_csv(str(tmp_path / "math.csv"), index=False)
    assert [e.answer for e in from_file("math500", tmp_path / "math.csv").examples] == ["0.50", "3"]


def test_nested_fields_survive_parquet(tmp_path):
    datasets.Dataset.from_list(CSQA).to_parquet(str(tmp_path / "csqa.parquet"))
    assert from_file("csqa", tmp_path / "csqa.parquet").examples == from_file(
        "csqa", write_jsonl(tmp_path / "csqa.jsonl", CSQA)).examples


def test_hub_source_can_be_a_local_folder_of_data_files(tmp_path):
    folder = tmp_path / "my_csqa"
    folder.mkdir()
    write_jsonl(folder / "validation.jsonl", CSQA)
    bench = load_real_benchmark("csqa", {"path": None, "hub": str(folder), "config": None, "split": "validation"}, None)
    assert [e.id for e in bench.examples] == ["csqa-q1", "csqa-q2"] and bench.examples[1].gold == 2
    with pytest.raises(UserError, match=r"^cannot load csqa dataset .*split 'test'.*: Unknown split"):
        load_real_benchmark("csqa", {"path": None, "hub": str(folder), "config": None, "split": "test"}, None)


def test_hub_records_are_named_by_index(tmp_path):
    folder = tmp_path / "gsm"
    folder.mkdir()
    write_jsonl(folder / "test.jsonl", [GSM8K[0], {"question": "Q?", "answer": "no marker"}])
    with pytest.raises(UserError) as info:
        load_real_benchmark("gsm8k", {"path": None, "hub": str(folder), "config": None, "split": "test"}, None)
    assert str(info.value) == (f"gsm8k dataset {folder} split test record 1: field 'answer' has no final "
                               "'#### <number>' (gsm8k records need: question, answer)")


def test_limit_takes_the_first_records_in_file_order(tmp_path):
    path = write_jsonl(tmp_path / "gpqa.jsonl", GPQA)
    assert [e.id for e in from_file("gpqa", path, limit=3).examples] == ["gpqa-rec0", "gpqa-rec1", "gpqa-rec2"]
    assert len(from_file("gpqa", path, limit=100).examples) == len(GPQA)
    datasets.Dataset.from_list(GPQA).to_parquet(str(tmp_path / "gpqa.parquet"))
    assert len(from_file("gpqa", tmp_path / "gpqa.parquet", limit=2).examples) == 2
    # a bad line past the limit is still found: the whole file is checked once
    (tmp_path / "long.jsonl").write_text(json.dumps(GSM8K[0]) + "\n{not json\n")
    assert "line 2: not valid JSON" in error_of("gsm8k", tmp_path / "long.jsonl", limit=1)


def test_ids_fall_back_to_positions_when_own_ids_repeat(tmp_path):
    bench = from_file("csqa", write_jsonl(tmp_path / "dup.jsonl", [CSQA[0], CSQA[0]]))
    assert [e.id for e in bench.examples] == ["csqa-0", "csqa-1"]


# ---------------------------------------------------------------- errors

def test_missing_field_names_the_first_bad_line_and_the_field(tmp_path):
    path = tmp_path / "test.jsonl"
    bad = {"question": "No answer here?"}
    path.write_text(json.dumps(GSM8K[0]) + "\n\n" + json.dumps(bad) + "\n" + json.dumps({"answer": "#### 1"}) + "\n")
    assert error_of("gsm8k", path) == (
        f"gsm8k file {path} line 3: missing field 'answer' (gsm8k records need: question, answer)")


@pytest.mark.parametrize("limit", [None, 4, 20])
def test_the_whole_file_is_checked_whatever_the_limit(tmp_path, limit):
    path = tmp_path / "test.jsonl"
    lines = [json.dumps(GSM8K[0])] * 6 + [json.dumps({"question": "No answer?"})] + [json.dumps(GSM8K[0])] * 3
    path.write_text("\n".join(lines) + "\n")
    assert error_of("gsm8k", path, limit=limit).startswith(f"gsm8k file {path} line 7: missing field 'answer'")
    path.write_text("\n".join(lines[:6] + lines[7:]) + "\n")  # without the bad line, the limit cuts as before
    assert len(from_file("gsm8k", path, limit=limit).examples) == min(limit or 9, 9)


@pytest.mark.parametrize("name, record, problem", [
    ("gsm8k", {"question": "  ", "answer": "#### 1"}, "field 'question' is empty"),
    ("gsm8k", {"question": "Q?", "answer": 5}, "field 'answer' must be a string, not int"),
    ("gsm8k", {"question": "Q?", "answer": "#### many"}, "field 'answer' has no number after its final '####'"),
    ("csqa", {**CSQA[0], "answerKey": "F"}, "field 'answerKey' must be one of the labels A, B, C, D, E, not 'F'"),
    ("csqa", {**CSQA[0], "answerKey": ""}, "field 'answerKey' is empty (CommonsenseQA's test split has no answers; "
                                           "use validation)"),
    ("csqa", {**CSQA[0], "choices": ["shelf", "oven"]}, "field 'choices' must be {'label': [...], 'text': [...]} "
                                                        "with equal lists of two or more"),
    ("mmlu_pro", {**MMLU_PRO[0], "options": "3, 4, 5"}, "field 'options' must be a list of strings"),
    ("mmlu_pro", {**MMLU_PRO[0], "answer_index": 7}, "field 'answer_index' must be an option index 0..2, not 7"),
    ("math500", {"problem": "P?"}, "missing field 'answer'"),
    ("gpqa", {k: v for k, v in GPQA[0].items() if k != "Incorrect Answer 2"}, "missing field 'Incorrect Answer 2'"),
    ("gsm8k", ["not", "an", "object"], "not an object but a list"),
])
def test_bad_records_are_one_line_errors(tmp_path, name, record, problem):
    path = write_jsonl(tmp_path / "data.jsonl", [record])
    message = error_of(name, path)
    assert message.startswith(f"{name} file {path} line 1: {problem} ({name} records need: ")


def test_bad_records_in_json_and_parquet_are_named_by_index(tmp_path):
    records = [GSM8K[0], GSM8K[1], {"question": "Q?", "answer": "no marker"}]
    (tmp_path / "test.json").write_text(json.dumps(records))
    assert error_of("gsm8k", tmp_path / "test.json").startswith(f"gsm8k file {tmp_path / 'test.json'} record 2: ")
    datasets.Dataset.from_list(records).to_parquet(str(tmp_path / "test.parquet"))
    assert error_of("gsm8k", tmp_path / "test.parquet").startswith(f"gsm8k file {tmp_path / 'test.parquet'} record 2: ")


def test_bad_json_missing_file_and_unknown_name(tmp_path):
    path = tmp_path / "test.jsonl"
    path.write_text(json.dumps(GSM8K[0]) + "\n" + '{"question": "Q?", "answer": \n')
    assert error_of("gsm8k", path) == f"gsm8k file {path} line 2: not valid JSON (Expecting value)"
    (tmp_path / "list.json").write_text('{"data": []}')
    assert error_of("gsm8k", tmp_path / "list.json") == (
        f"gsm8k file {tmp_path / 'list.json'} must hold a JSON list of records, not a dict")
    assert error_of("gsm8k", tmp_path / "absent.jsonl") == f"gsm8k file {tmp_path / 'absent.jsonl'} does not exist"
    (tmp_path / "data.txt").write_text("hello")
    assert "unknown format '.txt'" in error_of("gsm8k", tmp_path / "data.txt")
    (tmp_path / "empty.jsonl").write_text("\n")
    assert error_of("gsm8k", tmp_path / "empty.jsonl") == f"gsm8k file {tmp_path / 'empty.jsonl'} has no records"
    with pytest.raises(UserError) as info:
        load_real_benchmark("gsm9k", {"path": str(path)}, None)
    assert str(info.value) == "unknown benchmark 'gsm9k'; valid: " + ", ".join(REAL_BENCHMARKS)


# ---------------------------------------------------------------- the real GSM8K test set

def test_real_gsm8k_test_file():
    if not REAL_GSM8K.exists():
        pytest.skip(f"{REAL_GSM8K} is absent")
    bench = load_real_benchmark("gsm8k", {"path": str(REAL_GSM8K), "hub": None, "config": None, "split": "test"}, None)
    assert len(bench.examples) == 1319
    assert all(re.fullmatch(r"-?\d+(\.\d+)?", e.answer) and e.target == " " + e.answer for e in bench.examples)
    first_record = json.loads(REAL_GSM8K.read_text().splitlines()[0])
    assert bench.examples[0].answer == first_record["answer"].split("####")[-1].strip().replace(",", "")
    assert bench.examples[0].prompt == f"Question: {first_record['question']}\nAnswer:"
    assert len({e.id for e in bench.examples}) == 1319
