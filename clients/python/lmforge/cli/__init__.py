"""`lmforge`: the command line of the trainer and inference services (installs without torch).

    lmforge datasets upload data/train.jsonl
    lmforge datasets validate data/train.jsonl --method sft        # every bad row, exit 1 if any
    lmforge train -f examples/jobs/sft_lora.yaml --dataset data/train.jsonl --max-steps 100 --follow
    lmforge metrics JOB_ID                                         # live progress line, exit 0/1
    lmforge jobs list --state running
    lmforge checkpoints --job JOB_ID                               # BEST mark, newest EVAL scores
    lmforge evaluate tiny-llama --dataset data/qa.jsonl --metric bleu --metric rouge --follow

    lmforge models                                                 # store entries, what is loaded, how
    lmforge models load smollm2-135m-instruct --quantization nf4
    lmforge chat smollm2-135m-instruct "Why is the sky blue?" --temperature 0 --max-new-tokens 128
    lmforge chat smollm2-135m-instruct --adapter ADAPTER_ID        # interactive on a terminal
    lmforge tokens smollm2-135m-instruct "Hello world"             # count, chars/token, pieces

Global options (before or after the subcommand): --address HOST:PORT of the trainer (default
$LMFORGE_TRAINER_ADDRESS or 127.0.0.1:50051), --inference-address HOST:PORT (default
$LMFORGE_INFERENCE_ADDRESS or 127.0.0.1:50052) and --json (one JSON object per line,
json_format.MessageToJson, instead of tables; for chat, one per GenerateResponse).

Exit codes: 0 success; 1 the job ended FAILED/CANCELLED, the dataset has bad rows or a generation ended
cancelled / past its deadline; 2 usage, local or gRPC errors (printed as `error: CODE: details` plus the
field violations of the status details); 130 interrupted. Also runnable as `python -m lmforge.cli`.

Modules: parser (arguments), trainer_commands and inference_commands (one cmd_* per subcommand), train_request
(job file + flags -> StartTrainingRequest), choices (choice lists read from the proto descriptors), format (pure
text formatting) and console (rich tables, progress bar and colours on a terminal; plain text into a pipe).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import grpc
from google.protobuf import json_format

from lmforge.cli.console import EXIT_ERROR
from lmforge.cli.format import checkpoint_rows, format_evaluation_summary, format_rpc_error
from lmforge.cli.parser import build_parser
from lmforge.client import InferenceClient, TrainerClient

__all__ = ["build_parser", "checkpoint_rows", "format_evaluation_summary", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    """The `lmforge` console script: parse, connect to the service the command talks to, run it."""
    import yaml

    args = build_parser().parse_args(argv)
    try:
        if getattr(args, "service", "trainer") == "inference":
            client = InferenceClient(args.inference_address, timeout=args.timeout or 60.0)
        else:
            client = TrainerClient(args.address, timeout=args.timeout or 30.0)
        with client:
            return args.func(client, args)
    except grpc.RpcError as err:
        sys.stdout.flush()
        print("\n".join(format_rpc_error(err)), file=sys.stderr)
        return EXIT_ERROR
    except (OSError, ValueError, json_format.ParseError, yaml.YAMLError) as err:  # bad file, bad enum name, bad field
        sys.stdout.flush()
        print(f"error: {err}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
