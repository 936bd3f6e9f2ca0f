"""Prompt-only rows (RL methods and distillation) as chat messages, for recipes that generate from them."""

from __future__ import annotations

from services.trainer.data import FileFormat, iter_rows
from services.trainer.spec import DatasetFile


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
