"""A run whose loss turns NaN or infinite fails at once with FAILED_PRECONDITION naming the learning rate:
it is the configuration's fault, so the job manager does not retry it (USER_ERROR_CODES)."""

from __future__ import annotations

import math

import pytest
from transformers import TrainerControl, TrainerState, TrainingArguments

from services.common.errors import FailedPrecondition
from services.trainer.jobs import USER_ERROR_CODES
from services.trainer.spec import TrainingSpec
from services.trainer.training.callbacks import MetricsCallback
from services.trainer.training.context import RecipeContext


def metrics_callback(tmp_path):
    events = []
    ctx = RecipeContext(spec=TrainingSpec.__new__(TrainingSpec), store=None,
                        emit=lambda kind, data, step: events.append((kind, data, step)),
                        should_stop=lambda: False, work_dir=tmp_path, device="cpu")
    callback = MetricsCallback(ctx)
    args = TrainingArguments(output_dir=str(tmp_path), learning_rate=0.5, report_to=[])
    state = TrainerState(global_step=0, max_steps=10)
    callback.on_train_begin(args, state, TrainerControl())
    return callback, args, state, events


@pytest.mark.parametrize("loss", [math.nan, math.inf])
def test_a_non_finite_loss_fails_the_job_as_the_users_error(tmp_path, loss):
    callback, args, state, events = metrics_callback(tmp_path)
    state.global_step = 1
    callback.on_log(args, state, TrainerControl(), logs={"loss": 2.5, "learning_rate": 0.5})
    assert events[-1][0] == "metrics" and events[-1][1]["values"]["loss"] == 2.5
    state.global_step = 2
    with pytest.raises(FailedPrecondition) as info:
        callback.on_log(args, state, TrainerControl(), logs={"loss": loss, "learning_rate": 0.5})
    error = info.value
    assert error.code in USER_ERROR_CODES
    assert f"the loss is {loss} at step 2" in error.message and "hyperparameters.learning_rate (now 0.5)" in error.message
    assert [v.field for v in error.violations] == ["hyperparameters.learning_rate"]
