"""The exact bytes of every token, so rewards can compare text at the byte level and know the
corpus's own token boundaries. Decoding one token at a time is not enough: a byte-level token
may hold half of a UTF-8 character, which decodes to U+FFFD."""
import json
from functools import lru_cache


@lru_cache(maxsize=1)
def _byte_level_alphabet() -> dict[str, int]:
    """Byte-level BPE writes each byte as a printable character: printable Latin-1 bytes stand
    for themselves, the others are shifted to code points 256 and up, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, shift = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + shift)] = b
            shift += 1
    return chars


def _is_byte_level(tokenizer) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return backend is not None and '"ByteLevel"' in json.dumps(json.loads(backend.to_str()).get("decoder"))


def token_byte_table(tokenizer, rows: int | None = None) -> list[bytes]:
    """bytes of token id i, for every id; special tokens have none, and neither do the model's
    embedding rows beyond the tokenizer (`rows`: the model's vocabulary, Qwen keeps spare ones)."""
    table = _token_bytes(tokenizer)
    return table + [b""] * max(0, (rows or 0) - len(table))


def _token_bytes(tokenizer) -> list[bytes]:
    special = set(tokenizer.all_special_ids)
    pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    table: list[bytes] = []
    if _is_byte_level(tokenizer):
        alphabet = _byte_level_alphabet()
        for i, piece in enumerate(pieces):
            table.append(b"" if i in special or piece is None else bytes(alphabet[c] for c in piece if c in alphabet))
        return table
    for i, piece in enumerate(pieces):  # SentencePiece: "▁" is a space, "<0xAB>" a raw byte
        if i in special or piece is None:
            table.append(b"")
        elif len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            table.append(bytes([int(piece[3:5], 16)]))
        else:
            table.append(piece.replace("\u2581", " ").encode())
    return table
