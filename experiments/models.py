"""Models and tokenizers: any Hugging Face causal LM, or the embedded tiny base model.

The tiny model is a small Llama pretrained once on the synthetic corpus and cached as an
ordinary HF folder under <cache_dir>/base/<hash>, where the hash covers everything that made
it (generator version, corpus, tokenizer and architecture settings, pretraining recipe). Later
runs, and other processes, reuse it; a file lock makes concurrent first runs build it once."""
import fcntl
import hashlib
import json
import logging
import math
import os
import random
import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from tokreason.experiments import synthetic
from tokreason.experiments.errors import UserError
from tokreason.experiments.tokenizer import THOUGHT_END_TOKEN, THOUGHT_START_TOKEN, train_tokenizer

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def cache_dir(cfg: DictConfig) -> Path:
    return Path(os.path.expanduser(str(cfg.cache_dir)))


def resolve_model_path(model_cfg: DictConfig, cache: Path) -> str:
    """The folder or hub name to load; builds the tiny base model if it is not cached yet."""
    if model_cfg.kind == "tiny":
        return str(ensure_tiny_base(model_cfg, cache))
    if model_cfg.kind != "hf":
        raise UserError(f"unknown model.kind {model_cfg.kind!r}; valid: tiny, hf")
    name = str(model_cfg.name_or_path)
    looks_local = name.startswith(("/", ".", "~")) or os.sep in name and Path(name).parts[0] in (".", "..")
    if looks_local and not Path(os.path.expanduser(name)).is_dir():
        raise UserError(f"model.name_or_path={name!r} is not an existing folder; give a Hugging Face model folder or a hub name")
    return os.path.expanduser(name) if looks_local else name


def load_model_config(model_cfg: DictConfig, path: str):
    try:
        return AutoConfig.from_pretrained(path, trust_remote_code=bool(model_cfg.get("trust_remote_code", False)),
                                          revision=model_cfg.get("revision"))
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot load model config from model.name_or_path={path!r}: {first}") from None


def _load_kwargs(model_cfg: DictConfig) -> dict:
    return dict(trust_remote_code=bool(model_cfg.get("trust_remote_code", False)), revision=model_cfg.get("revision"))


def _cannot_load(path: str, e: Exception) -> UserError:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return UserError(f"cannot load model.name_or_path={path!r}: {first}")


def load_tokenizer(model_cfg: DictConfig, path: str):
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, **_load_kwargs(model_cfg))
    except (OSError, ValueError) as e:
        raise _cannot_load(path, e) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model_and_tokenizer(model_cfg: DictConfig, path: str):
    dtype = model_cfg.get("dtype", "float32")
    if dtype != "auto" and dtype not in DTYPES:
        raise UserError(f"model.dtype={dtype!r} is not valid; valid: auto, {', '.join(DTYPES)}")
    kwargs = _load_kwargs(model_cfg)
    tokenizer = load_tokenizer(model_cfg, path)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype="auto" if dtype == "auto" else DTYPES[dtype],
            attn_implementation=model_cfg.get("attn_implementation", "sdpa"), **kwargs)
    except (OSError, ValueError) as e:
        raise _cannot_load(path, e) from None
    return model, tokenizer


def context_length(config) -> int | None:
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        if getattr(config, key, None):
            return int(getattr(config, key))
    return None


# ----------------------------------------------------------------------------- tiny base model

