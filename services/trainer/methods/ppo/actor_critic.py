"""Actor-critic PPO for language models (InstructGPT's RLHF), on torch, transformers and peft.

    run(ctx)   # the `ppo` recipe when ppo.algorithm is ACTOR_CRITIC (recipe.py dispatches here)

Four models (models.py): the actor π (the policy trained: full, LoRA or QLoRA), the reference π_ref (frozen:
under LoRA/QLoRA the actor's base with the adapter disabled, no second copy; under full training a frozen
copy), the reward (services/trainer/rewards: the store reward model first, then any rule rewards, summed
with their weights) and the critic V (a value model trained alongside: from the reward model, or from the
base with a zero value head; full or LoRA).

One job step trains on B = batch_size x gradient_accumulation_steps rollouts: num_generations completions
of each of B / num_generations prompts, taken in a seeded shuffled order, epoch after epoch.

1. Rollouts: the actor samples completions y_1..y_T through the shared engine (services/engine, request k
   of step s seeded with seed + (s - 1) B + k, temperature τ, up to max_completion_length tokens); an
   end-of-sequence token the model chose is y_T, so ending is learned too. The rewards score each one: S.
2. Per token t, with s_t = prompt + y_<t and log-probabilities of logits / τ:
       kl_t = log π_old(y_t|s_t) - log π_ref(y_t|s_t)                    (k1 estimator)
       r_t  = -β kl_t + [t = T] S                                       (β: the KL coefficient)
3. Generalised advantage estimation (Schulman et al. 2016) with the rollout's values, V(s_{T+1}) = 0:
       δ_t = r_t + γ V_old(s_{t+1}) - V_old(s_t),   A_t = δ_t + γ λ A_{t+1},   R_t = A_t + V_old(s_t)
   then, with whiten_advantages, A ← (A - mean A) / std A over the step's completion tokens.
4. ppo_epochs passes over the batch; each shuffles it into num_mini_batches mini-batches and takes one
   optimizer step of the actor and of the critic per mini-batch (micro-batches of batch_size accumulate).
   With ρ_t = π(y_t|s_t) / π_old(y_t|s_t), ε = cliprange, ε_v = cliprange_value:
       L_policy = mean_t max(-A_t ρ_t, -A_t clip(ρ_t, 1 - ε, 1 + ε))
       L_value  = ½ mean_t max((V(s_t) - R_t)², (V_old(s_t) + clip(V(s_t) - V_old(s_t), -ε_v, ε_v) - R_t)²)
       L        = L_policy + vf_coef L_value          (means over the mini-batch's completion tokens)
5. KL control: fixed keeps β; adaptive (Ziegler et al. 2019) steers the step's KL = mean_i Σ_t kl_t
   towards kl_target:  e = clip(KL / kl_target - 1, -0.2, 0.2),  β ← β (1 + e B / kl_horizon).

Learning rates follow hyperparameters.lr_scheduler per job step (the critic's from critic_learning_rate);
gradients are clipped to max_grad_norm per model. Metrics, one event per step, use TRL's PPO names:
objective/kl (mean Σ_t kl_t), objective/entropy (mean Σ_t -log π_old), objective/non_score_reward (mean
Σ_t -β kl_t), objective/scores (mean S), objective/rlhf_reward (their sum), objective/kl_coef (β),
policy/approxkl_avg (½ mean (log ρ)²), policy/clipfrac_avg, policy/entropy_avg (π's entropy over the
vocabulary), loss/policy_avg, loss/value_avg, val/clipfrac_avg, val/ratio (mean ρ), val/ratio_var, val/mean
(mean V_old), val/num_eos_tokens (averages over the step's updates); and reward, reward_std,
rewards/<fn>/mean, completions/mean_length, completions/clipped_ratio, loss, grad_norm, learning_rate,
epoch, num_tokens, tokens_per_second, step_time, progress, eta_seconds; at step 1 memory/<model>_mib of
the four models and memory/optimizers_mib. Rollout samples stream as `rollouts` events as GRPO's do.
Store checkpoints: the actor every checkpoints.every_steps and at the end (ADAPTER or FULL_CHECKPOINT);
the critic is not kept. Raises Cancelled when the job is asked to stop (checked during generation and
at each step boundary; a step's updates, once begun, finish). `PpoState` holds everything a step changes,
with save/load: it is the job's full state, written as `checkpoint-N` folders of the work directory's
`ppo/` every checkpoints.every_steps (50 when 0) and when the job is paused or cancelled (the state of the
last finished step: a stop during generation changed nothing but the RNGs, whose step-start snapshot is
saved), the newest `keep_last` kept; a later attempt of the job loads the newest and continues.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import shutil
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from services.engine.backends.base import LoadOptions
from services.engine.backends.transformers_backend import TransformersBackend
from services.engine.batch import generate_all, prompt_ids
from services.engine.sampling import SamplingConfig
from services.trainer.methods.ppo import models
from services.trainer.rewards.runtime import RolloutRecorder, build_reward_functions
from services.trainer.training.adapters import resolve_precision
from services.trainer.training.callbacks import MetricsCallback, StoreCheckpointer
from services.trainer.training.common import load_tokenizer
from services.trainer.training.context import Cancelled, RecipeContext, checkpoint_step, latest_full_state
from services.trainer.training.prompts import prompt_rows, prompt_text
from services.trainer.training.rollouts import RolloutSamplesCallback

GENERATION_BATCH = 32  # sequences the engine decodes together


# ------------------------------------------------------------------------------------------- the equations


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum() / mask.sum().clamp(min=1)


def masked_whiten(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mean = masked_mean(values, mask)
    variance = masked_mean((values - mean) ** 2, mask)
    return (values - mean) * torch.rsqrt(variance + 1e-8) * mask


def token_rewards(scores, logprobs, ref_logprobs, mask, beta: float):
    """(r_t, kl_t): the KL penalty on every completion token, the score added at each row's last one."""
    kl = (logprobs - ref_logprobs) * mask
    rewards = -beta * kl
    last = mask.sum(1).long().clamp(min=1) - 1
    rewards[torch.arange(len(scores)), last] += scores
    return rewards, kl


