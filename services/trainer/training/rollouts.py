"""Rollout samples in the event stream: what the policy generated and how each reward scored it.

The reward functions of an RL job (`services.trainer.rewards.runtime.build_reward_functions(..., recorder=...)`)
record every scored batch in a `RolloutRecorder`; `RolloutSamplesCallback` turns the latest batch into a
`rollouts` event at the end of a sampled optimizer step and discards it otherwise, so memory holds one
batch at most. Shared by the GRPO, RLOO (ppo) and RFT recipes.

Which steps are sampled is deterministic: with `fraction_of_steps` f > 0, step 1 and then every
`round(1 / f)` steps (f = 1: every step; f = 0.1: steps 1, 10, 20, ...); none when f is 0. The event is

    ctx.emit("rollouts", {"round": 0, "samples": [{"prompt": str,
        "completions": [{"text": str, "reward": float, "rewards": {fn: float}}]}]}, step)

with up to `max_prompts` prompts, each with every completion of its group (`reward` is the weighted sum,
`rewards` each function's unweighted score).
"""

from __future__ import annotations

from transformers import TrainerCallback

from services.trainer.training.context import RecipeContext
from services.trainer.methods.rl import RolloutSampling


def sampling_interval(fraction_of_steps: float) -> int:
    """Every how many steps samples are emitted (0: never)."""
    if fraction_of_steps <= 0:
        return 0
    return max(1, round(1.0 / fraction_of_steps))


def is_sampled_step(step: int, fraction_of_steps: float) -> bool:
    """True for the steps whose rollouts are streamed: step 1, then every `sampling_interval` steps."""
    interval = sampling_interval(fraction_of_steps)
    return interval > 0 and step >= 1 and (step == 1 or step % interval == 0)


class RolloutSamplesCallback(TrainerCallback):
    """Emits the recorder's latest batch as a `rollouts` event on sampled steps; drains it on the others."""

    def __init__(self, ctx: RecipeContext, recorder, sampling: RolloutSampling, *, round_index: int = 0):
        self.ctx = ctx
        self.recorder = recorder
        self.sampling = sampling
        self.round_index = round_index
        self.emitted = 0

    def on_step_end(self, args, state, control, **kwargs):
        self.flush(state.global_step)

    def flush(self, step: int) -> None:
        """Emit (sampled step) or discard (any other step) what the recorder holds."""
        if not is_sampled_step(step, self.sampling.fraction_of_steps):
            self.recorder.drain(0)
            return
        samples = self.recorder.drain(self.sampling.max_prompts)
        if samples:  # nothing scored since the last step (e.g. TRL reusing a generation batch)
            self.ctx.emit("rollouts", {"round": self.round_index, "samples": samples}, step)
            self.emitted += 1
