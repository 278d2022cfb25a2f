"""RPT, Reinforcement Pre-Training (Dong et al., 2025, arXiv:2506.08007): next-token reasoning.

At positions chosen by a selector (by default where a proxy model's top-16 entropy is high),
the model writes a chain of thought and then predicts the continuation; the prediction earns
1 when its bytes are a prefix of the true continuation ending on one of the corpus's own
token boundaries (Eq. 3). G rollouts per position, GRPO: group z-score advantages, clipped
surrogate, no KL by default, exactly on-policy (one update per rollout batch).

Templates (method.template):
- meta (base models): context, <start>, thought, <end>, then the predicted tokens (up to
  max_prediction_tokens; a stop token ends the prediction and belongs to it, EOS first means
  "the document ends"); the thought is closed at the budget if the model does not close it.
- boxed (the paper: instruction/reasoning models): the paper's prompt (Appendix D, v0) through
  the chat template, a free response of up to response_budget tokens (thinking, </think>, the
  answer) ending at EOS; the prediction is the content of the last \\boxed{} after </think>.

Dynamic sampling (DAPO, from method.dynamic_sampling_from_step): refill (default) samples further
rounds at the next positions of the same windows until the batch holds as many groups whose
rewards have spread as the first round had groups (at most dynamic_sampling_rounds); mask keeps
the first round and masks its flat groups out of the loss.

The loss is computed under the distribution the sampler drew from (the close token masked while
a thought is shorter than min_thought_tokens; a close forced at the budget is not the policy's)."""
import copy
import time
from dataclasses import dataclass, field

import torch

from tokreason.methods.base import CORRUPTION, SELECTOR, Companion
from tokreason.methods.corruption import corrupt_thoughts, corruption_generator
from tokreason.methods.keys import rollout_keys, step_seed
from tokreason.methods.lm import hidden_states, lm_device, output_head
from tokreason.methods.parallel import gathered, rank
from tokreason.methods.policy import behaviour_logprobs_from_hidden, clipped_surrogate, grpo_advantages, kl_penalty
from tokreason.methods.registration import register_method
from tokreason.methods.rollout import RolloutBatch, RolloutMethod, RolloutModule, companion_skip
from tokreason.methods.sampler import Samples, join_samples, sample, sample_in_batches, take_rows
from tokreason.methods.settings import (MicroBatchSettings, SelectorSettings, ThoughtSettings, at_least, one_of,
                                        positive)
from tokreason.methods.thought_attention import use_tokreason_attention
from tokreason.methods.thoughts import chat_prompt_ids, meta_prompt, thought_tokens
from tokreason.methods.token_bytes import token_byte_table
from tokreason.methods.verifier import (Rollouts, conditional_dense_reward, continuation_at, dense_reward, first_token_reward,
                                        last_boxed, prediction_bytes, prefix_match_reward)

REWARDS = {"prefix": prefix_match_reward, "first_token": first_token_reward, "dense": dense_reward,
           "conditional_dense": conditional_dense_reward}
TEMPLATES = ("meta", "boxed")
# Every step logs the same keys (a skipped batch too), so processes can average them together.
METRICS = ("loss", "policy_loss", "clip_fraction", "kl", "reward", "reward_std", "all_equal_groups", "format_failures",
           "thought_length", "empty_thoughts", "thought_closed", "positions", "sampling_rounds", "refilled_groups")
BOXED_PROMPT_ROOM = 128  # tokens the boxed template adds around the context (its text and the chat turn)
BOXED_PROMPT = ("Complete the given text under '### Context' by predicting the next token, and wrap it in '\\boxed{}'. "
                "Please reason step by step to find the most probable next token as the final answer, and enclose it "
                "in \\boxed{} (note: the token may begin with a space, e.g., \\boxed{ para} or \\boxed{ =}; do not use "
                "\\text{}).\n\n### Context\n")


