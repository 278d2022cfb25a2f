"""The byte-level BPE tokenizer: special ids, digit splitting, exact round trips, save/load,
determinism and vocab size validation."""

from __future__ import annotations

import os
import random
import subprocess
import sys

import pytest
from transformers import AutoTokenizer

from tokreason.experiments.data.synthetic import ProblemSpec, generate_corpus, generate_problems
from tokreason.methods.thoughts import THOUGHT_END as THOUGHT_END_TOKEN
from tokreason.methods.thoughts import THOUGHT_START as THOUGHT_START_TOKEN
from tokreason.experiments.data.tokenizer import (
    EOS_TOKEN,
    PAD_TOKEN,
    SPECIAL_TOKENS,
    train_tokenizer,
)

SAMPLES = [
    "héllo — 数字 🙂",
    "Compute 47 + 385 - 29. The result is 403.",
    "  leading and trailing spaces  \n\ttabs\r\nCRLF",
    "emoji 👩‍👩‍👧 and combining e\u0301 and nul\x00byte",
    f"a{THOUGHT_START_TOKEN} thought {THOUGHT_END_TOKEN}b{EOS_TOKEN}",
    "",
]


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return generate_corpus(0, 2000, "train")


@pytest.fixture(scope="module")
def tok(corpus):
    return train_tokenizer(corpus, 512)


def test_special_tokens_have_fixed_ids(tok) -> None:
    assert SPECIAL_TOKENS == (EOS_TOKEN, PAD_TOKEN, THOUGHT_START_TOKEN, THOUGHT_END_TOKEN)
    assert tok.convert_tokens_to_ids(list(SPECIAL_TOKENS)) == [0, 1, 2, 3]
    assert tok.bos_token == tok.eos_token == EOS_TOKEN and tok.bos_token_id == tok.eos_token_id == 0
    assert tok.pad_token == PAD_TOKEN and tok.pad_token_id == 1
    assert set(SPECIAL_TOKENS) <= set(tok.all_special_tokens)
    # each special token encodes to its single id, never split into bytes
    for i, s in enumerate(SPECIAL_TOKENS):
        ids = tok.encode(f"x {s} y")
        assert [j for j in ids if j < len(SPECIAL_TOKENS)] == [i]
        assert tok.encode(s) == [i]


def test_encode_adds_no_bos_or_eos(tok) -> None:
    ids = tok.encode("Let a be 7.")
    assert 0 not in ids and 1 not in ids
    assert tok("Let a be 7.")["input_ids"] == ids
    assert tok.decode(ids) == "Let a be 7."


def test_vocab_size_respected(tok, corpus) -> None:
    assert 261 <= len(tok) <= 512
    small = train_tokenizer(corpus, 300)
    assert len(small) == 300  # the corpus has plenty of pairs to merge
    assert max(small.get_vocab().values()) == 299


def test_digits_are_single_tokens(tok) -> None:
    """with_space (the default): a digit is one token, together with the space before it, so the
    " 8" an answer starts with is one token and the token after a thought is the answer's digit."""
    text = "12345 + 67890 = 80235; years 2024, 1999 and x42y. 007"
    tokens = tok.convert_ids_to_tokens(tok.encode(text))
    digit_tokens = [t for t in tokens if any(c.isdigit() for c in t)]
    assert digit_tokens and all(len(t.lstrip("\u0120")) == 1 for t in digit_tokens), digit_tokens
    assert len(digit_tokens) == sum(c.isdigit() for c in text)
    assert tok.convert_ids_to_tokens(tok.encode(" 8")) == ["\u01208"]
    assert tok.convert_ids_to_tokens(tok.encode(" 48")) == ["\u01204", "8"]


def test_digits_alone_split_the_space_from_the_digit(corpus) -> None:
    alone = train_tokenizer(corpus, 512, digits="alone")
    assert alone.convert_ids_to_tokens(alone.encode(" 48")) == ["\u0120", "4", "8"]
    with pytest.raises(ValueError, match="model.tokenizer.digits='glued'.*with_space, alone"):
        train_tokenizer(corpus, 512, digits="glued")


@pytest.mark.parametrize("text", SAMPLES)
def test_decode_encode_round_trip(tok, text: str) -> None:
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert tok.unk_token_id is None or tok.unk_token_id not in ids


def test_round_trip_on_random_unicode(tok) -> None:
    rng = random.Random(0)
    for _ in range(200):
        chars = []
        for _ in range(rng.randint(0, 30)):
            cp = rng.choice((rng.randint(32, 126), rng.randint(0x80, 0xD7FF), rng.randint(0xE000, 0x10FFFF)))
            chars.append(chr(cp))
        s = "".join(chars)
        assert tok.decode(tok.encode(s)) == s


def test_save_and_load_give_identical_encodings(tok, tmp_path, corpus) -> None:
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert len(loaded) == len(tok)
    assert loaded.get_vocab() == tok.get_vocab()
    assert loaded.convert_tokens_to_ids(list(SPECIAL_TOKENS)) == [0, 1, 2, 3]
    assert (loaded.bos_token_id, loaded.eos_token_id, loaded.pad_token_id) == (0, 0, 1)
    assert set(SPECIAL_TOKENS) <= set(loaded.all_special_tokens)
    for text in SAMPLES + corpus[:50]:
        assert loaded.encode(text) == tok.encode(text)
        assert loaded.decode(tok.encode(text)) == text
    assert loaded.model_max_length >= 1_000_000


def test_question_answer_split_is_a_token_boundary(tok) -> None:
    # Benchmarks score the answer tokens after the question: they must be the corpus's own tokens.
    for templates in ("seen", "unseen"):
        for p in generate_problems(0, 400, "test", ProblemSpec(templates=templates)):
            assert tok.encode(p.question) + tok.encode(p.answer) == tok.encode(p.question + p.answer), p


def test_training_is_deterministic(corpus) -> None:
    a = train_tokenizer(corpus[:500], 400).backend_tokenizer.to_str()
    b = train_tokenizer(iter(corpus[:500]), 400).backend_tokenizer.to_str()
    assert a == b
    assert a != train_tokenizer(corpus[500:1000], 400).backend_tokenizer.to_str()


def test_training_is_deterministic_across_processes(corpus) -> None:
    code = (
        "from tokreason.experiments.data.synthetic import generate_corpus;"
        "from tokreason.experiments.data.tokenizer import train_tokenizer;"
        "import sys; sys.stdout.write(train_tokenizer(generate_corpus(0, 2000, 'train')[:500], 400)"
        ".backend_tokenizer.to_str())"
    )
    expected = train_tokenizer(corpus[:500], 400).backend_tokenizer.to_str()
    env = {**os.environ, "PYTHONHASHSEED": "4321"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout == expected


@pytest.mark.parametrize("vocab_size", [0, 100, 256, 260])
def test_bad_vocab_size_raises(vocab_size: int) -> None:
    with pytest.raises(ValueError, match=rf"vocab_size={vocab_size}.*261"):
        train_tokenizer(["hello world"], vocab_size)
