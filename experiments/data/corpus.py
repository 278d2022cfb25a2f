"""Corpora as fixed-length token windows, and a batch stream whose position is resumable.

Every corpus (synthetic, local text, a `datasets` corpus) becomes documents joined by EOS and
cut into windows of `seq_len` tokens (data.examples=windows), or, for the methods whose papers
take examples per document (RPT, RLP: data.examples=documents), one row per document: its
tokens from its start, cropped to `seq_len`, then EOS to the end of the row (a position's
context is then its own document's prefix, never another's text or a cut-off start).
Validation is packed windows either way, so every method is validated on the same windows. The stream hands out windows in one global order that
depends only on the seed: with W processes of batch b, optimizer step k uses global windows
[k*W*b, (k+1)*W*b) and process r takes its slice, so W processes of batch b see exactly the
windows one process of batch W*b sees."""
import copy
import hashlib
import itertools
import json
import logging
import os
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig

from tokreason.experiments.data import chains, synthetic
from tokreason.experiments.errors import UserError, first_line

log = logging.getLogger(__name__)

TEXT_SUFFIXES = (".txt", ".jsonl")


@dataclass
class Corpus:
    train: "InMemoryWindows | StreamedWindows"
    val: torch.Tensor  # [n, seq_len]; n may be 0
    description: str


class InMemoryWindows:
    """Windows in memory or mapped from a file; each epoch is a fresh permutation seeded by (seed, epoch)."""

    def __init__(self, windows: torch.Tensor, seed: int):
        self.windows, self.seed = windows, seed
        self._perm_epoch, self._perm = -1, None

    def __len__(self) -> int:
        return len(self.windows)

    def take(self, start: int, count: int) -> torch.Tensor:
        return torch.stack([self._window(i) for i in range(start, start + count)]).long()  # a mapped file holds int32

    def _window(self, i: int) -> torch.Tensor:
        epoch, j = divmod(i, len(self.windows))
        if epoch != self._perm_epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm, self._perm_epoch = torch.randperm(len(self.windows), generator=g), epoch
        return self.windows[self._perm[j]]


class StreamedWindows:
    """Windows packed lazily from this process's share of a `datasets` stream (split by process
    with split_dataset_by_node: each process reads only its share), in stream order; an epoch
    re-reads the share. The position is a small state a checkpoint keeps (the stream's own
    state_dict where the last chunk of documents began, the tokens carried into that chunk and
    the windows already taken from it): a resume reads on from there, never from the start."""

    CHUNK = 256  # documents tokenised at once

    def __init__(self, dataset, field: str, tokenizer, seq_len: int, held_out: frozenset = frozenset(), name: str = "",
                 documents: bool = False):
        self.dataset, self.field, self.tokenizer, self.seq_len = dataset, field, tokenizer, seq_len
        self.held_out, self.name, self.documents = held_out, name, documents
        self._start = copy.deepcopy(dataset.state_dict())  # an epoch's beginning
        self._state = {"epoch": 0, "stream": None, "carry": [], "taken": 0}
        self._windows: Iterator[torch.Tensor] | None = None

    def next(self, count: int) -> torch.Tensor:
        if self._windows is None:
            self._windows = self._generate()
        return torch.stack([next(self._windows) for _ in range(count)])

    def state_dict(self) -> dict:
        return copy.deepcopy(self._state)

    def load_state_dict(self, state: dict) -> None:
        self._state, self._windows = copy.deepcopy(state), None

    def _generate(self) -> Iterator[torch.Tensor]:
        state = self._state
        produced_this_epoch = resumed = state["stream"] is not None
        while True:
            state["stream"] = state["stream"] or copy.deepcopy(self._start)  # where the next chunk begins
            self.dataset.load_state_dict(copy.deepcopy(state["stream"]))
            documents = self._documents(iter(self.dataset))
            while True:
                chunk = list(itertools.islice(documents, self.CHUNK))
                if not chunk:
                    break
                rows, carry = self._rows(chunk, state["carry"])
                skip = state["taken"] if resumed else 0  # resumed inside this chunk: its first windows were taken
                resumed = False
                state["taken"] = skip
                for i in range(skip, len(rows)):
                    produced_this_epoch = True
                    state["taken"] = i + 1
                    yield torch.tensor(rows[i], dtype=torch.long)
                # the next chunk begins where this one ended, with this one's leftover tokens
                state.update(stream=copy.deepcopy(self.dataset.state_dict()), carry=carry, taken=0)
            if not produced_this_epoch:
                raise UserError(f"the corpus {self.name} has no text to train on in this process's share "
                                f"(fewer tokens than one window of {self.seq_len})")
            state.update(epoch=state["epoch"] + 1, stream=None, taken=0)
            produced_this_epoch = False

    def _rows(self, chunk: list[str], carry: list[int]) -> tuple[list[list[int]], list[int]]:
        """A chunk of documents as rows, and the tokens carried into the next chunk: packed
        windows (the leftover carried), or one row per document (nothing carried)."""
        encoded = self.tokenizer(chunk, add_special_tokens=False)["input_ids"]
        eos = self.tokenizer.eos_token_id
        if self.documents:
            return [document_row(ids, eos, self.seq_len) for ids in encoded], []
        buffer = list(carry)
        for ids in encoded:
            buffer.extend(ids)
            buffer.append(eos)
        n = len(buffer) // self.seq_len
        return [buffer[i * self.seq_len:(i + 1) * self.seq_len] for i in range(n)], buffer[n * self.seq_len:]

    def _documents(self, records) -> Iterator[str]:
        for record in records:
            text = record.get(self.field)
            if not isinstance(text, str):
                raise UserError(f"a record of {self.name} has no string field {self.field!r}")
            if text.strip() and _digest(text) not in self.held_out:
                yield text


