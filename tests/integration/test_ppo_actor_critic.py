"""Actor-critic PPO (`ppo` with PPO_ALGORITHM_ACTOR_CRITIC) through the real trainer service, on the tiny
model; its equations and its state's save/load, bare.

The toy task: `length_penalty` (1.0 up to 4 characters, 0 from 30), full-weights training at a high
learning rate. The random tiny model writes 8 tokens of noise (mean score ~0.67); the policy learns to end
early. Checked bare (services/trainer/methods/ppo/actor_critic.run) over seeds 0, 1, 2, 4, 5, 6 and 42 with
the request below: the mean score of the last 6 of 24 steps was 0.83-1.00 against 0.64-0.70 over the
first 6, the mean value loss fell 1.9-12x, and policy/approxkl_avg never exceeded 0.82. With a reward model
trained by the `reward` method (the critic starts from it) plus the length rule at weight 2, seeds 0-3 and
42 rose by +0.11 to +0.23 at learning rate 7e-3 (max approxkl 0.36).
"""

from __future__ import annotations

import statistics
from types import SimpleNamespace

import pytest

from lmforge.client import InferenceClient
from lmforge.v1 import common_pb2, trainer_pb2
from tests.conftest import EXAMPLES
from tests.helpers import all_events

LENGTH = {"name": "length_penalty", "params": {"target_chars": "4", "max_chars": "30"}}
TRL_NAMES = ("objective/kl", "objective/entropy", "objective/non_score_reward", "objective/rlhf_reward",
             "objective/scores", "objective/kl_coef", "policy/approxkl_avg", "policy/clipfrac_avg",
             "policy/entropy_avg", "loss/policy_avg", "loss/value_avg", "val/clipfrac_avg", "val/ratio",
             "val/ratio_var", "val/mean", "reward", "reward_std", "loss", "grad_norm", "learning_rate",
             "completions/mean_length", "step_time", "num_tokens")


def ppo_request(base_model_id: str, dataset_id: str, ppo: dict, *, max_steps: int, learning_rate: float,
                batch_size: int = 8, adapter: str = "ADAPTER_FULL", every_steps: int = 0) -> dict:
    return {
        "base_model_id": base_model_id, "dataset_id": dataset_id,
        "ppo": {"algorithm": "PPO_ALGORITHM_ACTOR_CRITIC", "max_completion_length": 8, **ppo},
        "adapter": {"type": adapter, "rank": 8},
        "hyperparameters": {"max_steps": max_steps, "batch_size": batch_size, "learning_rate": learning_rate,
                            "lr_scheduler": "constant"},
        "checkpoints": {"every_steps": every_steps},
    }


@pytest.fixture(scope="module")
def prompts_dataset_id(trainer_client) -> str:
    return trainer_client.upload_dataset(EXAMPLES / "rl_prompts.jsonl").id


@pytest.fixture(scope="module")
def inference(store_root):
    from services.inference.server import InferenceServer

    server = InferenceServer(store_root, port=0)
    server.serve()
    with InferenceClient(server.address, timeout=120) as client:
        yield client
    server.stop(grace_seconds=1)


def run_ppo(trainer_client, request: dict) -> tuple[trainer_pb2.Job, list]:
    job = trainer_client.wait(trainer_client.start_training(request).id)
    assert job.state == trainer_pb2.JOB_STATE_SUCCEEDED, f"{trainer_pb2.JobState.Name(job.state)}: {job.error}"
    return job, all_events(trainer_client, job.id)


def step_metrics(events) -> list[dict[str, float]]:
    return [dict(e.metrics.values) for e in events if e.WhichOneof("payload") == "metrics"
            and e.metrics.phase == "train" and "objective/scores" in e.metrics.values]


def mean(steps, key: str) -> float:
    return statistics.fmean(m[key] for m in steps)


def logs(events) -> list[str]:
    return [e.log.message for e in events if e.WhichOneof("payload") == "log"]


