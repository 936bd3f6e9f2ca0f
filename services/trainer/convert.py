"""Proto <-> domain conversion for the trainer, in one module (DESIGN.md §5.3).

`spec_from_request` also does every cheap check of a StartTrainingRequest (ids exist, numbers in range,
method implemented) and reports all violations at once, so a client fixes its request in one go.
"""

from __future__ import annotations

from lmforge.v1 import common_pb2, trainer_pb2
from services.common.convert import manifest_to_proto, timestamp
from services.common.errors import FailedPrecondition, InvalidArgument, Unimplemented, Violation
from services.common.model_import import CAUSAL_LM_ARCHITECTURES
from services.common.store import CheckpointStore, EntryKind, Manifest
from services.trainer.data import DatasetFormat, FileFormat, ValidationResult
from services.trainer.datasets import DatasetRegistry, StoredDataset
from services.trainer.jobdb import ErrorInfo, Event, Job, JobState
from services.trainer.recipes import implemented_methods
from services.trainer.spec import (
    ALL_METHODS,
    EVALUATE_METRICS,
    AdapterConfig,
    ContinuedPretrainConfig,
    DatasetFile,
    DistillConfig,
    DpoConfig,
    EvalConfig,
    EvaluateConfig,
    GrpoConfig,
    Hyperparameters,
    PpoConfig,
    PretrainConfig,
    RewardConfig,
    RewardFunctionConfig,
    RftConfig,
    RolloutSamplingConfig,
    SftConfig,
    TrainingSpec,
    check_group_batch,
)

SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
              "inverse_sqrt", "reduce_lr_on_plateau", "cosine_with_min_lr", "warmup_stable_decay")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")

_ADAPTER_TYPES = {
    common_pb2.ADAPTER_TYPE_UNSPECIFIED: "lora",
    common_pb2.ADAPTER_FULL: "full",
    common_pb2.ADAPTER_LORA: "lora",
    common_pb2.ADAPTER_QLORA: "qlora",
}
_PREFERENCE_LOSSES = {
    trainer_pb2.PREFERENCE_LOSS_UNSPECIFIED: "sigmoid",
    trainer_pb2.PREFERENCE_LOSS_SIGMOID: "sigmoid",
    trainer_pb2.PREFERENCE_LOSS_IPO: "ipo",
    trainer_pb2.PREFERENCE_LOSS_HINGE: "hinge",
    trainer_pb2.PREFERENCE_LOSS_ORPO: "orpo",
    trainer_pb2.PREFERENCE_LOSS_SIMPO: "simpo",
    trainer_pb2.PREFERENCE_LOSS_KTO: "kto",
}
_GRPO_LOSSES = {trainer_pb2.GRPO_LOSS_UNSPECIFIED: "dapo", trainer_pb2.GRPO_LOSS_GRPO: "grpo",
                trainer_pb2.GRPO_LOSS_DR_GRPO: "dr_grpo", trainer_pb2.GRPO_LOSS_DAPO: "dapo"}
_PPO_ALGORITHMS = {trainer_pb2.PPO_ALGORITHM_UNSPECIFIED: "rloo", trainer_pb2.PPO_ALGORITHM_RLOO: "rloo",
                   trainer_pb2.PPO_ALGORITHM_PPO: "ppo"}
_DISTILL_MODES = {trainer_pb2.DISTILL_MODE_UNSPECIFIED: "offline", trainer_pb2.DISTILL_MODE_OFFLINE: "offline",
                  trainer_pb2.DISTILL_MODE_ON_POLICY: "on_policy"}
_JOB_STATES = {state: getattr(trainer_pb2, f"JOB_STATE_{state.value}") for state in JobState}
_DATASET_FORMATS = {fmt: getattr(trainer_pb2, f"DATASET_FORMAT_{fmt.name}") for fmt in DatasetFormat}
_FILE_FORMATS = {ff: getattr(trainer_pb2, f"FILE_FORMAT_{ff.name}") for ff in FileFormat}
# proto enum number -> domain value
_JOB_STATES_BY_NUMBER = {number: state for state, number in _JOB_STATES.items()}
_DATASET_FORMATS_BY_NUMBER = {number: fmt for fmt, number in _DATASET_FORMATS.items()}
_FILE_FORMATS_BY_NUMBER = {number: ff for ff, number in _FILE_FORMATS.items()}


