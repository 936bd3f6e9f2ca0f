"""Full / LoRA / QLoRA resolved in one place (DESIGN.md §5.2): base model loading, quantization, peft.

Recipes call `load_base_for_training` and hand the returned `peft_config` to their TRL trainer, which
wraps the model (and prepares a k-bit base for training) itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from services.common.errors import FailedPrecondition, InvalidArgument
from services.trainer.spec import AdapterSpec, Hyperparameters


@dataclass
class Precision:
    bf16: bool
    fp16: bool
    # dtype 4-bit layers compute in (QLoRA); full-precision weights stay float32 (mixed precision).
    compute_dtype: str


def resolve_precision(hyper: Hyperparameters, adapter: AdapterSpec, device: str) -> Precision:
    """auto: bf16 mixed precision on GPUs that support it, fp32 elsewhere."""
    import torch

    on_cuda = device == "cuda"
    bf16_ok = (torch.cuda.is_bf16_supported() if on_cuda else True)
    precision = hyper.precision
    if precision == "auto":
        precision = "bf16" if on_cuda and bf16_ok else "fp32"
    if precision == "fp16" and not on_cuda:
        raise InvalidArgument("hyperparameters.precision: fp16 is not supported on CPU; use bf16 or fp32")
    if precision == "bf16" and not bf16_ok:
        raise FailedPrecondition("hyperparameters.precision: this GPU has no bf16; use fp16 or fp32")
    compute = adapter.compute_dtype or {"bf16": "bfloat16", "fp16": "float16"}.get(precision, "float32")
    return Precision(bf16=precision == "bf16", fp16=precision == "fp16", compute_dtype=compute)


def load_base_for_training(model_dir: Path, adapter: AdapterSpec, precision: Precision, device: str):
    """Load the base model for the chosen adapter type. Returns (model, peft_config or None)."""
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    kwargs: dict = {"dtype": torch.float32}
    if adapter.type == "qlora":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=adapter.quant_type,
            bnb_4bit_use_double_quant=adapter.double_quant,
            bnb_4bit_compute_dtype=getattr(torch, precision.compute_dtype),
            bnb_4bit_quant_storage=torch.uint8,
        )
        kwargs["device_map"] = {"": 0} if device == "cuda" else "cpu"
    model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
    model.config.use_cache = False
    return model, lora_config(adapter) if adapter.is_peft else None


def describe_loaded_model(model) -> str:
    """One log line: size, memory footprint and how the weights are held (e.g. "nf4 4-bit")."""
    quantization = "none"
    if getattr(model, "is_loaded_in_4bit", False):
        quantization = f"{model.config.quantization_config.bnb_4bit_quant_type} 4-bit"
    elif getattr(model, "is_loaded_in_8bit", False):
        quantization = "int8"
    parameters = sum(p.numel() for p in model.parameters())
    return (f"base model loaded: {parameters / 1e6:.1f}M parameters, {model.get_memory_footprint() / 2**20:.1f} MiB, "
            f"quantization: {quantization}")


def lora_config(adapter: AdapterSpec, task_type: str = "CAUSAL_LM"):
    """peft LoraConfig; task_type "SEQ_CLS" (reward models) also trains the new score head."""
    from peft import LoraConfig

    return LoraConfig(
        r=adapter.rank,
        lora_alpha=adapter.alpha,
        lora_dropout=adapter.dropout,
        target_modules=adapter.target_modules or "all-linear",
        task_type=task_type,
    )