class BatchStream:
    def __init__(self, source, batch_size: int, rank: int = 0, world_size: int = 1, position: int = 0):
        self.source, self.batch_size, self.rank, self.world_size = source, batch_size, rank, world_size
        self.position = position  # global windows consumed

    def next(self) -> dict[str, torch.Tensor]:
        """The next windows of this process, and their global indices (the methods key their
        randomness by them, so W processes of batch b draw what one process of batch W*b draws).
        A streamed source is this process's own share: it hands out its next windows."""
        start = self.position + self.rank * self.batch_size
        if isinstance(self.source, StreamedWindows):
            ids = self.source.next(self.batch_size)
        else:
            ids = self.source.take(start, self.batch_size)
        self.position += self.batch_size * self.world_size
        return {"input_ids": ids, "window_index": torch.arange(start, start + self.batch_size)}


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


def document_row(ids: list[int], eos: int, seq_len: int) -> list[int]:
    """One document as a row: its tokens and EOS, cropped to seq_len, then EOS to the end."""
    row = [*ids, eos][:seq_len]
    return row + [eos] * (seq_len - len(row))


def pack_documents(docs: list[str], tokenizer, seq_len: int) -> torch.Tensor:
    """One row per (non-empty) document (data.examples=documents)."""
    eos = tokenizer.eos_token_id
    rows = [document_row(ids, eos, seq_len) for ids in tokenizer([d for d in docs if d.strip()], add_special_tokens=False)["input_ids"]]
    return torch.tensor(rows, dtype=torch.long) if rows else torch.empty(0, seq_len, dtype=torch.long)


EXAMPLES = ("windows", "documents")


def training_packer(data_cfg: DictConfig):
    """How training text becomes rows: data.examples (windows, or one row per document)."""
    examples = str(data_cfg.get("examples", "windows"))
    if examples not in EXAMPLES:
        raise UserError(f"data.examples={examples!r} is not valid; valid: {', '.join(EXAMPLES)}")
    return pack_documents if examples == "documents" else pack


def build_corpus(data_cfg: DictConfig, tokenizer, seed: int, rank: int = 0, world: int = 1,
                 cache: Path | None = None) -> Corpus:
    """The training windows and the held-out ones. With several processes a streamed corpus is
    split by process; a local text corpus is packed once into `cache` (by the main process,
    which must build it first) and mapped from the file by every process, not held by each."""
    seq_len = int(data_cfg.seq_len)
    if seq_len < 2:
        raise UserError(f"data.seq_len={seq_len} is too short; it must be at least 2")
    kind = data_cfg.kind
    if kind == "synthetic":
        corpus = _synthetic_corpus(data_cfg, tokenizer, seed)
    elif kind == "text":
        corpus = _text_corpus(data_cfg, tokenizer, seed, cache)
    elif kind == "hf":
        corpus = _datasets_corpus(data_cfg, tokenizer, rank, world)
    else:
        raise UserError(f"unknown data.kind {kind!r}; valid: synthetic, text, hf")
    _check_validation(corpus, data_cfg)
    return corpus


VALIDATION_KNOB = {"synthetic": "data.num_val_docs", "text": "data.val_fraction", "hf": "data.val_docs"}


def _rows_said(data_cfg: DictConfig, train: torch.Tensor, tokens: str = "tokens") -> str:
    if training_packer(data_cfg) is pack_documents:
        return f"{len(train)} rows of one document each"
    return f"{train.numel()} {tokens}"


