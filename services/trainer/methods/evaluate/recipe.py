"""Evaluate jobs: score a model, or a model with one of its LoRA adapters, from the store on a dataset.

    (started by the Evaluate RPC; the worker calls run(ctx) with spec.method == "evaluate")

* TEXT rows: perplexity of each row's text (truncated to the model's context), over all rows.
* SFT rows (messages, alpaca, sharegpt, prompt/completion): the prompt is every chat message before the
  last assistant turn, rendered with the tokenizer's chat template (generation prompt added); the
  reference is that last assistant message. Answers are generated greedily by the engine
  (services/engine, continuous batching over the loaded model), `batch_size` at a time (at most
  `max_new_tokens` each), and scored with services/trainer/evaluation.py.
  "perplexity" on such rows is that of the reference answers (as the chat template renders them, with
  their end-of-turn marker) given the prompts.

Metrics default to perplexity for text and exact_match, f1, bleu, rouge for answers. Progress goes out as
"eval" metrics events (values: progress 0-1, eta_seconds), the job stops between batches when asked, and
the results end in one last metrics event, in the evaluated entry's manifest (the adapter when there is
one, else the model) and in <work_dir>/predictions.jsonl (every prompt, reference and prediction).
Raises InvalidArgument (metric that the rows cannot give), FailedPrecondition (no chat template, adapter
that does not fit the model), NotFound.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field

from services.common.errors import FailedPrecondition, InvalidArgument, Violation, invalid_field
from services.engine.backends.base import LoadOptions
from services.engine.backends.transformers_backend import TransformersBackend
from services.engine.batch import generate_all
from services.engine.sampling import SamplingConfig
from services.trainer.data import DatasetFormat, FileFormat, detect_format, iter_rows, to_messages
from services.trainer.data.formats import EVALUATE_FORMATS
from services.trainer.data.reader import parse_json_cell
from services.trainer.evaluation import GENERATION_METRICS, score_generations
from services.trainer.evaluation import perplexity as perplexity_of
from services.trainer.methods.evaluate import EvaluateSpec
from services.trainer.spec import DatasetFile
from services.trainer.training.common import load_tokenizer
from services.trainer.training.context import Cancelled, RecipeContext

DEFAULT_TEXT_METRICS = ("perplexity",)
DEFAULT_ANSWER_METRICS = ("exact_match", "f1", "bleu", "rouge")
# Context length assumed when neither the model config nor the tokenizer names one.
FALLBACK_CONTEXT = 2048
SAMPLE_LOG_ROWS = 3


@dataclass
class Sample:
    """One row to score: `text` for text rows; `prompt` (chat messages) and `reference` for answers."""

    row: int
    text: str = ""
    prompt: list[dict] = field(default_factory=list)
    reference: str = ""


# ------------------------------------------------------------------------------------------- data


def read_samples(dataset: DatasetFile, fmt: DatasetFormat, max_samples: int = 0) -> tuple[list[Sample], int]:
    """The rows to score (the first `max_samples` when > 0) and how many rows were skipped because they
    have no assistant answer after a prompt. Rows that cannot be read are skipped (validation reported them)."""
    file_format = FileFormat(dataset.file_format)
    samples: list[Sample] = []
    skipped = 0
    for row_number, row in iter_rows(dataset.path, file_format):
        if not isinstance(row, dict):
            continue
        if file_format is FileFormat.CSV:
            row = {k: parse_json_cell(v) for k, v in row.items() if v not in (None, "")}
        if fmt is DatasetFormat.TEXT:
            samples.append(Sample(row=row_number, text=str(row["text"])))
        else:
            messages = to_messages(row, fmt)
            last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=0)
            if last == 0:
                skipped += 1
                continue
            samples.append(Sample(row=row_number, prompt=messages[:last], reference=messages[last]["content"]))
        if max_samples and len(samples) >= max_samples:
            break
    return samples, skipped


def resolve_format(dataset: DatasetFile, config: EvaluateSpec) -> DatasetFormat:
    """The rows' format: the one validation detected, else the request's, else detected from the first row."""
    for name in (dataset.format, config.format):
        if name and name != DatasetFormat.AUTO.value:
            return DatasetFormat(name)
    for _, row in iter_rows(dataset.path, FileFormat(dataset.file_format)):
        found = detect_format(row, EVALUATE_FORMATS) if isinstance(row, dict) else None
        if found is not None:
            return found
    raise invalid_field("format", "cannot detect the dataset's format",
                        "use text rows, or messages / alpaca / sharegpt / prompt-completion rows")


def resolve_metrics(config: EvaluateSpec, fmt: DatasetFormat) -> list[str]:
    """The requested metrics, or the defaults for the format. InvalidArgument when text rows are asked for
    a metric that needs reference answers."""
    if not config.metrics:
        return list(DEFAULT_TEXT_METRICS if fmt is DatasetFormat.TEXT else DEFAULT_ANSWER_METRICS)
    if fmt is DatasetFormat.TEXT:
        bad = [(i, m) for i, m in enumerate(config.metrics) if m != "perplexity"]
        if bad:
            raise InvalidArgument(
                f"metrics: {', '.join(m for _, m in bad)} need reference answers, and text rows have none",
                [Violation(0, f"metrics[{i}]", f"{m!r} needs reference answers",
                           "use perplexity on text rows, or a dataset of prompts with answers "
                           "(messages, alpaca, sharegpt, prompt/completion)") for i, m in bad])
    return list(config.metrics)


# ------------------------------------------------------------------------------------------ model


def load_model(ctx: RecipeContext, config: EvaluateSpec):
    """(model in eval mode on ctx.device, dtype name): the base, with the adapter when given."""
    import torch
    from transformers import AutoModelForCausalLM

    base_dir = ctx.store.path_of(ctx.spec.base_model_id, "model_id")
    dtype = torch.float32
    if ctx.device == "cuda" and torch.cuda.is_bf16_supported():
        dtype = torch.bfloat16
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=dtype)
    if config.adapter_id:
        from peft import PeftModel

        adapter_dir = ctx.store.path_of(config.adapter_id, "adapter_id")
        try:
            model = PeftModel.from_pretrained(model, adapter_dir)
        except (ValueError, RuntimeError, KeyError) as exc:
            raise FailedPrecondition(f"adapter_id: {config.adapter_id!r} cannot be applied to "
                                     f"{ctx.spec.base_model_id!r}: {exc}") from exc
    model.to(ctx.device)
    model.eval()
    return model, str(dtype).removeprefix("torch.")


def context_length(model, tokenizer) -> int:
    """Tokens the model attends over: its config's max_position_embeddings (or n_positions), else the
    tokenizer's model_max_length when that is a real limit, else FALLBACK_CONTEXT."""
    config = model.config
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    limit = getattr(tokenizer, "model_max_length", 0) or 0
    return int(limit) if 0 < limit < 1_000_000 else FALLBACK_CONTEXT


