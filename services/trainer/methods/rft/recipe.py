"""Rejection-sampling fine-tuning (RFT, a.k.a. expert iteration / best-of-n SFT), full / LoRA / QLoRA.

For each of `rounds` rounds:

1. generate: the *current* policy samples `num_candidates` completions per prompt of the prompt-only
   dataset (the engine's continuous batching over the model being trained, services/engine, at
   `temperature` over the whole vocabulary, up to `max_completion_length` tokens, the chat template of the
   model; every candidate seeded from `seed + round`);
2. score: every candidate with the job's reward functions (services/trainer/rewards/, the same registry
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

Resuming (a later attempt of the job): each finished round is published as a phase holding the weights
after it (the adapter alone for LoRA/QLoRA) and the step counters, so a later attempt starts at the next
round without redoing finished ones; a round interrupted mid-way regenerates its candidates (seeded, from
the same weights, so the same set) and its trainer resumes from the round's newest full-state checkpoint.

Raises FailedPrecondition (no candidate was accepted in any round:
there is nothing to fine-tune on), Cancelled (checked between generation batches and training steps).
"""

from __future__ import annotations

import math
import shutil
import statistics
from dataclasses import replace
from pathlib import Path

from services.common.errors import FailedPrecondition
from services.common.store import Manifest
from services.engine.backends.base import LoadOptions
from services.engine.backends.transformers_backend import TransformersBackend
from services.engine.batch import generate_all
from services.engine.sampling import SamplingConfig
from services.trainer.methods.rft import RftSpec
from services.trainer.rewards.runtime import build_reward_functions
from services.trainer.training.adapters import describe_loaded_model, load_base_for_training, resolve_precision
from services.trainer.training.callbacks import FullStateCallback, MetricsCallback, PeriodicCheckpointCallback, \
    StopCallback, StoreCheckpointer
from services.trainer.training.common import load_tokenizer, training_arguments
from services.trainer.training.context import Cancelled, RecipeContext, checkpoint_step, latest_full_state
from services.trainer.training.prompts import prompt_rows, prompt_text

GENERATION_BATCH_PROMPTS = 8  # prompts decoded together (each with num_candidates samples)
# A finished round (RecipeContext.save_phase): the weights after it and the step counters.
ROUND_PHASE = "rft-round-{}"


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


def generate_candidates(ctx: RecipeContext, model, tokenizer, prompts: list[list[dict]], config: RftSpec,
                        seed: int) -> tuple[list[list[str]], list[list[int]]]:
    """`num_candidates` sampled completions (text, token count) per chat prompt from the current model,
    generated by the engine over the model in memory (eval mode meanwhile, train mode restored after)."""
    sampling = SamplingConfig(temperature=config.temperature, top_k=0, top_p=1.0,
                              max_new_tokens=config.max_completion_length)
    options = LoadOptions(max_batch_size=GENERATION_BATCH_PROMPTS * config.num_candidates)
    with TransformersBackend.from_model(model, tokenizer, options) as backend:
        groups = generate_all(backend, prompts, sampling, n=config.num_candidates, seed=seed,
                              should_stop=ctx.should_stop)
    if ctx.should_stop():
        raise Cancelled()
    return [[c.text for c in group] for group in groups], [[c.token_count for c in group] for group in groups]


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


# ------------------------------------------------------------------------------------------ resuming


def _round_dir(ctx: RecipeContext, r: int) -> Path:
    """Round r's trainer output_dir: its `checkpoint-N` folders are the full state inside the round."""
    return ctx.output_dir(f"trainer/round-{r}")


