"""Rejection-sampling fine-tuning (RFT, a.k.a. expert iteration / best-of-n SFT), full / LoRA / QLoRA.

For each of `rounds` rounds:

1. generate: the *current* policy samples `num_candidates` completions per prompt of the prompt-only
   dataset (transformers `generate`, batched, at `temperature`, up to `max_completion_length` tokens, the
   chat template of the model; seeded with `seed + round`);
2. score: every candidate with the job's reward functions (services/trainer/rewards.py, the same registry
   as GRPO), weighted sum; dataset columns (e.g. `answer`) reach the rewards as keyword arguments;
3. keep: without `threshold`, each prompt's best candidate when its reward is > 0; with `threshold`,
   every distinct candidate whose reward is >= threshold;
4. fine-tune: SFTTrainer on the kept (prompt, completion) pairs, loss on the completion only. The
   hyperparameters apply *per round*: `max_steps` optimizer steps per round when set, else `num_epochs`
   over that round's kept set; the optimizer and LR schedule restart each round. The same model object
   carries on (LoRA: the same adapter keeps training).

Events: per round a metrics event (step = optimizer steps so far) with `round`, `reward` (mean over all
candidates), `reward_std`, `rewards/<fn>/mean`, `acceptance_rate` (share of *candidates* that pass the
bar: reward > 0, or >= threshold), `prompt_acceptance_rate` (share of prompts with a kept candidate),
`kept` (pairs trained on this round), `completions/mean_length` (tokens); a `rollouts` event with the
first `samples.max_prompts` prompts and all their candidates and rewards, in the first round and then in
a `samples.fraction_of_steps` share of rounds (0 = never); then the usual training metrics, their steps
continuing across rounds. Periodic checkpoints follow `save_every_steps` within a round; the final
model is an ADAPTER (LoRA/QLoRA) or FULL_CHECKPOINT, servable by the inference service.

Raises InvalidArgument (no chat template), FailedPrecondition (no candidate was accepted in any round:
there is nothing to fine-tune on), Cancelled (checked between generation batches and training steps).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import replace

from services.common.errors import FailedPrecondition, InvalidArgument
from services.common.store import Manifest
from services.trainer.recipes.adapters import describe_loaded_model, load_base_for_training, resolve_precision
from services.trainer.recipes.callbacks import MetricsCallback, PeriodicCheckpointCallback, StopCallback, \
    StoreCheckpointer
from services.trainer.recipes.common import load_tokenizer, training_arguments
from services.trainer.recipes.context import Cancelled, RecipeContext
from services.trainer.recipes.distill import prompt_rows, prompt_text
from services.trainer.spec import RftConfig

GENERATION_BATCH_PROMPTS = 8  # prompts per generate() call (each with num_candidates samples)


class _RoundCheckpointer(StoreCheckpointer):
    """Store checkpoints named by the job-wide step: `offset` (steps of earlier rounds) + the round's step."""

    offset = 0

    def save(self, model, step: int, is_final: bool) -> Manifest:
        return super().save(model, step + self.offset, is_final)


class _RoundEvents:
    """The emit of one round's trainer: steps shifted by the earlier rounds' steps, progress over all rounds."""

    def __init__(self, ctx: RecipeContext, rounds: int):
        self.ctx, self.rounds = ctx, rounds
        self.offset = 0
        self.round = 0

    def estimated_total(self, round_steps: int) -> int:
        return self.offset + round_steps * (self.rounds - self.round)

    def __call__(self, kind: str, data: dict, step: int) -> None:
        if kind == "metrics":
            total = self.estimated_total(int(data.get("total_steps", 0)))
            values = dict(data["values"])
            values["progress"] = min((self.offset + step) / max(total, 1), 1.0)
            values["round"] = float(self.round)
            data = {**data, "values": values, "total_steps": total}
        self.ctx.emit(kind, data, self.offset + step)


def sampled_rounds(rounds: int, fraction: float) -> set[int]:
    """Rounds (0-based) whose rollouts are streamed: the first, then every round where the running count
    `floor(round * fraction)` grows (so fraction 1 = every round, 0.5 = every other); none for 0."""
    if fraction <= 0:
        return set()
    return {r for r in range(rounds) if r == 0 or math.floor(r * fraction) > math.floor((r - 1) * fraction)}


def _device_of(model) -> str:
    return str(next(model.parameters()).device)