def boxed_prediction(text: str) -> str | None:
    """RPT's prediction in a free response: the content of the last \\boxed{} after </think>,
    spaces kept (the next token may begin with one); None when there is none."""
    return last_boxed(text, after="</think>", strip=False)


class RPTModel(RolloutModule):
    """The policy LM (trained) with what RPT needs around it: the tokenizer's byte table, the
    proxy for position selection, the frozen reference when a KL term is asked for."""

    count_names = ("tokens",)
    metric_names = METRICS

    def __init__(self, lm, tokenizer, config: "RPTConfig", tokens=None):
        super().__init__()
        self.lm, self.config, self.tokenizer = lm, config, tokenizer
        if config.template == "meta":
            self.tokens = tokens
            self.start_id, self.end_id = tokens.ids
        else:
            for marker in ("</think>", "\\boxed{"):
                ids = tokenizer.encode(marker, add_special_tokens=False)
                if not ids or tokenizer.decode(ids) != marker:
                    raise ValueError(f"method.template=boxed needs the tokenizer to represent {marker!r}; use method.template=meta")
        known = thought_tokens(tokenizer)  # a corpus's own thought markers are never a target
        self.not_targets = tuple(known.ids) if known else ()
        # after any meta-tokens were added; as long as the model's vocabulary (it may sample a spare row)
        self.token_bytes = token_byte_table(tokenizer, lm.get_input_embeddings().weight.shape[0])
        self.vocab_size = min(len(tokenizer), lm.get_input_embeddings().weight.shape[0])  # for random thoughts
        self.stop_ids = []
        for stop in config.prediction_stop:
            ids = tokenizer.encode(stop, add_special_tokens=False)
            if len(ids) != 1:
                raise ValueError(f"method.prediction_stop entry {stop!r} is {len(ids)} tokens; each stop must be exactly one token")
            self.stop_ids.append(ids[0])
        if tokenizer.eos_token_id is not None:
            self.stop_ids.append(tokenizer.eos_token_id)
        self.response_stop_ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []  # boxed
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        # optimizer steps so far (dynamic_sampling_from_step); a buffer, so checkpoints carry it
        self.register_buffer("optimizer_steps", torch.zeros((), dtype=torch.long))
        # Kept out of the module tree (neither trained nor checkpointed); they follow it (companions).
        self._reference = [copy.deepcopy(lm).eval().requires_grad_(False)] if config.kl_beta > 0 else []
        self._proxy = []
        self.last_timing: dict[str, float] = {}
        self._replay: "RPTBatch | None" = None  # a rollout batch kept for its remaining epochs

    def set_proxy(self, proxy) -> None:
        self._proxy = [proxy.eval().requires_grad_(False)]

    def companions(self) -> list[Companion]:
        return [Companion(model) for model in (*self._reference, *self._proxy)]

    def prompt(self, context: list[int]) -> list[int]:
        if self.config.template == "meta":
            return meta_prompt(context, self.tokens)
        return chat_prompt_ids(self.tokenizer, BOXED_PROMPT + self.tokenizer.decode(context))

    # -------------------------------------------------------------- the rollout phase
    @torch.no_grad()
    def rollout(self, input_ids: torch.Tensor, windows: torch.Tensor) -> "RPTBatch | None":
        """A kept batch's next epoch, or: positions, rollouts, rewards and GRPO advantages (None
        when no position qualifies: the step is skipped, and counted)."""
        if self._replay is not None:
            return self._replay
        cfg = self.config
        seed, _ = step_seed()  # one draw of the global RNG (checkpointed): resumes draw what an uninterrupted run does
        dynamic = cfg.dynamic_sampling and int(self.optimizer_steps) >= cfg.dynamic_sampling_from_step
        rounds = cfg.dynamic_sampling_rounds if dynamic and cfg.dynamic_sampling_mode == "refill" else 1
        self.last_timing = {"sampling": 0.0, "scoring": 0.0}  # seconds per phase of the last step (benchmarks read it)
        chosen = cfg.choose(self._proxy[0] if self._proxy else self.lm, input_ids, min_continuation=1, seed=seed,
                            windows=windows, eos_id=self.tokenizer.eos_token_id, not_targets=self.not_targets,
                            rounds=rounds)
        where, begin = chosen[:2]
        round_of = chosen[2] if rounds > 1 else torch.zeros(len(where), dtype=torch.long)
        target = int((round_of == 0).sum())
        if target == 0:
            return None
        # DAPO's refill: sample further rounds (the next positions of the same windows) until the
        # batch has as many groups with spread as the first round has groups, or the rounds are spent
        parts, spread = [], 0
        for k in range(rounds):
            at = round_of == k
            if k > 0 and (spread >= target or not bool(at.any())):
                break
            parts.append(self.sample_round(input_ids, windows, where[at], begin[at], seed))
            spread += int((~parts[-1]["flat"]).sum())
        return self.build_batch(parts, target, refill=rounds > 1, mask_flat=dynamic and rounds == 1)

    def sample_round(self, input_ids, windows, where, begin, seed: int) -> dict:
        """G rollouts at each of `where`'s positions and their rewards: one sampling round."""
        cfg, clock = self.config, time.perf_counter()
        prompts = [self.prompt(input_ids[row, b: t + 1].tolist()) for (row, t), b in zip(where.tolist(), begin.tolist())]
        samples = self.sample_rollouts(prompts, rollout_keys(windows, where, cfg.group_size), seed)
        sampled_at = time.perf_counter()
        rewards, predictions = self.rewards(samples, input_ids, where)
        self.last_timing["sampling"] += sampled_at - clock
        self.last_timing["scoring"] += time.perf_counter() - sampled_at
        return {"samples": samples, "rewards": rewards, "predictions": predictions,
                "flat": (rewards == rewards[:, :1]).all(-1)}

    def build_batch(self, parts: list[dict], target: int, refill: bool, mask_flat: bool) -> "RPTBatch":
        """The batch from the sampling rounds. Refill: the first `target` groups with spread, in
        the order sampled (all of the first round's, masked out of the loss, when none has any).
        Otherwise the first round's groups, flat ones masked out of the loss under mask_flat
        (dynamic_sampling_mode=mask). Its stats describe the first round (the selected positions
        as they come), with the rounds sampled and the groups refilled."""
        cfg, group, first = self.config, self.config.group_size, parts[0]
        samples, rewards, flat = first["samples"], first["rewards"], first["flat"]
        spread = ~torch.cat([p["flat"] for p in parts])
        if refill and bool(spread.any()):
            every = torch.cat([p["rewards"] for p in parts])
            kept = spread.nonzero()[:, 0][:target].tolist()
            joined = join_samples([p["samples"] for p in parts], self.pad_id) if len(parts) > 1 else samples
            samples = take_rows(joined, [g * group + j for g in kept for j in range(group)])
            rewards, refilled = every[kept], sum(g >= len(flat) for g in kept)
        else:
            refilled = 0
        advantages, groups_flat = grpo_advantages(rewards, unbiased=cfg.group_std == "unbiased")
        token_mask = samples.sampled.clone()
        if mask_flat or refill:  # refilled groups all have spread; a round with none is all masked
            token_mask &= ~groups_flat.repeat_interleave(group)[:, None]  # groups without spread leave the loss
        stats = {**self.round_stats(first), "sampling_rounds": float(len(parts)), "refilled_groups": float(refilled),
                 "positions": float(len(rewards))}  # the batch's groups, not the first round's
        return RPTBatch(stats, full=torch.cat([samples.prompt_ids, samples.tokens], dim=1), prompt_mask=samples.prompt_mask,
                        tokens=samples.tokens, token_mask=token_mask, advantages=advantages.view(-1),
                        epochs_left=cfg.epochs - 1)

    def round_stats(self, part: dict) -> dict:
        """What a step logs about a sampling round's rollouts."""
        samples, rewards, predictions, meta = part["samples"], part["rewards"], part["predictions"], self.config.template == "meta"
        return {"reward": rewards.mean(), "reward_std": rewards.std(-1, unbiased=False).mean(),
                "all_equal_groups": part["flat"].float().mean(),
                "format_failures": sum(p is None for p in predictions) / len(predictions),
                "thought_length": samples.thought_len.float().mean() if meta else samples.sampled.sum(-1).float().mean(),
                "empty_thoughts": (samples.thought_len == 0).float().mean() if meta else 0.0,
                "thought_closed": samples.closed.float().mean() if meta else 1.0, "skipped_batch": 0.0}

    def after_update(self, batch: "RPTBatch") -> None:
        """After an update over all of a batch's rows: keep it for its next epoch, or let it go."""
        batch.epochs_left -= 1
        self._replay = batch if batch.epochs_left >= 0 else None

    def sample_rollouts(self, prompts: list[list[int]], keys: list[int], seed: int) -> Samples:
        """G rollouts of every prompt (noise keyed by `keys`, one per rollout). meta: a thought
        (closed at thought_budget), then up to max_prediction_tokens predicted tokens; boxed: a
        free response (thinking, </think>, the answer) of up to response_budget tokens, ending at
        EOS."""
        cfg, group = self.config, self.config.group_size
        was_training = self.lm.training
        self.lm.eval()
        try:
            if cfg.thought_corrupt != "none":
                return self.corrupted_samples(prompts, keys, seed, rank(), self.pad_id)
            common = dict(sampler=sample, rollouts_per_call=cfg.sample_batch_size, repeats=group, keys=keys, seed=seed,
                          temperature=cfg.temperature, pad_id=self.pad_id)
            if cfg.template == "meta":
                return sample_in_batches(self.lm, prompts, thought_budget=cfg.thought_budget, close_id=self.end_id,
                                         min_thought_tokens=cfg.min_thought_tokens, stop_ids=self.stop_ids,
                                         max_prediction_tokens=cfg.max_prediction_tokens, **common)
            return sample_in_batches(self.lm, prompts, thought_budget=cfg.response_budget, close_id=None,
                                     max_prediction_tokens=cfg.response_budget, stop_ids=self.response_stop_ids, **common)
        finally:
            self.lm.train(was_training)

    def rewards(self, samples: Samples, input_ids: torch.Tensor, where: torch.Tensor) -> tuple[torch.Tensor, list]:
        """[N, G] rewards of the rollouts against the corpus, and each rollout's prediction (bytes,
        None when it has none)."""
        cfg, group, eos = self.config, self.config.group_size, self.tokenizer.eos_token_id
        predictions, first_tokens = [], []
        for r in range(len(samples.tokens)):
            if cfg.template == "meta":
                tokens = samples.prediction[r]
                predictions.append(prediction_bytes(tokens, self.token_bytes, eos))
                first_tokens.append(tokens[0] if tokens else -1)
            else:
                text = boxed_prediction(self.tokenizer.decode(samples.tokens[r][samples.sampled[r]].tolist()))
                predictions.append(text.encode() if text is not None else None)
                enc = self.tokenizer.encode(text, add_special_tokens=False) if text else []
                first_tokens.append(enc[0] if enc else -1)
        n = len(where)
        rollouts = Rollouts(
            thought_ids=samples.tokens.view(n, group, -1),
            predictions=[predictions[i * group:(i + 1) * group] for i in range(n)],
            prediction_first_token=torch.tensor(first_tokens, device=input_ids.device).view(n, group),
            prediction_first_logprob=torch.nan_to_num(samples.first_logprob, nan=-float("inf")).view(n, group))
        continuation = continuation_at(input_ids, where, self.token_bytes, cfg.continuation_tokens, eos)
        return REWARDS[cfg.reward](rollouts, continuation).to(input_ids.device), predictions

    def corrupted_samples(self, prompts: list[list[int]], keys: list[int], seed: int, rank: int, pad: int) -> Samples:
        """The corruption ablation (meta template only): the thoughts alone are sampled, then
        corrupted (same length, same <end>), then the predictions are sampled after context,
        <start>, corrupted thought, <end>. The rollouts returned hold the corrupted thought, so
        the reward is the prediction's made after it and the update scores (and pushes on) the
        corrupted tokens. No global RNG is drawn: the corruption's and the prediction's noise
        come from the step's seed."""
        cfg, group = self.config, self.config.group_size
        thoughts = sample(self.lm, prompts, repeats=group, keys=keys, seed=seed, temperature=cfg.temperature,
                          thought_budget=cfg.thought_budget, min_thought_tokens=cfg.min_thought_tokens, close_id=self.end_id,
                          max_prediction_tokens=0, stop_ids=[], pad_id=pad)
        generator = corruption_generator(seed, rank)
        corrupted = corrupt_thoughts(thoughts.tokens, thoughts.thought_len, cfg.thought_corrupt, generator, self.vocab_size,
                                     [self.start_id, self.end_id, self.tokenizer.eos_token_id, pad])
        closed_len = thoughts.thought_len + 1  # every thought ends with its <end> (the model's or forced at the budget)
        rows = corrupted.tolist()
        followed = [prompts[r // group] + rows[r][:k] for r, k in enumerate(closed_len.tolist())]
        # With close_id=None the sampler has no thought phase and `thought_budget` is its whole
        # limit: it predicts up to max_prediction_tokens tokens, ending early at a stop token.
        predicted = sample(self.lm, followed, keys=keys, seed=int(torch.randint(0, 2**31 - 1, (1,), generator=generator)),
                           temperature=cfg.temperature, thought_budget=cfg.max_prediction_tokens, close_id=None,
                           max_prediction_tokens=cfg.max_prediction_tokens, stop_ids=self.stop_ids, pad_id=pad)
        # Per row [corrupted thought, <end>, prediction (stop token included), pad ..] after the
        # thought call's left-padded prompts: what one uncorrupted call returns, in the same layout.
        steps = predicted.tokens.shape[1]
        tokens = torch.cat([corrupted, torch.full_like(predicted.tokens, pad)], dim=1)
        chosen = torch.cat([thoughts.sampled, torch.zeros_like(predicted.sampled)], dim=1)
        at = closed_len[:, None] + torch.arange(steps, device=tokens.device)[None]
        tokens.scatter_(1, at, predicted.tokens)
        chosen.scatter_(1, at, predicted.sampled)
        width = int((closed_len + predicted.sampled.sum(-1)).max())
        return Samples(tokens[:, :width], chosen[:, :width], thoughts.thought_len, thoughts.closed, predicted.prediction,
                       predicted.first_logprob, thoughts.prompt_ids, thoughts.prompt_mask)

    # -------------------------------------------------------------- the update
    def skip(self) -> tuple[torch.Tensor, dict]:
        """The skip pass, and the reference's forward a real pass makes with kl_beta > 0 (its
        all-gathers, when it is sharded)."""
        loss, metrics = super().skip()
        for reference in self._reference:
            companion_skip(reference, lm_device(self.lm))
        return loss, metrics

    def update(self, batch: "RPTBatch", rows: slice):
        """The clipped surrogate on rows of a rollout batch: log-probs of the sampled tokens
        under the distribution they were drawn from, with gradients, the head applied only at
        the rollout's positions and in chunks. The first epoch is exactly on-policy (ratio 1);
        its log-probs are kept as the reference of later epochs. Normalised by the whole
        batch's tokens (batch.totals)."""
        cfg = self.config
        full, prompt_mask, tokens = batch.full[rows], batch.prompt_mask[rows], batch.tokens[rows]
        width = prompt_mask.shape[1]
        full_mask = torch.cat([prompt_mask, torch.ones_like(tokens)], dim=1)
        inputs = dict(input_ids=full, attention_mask=full_mask, position_ids=(full_mask.cumsum(-1) - 1).clamp(min=0))
        close_id = self.end_id if cfg.template == "meta" else None  # the behaviour policy: what the sampler drew from
        hidden = hidden_states(self.lm, **inputs)[:, width - 1: -1]
        logprobs = behaviour_logprobs_from_hidden(output_head(self.lm), hidden, tokens, cfg.temperature, close_id,
                                                  cfg.min_thought_tokens)
        old = logprobs.detach() if batch.old_logprobs is None else batch.old_logprobs[rows]
        if batch.epochs_left > 0:
            batch.keep_old_logprobs(rows, old)
        token_mask, count = batch.token_mask[rows], batch.totals["tokens"]
        loss, clip_fraction = clipped_surrogate(logprobs, old, batch.advantages[rows], token_mask, cfg.clip_eps_low,
                                                cfg.clip_eps_high, tokens=count)
        metrics = {"policy_loss": loss.detach(), "clip_fraction": clip_fraction, "kl": 0.0}
        if cfg.kl_beta > 0:
            reference = self._reference[0]
            with torch.no_grad():
                ref_hidden = hidden_states(reference, **inputs)[:, width - 1: -1]
                with gathered(reference):  # sharded: its head's weights whole for this call
                    ref_lp = behaviour_logprobs_from_hidden(output_head(reference), ref_hidden, tokens, cfg.temperature,
                                                            close_id, cfg.min_thought_tokens)
            kl = kl_penalty(logprobs, ref_lp, token_mask, tokens=count)
            loss = loss + cfg.kl_beta * kl
            metrics["kl"] = kl.detach()
        return loss, {**metrics, "loss": loss.detach()}


@dataclass
class RPTBatch(RolloutBatch):
    """RPT's rollout batch: rows [prompt | rollout] (prompts left-padded), which rollout tokens
    the policy chose (and count in the loss), the advantages, and the epochs it is still to be
    used for."""

    full: torch.Tensor = None           # [R, P + T]
    prompt_mask: torch.Tensor = None    # [R, P]
    tokens: torch.Tensor = None         # [R, T]
    token_mask: torch.Tensor = None     # [R, T]
    advantages: torch.Tensor = None     # [R]
    epochs_left: int = 0
    old_logprobs: torch.Tensor | None = None  # [R, T] the first epoch's (rollout policy's) log-probs

    def counts(self) -> dict[str, float]:
        return {"tokens": float(self.token_mask.sum())}

    def micro_batches(self, size: int | None) -> list[slice]:
        rows = len(self.full)
        size = size or rows
        return [slice(a, min(rows, a + size)) for a in range(0, rows, size)]

    def keep_old_logprobs(self, rows: slice, logprobs: torch.Tensor) -> None:
        if self.old_logprobs is None:
            self.old_logprobs = torch.zeros(self.tokens.shape, dtype=logprobs.dtype, device=logprobs.device)
        self.old_logprobs[rows] = logprobs


@dataclass
class RPTConfig(ThoughtSettings, SelectorSettings, MicroBatchSettings):
    """RPT's settings: its own below, and the shared thoughts (meta template only), selector and
    micro-batches (settings.py). The defaults are conf/method/rpt.yaml's, the paper's (a test
    holds them equal)."""

    template: str = "boxed"
    group_size: int = 8
    temperature: float = 0.8
    max_prediction_tokens: int = 1
    prediction_stop: list = field(default_factory=lambda: ["\n"])
    continuation_tokens: int = 32
    selector: str = "entropy"
    positions_per_window: int | None = 4
    proxy_model: str = "base"
    reward: str = "prefix"
    group_std: str = "unbiased"
    clip_eps_low: float = 0.2
    clip_eps_high: float = 0.2
    kl_beta: float = 0.0
    dynamic_sampling: bool = True
    dynamic_sampling_from_step: int = 500
    dynamic_sampling_mode: str = "refill"
    dynamic_sampling_rounds: int = 4
    response_budget: int = 8192
    epochs: int = 1

    def __post_init__(self):
        super().__post_init__()
        one_of(self, "template", TEMPLATES)
        if self.thought_corrupt != "none" and self.template != "meta":
            raise ValueError(f"method.thought_corrupt={self.thought_corrupt!r} needs method.template=meta; "
                             f"method.template={self.template} has no separable thought to corrupt")
        at_least(self, ["group_size"], 2, "; GRPO needs at least 2 rollouts per position")
        one_of(self, "reward", REWARDS)
        one_of(self, "group_std", ("biased", "unbiased"))
        at_least(self, ["epochs", "max_prediction_tokens", "continuation_tokens", "response_budget"], 1)
        at_least(self, ["dynamic_sampling_from_step"], 0)
        one_of(self, "dynamic_sampling_mode", ("refill", "mask"))
        at_least(self, ["dynamic_sampling_rounds"], 1)
        positive(self, ["temperature"])


@register_method("rpt")
class RPT(RolloutMethod):
    """Next-token reasoning with GRPO; its settings are an RPTConfig."""

    reward_meaning = "prediction reward (prefix match with the true continuation)"
    config_class = RPTConfig
    ablations = (CORRUPTION, SELECTOR)

    def wrap(self, lm, tokenizer) -> RPTModel:
        cfg = self.config
        use_tokreason_attention(lm)  # G rollouts read their prompt's KV cache once (shared_prefix.py)
        tokens = self.add_thought_tokens(lm, tokenizer) if cfg.template == "meta" else None
        model = RPTModel(lm, tokenizer, cfg, tokens)
        if cfg.proxy_model == "base":  # the model as training starts, frozen
            model.set_proxy(copy.deepcopy(lm))
        elif cfg.proxy_model != "self":  # a folder or hub name: usually a smaller model of the same family
            from transformers import AutoModelForCausalLM, AutoTokenizer

            proxy_tokenizer = AutoTokenizer.from_pretrained(cfg.proxy_model)
            if proxy_tokenizer.get_vocab() != tokenizer.get_vocab():
                raise ValueError(f"method.proxy_model={cfg.proxy_model!r} has another tokenizer than the model; "
                                 "the entropy filter needs the same tokens")
            model.set_proxy(AutoModelForCausalLM.from_pretrained(cfg.proxy_model).to(lm.device))
        return model

    def check_window(self, seq_len: int, context: int | None) -> None:
        cfg = self.config
        if cfg.min_context >= seq_len:
            raise ValueError(f"method.min_context={cfg.min_context} leaves no position in a window of data.seq_len={seq_len}")
        if context is None:
            return
        if cfg.template == "meta" and seq_len + cfg.thought_budget + cfg.max_prediction_tokens + 2 > context:
            raise ValueError(f"data.seq_len={seq_len} plus method.thought_budget={cfg.thought_budget} and "
                             f"max_prediction_tokens={cfg.max_prediction_tokens} exceeds the model's context of {context}")
        if cfg.template == "boxed" and seq_len + BOXED_PROMPT_ROOM + cfg.response_budget > context:
            raise ValueError(f"data.seq_len={seq_len} plus the boxed prompt (~{BOXED_PROMPT_ROOM} tokens) and "
                             f"method.response_budget={cfg.response_budget} exceeds the model's context of {context}; use "
                             f"method.response_budget<={context - seq_len - BOXED_PROMPT_ROOM}")

    def check_eval(self, think_modes: list[str]) -> None:
        if "on" in think_modes and self.config.template != "meta":
            raise ValueError("eval.think=on evaluates RPT with the meta template; method.template=boxed is not supported "
                             "by the evaluation; use eval.think=[off]")

    def after_optimizer_step(self, model: RPTModel) -> None:
        model.optimizer_steps += 1
