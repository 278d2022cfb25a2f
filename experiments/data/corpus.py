"""Corpora as fixed-length token windows, and a batch stream whose position is resumable.

Every corpus (synthetic, local text, a `datasets` corpus) becomes documents joined by EOS and
cut into windows of `seq_len` tokens. The stream hands out windows in one global order that
depends only on the seed: with W processes of batch b, optimizer step k uses global windows
[k*W*b, (k+1)*W*b) and process r takes its slice, so W processes of batch b see exactly the
windows one process of batch W*b sees."""
import hashlib
import itertools
import json
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig

from tokreason.experiments.data import synthetic
from tokreason.experiments.errors import UserError, first_line

log = logging.getLogger(__name__)

TEXT_SUFFIXES = (".txt", ".jsonl")


@dataclass
class Corpus:
    train: "InMemoryWindows | StreamedWindows"
    val: torch.Tensor  # [n, seq_len]; n may be 0
    description: str


class InMemoryWindows:
    """Windows held in memory; each epoch is a fresh permutation seeded by (seed, epoch)."""

    def __init__(self, windows: torch.Tensor, seed: int):
        self.windows, self.seed = windows, seed
        self._perm_epoch, self._perm = -1, None

    def __len__(self) -> int:
        return len(self.windows)

    def take(self, start: int, count: int) -> torch.Tensor:
        return torch.stack([self._window(i) for i in range(start, start + count)])

    def _window(self, i: int) -> torch.Tensor:
        epoch, j = divmod(i, len(self.windows))
        if epoch != self._perm_epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm, self._perm_epoch = torch.randperm(len(self.windows), generator=g), epoch
        return self.windows[self._perm[j]]


class StreamedWindows:
    """Windows packed lazily from a document stream, in stream order, epochs re-read the
    stream. Going back (a resume) re-reads from the start and skips."""

    def __init__(self, docs: Callable[[], Iterable[str]], tokenizer, seq_len: int):
        self.docs, self.tokenizer, self.seq_len = docs, tokenizer, seq_len
        self._iter, self._next_index = None, 0

    def take(self, start: int, count: int) -> torch.Tensor:
        if self._iter is None or start < self._next_index:
            self._iter, self._next_index = self._windows_forever(), 0
        for _ in range(start - self._next_index):
            next(self._iter)
        out = [next(self._iter) for _ in range(count)]
        self._next_index = start + count
        return torch.stack(out)

    def _windows_forever(self) -> Iterator[torch.Tensor]:
        while True:
            produced = False
            for w in iter_windows(self.docs(), self.tokenizer, self.seq_len):
                produced = True
                yield w
            if not produced:
                raise UserError("the corpus has no text to train on (fewer tokens than one window)")


class BatchStream:
    def __init__(self, source, batch_size: int, rank: int = 0, world_size: int = 1, position: int = 0):
        self.source, self.batch_size, self.rank, self.world_size = source, batch_size, rank, world_size
        self.position = position  # global windows consumed

    def next(self) -> dict[str, torch.Tensor]:
        start = self.position + self.rank * self.batch_size
        ids = self.source.take(start, self.batch_size)
        self.position += self.batch_size * self.world_size
        return {"input_ids": ids}


# ----------------------------------------------------------------------------- building corpora

def iter_windows(docs: Iterable[str], tokenizer, seq_len: int, chunk: int = 256) -> Iterator[torch.Tensor]:
    buffer: list[int] = []
    it = iter(docs)
    while batch := list(itertools.islice(it, chunk)):
        for ids in tokenizer(batch, add_special_tokens=False)["input_ids"]:
            buffer.extend(ids)
            buffer.append(tokenizer.eos_token_id)
        while len(buffer) >= seq_len:
            yield torch.tensor(buffer[:seq_len], dtype=torch.long)
            del buffer[:seq_len]


def pack(docs: list[str], tokenizer, seq_len: int) -> torch.Tensor:
    windows = list(iter_windows(docs, tokenizer, seq_len))
    return torch.stack(windows) if windows else torch.empty(0, seq_len, dtype=torch.long)


