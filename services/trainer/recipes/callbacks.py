"""transformers `TrainerCallback`s shared by every recipe: live metrics, store checkpoints, cancellation.

They work with any TRL trainer (all are transformers `Trainer`s), so a new recipe gets metrics, periodic
checkpoints into the store and prompt cancellation by passing `standard_callbacks(...)`.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict
from pathlib import Path

from transformers import TrainerCallback

from services.common.store import EntryKind, Manifest
from services.trainer.recipes.context import RecipeContext

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
    """Stops training at the next step boundary once the job was cancelled."""

    def __init__(self, ctx: RecipeContext):
        self.ctx = ctx

    def on_step_end(self, args, state, control, **kwargs):
        if self.ctx.should_stop():
            control.should_training_stop = True
            control.should_save = False
            control.should_evaluate = False

    on_substep_end = on_step_end


class StoreCheckpointer:
    """Writes the model (full weights + tokenizer) or adapter into the store and emits `checkpoint`."""

    def __init__(self, ctx: RecipeContext, tokenizer, metrics: MetricsCallback):
        self.ctx = ctx
        self.tokenizer = tokenizer
        self.metrics = metrics

    def entry_id(self, step: int, is_final: bool) -> str:
        return f"{self.ctx.spec.job_id}-final" if is_final else f"{self.ctx.spec.job_id}-step-{step}"

    def save(self, model, step: int, is_final: bool) -> Manifest:
        spec = self.ctx.spec
        peft = spec.adapter.is_peft
        dtype = next(p for p in model.parameters() if p.is_floating_point()).dtype
        manifest = Manifest(
            id=self.entry_id(step, is_final),
            kind=EntryKind.ADAPTER if peft else EntryKind.FULL_CHECKPOINT,
            base_model_id=spec.base_model_id, method=spec.method, job_id=spec.job_id, step=step,
            metrics={k: v for k, v in self.metrics.latest.items() if k not in ("progress", "eta_seconds")},
            dtype=str(dtype).removeprefix("torch."),
            architecture=(model.config.architectures or [type(model).__name__])[0],
            is_final=is_final,
            labels={"adapter_type": spec.adapter.type},
        )
        with self.ctx.store.write_entry(manifest) as out:
            model.save_pretrained(out, safe_serialization=True)
            if peft:
                _point_adapter_at_store_id(out, spec.base_model_id)
            else:
                self.tokenizer.save_pretrained(out)
        saved = self.ctx.store.get(manifest.id)
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


def standard_callbacks(ctx: RecipeContext, tokenizer) -> tuple[list[TrainerCallback], StoreCheckpointer]:
    """Metrics + cancellation + periodic store checkpoints; returns the checkpointer for the final save."""
    metrics = MetricsCallback(ctx)
    checkpointer = StoreCheckpointer(ctx, tokenizer, metrics)
    callbacks = [metrics, StopCallback(ctx), PeriodicCheckpointCallback(checkpointer, ctx.spec.save_every_steps)]
    return callbacks, checkpointer
