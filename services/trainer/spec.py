"""Typed training specs: the schema of a job (DESIGN.md §5.3).

`services.trainer.convert` builds these from the proto request, filling defaults and checking every
field (all violations reported at once). The worker receives the same dataclasses as JSON, so recipes
never see protobuf. Method-specific settings live in one dataclass per method (`SftConfig`, ...);
the adapter choice (`AdapterConfig`) is orthogonal to the method.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

# Every training method of the mission, in the order of the proto's `oneof method`.
ALL_METHODS = ("pretrain", "continued_pretrain", "sft", "reward", "dpo", "rft", "grpo", "ppo", "distill")


@dataclass
class AdapterConfig:
    """full / lora / qlora, resolved into peft + bitsandbytes objects in recipes/adapters.py only."""

    type: str = "lora"  # "full" | "lora" | "qlora"
    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=list)  # empty: every linear layer
    quant_type: str = "nf4"  # qlora: "nf4" | "fp4"
    double_quant: bool = True
    compute_dtype: str = ""  # "" = bfloat16 on GPUs with bf16, else float32

    @property
    def is_peft(self) -> bool:
        return self.type in ("lora", "qlora")


@dataclass
class Hyperparameters:
    num_epochs: float = 1.0
    max_steps: int = 0  # 0: derived from num_epochs
    learning_rate: float = 2e-4
    lr_scheduler: str = "linear"
    warmup_ratio: float = 0.0
    warmup_steps: int = 0
    batch_size: int = 4
    gradient_accumulation_steps: int = 1
    max_seq_length: int = 1024
    packing: bool = False
    seed: int = 42
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    logging_steps: int = 1
    gradient_checkpointing: bool = False


@dataclass
class EvalConfig:
    split_ratio: float = 0.0
    eval_dataset_id: str = ""
    every_steps: int = 0
    metric_for_best: str = "eval_loss"
    greater_is_better: bool = False
    early_stopping_patience: int = 0  # 0: never stop early
    early_stopping_threshold: float = 0.0


@dataclass
class SftConfig:
    format: str = "auto"
    train_on_prompt: bool = False
    default_system_prompt: str = ""
    new_tokens: list[str] = field(default_factory=list)  # vocabulary expansion


@dataclass
class PretrainConfig:
    """A new model from a config (recipes/pretrain.py)."""

    architecture: str = "llama"  # llama | qwen2
    hidden_size: int = 256
    num_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 4
    context_length: int = 512
    intermediate_size: int = 688
    tokenizer_from: str = ""  # store id; "" = train a byte-level BPE on the corpus
    vocab_size: int = 8000
    format: str = "text"


@dataclass
class ContinuedPretrainConfig:
    new_tokens: list[str] = field(default_factory=list)  # vocabulary expansion
    format: str = "text"


@dataclass
class RewardConfig:
    center_rewards_coefficient: float | None = None
    format: str = "preference"


# PreferenceLoss names; "orpo" and "simpo" need no reference model, "kto" trains on unpaired rows.
PREFERENCE_LOSSES = ("sigmoid", "ipo", "hinge", "orpo", "simpo", "kto")


@dataclass
class DpoConfig:
    beta: float = 0.1
    loss: str = "sigmoid"
    simpo_gamma: float = 0.5
    format: str = "auto"

    @property
    def uses_reference(self) -> bool:
        return self.loss not in ("orpo", "simpo")


@dataclass
class RewardFunctionConfig:
    """One reward of the server-side registry (services/trainer/rewards.py), by name, with its weight."""

    name: str
    weight: float = 1.0
    params: dict[str, str] = field(default_factory=dict)
    reward_model_id: str = ""  # for name "reward_model"


@dataclass
class RolloutSamplingConfig:
    fraction_of_steps: float = 0.1
    max_prompts: int = 2


@dataclass
class GrpoConfig:
    rewards: list[RewardFunctionConfig] = field(default_factory=list)
    num_generations: int = 4
    beta: float = 0.04
    epsilon: float = 0.2
    loss: str = "dapo"  # grpo | dr_grpo | dapo (TRL's names)
    max_completion_length: int = 64
    temperature: float = 1.0
    samples: RolloutSamplingConfig = field(default_factory=RolloutSamplingConfig)
    use_vllm: bool = False
    format: str = "prompt_only"


@dataclass
class RftConfig:
    rewards: list[RewardFunctionConfig] = field(default_factory=list)
    num_candidates: int = 4
    rounds: int = 2
    threshold: float | None = None  # None: keep each prompt's best candidate (when its reward > 0)
    max_completion_length: int = 64
    temperature: float = 1.0
    samples: RolloutSamplingConfig = field(default_factory=RolloutSamplingConfig)
    format: str = "prompt_only"


@dataclass
class PpoConfig:
    algorithm: str = "rloo"  # rloo | ppo (refused: TRL 1.16 has no PPOTrainer)
    reward_model_id: str = ""
    rewards: list[RewardFunctionConfig] = field(default_factory=list)  # the reward model comes first
    num_generations: int = 4
    beta: float = 0.05
    max_completion_length: int = 64
    temperature: float = 1.0
    samples: RolloutSamplingConfig = field(default_factory=RolloutSamplingConfig)
    format: str = "prompt_only"


@dataclass
class DistillConfig:
    teacher_model_id: str = ""
    mode: str = "offline"  # offline | on_policy
    max_new_tokens: int = 128
    temperature: float = 0.0
    lmbda: float = 0.5
    beta: float = 0.5
    format: str = "prompt_only"


EVALUATE_METRICS = ("perplexity", "exact_match", "accuracy", "f1", "macro_f1", "bleu", "rouge")


@dataclass
class EvaluateConfig:
    """An Evaluate job (recipes/evaluate.py): scores `TrainingSpec.base_model_id` (+ adapter) on the dataset."""

    adapter_id: str = ""
    metrics: list[str] = field(default_factory=list)  # empty: by format (see EvaluateRequest.metrics)
    max_new_tokens: int = 128
    max_samples: int = 0
    batch_size: int = 8
    format: str = "auto"


MethodConfig = (SftConfig | PretrainConfig | ContinuedPretrainConfig | RewardConfig | DpoConfig | GrpoConfig
                | RftConfig | PpoConfig | DistillConfig | EvaluateConfig)
METHOD_CONFIGS: dict[str, type] = {
    "grpo": GrpoConfig,
    "rft": RftConfig,
    "ppo": PpoConfig,
    "distill": DistillConfig,
    "sft": SftConfig,
    "pretrain": PretrainConfig,
    "continued_pretrain": ContinuedPretrainConfig,
    "reward": RewardConfig,
    "dpo": DpoConfig,
    "evaluate": EvaluateConfig,
}


@dataclass
class DatasetFile:
    """A stored dataset as the worker reads it (paths are resolved on the server, never sent by clients)."""

    dataset_id: str
    path: str
    file_format: str  # jsonl | parquet | csv
    format: str  # detected row format, e.g. "messages"


@dataclass
class TrainingSpec:
    """Everything a worker needs to run one job."""

    job_id: str
    method: str
    base_model_id: str
    dataset: DatasetFile
    method_config: MethodConfig
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    hyperparameters: Hyperparameters = field(default_factory=Hyperparameters)
    eval: EvalConfig = field(default_factory=EvalConfig)
    eval_dataset: DatasetFile | None = None
    save_every_steps: int = 0
    store_root: str = ""

    @property
    def dataset_rules(self) -> str:
        """Key of `data.METHOD_FORMATS` whose formats the dataset must be in ("kto" for DPO with KTO loss)."""
        if self.method == "dpo" and self.method_config.loss == "kto":
            return "kto"
        return self.method

    @property
    def dataset_format(self) -> str:
        """The row format the request asked for ("auto" = detect from the rows)."""
        return getattr(self.method_config, "format", "auto")

    def required_columns(self) -> dict[str, str]:
        """Extra dataset columns every row must have -> who reads them (the RL methods' rewards)."""
        rewards = getattr(self.method_config, "rewards", None)
        if not rewards:
            return {}
        from services.trainer.rewards import required_columns

        return {column: f"a reward function of this {self.method} job" for column in required_columns(rewards)}

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, indent=2)

    @classmethod
    def from_json(cls, text: str) -> TrainingSpec:
        data = json.loads(text)
        eval_dataset = data.pop("eval_dataset")
        return cls(
            **{k: v for k, v in data.items()
               if k not in ("dataset", "method_config", "adapter", "hyperparameters", "eval")},
            dataset=DatasetFile(**data["dataset"]),
            method_config=_method_config_from_dict(data["method"], data["method_config"]),
            adapter=AdapterConfig(**data["adapter"]),
            hyperparameters=Hyperparameters(**data["hyperparameters"]),
            eval=EvalConfig(**data["eval"]),
            eval_dataset=DatasetFile(**eval_dataset) if eval_dataset else None,
        )

    def write(self, path: Path) -> None:
        path.write_text(self.to_json(), encoding="utf-8")


