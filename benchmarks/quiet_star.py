"""Quiet-STaR step time and peak memory: the fused thought attention against the official
computation (a dense mask growing by L keys per thought step, `method.attention=dense`), each
as a multiple of a plain (CPT) step on the same windows.

The shape of the issue's official-code measurement: a tiny random Mistral (vocab 514, hidden
128, 4 layers, 4 heads, intermediate 512), 4 windows, n_ahead 12 / talk 4 / passes 2, one
optimizer step (forward, backward, AdamW). Then the fused path alone at longer windows, to see
how its peak memory grows with L. Every configuration runs in its own process: its peak RSS
(the process's whole peak, Python and torch included) is its own; a step is timed after one
warm-up step.

    python benchmarks/quiet_star.py [--lengths 128 256 512] [--sweep 256 512 1024 2048] [--steps 2]
"""
import argparse
import json
import resource
import subprocess
import sys
import time

# The measurement of the official code (ezelikman/quiet-star) on this 2-core CPU, same
# shape: seconds per step and peak GB by window length (printed beside ours; not re-measured).
OFFICIAL = {128: (2.18, 2.98), 256: (6.40, 5.84), 512: (20.9, 11.45)}


def one(method: str, attention: str, length: int, steps: int) -> dict:
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    from tokreason.experiments.data.tokenizer import train_tokenizer
    from tokreason.methods.cpt import CPT
    from tokreason.methods.quiet_star import QuietStar

    torch.manual_seed(0)
    tokenizer = train_tokenizer(["Ann has 3 apples --- and 4 pears."] * 50, 300)
    lm = MistralForCausalLM(MistralConfig(vocab_size=514, hidden_size=128, intermediate_size=512, num_hidden_layers=4,
                                          num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=4096,
                                          sliding_window=None))
    options = dict(attention="fast", checkpoint_mlp=True) if attention == "fast+mlp" else dict(attention=attention)
    method_obj = CPT() if method == "cpt" else QuietStar(n_ahead=12, n_ahead_talk=4, n_passes=2, **options)
    model = method_obj.wrap(lm, tokenizer)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    batch = {"input_ids": torch.randint(4, 514, (4, length))}

    def run() -> None:
        method_obj.step(model, batch, lambda loss: loss.backward())
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    run()  # warm-up (allocations, kernels)
    started = time.perf_counter()
    for _ in range(steps):
        run()
    seconds = (time.perf_counter() - started) / steps
    return {"seconds": seconds, "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def measure(method: str, attention: str, length: int, steps: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--one", method, attention, str(length), "--steps", str(steps)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[128, 256, 512])
    parser.add_argument("--sweep", type=int, nargs="*", default=[256, 512, 1024, 2048])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--one", nargs=3, metavar=("METHOD", "ATTENTION", "LENGTH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one[0], args.one[1], int(args.one[2]), args.steps)))
        return
    print("one optimizer step: random Mistral (vocab 514, hidden 128, 4 layers), 4 windows, n_ahead 12 / talk 4 / passes 2")
    print("  official: the issue's measurement of ezelikman/quiet-star (same shape, this CPU); dense: its attention here")
    print("  fused: method.attention=fast (default); +mlp: and method.checkpoint_mlp=true")
    columns = (("dense", "dense"), ("fused", "fast"), ("fused+mlp", "fast+mlp"))
    print(f"{'L':>5} {'plain s':>8} | {'official s':>10} {'GB':>6} | "
          + " | ".join(f"{name + ' s (x plain)':>20} {'GB':>5} {'vs off.':>7}" for name, _ in columns))
    for length in args.lengths:
        plain = measure("cpt", "-", length, args.steps)
        official = OFFICIAL.get(length)
        line = f"{length:>5} {plain['seconds']:>8.3f} | " + (f"{official[0]:>10.2f} {official[1]:>6.2f}" if official else f"{'n/a':>10} {'':>6}")
        for _, attention in columns:
            r = measure("quiet_star", attention, length, args.steps)
            speed = f"{official[0] / r['seconds']:>6.2f}x" if official else f"{'n/a':>7}"
            line += f" | {r['seconds']:>11.2f} ({r['seconds'] / plain['seconds']:>4.0f}x) {r['peak_gb']:>5.2f} {speed}"
        print(line)
    if args.sweep:
        print("\nthe fused path (with checkpoint_mlp) at longer windows: peak GB, and its growth per doubling of L")
        previous = None
        for length in args.sweep:
            fused = measure("quiet_star", "fast+mlp", length, 1)
            growth = f"{fused['peak_gb'] / previous:.2f}x" if previous else ""
            print(f"{length:>5} {fused['seconds']:>8.2f} s {fused['peak_gb']:>6.2f} GB {growth:>7}")
            previous = fused["peak_gb"]


if __name__ == "__main__":
    main()
