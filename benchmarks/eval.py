"""Evaluation speed, printed as figures: examples/s for each kind of benchmark, think off and on.

Kinds: free-form generation + likelihood accuracy (the synthetic suite), multiple choice (a
CommonsenseQA-format file made here: 5 options by likelihood + a generated letter), GSM8K-format
(generation of up to 64 tokens + direct answer), and held-out windows (perplexity + next-token
accuracy by bucket). Think off: the plain LM. Think on: Quiet-STaR's inference (n_ahead 12:
9 thought tokens at every position) and RPT/RLP's (one greedy thought of up to 16 tokens).
The embedded tiny base model (built and cached on first use), batched, CPU unless a GPU is present.

    python benchmarks/eval.py [--examples 32] [--batch-size 16]
"""
import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

import tokreason.conf
from tokreason.experiments.evaluation.real_tasks import load_real_benchmark
from tokreason.experiments.evaluation.synthetic_tasks import synthetic_benchmark
from tokreason.experiments.data.corpus import build_corpus
from tokreason.experiments.evaluation.benchmarks import heldout_values, score_benchmark
from tokreason.experiments.models.loading import load_model_and_tokenizer
from tokreason.experiments.models.tiny_base import ensure_tiny_base
from tokreason.experiments.evaluation.next_token import bucket_positions
from tokreason.methods.inference import PlainScorer, ThoughtScorer
from tokreason.methods.quiet_star import QuietStarScorer
from tokreason.experiments.data.synthetic import ProblemSpec
from tokreason.methods.quiet_star import QuietStarConfig, QuietStarModel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    conf = Path(tokreason.conf.__file__).parent
    model_cfg = OmegaConf.load(conf / "model" / "tiny.yaml")
    data_cfg = OmegaConf.load(conf / "data" / "synthetic.yaml")
    path = str(ensure_tiny_base(model_cfg, Path("~/.cache/tokreason").expanduser()))
    device = "cuda" if torch.cuda.is_available() else "cpu"

    tmp = Path(tempfile.mkdtemp())
    csqa = tmp / "csqa.jsonl"
    csqa.write_text("\n".join(json.dumps({"id": f"q{i}", "question": f"Kai has {i} coins and Ann has {i + 3}. Who has more?",
                                          "choices": {"label": list("ABCDE"), "text": ["Kai", "Ann", "Both", "Neither", "Zoe"]},
                                          "answerKey": "B"}) for i in range(args.examples)) + "\n")
    gsm = tmp / "gsm.jsonl"
    gsm.write_text("\n".join(json.dumps({"question": f"Ann has {i} apples and buys {2 * i} more. How many apples does she have?",
                                         "answer": f"{i} + {2 * i} = {3 * i}\n#### {3 * i}"}) for i in range(args.examples)) + "\n")
    benches = {
        "synthetic (generate + likelihood)": synthetic_benchmark("synth_in", ProblemSpec(), args.examples, seed=0),
        "multiple choice (CSQA format)": load_real_benchmark("csqa", {"path": str(csqa)}, None),
        "GSM8K format (64 new tokens + direct)": load_real_benchmark("gsm8k", {"path": str(gsm)}, None),
    }

    def scorers():
        lm, tok = load_model_and_tokenizer(model_cfg, path)
        yield "off", PlainScorer(lm.to(device).eval(), tok, args.batch_size), tok
        lm, tok = load_model_and_tokenizer(model_cfg, path)
        model = QuietStarModel(lm.to(device), tok, QuietStarConfig(n_ahead=12, n_ahead_talk=1, n_passes=2)).eval()
        yield "on (Quiet-STaR)", QuietStarScorer(model, tok, args.batch_size), tok
        lm, tok = load_model_and_tokenizer(model_cfg, path)
        yield "on (RPT/RLP)", ThoughtScorer(lm.to(device).eval(), tok, thought_budget=16, batch_size=args.batch_size), tok

    print(f"tiny embedded base on {device}, {args.examples} examples per benchmark, batch {args.batch_size}")
    windows = None
    for think, scorer, tok in scorers():
        for name, bench in benches.items():
            started = time.perf_counter()
            score_benchmark(bench, scorer, max_new_tokens=64 if "GSM8K" in name else None)
            seconds = time.perf_counter() - started
            print(f"  {name:<40} think {think:<16} {len(bench.examples) / seconds:8.1f} examples/s ({seconds:.1f} s)")
        if windows is None:
            windows = build_corpus(data_cfg, tok, 0).val[: args.examples]
            where, entropy = bucket_positions(scorer.lm, windows, 64)
        started = time.perf_counter()
        heldout_values(scorer, windows, where, entropy, max_prediction_tokens=1)
        seconds = time.perf_counter() - started
        print(f"  {'held-out windows (128 tokens)':<40} think {think:<16} {len(windows) / seconds:8.1f} windows/s ({seconds:.1f} s)")


if __name__ == "__main__":
    main()
