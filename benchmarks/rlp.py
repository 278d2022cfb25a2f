"""RLP cost against CPT and RPT: step time, peak memory (EMA included), where the time goes
(sampling, scoring, update) and the cost per corpus token relative to CPT. Tiny embedded
architecture, random weights (timing only), the same G and thought budget for RLP and RPT, one
position per window. Each method runs in its own process so its peak memory is its own.

    python benchmarks/rlp.py [--group 16] [--budget 32] [--steps 3]
"""
import argparse
import json
import resource
import subprocess
import sys
import time


def one(method: str, group: int, budget: int, steps: int) -> dict:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tokreason.experiments.data.tokenizer import train_tokenizer
    from tokreason.methods import LocalBackward
    from tokreason.methods.cpt import CPT
    from tokreason.methods.rlp import RLP
    from tokreason.methods.rpt import RPT

    torch.manual_seed(0)
    tokenizer = train_tokenizer(["Ann has 3 apples --- and 4 pears."] * 50, 300)
    lm = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=384, num_hidden_layers=6,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512))
    cuda = torch.cuda.is_available()
    baseline_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if method == "cpt":
        algo, model = CPT(), lm
    elif method == "rlp":
        algo = RLP(template="meta", group_size=group, thought_budget=budget, positions_per_window=1)
        model = algo.wrap(lm, tokenizer)
    else:
        algo = RPT(template="meta", group_size=group, thought_budget=budget, selector="random", positions_per_window=1, proxy_model="self")
        model = algo.wrap(lm, tokenizer)
    if cuda:
        model.cuda()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    windows = torch.randint(4, len(tokenizer), (4, 128), device="cuda" if cuda else "cpu")
    shares = {"sampling": 0.0, "scoring": 0.0, "update": 0.0}
    total = 0.0
    for i in range(steps + 1):  # the first is a warm-up
        started = time.perf_counter()
        algo.step(model, {"input_ids": windows}, LocalBackward())
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        algo.after_optimizer_step(model)
        if cuda:
            torch.cuda.synchronize()
        ended = time.perf_counter()
        if i == 0:
            continue
        total += ended - started
        timing = getattr(model, "last_timing", {})
        sampled, scored = timing.get("sampling", 0.0), timing.get("scoring", 0.0)
        shares["sampling"] += sampled
        shares["scoring"] += scored
        shares["update"] += (ended - started) - sampled - scored
    peak = (torch.cuda.max_memory_allocated() / 2**20 if cuda else
            (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - baseline_kb) / 1024)
    return {"seconds": total / steps, "peak_mb": peak, "tokens": windows.numel(),
            **{k: v / total for k, v in shares.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--group", type=int, default=16)
    parser.add_argument("--budget", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.group, args.budget, args.steps)))
        return
    results = {}
    for method in ("cpt", "rpt", "rlp"):
        out = subprocess.run([sys.executable, __file__, "--one", method, "--group", str(args.group), "--budget",
                              str(args.budget), "--steps", str(args.steps)], capture_output=True, text=True, check=True)
        results[method] = json.loads(out.stdout.strip().splitlines()[-1])
    cpt = results["cpt"]["seconds"] / results["cpt"]["tokens"]
    print(f"one optimizer step on 4 windows x 128 tokens, tiny Llama; RPT and RLP: 1 position per window, "
          f"G={args.group}, thought budget {args.budget}")
    print(f"{'method':<6} {'step s':>8} {'peak MB':>8} {'sampling':>9} {'scoring':>8} {'update':>7} {'cost/token vs cpt':>18}")
    for method, r in results.items():
        shares = f"{r['sampling']:>8.0%} {r['scoring']:>8.0%} {r['update']:>7.0%}" if method != "cpt" else f"{'-':>9} {'-':>8} {'100%':>7}"
        print(f"{method:<6} {r['seconds']:>8.3f} {r['peak_mb']:>8.0f} {shares} {r['seconds'] / r['tokens'] / cpt:>17.1f}x")
    print("sampling: position selection and rollouts; scoring: rewards and the teacher-forced forward (which the update "
          "backpropagates; RLP adds the EMA forward); update: backward, optimizer (and RLP's EMA update). "
          "Peak memory includes RLP's EMA; RPT scores entropy with the live policy here (proxy_model=self).")


if __name__ == "__main__":
    main()
