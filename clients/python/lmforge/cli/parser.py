"""The argument parser of `lmforge`: global options, then one subcommand per action of the two services. Choice
lists (methods, losses, adapter types, quantizations, backends, checkpoint kinds, states, dataset formats) come
from the proto descriptors through lmforge.cli.choices."""

from __future__ import annotations

import argparse
import os

from lmforge.cli import inference_commands as inference
from lmforge.cli import trainer_commands as trainer
from lmforge.cli.choices import (
    ADAPTER_TYPES,
    BACKENDS,
    CHECKPOINT_KINDS,
    DATASET_FORMATS,
    JOB_STATES,
    METHOD_CHOICES,
    METHODS,
    PREFERENCE_LOSSES,
    PREFERENCE_METHODS,
    QUANTIZATIONS,
    REWARD_MODEL_METHODS,
    TEACHER_METHODS,
    VOCABULARY_METHODS,
    one_of,
)
from lmforge.client import DEFAULT_ADDRESS, DEFAULT_INFERENCE_ADDRESS, INFERENCE_ADDRESS_ENV

TRAINER_ADDRESS_ENV = "LMFORGE_TRAINER_ADDRESS"
FORMATS_HELP = one_of(DATASET_FORMATS)


def _global_options(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """--address, --inference-address and --json. On the subcommands (suppress) they default to SUPPRESS, so that
    they work before or after the subcommand and only override what the main parser set when given."""
    def default(value):
        return argparse.SUPPRESS if suppress else value

    parser.add_argument("--address", default=default(os.environ.get(TRAINER_ADDRESS_ENV) or DEFAULT_ADDRESS),
                        help=f"trainer HOST:PORT (default ${TRAINER_ADDRESS_ENV} or {DEFAULT_ADDRESS})")
    parser.add_argument("--inference-address",
                        default=default(os.environ.get(INFERENCE_ADDRESS_ENV) or DEFAULT_INFERENCE_ADDRESS),
                        help=f"inference HOST:PORT (default ${INFERENCE_ADDRESS_ENV} or {DEFAULT_INFERENCE_ADDRESS})")
    parser.add_argument("--json", action="store_true", default=default(False),
                        help="print JSON (one object per line) instead of tables")


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, suppress=True)
    parser = argparse.ArgumentParser(prog="lmforge",
                                     description="Client of the lmforge trainer and inference services.")
    _global_options(parser, suppress=False)
    parser.add_argument("--timeout", type=float, default=None,
                        help="deadline of each unary call, seconds (default 30 trainer, 60 inference)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_train(sub, common)
    _add_jobs_metrics_checkpoints(sub, common)
    _add_evaluate_and_datasets(sub, common)
    _add_chat(sub, common)
    _add_models_and_tokens(sub, common)
    return parser


def _add_train(sub, common: argparse.ArgumentParser) -> None:
    train = sub.add_parser("train", parents=[common], help="start a training job",
                           description="Start a job from a YAML/JSON request file and/or flags (flags win).")
    train.add_argument("-f", "--file", help="StartTrainingRequest as YAML or JSON (proto field names)")
    train.add_argument("--base-model", help="store id of the model to train")
    train.add_argument("--dataset", help="dataset id, or a local file to upload first")
    train.add_argument("--method", choices=METHOD_CHOICES, help="training method (default sft)")
    train.add_argument("--adapter", choices=tuple(ADAPTER_TYPES), help="which weights to train")
    train.add_argument("--rank", type=int, help="LoRA rank")
    train.add_argument("--alpha", type=float, help="LoRA alpha")
    train.add_argument("--epochs", type=float, help="passes over the data (ignored with --max-steps)")
    train.add_argument("--max-steps", type=int, help="optimizer steps")
    train.add_argument("--lr", type=float, help="peak learning rate")
    train.add_argument("--batch-size", type=int, help="per-device micro-batch")
    train.add_argument("--grad-accum", type=int, help="gradient accumulation steps")
    train.add_argument("--max-seq-length", type=int, help="tokens per example")
    train.add_argument("--packing", action=argparse.BooleanOptionalAction, default=None,
                       help="pack short examples into each sequence")
    train.add_argument("--seed", type=int)
    train.add_argument("--save-every", type=int, help="save a checkpoint every N steps")
    train.add_argument("--eval-split", type=float, help="fraction of rows held out for evaluation")
    train.add_argument("--eval-every", type=int, help="evaluate every N steps (default: only at the end)")
    train.add_argument("--metric-for-best", help="eval metric that marks the best checkpoint (default eval_loss)")
    train.add_argument("--early-stopping-patience", type=int,
                       help="stop after N evaluations without improvement of --metric-for-best")
    preference = one_of(PREFERENCE_METHODS)
    train.add_argument("--beta", type=float,
                       help=f"{preference}: strength of the pull towards the reference (default 0.1)")
    train.add_argument("--loss", choices=tuple(PREFERENCE_LOSSES),
                       help=f"{preference}: the loss of the DPO family (default sigmoid)")
    train.add_argument("--new-token", action="append", metavar="TERM",
                       help=f"{' / '.join(VOCABULARY_METHODS)}: add TERM to the vocabulary as one token (repeatable)")
    train.add_argument("--reward-model", metavar="ID",
                       help=f"{one_of(REWARD_MODEL_METHODS)} (RLOO): store id of the REWARD_MODEL that scores rollouts")
    train.add_argument("--teacher", metavar="ID", help=f"{one_of(TEACHER_METHODS)}: store id of the teacher model")
    train.add_argument("--name", help="display name")
    train.add_argument("--label", action="append", metavar="KEY=VALUE", help="job label (repeatable)")
    train.add_argument("--follow", action="store_true", help="then follow the metrics like `lmforge metrics`")
    train.set_defaults(func=trainer.cmd_train)


def _add_jobs_metrics_checkpoints(sub, common: argparse.ArgumentParser) -> None:
    jobs = sub.add_parser("jobs", parents=[common], help="list, show, cancel, pause or resume jobs")
    jobs_sub = jobs.add_subparsers(dest="jobs_cmd", required=True, metavar="ACTION")
    jl = jobs_sub.add_parser("list", parents=[common], help="jobs, newest first")
    jl.add_argument("--state", action="append",
                    help=f"only jobs in this state: {one_of(JOB_STATES)} (repeatable or comma-separated)")
    jg = jobs_sub.add_parser("get", parents=[common], help="one job in detail")
    jg.add_argument("job_id")
    jc = jobs_sub.add_parser("cancel", parents=[common], help="stop a job")
    jc.add_argument("job_id")
    jp = jobs_sub.add_parser("pause", parents=[common],
                             help="save a running job's full state at the next step and stop it (PAUSED)")
    jp.add_argument("job_id")
    jr = jobs_sub.add_parser("resume", parents=[common],
                             help="continue a PAUSED, FAILED or CANCELLED job from its last full state")
    jr.add_argument("job_id")
    jobs.set_defaults(func=trainer.cmd_jobs)

    metrics = sub.add_parser("metrics", parents=[common], help="follow a job's events until it ends")
    metrics.add_argument("job_id")
    metrics.add_argument("--after", type=int, default=0, help="only events with a sequence above N")
    metrics.add_argument("--no-follow", dest="follow", action="store_false", help="print what exists and stop")
    metrics.add_argument("--samples", action="store_true",
                         help="RL jobs: print rollout samples in full (prompt, each completion, its rewards)")
    metrics.set_defaults(func=trainer.cmd_metrics)

    ckpt = sub.add_parser("checkpoints", parents=[common], help="list checkpoints in the store")
    ckpt.add_argument("--job", help="only this job's")
    ckpt.add_argument("--kind", choices=CHECKPOINT_KINDS)
    ckpt.add_argument("--base-model", help="only those trained from this model")
    ckpt.set_defaults(func=trainer.cmd_checkpoints)


def _add_evaluate_and_datasets(sub, common: argparse.ArgumentParser) -> None:
    ev = sub.add_parser(
        "evaluate", parents=[common], help="score a model or adapter on a dataset (an Evaluate job)",
        description="Text rows give perplexity; prompt/answer rows are answered greedily and compared with "
                    "their reference. Results land in the entry's manifest (`lmforge checkpoints`).")
    ev.add_argument("model_id", metavar="MODEL", help="store id of the model (or of an adapter) to score")
    ev.add_argument("--dataset", required=True, help="dataset id, or a local file to upload first")
    ev.add_argument("--adapter", help="store id of a LoRA adapter trained on MODEL")
    ev.add_argument("--metric", action="append", metavar="NAME",
                    help="perplexity, exact_match, accuracy, f1, macro_f1, bleu or rouge (repeatable or "
                         "comma-separated; default: perplexity for text, exact_match,f1,bleu,rouge for answers)")
    ev.add_argument("--max-new-tokens", type=int, help="greedy generation budget per answer [128]")
    ev.add_argument("--max-samples", type=int, help="score only the first N rows [all]")
    ev.add_argument("--batch-size", type=int, help="rows per batch [8]")
    ev.add_argument("--format", default="auto", help=FORMATS_HELP)
    ev.add_argument("--name", help="display name")
    ev.add_argument("--follow", action="store_true",
                    help="follow the job like `lmforge metrics`, then print the results")
    ev.set_defaults(func=trainer.cmd_evaluate)

    ds = sub.add_parser("datasets", parents=[common], help="upload, list, validate and describe datasets")
    ds_sub = ds.add_subparsers(dest="datasets_cmd", required=True, metavar="ACTION")
    du = ds_sub.add_parser("upload", parents=[common], help="upload a JSONL/JSON/Parquet/CSV file")
    du.add_argument("path")
    du.add_argument("--name", help="stored name (default: the file name)")
    ds_sub.add_parser("list", parents=[common], help="stored datasets")
    dv = ds_sub.add_parser("validate", parents=[common], help="check every row; exit 1 if any is bad")
    dv.add_argument("dataset", metavar="ID-or-PATH", help="dataset id, or a local file to upload first")
    dv.add_argument("--method", default="sft", help=f"the method the rows are for: {one_of(METHODS)} [sft]")
    dv.add_argument("--format", default="auto", help=FORMATS_HELP)
    dv.add_argument("--max-violations", type=int, default=1000)
    dst = ds_sub.add_parser(
        "stats", parents=[common], help="the token calculator: tokens, lengths, truncation, duplicates",
        description="Counts a dataset's tokens as a job would render them with the base model's tokenizer and "
                    "chat template: total and trained tokens, length percentiles and histogram, what "
                    "max_seq_length truncates, exact duplicates, characters per token for Chinese and English, "
                    "and the trained tokens over the epochs.")
    dst.add_argument("dataset", metavar="ID-or-PATH", help="dataset id, or a local file to upload first")
    dst.add_argument("--base-model", required=True, help="store id of the model whose tokenizer the job would use")
    dst.add_argument("--max-seq-length", type=int, required=True, help="the job's max_seq_length, e.g. 1024")
    dst.add_argument("--method", default="sft", help=f"the method the rows are for: {one_of(METHODS)} [sft]")
    dst.add_argument("--epochs", type=int, default=1, help="for the estimated trained tokens [1]")
    ds.set_defaults(func=trainer.cmd_datasets)


def _add_chat(sub, common: argparse.ArgumentParser) -> None:
    chat = sub.add_parser(
        "chat", parents=[common], help="generate with a loaded model (one-shot, piped or interactive)",
        description="With PROMPT: stream one reply. Without, on a terminal: an interactive chat (/reset, /exit, "
                    "Ctrl-D quits, Ctrl-C stops a reply). Without, piped: stdin is the prompt. Stats go to stderr.")
    chat.add_argument("model_id", metavar="MODEL_ID")
    chat.add_argument("prompt", nargs="?", metavar="PROMPT")
    chat.add_argument("--adapter", help="store id of a LoRA adapter trained on MODEL_ID")
    chat.add_argument("--system", help="system prompt")
    chat.add_argument("--raw", action="store_true", help="send the prompt as raw text, not as a chat")
    sampling = chat.add_argument_group("sampling (unset: server defaults)")
    sampling.add_argument("--temperature", type=float, help="0 = greedy [1.0]")
    sampling.add_argument("--top-p", type=float, help="nucleus sampling (0, 1] [1.0]")
    sampling.add_argument("--top-k", type=int, help="0 = off [0]")
    sampling.add_argument("--min-p", type=float, help="[0, 1] [0]")
    sampling.add_argument("--repetition-penalty", type=float, help="1 = off [1.0]")
    sampling.add_argument("--presence-penalty", type=float, help="[-2, 2] [0]")
    sampling.add_argument("--frequency-penalty", type=float, help="[-2, 2] [0]")
    sampling.add_argument("--seed", type=int, help="same seed + same request = same output")
    sampling.add_argument("--max-new-tokens", type=int, help="[256]")
    sampling.add_argument("--stop", action="append", metavar="S", help="stop sequence (repeatable)")
    sampling.add_argument("--n", type=int, help="number of choices, printed under headers when > 1 [1]")
    loading = chat.add_argument_group("loading")
    loading.add_argument("--load", action="store_true",
                         help="LoadModel first (a model already loaded is fine); implied by the two below")
    loading.add_argument("--quantization", choices=tuple(QUANTIZATIONS), help="with --load [none]")
    loading.add_argument("--backend", choices=tuple(BACKENDS), help="with --load [transformers]")
    chat.set_defaults(func=inference.cmd_chat, service="inference")


def _add_models_and_tokens(sub, common: argparse.ArgumentParser) -> None:
    models = sub.add_parser("models", parents=[common], help="store entries and loaded models; load/unload",
                            description="Without an action: a table of every store entry and what is loaded.")
    models_sub = models.add_subparsers(dest="models_cmd", metavar="ACTION")
    models_sub.add_parser("list", parents=[common], help="the table (the default)")
    ml = models_sub.add_parser("load", parents=[common], help="load a base model or full checkpoint")
    ml.add_argument("model_id", metavar="ID")
    ml.add_argument("--quantization", choices=tuple(QUANTIZATIONS), default="none")
    ml.add_argument("--backend", choices=tuple(BACKENDS), default="transformers")
    ml.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 or float16")
    ml.add_argument("--double-quant", action="store_true", help="4-bit only: quantize the constants too")
    ml.add_argument("--compute-dtype", help="4-bit only: bfloat16, float16 or float32 (default auto)")
    mu = models_sub.add_parser("unload", parents=[common], help="free a loaded model")
    mu.add_argument("model_id", metavar="ID")
    mla = models_sub.add_parser("load-adapter", parents=[common], help="serve a store adapter on its base model")
    mla.add_argument("adapter_id", metavar="ADAPTER_ID")
    mla.add_argument("--model", help="loaded model to attach it to (default: the adapter's base model)")
    mua = models_sub.add_parser("unload-adapter", parents=[common], help="stop serving an adapter")
    mua.add_argument("adapter_id", metavar="ADAPTER_ID")
    mua.add_argument("--model", help="the model it is loaded on (default: all)")
    models.set_defaults(func=inference.cmd_models, service="inference", models_cmd=None)

    tokens = sub.add_parser("tokens", parents=[common], help="count and show the tokens of a text",
                            description="Token count, chars/token and one `id  'piece'` line per token.")
    tokens.add_argument("model_id", metavar="MODEL_ID")
    tokens.add_argument("text", nargs="?", metavar="TEXT", help="default: read stdin")
    tokens.add_argument("--chat", action="store_true",
                        help="tokenize TEXT as a user message rendered with the chat template")
    tokens.add_argument("--system", help="with --chat: a system prompt before it")
    tokens.add_argument("--compact", action="store_true", help="all pieces on one line")
    tokens.set_defaults(func=inference.cmd_tokens, service="inference")