class _Checks:
    """Collects request violations; `raise_if_any` reports them all in one INVALID_ARGUMENT."""

    def __init__(self, request_name: str = "StartTrainingRequest") -> None:
        self.request_name = request_name
        self.violations: list[Violation] = []

    def require(self, ok: bool, field: str, reason: str, hint: str = "") -> None:
        if not ok:
            self.violations.append(Violation(0, field, reason, hint))

    def in_range(self, value: float, field: str, low: float, high: float, *, low_open: bool = False) -> None:
        ok = (value > low if low_open else value >= low) and value <= high
        bracket = "(" if low_open else "["
        self.require(ok, field, f"{value} is out of range", f"use a value in {bracket}{low}, {high}]")

    def raise_if_any(self) -> None:
        if self.violations:
            fields = ", ".join(v.field for v in self.violations)
            raise InvalidArgument(f"invalid {self.request_name} ({fields})", self.violations)


def method_name(request: trainer_pb2.StartTrainingRequest) -> str:
    return request.WhichOneof("method") or ""


def _adapter(proto: common_pb2.AdapterSpec, checks: _Checks, method: str) -> AdapterConfig:
    default = "full" if method == "pretrain" else "lora"
    adapter = AdapterConfig(type=default if proto.type == common_pb2.ADAPTER_TYPE_UNSPECIFIED
                            else _ADAPTER_TYPES.get(proto.type, default))
    checks.require(proto.type in _ADAPTER_TYPES, "adapter.type", f"unknown adapter type {proto.type}",
                   "use ADAPTER_FULL, ADAPTER_LORA or ADAPTER_QLORA")
    if proto.rank:
        adapter.rank = proto.rank
    checks.in_range(adapter.rank, "adapter.rank", 1, 1024)
    adapter.alpha = proto.alpha if proto.HasField("alpha") else 2.0 * adapter.rank
    checks.in_range(adapter.alpha, "adapter.alpha", 0, 1e6, low_open=True)
    if proto.HasField("dropout"):
        adapter.dropout = proto.dropout
    checks.require(0 <= adapter.dropout < 1, "adapter.dropout", f"{adapter.dropout} is out of range",
                   "use a value in [0, 1)")
    adapter.target_modules = list(proto.target_modules)
    quant = proto.quantization
    if adapter.type == "qlora":
        quant_types = {common_pb2.QUANTIZATION_TYPE_UNSPECIFIED: "nf4", common_pb2.QUANTIZATION_NF4: "nf4",
                       common_pb2.QUANTIZATION_FP4: "fp4"}
        checks.require(quant.type in quant_types, "adapter.quantization.type",
                       "QLoRA quantizes the base to 4 bits", "use QUANTIZATION_NF4 (default) or QUANTIZATION_FP4")
        adapter.quant_type = quant_types.get(quant.type, "nf4")
        adapter.double_quant = quant.double_quant or quant.type == common_pb2.QUANTIZATION_TYPE_UNSPECIFIED
    elif quant.type not in (common_pb2.QUANTIZATION_TYPE_UNSPECIFIED, common_pb2.QUANTIZATION_NONE):
        checks.require(False, "adapter.quantization.type", "a quantized base can only be trained with QLoRA",
                       "set adapter.type to ADAPTER_QLORA, or leave quantization unset")
    adapter.compute_dtype = quant.compute_dtype
    checks.require(adapter.compute_dtype in ("", "bfloat16", "float16", "float32"),
                   "adapter.quantization.compute_dtype", f"unknown dtype {adapter.compute_dtype!r}",
                   "use bfloat16, float16 or float32")
    return adapter


