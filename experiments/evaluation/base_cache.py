"""The base model of an evaluation: loaded once, on first need, and its per-example scores cached
under <cache_dir>/eval/<key>.json, the key hashing the base model's files, the benchmark and its
source, the eval settings that change scores and the think mode's inference, so a sweep (or a
later `tokreason eval`) scores the base once."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from omegaconf import DictConfig

from tokreason.experiments.files import atomic_write_text

EVAL_VERSION = 2  # bump when a score for the same inputs would change (it is part of the cache key)


def model_fingerprint(path: str) -> str:
    """A hash of a model folder's files (a hub name: the name and revision)."""
    folder = Path(path)
    h = hashlib.sha256()
    if not folder.is_dir():
        h.update(f"hub:{path}".encode())
        return h.hexdigest()[:24]
    for file in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
        h.update(str(file.relative_to(folder)).encode() + b"\0")
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:24]


def cache_key(fingerprint: str, bench_sig: dict, think_sig: dict) -> str:
    blob = json.dumps({"version": EVAL_VERSION, "model": fingerprint, "benchmark": bench_sig, "think": think_sig},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def read_cached(cache: Path, key: str) -> dict | None:
    path = cache / "eval" / f"{key}.json"
    return json.loads(path.read_text())["values"] if path.exists() else None


def write_cached(cache: Path, key: str, values: dict, about: dict) -> None:
    folder = cache / "eval"
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / f"{key}.json", json.dumps({"about": about, "values": values}, default=str))


class BaseModel:
    """The base model and its tokenizer, loaded on first `get()`. `prepare(lm, tokenizer)` runs
    on every load (the held-out windows' thought tokens given as training gave them). A thinking
    inference may add its thought tokens to the model (rows of its embeddings): the next `get()`
    then loads it again, so every inference sees the base as it was loaded, in any order."""

    def __init__(self, cfg: DictConfig, path: str):
        self.cfg, self.path = cfg, path
        self.prepare = lambda lm, tokenizer: None
        self._loaded: tuple | None = None
        self._shape: tuple | None = None

    def get(self):
        if self._loaded is not None and self._shape != _shape(*self._loaded):
            self._loaded = None  # changed by the last inference (thought tokens added): load it again
        if self._loaded is None:
            from tokreason.experiments.models.loading import load_model_and_tokenizer

            lm, tokenizer = load_model_and_tokenizer(self.cfg.model, self.path)
            if torch.cuda.is_available():
                lm.to("cuda")
            self.prepare(lm, tokenizer)
            self._loaded, self._shape = (lm.eval(), tokenizer), _shape(lm, tokenizer)
        return self._loaded


def _shape(lm, tokenizer) -> tuple:
    """What an inference may change on the base: its tokens, their embedding rows, its attention."""
    return len(tokenizer), lm.get_input_embeddings().weight.shape[0], getattr(lm.config, "_attn_implementation", None)
