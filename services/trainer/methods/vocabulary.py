"""Vocabulary expansion as a request field (sft and continued_pretrain): conversion and checks."""

from __future__ import annotations

from services.trainer.methods.definition import RequestChecks
from services.trainer.spec import AdapterSpec


def new_tokens_from_proto(message, field: str, checks: RequestChecks) -> list[str]:
    """`VocabularyExpansion.new_tokens`: non-empty, each listed once, at most 10000."""
    tokens = list(message.new_tokens)
    seen: set[str] = set()
    for index, token in enumerate(tokens):
        checks.require(bool(token.strip()), f"{field}[{index}]", "is empty", "list non-empty domain terms")
        checks.require(token not in seen, f"{field}[{index}]", f"{token!r} is listed twice", "list each term once")
        seen.add(token)
    checks.require(len(tokens) <= 10_000, field, f"{len(tokens)} new tokens", "add at most 10000 tokens at once")
    return tokens


def check_vocabulary_adapter(new_tokens: list[str], adapter: AdapterSpec, checks: RequestChecks) -> None:
    checks.require(not (new_tokens and adapter.type == "qlora"), "adapter.type",
                   "vocabulary expansion cannot be merged into a 4-bit base", "use ADAPTER_LORA or ADAPTER_FULL")
