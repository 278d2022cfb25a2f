"""A method of one's own, outside tokreason: plain next-token NLL plus, at one position per
window, the NLL of the true next token after a sampled thought (think, then predict; trained
by plain backpropagation through the prediction). It follows the documented contract:
subclass a base from tokreason.methods, give a settings dataclass, implement step."""
from dataclasses import dataclass

import torch

from tokreason.methods import MetaThinkingMethod, ThoughtSettings, step_seed
from tokreason.methods.parallel import unwrap
from tokreason.methods.lm import next_token_nll, token_logprobs
from tokreason.methods.sampler import sample
from tokreason.methods.thoughts import meta_prompt


@dataclass
class SharperConfig(ThoughtSettings):  # thought_budget, min_thought_tokens, meta_init, thought_corrupt
    thought_budget: int = 4        # tokens per thought (also the thinking evaluation's budget)
    min_thought_tokens: int = 1
    temperature: float = 1.0
    thought_weight: float = 0.5    # weight of the after-thought NLL beside the plain NLL


class Sharper(MetaThinkingMethod):
    name = "sharper"
    config_class = SharperConfig

    def wrap(self, lm, tokenizer):
        self.tokens = self.add_thought_tokens(lm, tokenizer)
        self.pad_id = tokenizer.pad_token_id or 0
        return lm  # nothing trained beside the LM

    def check_window(self, seq_len, context):
        if context is not None and seq_len + self.config.thought_budget + 3 > context:
            raise ValueError(f"data.seq_len={seq_len} leaves no room for a thought of {self.config.thought_budget} tokens")

    def step(self, model, batch, backward):
        ids = batch["input_ids"]
        lm = unwrap(model)  # the sampler reads the LM itself (DDP wraps it)
        t = ids.shape[1] // 2
        prompts = [meta_prompt(row[: t + 1].tolist(), self.tokens) for row in ids]
        seed, rank = step_seed()
        was_training = lm.training
        lm.eval()
        thoughts = sample(lm, prompts, keys=[rank * 2**24 + i for i in range(len(prompts))], seed=seed,
                          temperature=self.config.temperature, thought_budget=self.config.thought_budget,
                          min_thought_tokens=self.config.min_thought_tokens, close_id=self.tokens.end,
                          max_prediction_tokens=0, stop_ids=[], pad_id=self.pad_id)
        lm.train(was_training)
        rows = [p + row[: n + 1].tolist() + [int(x)] for p, row, n, x in
                zip(prompts, thoughts.tokens, thoughts.thought_len, ids[:, t + 1])]
        width = max(len(r) for r in rows)
        padded = torch.tensor([[self.pad_id] * (width - len(r)) + r for r in rows], device=ids.device)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=ids.device)
        logits = model(input_ids=padded, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits
        after = -token_logprobs(logits[:, -2], padded[:, -1]).mean()
        plain = next_token_nll(model(input_ids=ids).logits, ids)
        loss = plain + self.config.thought_weight * after
        backward(loss)
        return {"loss": loss.detach(), "nll": plain.detach(), "nll_after_thought": after.detach()}
