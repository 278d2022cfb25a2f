"""RPT whose second process never selects a position: the processes' batches differ in what
they roll out (a test that sharded processes stay in step)."""
import torch.distributed as dist

from tokreason.methods.rpt import RPT


class BlindRankRPT(RPT):
    def wrap(self, lm, tokenizer):
        model = super().wrap(lm, tokenizer)
        choose = model.positions

        def positions(ids, seed=0, windows=None):
            where = choose(ids, seed, windows)
            return where[:0] if dist.is_initialized() and dist.get_rank() == 1 else where

        model.positions = positions
        return model