def _check_validation(corpus: Corpus, data_cfg: DictConfig) -> None:
    """No held-out window while data.val_windows asks for some: the run would end with no
    validation loss and no held-out rows, so it is refused, naming the knob that gives more."""
    wanted = int(data_cfg.val_windows)
    if wanted > 0 and len(corpus.val) == 0:
        knob = VALIDATION_KNOB[str(data_cfg.kind)]
        raise UserError(f"{knob}={data_cfg.get(knob.split('.', 1)[1])} gives no validation window of seq_len="
                        f"{int(data_cfg.seq_len)} tokens ({corpus.description}); raise {knob}, or set data.val_windows=0 "
                        f"to train without a validation loss")


WORLDS = ("chains", "families")


def chain_corpus_spec(data_cfg) -> chains.ChainSpec:
    try:
        return chains.ChainSpec(min_steps=int(data_cfg.min_steps), max_steps=int(data_cfg.max_steps),
                                min_move=int(data_cfg.min_move), max_move=int(data_cfg.max_move))
    except ValueError as e:
        raise UserError(f"data: {e}") from None


def synthetic_documents(data_cfg, n: int, split: str) -> list[str]:
    """n documents of the synthetic world data.world: chains (moves on a ten-hour clock, some
    documents worked; the embedded laboratory) or families (arithmetic, variables, comparisons, word
    problems; answers only)."""
    world, seed = str(data_cfg.world), int(data_cfg.corpus_seed)
    if world not in WORLDS:
        raise UserError(f"data.world={world!r} is not valid; valid: {', '.join(WORLDS)}")
    try:
        if world == "chains":
            return chains.generate_documents(seed, n, split, chain_corpus_spec(data_cfg), float(data_cfg.worked_fraction),
                                             worked_style=str(data_cfg.get("worked_style", "thought")))
        spec = synthetic.ProblemSpec(min_digits=int(data_cfg.min_digits), max_digits=int(data_cfg.max_digits),
                                     min_steps=int(data_cfg.min_steps), max_steps=int(data_cfg.max_steps))
        return synthetic.generate_corpus(seed, n, split, spec)
    except ValueError as e:
        raise UserError(f"data: {e}") from None


def _synthetic_corpus(data_cfg: DictConfig, tokenizer, seed: int) -> Corpus:
    seq_len, n_val = int(data_cfg.seq_len), int(data_cfg.val_windows)
    train_docs = synthetic_documents(data_cfg, int(data_cfg.num_train_docs), "train")
    val_docs = synthetic_documents(data_cfg, int(data_cfg.num_val_docs), "validation")
    train = training_packer(data_cfg)(train_docs, tokenizer, seq_len)
    if len(train) == 0:
        raise UserError(f"data.num_train_docs={data_cfg.num_train_docs} gives fewer tokens than one window of seq_len={seq_len}")
    val = pack(val_docs, tokenizer, seq_len)[:n_val]
    return Corpus(InMemoryWindows(train, seed), val,
                  f"synthetic corpus: {len(train_docs)} documents, {_rows_said(data_cfg, train)}; validation: "
                  f"{len(val_docs)} documents, {len(val)} windows")


