"""transformers `TrainerCallback`s shared by every recipe: live metrics, store checkpoints, cancellation.

They work with any TRL trainer (all are transformers `Trainer`s), so a new recipe gets metrics, periodic
checkpoints into the store and prompt cancellation by passing `standard_callbacks(...)`.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict
from pathlib import Path

from transformers import EarlyStoppingCallback, TrainerCallback

from services.common.errors import FailedPrecondition, Violation
from services.common.store import EntryKind, Manifest
from services.trainer.training.context import RecipeContext
from services.trainer.spec import EvalSpec

# Keys of the end-of-training summary transformers logs once; they are not per-step metrics.
_SUMMARY_KEYS = {"train_runtime", "train_samples_per_second", "train_steps_per_second", "train_loss", "total_flos"}


class MetricsCallback(TrainerCallback):
    """Emits TRL's log dict as a metrics event, plus tokens_per_second, step_time, progress and eta_seconds."""

    def __init__(self, ctx: RecipeContext):
        self.ctx = ctx
        self.start = self.last_time = 0.0
        self.last_step = 0
        self.last_tokens: float | None = None
        self.latest: dict[str, float] = {}

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = self.last_time = time.perf_counter()
        self.last_step = state.global_step
        self.ctx.log(f"training started: {state.max_steps} optimizer steps", step=state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        now = time.perf_counter()
        loss = (logs or {}).get("loss")
        if isinstance(loss, (int, float)) and not math.isfinite(float(loss)):
            # The run diverged: every later step would be NaN too, and retrying the same run cannot help.
            raise FailedPrecondition(
                f"training diverged: the loss is {loss} at step {state.global_step}; lower "
                f"hyperparameters.learning_rate (now {args.learning_rate:g}) or hyperparameters.max_grad_norm, "
                "or check the data for extreme rows",
                [Violation(0, "hyperparameters.learning_rate", f"the loss became {loss} at step {state.global_step}",
                           "lower the learning rate")])
        values = {k: float(v) for k, v in (logs or {}).items()
                  if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))}
        step = state.global_step
        is_eval = any(k.startswith("eval_") for k in values)
        if is_eval:
            if "eval_loss" in values:
                values["eval_perplexity"] = math.exp(min(values["eval_loss"], 50.0))
        elif not _SUMMARY_KEYS & values.keys():
            interval = now - self.last_time
            steps = step - self.last_step
            if steps > 0 and interval > 0:
                values["step_time"] = interval / steps
                tokens = values.get("num_tokens")
                if tokens is not None:
                    previous = self.last_tokens if self.last_tokens is not None else 0.0
                    values["tokens_per_second"] = (tokens - previous) / interval
                    self.last_tokens = tokens
            self.last_time, self.last_step = now, step
        elif "train_runtime" in values and "num_tokens" in self.latest:
            values["tokens_per_second"] = self.latest["num_tokens"] / max(values["train_runtime"], 1e-9)
        total = max(state.max_steps, 1)
        elapsed = now - self.start
        values["progress"] = min(step / total, 1.0)
        values["eta_seconds"] = elapsed / step * (total - step) if step else 0.0
        self.latest.update(values)
        self.ctx.emit("metrics", {"phase": "eval" if is_eval else "train", "values": values,
                                  "total_steps": state.max_steps}, step)


class StopCallback(TrainerCallback):
    """Stops training at the next optimizer-step boundary once the job was asked to stop (pause or
    cancel), saving the full state of that step first so that ResumeJob continues from it."""

    def __init__(self, ctx: RecipeContext):
        self.ctx = ctx

    def on_step_end(self, args, state, control, **kwargs):
        if self.ctx.should_stop():
            control.should_training_stop = True
            control.should_save = True
            control.should_evaluate = False


class FullStateCallback(TrainerCallback):
    """Tells the context when a full-state checkpoint is on disk (the tests' fault-injection point).
    `offset`: steps of earlier phases (RFT rounds), so the context hears the job-wide step."""

    def __init__(self, ctx: RecipeContext, offset: int = 0):
        self.ctx, self.offset = ctx, offset

    def on_save(self, args, state, control, **kwargs):
        self.ctx.full_state_saved(self.offset + state.global_step)


