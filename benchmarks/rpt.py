"""RPT speed, printed as figures.

1. Rollout tokens/s: the batched, KV-cached sampler (all positions x G rollouts together)
   against a loop of `model.generate` calls, one per position (num_return_sequences=G), on the
   same work (goal: batched >= 5x the loop).
2. One RPT optimizer step against one CPT step on the same windows.
Tiny embedded architecture with random weights (timing only), CPU unless a GPU is present.

    python benchmarks/rpt.py [--positions 32] [--group 8] [--budget 24]
"""
import argparse
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from tokreason.experiments.data.tokenizer import train_tokenizer
from tokreason.methods import LocalBackward
from tokreason.methods.cpt import CPT
from tokreason.methods.rpt import RPT
from tokreason.methods.sampler import sample


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--positions", type=int, default=32)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--budget", type=int, default=24, help="thought tokens (plus <end> and 4 prediction tokens)")
    parser.add_argument("--context", type=int, default=64)
    args = parser.parse_args()
    torch.manual_seed(0)
    tokenizer = train_tokenizer(["Ann has 3 apples --- and 4 pears."] * 50, 300)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    lm = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=384, num_hidden_layers=6,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)).to(device).eval()
    vocab = tokenizer.get_vocab()
    close = vocab["<|endofthought|>"]
    prompts = [torch.randint(4, len(tokenizer), (args.context - (i % 8),)).tolist() + [vocab["<|startofthought|>"]]
               for i in range(args.positions)]
    new_tokens = args.budget + 1 + 4

    started = time.perf_counter()
    s = sample(lm, prompts, repeats=args.group, keys=list(range(len(prompts) * args.group)), seed=0, temperature=0.8, thought_budget=args.budget, close_id=close,
               max_prediction_tokens=4, stop_ids=[], pad_id=tokenizer.pad_token_id)
    batched_s = time.perf_counter() - started
    batched_tokens = int((s.tokens != tokenizer.pad_token_id).sum())

    started = time.perf_counter()
    loop_tokens = 0
    with torch.no_grad():
        for p in prompts:  # the same work one position at a time; generate's own sampling, no early stop
            out = lm.generate(input_ids=torch.tensor([p], device=device), do_sample=True, temperature=0.8, top_k=0,
                              max_new_tokens=new_tokens, min_new_tokens=new_tokens, num_return_sequences=args.group,
                              pad_token_id=tokenizer.pad_token_id)
            loop_tokens += out[:, len(p):].numel()
    loop_s = time.perf_counter() - started
    print(f"rollouts: {args.positions} positions x G={args.group}, {new_tokens} new tokens each, tiny Llama on {device}")
    print(f"  batched sampler:          {batched_tokens / batched_s:9,.0f} tokens/s ({batched_s:.2f} s)")
    print(f"  loop of model.generate:   {loop_tokens / loop_s:9,.0f} tokens/s ({loop_s:.2f} s)")
    print(f"  speed-up: {(batched_tokens / batched_s) / (loop_tokens / loop_s):.1f}x (goal >= 5x)")

    windows = torch.randint(4, len(tokenizer), (4, 128), device=device)
    rpt = RPT(template="meta", group_size=args.group, thought_budget=args.budget, selector="random", positions_per_window=2, max_prediction_tokens=4)
    model = rpt.wrap(lm, tokenizer).train()
    timings = {}
    for name, method, module in (("cpt", CPT(), CPT().wrap(lm, tokenizer)), ("rpt", rpt, model)):
        optimizer = torch.optim.AdamW(module.parameters(), lr=1e-5)
        for i in range(3):
            if i == 1:
                started = time.perf_counter()
            method.step(module, {"input_ids": windows}, LocalBackward())
            optimizer.step()
            optimizer.zero_grad()
        timings[name] = (time.perf_counter() - started) / 2
    print(f"one optimizer step on 4 windows of 128 tokens (RPT: 2 positions per window x G={args.group}):")
    print(f"  cpt {timings['cpt']:.3f} s   rpt {timings['rpt']:.3f} s   ({timings['rpt'] / timings['cpt']:.0f}x cpt)")


if __name__ == "__main__":
    main()
