"""A rollout method of one's own, outside tokreason: at a few positions per window, G thoughts;
each rewarded by the log-likelihood of the true next token after it, the group's mean as the
baseline; REINFORCE on the thought tokens. It follows the rollout contract (methods/rollout.py):
a settings dataclass composing the shared settings, a RolloutModule (rollout, update), a
RolloutBatch (counts, micro_batches); the loop (micro-batches, processes in step, the skip) is
tokreason's."""
from dataclasses import dataclass

import torch

from tokreason.methods import (MicroBatchSettings, RolloutBatch, RolloutMethod, RolloutModule, SelectorSettings,
                               ThoughtSettings, rollout_keys, step_seed)
from tokreason.methods.lm import head_logprobs, hidden_states, output_head
from tokreason.methods.policy import behaviour_logprobs_from_hidden, group_advantages
from tokreason.methods.sampler import sample_in_batches
from tokreason.methods.thoughts import MetaFormat


@dataclass
class GuesserConfig(ThoughtSettings, SelectorSettings, MicroBatchSettings):
    group_size: int = 2
    temperature: float = 1.0


@dataclass
class GuessBatch(RolloutBatch):
    full: torch.Tensor = None       # [R, P + T + 1] prompt | thought, close | the true next token
    mask: torch.Tensor = None
    width: int = 0                  # the prompts' padded width
    thought: torch.Tensor = None    # [R, T]
    sampled: torch.Tensor = None    # [R, T] the tokens the policy drew
    target_at: torch.Tensor = None  # [R] where the true next token is predicted
    group: int = 2

    def counts(self) -> dict[str, float]:
        return {"rows": float(len(self.full))}

    def micro_batches(self, size):
        rows, g = len(self.full), self.group
        size = max(g, (size or rows) // g * g)  # whole groups: a group's rewards make its advantages
        return [slice(a, min(rows, a + size)) for a in range(0, rows, size)]


class GuesserModel(RolloutModule):
    count_names = ("rows",)
    metric_names = ("loss", "reward", "thought_length", "positions")

    def __init__(self, lm, tokenizer, config: GuesserConfig, thought_format: MetaFormat):
        super().__init__()
        self.lm, self.config, self.format, self.pad = lm, config, thought_format, tokenizer.pad_token_id or 0

    @torch.no_grad()
    def rollout(self, input_ids, windows):
        cfg, g = self.config, self.config.group_size
        seed, _ = step_seed()
        where, begin = cfg.choose(self.lm, input_ids, min_continuation=1, seed=seed, windows=windows)
        if len(where) == 0:
            return None
        prompts = [self.format.prompt(input_ids[r, b: t + 1].tolist()) for (r, t), b in zip(where.tolist(), begin.tolist())]
        self.lm.eval()
        samples = sample_in_batches(self.lm, prompts, rollouts_per_call=cfg.sample_batch_size, repeats=g,
                                    keys=rollout_keys(windows, where, g), seed=seed, temperature=cfg.temperature,
                                    thought_budget=cfg.thought_budget, min_thought_tokens=cfg.min_thought_tokens,
                                    close_id=self.format.close_id, max_prediction_tokens=0, stop_ids=[], pad_id=self.pad)
        self.lm.train()
        targets = input_ids[where[:, 0], where[:, 1] + 1].repeat_interleave(g)
        width, rows = samples.prompt_ids.shape[1], len(samples.tokens)
        lengths = samples.thought_len + 1  # the thought and its close
        full = torch.cat([samples.prompt_ids, samples.tokens, samples.tokens.new_zeros(rows, 1)], dim=1)
        mask = torch.cat([samples.prompt_mask, torch.zeros_like(samples.tokens), samples.tokens.new_zeros(rows, 1)], dim=1)
        for r in range(rows):
            end = width + int(lengths[r])
            mask[r, width: end + 1] = 1
            full[r, end] = targets[r]
        stats = {"thought_length": samples.thought_len.float().mean(), "positions": float(len(where)), "skipped_batch": 0.0}
        return GuessBatch(stats, full=full, mask=mask, width=width, thought=samples.tokens, sampled=samples.sampled,
                          target_at=width - 1 + lengths, group=g)

    def update(self, batch: GuessBatch, rows: slice):
        cfg = self.config
        full, mask = batch.full[rows], batch.mask[rows]
        hidden = hidden_states(self.lm, input_ids=full, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0))
        head, steps = output_head(self.lm), batch.thought.shape[1]
        thought_lp = behaviour_logprobs_from_hidden(head, hidden[:, batch.width - 1: batch.width - 1 + steps],
                                                    batch.thought[rows], cfg.temperature, self.format.close_id,
                                                    cfg.min_thought_tokens)
        at = batch.target_at[rows]
        with torch.no_grad():  # the reward: log p of the true next token after the thought
            reward = head_logprobs(head, hidden[torch.arange(len(at)), at], full[torch.arange(len(at)), at + 1])
        advantages = group_advantages(reward.view(-1, cfg.group_size)).view(-1)
        sampled = batch.sampled[rows].float()
        per_row = (thought_lp * sampled).sum(-1) / sampled.sum(-1).clamp(min=1)
        loss = -(advantages * per_row).sum() / batch.totals["rows"]  # normalised by the whole batch: passes add up
        return loss, {"loss": loss.detach(), "reward": reward.sum() / batch.totals["rows"]}


class Guesser(RolloutMethod):
    name = "guesser"
    config_class = GuesserConfig
    reward_meaning = "log-likelihood of the true next token after the thought (nats)"

    def wrap(self, lm, tokenizer):
        return GuesserModel(lm, tokenizer, self.config, self.thought_format(lm, tokenizer))
