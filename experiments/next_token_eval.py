"""RPT's own evaluation (arXiv:2506.08007, section 4.2): next-token accuracy on held-out text,
split by difficulty. A position is easy, medium or hard when the top-16 entropy of the next
token exceeds 0.5, 1.0 or 1.5 nats (the buckets nest, as in the paper). Standard mode: the
model's most likely next token is the true one. Reasoning mode: a greedy thought with the meta
template (<start> thought <end> prediction), scored by the prefix-match reward. Usable on any
run: a model whose tokenizer has no thought tokens is scored in standard mode only."""
import torch

from tokreason.methods.quiet_star import THOUGHT_END, THOUGHT_START
from tokreason.methods.sampler import sample
from tokreason.methods.selectors import eligible, top_k_entropy
from tokreason.methods.token_bytes import token_byte_table
from tokreason.methods.verifier import Continuation, Rollouts, prefix_match_reward

BUCKETS = {"easy": 0.5, "medium": 1.0, "hard": 1.5}


@torch.no_grad()
def bucket_positions(lm, windows: torch.Tensor, positions: int, min_context: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `positions` eligible positions [P, 2] (row, t) whose entropy under `lm` is in
    the easiest bucket or above (the same set every run), and that entropy [P]."""
    device = lm.get_input_embeddings().weight.device
    windows = windows.to(device)
    entropy = top_k_entropy(lm(input_ids=windows).logits)
    ok = eligible(windows.shape[1], min_context, 1, device)[None] & (entropy > min(BUCKETS.values()))
    where = ok.nonzero()[:positions]
    return where.cpu(), entropy[where[:, 0], where[:, 1]].cpu()


@torch.no_grad()
def reasoning_correct(lm, tokenizer, windows: torch.Tensor, where: torch.Tensor, *, thought_budget: int,
                      max_prediction_tokens: int, min_thought_tokens: int = 0, continuation_tokens: int = 32) -> torch.Tensor:
    """RPT's reasoning mode at positions [P, 2]: the prefix-match reward (0/1) of a greedy
    thought and prediction with the meta template."""
    device = lm.get_input_embeddings().weight.device
    windows = windows.to(device)
    vocab = tokenizer.get_vocab()
    table = token_byte_table(tokenizer)
    prompts = [windows[r, : t + 1].tolist() + [vocab[THOUGHT_START]] for r, t in where.tolist()]
    stops = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    samples = sample(lm, prompts, keys=list(range(len(prompts))), seed=0, temperature=0.0, thought_budget=thought_budget,
                     min_thought_tokens=min_thought_tokens, close_id=vocab[THOUGHT_END],
                     max_prediction_tokens=max_prediction_tokens, stop_ids=stops, pad_id=tokenizer.pad_token_id or 0)
    predictions = [[b"".join(table[i] for i in p) or None] for p in samples.prediction]
    texts, ends = [], []
    for r, t in where.tolist():
        pieces = [table[i] for i in windows[r, t + 1: t + 1 + continuation_tokens].tolist()]
        texts.append(b"".join(pieces))
        ends.append(torch.tensor([len(p) for p in pieces]).cumsum(0).tolist())
    rows, ts = where[:, 0].to(device), where[:, 1].to(device)
    continuation = Continuation(ids=windows[rows, ts + 1][:, None], mask=torch.ones(len(where), 1, dtype=torch.bool),
                                text=texts, boundaries=ends)
    return prefix_match_reward(Rollouts(thought_ids=samples.tokens[:, None], predictions=predictions),
                               continuation)[:, 0].cpu()


@torch.no_grad()
def next_token_accuracy(lm, tokenizer, windows: torch.Tensor, *, positions: int, thought_budget: int,
                        max_prediction_tokens: int, min_context: int = 8) -> dict:
    if positions <= 0 or len(windows) == 0:
        return {}
    was_training = lm.training
    lm.eval()
    where, entropy = bucket_positions(lm, windows, positions, min_context)
    device = lm.get_input_embeddings().weight.device
    rows, ts = where[:, 0].to(device), where[:, 1].to(device)
    ids = windows.to(device)
    standard = (lm(input_ids=ids).logits[rows, ts].argmax(-1) == ids[rows, ts + 1]).float().cpu()
    vocab = tokenizer.get_vocab()
    reasoning = None
    if THOUGHT_START in vocab and THOUGHT_END in vocab:
        reasoning = reasoning_correct(lm, tokenizer, windows, where, thought_budget=thought_budget,
                                      max_prediction_tokens=max_prediction_tokens)
    lm.train(was_training)

    result = {}
    for name, threshold in BUCKETS.items():
        chosen = entropy > threshold
        n = int(chosen.sum())
        result[name] = {"n": n, "standard": float(standard[chosen].mean()) if n else None,
                        "reasoning": float(reasoning[chosen].mean()) if n and reasoning is not None else None}
    return result