def advantages_and_returns(rewards, values, mask, gamma: float, lam: float, whiten: bool):
    """GAE over each row's completion tokens (values beyond a row's end count as 0), returns = A + V."""
    values = values * mask
    advantages = torch.zeros_like(rewards)
    running = torch.zeros(rewards.shape[0], device=rewards.device)
    length = rewards.shape[1]
    for t in reversed(range(length)):
        next_value = values[:, t + 1] if t + 1 < length else 0.0
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = (delta + gamma * lam * running) * mask[:, t]
        advantages[:, t] = running
    returns = advantages + values
    return (masked_whiten(advantages, mask) if whiten else advantages), returns


def policy_loss(logprobs, old_logprobs, advantages, mask, cliprange: float):
    """(L_policy, stats): the clipped surrogate; clipfrac = share of tokens where the clipped term wins."""
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.max(unclipped, clipped), mask)
    with torch.no_grad():
        mean_ratio = masked_mean(ratio, mask)
        stats = {"policy/approxkl_avg": 0.5 * masked_mean(log_ratio ** 2, mask),
                 "policy/clipfrac_avg": masked_mean((clipped > unclipped).float(), mask),
                 "val/ratio": mean_ratio, "val/ratio_var": masked_mean((ratio - mean_ratio) ** 2, mask)}
    return loss, stats


def value_loss(values, old_values, returns, mask, cliprange_value: float):
    """(L_value, clipfrac): squared error to the returns, the value kept within ε_v of the rollout's."""
    clipped = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    unclipped_error, clipped_error = (values - returns) ** 2, (clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(unclipped_error, clipped_error), mask)
    with torch.no_grad():
        clipfrac = masked_mean((clipped_error > unclipped_error).float(), mask)
    return loss, clipfrac


def next_kl_coef(beta: float, kl: float, method, rollouts: int) -> float:
    """β after a step whose mean KL per completion was `kl` (unchanged under fixed control)."""
    if method.kl_control != "adaptive":
        return beta
    error = min(max(kl / method.kl_target - 1.0, -0.2), 0.2)
    return beta * (1.0 + error * rollouts / method.kl_horizon)


# ----------------------------------------------------------------------------------------- the loop's state