def test_actor_critic_ppo_learns_a_rule_reward_and_its_policy_serves(trainer_client, tiny_model_id,
                                                                      prompts_dataset_id, inference):
    request = ppo_request(tiny_model_id, prompts_dataset_id, {"rewards": [LENGTH], "beta": 0.05,
                                                              "samples": {"fraction_of_steps": 0.25}},
                          max_steps=24, learning_rate=1e-2, batch_size=16, every_steps=12)
    job, events = run_ppo(trainer_client, request)
    steps = step_metrics(events)
    assert [e.step for e in events if e.WhichOneof("payload") == "metrics"] == list(range(1, 25))
    for key in TRL_NAMES:
        assert key in steps[-1], key
    first, last = steps[:6], steps[-6:]
    assert mean(last, "objective/scores") > mean(first, "objective/scores") + 0.1, \
        [round(m["objective/scores"], 3) for m in steps]
    assert mean(last, "loss/value_avg") < 0.75 * mean(first, "loss/value_avg"), \
        [round(m["loss/value_avg"], 4) for m in steps]
    assert max(m["policy/approxkl_avg"] for m in steps) < 1.5, [round(m["policy/approxkl_avg"], 3) for m in steps]
    assert all(0 <= m["policy/clipfrac_avg"] <= 1 and 0 <= m["val/clipfrac_avg"] <= 1 for m in steps)
    assert {"memory/actor_mib", "memory/critic_mib", "memory/reference_mib", "memory/optimizers_mib"} <= \
        steps[0].keys() and steps[0]["memory/reference_mib"] > 0, "full training: a frozen reference copy"
    assert steps[0]["objective/kl_coef"] == pytest.approx(0.05)
    assert any("critic: full, from the policy" in m for m in logs(events))

    samples = [e for e in events if e.WhichOneof("payload") == "rollouts"]
    assert [e.step for e in samples] == [1, 4, 8, 12, 16, 20, 24]
    completion = samples[-1].rollouts.samples[0].completions[0]
    assert set(completion.rewards) == {"length_penalty"} and 0 <= completion.reward <= 1

    checkpoints = trainer_client.list_checkpoints(job_id=job.id)
    assert sorted(c.step for c in checkpoints) == [12, 24]
    assert all(c.kind == common_pb2.FULL_CHECKPOINT and c.method == "ppo" for c in checkpoints)
    text, finished = inference.chat(job.result_checkpoint_id, [{"role": "user", "content": "6+2="}],
                                    temperature=0.0, max_new_tokens=8)
    assert finished.finish_reason and len(text) <= 30, "the trained policy answers briefly"
    inference.unload_model(job.result_checkpoint_id)


def test_actor_critic_ppo_with_a_trained_reward_model_as_reward_and_critic(trainer_client, tiny_model_id,
                                                                          prompts_dataset_id, inference):
    preference = trainer_client.upload_dataset(EXAMPLES / "preference_demo.jsonl").id
    reward_job, _ = run_ppo(trainer_client, {
        "base_model_id": tiny_model_id, "dataset_id": preference, "reward": {}, "adapter": {"type": "ADAPTER_FULL"},
        "hyperparameters": {"max_steps": 6, "batch_size": 8, "max_seq_length": 128, "learning_rate": 1e-3}})
    request = ppo_request(tiny_model_id, prompts_dataset_id,
                          {"reward_model_id": reward_job.result_checkpoint_id, "beta": 0.05,
                           "rewards": [{**LENGTH, "weight": 2.0}], "samples": {"fraction_of_steps": 0.0}},
                          max_steps=24, learning_rate=7e-3)
    job, events = run_ppo(trainer_client, request)
    steps = step_metrics(events)
    assert len(steps) == 24
    assert any("critic: full, from the reward model" in m for m in logs(events)), logs(events)
    assert len({round(m["rewards/reward_model/mean"], 6) for m in steps}) > 1, "the reward model scores rollouts"
    assert steps[0]["memory/reward_model_mib"] > 0
    assert mean(steps[-6:], "objective/scores") > mean(steps[:6], "objective/scores") + 0.05, \
        [round(m["objective/scores"], 3) for m in steps]
    assert mean(steps[-6:], "loss/value_avg") < mean(steps[:6], "loss/value_avg")
    assert max(m["policy/approxkl_avg"] for m in steps) < 1.5
    assert not [e for e in events if e.WhichOneof("payload") == "rollouts"], "fraction_of_steps 0: no samples"
    text, finished = inference.chat(job.result_checkpoint_id, [{"role": "user", "content": "1+5="}],
                                    temperature=0.0, max_new_tokens=4)
    assert finished.finish_reason
    inference.unload_model(job.result_checkpoint_id)


