"""RPT's own evaluation (arXiv:2506.08007, section 4.1): next-token accuracy on held-out text,
split by difficulty. A position is easy, medium or hard when the top-16 entropy of the next
token exceeds 0.5, 1.0 or 1.5 nats (the buckets nest, as in the paper; the paper's entropy is
R1-Distill-Qwen-14B's, ours the run's base model's). Standard mode: the
model's most likely next token is the true one. Reasoning mode: a greedy thought with the meta
template (<start> thought <end> prediction), scored by the prefix-match reward. Usable on any
run: a model whose tokenizer has no thought tokens is scored in standard mode only."""
import torch

from tokreason.methods.inference import PlainScorer, ThoughtScorer
from tokreason.methods.lm import lm_device
from tokreason.methods.selectors import eligible, position_entropy
from tokreason.methods.thoughts import is_thought_token, thought_tokens

BUCKETS = {"easy": 0.5, "medium": 1.0, "hard": 1.5}


@torch.no_grad()
def bucket_positions(lm, windows: torch.Tensor, positions: int, min_context: int = 8,
                     batch_size: int = 16, tokenizer=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `positions` eligible positions [P, 2] (row, t) whose entropy under `lm` is in
    the easiest bucket or above (the same set every run), and that entropy [P]. With the
    tokenizer, a position whose next token is a thought token is not eligible (never text)."""
    device = lm_device(lm)
    entropy = torch.cat([position_entropy(lm, windows[b: b + batch_size].to(device)).cpu()
                         for b in range(0, len(windows), batch_size)]) if len(windows) else torch.zeros(0, 0)
    ok = eligible(windows.shape[1], min_context, 1)[None] & (entropy > min(BUCKETS.values()))
    if tokenizer is not None and len(windows):
        following = torch.cat([windows[:, 1:], windows[:, -1:]], dim=1)  # the last position is never eligible anyway
        ok &= ~is_thought_token(following, thought_tokens(tokenizer))
    where = ok.nonzero()[:positions]
    return where, entropy[where[:, 0], where[:, 1]]


@torch.no_grad()
def next_token_accuracy(lm, tokenizer, windows: torch.Tensor, *, positions: int, thought_budget: int,
                        max_prediction_tokens: int, min_context: int = 8, batch_size: int = 16) -> dict:
    if positions <= 0 or len(windows) == 0:
        return {}
    was_training = lm.training
    lm.eval()
    where, entropy = bucket_positions(lm, windows, positions, min_context, batch_size, tokenizer)
    standard = PlainScorer(lm, tokenizer, batch_size).next_token_correct(windows, where).float()
    reasoning = None
    if thought_tokens(tokenizer) is not None:
        scorer = ThoughtScorer(lm, tokenizer, thought_budget, batch_size=batch_size)
        reasoning = scorer.next_token_correct(windows, where, max_prediction_tokens).float()
    lm.train(was_training)

    result = {}
    for name, threshold in BUCKETS.items():
        chosen = entropy > threshold
        n = int(chosen.sum())
        result[name] = {"n": n, "standard": float(standard[chosen].mean()) if n else None,
                        "reasoning": float(reasoning[chosen].mean()) if n and reasoning is not None else None}
    return result
