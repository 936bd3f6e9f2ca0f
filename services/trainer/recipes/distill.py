"""Distillation: a teacher model from the store teaches a student (full / LoRA / QLoRA).

Two modes (DistillConfig.mode):

* offline (the DeepSeek-R1 -> small model recipe): the teacher answers every prompt of the prompt-only
  dataset through the inference service's own generation code (ModelRegistry + backend +
  `generation.generate`, so the answers are exactly what serving the teacher would return: same chat
  template, sampling, stop handling; vLLM on CUDA when installed, else transformers). The teacher is then
  freed and the student is fine-tuned with SFTTrainer on (prompt, teacher answer), loss on the answer
  only. Temperature 0 (the default) = greedy answers. The teacher and student may have different
  tokenizers and architectures.
* on_policy (logit distillation, TRL's GKDTrainer): the student is trained to match the teacher's
  next-token distribution (generalised JSD, `beta`) on sequences the student samples (share `lmbda`)
  or the teacher samples (the rest; GKD's `seq_kd`, since prompt-only data has no reference answers).
  Needs the same tokenizer for both: refused with FAILED_PRECONDITION otherwise (use offline mode).
  Sampling uses `temperature` when it is > 0, else GKD's default 0.9.

Raises InvalidArgument (no chat template, no teacher answer at all), FailedPrecondition (tokenizers
differ in on-policy mode), Cancelled.
"""

from __future__ import annotations

import gc
import threading
from concurrent.futures import ThreadPoolExecutor

from services.common.errors import FailedPrecondition, InvalidArgument
from services.trainer.data import FileFormat, iter_rows
from services.trainer.recipes.adapters import describe_loaded_model, load_base_for_training, resolve_precision
from services.trainer.recipes.callbacks import finish_training, standard_callbacks
from services.trainer.recipes.common import load_tokenizer, training_arguments
from services.trainer.recipes.context import Cancelled, RecipeContext
from services.trainer.spec import DatasetFile, DistillConfig, TrainingSpec

GKD_DEFAULT_TEMPERATURE = 0.9
TEACHER_BATCH = 16  # concurrent teacher requests (the backend batches them continuously)
LOGGED_ANSWERS = 3


# ------------------------------------------------------------------------------------------ prompts


