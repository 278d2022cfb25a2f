"""RPT that counts the collectives of its step (a test that sharded processes gather once per
rollout phase, reduce once per optimizer step and stay in step): the all-gathers of the rollout
phase and of the update, the reduce-scatters, and the tokens it sampled, logged as metrics. Its
second process keeps one position only, so the processes have different numbers of update
slices (the case where a process's skip must make the others' collectives)."""
from contextlib import contextmanager

import torch.distributed as dist

from tokreason.methods import parallel, rollout as rollout_module
from tokreason.methods.rpt import RPT, RPTModel

COUNTED = ("all_gather_single", "reduce_scatter_single")


@contextmanager
def counting(counts: dict):
    real = {name: getattr(dist, name) for name in COUNTED}

    def wrapper(name):
        def call(*args, **kwargs):
            counts[name] = counts.get(name, 0) + 1
            return real[name](*args, **kwargs)
        return call

    for name in COUNTED:
        setattr(dist, name, wrapper(name))
    try:
        yield counts
    finally:
        for name, fn in real.items():
            setattr(dist, name, fn)


class CountingRPT(RPT):
    def wrap(self, lm, tokenizer) -> RPTModel:
        model = super().wrap(lm, tokenizer)
        rollout = model.rollout

        def uneven_rollout(input_ids, windows):
            batch = rollout(input_ids, windows)
            if batch is not None and parallel.rank() == 1:  # one position: fewer update slices than rank 0
                keep = slice(0, self.config.group_size)
                for name in ("full", "prompt_mask", "tokens", "token_mask", "advantages"):
                    setattr(batch, name, getattr(batch, name)[keep])
            model.sampled_tokens = float(batch.token_mask.sum()) if batch is not None else 0.0
            return batch

        model.rollout = uneven_rollout
        return model

    def step(self, model, batch, backward):
        counts, phase = {}, {}
        gather = rollout_module.gathered_for_sampling

        @contextmanager
        def counted_rollout_phase(module):  # the gathering and the rollout inside it
            with counting(phase), gather(module):
                yield module

        rollout_module.gathered_for_sampling = counted_rollout_phase
        try:
            with counting(counts):
                metrics = super().step(model, batch, backward)
        finally:
            rollout_module.gathered_for_sampling = gather
        module = parallel.unwrap(model)
        rollout_gathers = phase.get("all_gather_single", 0)
        return {**metrics, "rollout_gathers": float(rollout_gathers),
                "update_gathers": float(counts.get("all_gather_single", 0) - rollout_gathers),
                "reduce_scatters": float(counts.get("reduce_scatter_single", 0)), "sampled_tokens": module.sampled_tokens}
