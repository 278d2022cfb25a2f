"""The embedded base model: a small Llama pretrained once on the synthetic corpus and cached as
an ordinary HF folder under <cache_dir>/base/<hash>, where the hash covers everything that made
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
from transformers import LlamaConfig, LlamaForCausalLM

from tokreason.experiments.data import chains, synthetic
from tokreason.experiments.data.corpus import synthetic_documents
from tokreason.experiments.data.tokenizer import train_tokenizer
from tokreason.experiments.errors import UserError
from tokreason.methods.thoughts import THOUGHT_END, THOUGHT_START

log = logging.getLogger(__name__)

def tiny_base_key(model_cfg: DictConfig) -> str:
    recipe = {
        "generator_version": synthetic.GENERATOR_VERSION, "chains_version": chains.GENERATOR_VERSION,
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
    docs = synthetic_documents(boot, int(boot.num_docs), "pretrain")
    tokenizer = train_tokenizer(docs[: int(model_cfg.tokenizer.train_docs)], int(model_cfg.tokenizer.vocab_size))
    start_id, end_id = tokenizer.convert_tokens_to_ids([THOUGHT_START, THOUGHT_END])
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