def render_prompt(tokenizer, messages: list[dict]) -> str:
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def answer_text(tokenizer, sample: Sample, prompt_text: str) -> str:
    """The reference answer as the chat template renders it after the prompt (end-of-turn marker included);
    the bare reference when the template renders the prompt differently inside a full conversation."""
    full = tokenizer.apply_chat_template(sample.prompt + [{"role": "assistant", "content": sample.reference}],
                                         tokenize=False)
    return full[len(prompt_text):] if full.startswith(prompt_text) else sample.reference


# ------------------------------------------------------------------------------------------ scoring


def nll_of_batch(model, batch: list[tuple[list[int], int]], pad_id: int, device: str) -> tuple[float, int]:
    """(summed NLL, scored tokens) of a batch of (token ids, first scored position >= 1): each position
    from the first scored one on is predicted from the tokens before it. Right-padded; logits are
    upcast to float32 one row at a time."""
    import torch
    import torch.nn.functional as F

    width = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    for i, (ids, start) in enumerate(batch):
        row = torch.tensor(ids, dtype=torch.long)
        input_ids[i, :len(ids)] = row
        attention[i, :len(ids)] = 1
        labels[i, start:len(ids)] = row[start:]
    with torch.no_grad():
        logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits
    labels = labels.to(logits.device)
    total, count = 0.0, 0
    for i in range(len(batch)):
        targets = labels[i, 1:]
        total += F.cross_entropy(logits[i, :-1].float(), targets, ignore_index=-100, reduction="sum").item()
        count += int((targets != -100).sum().item())
    return total, count


