"""Text views of prompts and completions that the reward scorers read (pure Python).

TRL hands reward functions strings or chat message lists; the scorers work on text: `prompt_text` and
`completion_text` reduce either form, `answer_part` drops a leading `<think>` block, `is_chinese` tells
the language of a text and `last_number` reads the final number written in it.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from fractions import Fraction


def _content_text(content) -> str:
    """A message's content as text: a string, or the text parts of a multimodal parts list."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, (list, tuple)):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, Mapping) and isinstance(part.get("text"), str):
                parts.append(part["text"])
        return "".join(parts)
    return str(content)


def completion_text(completion) -> str:
    """The text of a completion: a string as is; a message list -> its last assistant message's content."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Mapping):
        return _content_text(completion.get("content"))
    if isinstance(completion, (list, tuple)):
        for message in reversed(completion):
            if isinstance(message, Mapping) and message.get("role") == "assistant":
                return _content_text(message.get("content"))
        return ""
    return "" if completion is None else str(completion)


def prompt_text(prompt) -> str:
    """The text of a prompt: a string as is; a message list -> its last user message's content."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, Mapping):
        return _content_text(prompt.get("content"))
    if isinstance(prompt, (list, tuple)):
        for message in reversed(prompt):
            if isinstance(message, Mapping) and message.get("role") == "user":
                return _content_text(message.get("content"))
        return ""
    return "" if prompt is None else str(prompt)


def answer_part(text: str) -> str:
    """The answer of a completion: the text after the last `</think>`, or the whole text without one."""
    end = text.rfind("</think>")
    return text[end + len("</think>"):] if end >= 0 else text


# A number: optional sign (ASCII or Unicode minus), an integer with optional "," thousands separators and
# an optional decimal part (or a bare ".5"), optionally "/ denominator". Not glued to a preceding ASCII
# letter, digit, "_" or "." (so "x2", "v1.2.3"'s inner parts and "3.14"'s "14" are not numbers of their
# own); Chinese characters may touch it ("答案是42"). Text is NFKC-normalised first (full-width digits).
_NUMBER = re.compile(
    r"(?<![0-9A-Za-z_.])(?P<sign>[-+\u2212]?)"
    r"(?:(?P<int>\d{1,3}(?:,\d{3})+|\d+)(?:\.(?P<dec>\d+))?|\.(?P<bare>\d+))"
    r"(?:[ \t]*/[ \t]*(?P<den>\d+))?",
    re.ASCII,
)


def _number_of(match: re.Match) -> Fraction | None:
    if match["bare"] is not None:
        value = Fraction(f"0.{match['bare']}")
    else:
        value = Fraction(match["int"].replace(",", "") + (f".{match['dec']}" if match["dec"] else ""))
    if match["den"] is not None:
        denominator = int(match["den"])
        if denominator == 0:
            return None
        value /= denominator
    return -value if match["sign"] in ("-", "\u2212") else value


def last_number(text: str) -> Fraction | None:
    """The last number written in `text` (see `_NUMBER`), exactly, or None when there is none.

    "It costs $1,234.50." -> 1234.5; "答案是 -3/4。" -> -3/4; "x = .5" -> 1/2; "１２" -> 12; "no" -> None.
    """
    found = None
    for match in _NUMBER.finditer(unicodedata.normalize("NFKC", text)):
        value = _number_of(match)
        if value is not None:
            found = value
    return found


# Han ideographs (CJK Unified + extensions A-F, compatibility ideographs and their supplement).
_HAN = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
                  "\U00020000-\U0002a6df\U0002a700-\U0002ebef\U0002f800-\U0002fa1f]")


# Markup whose letters say nothing about the language: LaTeX commands and tags like <think>, </answer>.
_MARKUP = re.compile(r"\\[A-Za-z]+|</?[A-Za-z][\w-]*>")


def is_chinese(text: str) -> bool:
    """True when more than half of the text's letters (str.isalpha(), which counts ideographs) are Han
    ideographs; the letters of LaTeX commands (`\\boxed`) and of tags (`<think>`, `</answer>`) are not
    counted. No letters: False."""
    letters = [ch for ch in _MARKUP.sub(" ", text) if ch.isalpha()]
    if not letters:
        return False
    return sum(1 for ch in letters if _HAN.match(ch)) / len(letters) > 0.5
