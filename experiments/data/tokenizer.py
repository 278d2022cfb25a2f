"""Byte-level BPE tokenizer trained on a corpus (the embedded default is the synthetic corpus).

Byte-level with the full 256-byte alphabet, so any UTF-8 text encodes without an unknown token and
decodes back exactly. Numbers are spelled digit by digit (multi-digit number tokens make arithmetic
much harder for small models). How a space before a digit is tokenized (`digits`):

- `with_space` (the default): " 8" is one token, the space joined to the first digit (as GPT-2's
  BPE does), the digits after it one token each (" 48" -> " 4", "8"). An answer " 8" is then one
  token, the first one after a thought: the token that RLP's one-token target and RPT's one-token
  prediction read is the answer itself (README, "The embedded laboratory").
- `alone`: the space is a token of its own before every digit (as Qwen's and Llama-3's tokenizers
  split numbers): the token after a thought before " 8" is the space, which every thought predicts
  alike, so a one-token reward never sees the answer (kept to reproduce that finding).

The four special tokens sit at ids 0..3; the thought tokens are reserved for the methods that think.
"""

from __future__ import annotations

from typing import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast
from transformers.tokenization_utils_base import VERY_LARGE_INTEGER

from tokreason.methods.thoughts import THOUGHT_END, THOUGHT_START

EOS_TOKEN = "<|endoftext|>"  # also used as bos
PAD_TOKEN = "<|pad|>"
SPECIAL_TOKENS: tuple[str, ...] = (EOS_TOKEN, PAD_TOKEN, THOUGHT_START, THOUGHT_END)

MIN_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS) + 1  # the byte alphabet, the specials, at least one merge
DIGIT_STYLES = ("with_space", "alone")


def digit_splitter(digits: str):
    """The pre-tokenizer step that spells numbers digit by digit (see the module doc)."""
    if digits == "with_space":
        return pre_tokenizers.Split(Regex(r" ?[0-9]"), behavior="isolated")  # " 48" -> " 4", "8"
    if digits == "alone":
        return pre_tokenizers.Digits(individual_digits=True)  # " 48" -> " ", "4", "8"
    raise ValueError(f"model.tokenizer.digits={digits!r} is not valid; valid: {', '.join(DIGIT_STYLES)}")


def train_tokenizer(texts: Iterable[str], vocab_size: int, digits: str = "with_space") -> PreTrainedTokenizerFast:
    """Train a byte-level BPE of `vocab_size` tokens (specials and 256 bytes included) on `texts`.

    Deterministic: the same texts and vocab_size give the same vocabulary and merges. Encoding adds
    no BOS/EOS; the corpus pipeline inserts EOS between documents itself. The result can hold fewer
    than `vocab_size` tokens when the corpus runs out of pairs to merge (a small synthetic corpus
    does): use len(tokenizer) for the model's embedding size.
    """
    if not isinstance(vocab_size, int) or vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(f"vocab_size={vocab_size!r} is too small; the minimum is {MIN_VOCAB_SIZE}")

    tok = Tokenizer(models.BPE())  # no unk token: every byte is in the alphabet
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            digit_splitter(digits),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),  # added first, so they get ids 0..3 in this order
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)

    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        extra_special_tokens=[THOUGHT_START, THOUGHT_END],
        add_bos_token=False,
        add_eos_token=False,
        model_max_length=VERY_LARGE_INTEGER,  # no limit here: the model's context length decides
        clean_up_tokenization_spaces=False,  # would rewrite " ." etc. and break decode(encode(s)) == s
    )