def _hyperparameters(proto: trainer_pb2.Hyperparameters, adapter: AdapterConfig, gpu: bool,
                     checks: _Checks) -> Hyperparameters:
    hyper = Hyperparameters(learning_rate=2e-4 if adapter.is_peft else 2e-5)
    for name in ("num_epochs", "learning_rate", "seed", "weight_decay", "max_grad_norm"):
        if proto.HasField(name):
            setattr(hyper, name, getattr(proto, name))
    for name in ("max_steps", "warmup_steps", "batch_size", "gradient_accumulation_steps", "max_seq_length",
                 "logging_steps", "lr_scheduler", "precision"):
        value = getattr(proto, name)
        if value:
            setattr(hyper, name, value)
    hyper.warmup_ratio = proto.warmup_ratio
    hyper.packing = proto.packing
    hyper.gradient_checkpointing = proto.gradient_checkpointing
    field = "hyperparameters."
    checks.in_range(hyper.num_epochs, field + "num_epochs", 0, 10_000, low_open=True)
    checks.in_range(hyper.max_steps, field + "max_steps", 0, 10_000_000)
    checks.in_range(hyper.learning_rate, field + "learning_rate", 0, 1, low_open=True)
    checks.require(hyper.lr_scheduler in SCHEDULERS, field + "lr_scheduler", f"unknown scheduler {hyper.lr_scheduler!r}",
                   f"use one of {', '.join(SCHEDULERS)}")
    checks.in_range(hyper.warmup_ratio, field + "warmup_ratio", 0, 0.99)
    checks.in_range(hyper.warmup_steps, field + "warmup_steps", 0, 10_000_000)
    checks.in_range(hyper.batch_size, field + "batch_size", 1, 4096)
    checks.in_range(hyper.gradient_accumulation_steps, field + "gradient_accumulation_steps", 1, 4096)
    checks.in_range(hyper.max_seq_length, field + "max_seq_length", 8, 1_048_576)
    checks.in_range(hyper.weight_decay, field + "weight_decay", 0, 10)
    checks.in_range(hyper.max_grad_norm, field + "max_grad_norm", 0, 1e6)
    checks.in_range(hyper.logging_steps, field + "logging_steps", 1, 1_000_000)
    checks.require(hyper.precision in PRECISIONS, field + "precision", f"unknown precision {hyper.precision!r}",
                   f"use one of {', '.join(PRECISIONS)}")
    checks.require(gpu or hyper.precision != "fp16", field + "precision", "fp16 is not supported on CPU",
                   "use bf16 or fp32 (or auto)")
    return hyper


def _dataset_file(datasets: DatasetRegistry, dataset_id: str, field: str) -> DatasetFile:
    stored = datasets.get(dataset_id, field)
    return DatasetFile(dataset_id=stored.id, path=str(stored.path), file_format=stored.file_format.value,
                       format=DatasetFormat.AUTO.value)


def _new_tokens(proto: trainer_pb2.VocabularyExpansion, field: str, checks: _Checks) -> list[str]:
    tokens = list(proto.new_tokens)
    seen: set[str] = set()
    for index, token in enumerate(tokens):
        checks.require(bool(token.strip()), f"{field}[{index}]", "is empty", "list non-empty domain terms")
        checks.require(token not in seen, f"{field}[{index}]", f"{token!r} is listed twice", "list each term once")
        seen.add(token)
    checks.require(len(tokens) <= 10_000, field, f"{len(tokens)} new tokens", "add at most 10000 tokens at once")
    return tokens


