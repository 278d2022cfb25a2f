"""Quiet-STaR step time and peak memory: the fused thought attention against the official
computation (a dense mask growing by L keys per thought step, `method.attention=dense`), each
as a multiple of a plain (CPT) step on the same windows.

The shape of the issue's official-code measurement: a tiny random Mistral (vocab 514, hidden
128, 4 layers, 4 heads, intermediate 512), 4 windows, n_ahead 12 / talk 4 / passes 2, one
optimizer step (forward, backward, AdamW). Then the fused path alone at longer windows, to see
how its peak memory grows with L. Every configuration runs in its own process: its peak RSS
(the process's whole peak, Python and torch included) is its own; after one warm-up step, the
median of --steps timed steps is printed, and its ratio to the median of the plain steps timed
between them in the same process (this machine's speed drifts between processes).

    python benchmarks/quiet_star.py [--lengths 128 256 512] [--sweep 256 512 1024 2048] [--steps 2] [--cli 512]

--cli L: the same step through `tokreason train` (the same random Mistral saved as a Hugging Face
folder, a text corpus of windows of L tokens, batch 4, method=quiet_star's n_ahead 12 / talk 4 /
2 passes, 2 steps, the end-of-run evaluation off), its process's peak RSS printed beside this
script's own step at the same L: what the CLI's machinery adds to the method's memory.
"""
import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

# The measurement of the official code (ezelikman/quiet-star) on this 2-core CPU, same
# shape: seconds per step and peak GB by window length (printed beside ours; not re-measured).
OFFICIAL = {128: (2.18, 2.98), 256: (6.40, 5.84), 512: (20.9, 11.45)}
PLAIN_PER_STEP = 5  # plain steps (~0.1 s each) timed before each timed step, in the same process
# The Quiet-STaR variants measured: the method's settings each sets (the CLI's overrides are the same).
VARIANTS = {"dense": dict(attention="dense"),                  # the official growing mask
            "fused": dict(attention="fast"),                   # the default: fused attention, lean MLP
            "fused-autograd": dict(attention="fast", lean_mlp=False),  # autograd's own MLP (method.lean_mlp=false)
            "fused+mlp": dict(attention="fast", checkpoint_mlp=True)}  # every MLP recomputed (method.checkpoint_mlp)