def generate_candidates(ctx: RecipeContext, model, tokenizer, prompts: list[list[dict]], config: RftConfig,
                        seed: int) -> tuple[list[list[str]], list[list[int]]]:
    """`num_candidates` sampled completions (text, token count) per chat prompt from the current model."""
    import torch
    from transformers import GenerationConfig

    from services.trainer.recipes.evaluate import end_of_turn_ids

    eos_ids = end_of_turn_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id
    generation = GenerationConfig(max_new_tokens=config.max_completion_length, do_sample=True,
                                  temperature=config.temperature, top_k=0, top_p=1.0,
                                  num_return_sequences=config.num_candidates, pad_token_id=pad_id,
                                  eos_token_id=eos_ids, use_cache=True)
    device = _device_of(model)
    texts: list[list[str]] = []
    lengths: list[list[int]] = []
    torch.manual_seed(seed)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(prompts), GENERATION_BATCH_PROMPTS):
            if ctx.should_stop():
                raise Cancelled()
            batch = [tokenizer(tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False),
                               add_special_tokens=False)["input_ids"]
                     for p in prompts[start:start + GENERATION_BATCH_PROMPTS]]
            width = max(len(ids) for ids in batch)
            input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            attention = torch.zeros((len(batch), width), dtype=torch.long)
            for i, ids in enumerate(batch):  # left padding: every row's completion starts at `width`
                input_ids[i, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
                attention[i, width - len(ids):] = 1
            with torch.no_grad():
                output = model.generate(input_ids=input_ids.to(device), attention_mask=attention.to(device),
                                        generation_config=generation)
            completions = output[:, width:].tolist()
            for i in range(len(batch)):
                group_texts, group_lengths = [], []
                for ids in completions[i * config.num_candidates:(i + 1) * config.num_candidates]:
                    end = next((j for j, t in enumerate(ids) if t in eos_ids), len(ids))
                    group_texts.append(tokenizer.decode(ids[:end], skip_special_tokens=True))
                    group_lengths.append(end)
                texts.append(group_texts)
                lengths.append(group_lengths)
    finally:
        if was_training:
            model.train()
    return texts, lengths


def score_candidates(funcs, weights, rows: list[dict], candidates: list[list[str]]) -> tuple[list, dict]:
    """(per prompt, per candidate: (weighted reward, {fn: score})), and {fn: all its scores}."""
    prompts, completions, columns = [], [], {}
    extra = sorted({key for row in rows for key in row} - {"prompt"})
    for row, group in zip(rows, candidates):
        for text in group:
            prompts.append(row["prompt"])
            completions.append([{"role": "assistant", "content": text}])
            for key in extra:
                columns.setdefault(key, []).append(row.get(key))
    by_function = {}
    for func in funcs:
        by_function[func.__name__] = func(prompts=prompts, completions=completions, **columns)
    scored, index = [], 0
    for group in candidates:
        items = []
        for _ in group:
            rewards = {name: float(scores[index]) for name, scores in by_function.items()}
            total = sum(w * rewards[f.__name__] for f, w in zip(funcs, weights))
            items.append((total, rewards))
            index += 1
        scored.append(items)
    return scored, by_function


def select(candidates: list[list[str]], scored: list[list[tuple]], threshold: float | None) -> list[list[str]]:
    """The kept completions of each prompt (see the module doc)."""
    kept = []
    for texts, items in zip(candidates, scored):
        rewards = [total for total, _ in items]
        if threshold is None:
            best = max(range(len(texts)), key=lambda i: rewards[i])
            kept.append([texts[best]] if rewards[best] > 0 else [])
        else:
            kept.append(list(dict.fromkeys(t for t, r in zip(texts, rewards) if r >= threshold)))
    return kept


def run(ctx: RecipeContext) -> str:
    from trl import SFTConfig, SFTTrainer

    from services.trainer.rewards import build_reward_functions

    spec = ctx.spec
    config: RftConfig = spec.method_config
    hyper = spec.hyperparameters
    base_dir = ctx.store.path_of(spec.base_model_id, "base_model_id")
    tokenizer = load_tokenizer(base_dir)
    if not tokenizer.chat_template:
        raise InvalidArgument(f"base_model_id: {spec.base_model_id!r} has no chat template; RFT samples answers "
                              "to chat prompts (use an instruct/chat model or one whose tokenizer defines it)")
    rows = prompt_rows(spec.dataset)
    prompts = [row["prompt"] for row in rows]
    funcs, weights = build_reward_functions(config.rewards, store=ctx.store, device=ctx.device, log=ctx.log)
    ctx.log(f"{len(prompts)} prompts, {config.rounds} rounds of {config.num_candidates} candidates each; rewards: "
            + ", ".join(f"{f.__name__} x{w:g}" for f, w in zip(funcs, weights)))

    precision = resolve_precision(hyper, spec.adapter, ctx.device)
    ctx.log(f"loading {spec.base_model_id} for {spec.adapter.type} training on {ctx.device}")
    model, peft_config = load_base_for_training(base_dir, spec.adapter, precision, ctx.device)
    ctx.log(describe_loaded_model(model))
    if ctx.device == "cuda" and not getattr(model, "is_quantized", False):
        model.to("cuda")

    events = _RoundEvents(ctx, config.rounds)
    round_ctx = replace(ctx, emit=events)
    checkpointer = _RoundCheckpointer(ctx, tokenizer, MetricsCallback(round_ctx))
    sample_rounds = sampled_rounds(config.rounds, config.samples.fraction_of_steps)
    trained_rounds = 0
    for r in range(config.rounds):
        events.round = r
        candidates, lengths = generate_candidates(ctx, model, tokenizer, prompts, config, hyper.seed + r)
        scored, by_function = score_candidates(funcs, weights, rows, candidates)
        kept = select(candidates, scored, config.threshold)
        totals = [total for items in scored for total, _ in items]
        passed = sum(1 for t in totals if (t >= config.threshold if config.threshold is not None else t > 0))
        pairs = [(row["prompt"], text) for row, texts in zip(rows, kept) for text in texts]
        values = {
            "round": float(r),
            "reward": statistics.fmean(totals),
            "reward_std": statistics.pstdev(totals),
            "acceptance_rate": passed / len(totals),
            "prompt_acceptance_rate": sum(1 for texts in kept if texts) / len(kept),
            "kept": float(len(pairs)),
            "completions/mean_length": statistics.fmean(n for group in lengths for n in group),
            **{f"rewards/{name}/mean": statistics.fmean(scores) for name, scores in by_function.items()},
        }
        step = events.offset
        ctx.emit("metrics", {"phase": "train", "values": values, "total_steps": events.offset}, step)
        checkpointer.metrics.latest.update(values)
        ctx.log(f"round {r + 1}/{config.rounds}: mean reward {values['reward']:.3f}, acceptance "
                f"{values['acceptance_rate']:.1%} of candidates, {len(pairs)} pairs kept", step=step)
        if r in sample_rounds:
            ctx.emit("rollouts", {"round": r, "samples": [
                {"prompt": prompt_text(row["prompt"]),
                 "completions": [{"text": text, "reward": total, "rewards": rewards}
                                 for text, (total, rewards) in zip(texts, items)]}
                for row, texts, items in list(zip(rows, candidates, scored))[:config.samples.max_prompts]]}, step)
        if ctx.should_stop():
            raise Cancelled()
        if not pairs:
            ctx.log(f"round {r + 1}: no candidate was accepted; nothing to fine-tune on this round", "warning",
                    step=step)
            continue

        import datasets

        train = datasets.Dataset.from_list([{"prompt": p, "completion": [{"role": "assistant", "content": t}]}
                                            for p, t in pairs])
        args = SFTConfig(**training_arguments(spec, str(ctx.work_dir / "trainer" / f"round-{r}"), ctx.device,
                                              has_eval=False),
                         max_length=hyper.max_seq_length, packing=False, completion_only_loss=True)
        metrics = MetricsCallback(round_ctx)
        metrics.latest.update(values)
        checkpointer.metrics, checkpointer.offset = metrics, events.offset
        callbacks = [metrics, StopCallback(ctx), PeriodicCheckpointCallback(checkpointer, spec.save_every_steps)]
        # The first trained round wraps the model in the LoRA adapter; later rounds keep training it.
        trainer = SFTTrainer(model=model, args=args, train_dataset=train, processing_class=tokenizer,
                             peft_config=peft_config if trained_rounds == 0 else None, callbacks=callbacks)
        trainer.train()
        if ctx.should_stop():
            raise Cancelled()
        model = trainer.model
        events.offset += trainer.state.global_step
        trained_rounds += 1

    if not trained_rounds:
        raise FailedPrecondition(
            f"rft: no candidate was accepted in any of {config.rounds} rounds, so nothing was fine-tuned; lower "
            "rft.threshold, raise rft.num_candidates or rft.temperature, or check the rewards on the streamed "
            "rollout samples")
    final = StoreCheckpointer.save(checkpointer, model, events.offset, is_final=True)
    return final.id
