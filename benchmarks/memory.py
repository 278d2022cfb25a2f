"""Peak memory of one optimizer step of every method on a mid-size random model, by window
length, beside what the memory model (benchmarks/memory_model.py) predicts; then
the model's extrapolation to the papers' scale.

The model: a random Llama of about 25M parameters (vocab 32,000, hidden 384, 8 layers, 6 query
heads over 2 key/value heads, MLP 1024, tied embeddings), fp32 weights and AdamW, on the CPU.
Each (method, L) runs two optimizer steps in its own process (the second is the steady state:
AdamW's moments exist during its backward); the peak RSS minus the process's RSS before the
model was built is what a step needs (weights, gradients, AdamW state, activations). The settings
are the presets' shapes, made small enough for a CPU: Quiet-STaR n_ahead 6 / talk 2 / 2 passes,
RPT and RLP 4 positions x G 4 x 32-token thoughts.

    python benchmarks/memory.py [--lengths 512 1024 2048] [--methods cpt quiet_star rpt rlp]
"""
import argparse
import json
import resource
import subprocess
import sys

ARCH = dict(vocab_size=32000, hidden_size=384, intermediate_size=1024, num_hidden_layers=8, num_attention_heads=6,
            num_key_value_heads=2, tie_word_embeddings=True)
SETTINGS = {
    "cpt": dict(batch=1),
    "quiet_star": dict(batch=1, n_ahead=6, n_ahead_talk=2, n_passes=2),
    "rpt": dict(batch=1, positions=4, group_size=4, thought_budget=32),
    "rlp": dict(batch=4, positions=1, group_size=4, thought_budget=32),
}
PREDICTED_AS = {  # the same settings as the memory model reads them (positions in all)
    "cpt": dict(batch=1),
    "quiet_star": dict(batch=1, n_ahead=6, n_ahead_talk=2, n_passes=2),
    "rpt": dict(positions=4, group_size=4, thought_budget=32, frozen_copies=0),  # proxy_model=self
    "rlp": dict(positions=4, group_size=4, thought_budget=32),
}


def one(method: str, length: int) -> dict:
    import time

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tokreason.experiments.data.tokenizer import train_tokenizer
    from tokreason.methods import LocalBackward, build_method

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    torch.manual_seed(0)
    tokenizer = train_tokenizer([f"Ann has {i} apples --- and {i + 1} pears." for i in range(300)], 400)
    lm = LlamaForCausalLM(LlamaConfig(max_position_embeddings=length + 512, **ARCH))
    s = SETTINGS[method]
    options = {k: v for k, v in s.items() if k not in ("batch", "positions")}
    if method in ("rpt", "rlp"):  # positions at the windows' ends: the longest prompts, the worst case
        options.update(selector="random", positions_per_window=s["positions"], min_thought_tokens=s["thought_budget"],
                       min_context=length - s["positions"] - 2)
    if method == "rpt":
        options.update(template="meta", proxy_model="self")
    if method == "rlp":
        options.update(template="meta")
    algo = build_method({"name": method, **options})
    model = algo.wrap(lm, tokenizer)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    batch = {"input_ids": torch.randint(4, 300, (s["batch"], length))}
    for _ in range(2):  # the second step is the steady state: AdamW's moments exist during its backward
        started = time.perf_counter()
        algo.step(model, batch, LocalBackward())
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    params = sum(p.numel() for p in lm.parameters())
    return {"peak_gb": (peak - before) / 2**20, "seconds": seconds, "parameters": params}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 1024, 2048])
    parser.add_argument("--methods", nargs="+", default=list(SETTINGS))
    parser.add_argument("--one", nargs=2, metavar=("METHOD", "LENGTH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one[0], int(args.one[1]))))
        return
    from memory_model import ModelShape, predict_gb, report

    shape = ModelShape.from_config(ARCH)
    print(f"one optimizer step, random Llama ({shape.parameters / 1e6:.1f}M parameters, vocab 32k, GQA 6/2), fp32 + AdamW, CPU")
    print(f"{'method':<11} {'L':>5} {'measured GB':>12} {'predicted GB':>13} {'error':>7} {'growth':>7} {'step s':>7}")
    for method in args.methods:
        previous = None
        for length in args.lengths:
            out = subprocess.run([sys.executable, __file__, "--one", method, str(length)], capture_output=True, text=True,
                                 check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            predicted = predict_gb(method, shape, length, PREDICTED_AS[method], dtype_bytes=4)
            growth = f"{r['peak_gb'] / previous:.2f}x" if previous else ""
            print(f"{method:<11} {length:>5} {r['peak_gb']:>12.2f} {predicted:>13.2f} {(predicted / r['peak_gb'] - 1):>+7.0%} "
                  f"{growth:>7} {r['seconds']:>7.1f}")
            previous = r["peak_gb"]
    print()
    print(report())


if __name__ == "__main__":
    main()
