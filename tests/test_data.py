"""Corpora, windows and the batch stream: local files, datasets folders, errors, resumability."""
import json

import pytest
import torch

from tokreason.experiments.data.corpus import BatchStream, InMemoryWindows, StreamedWindows, build_corpus, read_text_documents
from tokreason.experiments.errors import UserError
from tokreason.experiments.data.tokenizer import train_tokenizer
from omegaconf import OmegaConf

DOCS = [f"Document {i}: Ann has {i} apples and buys {i + 3} more, so she has {2 * i + 3}." for i in range(120)]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(DOCS, 300)


def text_cfg(path, **kw):
    return OmegaConf.create({"kind": "text", "path": str(path), "text_field": "text", "val_fraction": 0.1,
                             "seq_len": 16, "val_windows": 4, **kw})


def test_txt_jsonl_and_folder_read_the_same_documents(tmp_path):
    (tmp_path / "a.txt").write_text("\n\n".join(DOCS[:60]) + "\n")
    (tmp_path / "b.jsonl").write_text("".join(json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(DOCS[60:])))
    assert read_text_documents(tmp_path / "a.txt") == DOCS[:60]
    assert read_text_documents(tmp_path / "b.jsonl") == DOCS[60:]
    assert read_text_documents(tmp_path) == DOCS


@pytest.mark.parametrize("content, message", [
    (b"", "has no text"),
    (b"\n\n  \n", "has no text"),
    (b"good text\n\n" + b"\xff\xfe" * 20, "is not UTF-8 text: 40 invalid bytes, the first 0xff at offset 11"),
])
def test_bad_text_files_are_one_line_errors(tmp_path, content, message):
    path = tmp_path / "corpus.txt"
    path.write_bytes(content)
    with pytest.raises(UserError, match=message) as e:
        read_text_documents(path)
    assert "\n" not in str(e.value)


def test_a_stray_invalid_byte_is_read_as_a_replacement_character_and_said(tmp_path, caplog):
    path = tmp_path / "corpus.txt"
    path.write_bytes(b"cafe one\n\ntwo \xc3\x28 three")
    with caplog.at_level("WARNING"):
        assert read_text_documents(path) == ["cafe one", "two \ufffd( three"]
    assert "1 byte(s) not UTF-8 (the first 0xc3 at offset 14) read as U+FFFD" in caplog.text