def one(method: str, variant: str, length: int, steps: int) -> dict:
    """Time `method`'s step (quiet_star as VARIANTS[variant] sets it, or floor) and, interleaved with it in
    the same process, a plain step on 4 windows of the same model shape: PLAIN_PER_STEP plain
    steps before each timed step, so both see the same machine state (the peak RSS then includes
    the plain model's weights and AdamW state, about 18 MB)."""
    from tokreason.experiments.data.tokenizer import train_tokenizer

    tokenizer = train_tokenizer(["Ann has 3 apples --- and 4 pears."] * 50, 300)
    plain = stepper("cpt", "-", length, tokenizer)
    subject = stepper(method, variant, length, tokenizer)
    plain(), subject()  # warm-up (allocations, kernels)
    plain_times, times = [], []
    for _ in range(steps):
        plain_times += [plain() for _ in range(PLAIN_PER_STEP)]
        times.append(subject())
    return {"seconds": statistics.median(times), "plain_seconds": statistics.median(plain_times),
            "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def stepper(method: str, variant: str, length: int, tokenizer):
    """A function that runs one timed optimizer step of `method` on its own random Mistral and
    returns its seconds. floor: a plain step over as many tokens as the thought pass feeds
    (2 passes x (text + 10 thought + 4 talk steps) = 30x the 4 windows)."""
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    from tokreason.methods import LocalBackward
    from tokreason.methods.cpt import CPT
    from tokreason.methods.quiet_star import QuietStar

    torch.manual_seed(0)
    lm = MistralForCausalLM(MistralConfig(vocab_size=514, hidden_size=128, intermediate_size=512, num_hidden_layers=4,
                                          num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=4096,
                                          sliding_window=None))
    method_obj = QuietStar(n_ahead=12, n_ahead_talk=4, n_passes=2, **VARIANTS[variant]) if method == "quiet_star" else CPT()
    model = method_obj.wrap(lm, tokenizer)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    batch = {"input_ids": torch.randint(4, 514, (4 * (30 if method == "floor" else 1), length))}

    def run() -> float:
        started = time.perf_counter()
        method_obj.step(model, batch, LocalBackward())
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - started

    return run


def measure(method: str, variant: str, length: int, steps: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--one", method, variant, str(length), "--steps", str(steps)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def ratio(result: dict) -> float:
    return result["seconds"] / result["plain_seconds"]


def cli_peak(length: int, variant: str) -> dict:
    """`tokreason train` of the benchmark's shape at window L, with the variant's settings as
    overrides: its peak RSS (GB) and seconds."""
    import tempfile
    from pathlib import Path

    import torch
    from transformers import MistralConfig, MistralForCausalLM

    from tokreason.experiments.data.tokenizer import train_tokenizer

    folder = Path(tempfile.mkdtemp(prefix="quiet_star_cli_"))
    texts = [f"Ann has {i} apples --- and {i + 4} pears, so {2 * i + 4} in all." for i in range(4000)]
    tokenizer = train_tokenizer(texts[:400], 300)
    torch.manual_seed(0)
    lm = MistralForCausalLM(MistralConfig(vocab_size=514, hidden_size=128, intermediate_size=512, num_hidden_layers=4,
                                          num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=4096,
                                          sliding_window=None, eos_token_id=tokenizer.eos_token_id))
    lm.save_pretrained(folder / "model")
    tokenizer.save_pretrained(folder / "model")
    (folder / "corpus.txt").write_text("\n\n".join(texts))
    command = [sys.executable, "-m", "tokreason.cli", "train", "method=quiet_star", "model=hf",
               f"model.name_or_path={folder / 'model'}", "data=text", f"data.path={folder / 'corpus.txt'}",
               f"data.seq_len={length}", "data.val_windows=4", "trainer.batch_size=4", "trainer.grad_accum=1",
               "trainer.max_steps=2", "trainer.eval_every=0", "trainer.checkpoint_every=2", "trainer.progress_bar=false",
               "eval=none", "logger=none", *(f"method.{k}={str(v).lower()}" for k, v in VARIANTS[variant].items()),
               f"run_dir={folder / 'run'}", f"cache_dir={folder / 'cache'}"]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"error: the CLI run failed: {(done.stderr.strip().splitlines() or [''])[-1]}")
    return {"seconds": time.perf_counter() - started,
            "peak_gb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="*", default=[128, 256, 512])
    parser.add_argument("--sweep", type=int, nargs="*", default=[256, 512, 1024, 2048])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--cli", type=int, nargs="*", default=[], metavar="L",
                        help="also the step through tokreason train at these windows, peak beside this script's")
    parser.add_argument("--one", nargs=3, metavar=("METHOD", "VARIANT", "LENGTH"), help=argparse.SUPPRESS)
    parser.add_argument("--cli-one", nargs=2, metavar=("LENGTH", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one[0], args.one[1], int(args.one[2]), args.steps)))
        return
    if args.cli_one:
        print(json.dumps(cli_peak(int(args.cli_one[0]), args.cli_one[1])))
        return
    if args.cli:
        print("the step through `tokreason train` (one process: the CLI and its run) beside this script's step, peak RSS GB")
        print(f"{'L':>5} {'':<14} {'script GB':>9} {'CLI GB':>7} {'CLI - script':>12}")
        for length in args.cli:
            for variant in ("fused", "fused-autograd", "fused+mlp"):
                script = measure("quiet_star", variant, length, 1)
                out = subprocess.run([sys.executable, __file__, "--cli-one", str(length), variant],
                                     capture_output=True, text=True, check=True)
                cli = json.loads(out.stdout.strip().splitlines()[-1])
                print(f"{length:>5} {variant:<14} {script['peak_gb']:>9.2f} {cli['peak_gb']:>7.2f} "
                      f"{cli['peak_gb'] - script['peak_gb']:>+12.2f}", flush=True)
        if not args.lengths and not args.sweep:
            return
    print("one optimizer step: random Mistral (vocab 514, hidden 128, 4 layers), 4 windows, n_ahead 12 / talk 4 / passes 2")
    print("  official: the issue's measurement of ezelikman/quiet-star (same shape, this CPU); dense: its attention here")
    print("  fused: method.attention=fast (default), its MLP lean (method.lean_mlp, default); -autograd: lean_mlp=false;")
    print("  +mlp: checkpoint_mlp=true (every MLP recomputed)")
    print("  floor: a plain step over the thought pass's tokens (2 passes x 15 steps = 30x the windows), no thought attention")
    print("  x plain: against the plain steps timed between its steps in the same process (plain s: the floor's)")
    columns = list(VARIANTS)
    print(f"{'L':>5} {'plain s':>8} {'floor s (x plain)':>18} | {'official s':>10} {'GB':>6} | "
          + " | ".join(f"{name + ' s (x plain)':>25} {'GB':>5} {'vs off.':>7}" for name in columns))
    for length in args.lengths:
        floor = measure("floor", "-", length, args.steps)
        official = OFFICIAL.get(length)
        line = (f"{length:>5} {floor['plain_seconds']:>8.3f} {floor['seconds']:>10.2f} ({ratio(floor):>4.1f}x) | "
                + (f"{official[0]:>10.2f} {official[1]:>6.2f}" if official else f"{'n/a':>10} {'':>6}"))
        for variant in columns:
            r = measure("quiet_star", variant, length, args.steps)
            speed = f"{official[0] / r['seconds']:>6.2f}x" if official else f"{'n/a':>7}"
            line += f" | {r['seconds']:>16.2f} ({ratio(r):>5.1f}x) {r['peak_gb']:>5.2f} {speed}"
        print(line)
    if args.sweep:
        print("\nthe fused path (with checkpoint_mlp) at longer windows: peak GB, and its growth per doubling of L")
        previous = None
        for length in args.sweep:
            fused = measure("quiet_star", "fused+mlp", length, 1)
            growth = f"{fused['peak_gb'] / previous:.2f}x" if previous else ""
            print(f"{length:>5} {fused['seconds']:>8.2f} s {fused['peak_gb']:>6.2f} GB {growth:>7}")
            previous = fused["peak_gb"]


if __name__ == "__main__":
    main()
