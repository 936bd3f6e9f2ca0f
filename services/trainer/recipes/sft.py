"""Supervised fine-tuning (full / LoRA / QLoRA) on TRL's SFTTrainer.

Every SFT format (messages, alpaca, sharegpt, prompt/completion) is first turned into TRL's
conversational prompt/completion form, one example per assistant turn, so the tokenizer's own chat
template renders it and the loss covers only completion tokens unless `train_on_prompt` is set.
"""

from __future__ import annotations

from services.common.errors import InvalidArgument
from services.trainer.data import DatasetFormat, FileFormat, load_for_training
from services.trainer.recipes.adapters import describe_loaded_model, load_base_for_training, resolve_precision
from services.trainer.recipes.callbacks import standard_callbacks
from services.trainer.recipes.context import Cancelled, RecipeContext
from services.trainer.spec import DatasetFile, SftConfig, TrainingSpec


def build_sft_config(spec: TrainingSpec, output_dir: str, device: str, has_eval: bool):
    """The SFTConfig for a spec; also used by bench/ to run the identical configuration bare."""
    from trl import SFTConfig

    hyper = spec.hyperparameters
    method: SftConfig = spec.method_config
    precision = resolve_precision(hyper, spec.adapter, device)
    eval_kwargs = {}
    if has_eval:
        every = spec.eval.every_steps
        eval_kwargs = {"eval_strategy": "steps" if every else "no", "eval_steps": every or None,
                       "per_device_eval_batch_size": hyper.batch_size}
    return SFTConfig(
        output_dir=output_dir,
        save_strategy="no",  # checkpoints go to the store through our callback, not to output_dir
        report_to=[],
        disable_tqdm=True,
        logging_steps=hyper.logging_steps,
        logging_first_step=True,
        num_train_epochs=hyper.num_epochs,
        max_steps=hyper.max_steps or -1,
        learning_rate=hyper.learning_rate,
        lr_scheduler_type=hyper.lr_scheduler,
        warmup_steps=hyper.warmup_ratio if hyper.warmup_ratio > 0 else hyper.warmup_steps,
        per_device_train_batch_size=hyper.batch_size,
        gradient_accumulation_steps=hyper.gradient_accumulation_steps,
        max_length=hyper.max_seq_length,
        packing=hyper.packing,
        seed=hyper.seed,
        data_seed=hyper.seed,
        weight_decay=hyper.weight_decay,
        max_grad_norm=hyper.max_grad_norm,
        bf16=precision.bf16,
        fp16=precision.fp16,
        use_cpu=device != "cuda",
        gradient_checkpointing=hyper.gradient_checkpointing,
        completion_only_loss=not method.train_on_prompt,
        dataloader_num_workers=0,
        **eval_kwargs,
    )


def load_datasets(spec: TrainingSpec, cache_dir: str):
    """Train and (optional) eval datasets in TRL's conversational prompt/completion form."""
    method: SftConfig = spec.method_config

    def load(dataset: DatasetFile):
        return load_for_training(dataset.path, FileFormat(dataset.file_format), DatasetFormat(dataset.format),
                                 method.default_system_prompt, cache_dir=cache_dir)

    train = load(spec.dataset)
    evaluation = load(spec.eval_dataset) if spec.eval_dataset else None
    if evaluation is None and spec.eval.split_ratio > 0:
        if len(train) < 2:
            raise InvalidArgument("eval.split_ratio: the dataset has too few examples to hold some out")
        split = train.train_test_split(test_size=spec.eval.split_ratio, seed=spec.hyperparameters.seed)
        train, evaluation = split["train"], split["test"]
    return train, evaluation


def run(ctx: RecipeContext) -> str:
    from transformers import AutoTokenizer
    from trl import SFTTrainer

    spec = ctx.spec
    base_dir = ctx.store.path_of(spec.base_model_id, "base_model_id")
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not tokenizer.chat_template:
        raise InvalidArgument(f"base_model_id: {spec.base_model_id!r} has no chat template; SFT on chat data "
                              "needs one (use an instruct/chat model or one whose tokenizer defines it)")

    ctx.log("loading dataset")
    train_dataset, eval_dataset = load_datasets(spec, str(ctx.work_dir / "datasets-cache"))
    ctx.log(f"loading {spec.base_model_id} for {spec.adapter.type} training on {ctx.device}")
    precision = resolve_precision(spec.hyperparameters, spec.adapter, ctx.device)
    model, peft_config = load_base_for_training(base_dir, spec.adapter, precision, ctx.device)
    ctx.log(describe_loaded_model(model))
    config = build_sft_config(spec, str(ctx.work_dir / "trainer"), ctx.device, eval_dataset is not None)
    callbacks, checkpointer = standard_callbacks(ctx, tokenizer)
    trainer = SFTTrainer(model=model, args=config, train_dataset=train_dataset, eval_dataset=eval_dataset,
                         processing_class=tokenizer, peft_config=peft_config, callbacks=callbacks)
    trainer.train()
    if ctx.should_stop():
        raise Cancelled()
    if eval_dataset is not None:
        trainer.evaluate()
    return checkpointer.save(trainer.model, trainer.state.global_step, is_final=True).id