def _text_corpus(data_cfg: DictConfig, tokenizer, seed: int, cache: Path | None) -> Corpus:
    seq_len, n_val = int(data_cfg.seq_len), int(data_cfg.val_windows)
    path = Path(str(data_cfg.path)).expanduser()
    frac = float(data_cfg.val_fraction)
    if not 0 <= frac < 1:
        raise UserError(f"data.val_fraction={frac} is not valid; it must be in [0, 1)")
    folder = None
    if cache is not None:
        key = {"files": [(str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in text_files(path)],
               "text_field": str(data_cfg.text_field), "val_fraction": frac, "seq_len": seq_len,
               "tokenizer": tokenizer_fingerprint(tokenizer),
               **({"examples": "documents"} if str(data_cfg.get("examples", "windows")) == "documents" else {})}
        folder = cache / "corpora" / hashlib.sha256(json.dumps(key).encode()).hexdigest()[:16]
    if folder is None or not (folder / "train.npy").exists():
        docs = read_text_documents(path, str(data_cfg.text_field))
        is_val = [_stable_fraction(d) < frac for d in docs]
        train = training_packer(data_cfg)([d for d, v in zip(docs, is_val) if not v], tokenizer, seq_len)
        val = pack([d for d, v in zip(docs, is_val) if v], tokenizer, seq_len)
        if len(train) == 0:
            raise UserError(f"data.path={data_cfg.path} has fewer training tokens than one window of seq_len={seq_len}")
        description = (f"{data_cfg.path}: {len(docs)} documents, {_rows_said(data_cfg, train, 'training tokens')}; validation "
                       f"(data.val_fraction={frac}): {sum(is_val)} documents, {len(val)} windows")
        if folder is None:
            return Corpus(InMemoryWindows(train, seed), val[:n_val], description)
        _write_packed(folder, train, val, description)
    train = _mapped(folder / "train.npy")
    return Corpus(InMemoryWindows(train, seed), _mapped(folder / "val.npy")[:n_val].long(),
                  (folder / "description.txt").read_text())


def tokenizer_fingerprint(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(f"{text}|{tokenizer.eos_token_id}".encode()).hexdigest()


def _write_packed(folder: Path, train: torch.Tensor, val: torch.Tensor, description: str) -> None:
    import numpy as np

    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    dtype = np.int32 if int(train.max()) < 2**31 else np.int64
    np.save(tmp / "train.npy", train.numpy().astype(dtype))
    np.save(tmp / "val.npy", val.numpy().astype(dtype))
    (tmp / "description.txt").write_text(description)
    try:
        os.replace(tmp, folder)
    except OSError:  # written meanwhile by another run: theirs is the same
        shutil.rmtree(tmp, ignore_errors=True)


def _mapped(path: Path) -> torch.Tensor:
    """The file's windows, mapped (pages are read when a window is taken, shared by processes)."""
    import warnings

    import numpy as np

    with warnings.catch_warnings():  # read-only map: torch warns that it cannot write to it (it never does)
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(np.load(path, mmap_mode="r"))


def _datasets_corpus(data_cfg: DictConfig, tokenizer, rank: int, world: int) -> Corpus:
    """The first val_docs documents of the whole stream are held out (every process reads these
    few); training reads this process's share of the stream, without them."""
    from datasets.distributed import split_dataset_by_node

    seq_len, n_val_docs = int(data_cfg.seq_len), int(data_cfg.val_docs)
    dataset, name, field = hf_dataset(data_cfg, world), str(data_cfg.name), str(data_cfg.text_field)
    reader = StreamedWindows(dataset, field, tokenizer, seq_len, name=name)
    val_docs = list(itertools.islice(reader._documents(iter(dataset)), n_val_docs))
    share = split_dataset_by_node(dataset, rank=rank, world_size=world) if world > 1 else dataset
    documents = training_packer(data_cfg) is pack_documents
    train = StreamedWindows(share, field, tokenizer, seq_len, frozenset(map(_digest, val_docs)), name, documents)
    train.next(1)  # fail now, not mid-run, on an empty or unreadable corpus
    train.load_state_dict({"epoch": 0, "stream": None, "carry": [], "taken": 0})
    shares = f", process {rank + 1} of {world} reads its share" if world > 1 else ""
    return Corpus(train, pack(val_docs, tokenizer, seq_len)[:int(data_cfg.val_windows)],
                  f"datasets corpus {name} ({data_cfg.split}, streamed{shares})")


def _stable_fraction(text: str) -> float:
    return int(_digest(text)[:8], 16) / 2**32


def _digest(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


def text_files(path: Path) -> list[Path]:
    """The .txt/.jsonl files of data.path (a file, or a folder's, in sorted order)."""
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
    return files


def _decoded(f: Path) -> str:
    """A file's UTF-8 text. A stray invalid byte (web text has them) becomes U+FFFD, said once in the
    log with where the first one is, rather than failing a run over one byte; a file that is mostly
    not UTF-8 (a binary file given by mistake) is refused."""
    raw = f.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        text = raw.decode("utf-8", errors="replace")
        bad = text.count("\ufffd") - raw.decode("utf-8", errors="ignore").count("\ufffd")
        if bad > max(16, len(raw) // 100):
            raise UserError(f"{f} is not UTF-8 text: {bad} invalid bytes, the first 0x{raw[e.start]:02x} at offset "
                            f"{e.start}; give UTF-8 text") from None
        log.warning("%s: %d byte(s) not UTF-8 (the first 0x%02x at offset %d) read as U+FFFD", f, bad, raw[e.start], e.start)
        return text


def read_text_documents(path: Path, text_field: str = "text") -> list[str]:
    """A .txt file (documents separated by blank lines), a .jsonl file, or a folder of them."""
    docs: list[str] = []
    for f in text_files(path):
        text = _decoded(f)
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


def hf_dataset(data_cfg: DictConfig, world: int = 1):
    """A `datasets` corpus (hub name or local path) as an IterableDataset; one loaded whole
    (streaming: false) is cut into one shard per process."""
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
    if not isinstance(ds, datasets.IterableDataset):
        ds = ds.to_iterable_dataset(num_shards=max(1, min(world, len(ds))))
    return ds
