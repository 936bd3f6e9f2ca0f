"""The models of actor-critic PPO (actor_critic.py): the actor, the reference and the critic, their forward
passes over a rollout batch, and what each holds in memory. The fourth model, the reward model, is loaded
and run by the reward runtime (services/trainer/rewards/).

Batches are laid out as TRL's PPO laid them out: prompts left-padded to one length P, completions
right-padded to R after them, position ids counted over the attention mask; so every model's output for
completion token j sits at position P - 1 + j (it predicts token P + j), and the forward passes only
compute the last R + 1 positions' logits.
"""

from __future__ import annotations

import copy
from pathlib import Path

from services.common.errors import FailedPrecondition
from services.trainer.spec import TrainingSpec
from services.trainer.training.adapters import Precision, load_base_for_training, lora_config
from services.trainer.training.common import load_tokenizer


def positions(attention_mask):
    """Position ids for left-padded rows: 0 at each row's first real token."""
    return (attention_mask.cumsum(1) - 1).clamp(min=0)


def response_logits(model, input_ids, attention_mask, response_length: int):
    """[B, R, V]: the logits that predict each completion token (positions P - 1 .. P + R - 2). Only those
    positions go through the LM head where the model takes `logits_to_keep`."""
    import inspect

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    keep = {"logits_to_keep": response_length + 1} \
        if "logits_to_keep" in inspect.signature(inner.forward).parameters else {}
    output = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions(attention_mask),
                   use_cache=False, **keep)
    return output.logits[:, -response_length - 1:-1].float()


def _value_head(model):
    head = getattr(model, "score", None)
    if head is None:
        raise FailedPrecondition(f"ppo: the critic's architecture ({type(model).__name__}) has no `score` head; "
                                 "actor-critic PPO supports the decoder models the reward method trains")
    return head


def response_values(critic, input_ids, attention_mask, response_length: int):
    """[B, R]: the critic's V(s_j) for each completion token j: its scalar head applied at every position
    (not only the last, as a reward model's score is)."""
    inner = critic.get_base_model() if hasattr(critic, "get_base_model") else critic
    backbone = getattr(inner, inner.base_model_prefix)
    hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions(attention_mask),
                      use_cache=False).last_hidden_state
    return _value_head(inner)(hidden[:, -response_length - 1:-1]).squeeze(-1).float()


def _prepare(model, spec: TrainingSpec, peft: bool):
    from trl.trainer.utils import disable_dropout_in_model

    if spec.hyperparameters.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if peft:
            model.enable_input_require_grads()
    # PPO's ratio must be exactly 1 on the first pass over fresh rollouts: no dropout anywhere.
    disable_dropout_in_model(model)
    return model


def load_actor(base_dir: Path, spec: TrainingSpec, precision: Precision, device: str):
    """The policy being trained: full, LoRA or QLoRA (training/adapters.py), on `device`."""
    from peft import get_peft_model, prepare_model_for_kbit_training

    model, peft_config = load_base_for_training(base_dir, spec.adapter, precision, device)
    quantized = bool(getattr(model, "is_quantized", False))
    if peft_config is not None:
        if quantized:
            model = prepare_model_for_kbit_training(
                model, use_gradient_checkpointing=spec.hyperparameters.gradient_checkpointing)
        model = get_peft_model(model, peft_config)
    if device == "cuda" and not quantized:
        model.to("cuda")
    return _prepare(model, spec, peft_config is not None)


class Reference:
    """log π_ref: under LoRA/QLoRA the actor's own base with its adapter disabled (no second copy); under
    full training a frozen copy of the actor as it starts."""

    def __init__(self, actor, peft: bool):
        self.actor = actor
        self.copy = None if peft else copy.deepcopy(actor).eval().requires_grad_(False)

    def logits(self, input_ids, attention_mask, response_length: int):
        if self.copy is not None:
            return response_logits(self.copy, input_ids, attention_mask, response_length)
        with self.actor.disable_adapter():
            return response_logits(self.actor, input_ids, attention_mask, response_length)