def build_corpus(data_cfg: DictConfig, tokenizer, seed: int) -> Corpus:
    seq_len, n_val = int(data_cfg.seq_len), int(data_cfg.val_windows)
    if seq_len < 2:
        raise UserError(f"data.seq_len={seq_len} is too short; it must be at least 2")
    kind = data_cfg.kind
    if kind == "synthetic":
        spec = synthetic.ProblemSpec(min_digits=int(data_cfg.min_digits), max_digits=int(data_cfg.max_digits),
                                     min_steps=int(data_cfg.min_steps), max_steps=int(data_cfg.max_steps))
        try:
            train_docs = synthetic.generate_corpus(int(data_cfg.corpus_seed), int(data_cfg.num_train_docs), "train", spec)
            val_docs = synthetic.generate_corpus(int(data_cfg.corpus_seed), int(data_cfg.num_val_docs), "validation", spec)
        except ValueError as e:
            raise UserError(f"data: {e}") from None
        train = pack(train_docs, tokenizer, seq_len)
        if len(train) == 0:
            raise UserError(f"data.num_train_docs={data_cfg.num_train_docs} gives fewer tokens than one window of seq_len={seq_len}")
        return Corpus(InMemoryWindows(train, seed), pack(val_docs, tokenizer, seq_len)[:n_val],
                      f"synthetic corpus: {len(train_docs)} documents, {train.numel()} tokens")
    if kind == "text":
        docs = read_text_documents(Path(str(data_cfg.path)).expanduser(), str(data_cfg.text_field))
        frac = float(data_cfg.val_fraction)
        if not 0 <= frac < 1:
            raise UserError(f"data.val_fraction={frac} is not valid; it must be in [0, 1)")
        is_val = [_stable_fraction(d) < frac for d in docs]
        train = pack([d for d, v in zip(docs, is_val) if not v], tokenizer, seq_len)
        if len(train) == 0:
            raise UserError(f"data.path={data_cfg.path} has fewer training tokens than one window of seq_len={seq_len}")
        val = pack([d for d, v in zip(docs, is_val) if v], tokenizer, seq_len)[:n_val]
        return Corpus(InMemoryWindows(train, seed), val, f"{data_cfg.path}: {len(docs)} documents, {train.numel()} training tokens")
    if kind == "hf":
        docs = hf_documents(data_cfg)
        n_val_docs = int(data_cfg.val_docs)
        val = pack(list(itertools.islice(docs(), n_val_docs)), tokenizer, seq_len)[:n_val]
        train = StreamedWindows(lambda: itertools.islice(docs(), n_val_docs, None), tokenizer, seq_len)
        train.take(0, 1)  # fail now, not mid-run, on an empty or unreadable corpus
        return Corpus(train, val, f"datasets corpus {data_cfg.name} ({data_cfg.split}, streamed)")
    raise UserError(f"unknown data.kind {kind!r}; valid: synthetic, text, hf")


def _stable_fraction(text: str) -> float:
    return int(hashlib.sha1(text.encode()).hexdigest()[:8], 16) / 2**32


def read_text_documents(path: Path, text_field: str = "text") -> list[str]:
    """A .txt file (documents separated by blank lines), a .jsonl file, or a folder of them."""
    if not path.exists():
        raise UserError(f"data.path={str(path)!r} does not exist; give a .txt or .jsonl file or a folder of them")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in TEXT_SUFFIXES and p.is_file())
        if not files:
            raise UserError(f"data.path={str(path)!r} holds no {' or '.join(TEXT_SUFFIXES)} files")
    elif path.suffix in TEXT_SUFFIXES:
        files = [path]
    else:
        raise UserError(f"data.path={str(path)!r} has suffix {path.suffix!r}; valid: {', '.join(TEXT_SUFFIXES)} or a folder")
    docs: list[str] = []
    for f in files:
        raw = f.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise UserError(f"{f} is not UTF-8 text: byte 0x{raw[e.start]:02x} at offset {e.start}") from None
        if f.suffix == ".txt":
            docs.extend(d.strip() for d in text.split("\n\n") if d.strip())
            continue
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{f}:{lineno} is not valid JSON ({e.msg})") from None
            if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
                raise UserError(f"{f}:{lineno} has no string field {text_field!r} (set data.text_field)")
            if record[text_field].strip():
                docs.append(record[text_field])
    if not docs:
        raise UserError(f"data.path={str(path)!r} has no text (the corpus is empty)")
    return docs


def hf_documents(data_cfg: DictConfig) -> Callable[[], Iterator[str]]:
    """A re-iterable stream of documents from `datasets` (hub name or local path)."""
    import datasets

    try:
        ds = datasets.load_dataset(str(data_cfg.name), data_cfg.get("config_name"), split=str(data_cfg.split),
                                   streaming=bool(data_cfg.streaming))
    except Exception as e:  # datasets raises many types (FileNotFoundError, DatasetNotFoundError, ValueError, ...)
        raise UserError(f"cannot load data.name={data_cfg.name!r} (split {data_cfg.split!r}): {first_line(e)}") from None
    field = str(data_cfg.text_field)
    columns = ds.column_names or []
    if columns and field not in columns:
        raise UserError(f"data.text_field={field!r} is not a column of {data_cfg.name}; columns: {', '.join(columns)}")

    def docs() -> Iterator[str]:
        for record in ds:
            text = record.get(field)
            if not isinstance(text, str):
                raise UserError(f"a record of {data_cfg.name} has no string field {field!r}")
            if text.strip():
                yield text

    return docs