def check_group_batch(hyper: Hyperparameters, num_generations: int, method: str, has_eval: bool) -> None:
    """GRPO / RLOO: the generation batch (batch_size x gradient_accumulation_steps completions) must hold whole
    groups of num_generations. Raises InvalidArgument naming hyperparameters.batch_size and a size that fits."""
    from services.common.errors import invalid_field

    completions = hyper.batch_size * hyper.gradient_accumulation_steps
    if completions % num_generations:
        accumulation = hyper.gradient_accumulation_steps
        fits = next(b for b in range(hyper.batch_size + 1, hyper.batch_size + num_generations + 1)
                    if b * accumulation % num_generations == 0)
        raise invalid_field(
            "hyperparameters.batch_size",
            f"{method} trains on groups of {method}.num_generations = {num_generations} completions per prompt, but "
            f"batch_size x gradient_accumulation_steps = {hyper.batch_size} x {accumulation} "
            f"= {completions} completions per step is not a multiple of {num_generations}",
            f"batch_size counts completions: e.g. batch_size {fits} ({fits * accumulation // num_generations} "
            f"prompt(s) per step), or change num_generations")
    if has_eval and hyper.batch_size % num_generations:
        raise invalid_field(
            "hyperparameters.batch_size",
            f"evaluation generates {num_generations} completions per prompt in batches of batch_size = "
            f"{hyper.batch_size}, which is not a multiple of {num_generations}",
            f"use a batch_size that is a multiple of {num_generations}, or evaluate without a held-out set")


def _method_config_from_dict(method: str, data: dict):
    """A method config from its JSON dict, rebuilding the nested reward and sampling dataclasses."""
    data = dict(data)
    if "rewards" in data:
        data["rewards"] = [RewardFunctionConfig(**r) for r in data["rewards"]]
    if "samples" in data:
        data["samples"] = RolloutSamplingConfig(**data["samples"])
    return METHOD_CONFIGS[method](**data)