class StoreCheckpointer:
    """Writes the model (full weights + tokenizer) or adapter into the store and emits `checkpoint`.

    `kind` is what the job produces: ADAPTER for LoRA/QLoRA, FULL_CHECKPOINT for full training,
    REWARD_MODEL for reward jobs. When a peft model must be saved as full weights (a reward model, or a
    vocabulary expansion whose new embeddings the base does not have), `merge_peft` merges the adapter
    into a copy (periodic saves) or in place (the final save). Saving twice at one step returns the
    entry already written, so a periodic save and a best-checkpoint save never collide.
    """

    def __init__(self, ctx: RecipeContext, tokenizer, metrics: MetricsCallback, *, kind: EntryKind | None = None,
                 merge_peft: bool = False):
        self.ctx = ctx
        self.tokenizer = tokenizer
        self.metrics = metrics
        self.merge_peft = merge_peft
        peft = ctx.spec.adapter.is_peft and not merge_peft
        self.kind = kind or (EntryKind.ADAPTER if peft else EntryKind.FULL_CHECKPOINT)
        self.saved: dict[int, Manifest] = {}

    def save(self, model, step: int, is_final: bool) -> Manifest:
        if step in self.saved and not is_final:
            return self.saved[step]
        spec = self.ctx.spec
        entry_id = self.ctx.store.job_checkpoint_id(spec.job_id, step, is_final=is_final)
        if self.ctx.store.exists(entry_id):
            # An earlier attempt saved this step before it was interrupted; a resumed run reproduces the
            # same weights, and store entries are immutable, so the entry stands (its event was sent).
            self.saved[step] = self.ctx.store.get(entry_id)
            return self.saved[step]
        if self.merge_peft and hasattr(model, "merge_and_unload"):
            model = (model if is_final else copy.deepcopy(model)).merge_and_unload()
        is_adapter = self.kind is EntryKind.ADAPTER
        dtype = next(p for p in model.parameters() if p.is_floating_point()).dtype
        manifest = Manifest(
            id=entry_id,
            kind=self.kind,
            base_model_id=spec.base_model_id, method=spec.method, job_id=spec.job_id, step=step,
            metrics={k: v for k, v in self.metrics.latest.items() if k not in ("progress", "eta_seconds")},
            dtype=str(dtype).removeprefix("torch."),
            architecture=(model.config.architectures or [type(model).__name__])[0],
            is_final=is_final,
            labels={"adapter_type": spec.adapter.type},
        )
        with self.ctx.store.write_entry(manifest) as out:
            model.save_pretrained(out, safe_serialization=True)
            if is_adapter:
                _point_adapter_at_store_id(out, spec.base_model_id)
            else:
                self.tokenizer.save_pretrained(out)
        saved = self.ctx.store.get(manifest.id)
        self.saved[step] = saved
        data = asdict(saved)
        data["kind"] = saved.kind.value
        self.ctx.emit("checkpoint", data, step)
        return saved


def _point_adapter_at_store_id(adapter_dir: Path, base_model_id: str) -> None:
    """peft records the base's local path; record the store id instead (paths are server internals)."""
    config_path = adapter_dir / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = base_model_id
    config_path.write_text(json.dumps(config, indent=2))


class PeriodicCheckpointCallback(TrainerCallback):
    def __init__(self, checkpointer: StoreCheckpointer, every_steps: int):
        self.checkpointer = checkpointer
        self.every_steps = every_steps

    def on_step_end(self, args, state, control, model=None, **kwargs):
        step = state.global_step
        if self.every_steps and step % self.every_steps == 0 and step < state.max_steps \
                and not self.checkpointer.ctx.should_stop():
            self.checkpointer.save(model, step, is_final=False)


