"""How a method's random draws are keyed: by a window's place in the global order of windows,
never by the process that holds it, so W processes of batch b draw what one process of batch
W*b draws (positions, rollouts, thought tokens), and a resumed run draws what an uninterrupted
one would (the step's seed comes from the global RNG, which checkpoints save)."""
import torch

from tokreason.methods.parallel import rank


def window_keys(batch: dict) -> torch.Tensor:
    """The global index of every window of a batch (BatchStream's "window_index"; 0.. when absent)."""
    ids = batch["input_ids"]
    return batch.get("window_index", torch.arange(len(ids))).to(ids.device)


def rollout_keys(windows: torch.Tensor, where: torch.Tensor, group: int) -> list[int]:
    """One sampler key per rollout: rollout g of position (row, t) of global window w."""
    w = windows[where[:, 0]].tolist()
    return [((wi * 1_000_003 + t) * 257 + g) & 0xFFFFFFFF for wi, t in zip(w, where[:, 1].tolist()) for g in range(group)]


def step_seed() -> tuple[int, int]:
    """(seed, rank) for a step's draws: a fresh seed from the global RNG (which checkpoints
    save, so a resumed run draws what an uninterrupted one would), and the process rank (for
    what may differ by process: the corruption ablation's draws)."""
    seed = int(torch.randint(0, 2**31 - 1, (1,)))
    return seed, rank()
