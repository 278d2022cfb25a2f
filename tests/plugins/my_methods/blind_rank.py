"""RPT whose second process never finds a position to learn from: the processes' batches differ
in what they roll out (a test that sharded processes stay in step)."""
import torch.distributed as dist

from tokreason.methods.rpt import RPT


class BlindRankRPT(RPT):
    def wrap(self, lm, tokenizer):
        model = super().wrap(lm, tokenizer)
        rollout = model.rollout

        def blind(input_ids, windows):
            batch = rollout(input_ids, windows)
            return None if dist.is_initialized() and dist.get_rank() == 1 else batch

        model.rollout = blind
        return model
