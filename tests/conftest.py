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
    "trainer.checkpoint_every=3", "trainer.warmup_steps=2", "eval=none",
]
FAST = TINY_MODEL + SMALL_SYNTHETIC + FAST_RUN


def tiny_llama(vocab: int):
    """A 2-layer Llama with seeded random weights, for tests of a method's mechanics."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, max_position_embeddings=128))


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


def stop_and_resume(cli, tmp_path: Path, args: list[str], stop_after_checkpoint: int) -> Path:
    """Run `train *args` once uninterrupted (run dir `reference`), and once stopped by a real
    SIGTERM after the checkpoint at `stop_after_checkpoint`, then resumed (run dir `run`)."""
    import signal
    import time

    cli("train", *args, "run_dir=reference")
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "tokreason.cli", "train", *args, f"run_dir={run}"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    marker = run / "checkpoints" / f"step_{stop_after_checkpoint:08d}" / "trainer_state.json"
    deadline = time.time() + 300
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "the run finished before it could be stopped"
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM and not (run / "summary.json").exists()
    cli("train", *args, f"run_dir={run}")
    return run


def same_weights(a: Path, b: Path) -> bool:
    import torch
    from safetensors.torch import load_file

    x, y = load_file(str(a / "model" / "model.safetensors")), load_file(str(b / "model" / "model.safetensors"))
    return x.keys() == y.keys() and all(torch.equal(v, y[k]) for k, v in x.items())


def hf_folder(path: Path, arch: str = "llama", tied: bool = True, sliding_window: int | None = None,
              spare_rows: int = 0, context: int = 256, thought_tokens: bool = False) -> Path:
    """An ordinary Hugging Face model folder, as a hub model would be: a byte-level BPE tokenizer
    with no thought tokens (EOS only; `thought_tokens`: with the thought markers as special tokens
    of its own, as a model trained with them has) and a tiny random model of `arch` (llama,
    mistral, qwen2, gpt2), tied or untied embeddings, an optional sliding window, and optionally
    embedding rows beyond the tokenizer (as Qwen's checkpoints have)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, MistralConfig,
                              MistralForCausalLM, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM)

    from tokreason.experiments.data.synthetic import generate_corpus

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(generate_corpus(7, 400, "train"), trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                        clean_up_tokenization_spaces=False)
    if thought_tokens:
        from tokreason.methods.thoughts import THOUGHT_END, THOUGHT_START

        tokenizer.add_special_tokens({"extra_special_tokens": [THOUGHT_START, THOUGHT_END]})
    vocab = len(tokenizer) + spare_rows
    torch.manual_seed(0)
    common = dict(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=context, tie_word_embeddings=tied,
                  eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id)
    if arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common))
    elif arch == "mistral":
        model = MistralForCausalLM(MistralConfig(sliding_window=sliding_window, **common))
    elif arch == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    else:
        model = GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=4, n_positions=context,
                                           tie_word_embeddings=tied, eos_token_id=tokenizer.eos_token_id))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def text_corpus(path: Path, docs: int = 300) -> Path:
    """A local .jsonl corpus (the synthetic generator's documents), as data=text reads it."""
    import json

    from tokreason.experiments.data.synthetic import generate_corpus

    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in generate_corpus(11, docs, "train")))
    return path


def rollout_step(method, model, ids, windows=None):
    """A rollout method's whole step on one process (RolloutMethod.step, as the runner calls it),
    returning its loss (the sum of what it back-propagated, its graph kept) and its metrics."""
    from tokreason.methods import LocalBackward

    losses = []
    batch = {"input_ids": ids} if windows is None else {"input_ids": ids, "window_index": windows}
    metrics = method.step(model, batch, LocalBackward(losses.append))
    return sum(losses), metrics


def base_only(think: str) -> bool:
    """A row of the base alone (no trained value): the oracle and the headroom rows."""
    return think in ("oracle", "oracle_partial") or think.startswith("pass@")
