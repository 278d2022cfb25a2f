"""Shared fixtures: a tiny, fast version of every default, and a private cache per session."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

# A 2-layer model bootstrapped in seconds, a few hundred documents, a handful of steps.
TINY_MODEL = [
    "model.architecture.hidden_size=64", "model.architecture.intermediate_size=128",
    "model.architecture.num_hidden_layers=2", "model.architecture.max_position_embeddings=128",
    "model.tokenizer.vocab_size=400", "model.tokenizer.train_docs=600",
    "model.bootstrap.num_docs=600", "model.bootstrap.steps=30", "model.bootstrap.batch_size=8",
    "model.bootstrap.seq_len=64", "model.bootstrap.warmup_steps=5",
]
SMALL_SYNTHETIC = ["data.num_train_docs=300", "data.num_val_docs=40"]
FAST_RUN = [
    "logger=none", "trainer.progress_bar=false", "data.seq_len=64", "data.val_windows=8",
    "trainer.max_steps=6", "trainer.batch_size=4", "trainer.log_every=2", "trainer.eval_every=3",
    "trainer.checkpoint_every=3", "trainer.warmup_steps=2",
]
FAST = TINY_MODEL + SMALL_SYNTHETIC + FAST_RUN


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cache")
    os.environ["TOKREASON_CACHE"] = str(path)
    return path


@pytest.fixture
def cli(cache_dir, tmp_path):
    """Run `python -m tokreason.cli ...` in a real process, in tmp_path."""

    def run(*args: str, env: dict | None = None, check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
        full_env = {**os.environ, "TOKREASON_CACHE": str(cache_dir), "WANDB_MODE": "offline", "WANDB_SILENT": "true",
                    **(env or {})}
        proc = subprocess.run([sys.executable, "-m", "tokreason.cli", *args], cwd=tmp_path, env=full_env,
                              capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}")
        return proc

    return run