def _save_round(ctx: RecipeContext, r: int, model, offset: int, trained_rounds: int) -> None:
    """Publish round r as a finished phase: the weights trained so far (the adapter alone for LoRA/QLoRA)
    and the step counters, so a later attempt starts at round r + 1. The round's own full state goes."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file, save_model

    with ctx.save_phase(ROUND_PHASE.format(r), {"offset": offset, "trained_rounds": trained_rounds}) as folder:
        if trained_rounds and hasattr(model, "peft_config"):
            save_file(get_peft_model_state_dict(model), str(folder / "adapter.safetensors"))
        elif trained_rounds:
            save_model(model, str(folder / "model.safetensors"))
    shutil.rmtree(_round_dir(ctx, r), ignore_errors=True)


def _restore_rounds(ctx: RecipeContext, rounds: int, model, peft_config, events: _RoundEvents):
    """(first round to run, rounds trained so far, model) after the last round an earlier attempt finished;
    its weights are loaded into `model` (wrapped in the LoRA adapter first, as the first trained round
    does). (0, 0, model) on a first run."""
    finished = next((r for r in reversed(range(rounds)) if ctx.finished_phase(ROUND_PHASE.format(r))), None)
    if finished is None:
        return 0, 0, model
    folder = ctx.finished_phase(ROUND_PHASE.format(finished))
    info = ctx.phase_info(ROUND_PHASE.format(finished))
    events.offset, trained_rounds = int(info["offset"]), int(info["trained_rounds"])
    if trained_rounds and peft_config is not None:
        from peft import get_peft_model, set_peft_model_state_dict
        from safetensors.torch import load_file

        model = get_peft_model(model, peft_config)
        set_peft_model_state_dict(model, load_file(str(folder / "adapter.safetensors")))
    elif trained_rounds:
        from safetensors.torch import load_model

        load_model(model, str(folder / "model.safetensors"))
    ctx.log(f"rounds 1-{finished + 1} were finished by an earlier attempt of this job; going on with round "
            f"{finished + 2}", step=events.offset)
    return finished + 1, trained_rounds, model


# ------------------------------------------------------------------------------------------ recipe


def run(ctx: RecipeContext) -> str:
    from trl import SFTConfig, SFTTrainer

    spec = ctx.spec
    config: RftSpec = spec.method_spec
    hyper = spec.hyperparameters
    base_dir = ctx.store.path_of(spec.base_model_id, "base_model_id")
    tokenizer = load_tokenizer(base_dir)  # it has a chat template: admission refuses a base without one
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
    first_round, trained_rounds, model = _restore_rounds(ctx, config.rounds, model, peft_config, events)
    in_round = latest_full_state(_round_dir(ctx, first_round))
    ctx.report_resume(events.offset + (checkpoint_step(in_round) if in_round else 0))
    for r in range(first_round, config.rounds):
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
            _save_round(ctx, r, model, events.offset, trained_rounds)
            continue

        import datasets

        train = datasets.Dataset.from_list([{"prompt": p, "completion": [{"role": "assistant", "content": t}]}
                                            for p, t in pairs])
        args = SFTConfig(**training_arguments(spec, str(_round_dir(ctx, r)), ctx.device, has_eval=False),
                         max_length=hyper.max_seq_length, packing=False, completion_only_loss=True)
        metrics = MetricsCallback(round_ctx)
        metrics.latest.update(values)
        checkpointer.metrics, checkpointer.offset = metrics, events.offset
        callbacks = [metrics, StopCallback(ctx), FullStateCallback(ctx, events.offset),
                     PeriodicCheckpointCallback(checkpointer, spec.save_every_steps)]
        # The first trained round wraps the model in the LoRA adapter; later rounds keep training it.
        trainer = SFTTrainer(model=model, args=args, train_dataset=train, processing_class=tokenizer,
                             peft_config=peft_config if trained_rounds == 0 else None, callbacks=callbacks)
        resume_from = latest_full_state(_round_dir(ctx, r))  # this round was interrupted in an earlier attempt
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        if ctx.should_stop():
            raise Cancelled()
        model = trainer.model
        events.offset += trainer.state.global_step
        trained_rounds += 1
        _save_round(ctx, r, model, events.offset, trained_rounds)

    if not trained_rounds:
        raise FailedPrecondition(
            f"rft: no candidate was accepted in any of {config.rounds} rounds, so nothing was fine-tuned; lower "
            "rft.threshold, raise rft.num_candidates or rft.temperature, or check the rewards on the streamed "
            "rollout samples")
    final = StoreCheckpointer.save(checkpointer, model, events.offset, is_final=True)
    return final.id
