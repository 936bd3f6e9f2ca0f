import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from lmforge.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    JOB_STATE_VALIDATING: _ClassVar[JobState]
    JOB_STATE_QUEUED: _ClassVar[JobState]
    JOB_STATE_RUNNING: _ClassVar[JobState]
    JOB_STATE_SUCCEEDED: _ClassVar[JobState]
    JOB_STATE_FAILED: _ClassVar[JobState]
    JOB_STATE_CANCELLED: _ClassVar[JobState]
    JOB_STATE_PAUSED: _ClassVar[JobState]

class DatasetFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DATASET_FORMAT_AUTO: _ClassVar[DatasetFormat]
    DATASET_FORMAT_MESSAGES: _ClassVar[DatasetFormat]
    DATASET_FORMAT_ALPACA: _ClassVar[DatasetFormat]
    DATASET_FORMAT_SHAREGPT: _ClassVar[DatasetFormat]
    DATASET_FORMAT_PROMPT_COMPLETION: _ClassVar[DatasetFormat]
    DATASET_FORMAT_TEXT: _ClassVar[DatasetFormat]
    DATASET_FORMAT_PREFERENCE: _ClassVar[DatasetFormat]
    DATASET_FORMAT_UNPAIRED_PREFERENCE: _ClassVar[DatasetFormat]
    DATASET_FORMAT_PROMPT_ONLY: _ClassVar[DatasetFormat]

class FileFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FILE_FORMAT_UNSPECIFIED: _ClassVar[FileFormat]
    FILE_FORMAT_JSONL: _ClassVar[FileFormat]
    FILE_FORMAT_PARQUET: _ClassVar[FileFormat]
    FILE_FORMAT_CSV: _ClassVar[FileFormat]

