"""Where to think: position selectors shared by the methods.

Position t means: the context is tokens 0..t and the token to predict is t+1. A position is
eligible when it has at least `min_context` tokens of context (the first tokens of a window
look artificially uncertain) and `min_continuation` true tokens after it."""
import torch

SELECTORS = ("entropy", "top_fraction", "random", "all")


def top_k_entropy(logits: torch.Tensor, k: int = 16, renormalize: bool = True) -> torch.Tensor:
    """Entropy (nats) of the top-k next-token distribution, RPT's difficulty proxy. With
    renormalize the k probabilities are rescaled to sum to 1 (the paper does not say; it is the
    reading under which the entropy of a distribution is well defined)."""
    probs = torch.softmax(logits.float(), dim=-1).topk(min(k, logits.shape[-1]), dim=-1).values
    if renormalize:
        probs = probs / probs.sum(-1, keepdim=True)
    return -(probs * probs.clamp(min=1e-30).log()).sum(-1)


def eligible(length: int, min_context: int, min_continuation: int, device=None) -> torch.Tensor:
    t = torch.arange(length, device=device)
    return (t + 1 >= min_context) & (t + min_continuation < length)


def document_starts(ids: torch.Tensor, eos_id: int | None) -> torch.Tensor:
    """[B, L] where the document of each position begins: right after the last EOS before it
    (0 without one). A packed window joins documents by EOS; a position's document context is
    ids[row, start : t + 1]."""
    length = ids.shape[1]
    index = torch.arange(length, device=ids.device).expand_as(ids)
    if eos_id is None:
        return torch.zeros_like(ids)
    marks = torch.where(ids == eos_id, index, torch.full_like(ids, -1))
    last = torch.cummax(marks, dim=1).values  # the last EOS at or before each position
    before = torch.cat([torch.full_like(last[:, :1], -1), last[:, :-1]], dim=1)  # strictly before
    return before + 1


def select_positions(kind: str, entropy: torch.Tensor | None, *, per_window: int | None, threshold: float = 0.0,
                     fraction: float = 0.2, min_context: int = 1, min_continuation: int = 1,
                     generator: torch.Generator | None = None, row_seeds: list[int] | None = None,
                     allowed: torch.Tensor | None = None, rounds: int = 1) -> torch.Tensor:
    """[K, 2] (row, position) pairs from windows [B, L]. `entropy` [B, L] is needed by the
    entropy-based selectors. per_window caps the positions taken from each window (None: all);
    entropy keeps the positions above the threshold (a random subset of them when capped),
    top_fraction the highest-entropy fraction, random a uniform choice. The random choices draw
    from `row_seeds` (one seed per window: a window's choice does not depend on the others in
    its batch), else from `generator`. `allowed` [B, L]: positions that may be chosen at all (a
    document context long enough). rounds > 1 (a capped selector's refills, RPT's dynamic
    sampling): [K, 3] (row, position, round), round 0 exactly the positions rounds=1 chooses,
    round k the next per_window of the same random order, none chosen twice."""
    if kind not in SELECTORS:
        raise ValueError(f"unknown selector {kind!r}; valid: {', '.join(SELECTORS)}")
    if kind in ("entropy", "top_fraction") and entropy is None:
        raise ValueError(f"selector {kind!r} needs the entropy of each position")
    batch, length = entropy.shape if entropy is not None else (None, None)
    chosen = []
    for row in range(batch):
        ok = eligible(length, min_context, min_continuation, entropy.device)
        if allowed is not None:
            ok = ok & allowed[row]
        candidates = ok.nonzero()[:, 0]
        if kind == "entropy":
            candidates = candidates[entropy[row, candidates] > threshold]
        elif kind == "top_fraction" and len(candidates):
            keep = max(1, int(round(fraction * len(candidates))))
            candidates = candidates[entropy[row, candidates].argsort(descending=True)[:keep]].sort().values
        if per_window is not None and len(candidates) > per_window:
            rng = torch.Generator().manual_seed(row_seeds[row]) if row_seeds is not None else generator
            order = torch.randperm(len(candidates), generator=rng, device="cpu").to(candidates.device)
            for k in range(rounds):
                chosen.extend((row, int(t), k) for t in candidates[order[k * per_window:(k + 1) * per_window]].sort().values)
        else:
            chosen.extend((row, int(t), 0) for t in candidates)
    out = torch.tensor(chosen, dtype=torch.long).view(-1, 3)
    return out if rounds > 1 else out[:, :2]


@torch.no_grad()
def position_entropy(lm, ids: torch.Tensor, top_k: int = 16, renormalize: bool = True) -> torch.Tensor:
    """top_k_entropy of the next token at every position of ids [B, L] under `lm`: its hidden
    states, then the head over chunks of positions (never [B, L, V] logits at once)."""
    from tokreason.methods.lm import chunked, hidden_states, output_head
    from tokreason.methods.parallel import gathered

    hidden = hidden_states(lm, input_ids=ids)
    with gathered(lm):  # a sharded LM of its own: its head's weights whole for this call
        head = output_head(lm)
        return chunked(lambda h: top_k_entropy(head(h), top_k, renormalize), hidden, width=head.vocab_size)


@torch.no_grad()
def choose_positions(scorer, ids: torch.Tensor, *, selector: str, per_window: int | None, threshold: float,
                     fraction: float, min_context: int, min_continuation: int, top_k: int = 16,
                     renormalize: bool = True, seed: int = 0, windows: torch.Tensor | None = None,
                     starts: torch.Tensor | None = None, eos_id: int | None = None,
                     not_targets: tuple[int, ...] = (), rounds: int = 1) -> torch.Tensor:
    """Positions in windows ids [B, L] for a method's selector settings; the entropy-based
    selectors score the windows with `scorer` (a causal LM: the model, or a proxy). Random
    choices are keyed by (seed, the window's global index). `starts` (document_starts): each
    position's context begins there, so it needs min_context tokens from there, and a position
    at a document's EOS (whose next token starts another document) is not chosen. A position whose
    next token is one of `not_targets` (the thought markers of a corpus that has them: never
    text) is not chosen either."""
    if selector in ("entropy", "top_fraction"):
        entropy = position_entropy(scorer, ids, top_k, renormalize)
    else:
        entropy = torch.zeros(ids.shape, device=ids.device)
    windows = windows if windows is not None else torch.arange(len(ids))
    row_seeds = [(seed * 1_000_003 + int(w)) % 2**63 for w in windows.tolist()]
    allowed = None
    if starts is not None:
        t = torch.arange(ids.shape[1], device=ids.device)[None]
        allowed = (t - starts + 1 >= min_context) & (ids != (eos_id if eos_id is not None else -1))
    if not_targets:
        following = torch.nn.functional.pad(ids[:, 1:], (0, 1), value=-1)
        text = ~torch.isin(following, torch.tensor(not_targets, dtype=ids.dtype, device=ids.device))
        allowed = text if allowed is None else allowed & text
    return select_positions(selector, entropy, per_window=per_window, threshold=threshold, fraction=fraction,
                            min_context=min_context, min_continuation=min_continuation, row_seeds=row_seeds,
                            allowed=allowed, rounds=rounds)
