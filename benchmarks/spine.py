"""Speed of the spine, printed as figures (not a timed test).

1. `tokreason train` with the defaults, from an empty cache: the one-time base-model bootstrap
   and the training run, timed separately (goal: both together within 5 minutes on 2 cores).
2. Runner overhead: the loop's tokens/s on the tiny model against a bare PyTorch loop doing the
   same forward/backward/clip/AdamW/schedule on the same batches (goal: at least 80%).

    python benchmarks/spine.py                 # both
    python benchmarks/spine.py --skip-default  # only the overhead comparison (reuses the cache)
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def default_run(cache: Path, out: Path) -> None:
    env = {**os.environ, "TOKREASON_CACHE": str(cache), "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "tokreason.cli", "train", f"run_dir={out}", "trainer.progress_bar=false"],
                   env=env, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - started
    summary = json.loads((out / "summary.json").read_text())
    boot = json.loads(next((cache / "base").glob("*/bootstrap.json")).read_text())
    print(f"default `tokreason train` from an empty cache: {wall:.1f} s wall in all")
    print(f"  bootstrap of the tiny base model: {summary['bootstrap_seconds']:.1f} s "
          f"({boot['parameters']:,} parameters, {boot['tokens']:,} tokens, final loss {boot['final_loss']:.3f})")
    print(f"  training loop: {summary['train_seconds']:.1f} s for {summary['steps']} steps, "
          f"{summary['tokens_per_second']:.0f} tokens/s, val loss {summary['val_loss']:.4f}")
    print(f"  rest (start-up, corpus, tokenizing, validation, checkpoints, export, W&B): "
          f"{wall - summary['bootstrap_seconds'] - summary['train_seconds']:.1f} s")


def overhead(cache: Path, out: Path, steps: int, batch_size: int) -> None:
    from omegaconf import OmegaConf

    from tokreason.experiments.data.corpus import build_corpus
    from tokreason.experiments.launch.compose import compose_config
    from tokreason.experiments.models.loading import cache_dir, load_model_and_tokenizer, resolve_model_path
    from tokreason.experiments.training.runner import train
    from tokreason.methods.lm import next_token_nll

    os.environ["TOKREASON_CACHE"] = str(cache)
    # Both loops run 2*steps on the same batches and are timed on the second half (the first warms up).
    overrides = ["logger=none", "trainer.progress_bar=false", f"trainer.max_steps={2 * steps}", f"trainer.batch_size={batch_size}",
                 f"trainer.log_every={steps}", "trainer.eval_every=0", "trainer.checkpoint_every=0",
                 "trainer.export_model=false", f"run_dir={out}"]
    cfg = compose_config(overrides)
    OmegaConf.resolve(cfg)

    # Bare loop: the same model, batches (the runner's first `steps` batches), optimizer and schedule.
    path = resolve_model_path(cfg.model, cache_dir(cfg))
    model, tokenizer = load_model_and_tokenizer(cfg.model, path)
    corpus = build_corpus(cfg.data, tokenizer, int(cfg.seed))
    batches = [corpus.train.take(i * batch_size, batch_size) for i in range(2 * steps)]
    t = cfg.trainer
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
                                  lr=t.lr, betas=tuple(t.betas), eps=t.eps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    torch.manual_seed(0)
    model.train()
    for i, ids in enumerate(batches):
        if i == steps:
            started = time.perf_counter()
        loss = next_token_nll(model(input_ids=ids).logits, ids)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), t.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()
    bare = steps * batch_size * int(cfg.data.seq_len) / (time.perf_counter() - started)

    train(cfg, out)
    first, second = [json.loads(x) for x in (out / "timing.jsonl").read_text().splitlines()]
    runner = steps * batch_size * int(cfg.data.seq_len) / (second["time/train_seconds"] - first["time/train_seconds"])
    print(f"runner overhead, tiny model, {steps} timed steps (after {steps} warm-up steps) of {batch_size}x{cfg.data.seq_len} "
          f"tokens, CPU x{torch.get_num_threads()} threads:")
    print(f"  bare PyTorch loop: {bare:,.0f} tokens/s")
    print(f"  tokreason runner:  {runner:,.0f} tokens/s  ({100 * runner / bare:.1f}% of bare; goal >= 80%)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-default", action="store_true", help="skip the default run from an empty cache")
    parser.add_argument("--cache", type=Path, help="cache to reuse for the overhead part (default: the one the default run built)")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cache = args.cache or Path(os.environ.get("TOKREASON_CACHE", Path.home() / ".cache" / "tokreason"))
        if not args.skip_default:
            cache = args.cache or tmp / "cache"
            default_run(cache, tmp / "default-run")
        overhead(cache, tmp / "overhead-run", args.steps, args.batch_size)


if __name__ == "__main__":
    main()