class BestCheckpointCallback(TrainerCallback):
    """Tracks the best evaluation by `eval.metric_for_best`; keeps those weights in the store.

    An evaluation that beats every earlier one during training saves a checkpoint at its step (unless
    one is already there); `finish_training` marks the winner in the store once training is over.
    """

    def __init__(self, checkpointer: StoreCheckpointer, evaluation: EvalSpec):
        self.checkpointer = checkpointer
        self.metric = evaluation.metric_for_best
        self.greater_is_better = evaluation.greater_is_better
        self.best_value: float | None = None
        self.best_step = -1
        self.best_id = ""
        self.training_over = False
        self._warned = False

    def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
        value = (metrics or {}).get(self.metric)
        if value is None:
            if not self._warned:
                self._warned = True
                self.checkpointer.ctx.log(f"eval metric {self.metric!r} not reported (have: "
                                          f"{', '.join(sorted(metrics or {}))}); no best checkpoint", "warning")
            return
        better = (self.best_value is None or (value > self.best_value if self.greater_is_better
                                                  else value < self.best_value))
        if not better:
            return
        self.best_value, self.best_step, self.best_id = float(value), state.global_step, ""
        if not self.training_over and model is not None and state.global_step < state.max_steps \
                and not self.checkpointer.ctx.should_stop():
            self.best_id = self.checkpointer.save(model, state.global_step, is_final=False).id

    def on_train_end(self, args, state, control, **kwargs):
        self.training_over = True


def standard_callbacks(ctx: RecipeContext, tokenizer, *, kind: EntryKind | None = None,
                       merge_peft: bool = False) -> tuple[list[TrainerCallback], StoreCheckpointer]:
    """Metrics + cancellation + periodic store checkpoints, plus best-checkpoint tracking and early
    stopping when the job evaluates. Returns the checkpointer for `finish_training`."""
    metrics = MetricsCallback(ctx)
    checkpointer = StoreCheckpointer(ctx, tokenizer, metrics, kind=kind, merge_peft=merge_peft)
    callbacks = [metrics, StopCallback(ctx), FullStateCallback(ctx),
                 PeriodicCheckpointCallback(checkpointer, ctx.spec.save_every_steps)]
    evaluation = ctx.spec.eval
    if evaluation.split_ratio > 0 or ctx.spec.eval_dataset is not None:
        callbacks.append(BestCheckpointCallback(checkpointer, evaluation))
        if evaluation.early_stopping_patience:
            callbacks.append(EarlyStoppingCallback(evaluation.early_stopping_patience,
                                                   evaluation.early_stopping_threshold))
    return callbacks, checkpointer


def finish_training(ctx: RecipeContext, trainer, checkpointer: StoreCheckpointer, *, evaluate: bool) -> str:
    """Train, evaluate at the end (unless that step was just evaluated), save the final checkpoint, mark the best; returns its id.

    Resumes from the newest full-state checkpoint in the trainer's output_dir when an earlier attempt left
    one. Raises Cancelled if the job was asked to stop. Logs when early stopping ended training."""
    from services.trainer.training.context import Cancelled, checkpoint_step, latest_full_state

    resume_from = latest_full_state(Path(trainer.args.output_dir))
    ctx.report_resume(checkpoint_step(resume_from) if resume_from else 0)
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    if ctx.should_stop():
        raise Cancelled()
    step = trainer.state.global_step
    if 0 < step < trainer.state.max_steps:
        ctx.log(f"early stopping after step {step}: {ctx.spec.eval.metric_for_best} did not improve for "
                f"{ctx.spec.eval.early_stopping_patience} evaluations", step=step)
    evaluated_now = any(entry.get("step") == step and "eval_loss" in entry for entry in trainer.state.log_history)
    if evaluate and not evaluated_now:  # the periodic evaluation may have just run at this very step
        trainer.evaluate()
    final = checkpointer.save(trainer.model, step, is_final=True)
    best = next((c for c in trainer.callback_handler.callbacks if isinstance(c, BestCheckpointCallback)), None)
    if best is not None and best.best_value is not None:
        best_id = best.best_id or (final.id if best.best_step == step else "")
        if best_id:
            ctx.store.mark_best(best_id, best.metric, best.best_value)
            ctx.log(f"best checkpoint: {best_id} ({best.metric} {best.best_value:.4g} at step {best.best_step})",
                    step=step)
    return final.id
