"""Token ids -> streamed text, exactly: incremental detokenization and stop sequences.

Guarantees, for any language:
* no delta ends inside a UTF-8 character: text that decodes to U+FFFD because its bytes are not yet
  complete is held back until the next token completes it;
* the concatenated deltas equal the final text;
* a stop sequence is never streamed, not even its first part: text that could still turn into a stop
  sequence is held back until it cannot.
"""

from __future__ import annotations

REPLACEMENT = "\ufffd"
# Tokens decoded again before the new ones, so a tokenizer's joining rules (spaces, merges) see context.
CONTEXT_TOKENS = 6


class IncrementalDetokenizer:
    """Decodes growing token lists into text deltas, decoding only a short window each step."""

    def __init__(self, tokenizer, prompt_ids: list[int] | None = None):
        self.tokenizer = tokenizer
        # The last prompt tokens are context only: their text is never emitted.
        self.ids: list[int] = list(prompt_ids[-CONTEXT_TOKENS:]) if prompt_ids else []
        self.prefix_offset = 0  # start of the window decoded each step
        self.read_offset = len(self.ids)  # ids before this are already emitted as text
        self.text = ""

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def add(self, token_ids: list[int]) -> str:
        """Append tokens; return the new complete text (possibly "")."""
        self.ids.extend(token_ids)
        prefix = self._decode(self.ids[self.prefix_offset:self.read_offset])
        full = self._decode(self.ids[self.prefix_offset:])
        if len(full) <= len(prefix) or full.endswith(REPLACEMENT) or not full.startswith(prefix):
            return ""
        delta = full[len(prefix):]
        self.prefix_offset = max(self.read_offset, len(self.ids) - CONTEXT_TOKENS)
        self.read_offset = len(self.ids)
        self.text += delta
        return delta

    def flush(self) -> str:
        """At the end: whatever is left (an incomplete character is emitted as U+FFFD, as the model made it)."""
        if self.read_offset >= len(self.ids):
            return ""
        prefix = self._decode(self.ids[self.prefix_offset:self.read_offset])
        full = self._decode(self.ids[self.prefix_offset:])
        delta = full[len(prefix):] if full.startswith(prefix) else ""
        self.read_offset = len(self.ids)
        self.text += delta
        return delta


class StopMatcher:
    """Holds back text that might begin a stop sequence; reports the text before the first match."""

    def __init__(self, stop: list[str]):
        self.stop = [s for s in stop if s]
        self.pending = ""  # received but not yet released
        self.released = ""
        self.matched = False

    def feed(self, text: str) -> str:
        """Add decoded text; return what can be released now. After a match, returns the text up to it."""
        if self.matched:
            return ""
        self.pending += text
        if not self.stop:
            out, self.pending = self.pending, ""
            self.released += out
            return out
        # Released text never ends with the start of a stop sequence, so a match lies within pending.
        first = min((i for i in (self.pending.find(s) for s in self.stop) if i >= 0), default=-1)
        if first >= 0:
            self.matched = True
            out = self.pending[:first]
            self.pending = ""
            self.released += out
            return out
        hold = 0
        for s in self.stop:  # the longest suffix of pending that is a prefix of a stop sequence
            for k in range(min(len(s) - 1, len(self.pending)), 0, -1):
                if self.pending.endswith(s[:k]):
                    hold = max(hold, k)
                    break
        out = self.pending[:len(self.pending) - hold]
        self.pending = self.pending[len(self.pending) - hold:]
        self.released += out
        return out

    def flush(self) -> str:
        """At the end of generation: the held-back text was no stop sequence after all."""
        if self.matched:
            return ""
        out, self.pending = self.pending, ""
        self.released += out
        return out