def test_cancelling_actor_critic_ppo_stops_it(trainer_client, tiny_model_id, prompts_dataset_id):
    request = ppo_request(tiny_model_id, prompts_dataset_id, {"rewards": [LENGTH]}, max_steps=10_000,
                         learning_rate=1e-3, adapter="ADAPTER_LORA")
    job = trainer_client.start_training(request)
    for event in trainer_client.stream_metrics(job.id, follow=True):
        if event.WhichOneof("payload") == "metrics":
            break
    trainer_client.cancel_job(job.id)
    final = trainer_client.wait(job.id)
    assert final.state == trainer_pb2.JOB_STATE_CANCELLED and final.current_step < 10_000


# ----------------------------------------------------------------------------------------- bare (no server)


def test_gae_whitening_and_clipped_losses_follow_the_equations():
    import torch

    from services.trainer.methods.ppo.actor_critic import (
        advantages_and_returns, next_kl_coef, policy_loss, token_rewards, value_loss)

    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    logprobs = torch.tensor([[-1.0, -2.0, -1.0], [-1.0, 0.0, 0.0]])
    ref = torch.tensor([[-1.5, -2.0, -0.5], [-2.0, 0.0, 0.0]])
    rewards, kl = token_rewards(torch.tensor([1.0, 2.0]), logprobs, ref, mask, beta=0.1)
    assert kl.tolist() == [[0.5, 0.0, -0.5], [1.0, 0.0, 0.0]]
    assert torch.allclose(rewards, torch.tensor([[-0.05, 0.0, 1.05], [1.9, 0.0, 0.0]]))
    values = torch.tensor([[0.5, 0.25, 1.0], [1.0, 9.0, 9.0]])  # beyond a row's end values do not count
    advantages, returns = advantages_and_returns(rewards, values, mask, gamma=1.0, lam=1.0, whiten=False)
    # gamma = lam = 1: A_t = (sum of rewards from t) - V(s_t); returns = rewards-to-go
    assert torch.allclose(returns, torch.tensor([[1.0, 1.05, 1.05], [1.9, 0.0, 0.0]]))
    assert torch.allclose(advantages, returns - values * mask)
    discounted, _ = advantages_and_returns(rewards, values, mask, gamma=0.5, lam=0.0, whiten=False)
    assert torch.allclose(discounted[0], torch.tensor([-0.05 + 0.5 * 0.25 - 0.5, 0.0 + 0.5 * 1.0 - 0.25, 0.05]))
    whitened, _ = advantages_and_returns(rewards, values, mask, gamma=1.0, lam=0.95, whiten=True)
    assert abs(float((whitened * mask).sum())) < 1e-5 and float(whitened[1, 1:].abs().sum()) == 0.0

    advantage, old = torch.tensor([[1.0, -1.0]]), torch.zeros(1, 2)
    loss, stats = policy_loss(torch.log(torch.tensor([[1.5, 1.5]])), old, advantage, torch.ones(1, 2), 0.2)
    # token 1: ratio 1.5 clipped to 1.2 (loss -1.2); token 2: max(1.5, 1.2) = 1.5 (unclipped)
    assert loss.item() == pytest.approx((-1.2 + 1.5) / 2) and stats["policy/clipfrac_avg"].item() == 0.5
    vloss, clipfrac = value_loss(torch.tensor([[2.0]]), torch.tensor([[0.0]]), torch.tensor([[2.0]]),
                                 torch.ones(1, 1), 0.2)
    assert vloss.item() == pytest.approx(0.5 * 1.8 ** 2) and clipfrac.item() == 1.0

    adaptive = SimpleNamespace(kl_control="adaptive", kl_target=6.0, kl_horizon=100.0)
    assert next_kl_coef(0.2, 12.0, adaptive, 10) == pytest.approx(0.2 * (1 + 0.2 * 10 / 100))
    assert next_kl_coef(0.2, 3.0, adaptive, 10) == pytest.approx(0.2 * (1 - 0.2 * 10 / 100))
    assert next_kl_coef(0.2, 12.0, SimpleNamespace(kl_control="fixed"), 10) == 0.2


