"""The thought-corruption ablation: do thoughts help through their contents, or only through
the extra computation they buy? With `thought_corrupt` set, a thinking method conditions on a
corrupted thought of the same length, between the same <start>/<end> markers (same compute):

- shuffle: the thought's own tokens in a random order (padding and markers never move);
- random: each thought token replaced by a uniformly random vocabulary token, never a
  forbidden one (the meta-tokens, EOS, pad).

Randomness comes from an explicit torch.Generator (on the CPU, so a run draws the same
corruption on any device), which the methods seed from their own per-step seed."""
import torch

CORRUPTIONS = ("none", "shuffle", "random")


def check_corruption(kind: str) -> None:
    if kind not in CORRUPTIONS:
        raise ValueError(f"method.thought_corrupt={kind!r} is not valid; valid: {', '.join(CORRUPTIONS)}")


def corruption_generator(seed: int, rank: int = 0) -> torch.Generator:
    """A CPU generator from a step's seed and the process rank (processes corrupt differently)."""
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + rank + 1) % 2**63)


def corrupt_thoughts(tokens: torch.Tensor, lengths_or_mask: torch.Tensor, kind: str, generator: torch.Generator,
                     vocab_size: int, forbidden_ids=()) -> torch.Tensor:
    """Corrupted copy of thought tokens [..., T]. `lengths_or_mask` says which are the thought's
    real tokens: lengths [...] (the first lengths[i] tokens of each row) or a bool mask [..., T].
    Everything else (padding, markers, tokens past the length) is returned unchanged."""
    check_corruption(kind)
    if kind == "none" or tokens.numel() == 0:
        return tokens.clone()
    if lengths_or_mask.dtype == torch.bool and lengths_or_mask.shape == tokens.shape:
        mask = lengths_or_mask
    else:
        mask = torch.arange(tokens.shape[-1], device=tokens.device) < lengths_or_mask.to(tokens.device)[..., None]
    mask = mask.to(tokens.device)
    if kind == "random":
        forbidden = torch.tensor(sorted({int(i) for i in forbidden_ids if i is not None}), dtype=torch.long)
        allowed = torch.arange(vocab_size)
        allowed = allowed[~torch.isin(allowed, forbidden)]
        if len(allowed) == 0:
            raise ValueError("no vocabulary token is allowed in a random thought")
        draw = torch.randint(0, len(allowed), tokens.shape, generator=generator)
        return torch.where(mask, allowed[draw].to(tokens.device), tokens)
    # shuffle: per row, the k real positions (in order) receive the real tokens in a random order.
    # Sorting real positions first by a random key gives the sources; by their index, the
    # destinations; the stable sort maps every other position onto itself.
    flat_tokens, flat_mask = tokens.reshape(-1, tokens.shape[-1]), mask.reshape(-1, tokens.shape[-1])
    index = torch.arange(tokens.shape[-1], device=tokens.device).expand_as(flat_tokens)
    keys = torch.rand(flat_tokens.shape, generator=generator, dtype=torch.float64).to(tokens.device)
    sources = torch.sort(torch.where(flat_mask, keys, 2.0 + index.double()), dim=-1, stable=True).indices
    targets = torch.sort(torch.where(flat_mask, index, index + tokens.shape[-1]), dim=-1, stable=True).indices
    out = flat_tokens.clone().scatter_(-1, targets, flat_tokens.gather(-1, sources))
    return out.view_as(tokens)