def load_critic(ctx, tokenizer, base_dir: Path, device: str):
    """The value model: a sequence-classification model with one output, from the reward model (InstructGPT)
    or from the base with a zero-initialised head (every value starts at 0); trained in full or with LoRA
    (the job's adapter settings, the head fully trained). Raises FailedPrecondition when the reward model
    does not read the base's tokens (another tokenizer) or has more than one output."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForSequenceClassification

    spec = ctx.spec
    method = spec.method_spec
    if method.critic_init == "reward_model":
        path = ctx.store.path_of(method.reward_model_id, "ppo.reward_model_id")
        if load_tokenizer(path).get_vocab() != tokenizer.get_vocab():
            raise FailedPrecondition(
                f"ppo.critic_init: reward model {method.reward_model_id!r} has another tokenizer than "
                f"{spec.base_model_id!r}, so it cannot value the policy's tokens; use PPO_CRITIC_INIT_POLICY")
        critic = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32)
        if critic.config.num_labels != 1:
            raise FailedPrecondition(f"ppo.critic_init: reward model {method.reward_model_id!r} has "
                                     f"{critic.config.num_labels} outputs; a critic needs one")
    else:
        critic = AutoModelForSequenceClassification.from_pretrained(base_dir, num_labels=1, dtype=torch.float32)
        torch.nn.init.zeros_(_value_head(critic).weight)
    critic.config.pad_token_id = tokenizer.pad_token_id
    peft = critic_adapter(spec) == "lora"
    if peft:
        critic = get_peft_model(critic, lora_config(spec.adapter, task_type="SEQ_CLS"))
    if device == "cuda":
        critic.to("cuda")
    return _prepare(critic, spec, peft)


def critic_adapter(spec: TrainingSpec) -> str:
    """"lora" or "full": ppo.critic_adapter, by default as the actor (LoRA/QLoRA -> LoRA)."""
    return spec.method_spec.critic_adapter or ("lora" if spec.adapter.is_peft else "full")


def footprint(model) -> dict[str, float]:
    """Parameters, trainable parameters and MiB of weights and buffers (0s for None)."""
    if model is None:
        return {"parameters": 0, "trainable": 0, "mib": 0.0}
    parameters = list(model.parameters())
    size = sum(p.numel() * p.element_size() for p in parameters) + sum(
        b.numel() * b.element_size() for b in model.buffers())
    return {"parameters": sum(p.numel() for p in parameters),
            "trainable": sum(p.numel() for p in parameters if p.requires_grad), "mib": size / 2**20}


def optimizer_mib(*optimizers) -> float:
    """MiB of the optimizers' state tensors (AdamW: two per trained parameter, after the first step)."""
    import torch

    return sum(t.numel() * t.element_size() for optimizer in optimizers for state in optimizer.state.values()
               for t in state.values() if isinstance(t, torch.Tensor)) / 2**20


def memory_report(actor, reference: Reference | None, reward_model, critic) -> dict[str, dict[str, float]]:
    """What each of the four models holds. Under LoRA the reference is the actor's base (`shared` 1: no
    memory of its own); without a KL term there is none."""
    shared = reference is not None and reference.copy is None
    return {"actor": footprint(actor),
            "reference": {**footprint(reference.copy if reference else None), "shared": float(shared)},
            "reward_model": {**footprint(reward_model), "trainable": 0},  # frozen: scored under no_grad
            "critic": footprint(critic)}


def describe_memory(report: dict[str, dict[str, float]]) -> str:
    def one(name: str) -> str:
        item = report[name]
        if item.get("shared"):
            return "reference: the actor's base, adapter disabled (no extra memory)"
        if not item["parameters"]:
            return f"{name.replace('_', ' ')}: none"
        trained = f", {item['trainable'] / 1e6:.2f}M trained" if item["trainable"] else ""
        return f"{name.replace('_', ' ')}: {item['parameters'] / 1e6:.1f}M parameters{trained}, {item['mib']:.1f} MiB"

    return "models: " + "; ".join(one(name) for name in report)