@pytest.mark.parametrize("adapter", ["ADAPTER_FULL", "ADAPTER_LORA"])
def test_state_save_and_load_restore_models_optimizers_and_counters(store_root, tiny_model_id, tmp_path, adapter):
    import torch

    from services.common.store import CheckpointStore
    from services.trainer.convert import spec_from_request
    from services.trainer.methods.ppo import models
    from services.trainer.methods.ppo.actor_critic import PpoState, _step
    from services.trainer.training.adapters import resolve_precision
    from services.trainer.training.common import load_tokenizer

    proto = trainer_pb2.StartTrainingRequest()
    from google.protobuf import json_format
    json_format.ParseDict(ppo_request(tiny_model_id, "ds", {"rewards": [LENGTH]}, max_steps=4, learning_rate=1e-3,
                                      adapter=adapter), proto)
    spec = spec_from_request(proto, gpu=False)
    store = CheckpointStore(store_root)
    base = store.path_of(tiny_model_id)
    tokenizer = load_tokenizer(base)
    ctx = SimpleNamespace(spec=spec, store=store)

    def build() -> PpoState:
        precision = resolve_precision(spec.hyperparameters, spec.adapter, "cpu")
        return PpoState.create(models.load_actor(base, spec, precision, "cpu"),
                               models.load_critic(ctx, tokenizer, base, "cpu"), spec, total_steps=4)

    state = build()
    ids = torch.tensor([[5, 6, 7, 8]])
    attention = torch.ones_like(ids)
    loss = models.response_logits(state.actor, ids, attention, 2).sum() + models.response_values(
        state.critic, ids, attention, 2).sum()
    loss.backward()
    _step(state, torch.amp.GradScaler("cpu", enabled=False), 1.0)
    state.actor_scheduler.step()
    state.step, state.kl_coef, state.num_tokens = 1, 0.123, 40
    torch.randperm(5, generator=state.generator)
    state.save(tmp_path / "state")

    restored = build()
    restored.load(tmp_path / "state")
    assert (restored.step, restored.kl_coef, restored.num_tokens) == (1, 0.123, 40)
    for before, after in ((state.actor, restored.actor), (state.critic, restored.critic)):
        for (name, p), (_, q) in zip(before.named_parameters(), after.named_parameters()):
            assert torch.equal(p, q), name
    moments = [s["exp_avg"] for s in state.actor_optimizer.state.values()]
    restored_moments = [s["exp_avg"] for s in restored.actor_optimizer.state.values()]
    assert moments and all(torch.equal(a, b) for a, b in zip(moments, restored_moments, strict=True))
    assert restored.actor_scheduler.state_dict() == state.actor_scheduler.state_dict()
    assert torch.equal(torch.randperm(5, generator=restored.generator), torch.randperm(5, generator=state.generator))