def tiny_base_key(model_cfg: DictConfig) -> str:
    recipe = {
        "generator_version": synthetic.GENERATOR_VERSION,
        "architecture": OmegaConf.to_container(model_cfg.architecture, resolve=True),
        "tokenizer": OmegaConf.to_container(model_cfg.tokenizer, resolve=True),
        "bootstrap": OmegaConf.to_container(model_cfg.bootstrap, resolve=True),
        "torch": torch.__version__.split("+")[0],
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def ensure_tiny_base(model_cfg: DictConfig, cache: Path) -> Path:
    final = cache / "base" / tiny_base_key(model_cfg)
    if (final / "bootstrap.json").exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with open(final.parent / f".{final.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building it: wait, then reuse
        if (final / "bootstrap.json").exists():
            return final
        tmp = final.parent / f".{final.name}.tmp{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        build_tiny_base(model_cfg, tmp, key=final.name)
        os.replace(tmp, final)
    return final


def build_tiny_base(model_cfg: DictConfig, out: Path, key: str) -> None:
    """Generate the pretraining corpus, train the tokenizer, pretrain the tiny Llama, save."""
    boot, arch = model_cfg.bootstrap, model_cfg.architecture
    started = time.perf_counter()
    log.info("building the tiny base model once (cached in %s)", out.parent)
    docs = synthetic.generate_corpus(int(boot.corpus_seed), int(boot.num_docs), "pretrain")
    tokenizer = train_tokenizer(docs[: int(model_cfg.tokenizer.train_docs)], int(model_cfg.tokenizer.vocab_size))
    start_id, end_id = tokenizer.convert_tokens_to_ids([THOUGHT_START_TOKEN, THOUGHT_END_TOKEN])
    windows = pack_windows(tokenizer, docs, int(boot.seq_len), empty_thought_rate=float(boot.empty_thought_rate),
                           thought_ids=(start_id, end_id), seed=int(boot.seed))

    torch.manual_seed(int(boot.seed))
    config = LlamaConfig(
        vocab_size=len(tokenizer), **OmegaConf.to_container(arch, resolve=True),
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model = LlamaForCausalLM(config)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=float(boot.lr), betas=(0.9, 0.95),
                                  weight_decay=float(boot.weight_decay))
    steps, warmup, batch = int(boot.steps), int(boot.warmup_steps), int(boot.batch_size)
    schedule = lambda s: min(1.0, (s + 1) / max(1, warmup)) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * s / steps)))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    order = torch.randperm(len(windows), generator=torch.Generator().manual_seed(int(boot.seed)))
    for step in range(steps):
        idx = order[(torch.arange(batch) + step * batch) % len(order)]
        ids = windows[idx]
        targets = ids[:, 1:].masked_fill(ids[:, 1:] == start_id, -100)  # where a thought opens is not taught
        logits = model(input_ids=ids).logits[:, :-1]
        loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 50 == 0 or step == steps - 1:
            log.info("bootstrap step %d/%d loss %.3f", step, steps, loss.item())

    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    info = {"key": key, "final_loss": loss.item(), "seconds": time.perf_counter() - started,
            "parameters": sum(p.numel() for p in model.parameters()), "tokens": steps * batch * int(boot.seq_len)}
    (out / "bootstrap.json").write_text(json.dumps(info, indent=2))
    log.info("tiny base model ready: %d parameters, loss %.3f, %.0f s", info["parameters"], info["final_loss"], info["seconds"])


def pack_windows(tokenizer, docs: list[str], seq_len: int, empty_thought_rate: float = 0.0,
                 thought_ids: tuple[int, int] | None = None, seed: int = 0) -> torch.Tensor:
    """Documents joined by EOS, cut into windows of seq_len tokens (the remainder dropped).
    With empty_thought_rate, an empty thought <start><end> follows that fraction of tokens, so
    the base model learns the meta-tokens carry nothing and reads on after them."""
    ids: list[int] = []
    rng = random.Random(seed)
    for enc in tokenizer(docs, add_special_tokens=False)["input_ids"]:
        for token in enc:
            ids.append(token)
            if empty_thought_rate and rng.random() < empty_thought_rate:
                ids.extend(thought_ids)
        ids.append(tokenizer.eos_token_id)
    n = len(ids) // seq_len
    if n == 0:
        raise UserError(f"the corpus has {len(ids)} tokens, fewer than one window of seq_len={seq_len}")
    return torch.tensor(ids[: n * seq_len], dtype=torch.long).view(n, seq_len)