def test_jsonl_errors_name_the_line_and_field(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": "fine"}\n{"body": "no text field"}\n')
    with pytest.raises(UserError, match=r"c.jsonl:2 has no string field 'text'"):
        read_text_documents(path)
    with pytest.raises(UserError, match="does not exist"):
        read_text_documents(tmp_path / "missing.jsonl")
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(UserError, match="suffix '.csv'"):
        read_text_documents(tmp_path / "x.csv")


def test_text_corpus_split_is_deterministic_and_disjoint(tmp_path, tokenizer):
    (tmp_path / "a.txt").write_text("\n\n".join(DOCS))
    a = build_corpus(text_cfg(tmp_path / "a.txt"), tokenizer, seed=0)
    b = build_corpus(text_cfg(tmp_path / "a.txt"), tokenizer, seed=0)
    assert torch.equal(a.train.windows, b.train.windows) and torch.equal(a.val, b.val)
    assert 0 < len(a.val) <= 4 and a.train.windows.shape[1] == 16
    train_ids = set(map(tuple, a.train.windows.tolist()))
    assert not any(tuple(w) in train_ids for w in a.val.tolist())


def test_a_text_corpus_is_packed_once_and_mapped_by_every_process(tmp_path, tokenizer):
    (tmp_path / "a.txt").write_text("\n\n".join(DOCS))
    held = build_corpus(text_cfg(tmp_path / "a.txt"), tokenizer, seed=0)
    mapped = [build_corpus(text_cfg(tmp_path / "a.txt"), tokenizer, seed=0, rank=r, world=2, cache=tmp_path / "cache")
              for r in range(2)]
    assert len(list((tmp_path / "cache" / "corpora").iterdir())) == 1  # packed once
    for corpus in mapped:
        assert corpus.train.windows.dtype == torch.int32 and not corpus.train.windows.is_inference()
        assert torch.equal(corpus.train.windows.long(), held.train.windows) and torch.equal(corpus.val, held.val)
        assert corpus.train.take(0, 3).dtype == torch.long and torch.equal(corpus.train.take(0, 3), held.train.take(0, 3))
    (tmp_path / "a.txt").write_text("\n\n".join(DOCS[:100]))  # an edited corpus is packed again
    build_corpus(text_cfg(tmp_path / "a.txt"), tokenizer, seed=0, cache=tmp_path / "cache")
    assert len(list((tmp_path / "cache" / "corpora").iterdir())) == 2


def hf_cfg(folder, **kw):
    return OmegaConf.create({"kind": "hf", "name": str(folder), "config_name": None, "split": "train", "text_field": "text",
                             "streaming": True, "val_docs": 10, "seq_len": 16, "val_windows": 4, **kw})


def jsonl_folder(tmp_path, docs, files=1):
    folder = tmp_path / "ds"
    folder.mkdir()
    for f in range(files):
        (folder / f"train_{f}.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs[f::files]))
    return folder


def packed(tokenizer, docs):
    return torch.cat([torch.tensor(tokenizer(d, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id])
                      for d in docs])


def test_datasets_corpus_from_a_local_folder_streams_and_resumes_where_it_was(tmp_path, tokenizer, monkeypatch):
    cfg = hf_cfg(jsonl_folder(tmp_path, DOCS))
    corpus = build_corpus(cfg, tokenizer, seed=0)
    assert isinstance(corpus.train, StreamedWindows) and len(corpus.val) == 4
    expected = packed(tokenizer, DOCS[10:])  # the first val_docs documents are held out
    monkeypatch.setattr(StreamedWindows, "CHUNK", 7)  # windows cross chunks of documents
    assert torch.equal(corpus.train.next(3).flatten(), expected[:48])
    state = json.loads(json.dumps(corpus.train.state_dict()))  # as a checkpoint keeps it
    later = corpus.train.next(40)
    resumed = build_corpus(cfg, tokenizer, seed=0).train
    resumed.load_state_dict(state)
    reads = []
    original = StreamedWindows._documents
    monkeypatch.setattr(StreamedWindows, "_documents", lambda self, records: original(self, (reads.append(r) or r for r in records)))
    assert torch.equal(resumed.next(40), later)
    assert len(reads) < len(DOCS) - 10  # read on from the checkpoint, not from the stream's start
    epochs = build_corpus(cfg, tokenizer, seed=0).train
    total = len(expected) // 16
    first = epochs.next(total)
    assert first.shape[0] == total and torch.equal(first.flatten(), expected[:total * 16])
    assert epochs.next(1).shape == (1, 16)  # the next epoch re-reads the stream
    bad = OmegaConf.merge(cfg, {"text_field": "body"})
    with pytest.raises(UserError, match="data.text_field='body' is not a column"):
        build_corpus(bad, tokenizer, seed=0)
    with pytest.raises(UserError, match="cannot load data.name="):
        build_corpus(OmegaConf.merge(cfg, {"name": str(tmp_path / "nope")}), tokenizer, seed=0)


@pytest.mark.parametrize("files,streaming", [(4, True), (1, True), (1, False)])
def test_each_process_reads_its_share_of_a_datasets_corpus(tmp_path, tokenizer, files, streaming):
    cfg = hf_cfg(jsonl_folder(tmp_path, DOCS, files), streaming=streaming)
    shares = [build_corpus(cfg, tokenizer, seed=0, rank=r, world=2).train for r in range(2)]
    held_out = set(map(tuple, build_corpus(cfg, tokenizer, seed=0).val.tolist()))
    seen = []
    for share in shares:
        share.dataset.load_state_dict(share._start)
        seen.append(list(share._documents(iter(share.dataset))))
    assert not set(seen[0]) & set(seen[1])  # disjoint shares
    stream_order = [d for d in (DOCS if files == 1 else [d for f in range(files) for d in DOCS[f::files]])]
    val_docs = stream_order[:10]
    assert sorted(seen[0] + seen[1]) == sorted(d for d in DOCS if d not in val_docs)  # together: all but the held-out
    assert all(len(s) > 40 for s in seen)
    assert not any(tuple(w) in held_out for s in shares for w in s.next(5).tolist())


def test_two_ranks_of_batch_b_see_what_one_rank_of_batch_2b_sees():
    source = InMemoryWindows(torch.arange(50 * 4).view(50, 4), seed=3)
    one = BatchStream(source, batch_size=6)
    ranks = [BatchStream(source, batch_size=3, rank=r, world_size=2) for r in range(2)]
    for _ in range(20):  # crosses epochs, each a different permutation
        assert torch.equal(one.next()["input_ids"], torch.cat([r.next()["input_ids"] for r in ranks]))
    resumed = BatchStream(source, batch_size=6, position=one.position)
    assert torch.equal(resumed.next()["input_ids"], one.next()["input_ids"])
    epochs = source.take(0, 100).view(2, 50, 4)
    assert not torch.equal(epochs[0], epochs[1]) and sorted(epochs[0][:, 0].tolist()) == sorted(epochs[1][:, 0].tolist())


def _document_rows(tokenizer, docs, seq_len):
    eos = tokenizer.eos_token_id
    rows = []
    for d in docs:
        row = (tokenizer(d, add_special_tokens=False)["input_ids"] + [eos])[:seq_len]
        rows.append(row + [eos] * (seq_len - len(row)))
    return torch.tensor(rows)


@pytest.mark.parametrize("kind", ["text", "hf"])
def test_one_row_per_document_from_its_start_cropped_then_eos(tmp_path, tokenizer, kind, monkeypatch):
    """data.examples=documents: each training row is one document from its first token (cropped
    to seq_len, EOS after it to the row's end), in a text corpus and a stream (resumable);
    validation stays packed windows."""
    docs = [*DOCS[:40], "Ann " * 30]  # the last one is longer than a row: cropped, its start kept
    if kind == "text":
        (tmp_path / "c.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
        cfg = text_cfg(tmp_path / "c.jsonl", val_fraction=0.0, val_windows=0, examples="documents")
        windows = build_corpus(text_cfg(tmp_path / "c.jsonl", val_fraction=0.0, val_windows=0), tokenizer, seed=0)
        corpus = build_corpus(cfg, tokenizer, seed=0)
        rows = corpus.train.windows
        assert torch.equal(rows, _document_rows(tokenizer, docs, 16)) and len(windows.train) != len(rows)
        assert "41 rows of one document each" in corpus.description
    else:
        cfg = OmegaConf.merge(hf_cfg(jsonl_folder(tmp_path, docs)), {"examples": "documents"})
        monkeypatch.setattr(StreamedWindows, "CHUNK", 7)
        train = build_corpus(cfg, tokenizer, seed=0).train
        expected = _document_rows(tokenizer, docs[10:], 16)  # the first val_docs documents are held out
        assert torch.equal(train.next(5), expected[:5])
        state = json.loads(json.dumps(train.state_dict()))
        later = train.next(9)
        resumed = build_corpus(cfg, tokenizer, seed=0).train
        resumed.load_state_dict(state)
        assert torch.equal(resumed.next(9), later) and torch.equal(later, expected[5:14])
    with pytest.raises(UserError, match="data.examples='pages' is not valid; valid: windows, documents"):
        build_corpus(OmegaConf.merge(cfg, {"examples": "pages"}), tokenizer, seed=0)


@pytest.mark.parametrize("method", ["rpt", "rlp"])
def test_on_document_rows_a_position_is_in_its_document_and_its_context_starts_there(tokenizer, method):
    """RPT and RLP (method.context=document) on document rows: every chosen position is a token
    of its document (never the EOS padding), its context starts at the row's start, and RLP takes
    one position per document."""
    from conftest import tiny_llama
    from tokreason.methods.rlp import RLP
    from tokreason.methods.rpt import RPT

    docs = [DOCS[i] + " " + "and more words" * (i % 3) for i in range(8)]
    rows = _document_rows(tokenizer, docs, 48)
    trained = (RPT if method == "rpt" else RLP)(template="meta", selector="random", positions_per_window=1 if method == "rlp" else 3,
                                                min_context=2)
    model = trained.wrap(tiny_llama(len(tokenizer) + 2), tokenizer)
    where, begin = model.config.choose(model.lm, rows, min_continuation=1, seed=3, windows=torch.arange(len(rows)),
                                       eos_id=tokenizer.eos_token_id)
    eos = tokenizer.eos_token_id
    lengths = [(r == eos).nonzero()[0, 0].item() for r in rows]  # each document's tokens before its EOS
    assert len(where) and (begin == 0).all()
    assert all(t < lengths[r] for r, t in where.tolist())
    if method == "rlp":
        assert sorted(where[:, 0].tolist()) == list(range(len(rows)))  # one position per document
