"""Quiet-STaR step time and peak memory, fast path against the dense reference, and CPT.

The fast path attends each thought step to the text's fixed causal mask plus the position's
own thought (a diagonal); the dense reference is the official code's computation, a mask that
grows by L keys per thought step. One optimizer step (forward, backward, AdamW) on the tiny
embedded architecture (random weights: timing only), n_ahead 12 / talk 4 / passes 2, batch 1.
Each configuration runs in its own process so its peak memory is its own.

    python benchmarks/quiet_star.py [--lengths 128 256 512] [--steps 3]
"""
import argparse
import json
import resource
import subprocess
import sys
import time


def one(method: str, attention: str, length: int, steps: int) -> dict:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tokreason.experiments.data.tokenizer import train_tokenizer
    from tokreason.methods.cpt import CPT
    from tokreason.methods.quiet_star import QuietStar

    torch.manual_seed(0)
    tokenizer = train_tokenizer(["Ann has 3 apples --- and 4 pears."] * 50, 300)
    lm = LlamaForCausalLM(LlamaConfig(vocab_size=1024, hidden_size=128, intermediate_size=384, num_hidden_layers=6,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024))
    if method == "cpt":
        model, step = lm, CPT().step
    else:
        qs = QuietStar(n_ahead=12, n_ahead_talk=4, n_passes=2, attention=attention)
        model, step = qs.wrap(lm, tokenizer), qs.step
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch = {"input_ids": torch.randint(4, 1024, (1, length))}
    cuda = torch.cuda.is_available()
    if cuda:
        model.cuda()
        batch = {"input_ids": batch["input_ids"].cuda()}
    baseline_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def run() -> None:
        step(model, batch, lambda loss: loss.backward())
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()

    run()  # warm-up (allocations, kernels)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    for _ in range(steps):
        run()
    seconds = (time.perf_counter() - started) / steps
    peak_mb = (torch.cuda.max_memory_allocated() / 2**20 if cuda else
               (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - baseline_kb) / 1024)
    return {"seconds": seconds, "peak_mb": peak_mb}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[128, 256, 512])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--one", nargs=3, metavar=("METHOD", "ATTENTION", "LENGTH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one[0], args.one[1], int(args.one[2]), args.steps)))
        return
    rows = []
    for length in args.lengths:
        for method, attention in (("cpt", "-"), ("quiet_star", "fast"), ("quiet_star", "dense")):
            out = subprocess.run([sys.executable, __file__, "--one", method, attention, str(length), "--steps", str(args.steps)],
                                 capture_output=True, text=True, check=True)
            rows.append((length, method, attention, json.loads(out.stdout.strip().splitlines()[-1])))
    print("one optimizer step, tiny Llama (1.3M), batch 1, n_ahead 12 / talk 4 / passes 2")
    print(f"{'L':>5} {'method':<11} {'attention':<9} {'step s':>8} {'peak MB':>9} {'dense/fast':>11}")
    for length, method, attention, r in rows:
        ratio = ""
        if attention == "dense":
            fast = next(x for l, m, a, x in rows if l == length and a == "fast")
            ratio = f"{r['seconds'] / fast['seconds']:.2f}x"
        print(f"{length:>5} {method:<11} {attention:<9} {r['seconds']:>8.3f} {r['peak_mb']:>9.0f} {ratio:>11}")


if __name__ == "__main__":
    main()
