"""The DPO family (full / LoRA / QLoRA) on TRL's preference trainers, one per `dpo.loss`:

- sigmoid (DPO), ipo, hinge: `DPOTrainer(loss_type=[loss], beta)`. Reference model: with LoRA/QLoRA the
  base with the adapter disabled (TRL's peft path, no second copy); with full training a frozen copy of
  the base that TRL loads itself.
- orpo: `trl.experimental.orpo.ORPOTrainer` (beta is ORPO's lambda); reference-free.
- simpo: `trl.experimental.cpo.CPOTrainer(loss_type="simpo", cpo_alpha=0, simpo_gamma, beta)`; reference-free.
- kto: `KTOTrainer` on unpaired prompt/completion/label rows (preference pairs are unpaired first);
  reference as for DPO.

Data is `prompt`/`chosen`/`rejected` (or `prompt`/`completion`/`label` for KTO), turned into TRL's
conversational form when the tokenizer has a chat template (see `data.load_preference_for_training`).
Metrics stream as TRL logs them: `rewards/chosen`, `rewards/rejected`, `rewards/margins`,
`rewards/accuracies`, `logps/chosen`, `logps/rejected`, ... (TRL's experimental ORPO/CPO trainers log no
`num_tokens`, so those jobs have no `tokens_per_second`). The result is an ADAPTER (LoRA/QLoRA) or a
FULL_CHECKPOINT (full).

`build_dpo_config` and `load_datasets` are what `run` uses, so bench/dpo_throughput.py can run the
identical configuration bare.
"""

from __future__ import annotations

import os

from services.common.errors import InvalidArgument, Violation, invalid_field
from services.trainer.data import DatasetFormat, FileFormat, load_preference_for_training
from services.trainer.training.adapters import describe_loaded_model, load_base_for_training, resolve_precision
from services.trainer.training.callbacks import finish_training, standard_callbacks
from services.trainer.training.common import load_tokenizer, train_and_eval_datasets, training_arguments
from services.trainer.training.context import RecipeContext
from services.trainer.methods.dpo import DpoSpec
from services.trainer.spec import DatasetFile, TrainingSpec

# DPOTrainer's loss_type names for the losses it runs itself.
DPO_TRAINER_LOSSES = ("sigmoid", "ipo", "hinge")


def _experimental(module: str):
    """A trl.experimental submodule, without its import-time notice (we name the trainer in the job log)."""
    import importlib

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    return importlib.import_module(f"trl.experimental.{module}")


def trainer_class(loss: str):
    """The TRL trainer class that runs `loss`."""
    if loss in DPO_TRAINER_LOSSES:
        from trl import DPOTrainer

        return DPOTrainer
    if loss == "orpo":
        return _experimental("orpo").ORPOTrainer
    if loss == "simpo":
        return _experimental("cpo").CPOTrainer
    if loss == "kto":
        from trl import KTOTrainer

        return KTOTrainer
    raise invalid_field("dpo.loss", f"unknown loss {loss!r}", "use sigmoid, ipo, hinge, orpo, simpo or kto")


def build_dpo_config(spec: TrainingSpec, output_dir: str, device: str, has_eval: bool):
    """The TRL config for the spec's loss: DPOConfig, ORPOConfig, CPOConfig (SimPO) or KTOConfig.

    Also used by bench/ to run the identical configuration bare. `max_length` is prompt + response
    (`hyperparameters.max_seq_length`). Raises InvalidArgument for KTO with batch_size 1.
    """
    hyper = spec.hyperparameters
    method: DpoSpec = spec.method_spec
    common = dict(**training_arguments(spec, output_dir, device, has_eval), max_length=hyper.max_seq_length,
                  beta=method.beta)
    if method.loss in DPO_TRAINER_LOSSES:
        from trl import DPOConfig

        return DPOConfig(**common, loss_type=[method.loss])
    if method.loss == "orpo":
        return _experimental("orpo").ORPOConfig(**common)
    if method.loss == "simpo":
        # Pure SimPO: no behaviour-cloning (NLL) term, CPO's default weight for it is 1.
        return _experimental("cpo").CPOConfig(**common, loss_type="simpo", cpo_alpha=0.0,
                                              simpo_gamma=method.simpo_gamma)
    if method.loss == "kto":
        if hyper.batch_size < 2:
            raise invalid_field("hyperparameters.batch_size", "KTO estimates its KL term from mismatched "
                                "prompt/completion pairs within a batch, so a batch needs at least 2 rows",
                                "use batch_size 2 or more")
        from trl import KTOConfig

        return KTOConfig(**common)
    raise invalid_field("dpo.loss", f"unknown loss {method.loss!r}", "use sigmoid, ipo, hinge, orpo, simpo or kto")