class PreferenceLoss(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PREFERENCE_LOSS_UNSPECIFIED: _ClassVar[PreferenceLoss]
    PREFERENCE_LOSS_SIGMOID: _ClassVar[PreferenceLoss]
    PREFERENCE_LOSS_IPO: _ClassVar[PreferenceLoss]
    PREFERENCE_LOSS_HINGE: _ClassVar[PreferenceLoss]
    PREFERENCE_LOSS_ORPO: _ClassVar[PreferenceLoss]
    PREFERENCE_LOSS_SIMPO: _ClassVar[PreferenceLoss]
    PREFERENCE_LOSS_KTO: _ClassVar[PreferenceLoss]

class GrpoLoss(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GRPO_LOSS_UNSPECIFIED: _ClassVar[GrpoLoss]
    GRPO_LOSS_GRPO: _ClassVar[GrpoLoss]
    GRPO_LOSS_DR_GRPO: _ClassVar[GrpoLoss]
    GRPO_LOSS_DAPO: _ClassVar[GrpoLoss]

class PpoAlgorithm(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PPO_ALGORITHM_UNSPECIFIED: _ClassVar[PpoAlgorithm]
    PPO_ALGORITHM_RLOO: _ClassVar[PpoAlgorithm]
    PPO_ALGORITHM_ACTOR_CRITIC: _ClassVar[PpoAlgorithm]

class PpoKlControl(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PPO_KL_CONTROL_UNSPECIFIED: _ClassVar[PpoKlControl]
    PPO_KL_CONTROL_ADAPTIVE: _ClassVar[PpoKlControl]
    PPO_KL_CONTROL_FIXED: _ClassVar[PpoKlControl]

class PpoCriticInit(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PPO_CRITIC_INIT_UNSPECIFIED: _ClassVar[PpoCriticInit]
    PPO_CRITIC_INIT_REWARD_MODEL: _ClassVar[PpoCriticInit]
    PPO_CRITIC_INIT_POLICY: _ClassVar[PpoCriticInit]

class PpoCriticAdapter(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PPO_CRITIC_ADAPTER_UNSPECIFIED: _ClassVar[PpoCriticAdapter]
    PPO_CRITIC_ADAPTER_FULL: _ClassVar[PpoCriticAdapter]
    PPO_CRITIC_ADAPTER_LORA: _ClassVar[PpoCriticAdapter]

class DistillMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DISTILL_MODE_UNSPECIFIED: _ClassVar[DistillMode]
    DISTILL_MODE_OFFLINE: _ClassVar[DistillMode]
    DISTILL_MODE_ON_POLICY: _ClassVar[DistillMode]
JOB_STATE_UNSPECIFIED: JobState
JOB_STATE_VALIDATING: JobState
JOB_STATE_QUEUED: JobState
JOB_STATE_RUNNING: JobState
JOB_STATE_SUCCEEDED: JobState
JOB_STATE_FAILED: JobState
JOB_STATE_CANCELLED: JobState
JOB_STATE_PAUSED: JobState
DATASET_FORMAT_AUTO: DatasetFormat
DATASET_FORMAT_MESSAGES: DatasetFormat
DATASET_FORMAT_ALPACA: DatasetFormat
DATASET_FORMAT_SHAREGPT: DatasetFormat
DATASET_FORMAT_PROMPT_COMPLETION: DatasetFormat
DATASET_FORMAT_TEXT: DatasetFormat
DATASET_FORMAT_PREFERENCE: DatasetFormat
DATASET_FORMAT_UNPAIRED_PREFERENCE: DatasetFormat
DATASET_FORMAT_PROMPT_ONLY: DatasetFormat
FILE_FORMAT_UNSPECIFIED: FileFormat
FILE_FORMAT_JSONL: FileFormat
FILE_FORMAT_PARQUET: FileFormat
FILE_FORMAT_CSV: FileFormat
PREFERENCE_LOSS_UNSPECIFIED: PreferenceLoss
PREFERENCE_LOSS_SIGMOID: PreferenceLoss
PREFERENCE_LOSS_IPO: PreferenceLoss
PREFERENCE_LOSS_HINGE: PreferenceLoss
PREFERENCE_LOSS_ORPO: PreferenceLoss
PREFERENCE_LOSS_SIMPO: PreferenceLoss
PREFERENCE_LOSS_KTO: PreferenceLoss
GRPO_LOSS_UNSPECIFIED: GrpoLoss
GRPO_LOSS_GRPO: GrpoLoss
GRPO_LOSS_DR_GRPO: GrpoLoss
GRPO_LOSS_DAPO: GrpoLoss
PPO_ALGORITHM_UNSPECIFIED: PpoAlgorithm
PPO_ALGORITHM_RLOO: PpoAlgorithm
PPO_ALGORITHM_ACTOR_CRITIC: PpoAlgorithm
PPO_KL_CONTROL_UNSPECIFIED: PpoKlControl
PPO_KL_CONTROL_ADAPTIVE: PpoKlControl
PPO_KL_CONTROL_FIXED: PpoKlControl
PPO_CRITIC_INIT_UNSPECIFIED: PpoCriticInit
PPO_CRITIC_INIT_REWARD_MODEL: PpoCriticInit
PPO_CRITIC_INIT_POLICY: PpoCriticInit
PPO_CRITIC_ADAPTER_UNSPECIFIED: PpoCriticAdapter
PPO_CRITIC_ADAPTER_FULL: PpoCriticAdapter
PPO_CRITIC_ADAPTER_LORA: PpoCriticAdapter
DISTILL_MODE_UNSPECIFIED: DistillMode
DISTILL_MODE_OFFLINE: DistillMode
DISTILL_MODE_ON_POLICY: DistillMode

class Hyperparameters(_message.Message):
    __slots__ = ("num_epochs", "max_steps", "learning_rate", "lr_scheduler", "warmup_ratio", "warmup_steps", "batch_size", "gradient_accumulation_steps", "max_seq_length", "packing", "seed", "weight_decay", "max_grad_norm", "precision", "logging_steps", "gradient_checkpointing")
    NUM_EPOCHS_FIELD_NUMBER: _ClassVar[int]
    MAX_STEPS_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    LR_SCHEDULER_FIELD_NUMBER: _ClassVar[int]
    WARMUP_RATIO_FIELD_NUMBER: _ClassVar[int]
    WARMUP_STEPS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    GRADIENT_ACCUMULATION_STEPS_FIELD_NUMBER: _ClassVar[int]
    MAX_SEQ_LENGTH_FIELD_NUMBER: _ClassVar[int]
    PACKING_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_DECAY_FIELD_NUMBER: _ClassVar[int]
    MAX_GRAD_NORM_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    LOGGING_STEPS_FIELD_NUMBER: _ClassVar[int]
    GRADIENT_CHECKPOINTING_FIELD_NUMBER: _ClassVar[int]
    num_epochs: float
    max_steps: int
    learning_rate: float
    lr_scheduler: str
    warmup_ratio: float
    warmup_steps: int
    batch_size: int
    gradient_accumulation_steps: int
    max_seq_length: int
    packing: bool
    seed: int
    weight_decay: float
    max_grad_norm: float
    precision: str
    logging_steps: int
    gradient_checkpointing: bool
    def __init__(self, num_epochs: _Optional[float] = ..., max_steps: _Optional[int] = ..., learning_rate: _Optional[float] = ..., lr_scheduler: _Optional[str] = ..., warmup_ratio: _Optional[float] = ..., warmup_steps: _Optional[int] = ..., batch_size: _Optional[int] = ..., gradient_accumulation_steps: _Optional[int] = ..., max_seq_length: _Optional[int] = ..., packing: _Optional[bool] = ..., seed: _Optional[int] = ..., weight_decay: _Optional[float] = ..., max_grad_norm: _Optional[float] = ..., precision: _Optional[str] = ..., logging_steps: _Optional[int] = ..., gradient_checkpointing: _Optional[bool] = ...) -> None: ...

class EvalSpec(_message.Message):
    __slots__ = ("split_ratio", "eval_dataset_id", "every_steps", "metric_for_best", "greater_is_better", "early_stopping_patience", "early_stopping_threshold")
    SPLIT_RATIO_FIELD_NUMBER: _ClassVar[int]
    EVAL_DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    EVERY_STEPS_FIELD_NUMBER: _ClassVar[int]
    METRIC_FOR_BEST_FIELD_NUMBER: _ClassVar[int]
    GREATER_IS_BETTER_FIELD_NUMBER: _ClassVar[int]
    EARLY_STOPPING_PATIENCE_FIELD_NUMBER: _ClassVar[int]
    EARLY_STOPPING_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    split_ratio: float
    eval_dataset_id: str
    every_steps: int
    metric_for_best: str
    greater_is_better: bool
    early_stopping_patience: int
    early_stopping_threshold: float
    def __init__(self, split_ratio: _Optional[float] = ..., eval_dataset_id: _Optional[str] = ..., every_steps: _Optional[int] = ..., metric_for_best: _Optional[str] = ..., greater_is_better: _Optional[bool] = ..., early_stopping_patience: _Optional[int] = ..., early_stopping_threshold: _Optional[float] = ...) -> None: ...

class CheckpointPolicy(_message.Message):
    __slots__ = ("every_steps", "keep_last", "keep_after_success", "max_restarts")
    EVERY_STEPS_FIELD_NUMBER: _ClassVar[int]
    KEEP_LAST_FIELD_NUMBER: _ClassVar[int]
    KEEP_AFTER_SUCCESS_FIELD_NUMBER: _ClassVar[int]
    MAX_RESTARTS_FIELD_NUMBER: _ClassVar[int]
    every_steps: int
    keep_last: int
    keep_after_success: bool
    max_restarts: int
    def __init__(self, every_steps: _Optional[int] = ..., keep_last: _Optional[int] = ..., keep_after_success: _Optional[bool] = ..., max_restarts: _Optional[int] = ...) -> None: ...

class PretrainSpec(_message.Message):
    __slots__ = ("architecture", "hidden_size", "num_layers", "num_attention_heads", "num_key_value_heads", "context_length", "tokenizer_from", "intermediate_size", "vocab_size")
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_SIZE_FIELD_NUMBER: _ClassVar[int]
    NUM_LAYERS_FIELD_NUMBER: _ClassVar[int]
    NUM_ATTENTION_HEADS_FIELD_NUMBER: _ClassVar[int]
    NUM_KEY_VALUE_HEADS_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    TOKENIZER_FROM_FIELD_NUMBER: _ClassVar[int]
    INTERMEDIATE_SIZE_FIELD_NUMBER: _ClassVar[int]
    VOCAB_SIZE_FIELD_NUMBER: _ClassVar[int]
    architecture: str
    hidden_size: int
    num_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    context_length: int
    tokenizer_from: str
    intermediate_size: int
    vocab_size: int
    def __init__(self, architecture: _Optional[str] = ..., hidden_size: _Optional[int] = ..., num_layers: _Optional[int] = ..., num_attention_heads: _Optional[int] = ..., num_key_value_heads: _Optional[int] = ..., context_length: _Optional[int] = ..., tokenizer_from: _Optional[str] = ..., intermediate_size: _Optional[int] = ..., vocab_size: _Optional[int] = ...) -> None: ...

class VocabularyExpansion(_message.Message):
    __slots__ = ("new_tokens",)
    NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    new_tokens: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, new_tokens: _Optional[_Iterable[str]] = ...) -> None: ...

class ContinuedPretrainSpec(_message.Message):
    __slots__ = ("vocabulary",)
    VOCABULARY_FIELD_NUMBER: _ClassVar[int]
    vocabulary: VocabularyExpansion
    def __init__(self, vocabulary: _Optional[_Union[VocabularyExpansion, _Mapping]] = ...) -> None: ...

class SftSpec(_message.Message):
    __slots__ = ("format", "train_on_prompt", "default_system_prompt", "vocabulary")
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    TRAIN_ON_PROMPT_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_SYSTEM_PROMPT_FIELD_NUMBER: _ClassVar[int]
    VOCABULARY_FIELD_NUMBER: _ClassVar[int]
    format: DatasetFormat
    train_on_prompt: bool
    default_system_prompt: str
    vocabulary: VocabularyExpansion
    def __init__(self, format: _Optional[_Union[DatasetFormat, str]] = ..., train_on_prompt: _Optional[bool] = ..., default_system_prompt: _Optional[str] = ..., vocabulary: _Optional[_Union[VocabularyExpansion, _Mapping]] = ...) -> None: ...

class RewardSpec(_message.Message):
    __slots__ = ("center_rewards_coefficient",)
    CENTER_REWARDS_COEFFICIENT_FIELD_NUMBER: _ClassVar[int]
    center_rewards_coefficient: float
    def __init__(self, center_rewards_coefficient: _Optional[float] = ...) -> None: ...

class DpoSpec(_message.Message):
    __slots__ = ("beta", "loss", "simpo_gamma")
    BETA_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    SIMPO_GAMMA_FIELD_NUMBER: _ClassVar[int]
    beta: float
    loss: PreferenceLoss
    simpo_gamma: float
    def __init__(self, beta: _Optional[float] = ..., loss: _Optional[_Union[PreferenceLoss, str]] = ..., simpo_gamma: _Optional[float] = ...) -> None: ...

class RewardFunction(_message.Message):
    __slots__ = ("name", "weight", "params", "reward_model_id")
    class ParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    REWARD_MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    weight: float
    params: _containers.ScalarMap[str, str]
    reward_model_id: str
    def __init__(self, name: _Optional[str] = ..., weight: _Optional[float] = ..., params: _Optional[_Mapping[str, str]] = ..., reward_model_id: _Optional[str] = ...) -> None: ...

class RolloutSampling(_message.Message):
    __slots__ = ("fraction_of_steps", "max_prompts")
    FRACTION_OF_STEPS_FIELD_NUMBER: _ClassVar[int]
    MAX_PROMPTS_FIELD_NUMBER: _ClassVar[int]
    fraction_of_steps: float
    max_prompts: int
    def __init__(self, fraction_of_steps: _Optional[float] = ..., max_prompts: _Optional[int] = ...) -> None: ...

class GrpoSpec(_message.Message):
    __slots__ = ("rewards", "num_generations", "beta", "epsilon", "loss", "max_completion_length", "temperature", "samples", "use_vllm")
    REWARDS_FIELD_NUMBER: _ClassVar[int]
    NUM_GENERATIONS_FIELD_NUMBER: _ClassVar[int]
    BETA_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    MAX_COMPLETION_LENGTH_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    USE_VLLM_FIELD_NUMBER: _ClassVar[int]
    rewards: _containers.RepeatedCompositeFieldContainer[RewardFunction]
    num_generations: int
    beta: float
    epsilon: float
    loss: GrpoLoss
    max_completion_length: int
    temperature: float
    samples: RolloutSampling
    use_vllm: bool
    def __init__(self, rewards: _Optional[_Iterable[_Union[RewardFunction, _Mapping]]] = ..., num_generations: _Optional[int] = ..., beta: _Optional[float] = ..., epsilon: _Optional[float] = ..., loss: _Optional[_Union[GrpoLoss, str]] = ..., max_completion_length: _Optional[int] = ..., temperature: _Optional[float] = ..., samples: _Optional[_Union[RolloutSampling, _Mapping]] = ..., use_vllm: _Optional[bool] = ...) -> None: ...

class RftSpec(_message.Message):
    __slots__ = ("rewards", "num_candidates", "rounds", "threshold", "max_completion_length", "temperature", "samples")
    REWARDS_FIELD_NUMBER: _ClassVar[int]
    NUM_CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    MAX_COMPLETION_LENGTH_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    rewards: _containers.RepeatedCompositeFieldContainer[RewardFunction]
    num_candidates: int
    rounds: int
    threshold: float
    max_completion_length: int
    temperature: float
    samples: RolloutSampling
    def __init__(self, rewards: _Optional[_Iterable[_Union[RewardFunction, _Mapping]]] = ..., num_candidates: _Optional[int] = ..., rounds: _Optional[int] = ..., threshold: _Optional[float] = ..., max_completion_length: _Optional[int] = ..., temperature: _Optional[float] = ..., samples: _Optional[_Union[RolloutSampling, _Mapping]] = ...) -> None: ...

class PpoSpec(_message.Message):
    __slots__ = ("algorithm", "reward_model_id", "rewards", "num_generations", "beta", "max_completion_length", "temperature", "samples", "kl_control", "kl_target", "kl_horizon", "gamma", "lam", "cliprange", "cliprange_value", "vf_coef", "ppo_epochs", "num_mini_batches", "whiten_advantages", "critic_init", "critic_adapter", "critic_learning_rate")
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    REWARD_MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    REWARDS_FIELD_NUMBER: _ClassVar[int]
    NUM_GENERATIONS_FIELD_NUMBER: _ClassVar[int]
    BETA_FIELD_NUMBER: _ClassVar[int]
    MAX_COMPLETION_LENGTH_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    KL_CONTROL_FIELD_NUMBER: _ClassVar[int]
    KL_TARGET_FIELD_NUMBER: _ClassVar[int]
    KL_HORIZON_FIELD_NUMBER: _ClassVar[int]
    GAMMA_FIELD_NUMBER: _ClassVar[int]
    LAM_FIELD_NUMBER: _ClassVar[int]
    CLIPRANGE_FIELD_NUMBER: _ClassVar[int]
    CLIPRANGE_VALUE_FIELD_NUMBER: _ClassVar[int]
    VF_COEF_FIELD_NUMBER: _ClassVar[int]
    PPO_EPOCHS_FIELD_NUMBER: _ClassVar[int]
    NUM_MINI_BATCHES_FIELD_NUMBER: _ClassVar[int]
    WHITEN_ADVANTAGES_FIELD_NUMBER: _ClassVar[int]
    CRITIC_INIT_FIELD_NUMBER: _ClassVar[int]
    CRITIC_ADAPTER_FIELD_NUMBER: _ClassVar[int]
    CRITIC_LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    algorithm: PpoAlgorithm
    reward_model_id: str
    rewards: _containers.RepeatedCompositeFieldContainer[RewardFunction]
    num_generations: int
    beta: float
    max_completion_length: int
    temperature: float
    samples: RolloutSampling
    kl_control: PpoKlControl
    kl_target: float
    kl_horizon: float
    gamma: float
    lam: float
    cliprange: float
    cliprange_value: float
    vf_coef: float
    ppo_epochs: int
    num_mini_batches: int
    whiten_advantages: bool
    critic_init: PpoCriticInit
    critic_adapter: PpoCriticAdapter
    critic_learning_rate: float
    def __init__(self, algorithm: _Optional[_Union[PpoAlgorithm, str]] = ..., reward_model_id: _Optional[str] = ..., rewards: _Optional[_Iterable[_Union[RewardFunction, _Mapping]]] = ..., num_generations: _Optional[int] = ..., beta: _Optional[float] = ..., max_completion_length: _Optional[int] = ..., temperature: _Optional[float] = ..., samples: _Optional[_Union[RolloutSampling, _Mapping]] = ..., kl_control: _Optional[_Union[PpoKlControl, str]] = ..., kl_target: _Optional[float] = ..., kl_horizon: _Optional[float] = ..., gamma: _Optional[float] = ..., lam: _Optional[float] = ..., cliprange: _Optional[float] = ..., cliprange_value: _Optional[float] = ..., vf_coef: _Optional[float] = ..., ppo_epochs: _Optional[int] = ..., num_mini_batches: _Optional[int] = ..., whiten_advantages: _Optional[bool] = ..., critic_init: _Optional[_Union[PpoCriticInit, str]] = ..., critic_adapter: _Optional[_Union[PpoCriticAdapter, str]] = ..., critic_learning_rate: _Optional[float] = ...) -> None: ...

class DistillSpec(_message.Message):
    __slots__ = ("teacher_model_id", "mode", "max_new_tokens", "temperature", "lmbda", "beta")
    TEACHER_MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    LMBDA_FIELD_NUMBER: _ClassVar[int]
    BETA_FIELD_NUMBER: _ClassVar[int]
    teacher_model_id: str
    mode: DistillMode
    max_new_tokens: int
    temperature: float
    lmbda: float
    beta: float
    def __init__(self, teacher_model_id: _Optional[str] = ..., mode: _Optional[_Union[DistillMode, str]] = ..., max_new_tokens: _Optional[int] = ..., temperature: _Optional[float] = ..., lmbda: _Optional[float] = ..., beta: _Optional[float] = ...) -> None: ...

class StartTrainingRequest(_message.Message):
    __slots__ = ("request_id", "display_name", "base_model_id", "dataset_id", "pretrain", "continued_pretrain", "sft", "reward", "dpo", "rft", "grpo", "ppo", "distill", "adapter", "hyperparameters", "eval", "checkpoints", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    PRETRAIN_FIELD_NUMBER: _ClassVar[int]
    CONTINUED_PRETRAIN_FIELD_NUMBER: _ClassVar[int]
    SFT_FIELD_NUMBER: _ClassVar[int]
    REWARD_FIELD_NUMBER: _ClassVar[int]
    DPO_FIELD_NUMBER: _ClassVar[int]
    RFT_FIELD_NUMBER: _ClassVar[int]
    GRPO_FIELD_NUMBER: _ClassVar[int]
    PPO_FIELD_NUMBER: _ClassVar[int]
    DISTILL_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    HYPERPARAMETERS_FIELD_NUMBER: _ClassVar[int]
    EVAL_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINTS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    display_name: str
    base_model_id: str
    dataset_id: str
    pretrain: PretrainSpec
    continued_pretrain: ContinuedPretrainSpec
    sft: SftSpec
    reward: RewardSpec
    dpo: DpoSpec
    rft: RftSpec
    grpo: GrpoSpec
    ppo: PpoSpec
    distill: DistillSpec
    adapter: _common_pb2.AdapterSpec
    hyperparameters: Hyperparameters
    eval: EvalSpec
    checkpoints: CheckpointPolicy
    labels: _containers.ScalarMap[str, str]
    def __init__(self, request_id: _Optional[str] = ..., display_name: _Optional[str] = ..., base_model_id: _Optional[str] = ..., dataset_id: _Optional[str] = ..., pretrain: _Optional[_Union[PretrainSpec, _Mapping]] = ..., continued_pretrain: _Optional[_Union[ContinuedPretrainSpec, _Mapping]] = ..., sft: _Optional[_Union[SftSpec, _Mapping]] = ..., reward: _Optional[_Union[RewardSpec, _Mapping]] = ..., dpo: _Optional[_Union[DpoSpec, _Mapping]] = ..., rft: _Optional[_Union[RftSpec, _Mapping]] = ..., grpo: _Optional[_Union[GrpoSpec, _Mapping]] = ..., ppo: _Optional[_Union[PpoSpec, _Mapping]] = ..., distill: _Optional[_Union[DistillSpec, _Mapping]] = ..., adapter: _Optional[_Union[_common_pb2.AdapterSpec, _Mapping]] = ..., hyperparameters: _Optional[_Union[Hyperparameters, _Mapping]] = ..., eval: _Optional[_Union[EvalSpec, _Mapping]] = ..., checkpoints: _Optional[_Union[CheckpointPolicy, _Mapping]] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("id", "display_name", "state", "method", "request", "created_at", "started_at", "finished_at", "current_step", "total_steps", "latest_metrics", "checkpoint_ids", "result_checkpoint_id", "error", "device", "last_sequence", "evaluation", "attempt", "restarts")
    class LatestMetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    CURRENT_STEP_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    LATEST_METRICS_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_IDS_FIELD_NUMBER: _ClassVar[int]
    RESULT_CHECKPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    EVALUATION_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    RESTARTS_FIELD_NUMBER: _ClassVar[int]
    id: str
    display_name: str
    state: JobState
    method: str
    request: StartTrainingRequest
    created_at: _timestamp_pb2.Timestamp
    started_at: _timestamp_pb2.Timestamp
    finished_at: _timestamp_pb2.Timestamp
    current_step: int
    total_steps: int
    latest_metrics: _containers.ScalarMap[str, float]
    checkpoint_ids: _containers.RepeatedScalarFieldContainer[str]
    result_checkpoint_id: str
    error: _common_pb2.ErrorDetail
    device: str
    last_sequence: int
    evaluation: EvaluateRequest
    attempt: int
    restarts: int
    def __init__(self, id: _Optional[str] = ..., display_name: _Optional[str] = ..., state: _Optional[_Union[JobState, str]] = ..., method: _Optional[str] = ..., request: _Optional[_Union[StartTrainingRequest, _Mapping]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., current_step: _Optional[int] = ..., total_steps: _Optional[int] = ..., latest_metrics: _Optional[_Mapping[str, float]] = ..., checkpoint_ids: _Optional[_Iterable[str]] = ..., result_checkpoint_id: _Optional[str] = ..., error: _Optional[_Union[_common_pb2.ErrorDetail, _Mapping]] = ..., device: _Optional[str] = ..., last_sequence: _Optional[int] = ..., evaluation: _Optional[_Union[EvaluateRequest, _Mapping]] = ..., attempt: _Optional[int] = ..., restarts: _Optional[int] = ...) -> None: ...

class EvaluateRequest(_message.Message):
    __slots__ = ("request_id", "display_name", "model_id", "adapter_id", "dataset_id", "format", "metrics", "max_new_tokens", "max_samples", "batch_size", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_ID_FIELD_NUMBER: _ClassVar[int]
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    display_name: str
    model_id: str
    adapter_id: str
    dataset_id: str
    format: DatasetFormat
    metrics: _containers.RepeatedScalarFieldContainer[str]
    max_new_tokens: int
    max_samples: int
    batch_size: int
    labels: _containers.ScalarMap[str, str]
    def __init__(self, request_id: _Optional[str] = ..., display_name: _Optional[str] = ..., model_id: _Optional[str] = ..., adapter_id: _Optional[str] = ..., dataset_id: _Optional[str] = ..., format: _Optional[_Union[DatasetFormat, str]] = ..., metrics: _Optional[_Iterable[str]] = ..., max_new_tokens: _Optional[int] = ..., max_samples: _Optional[int] = ..., batch_size: _Optional[int] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class CancelJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class PauseJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class ResumeJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "states")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    STATES_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    states: _containers.RepeatedScalarFieldContainer[JobState]
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., states: _Optional[_Iterable[_Union[JobState, str]]] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs", "next_page_token")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[Job]
    next_page_token: str
    def __init__(self, jobs: _Optional[_Iterable[_Union[Job, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class StreamMetricsRequest(_message.Message):
    __slots__ = ("job_id", "after_sequence", "follow")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    after_sequence: int
    follow: bool
    def __init__(self, job_id: _Optional[str] = ..., after_sequence: _Optional[int] = ..., follow: _Optional[bool] = ...) -> None: ...

class MetricsEvent(_message.Message):
    __slots__ = ("phase", "values", "total_steps")
    class ValuesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    PHASE_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    phase: str
    values: _containers.ScalarMap[str, float]
    total_steps: int
    def __init__(self, phase: _Optional[str] = ..., values: _Optional[_Mapping[str, float]] = ..., total_steps: _Optional[int] = ...) -> None: ...

class StateChangeEvent(_message.Message):
    __slots__ = ("state", "message", "error")
    STATE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    state: JobState
    message: str
    error: _common_pb2.ErrorDetail
    def __init__(self, state: _Optional[_Union[JobState, str]] = ..., message: _Optional[str] = ..., error: _Optional[_Union[_common_pb2.ErrorDetail, _Mapping]] = ...) -> None: ...

class CheckpointSavedEvent(_message.Message):
    __slots__ = ("checkpoint",)
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    checkpoint: _common_pb2.Checkpoint
    def __init__(self, checkpoint: _Optional[_Union[_common_pb2.Checkpoint, _Mapping]] = ...) -> None: ...

class LogEvent(_message.Message):
    __slots__ = ("level", "message")
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    level: str
    message: str
    def __init__(self, level: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class ResumedEvent(_message.Message):
    __slots__ = ("attempt", "from_step", "reason")
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    FROM_STEP_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    attempt: int
    from_step: int
    reason: str
    def __init__(self, attempt: _Optional[int] = ..., from_step: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class RolloutCompletion(_message.Message):
    __slots__ = ("text", "reward", "rewards")
    class RewardsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    TEXT_FIELD_NUMBER: _ClassVar[int]
    REWARD_FIELD_NUMBER: _ClassVar[int]
    REWARDS_FIELD_NUMBER: _ClassVar[int]
    text: str
    reward: float
    rewards: _containers.ScalarMap[str, float]
    def __init__(self, text: _Optional[str] = ..., reward: _Optional[float] = ..., rewards: _Optional[_Mapping[str, float]] = ...) -> None: ...

class RolloutSample(_message.Message):
    __slots__ = ("prompt", "completions")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    COMPLETIONS_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    completions: _containers.RepeatedCompositeFieldContainer[RolloutCompletion]
    def __init__(self, prompt: _Optional[str] = ..., completions: _Optional[_Iterable[_Union[RolloutCompletion, _Mapping]]] = ...) -> None: ...

class RolloutSamplesEvent(_message.Message):
    __slots__ = ("samples", "round")
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    samples: _containers.RepeatedCompositeFieldContainer[RolloutSample]
    round: int
    def __init__(self, samples: _Optional[_Iterable[_Union[RolloutSample, _Mapping]]] = ..., round: _Optional[int] = ...) -> None: ...

class TrainingEvent(_message.Message):
    __slots__ = ("sequence", "job_id", "time", "step", "attempt", "metrics", "state_change", "checkpoint_saved", "log", "rollouts", "resumed")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    STATE_CHANGE_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_SAVED_FIELD_NUMBER: _ClassVar[int]
    LOG_FIELD_NUMBER: _ClassVar[int]
    ROLLOUTS_FIELD_NUMBER: _ClassVar[int]
    RESUMED_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    job_id: str
    time: _timestamp_pb2.Timestamp
    step: int
    attempt: int
    metrics: MetricsEvent
    state_change: StateChangeEvent
    checkpoint_saved: CheckpointSavedEvent
    log: LogEvent
    rollouts: RolloutSamplesEvent
    resumed: ResumedEvent
    def __init__(self, sequence: _Optional[int] = ..., job_id: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., step: _Optional[int] = ..., attempt: _Optional[int] = ..., metrics: _Optional[_Union[MetricsEvent, _Mapping]] = ..., state_change: _Optional[_Union[StateChangeEvent, _Mapping]] = ..., checkpoint_saved: _Optional[_Union[CheckpointSavedEvent, _Mapping]] = ..., log: _Optional[_Union[LogEvent, _Mapping]] = ..., rollouts: _Optional[_Union[RolloutSamplesEvent, _Mapping]] = ..., resumed: _Optional[_Union[ResumedEvent, _Mapping]] = ...) -> None: ...

class ListCheckpointsRequest(_message.Message):
    __slots__ = ("job_id", "kind", "base_model_id")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    kind: _common_pb2.CheckpointKind
    base_model_id: str
    def __init__(self, job_id: _Optional[str] = ..., kind: _Optional[_Union[_common_pb2.CheckpointKind, str]] = ..., base_model_id: _Optional[str] = ...) -> None: ...

class ListCheckpointsResponse(_message.Message):
    __slots__ = ("checkpoints",)
    CHECKPOINTS_FIELD_NUMBER: _ClassVar[int]
    checkpoints: _containers.RepeatedCompositeFieldContainer[_common_pb2.Checkpoint]
    def __init__(self, checkpoints: _Optional[_Iterable[_Union[_common_pb2.Checkpoint, _Mapping]]] = ...) -> None: ...

class DatasetUploadHeader(_message.Message):
    __slots__ = ("name", "file_format", "sha256")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FILE_FORMAT_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    name: str
    file_format: FileFormat
    sha256: str
    def __init__(self, name: _Optional[str] = ..., file_format: _Optional[_Union[FileFormat, str]] = ..., sha256: _Optional[str] = ...) -> None: ...

class UploadDatasetRequest(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: DatasetUploadHeader
    chunk: bytes
    def __init__(self, header: _Optional[_Union[DatasetUploadHeader, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class Dataset(_message.Message):
    __slots__ = ("id", "name", "file_format", "size_bytes", "sha256", "created_at")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    FILE_FORMAT_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    file_format: FileFormat
    size_bytes: int
    sha256: str
    created_at: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., file_format: _Optional[_Union[FileFormat, str]] = ..., size_bytes: _Optional[int] = ..., sha256: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListDatasetsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListDatasetsResponse(_message.Message):
    __slots__ = ("datasets",)
    DATASETS_FIELD_NUMBER: _ClassVar[int]
    datasets: _containers.RepeatedCompositeFieldContainer[Dataset]
    def __init__(self, datasets: _Optional[_Iterable[_Union[Dataset, _Mapping]]] = ...) -> None: ...

class ValidateDatasetRequest(_message.Message):
    __slots__ = ("dataset_id", "method", "format", "max_violations")
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    MAX_VIOLATIONS_FIELD_NUMBER: _ClassVar[int]
    dataset_id: str
    method: str
    format: DatasetFormat
    max_violations: int
    def __init__(self, dataset_id: _Optional[str] = ..., method: _Optional[str] = ..., format: _Optional[_Union[DatasetFormat, str]] = ..., max_violations: _Optional[int] = ...) -> None: ...

class ValidationReport(_message.Message):
    __slots__ = ("ok", "format", "total_rows", "valid_rows", "bad_rows", "violations", "truncated")
    OK_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    TOTAL_ROWS_FIELD_NUMBER: _ClassVar[int]
    VALID_ROWS_FIELD_NUMBER: _ClassVar[int]
    BAD_ROWS_FIELD_NUMBER: _ClassVar[int]
    VIOLATIONS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    format: DatasetFormat
    total_rows: int
    valid_rows: int
    bad_rows: int
    violations: _containers.RepeatedCompositeFieldContainer[_common_pb2.FieldViolation]
    truncated: bool
    def __init__(self, ok: _Optional[bool] = ..., format: _Optional[_Union[DatasetFormat, str]] = ..., total_rows: _Optional[int] = ..., valid_rows: _Optional[int] = ..., bad_rows: _Optional[int] = ..., violations: _Optional[_Iterable[_Union[_common_pb2.FieldViolation, _Mapping]]] = ..., truncated: _Optional[bool] = ...) -> None: ...

class DescribeDatasetRequest(_message.Message):
    __slots__ = ("dataset_id", "base_model_id", "method", "max_seq_length", "epochs")
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    MAX_SEQ_LENGTH_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    dataset_id: str
    base_model_id: str
    method: str
    max_seq_length: int
    epochs: int
    def __init__(self, dataset_id: _Optional[str] = ..., base_model_id: _Optional[str] = ..., method: _Optional[str] = ..., max_seq_length: _Optional[int] = ..., epochs: _Optional[int] = ...) -> None: ...

class LanguageTokenStats(_message.Message):
    __slots__ = ("language", "texts", "characters", "words", "tokens", "characters_per_token", "tokens_per_word")
    LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    CHARACTERS_FIELD_NUMBER: _ClassVar[int]
    WORDS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    CHARACTERS_PER_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_WORD_FIELD_NUMBER: _ClassVar[int]
    language: str
    texts: int
    characters: int
    words: int
    tokens: int
    characters_per_token: float
    tokens_per_word: float
    def __init__(self, language: _Optional[str] = ..., texts: _Optional[int] = ..., characters: _Optional[int] = ..., words: _Optional[int] = ..., tokens: _Optional[int] = ..., characters_per_token: _Optional[float] = ..., tokens_per_word: _Optional[float] = ...) -> None: ...

class DatasetStats(_message.Message):
    __slots__ = ("dataset_id", "base_model_id", "method", "format", "rows", "invalid_rows", "sequences", "total_tokens", "trained_tokens", "max_seq_length", "truncated_sequences", "truncated_tokens", "trained_tokens_after_truncation", "dropped_sequences", "duplicate_rows", "p50_tokens", "p90_tokens", "p99_tokens", "max_tokens", "mean_tokens", "histogram_edges", "histogram_counts", "languages", "epochs", "estimated_trained_tokens", "packed", "notes", "seconds", "rows_per_second")
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    INVALID_ROWS_FIELD_NUMBER: _ClassVar[int]
    SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TRAINED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_SEQ_LENGTH_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TRAINED_TOKENS_AFTER_TRUNCATION_FIELD_NUMBER: _ClassVar[int]
    DROPPED_SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_ROWS_FIELD_NUMBER: _ClassVar[int]
    P50_TOKENS_FIELD_NUMBER: _ClassVar[int]
    P90_TOKENS_FIELD_NUMBER: _ClassVar[int]
    P99_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MEAN_TOKENS_FIELD_NUMBER: _ClassVar[int]
    HISTOGRAM_EDGES_FIELD_NUMBER: _ClassVar[int]
    HISTOGRAM_COUNTS_FIELD_NUMBER: _ClassVar[int]
    LANGUAGES_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_TRAINED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PACKED_FIELD_NUMBER: _ClassVar[int]
    NOTES_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    ROWS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    dataset_id: str
    base_model_id: str
    method: str
    format: DatasetFormat
    rows: int
    invalid_rows: int
    sequences: int
    total_tokens: int
    trained_tokens: int
    max_seq_length: int
    truncated_sequences: int
    truncated_tokens: int
    trained_tokens_after_truncation: int
    dropped_sequences: int
    duplicate_rows: int
    p50_tokens: int
    p90_tokens: int
    p99_tokens: int
    max_tokens: int
    mean_tokens: float
    histogram_edges: _containers.RepeatedScalarFieldContainer[int]
    histogram_counts: _containers.RepeatedScalarFieldContainer[int]
    languages: _containers.RepeatedCompositeFieldContainer[LanguageTokenStats]
    epochs: int
    estimated_trained_tokens: int
    packed: bool
    notes: _containers.RepeatedScalarFieldContainer[str]
    seconds: float
    rows_per_second: float
    def __init__(self, dataset_id: _Optional[str] = ..., base_model_id: _Optional[str] = ..., method: _Optional[str] = ..., format: _Optional[_Union[DatasetFormat, str]] = ..., rows: _Optional[int] = ..., invalid_rows: _Optional[int] = ..., sequences: _Optional[int] = ..., total_tokens: _Optional[int] = ..., trained_tokens: _Optional[int] = ..., max_seq_length: _Optional[int] = ..., truncated_sequences: _Optional[int] = ..., truncated_tokens: _Optional[int] = ..., trained_tokens_after_truncation: _Optional[int] = ..., dropped_sequences: _Optional[int] = ..., duplicate_rows: _Optional[int] = ..., p50_tokens: _Optional[int] = ..., p90_tokens: _Optional[int] = ..., p99_tokens: _Optional[int] = ..., max_tokens: _Optional[int] = ..., mean_tokens: _Optional[float] = ..., histogram_edges: _Optional[_Iterable[int]] = ..., histogram_counts: _Optional[_Iterable[int]] = ..., languages: _Optional[_Iterable[_Union[LanguageTokenStats, _Mapping]]] = ..., epochs: _Optional[int] = ..., estimated_trained_tokens: _Optional[int] = ..., packed: _Optional[bool] = ..., notes: _Optional[_Iterable[str]] = ..., seconds: _Optional[float] = ..., rows_per_second: _Optional[float] = ...) -> None: ...