@dataclass
class PpoState:
    """What one step changes: the step, the actor, the critic, their optimizers and schedulers, β, the
    mini-batch shuffling generator, the tokens seen. `save(folder)` / `load(folder)` write and restore all of
    it (with the global RNGs), so an attempt that loads it continues as an uninterrupted run would: prompts
    and generation seeds derive from the step."""

    actor: object
    critic: object
    actor_optimizer: torch.optim.Optimizer
    critic_optimizer: torch.optim.Optimizer
    actor_scheduler: object
    critic_scheduler: object
    generator: torch.Generator
    kl_coef: float
    step: int = 0
    num_tokens: int = 0

    @classmethod
    def create(cls, actor, critic, spec, total_steps: int) -> PpoState:
        from transformers import get_scheduler

        hyper, method = spec.hyperparameters, spec.method_spec
        warmup = math.ceil(hyper.warmup_ratio * total_steps) if hyper.warmup_ratio > 0 else hyper.warmup_steps

        def optimizer_and_scheduler(model, lr: float):
            trained = [p for p in model.parameters() if p.requires_grad]
            optimizer = torch.optim.AdamW(trained, lr=lr, weight_decay=hyper.weight_decay)
            return optimizer, get_scheduler(hyper.lr_scheduler, optimizer, num_warmup_steps=warmup,
                                             num_training_steps=total_steps)

        actor_optimizer, actor_scheduler = optimizer_and_scheduler(actor, hyper.learning_rate)
        critic_optimizer, critic_scheduler = optimizer_and_scheduler(
            critic, method.critic_learning_rate or hyper.learning_rate)
        return cls(actor, critic, actor_optimizer, critic_optimizer, actor_scheduler, critic_scheduler,
                   torch.Generator().manual_seed(hyper.seed), method.beta)

    @staticmethod
    def rng_state() -> dict:
        """The global RNGs, as `save` records them."""
        return {"torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                "python_rng": random.getstate()}

    def save(self, folder: Path, rng: dict | None = None) -> None:
        """Weights (adapters or full), optimizers, schedulers, RNGs (now, or the `rng_state()` snapshot
        given) and counters into `folder` (created)."""
        folder.mkdir(parents=True, exist_ok=True)
        self.actor.save_pretrained(folder / "actor", safe_serialization=True)
        self.critic.save_pretrained(folder / "critic", safe_serialization=True)
        torch.save({"actor_optimizer": self.actor_optimizer.state_dict(),
                    "critic_optimizer": self.critic_optimizer.state_dict(),
                    "actor_scheduler": self.actor_scheduler.state_dict(),
                    "critic_scheduler": self.critic_scheduler.state_dict(),
                    "generator": self.generator.get_state(), **(rng or self.rng_state())}, folder / "optimizers.pt")
        (folder / "state.json").write_text(json.dumps({"step": self.step, "kl_coef": self.kl_coef,
                                                       "num_tokens": self.num_tokens}))

    def load(self, folder: Path) -> None:
        """Restore what `save` wrote into this state's (freshly built, same-shaped) models and optimizers."""
        _load_weights(self.actor, folder / "actor")
        _load_weights(self.critic, folder / "critic")
        saved = torch.load(folder / "optimizers.pt", weights_only=False)
        self.actor_optimizer.load_state_dict(saved["actor_optimizer"])
        self.critic_optimizer.load_state_dict(saved["critic_optimizer"])
        self.actor_scheduler.load_state_dict(saved["actor_scheduler"])
        self.critic_scheduler.load_state_dict(saved["critic_scheduler"])
        self.generator.set_state(saved["generator"])
        torch.set_rng_state(saved["torch_rng"])
        if saved["cuda_rng"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(saved["cuda_rng"])
        random.setstate(saved["python_rng"])
        counters = json.loads((folder / "state.json").read_text())
        self.step, self.kl_coef, self.num_tokens = counters["step"], counters["kl_coef"], counters["num_tokens"]


def save_full_state(ctx: RecipeContext, state: PpoState, rng: dict | None = None) -> None:
    """Write the state as `checkpoint-<step>` of the job's `ppo/` folder (complete once renamed into place,
    with the `trainer_state.json` marker transformers' checkpoints have), keep the newest keep_last."""
    if state.step == 0:
        return
    output_dir = ctx.output_dir("ppo")
    final = output_dir / f"checkpoint-{state.step}"
    if latest_full_state(output_dir) == final:
        return
    tmp = output_dir / f".checkpoint-{state.step}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    state.save(tmp, rng)
    (tmp / "trainer_state.json").write_text(json.dumps({"global_step": state.step}))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    kept = sorted((checkpoint_step(p), p) for p in output_dir.glob("checkpoint-*"))
    for _, old in kept[:-max(1, ctx.spec.keep_last)]:
        shutil.rmtree(old, ignore_errors=True)
    ctx.full_state_saved(state.step)


def _load_weights(model, folder: Path) -> None:
    from safetensors.torch import load_file

    if (folder / "adapter_model.safetensors").is_file():
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, load_file(folder / "adapter_model.safetensors"))
        return
    state = {}
    for shard in sorted(folder.glob("*.safetensors")):
        state.update(load_file(shard))
    model.load_state_dict(state, strict=False)  # tied weights are saved once


# ----------------------------------------------------------------------------------------------- rollouts


@dataclass
class Rollouts:
    """One step's batch, [B, ...]: left-padded prompts then right-padded completions, and per completion
    token (mask = 1) the rollout's log-probabilities, values, KL and advantages."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    responses: torch.Tensor
    mask: torch.Tensor
    logprobs: torch.Tensor
    values: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor


def pad_batch(pad_id: int, prompts: list[list[int]], completions: list[list[int]], device: str):
    """(input_ids, attention_mask, responses, mask) in the layout of models.py."""
    width_p, width_r = max(map(len, prompts)), max(1, max(map(len, completions)))
    input_ids = torch.full((len(prompts), width_p + width_r), pad_id, dtype=torch.long)
    attention = torch.zeros_like(input_ids)
    mask = torch.zeros(len(prompts), width_r)
    for i, (prompt, completion) in enumerate(zip(prompts, completions)):
        input_ids[i, width_p - len(prompt):width_p + len(completion)] = torch.tensor(prompt + completion)
        attention[i, width_p - len(prompt):width_p + len(completion)] = 1
        mask[i, :len(completion)] = 1
    return (input_ids.to(device), attention.to(device), input_ids[:, width_p:].to(device), mask.to(device))


def score(funcs, weights, rows: list[dict], texts: list[str], n: int, conversational: bool):
    """(S per completion, {fn: mean score}): the weighted sum of the rewards; dataset columns reach them."""
    prompts = [row["prompt"] if conversational else prompt_text(row["prompt"]) for row in rows for _ in range(n)]
    completions = [[{"role": "assistant", "content": t}] for t in texts] if conversational else texts
    columns = {key: [row.get(key) for row in rows for _ in range(n)]
               for key in sorted({key for row in rows for key in row} - {"prompt"})}
    by_function = {fn.__name__: fn(prompts=prompts, completions=completions, **columns) for fn in funcs}
    totals = [sum(w * by_function[fn.__name__][i] for fn, w in zip(funcs, weights)) for i in range(len(texts))]
    return totals, {f"rewards/{name}/mean": statistics.fmean(s) for name, s in by_function.items()}


def collect(ctx: RecipeContext, state: PpoState, reference, tokenizer, rows: list[dict], funcs, weights,
            step: int, autocast) -> tuple[Rollouts, dict[str, float]]:
    """Generate, score and evaluate one step's rollouts (see the module doc, 1-3)."""
    spec, method = ctx.spec, ctx.spec.method_spec
    conversational = bool(tokenizer.chat_template)
    chats = [row["prompt"] if conversational else prompt_text(row["prompt"]) for row in rows]
    sampling = SamplingConfig(temperature=method.temperature, top_k=0, top_p=1.0,
                              max_new_tokens=method.max_completion_length)
    size = len(rows) * method.num_generations
    with TransformersBackend.from_model(state.actor, tokenizer, LoadOptions(max_batch_size=GENERATION_BATCH)) \
            as backend:
        groups = generate_all(backend, chats, sampling, n=method.num_generations,
                              seed=spec.hyperparameters.seed + (step - 1) * size, should_stop=ctx.should_stop)
    if ctx.should_stop():
        raise Cancelled()
    done = [c for group in groups for c in group]
    eos = tokenizer.eos_token_id
    tokens = [c.token_ids + ([eos] if c.finish_reason == "eos" or not c.token_ids else []) for c in done]
    prompts = [prompt_ids(tokenizer, chat) for chat in chats for _ in range(method.num_generations)]
    scores, reward_means = score(funcs, weights, rows, [c.text for c in done], method.num_generations,
                                 conversational)
    input_ids, attention, responses, mask = pad_batch(tokenizer.pad_token_id, prompts, tokens, ctx.device)
    width = responses.shape[1]
    logprobs, ref_logprobs, values = [], [], []
    from trl.trainer.utils import selective_log_softmax

    with torch.no_grad(), autocast():
        for part in torch.arange(size).split(spec.hyperparameters.batch_size):
            ids, attn = input_ids[part], attention[part]
            logits = models.response_logits(state.actor, ids, attn, width)
            logprobs.append(selective_log_softmax(logits / method.temperature, responses[part]))
            ref_logprobs.append(logprobs[-1] if reference is None else selective_log_softmax(
                reference.logits(ids, attn, width) / method.temperature, responses[part]))
            values.append(models.response_values(state.critic, ids, attn, width))
    logprobs, ref_logprobs, values = (torch.cat(x) * mask for x in (logprobs, ref_logprobs, values))
    scores_t = torch.tensor(scores, device=mask.device)
    rewards, kl = token_rewards(scores_t, logprobs, ref_logprobs, mask, state.kl_coef)
    advantages, returns = advantages_and_returns(rewards, values, mask, method.gamma, method.lam,
                                                 method.whiten_advantages)
    kl_sum = kl.sum(1)
    lengths = [c.token_count for c in done]
    stats = {
        "objective/kl": kl_sum.mean().item(),
        "objective/entropy": (-logprobs * mask).sum(1).mean().item(),
        "objective/non_score_reward": (-state.kl_coef * kl_sum).mean().item(),
        "objective/scores": statistics.fmean(scores),
        "objective/rlhf_reward": statistics.fmean(scores) - state.kl_coef * kl_sum.mean().item(),
        "objective/kl_coef": state.kl_coef,
        "val/mean": masked_mean(values, mask).item(),
        "val/num_eos_tokens": float(sum(c.finish_reason == "eos" for c in done)),
        "reward": statistics.fmean(scores), "reward_std": statistics.pstdev(scores), **reward_means,
        "completions/mean_length": statistics.fmean(lengths),
        "completions/clipped_ratio": sum(c.finish_reason == "length" for c in done) / len(done),
    }
    state.num_tokens += int(attention.sum().item())
    return Rollouts(input_ids, attention, responses, mask, logprobs, values, advantages, returns), stats


# ------------------------------------------------------------------------------------------------ updates


def update(ctx: RecipeContext, state: PpoState, batch: Rollouts, autocast, scaler) -> dict[str, float]:
    """ppo_epochs x num_mini_batches optimizer steps of both models on one step's rollouts (module doc, 4);
    returns the updates' mean statistics."""
    from trl.trainer.utils import entropy_from_logits, selective_log_softmax

    method, hyper = ctx.spec.method_spec, ctx.spec.hyperparameters
    width = batch.responses.shape[1]
    totals: dict[str, float] = {}
    updates = 0
    state.actor.train()  # generation left them in eval mode; dropout is off either way
    state.critic.train()
    for _ in range(method.ppo_epochs):
        order = torch.randperm(len(batch.mask), generator=state.generator).to(batch.mask.device)
        for mini_batch in order.tensor_split(method.num_mini_batches):
            tokens = batch.mask[mini_batch].sum().clamp(min=1)
            sums: dict[str, float] = {}
            for part in mini_batch.split(hyper.batch_size):
                mask = batch.mask[part]
                with autocast():
                    logits = models.response_logits(state.actor, batch.input_ids[part],
                                                    batch.attention_mask[part], width) / method.temperature
                    values = models.response_values(state.critic, batch.input_ids[part],
                                                    batch.attention_mask[part], width)
                logprobs = selective_log_softmax(logits, batch.responses[part])
                pg_loss, stats = policy_loss(logprobs, batch.logprobs[part], batch.advantages[part], mask,
                                             method.cliprange)
                vf_loss, vf_clipfrac = value_loss(values, batch.values[part], batch.returns[part], mask,
                                                  method.cliprange_value)
                weight = mask.sum() / tokens
                scaler.scale((pg_loss + method.vf_coef * vf_loss) * weight).backward()
                with torch.no_grad():
                    stats.update({"loss/policy_avg": pg_loss, "loss/value_avg": vf_loss,
                                  "val/clipfrac_avg": vf_clipfrac,
                                  "policy/entropy_avg": masked_mean(entropy_from_logits(logits), mask)})
                for key, value in stats.items():
                    sums[key] = sums.get(key, 0.0) + float(value) * float(weight)
            sums["grad_norm"] = _step(state, scaler, hyper.max_grad_norm)
            for key, value in sums.items():
                totals[key] = totals.get(key, 0.0) + value
            updates += 1
    averages = {key: value / updates for key, value in totals.items()}
    averages["loss"] = averages["loss/policy_avg"] + method.vf_coef * averages["loss/value_avg"]
    return averages


def _step(state: PpoState, scaler, max_grad_norm: float) -> float:
    """One optimizer step of each model (gradients clipped per model); the actor's gradient norm."""
    norms = []
    for model, optimizer in ((state.actor, state.actor_optimizer), (state.critic, state.critic_optimizer)):
        scaler.unscale_(optimizer)
        trained = [p for p in model.parameters() if p.requires_grad]
        norms.append(float(torch.nn.utils.clip_grad_norm_(trained, max_grad_norm if max_grad_norm > 0 else math.inf)))
        scaler.step(optimizer)
        optimizer.zero_grad(set_to_none=True)
    scaler.update()
    return norms[0]


# ------------------------------------------------------------------------------------------------- the run


def prompt_order(count: int, seed: int, start: int, size: int) -> list[int]:
    """Row indices `start` .. `start + size - 1` of the endless stream: each epoch a fresh seeded shuffle."""
    indices = []
    for k in range(start, start + size):
        epoch, position = divmod(k, count)
        indices.append(int(torch.randperm(count, generator=torch.Generator().manual_seed(seed + epoch))[position]))
    return indices


def _precision_contexts(ctx: RecipeContext):
    """(autocast factory, gradient scaler): bf16/fp16 autocast as the precision asks; a real scaler for fp16."""
    precision = resolve_precision(ctx.spec.hyperparameters, ctx.spec.adapter, ctx.device)
    dtype = torch.bfloat16 if precision.bf16 else torch.float16 if precision.fp16 else None
    device_type = "cuda" if ctx.device == "cuda" else "cpu"

    def autocast():
        return torch.autocast(device_type, dtype=dtype) if dtype is not None else contextlib.nullcontext()

    return autocast, torch.amp.GradScaler(device_type, enabled=precision.fp16), precision


def run(ctx: RecipeContext) -> str:
    """Actor-critic PPO to the final store checkpoint of the actor; returns its id (see the module doc)."""
    from transformers import set_seed

    spec, method, hyper = ctx.spec, ctx.spec.method_spec, ctx.spec.hyperparameters
    set_seed(hyper.seed)
    base_dir = ctx.store.path_of(spec.base_model_id, "base_model_id")
    tokenizer = load_tokenizer(base_dir)
    rows = prompt_rows(spec.dataset)
    recorder = RolloutRecorder()
    funcs, weights = build_reward_functions(method.rewards, store=ctx.store, device=ctx.device, log=ctx.log,
                                            recorder=recorder)
    for fn in funcs:  # load reward models now: a bad one fails the job before any step
        prepare = getattr(getattr(fn, "_batch", None), "prepare", None)
        if callable(prepare):
            prepare()
    autocast, scaler, precision = _precision_contexts(ctx)
    ctx.log(f"loading {spec.base_model_id} for {spec.adapter.type} training on {ctx.device}; critic: "
            f"{models.critic_adapter(spec)}, from the {method.critic_init.replace('_', ' ')}")
    actor = models.load_actor(base_dir, spec, precision, ctx.device)
    reference = None if method.kl_control == "fixed" and method.beta == 0 else \
        models.Reference(actor, peft=spec.adapter.is_peft)
    critic = models.load_critic(ctx, tokenizer, base_dir, ctx.device)
    loaded = [getattr(getattr(fn, "_batch", None), "_loaded", None) for fn in funcs]
    reward_model = next((item[0] for item in loaded if item), None)
    memory = models.memory_report(actor, reference, reward_model, critic)
    ctx.log(models.describe_memory(memory))

    prompts_per_step = hyper.batch_size * hyper.gradient_accumulation_steps // method.num_generations
    total_steps = hyper.max_steps or max(1, math.ceil(hyper.num_epochs * len(rows) / prompts_per_step))
    state = PpoState.create(actor, critic, spec, total_steps)
    ctx.log(f"actor-critic PPO: {total_steps} steps of {prompts_per_step} prompt(s) x {method.num_generations} "
            f"completion(s), {method.ppo_epochs} epochs x {method.num_mini_batches} mini-batch(es) each; "
            f"KL {method.kl_control} from beta {method.beta}; gamma {method.gamma}, lam {method.lam}, cliprange "
            f"{method.cliprange}, cliprange_value {method.cliprange_value}, vf_coef {method.vf_coef}; rewards: "
            + ", ".join(f"{f.__name__} x{w:g}" for f, w in zip(funcs, weights)))
    holder = MetricsCallback(ctx)  # the checkpointer reads the latest metrics from it
    checkpointer = StoreCheckpointer(ctx, tokenizer, holder)
    samples = RolloutSamplesCallback(ctx, recorder, method.samples)
    resume_from = latest_full_state(ctx.output_dir("ppo"))
    if resume_from is not None:
        state.load(resume_from)
        ctx.log(f"continuing from the full state of step {state.step} (an earlier attempt of this job)",
                step=state.step)
    ctx.report_resume(state.step)
    started, first_step = time.perf_counter(), state.step
    while state.step < total_steps:
        rng = PpoState.rng_state()  # the step boundary's RNGs, saved if the job stops during generation
        if ctx.should_stop():
            save_full_state(ctx, state, rng)
            raise Cancelled()
        step, step_started = state.step + 1, time.perf_counter()
        learning_rate = state.actor_scheduler.get_last_lr()[0]
        chosen = prompt_order(len(rows), hyper.seed, state.step * prompts_per_step, prompts_per_step)
        tokens_before = state.num_tokens
        try:
            batch, values = collect(ctx, state, reference, tokenizer, [rows[i] for i in chosen], funcs, weights,
                                    step, autocast)
        except Cancelled:
            save_full_state(ctx, state, rng)
            raise
        values.update(update(ctx, state, batch, autocast, scaler))
        state.kl_coef = next_kl_coef(state.kl_coef, values["objective/kl"], method, len(batch.mask))
        state.actor_scheduler.step()
        state.critic_scheduler.step()
        state.step = step
        now = time.perf_counter()
        values.update({"learning_rate": learning_rate, "epoch": step * prompts_per_step / len(rows),
                       "num_tokens": float(state.num_tokens), "step_time": now - step_started,
                       "tokens_per_second": (state.num_tokens - tokens_before) / max(now - step_started, 1e-9),
                       "progress": step / total_steps,
                       "eta_seconds": (now - started) / (step - first_step) * (total_steps - step)})
        if step == 1:
            values.update({f"memory/{name}_mib": item["mib"] for name, item in memory.items()})
            values["memory/optimizers_mib"] = models.optimizer_mib(state.actor_optimizer, state.critic_optimizer)
        holder.latest.update(values)
        ctx.emit("metrics", {"phase": "train", "values": values, "total_steps": total_steps}, step)
        samples.flush(step)
        if spec.save_every_steps and step % spec.save_every_steps == 0 and step < total_steps:
            checkpointer.save(state.actor, step, is_final=False)
        if step % spec.state_every_steps == 0 and step < total_steps:
            save_full_state(ctx, state)
    return checkpointer.save(state.actor, state.step, is_final=True).id