def load_datasets(spec: TrainingSpec, cache_dir: str, conversational: bool):
    """Train and (optional) eval datasets in TRL's form: prompt/chosen/rejected, or for KTO
    prompt/completion/label (preference pairs are unpaired with trl's `unpair_preference_dataset`:
    chosen -> label true, rejected -> label false, then shuffled with the job's seed)."""
    method: DpoSpec = spec.method_spec

    def load(dataset: DatasetFile):
        ds = load_preference_for_training(dataset.path, FileFormat(dataset.file_format), DatasetFormat(dataset.format),
                                          conversational=conversational, cache_dir=cache_dir)
        if method.loss == "kto" and "chosen" in ds.column_names:
            from trl.data_utils import unpair_preference_dataset

            # Unpairing lists a batch's chosen rows, then its rejected ones, and KTOTrainer reads rows in
            # order (its KL term pairs neighbours): shuffle (seeded) so batches mix both labels and prompts.
            ds = unpair_preference_dataset(ds).shuffle(seed=spec.hyperparameters.seed)
        elif method.loss != "kto" and "chosen" not in ds.column_names:
            raise invalid_field("dpo.loss", f"dataset {dataset.dataset_id} holds unpaired rows (prompt, completion, "
                                "label), which only the KTO loss trains on",
                                "set dpo.loss to PREFERENCE_LOSS_KTO, or upload prompt/chosen/rejected pairs")
        return ds

    return train_and_eval_datasets(spec, load)


def describe(spec: TrainingSpec) -> str:
    """One log line: which trainer, loss and reference the job uses."""
    method: DpoSpec = spec.method_spec
    trainer = {"orpo": "ORPOTrainer (trl.experimental.orpo)", "simpo": "CPOTrainer (trl.experimental.cpo)",
               "kto": "KTOTrainer"}.get(method.loss, "DPOTrainer")
    if not method.uses_reference:
        reference = "none (reference-free loss)"
    elif spec.adapter.is_peft:
        reference = "the base model with the adapter disabled (no second copy in memory)"
    else:
        reference = "a frozen copy of the base model loaded by TRL (full training)"
    extra = f", simpo_gamma {method.simpo_gamma}, cpo_alpha 0" if method.loss == "simpo" else ""
    return f"preference training: loss {method.loss} on {trainer}, beta {method.beta}{extra}; reference: {reference}"


def run(ctx: RecipeContext) -> str:
    spec = ctx.spec
    method: DpoSpec = spec.method_spec
    base_dir = ctx.store.path_of(spec.base_model_id, "base_model_id")
    tokenizer = load_tokenizer(base_dir)
    conversational = bool(tokenizer.chat_template)

    ctx.log("loading dataset" + ("" if conversational else " (no chat template: plain-text prompts and responses)"))
    train_dataset, eval_dataset = load_datasets(spec, str(ctx.work_dir / "datasets-cache"), conversational)
    ctx.log(describe(spec))
    config = build_dpo_config(spec, str(ctx.work_dir / "trainer"), ctx.device, eval_dataset is not None)
    ctx.log(f"loading {spec.base_model_id} for {spec.adapter.type} training on {ctx.device}")
    precision = resolve_precision(spec.hyperparameters, spec.adapter, ctx.device)
    model, peft_config = load_base_for_training(base_dir, spec.adapter, precision, ctx.device)
    ctx.log(describe_loaded_model(model))
    callbacks, checkpointer = standard_callbacks(ctx, tokenizer)
    # No ref_model: with a peft_config TRL disables the adapter for reference log-probs; with full training
    # DPOTrainer/KTOTrainer load a frozen copy of the base themselves; ORPO and SimPO need none.
    trainer = trainer_class(method.loss)(model=model, args=config, train_dataset=train_dataset,
                                         eval_dataset=eval_dataset, processing_class=tokenizer,
                                         peft_config=peft_config, callbacks=callbacks)
    _check_not_emptied(trainer, spec)
    return finish_training(ctx, trainer, checkpointer, evaluate=eval_dataset is not None)


def _check_not_emptied(trainer, spec: TrainingSpec) -> None:
    """TRL drops examples whose prompt alone fills max_length; fail clearly if that left nothing to train on."""
    if trainer.train_dataset is not None and len(trainer.train_dataset) == 0:
        raise InvalidArgument(
            f"hyperparameters.max_seq_length: every prompt is at least {spec.hyperparameters.max_seq_length} tokens "
            "long, so no response token is left to train on",
            [Violation(0, "hyperparameters.max_seq_length", "every example's prompt fills max_seq_length",
                       "raise max_seq_length or shorten the prompts")])