def _pretrain_config(proto: trainer_pb2.PretrainSpec, checks: _Checks) -> PretrainConfig:
    config = PretrainConfig(architecture=proto.architecture or "llama", tokenizer_from=proto.tokenizer_from)
    for name in ("hidden_size", "num_layers", "num_attention_heads", "context_length", "vocab_size"):
        if getattr(proto, name):
            setattr(config, name, getattr(proto, name))
    config.num_key_value_heads = proto.num_key_value_heads or config.num_attention_heads
    # Llama's MLP width is about 8/3 of the hidden size, rounded up to a multiple of 64.
    config.intermediate_size = proto.intermediate_size or -(-config.hidden_size * 8 // 3 // 64) * 64
    f = "pretrain."
    checks.require(config.architecture in CAUSAL_LM_ARCHITECTURES, f + "architecture",
                   f"unknown architecture {config.architecture!r}", f"use one of {', '.join(CAUSAL_LM_ARCHITECTURES)}")
    checks.in_range(config.hidden_size, f + "hidden_size", 16, 65_536)
    checks.in_range(config.num_layers, f + "num_layers", 1, 512)
    checks.in_range(config.num_attention_heads, f + "num_attention_heads", 1, 1024)
    checks.in_range(config.num_key_value_heads, f + "num_key_value_heads", 1, 1024)
    checks.in_range(config.context_length, f + "context_length", 16, 1_048_576)
    checks.in_range(config.intermediate_size, f + "intermediate_size", 16, 1_048_576)
    checks.in_range(config.vocab_size, f + "vocab_size", 300, 1_000_000)
    checks.require(config.hidden_size % config.num_attention_heads == 0, f + "num_attention_heads",
                   f"hidden_size {config.hidden_size} is not divisible by {config.num_attention_heads} heads",
                   "pick a head count that divides hidden_size")
    checks.require(config.num_attention_heads % config.num_key_value_heads == 0, f + "num_key_value_heads",
                   f"{config.num_attention_heads} attention heads are not a multiple of "
                   f"{config.num_key_value_heads} key/value heads", "use a divisor of num_attention_heads")
    return config


def _method_config(method: str, request: trainer_pb2.StartTrainingRequest, checks: _Checks):
    if method == "sft":
        sft = request.sft
        return SftConfig(format=dataset_format_from_proto(sft.format).value, train_on_prompt=sft.train_on_prompt,
                         default_system_prompt=sft.default_system_prompt,
                         new_tokens=_new_tokens(sft.vocabulary, "sft.vocabulary.new_tokens", checks))
    if method == "pretrain":
        return _pretrain_config(request.pretrain, checks)
    if method == "continued_pretrain":
        return ContinuedPretrainConfig(new_tokens=_new_tokens(request.continued_pretrain.vocabulary,
                                                              "continued_pretrain.vocabulary.new_tokens", checks))
    if method == "reward":
        reward = request.reward
        config = RewardConfig(center_rewards_coefficient=reward.center_rewards_coefficient
                              if reward.HasField("center_rewards_coefficient") else None)
        if config.center_rewards_coefficient is not None:
            checks.in_range(config.center_rewards_coefficient, "reward.center_rewards_coefficient", 0, 100)
        return config
    if method == "dpo":
        dpo = request.dpo
        checks.require(dpo.loss in _PREFERENCE_LOSSES, "dpo.loss", f"unknown loss {dpo.loss}",
                       "use PREFERENCE_LOSS_SIGMOID, _IPO, _HINGE, _ORPO, _SIMPO or _KTO")
        config = DpoConfig(loss=_PREFERENCE_LOSSES.get(dpo.loss, "sigmoid"))
        # SimPO's beta scales a length-normalised log-probability: its paper uses 2-2.5, not DPO's 0.1.
        config.beta = dpo.beta if dpo.HasField("beta") else (2.0 if config.loss == "simpo" else 0.1)
        if dpo.HasField("simpo_gamma"):
            config.simpo_gamma = dpo.simpo_gamma
        checks.in_range(config.beta, "dpo.beta", 0, 100, low_open=True)
        checks.in_range(config.simpo_gamma, "dpo.simpo_gamma", 0, 100)
        return config
    if method in ("grpo", "rft", "ppo"):
        return _rl_config(method, getattr(request, method), checks)
    if method == "distill":
        return _distill_config(request.distill, checks)
    raise AssertionError(method)


def _rewards(protos, field: str) -> list[RewardFunctionConfig]:
    return [RewardFunctionConfig(name=r.name, weight=r.weight if r.HasField("weight") else 1.0,
                                 params=dict(r.params), reward_model_id=r.reward_model_id) for r in protos]


def _sampling(proto: trainer_pb2.RolloutSampling, field: str, checks: _Checks) -> RolloutSamplingConfig:
    sampling = RolloutSamplingConfig()
    if proto.HasField("fraction_of_steps"):
        sampling.fraction_of_steps = proto.fraction_of_steps
    sampling.max_prompts = proto.max_prompts or sampling.max_prompts
    checks.in_range(sampling.fraction_of_steps, f"{field}.fraction_of_steps", 0, 1)
    checks.in_range(sampling.max_prompts, f"{field}.max_prompts", 1, 64)
    return sampling


def _rl_config(method: str, proto, checks: _Checks):
    """GRPO, RFT and PPO/RLOO share rewards, rollout length, temperature and sample streaming."""
    from services.trainer.rewards import check_reward_configs

    f = f"{method}."
    rewards = _rewards(proto.rewards, f + "rewards")
    if method == "grpo":
        checks.require(proto.loss in _GRPO_LOSSES, f + "loss", f"unknown loss {proto.loss}",
                       "use GRPO_LOSS_GRPO, GRPO_LOSS_DR_GRPO or GRPO_LOSS_DAPO")
        config = GrpoConfig(rewards=rewards, loss=_GRPO_LOSSES.get(proto.loss, "dapo"), use_vllm=proto.use_vllm)
        if proto.HasField("epsilon"):
            config.epsilon = proto.epsilon
        checks.in_range(config.epsilon, f + "epsilon", 0, 10, low_open=True)
    elif method == "rft":
        config = RftConfig(rewards=rewards, threshold=proto.threshold if proto.HasField("threshold") else None)
        config.num_candidates = proto.num_candidates or config.num_candidates
        config.rounds = proto.rounds or config.rounds
        checks.in_range(config.num_candidates, f + "num_candidates", 1, 256)
        checks.in_range(config.rounds, f + "rounds", 1, 1000)
    else:
        checks.require(proto.algorithm in _PPO_ALGORITHMS, f + "algorithm", f"unknown algorithm {proto.algorithm}",
                       "use PPO_ALGORITHM_RLOO")
        config = PpoConfig(algorithm=_PPO_ALGORITHMS.get(proto.algorithm, "rloo"),
                           reward_model_id=proto.reward_model_id)
        checks.require(config.algorithm != "ppo", f + "algorithm",
                       "actor-critic PPO is not available: TRL 1.16, which the trainer runs on, no longer ships "
                       "PPOTrainer", "use PPO_ALGORITHM_RLOO (critic-free, the stable choice TRL keeps)")
        checks.require(bool(config.reward_model_id), f + "reward_model_id", "empty",
                       "name a REWARD_MODEL from the store (train one with the reward method)")
        if config.reward_model_id:
            config.rewards = [RewardFunctionConfig(name="reward_model", reward_model_id=config.reward_model_id),
                              *rewards]
    if method in ("grpo", "ppo"):
        config.num_generations = proto.num_generations or config.num_generations
        checks.in_range(config.num_generations, f + "num_generations", 2, 256)
        if proto.HasField("beta"):
            config.beta = proto.beta
        checks.in_range(config.beta, f + "beta", 0, 100)
    config.max_completion_length = proto.max_completion_length or config.max_completion_length
    if proto.HasField("temperature"):
        config.temperature = proto.temperature
    config.samples = _sampling(proto.samples, f + "samples", checks)
    checks.in_range(config.max_completion_length, f + "max_completion_length", 1, 131_072)
    checks.in_range(config.temperature, f + "temperature", 0, 2, low_open=True)
    if rewards or method != "ppo":  # PPO/RLOO scores with its reward model; rule rewards are optional extras
        checks.violations += check_reward_configs(rewards, f + "rewards")
    return config


def _distill_config(proto: trainer_pb2.DistillSpec, checks: _Checks) -> DistillConfig:
    checks.require(proto.mode in _DISTILL_MODES, "distill.mode", f"unknown mode {proto.mode}",
                   "use DISTILL_MODE_OFFLINE or DISTILL_MODE_ON_POLICY")
    config = DistillConfig(teacher_model_id=proto.teacher_model_id, mode=_DISTILL_MODES.get(proto.mode, "offline"))
    config.max_new_tokens = proto.max_new_tokens or config.max_new_tokens
    for name in ("temperature", "lmbda", "beta"):
        if proto.HasField(name):
            setattr(config, name, getattr(proto, name))
    checks.require(bool(config.teacher_model_id), "distill.teacher_model_id", "empty",
                   "name the teacher model from the checkpoint store")
    checks.in_range(config.max_new_tokens, "distill.max_new_tokens", 1, 131_072)
    checks.in_range(config.temperature, "distill.temperature", 0, 2)
    checks.in_range(config.lmbda, "distill.lmbda", 0, 1)
    checks.in_range(config.beta, "distill.beta", 0, 1)
    return config


def _eval_config(proto: trainer_pb2.EvalSpec, checks: _Checks) -> EvalConfig:
    metric = proto.metric_for_best or "eval_loss"
    if not metric.startswith("eval_"):
        metric = f"eval_{metric}"
    lower_is_better = "loss" in metric or "perplexity" in metric
    evaluation = EvalConfig(
        split_ratio=proto.split_ratio, eval_dataset_id=proto.eval_dataset_id, every_steps=proto.every_steps,
        metric_for_best=metric,
        greater_is_better=proto.greater_is_better if proto.HasField("greater_is_better") else not lower_is_better,
        early_stopping_patience=proto.early_stopping_patience, early_stopping_threshold=proto.early_stopping_threshold)
    checks.in_range(evaluation.split_ratio, "eval.split_ratio", 0, 0.5)
    checks.in_range(evaluation.every_steps, "eval.every_steps", 0, 10_000_000)
    checks.in_range(evaluation.early_stopping_patience, "eval.early_stopping_patience", 0, 1_000_000)
    checks.in_range(evaluation.early_stopping_threshold, "eval.early_stopping_threshold", 0, 1e9)
    has_eval = evaluation.split_ratio > 0 or bool(evaluation.eval_dataset_id)
    if evaluation.early_stopping_patience:
        checks.require(has_eval, "eval.early_stopping_patience", "early stopping needs evaluation data",
                       "set eval.split_ratio or eval.eval_dataset_id")
        checks.require(evaluation.every_steps > 0, "eval.every_steps", "early stopping needs periodic evaluation",
                       "set eval.every_steps to evaluate every N steps")
    return evaluation


def _check_trainable_base(base: Manifest, method: str) -> None:
    if base.kind is EntryKind.ADAPTER:
        raise FailedPrecondition(f"base_model_id: {base.id!r} is a LoRA adapter, not a model; train on its base "
                                 f"{base.base_model_id!r}, or merge the adapter first")
    if base.kind is EntryKind.REWARD_MODEL and method != "reward":
        raise FailedPrecondition(f"base_model_id: {base.id!r} is a reward model (a scorer, not a language model); "
                                 f"{method} needs a causal language model from the store")


def spec_from_request(request: trainer_pb2.StartTrainingRequest, store: CheckpointStore,
                      datasets: DatasetRegistry, *, gpu: bool) -> TrainingSpec:
    """Check a request and build the job's spec. Raises InvalidArgument / NotFound / Unimplemented."""
    method = method_name(request)
    if not method:
        raise InvalidArgument("method: not set", [Violation(0, "method", "no training method chosen",
                                                            f"set exactly one of {', '.join(ALL_METHODS)}")])
    if method not in implemented_methods():
        raise Unimplemented(f"method {method!r} is not implemented by this trainer yet; implemented: "
                            f"{', '.join(implemented_methods())}")
    checks = _Checks()
    adapter = _adapter(request.adapter, checks, method)
    hyper = _hyperparameters(request.hyperparameters, adapter, gpu, checks)
    evaluation = _eval_config(request.eval, checks)
    checks.in_range(request.checkpoints.every_steps, "checkpoints.every_steps", 0, 10_000_000)
    if method == "pretrain":
        checks.require(not request.base_model_id, "base_model_id", "pretraining from scratch starts from no model",
                       "leave base_model_id empty, or use continued_pretrain to keep training a model")
        checks.require(adapter.type == "full", "adapter.type", "a model trained from scratch has no base to adapt",
                       "use ADAPTER_FULL (the default for pretraining)")
    else:
        checks.require(bool(request.base_model_id), "base_model_id", "empty",
                       "name a model from the checkpoint store (`lmforge checkpoints`)")
    checks.require(bool(request.dataset_id), "dataset_id", "empty",
                   "upload the data (`lmforge datasets upload FILE`) and pass the id it returns")
    method_config = _method_config(method, request, checks)
    new_tokens = getattr(method_config, "new_tokens", [])
    checks.require(not (new_tokens and adapter.type == "qlora"), "adapter.type",
                   "vocabulary expansion cannot be merged into a 4-bit base", "use ADAPTER_LORA or ADAPTER_FULL")
    checks.require(not (getattr(method_config, "loss", "") == "kto" and hyper.batch_size < 2),
                   "hyperparameters.batch_size", "KTO estimates its KL term from mismatched prompt/completion "
                   "pairs within a batch, so a batch needs at least 2 rows", "use batch_size 2 or more")
    checks.require(not (method == "reward" and adapter.type == "qlora"), "adapter.type",
                   "a reward model is saved as full weights and a 4-bit base cannot be merged into them",
                   "use ADAPTER_LORA (merged at the end) or ADAPTER_FULL")
    checks.raise_if_any()
    if method in ("grpo", "ppo"):
        has_eval = evaluation.split_ratio > 0 or bool(evaluation.eval_dataset_id)
        check_group_batch(hyper, method_config.num_generations, method, has_eval)

    base_model_id = ""
    if method == "pretrain":
        if method_config.tokenizer_from:
            source = store.get(method_config.tokenizer_from, "pretrain.tokenizer_from")
            if not source.has_tokenizer:
                raise FailedPrecondition(f"pretrain.tokenizer_from: {source.id!r} has no tokenizer of its own; "
                                         "name a base model or full checkpoint, or leave it empty to train one")
    else:
        base = store.get(request.base_model_id, "base_model_id")
        _check_trainable_base(base, method)
        base_model_id = base.id
    for index, reward in enumerate(getattr(method_config, "rewards", [])):
        if reward.name == "reward_model" and reward.reward_model_id:
            field = f"{method}.reward_model_id" if method == "ppo" and index == 0 else f"{method}.rewards[{index}]"
            scorer = store.get(reward.reward_model_id, field)
            if scorer.kind is not EntryKind.REWARD_MODEL:
                raise FailedPrecondition(f"{field}: {scorer.id!r} is a {scorer.kind.value}, not a reward model; "
                                         "train one with the reward method and name its checkpoint")
    if method == "distill":
        teacher = store.get(method_config.teacher_model_id, "distill.teacher_model_id")
        if teacher.kind in (EntryKind.ADAPTER, EntryKind.REWARD_MODEL):
            raise FailedPrecondition(f"distill.teacher_model_id: {teacher.id!r} is a {teacher.kind.value}; the "
                                     "teacher must be a language model (a base model or full checkpoint)")
    return TrainingSpec(
        job_id="", method=method, base_model_id=base_model_id,
        dataset=_dataset_file(datasets, request.dataset_id, "dataset_id"),
        eval_dataset=_dataset_file(datasets, evaluation.eval_dataset_id, "eval.eval_dataset_id")
        if evaluation.eval_dataset_id else None,
        method_config=method_config, adapter=adapter, hyperparameters=hyper, eval=evaluation,
        save_every_steps=request.checkpoints.every_steps,
    )


def evaluate_spec_from_request(request: trainer_pb2.EvaluateRequest, store: CheckpointStore,
                               datasets: DatasetRegistry) -> TrainingSpec:
    """Check an EvaluateRequest and build its job's spec (method "evaluate").

    model_id may name an adapter directly (then its base is used). Raises InvalidArgument, NotFound,
    FailedPrecondition."""
    checks = _Checks("EvaluateRequest")
    checks.require(bool(request.model_id), "model_id", "empty", "name a model or adapter from the checkpoint store")
    checks.require(bool(request.dataset_id), "dataset_id", "empty", "upload the data and pass the id it returns")
    metrics = list(dict.fromkeys(request.metrics))
    for index, name in enumerate(metrics):
        checks.require(name in EVALUATE_METRICS, f"metrics[{index}]", f"unknown metric {name!r}",
                       f"use any of {', '.join(EVALUATE_METRICS)}")
    config = EvaluateConfig(adapter_id=request.adapter_id, metrics=metrics, format=dataset_format_from_proto(
        request.format).value)
    for name in ("max_new_tokens", "max_samples", "batch_size"):
        if getattr(request, name):
            setattr(config, name, getattr(request, name))
    answer_metrics = [m for m in metrics if m != "perplexity"]
    checks.require(not (config.format == "text" and answer_metrics), "metrics",
                   f"{', '.join(answer_metrics)} compare answers, and text rows have none",
                   "ask text rows for perplexity only, or use prompt/completion rows")
    checks.in_range(config.max_new_tokens, "max_new_tokens", 1, 65_536)
    checks.in_range(config.max_samples, "max_samples", 0, 100_000_000)
    checks.in_range(config.batch_size, "batch_size", 1, 4096)
    checks.raise_if_any()

    model = store.get(request.model_id, "model_id")
    if model.kind is EntryKind.ADAPTER:
        if config.adapter_id and config.adapter_id != model.id:
            raise InvalidArgument("model_id: names an adapter and adapter_id names another one",
                                  [Violation(0, "model_id", "is an adapter", "pass the adapter's base model as model_id")])
        config.adapter_id = model.id
        model = store.get(model.base_model_id, "model_id")
    if model.kind is EntryKind.REWARD_MODEL:
        raise FailedPrecondition(f"model_id: {model.id!r} is a reward model; Evaluate scores language models")
    if config.adapter_id:
        adapter = store.get(config.adapter_id, "adapter_id")
        if adapter.kind is not EntryKind.ADAPTER:
            raise FailedPrecondition(f"adapter_id: {adapter.id!r} is a {adapter.kind.value}, not an adapter; "
                                     "pass it as model_id instead")
        if adapter.base_model_id != model.id:
            raise FailedPrecondition(f"adapter_id: {adapter.id!r} was trained on {adapter.base_model_id!r}, not "
                                     f"{model.id!r}; pass model_id={adapter.base_model_id!r}")
    return TrainingSpec(job_id="", method="evaluate", base_model_id=model.id,
                        dataset=_dataset_file(datasets, request.dataset_id, "dataset_id"), method_config=config,
                        adapter=AdapterConfig(type="full"))


# ---- domain -> proto ---------------------------------------------------------------------------------

def error_to_proto(error: ErrorInfo | None) -> common_pb2.ErrorDetail | None:
    if error is None:
        return None
    return common_pb2.ErrorDetail(
        code=error.code, message=error.message, log_tail=error.log_tail,
        violations=[common_pb2.FieldViolation(**v) for v in error.violations])


def job_state_to_proto(state: JobState) -> int:
    return _JOB_STATES[state]


def job_state_from_proto(value: int) -> JobState:
    if value not in _JOB_STATES_BY_NUMBER:
        raise InvalidArgument(f"states: unknown job state {value}")
    return _JOB_STATES_BY_NUMBER[value]


def job_to_proto(job: Job) -> trainer_pb2.Job:
    request = evaluation = None
    if job.method == "evaluate":
        evaluation = trainer_pb2.EvaluateRequest.FromString(job.request_blob)
    else:
        request = trainer_pb2.StartTrainingRequest.FromString(job.request_blob)
    return trainer_pb2.Job(
        id=job.id, display_name=job.display_name, state=job_state_to_proto(job.state), method=job.method,
        request=request, evaluation=evaluation, created_at=timestamp(job.created_at), started_at=timestamp(job.started_at),
        finished_at=timestamp(job.finished_at), current_step=job.current_step, total_steps=job.total_steps,
        latest_metrics=job.latest_metrics, checkpoint_ids=job.checkpoint_ids,
        result_checkpoint_id=job.result_checkpoint_id, error=error_to_proto(job.error), device=job.device,
        last_sequence=job.last_sequence)


def event_to_proto(event: Event) -> trainer_pb2.TrainingEvent:
    proto = trainer_pb2.TrainingEvent(sequence=event.sequence, job_id=event.job_id, time=timestamp(event.time),
                                      step=event.step)
    data = event.data
    if event.kind == "metrics":
        proto.metrics.CopyFrom(trainer_pb2.MetricsEvent(phase=data.get("phase", "train"), values=data["values"],
                                                        total_steps=int(data.get("total_steps", 0))))
    elif event.kind == "state":
        error = data.get("error")
        proto.state_change.CopyFrom(trainer_pb2.StateChangeEvent(
            state=job_state_to_proto(JobState(data["state"])), message=data.get("message", ""),
            error=error_to_proto(ErrorInfo(**error)) if error else None))
    elif event.kind == "checkpoint":
        proto.checkpoint_saved.checkpoint.CopyFrom(manifest_to_proto(Manifest.from_json_dict(data)))
    elif event.kind == "rollouts":
        proto.rollouts.CopyFrom(trainer_pb2.RolloutSamplesEvent(round=int(data.get("round", 0)), samples=[
            trainer_pb2.RolloutSample(prompt=sample["prompt"], completions=[
                trainer_pb2.RolloutCompletion(text=c["text"], reward=float(c["reward"]),
                                              rewards={k: float(v) for k, v in c.get("rewards", {}).items()})
                for c in sample["completions"]]) for sample in data.get("samples", [])]))
    else:
        proto.log.CopyFrom(trainer_pb2.LogEvent(level=data.get("level", "info"), message=data.get("message", "")))
    return proto


def dataset_to_proto(dataset: StoredDataset) -> trainer_pb2.Dataset:
    return trainer_pb2.Dataset(id=dataset.id, name=dataset.name, file_format=_FILE_FORMATS[dataset.file_format],
                               size_bytes=dataset.size_bytes, sha256=dataset.sha256,
                               created_at=timestamp(dataset.created_at))


def file_format_from_proto(value: int) -> FileFormat | None:
    """None for FILE_FORMAT_UNSPECIFIED (take it from the file name)."""
    return _FILE_FORMATS_BY_NUMBER.get(value)


def dataset_format_from_proto(value: int) -> DatasetFormat:
    if value not in _DATASET_FORMATS_BY_NUMBER:
        raise InvalidArgument(f"format: unknown dataset format {value}")
    return _DATASET_FORMATS_BY_NUMBER[value]


def validation_to_proto(result: ValidationResult) -> trainer_pb2.ValidationReport:
    return trainer_pb2.ValidationReport(
        ok=result.ok, format=_DATASET_FORMATS[result.format], total_rows=result.total_rows,
        valid_rows=result.valid_rows, bad_rows=result.bad_rows, truncated=result.truncated,
        violations=[common_pb2.FieldViolation(**v.to_dict()) for v in result.violations])