class Progress:
    """Emits "eval" metrics events: progress 0-1 and an ETA, one per batch."""

    def __init__(self, ctx: RecipeContext, total_batches: int):
        self.ctx = ctx
        self.total = max(total_batches, 1)
        self.done = 0
        self.started = time.monotonic()

    def check_stop(self) -> None:
        if self.ctx.should_stop():
            raise Cancelled()

    def advance(self) -> None:
        self.done += 1
        elapsed = time.monotonic() - self.started
        eta = elapsed / self.done * (self.total - self.done)
        self.ctx.emit("metrics", {"phase": "eval", "values": {"progress": self.done / self.total, "eta_seconds": eta},
                                  "total_steps": self.total}, self.done)


def _pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def _batches(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _clip(text: str, limit: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


# ------------------------------------------------------------------------------------------- recipe


def run(ctx: RecipeContext) -> str:
    spec = ctx.spec
    config: EvaluateSpec = spec.method_spec
    fmt = resolve_format(spec.dataset, config)
    metrics = resolve_metrics(config, fmt)
    generation_metrics = [m for m in metrics if m in GENERATION_METRICS]
    target_id = config.adapter_id or spec.base_model_id

    samples, skipped = read_samples(spec.dataset, fmt, config.max_samples)
    if skipped:
        ctx.log(f"{skipped} rows have no assistant answer after a prompt and are not scored", level="warning")
    if not samples:
        raise invalid_field("dataset_id", "no rows to score", "the dataset needs at least one valid row")
    ctx.log(f"scoring {target_id} on {len(samples)} {fmt.value} rows: {', '.join(metrics)}")

    # Adapters carry no tokenizer of their own (training with new tokens saves merged full weights instead).
    tokenizer = load_tokenizer(ctx.store.path_of(spec.base_model_id, "model_id"))
    if fmt is not DatasetFormat.TEXT and not tokenizer.chat_template:
        raise FailedPrecondition(f"model_id: {spec.base_model_id!r} has no chat template, so prompts cannot be "
                                 "rendered; evaluate it on text rows (perplexity) or use a chat model")
    model, dtype = load_model(ctx, config)
    context = context_length(model, tokenizer)
    ctx.log(f"model loaded on {ctx.device} ({dtype}, context {context} tokens)")

    batch_size = config.batch_size
    want_ppl = "perplexity" in metrics
    prompts_text = [render_prompt(tokenizer, s.prompt) for s in samples] if fmt is not DatasetFormat.TEXT else []
    batches = (math.ceil(len(samples) / batch_size) if generation_metrics else 0) + (
        math.ceil(len(samples) / batch_size) if want_ppl else 0)
    progress = Progress(ctx, batches)
    results: dict[str, float] = {}
    predictions: list[str] = []

    if generation_metrics:
        predictions = _generate_all(ctx, model, tokenizer, prompts_text, config, context, progress)
        results.update(score_generations(predictions, [s.reference for s in samples], generation_metrics))
    if want_ppl:
        results["perplexity"] = _perplexity(ctx, model, tokenizer, samples, prompts_text, fmt, context, batch_size,
                                            progress)

    _write_predictions(ctx, samples, prompts_text, predictions)
    for sample, prediction in list(zip(samples, predictions))[:SAMPLE_LOG_ROWS]:
        ctx.log(f"row {sample.row}: reference {_clip(sample.reference)!r} prediction {_clip(prediction)!r}")
    ctx.emit("metrics", {"phase": "eval", "values": {**results, "progress": 1.0, "samples": float(len(samples))},
                         "total_steps": progress.total}, progress.total)
    ctx.store.add_evaluation(target_id, job_id=spec.job_id, dataset_id=spec.dataset.dataset_id, metrics=results,
                             samples=len(samples))
    summary = ", ".join(f"{name} {value:.4g}" for name, value in results.items())
    ctx.log(f"evaluation of {target_id} on {spec.dataset.dataset_id} ({len(samples)} rows): {summary}")
    return target_id


def _generate_all(ctx, model, tokenizer, prompts_text: list[str], config: EvaluateSpec, context: int,
                  progress: Progress) -> list[str]:
    """Predictions in row order, generated greedily by the engine over the loaded model. Prompts go
    `batch_size` at a time, by length (less padding), left-truncated so the prompt plus max_new_tokens
    fits the context."""
    budget = max(1, context - config.max_new_tokens)
    prompts = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in prompts_text]
    truncated = sum(len(p) > budget for p in prompts)
    prompts = [p[-budget:] for p in prompts]
    if truncated:
        ctx.log(f"{truncated} prompts were cut to their last {budget} tokens to fit the context", level="warning")
    greedy = SamplingConfig(temperature=0.0, max_new_tokens=config.max_new_tokens)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    predictions: list[str] = [""] * len(prompts)
    with TransformersBackend.from_model(model, tokenizer, LoadOptions(max_batch_size=config.batch_size)) as backend:
        for indices in _batches(order, config.batch_size):
            progress.check_stop()
            answers = generate_all(backend, [prompts[i] for i in indices], greedy, should_stop=ctx.should_stop)
            for i, (answer,) in zip(indices, answers):
                predictions[i] = answer.text.strip()
            progress.advance()
    progress.check_stop()
    return predictions


def _perplexity(ctx, model, tokenizer, samples: list[Sample], prompts_text: list[str], fmt: DatasetFormat,
                context: int, batch_size: int, progress: Progress) -> float:
    """Perplexity over every row: of the text (text rows) or of the reference answer given the prompt."""
    items: list[tuple[list[int], int]] = []
    truncated = 0
    for index, sample in enumerate(samples):
        if fmt is DatasetFormat.TEXT:
            ids = tokenizer(sample.text)["input_ids"]
            truncated += len(ids) > context
            items.append((ids[:context], 1))
            continue
        prompt = tokenizer(prompts_text[index], add_special_tokens=False)["input_ids"]
        answer = tokenizer(answer_text(tokenizer, sample, prompts_text[index]), add_special_tokens=False)["input_ids"]
        if len(prompt) + len(answer) > context:
            truncated += 1
            answer = answer[:context - 1]
            prompt = prompt[-(context - len(answer)):]
        items.append((prompt + answer, max(1, len(prompt))))
    if truncated:
        ctx.log(f"{truncated} rows were longer than the context ({context} tokens) and were truncated",
                level="warning")
    pad_id = _pad_id(tokenizer)
    total_nll, total_tokens = 0.0, 0
    for batch in _batches(items, batch_size):
        progress.check_stop()
        scored = [item for item in batch if len(item[0]) > item[1]]
        if scored:
            nll, count = nll_of_batch(model, scored, pad_id, ctx.device)
            total_nll, total_tokens = total_nll + nll, total_tokens + count
        progress.advance()
    if total_tokens == 0:
        raise invalid_field("dataset_id", "no tokens to score for perplexity",
                            "text rows need at least two tokens each")
    return perplexity_of(total_nll, total_tokens)


def _write_predictions(ctx: RecipeContext, samples: list[Sample], prompts_text: list[str],
                       predictions: list[str]) -> None:
    if not predictions:
        return
    path = ctx.work_dir / "predictions.jsonl"
    with path.open("w", encoding="utf-8") as f:
        for sample, prompt, prediction in zip(samples, prompts_text, predictions):
            f.write(json.dumps({"row": sample.row, "prompt": prompt, "reference": sample.reference,
                                "prediction": prediction}, ensure_ascii=False) + "\n")
