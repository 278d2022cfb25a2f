"""The embedded base model: a small Llama pretrained once on the synthetic corpus and cached as
an ordinary HF folder under <cache_dir>/base/<hash>, where the hash covers everything that made
it (generator and build versions, corpus, tokenizer and architecture settings, pretraining
recipe, the libraries that compute it, the kernels). Later runs, and other processes, reuse it; a
file lock makes concurrent first runs build it once.

Reproducible across machines: the same recipe gives the same weights, bit for bit, on any x86-64
CPU with AVX2, given the same torch, transformers and tokenizers. CPU kernels are chosen by the
CPU (ATen's vectorised kernels by its widest instruction set, MKL's GEMM by its own dispatch), and
1200 steps of training turn a last-bit difference into a different base model (measured: AVX512
and AVX2 kernels give different weights after 100 steps; README, "The embedded laboratory"). So
with `model.bootstrap.kernels=avx2` (the default) the build runs in a child process whose kernels
are pinned (ATEN_CPU_CAPABILITY=avx2, MKL_CBWR=AVX2, BUILD_THREADS threads); `native` builds in
this process with whatever the CPU prefers (faster on some, not reproducible across CPUs).
bootstrap.json records the weights' sha256, the kernels and the versions: the base's identity."""
import fcntl
import hashlib
import json
import logging
import math
import os
import platform
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import tokenizers
import torch
import torch.nn.functional as F
import transformers
from omegaconf import DictConfig, OmegaConf
from transformers import LlamaConfig, LlamaForCausalLM

from tokreason.experiments.data import chains, synthetic
from tokreason.experiments.data.corpus import synthetic_documents
from tokreason.experiments.data.tokenizer import train_tokenizer
from tokreason.experiments.errors import UserError
from tokreason.methods.thoughts import THOUGHT_END, THOUGHT_START

log = logging.getLogger(__name__)

BUILD_VERSION = 2  # bump whenever build_tiny_base computes something else from the same settings (part of the key)
KERNELS = ("avx2", "native")
BUILD_THREADS = 2  # fixed, so the machine's core count cannot change a reduction's order
PINNED_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "OMP_NUM_THREADS": str(BUILD_THREADS),
              "MKL_NUM_THREADS": str(BUILD_THREADS)}


def library_versions() -> dict:
    return {"torch": torch.__version__.split("+")[0], "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__}


def kernels_of(model_cfg: DictConfig) -> str:
    kernels = str(model_cfg.bootstrap.get("kernels", "avx2"))
    if kernels not in KERNELS:
        raise UserError(f"model.bootstrap.kernels={kernels!r} is not valid; valid: {', '.join(KERNELS)}")
    if kernels == "avx2" and platform.machine().lower() not in ("x86_64", "amd64"):
        log.warning("model.bootstrap.kernels=avx2 needs an x86-64 CPU; this is %s: building with its native kernels "
                    "(the base will not match an x86-64 build bit for bit)", platform.machine())
        return "native"
    return kernels


def tiny_base_key(model_cfg: DictConfig) -> str:
    recipe = {
        "generator_version": synthetic.GENERATOR_VERSION, "chains_version": chains.GENERATOR_VERSION,
        "build_version": BUILD_VERSION, "kernels": kernels_of(model_cfg),
        "architecture": OmegaConf.to_container(model_cfg.architecture, resolve=True),
        "tokenizer": OmegaConf.to_container(model_cfg.tokenizer, resolve=True),
        "bootstrap": OmegaConf.to_container(model_cfg.bootstrap, resolve=True),
        **library_versions(),
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
        if kernels_of(model_cfg) == "avx2":
            build_pinned(model_cfg, tmp, key=final.name)
        else:
            build_tiny_base(model_cfg, tmp, key=final.name)
        os.replace(tmp, final)
    return final


def build_pinned(model_cfg: DictConfig, out: Path, key: str) -> None:
    """build_tiny_base in a child process with the kernels and threads pinned (PINNED_ENV): the
    kernel choice is made once per process, when its libraries load, so it cannot be changed here."""
    out.mkdir(parents=True, exist_ok=True)
    recipe = out / "recipe.json"
    recipe.write_text(json.dumps(OmegaConf.to_container(model_cfg, resolve=True)))
    log.info("building the tiny base model with pinned kernels (%s) in a child process",
             ", ".join(f"{k}={v}" for k, v in PINNED_ENV.items()))
    proc = subprocess.Popen([sys.executable, "-m", "tokreason.experiments.models.tiny_base", str(recipe), str(out), key],
                            env={**os.environ, **PINNED_ENV}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    last = "(no output)"
    for line in proc.stdout:  # its progress, as it comes
        if line.strip():
            last = line.rstrip()
            log.info("%s", last)
    if proc.wait() != 0 or not (out / "bootstrap.json").is_file():
        raise UserError(f"building the tiny base model failed (exit {proc.returncode}): {last}")
    recipe.unlink()


def build_tiny_base(model_cfg: DictConfig, out: Path, key: str) -> None:
    """Generate the pretraining corpus, train the tokenizer, pretrain the tiny Llama, save."""
    boot, arch = model_cfg.bootstrap, model_cfg.architecture
    started = time.perf_counter()
    log.info("building the tiny base model once (cached in %s)", out.parent)
    docs = synthetic_documents(boot, int(boot.num_docs), "pretrain")
    tokenizer = train_tokenizer(docs[: int(model_cfg.tokenizer.train_docs)], int(model_cfg.tokenizer.vocab_size),
                                str(model_cfg.tokenizer.get("digits", "with_space")))
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
            "parameters": sum(p.numel() for p in model.parameters()), "tokens": steps * batch * int(boot.seq_len),
            "weights_sha256": hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest(),
            "kernels": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
            "mkl_cbwr": os.environ.get("MKL_CBWR"), **library_versions()}
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


def base_identity(path: str | Path) -> dict | None:
    """What a built base is (bootstrap.json: its weights' sha256, kernels, versions, key), or None
    for a folder that is no embedded base."""
    info = Path(path) / "bootstrap.json"
    return json.loads(info.read_text()) if info.is_file() else None


if __name__ == "__main__":  # build_pinned's child: python -m ... <recipe.json> <out> <key>
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    torch.set_num_threads(BUILD_THREADS)
    build_tiny_base(OmegaConf.create(json.loads(Path(sys.argv[1]).read_text())), Path(sys.argv[2]), key=sys.argv[3])