def as_messages(prompt) -> list[dict]:
    """A prompt cell (a string, or a list of chat messages ending with the user turn) as chat messages."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [{"role": m["role"], "content": m["content"]} for m in prompt]


def prompt_rows(dataset: DatasetFile) -> list[dict]:
    """Every row of a validated prompt-only dataset, with `prompt` as chat messages (other columns kept)."""
    rows = []
    for _, row in iter_rows(dataset.path, FileFormat(dataset.file_format)):
        if not isinstance(row, dict):  # validation already refused broken rows; never train on one
            continue
        rows.append({**row, "prompt": as_messages(row["prompt"])})
    return rows


def prompt_text(messages: list[dict]) -> str:
    """A chat prompt as one line of text, for logs and rollout samples (the last user message)."""
    return messages[-1]["content"] if messages else ""


# ------------------------------------------------------------------------------------------ teacher


def _choose_backend(ctx: RecipeContext) -> str:
    import importlib.util

    return "vllm" if ctx.device == "cuda" and importlib.util.find_spec("vllm") is not None else "transformers"


def teacher_answers(ctx: RecipeContext, teacher_id: str, prompts: list[list[dict]], *, max_new_tokens: int,
                    temperature: float, seed: int) -> list[str]:
    """The teacher's answer to each prompt, generated through the inference service's generation code.

    Requests run concurrently so the backend batches them; each request is seeded (seed + index), so a
    sampled run is reproducible. The teacher is unloaded (memory freed) before this returns.
    """
    from services.inference.backends.base import LoadOptions
    from services.inference.generation import Finished, generate
    from services.inference.registry import ModelRegistry
    from services.inference.sampling import SamplingConfig

    registry = ModelRegistry(ctx.store, default_options=LoadOptions(max_batch_size=TEACHER_BATCH),
                             max_requests_per_model=TEACHER_BATCH)
    backend = _choose_backend(ctx)
    try:
        try:
            registry.load(teacher_id, backend)
        except Exception as exc:  # noqa: BLE001 - vLLM is an optimisation: fall back to transformers
            if backend == "transformers":
                raise
            ctx.log(f"vLLM could not load the teacher ({exc}); generating with transformers", "warning")
            backend = "transformers"
            registry.load(teacher_id, backend)
        ctx.log(f"teacher {teacher_id} loaded ({backend}); answering {len(prompts)} prompts")
        done = [0]
        lock = threading.Lock()
        step_every = max(1, len(prompts) // 10)

        def answer(index: int) -> str:
            if ctx.should_stop():
                return ""
            sampling = SamplingConfig(temperature=temperature, max_new_tokens=max_new_tokens, seed=seed + index)
            text = ""
            for item in generate(registry, teacher_id, messages=prompts[index], text=None, adapter_id="",
                                 sampling=sampling, is_active=lambda: not ctx.should_stop()):
                if isinstance(item, Finished):
                    text = item.text
            with lock:
                done[0] += 1
                if done[0] % step_every == 0 or done[0] == len(prompts):
                    ctx.log(f"teacher answered {done[0]}/{len(prompts)} prompts")
            return text

        with ThreadPoolExecutor(max_workers=TEACHER_BATCH, thread_name_prefix="teacher") as pool:
            answers = list(pool.map(answer, range(len(prompts))))
    finally:
        registry.close()
        gc.collect()
        _empty_cuda_cache()
    if ctx.should_stop():
        raise Cancelled()
    return answers


def _empty_cuda_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------------ recipe


def run(ctx: RecipeContext) -> str:
    spec = ctx.spec
    config: DistillConfig = spec.method_config
    base_dir = ctx.store.path_of(spec.base_model_id, "base_model_id")
    tokenizer = load_tokenizer(base_dir)
    if not tokenizer.chat_template:
        raise InvalidArgument(f"base_model_id: {spec.base_model_id!r} has no chat template; distillation trains "
                              "on chat prompts (use an instruct/chat model or one whose tokenizer defines it)")
    rows = prompt_rows(spec.dataset)
    eval_rows = prompt_rows(spec.eval_dataset) if spec.eval_dataset else []
    if config.mode == "on_policy":
        return _run_on_policy(ctx, config, tokenizer, rows, eval_rows)
    return _run_offline(ctx, config, tokenizer, rows, eval_rows)


def _sft_trainer_parts(ctx: RecipeContext, tokenizer, has_eval: bool, config_class=None, **extra):
    """(model, peft_config, TRL config, callbacks, checkpointer) for fine-tuning the student."""
    spec = ctx.spec
    precision = resolve_precision(spec.hyperparameters, spec.adapter, ctx.device)
    ctx.log(f"loading student {spec.base_model_id} for {spec.adapter.type} training on {ctx.device}")
    model, peft_config = load_base_for_training(ctx.store.path_of(spec.base_model_id), spec.adapter, precision,
                                                ctx.device)
    ctx.log(describe_loaded_model(model))
    if config_class is None:
        from trl import SFTConfig as config_class
    args = config_class(**training_arguments(spec, str(ctx.work_dir / "trainer"), ctx.device, has_eval),
                        max_length=spec.hyperparameters.max_seq_length, **extra)
    callbacks, checkpointer = standard_callbacks(ctx, tokenizer)
    return model, peft_config, args, callbacks, checkpointer


def _split(spec: TrainingSpec, examples: list[dict], eval_examples: list[dict]):
    """(train, eval or None) datasets: the eval prompts, or a seeded `eval.split_ratio` hold-out."""
    import datasets

    train = datasets.Dataset.from_list(examples)
    if eval_examples:
        return train, datasets.Dataset.from_list(eval_examples)
    if spec.eval.split_ratio > 0:
        if len(train) < 2:
            raise InvalidArgument("eval.split_ratio: the dataset has too few prompts to hold some out")
        split = train.train_test_split(test_size=spec.eval.split_ratio, seed=spec.hyperparameters.seed)
        return split["train"], split["test"]
    return train, None


def _run_offline(ctx: RecipeContext, config: DistillConfig, tokenizer, rows: list[dict],
                 eval_rows: list[dict]) -> str:
    from trl import SFTTrainer

    spec = ctx.spec
    prompts = [row["prompt"] for row in rows + eval_rows]
    answers = teacher_answers(ctx, config.teacher_model_id, prompts, max_new_tokens=config.max_new_tokens,
                              temperature=config.temperature, seed=spec.hyperparameters.seed)
    for messages, answer in list(zip(prompts, answers))[:LOGGED_ANSWERS]:
        ctx.log(f"teacher: {prompt_text(messages)[:200]!r} -> {answer[:200]!r}")
    examples = [{"prompt": messages, "completion": [{"role": "assistant", "content": answer}]}
                for messages, answer in zip(prompts, answers)]
    kept = [i for i, answer in enumerate(answers) if answer.strip()]
    if len(kept) < len(answers):
        ctx.log(f"{len(answers) - len(kept)} of {len(answers)} teacher answers are empty; training without them",
                "warning")
    train_examples = [examples[i] for i in kept if i < len(rows)]
    eval_examples = [examples[i] for i in kept if i >= len(rows)]
    if not train_examples:
        raise InvalidArgument(f"distill.teacher_model_id: {config.teacher_model_id!r} gave an empty answer to every "
                              "prompt; check the teacher (and its chat template) or raise distill.max_new_tokens")
    train, evaluation = _split(spec, train_examples, eval_examples)
    model, peft_config, args, callbacks, checkpointer = _sft_trainer_parts(
        ctx, tokenizer, evaluation is not None, packing=spec.hyperparameters.packing, completion_only_loss=True)
    trainer = SFTTrainer(model=model, args=args, train_dataset=train, eval_dataset=evaluation,
                         processing_class=tokenizer, peft_config=peft_config, callbacks=callbacks)
    return finish_training(ctx, trainer, checkpointer, evaluate=evaluation is not None)


def check_same_tokenizer(student_tokenizer, teacher_tokenizer, teacher_id: str, student_id: str) -> None:
    """GKD compares full next-token distributions position by position: both models must map the same
    token ids to the same strings. Raises FailedPrecondition naming the fix otherwise."""
    student_vocab, teacher_vocab = student_tokenizer.get_vocab(), teacher_tokenizer.get_vocab()
    if student_vocab != teacher_vocab:
        differing = len(set(student_vocab.items()) ^ set(teacher_vocab.items()))
        raise FailedPrecondition(
            f"distill.teacher_model_id: {teacher_id!r} and the student {student_id!r} have different tokenizers "
            f"({len(teacher_vocab)} vs {len(student_vocab)} tokens, {differing} entries differ); on-policy (logit) "
            "distillation needs a shared vocabulary: use DISTILL_MODE_OFFLINE (the student learns from the "
            "teacher's generated text), or a teacher of the student's model family")


def _run_on_policy(ctx: RecipeContext, config: DistillConfig, tokenizer, rows: list[dict],
                   eval_rows: list[dict]) -> str:
    import torch
    from transformers import AutoModelForCausalLM
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    spec = ctx.spec
    teacher_dir = ctx.store.path_of(config.teacher_model_id, "distill.teacher_model_id")
    check_same_tokenizer(tokenizer, load_tokenizer(teacher_dir), config.teacher_model_id, spec.base_model_id)
    # GKD's collator renders `messages`: the prompt plus an empty assistant turn. Every step replaces that
    # turn with a student (share lmbda) or teacher (seq_kd) generation, so the placeholder is never trained on.
    def to_example(row: dict) -> dict:
        return {"messages": row["prompt"] + [{"role": "assistant", "content": ""}]}

    train, evaluation = _split(spec, [to_example(r) for r in rows], [to_example(r) for r in eval_rows])
    temperature = config.temperature if config.temperature > 0 else GKD_DEFAULT_TEMPERATURE
    model, peft_config, args, callbacks, checkpointer = _sft_trainer_parts(
        ctx, tokenizer, evaluation is not None, config_class=GKDConfig, lmbda=config.lmbda, beta=config.beta,
        max_new_tokens=config.max_new_tokens, temperature=temperature, seq_kd=True)
    dtype = torch.bfloat16 if ctx.device == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    ctx.log(f"loading teacher {config.teacher_model_id} for on-policy distillation (lmbda {config.lmbda}, "
            f"beta {config.beta}, temperature {temperature})")
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=dtype)
    if ctx.device == "cuda":
        teacher.to("cuda")
    trainer = GKDTrainer(model=model, teacher_model=teacher, args=args, train_dataset=train,
                         eval_dataset=evaluation, processing_class=tokenizer, peft_config=peft_config,
                         callbacks=callbacks)
    return finish_training(ctx, trainer, checkpointer, evaluate=evaluation is not None)
