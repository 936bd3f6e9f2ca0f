"""Dataset statistics, the token calculator: what a dataset costs in tokens for one base model and method,
before any job is started (DescribeDataset; docs/trainer.md, "Dataset statistics").

    tokenizer = ChatTokenizer.from_model_dir(store.path_of("smollm2-135m-instruct"))
    stats = describe_file("train.jsonl", FileFormat.JSONL, SFT_FORMATS, tokenizer, max_seq_length=1024, epochs=3)
    stats.total_tokens, stats.trained_tokens, stats.truncated_sequences, stats.languages["zh"].chars_per_token

The rows are streamed (`iter_rows`) and tokenized in batches with the base model's fast tokenizer, rendered
the way the recipes' TRL trainers render them (TRL 1.16 `SFTTrainer` / `DPOTrainer` tokenize_fn):

- SFT rows become one prompt/completion example per assistant turn (`to_conversational_examples`, as
  `load_for_training` does); the prompt is rendered with the generation prompt, prompt + completion without,
  and the trained tokens are those after the two token lists' common prefix (TRL's `completion_mask`).
- Preference rows (reward, DPO family) give two sequences, prompt + chosen and prompt + rejected; the
  prompt is the shortest common prefix of both with the rendered prompt; chosen and rejected are trained.
  Unpaired (KTO) rows give one, prompt + completion. Without a chat template, strings are concatenated and
  tokenized with the tokenizer's special tokens, as TRL does for plain-text rows.
- Prompt-only rows (GRPO, RLOO/PPO, RFT, distillation) give the rendered prompt; the trained tokens are
  generated during the run, so none are counted here.
- Text rows (pretraining) are tokenized with special tokens plus EOS and packed into blocks: nothing is
  truncated.

Truncation is TRL's `keep_start` at `max_seq_length`: a longer sequence loses its tail; a sequence whose
prompt alone fills `max_seq_length` keeps no trained token and TRL drops it (`dropped_sequences`).

This module is imported by the trainer's servicer: it never imports torch or transformers. The fast
tokenizer comes from the `tokenizers` library (tokenizer.json) and the chat template is rendered with
jinja2 in the same sandboxed environment transformers uses; both are imported when a tokenizer is loaded.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
import re
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from services.common.errors import FailedPrecondition, Violation, invalid_field
from services.trainer.data.formats import (
    SFT_FORMATS,
    DatasetFormat,
    FileFormat,
    detect_format,
    expected_fields,
)
from services.trainer.data.normalize import to_conversational_examples
from services.trainer.data.reader import iter_rows
from services.trainer.data.validation import check_row

# Rows tokenized together: large enough for the tokenizer's batch call to pay off, small enough to stay
# bounded in memory whatever the file's size.
BATCH_ROWS = 1024
HISTOGRAM_BUCKETS = 8
PERCENTILES = (50, 90, 99)
# The named special tokens a chat template may read (transformers' SPECIAL_TOKENS_ATTRIBUTES).
SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")

# CJK ideographs (the unified block, extensions A and the compatibility block): the seed's "汉字".
_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_LATIN_LETTER = re.compile(r"[A-Za-z]")
_NON_SPACE = re.compile(r"\S")

PREFERENCE_FORMATS = (DatasetFormat.PREFERENCE, DatasetFormat.UNPAIRED_PREFERENCE)


# ---------------------------------------------------------------------------------------------------
# The base model's tokenizer, without transformers.


class ChatTokenizer:
    """A model's fast tokenizer (tokenizer.json) and chat template, rendered as transformers'
    `apply_chat_template(..., tokenize=True)` does: the template sees `messages`, `tools`, `documents`,
    `add_generation_prompt` and the named special tokens; the text is tokenized without adding special
    tokens (the template wrote them)."""

    def __init__(self, tokenizer, chat_template: str | None, special_tokens: dict[str, str]):
        self._tokenizer = tokenizer
        self.chat_template = chat_template
        self.special_tokens = dict(special_tokens)
        self.eos_token = special_tokens.get("eos_token")
        self._template = _compile_template(chat_template) if chat_template else None

    @classmethod
    def from_model_dir(cls, model_dir: Path, entry_id: str = "", field_name: str = "base_model_id") -> "ChatTokenizer":
        """Load what `AutoTokenizer.from_pretrained(model_dir)` would (a missing pad token falls back to EOS,
        as training.common.load_tokenizer does). Raises FailedPrecondition naming `field_name` and the entry
        (never the directory) when the entry has no fast tokenizer."""
        from tokenizers import Tokenizer  # here: the servicer imports this module, and only this needs it

        model_dir = Path(model_dir)
        tokenizer_file = model_dir / "tokenizer.json"
        if not tokenizer_file.is_file():
            raise FailedPrecondition(f"{field_name}: {entry_id!r} has no fast tokenizer (tokenizer.json); the "
                                     "statistics need one: name a model saved with its tokenizer")
        config = _read_json(model_dir / "tokenizer_config.json")
        special: dict[str, str] = {}
        for source in (_read_json(model_dir / "special_tokens_map.json"), config):
            for name in SPECIAL_TOKEN_NAMES:
                value = source.get(name)
                if isinstance(value, dict):
                    value = value.get("content")
                if isinstance(value, str):
                    special[name] = value
        if "pad_token" not in special and "eos_token" in special:
            special["pad_token"] = special["eos_token"]
        return cls(Tokenizer.from_file(str(tokenizer_file)), _chat_template(model_dir, config), special)

    def render(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        """The chat template applied to one conversation (no tokenization)."""
        return self._template.render(messages=messages, tools=None, documents=None,
                                     add_generation_prompt=add_generation_prompt, **self.special_tokens)

    def token_ids(self, texts: Sequence[str], add_special_tokens: bool) -> list[list[int]]:
        """Token ids of each text, tokenized in one batch call."""
        if not texts:
            return []
        return [encoding.ids for encoding in self._tokenizer.encode_batch_fast(list(texts),
                                                                                add_special_tokens=add_special_tokens)]

    def count(self, texts: Sequence[str], add_special_tokens: bool = False) -> list[int]:
        """Number of tokens of each text, tokenized in one batch call."""
        if not texts:
            return []
        return [len(encoding) for encoding in self._tokenizer.encode_batch_fast(list(texts),
                                                                                add_special_tokens=add_special_tokens)]


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _chat_template(model_dir: Path, config: dict) -> str | None:
    """Where transformers 5 looks: chat_template.jinja, chat_template.json, then tokenizer_config.json
    (a string, or a list of named templates of which "default" is used)."""
    jinja_file = model_dir / "chat_template.jinja"
    if jinja_file.is_file():
        return jinja_file.read_text(encoding="utf-8")
    template = _read_json(model_dir / "chat_template.json").get("chat_template") or config.get("chat_template")
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    return template if isinstance(template, str) and template else None


def _compile_template(source: str):
    """The template compiled in the environment transformers' `_compile_jinja_template` builds (sandboxed,
    trim_blocks, lstrip_blocks, loop controls, its tojson, raise_exception and strftime_now); `{% generation %}`
    blocks render their body (the assistant mask is not needed here)."""
    from datetime import datetime

    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationBlocks(jinja2.ext.Extension):
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[GenerationBlocks, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(source)


# ---------------------------------------------------------------------------------------------------
# Results.


@dataclass
class LanguageStats:
    """Texts (message contents, fields) of one language, each tokenized alone. `words`: whitespace-separated
    words for "en", Han characters for "zh" (the units of the seed's ratio table)."""

    language: str
    texts: int = 0
    characters: int = 0  # non-whitespace characters
    words: int = 0
    tokens: int = 0

    @property
    def chars_per_token(self) -> float:
        return self.characters / self.tokens if self.tokens else 0.0

    @property
    def tokens_per_word(self) -> float:
        return self.tokens / self.words if self.words else 0.0


@dataclass
class DatasetStats:
    format: DatasetFormat
    rows: int  # usable rows
    invalid_rows: int  # rows ValidateDataset would report; skipped here
    sequences: int  # training sequences (see the module docstring)
    total_tokens: int
    trained_tokens: int  # before truncation
    max_seq_length: int
    truncated_sequences: int
    truncated_tokens: int  # tokens cut off by truncation
    trained_tokens_after_truncation: int
    dropped_sequences: int  # no trained token left after truncation (TRL drops them)
    duplicate_rows: int  # rows identical to an earlier row
    percentiles: dict[int, int]  # {50: p50, 90: p90, 99: p99} of the sequence lengths, nearest rank
    max_tokens: int
    mean_tokens: float
    histogram_edges: list[int]  # bucket i holds lengths in (edges[i], edges[i+1]]
    histogram_counts: list[int]
    languages: dict[str, LanguageStats]
    epochs: int
    estimated_trained_tokens: int  # trained tokens after truncation x epochs
    packed: bool  # text methods: rows packed into blocks of max_seq_length, nothing truncated
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def rows_per_second(self) -> float:
        return (self.rows + self.invalid_rows) / self.seconds if self.seconds > 0 else 0.0


# ---------------------------------------------------------------------------------------------------
# Per-format rules: a row -> its sequences and its texts.


@dataclass
class _Batch:
    """What one batch of rows asks the tokenizer for: `plain` texts tokenized without special tokens
    (rendered chats), `special` texts with them (plain-text rows), and the sequences as index pairs."""

    plain: list[str] = field(default_factory=list)
    special: list[str] = field(default_factory=list)
    # (prompt text refs, full text ref): a ref is (kind, index), kind 0 = plain, 1 = special; prompt refs
    # empty for a sequence trained whole (text) and None for one not trained at all (prompt-only).
    sequences: list[tuple[list[tuple[int, int]] | None, tuple[int, int]]] = field(default_factory=list)
    contents: list[str] = field(default_factory=list)  # texts of a known language, tokenized alone
    content_languages: list[tuple[str, int, int]] = field(default_factory=list)  # (language, characters, words)

    def add(self, text: str, special: bool = False) -> tuple[int, int]:
        target = self.special if special else self.plain
        target.append(text)
        return (1 if special else 0, len(target) - 1)


def _sft_row(batch: _Batch, row: dict, fmt: DatasetFormat, tokenizer: ChatTokenizer) -> None:
    for example in to_conversational_examples(row, fmt):
        prompt = batch.add(tokenizer.render(example["prompt"], add_generation_prompt=True))
        full = batch.add(tokenizer.render(example["prompt"] + example["completion"]))
        batch.sequences.append(([prompt], full))


def _preference_row(batch: _Batch, row: dict, fmt: DatasetFormat, tokenizer: ChatTokenizer) -> None:
    responses = ("chosen", "rejected") if fmt is DatasetFormat.PREFERENCE else ("completion",)
    if tokenizer.chat_template:
        prompt_messages = _turns(row["prompt"], "user")
        prompt = batch.add(tokenizer.render(prompt_messages, add_generation_prompt=True))
        fulls = [batch.add(tokenizer.render(prompt_messages + _turns(row[key], "assistant"))) for key in responses]
    else:  # TRL's plain-text rows: string concatenation, tokenized with the tokenizer's special tokens
        prompt = batch.add(row["prompt"], special=True)
        fulls = [batch.add(row["prompt"] + row[key], special=True) for key in responses]
    # TRL takes the shortest common prefix over the responses as the prompt of both sequences.
    for full in fulls:
        batch.sequences.append(([prompt] + [f for f in fulls if f != full], full))


def _prompt_row(batch: _Batch, row: dict, fmt: DatasetFormat, tokenizer: ChatTokenizer) -> None:
    if tokenizer.chat_template:
        full = batch.add(tokenizer.render(_turns(row["prompt"], "user"), add_generation_prompt=True))
    else:
        full = batch.add(row["prompt"], special=True)
    batch.sequences.append((None, full))


def _text_row(batch: _Batch, row: dict, fmt: DatasetFormat, tokenizer: ChatTokenizer) -> None:
    text = row["text"]
    eos = tokenizer.eos_token
    if eos and not text.endswith(eos):  # TRL's add_eos for language modelling rows
        text += eos
    batch.sequences.append(([], batch.add(text, special=True)))


def _turns(value, role: str) -> list[dict]:
    """A preference / prompt cell as messages: a string is one turn of `role` (as to_preference_example)."""
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    return [{"role": m.get("role"), "content": m.get("content")} for m in value]


_ROW_RULES = {
    **{fmt: _sft_row for fmt in SFT_FORMATS},
    DatasetFormat.PREFERENCE: _preference_row,
    DatasetFormat.UNPAIRED_PREFERENCE: _preference_row,
    DatasetFormat.PROMPT_ONLY: _prompt_row,
    DatasetFormat.TEXT: _text_row,
}

# The text cells of each format, for the per-language ratios (string cells and message contents).
_CONTENT_KEYS = {
    DatasetFormat.MESSAGES: ("messages",),
    DatasetFormat.SHAREGPT: ("system", "conversations"),
    DatasetFormat.ALPACA: ("system", "instruction", "input", "output"),
    DatasetFormat.PROMPT_COMPLETION: ("prompt", "completion"),
    DatasetFormat.PREFERENCE: ("prompt", "chosen", "rejected"),
    DatasetFormat.UNPAIRED_PREFERENCE: ("prompt", "completion"),
    DatasetFormat.PROMPT_ONLY: ("prompt",),
    DatasetFormat.TEXT: ("text",),
}


def row_texts(row: dict, fmt: DatasetFormat) -> list[str]:
    """The non-empty texts written in a row: string cells and the contents (`content` / `value`) of messages."""
    texts: list[str] = []
    for key in _CONTENT_KEYS[fmt]:
        value = row.get(key)
        if isinstance(value, str):
            texts.append(value)
        elif isinstance(value, list):
            texts.extend(m.get("content", m.get("value")) for m in value if isinstance(m, dict))
    return [t for t in texts if isinstance(t, str) and t.strip()]


def text_language(text: str) -> tuple[str | None, int, int, int]:
    """(language, non-whitespace characters, words, Han characters). A text is "zh" when Han characters
    are at least half of its letters (Han + Latin), "en" when it has Latin letters and fewer Han, else None
    (digits, symbols, other scripts). "en" words are whitespace-separated; "zh" words are Han characters."""
    han = len(_HAN.findall(text))
    latin = len(_LATIN_LETTER.findall(text))
    characters = len(_NON_SPACE.findall(text))
    if han and han * 2 >= han + latin:
        return "zh", characters, han, han
    if latin:
        return "en", characters, len(text.split()), han
    return None, characters, 0, han


# ---------------------------------------------------------------------------------------------------


def common_prefix_length(a: list[int], b: list[int]) -> int:
    """TRL's common_prefix_length: leading tokens the two lists share."""
    if len(a) <= len(b) and b[:len(a)] == a:
        return len(a)
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def nearest_rank(length_counts: Mapping[int, int], percentile: float) -> int:
    """The nearest-rank percentile of lengths given as {length: how many}: the ceil(p/100 * n)-th
    smallest (0 for none)."""
    n = sum(length_counts.values())
    if not n:
        return 0
    rank = max(1, math.ceil(percentile / 100 * n))
    seen = 0
    for length in sorted(length_counts):
        seen += length_counts[length]
        if seen >= rank:
            return length
    raise AssertionError("unreachable: rank <= n")


def histogram(length_counts: Mapping[int, int], max_seq_length: int,
              buckets: int = HISTOGRAM_BUCKETS) -> tuple[list[int], list[int]]:
    """(edges, counts) of lengths given as {length: how many}: `buckets` equal buckets up to max_seq_length,
    (edges[i], edges[i+1]], plus one (max_seq_length, longest] when any sequence is longer, i.e. exactly the
    truncated ones."""
    edges = sorted({math.ceil(i * max_seq_length / buckets) for i in range(buckets + 1)})
    longest = max(length_counts, default=0)
    if longest > max_seq_length:
        edges.append(longest)
    counts = [0] * (len(edges) - 1)
    for length, how_many in length_counts.items():
        counts[min(max(bisect.bisect_left(edges, length) - 1, 0), len(counts) - 1)] += how_many
    return edges, counts


class _Accumulator:
    def __init__(self, max_seq_length: int, packed: bool):
        self.max_seq_length = max_seq_length
        self.packed = packed
        # {length: sequences}: memory grows with the distinct lengths, not with the file
        self.lengths: Counter[int] = Counter()
        self.total = self.trained = self.trained_kept = 0
        self.truncated = self.truncated_tokens = self.dropped = 0

    def add(self, length: int, prompt_length: int | None) -> None:
        """One sequence of `length` tokens; the trained ones follow the first `prompt_length` (None: none)."""
        self.lengths[length] += 1
        self.total += length
        if prompt_length is None:
            trained = kept_trained = 0
        else:
            trained = length - prompt_length
            kept_trained = trained if self.packed else max(0, min(length, self.max_seq_length) - prompt_length)
            if trained and not kept_trained:
                self.dropped += 1
        self.trained += trained
        self.trained_kept += kept_trained
        if not self.packed and length > self.max_seq_length:
            self.truncated += 1
            self.truncated_tokens += length - self.max_seq_length


def describe_file(
    path: str | Path,
    file_format: FileFormat,
    formats: Sequence[DatasetFormat],
    tokenizer: ChatTokenizer,
    max_seq_length: int,
    epochs: int = 1,
    *,
    method: str = "sft",
    batch_rows: int = BATCH_ROWS,
) -> DatasetStats:
    """Stream `path` and count its tokens for `method` (whose row formats are `formats`) rendered by
    `tokenizer`. Rows that fail validation are skipped and counted (`invalid_rows`). Raises
    InvalidArgument when no row is in one of `formats`, FailedPrecondition when a chat format meets a
    tokenizer without a chat template, NotFound for a missing file."""
    started = time.perf_counter()
    allowed = tuple(formats)
    detected: DatasetFormat | None = None
    packed = False
    acc: _Accumulator | None = None
    languages = {"zh": LanguageStats("zh"), "en": LanguageStats("en")}
    seen: set[bytes] = set()
    rows = invalid = duplicates = 0
    batch = _Batch()
    batch_size = 0
    helper = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dataset-stats")
    pending = None  # (batch, future of its tokenization)

    def collect() -> None:
        nonlocal pending
        if pending is not None:
            done, future = pending
            pending = None
            _accumulate(done, future.result(), acc, languages)

    def flush() -> None:
        nonlocal batch, batch_size, pending
        collect()
        if batch_size:
            pending = (batch, helper.submit(_tokenize, batch, tokenizer))
        batch, batch_size = _Batch(), 0

    try:
        for row_number, row in iter_rows(path, file_format):
            if isinstance(row, Violation):
                invalid += 1
                continue
            if detected is None:
                detected = detect_format(row, allowed)
                if detected is None:
                    invalid += 1
                    continue
                _check_tokenizer(detected, tokenizer)
                packed = detected is DatasetFormat.TEXT
                acc = _Accumulator(max_seq_length, packed)
            if check_row(row_number, row, detected) or not _renderable(row, detected, tokenizer):
                invalid += 1
                continue
            rows += 1
            key = hashlib.blake2b(json.dumps(row, sort_keys=True, ensure_ascii=False, default=str).encode(),
                                  digest_size=12).digest()
            if key in seen:
                duplicates += 1
            else:
                seen.add(key)
            _ROW_RULES[detected](batch, row, detected, tokenizer)
            for text in row_texts(row, detected):
                language, characters, words, _ = text_language(text)
                if language is not None:
                    batch.contents.append(text)
                    batch.content_languages.append((language, characters, words))
            batch_size += 1
            if batch_size >= batch_rows:
                flush()
        if detected is None:
            raise invalid_field("dataset_id", f"no row of the dataset is in a {method} format",
                                f"{method} rows need {' or '.join(expected_fields(f) for f in allowed)}; "
                                "ValidateDataset lists what is wrong with each row")
        flush()
        collect()
    finally:
        helper.shutdown(wait=True, cancel_futures=True)

    lengths = acc.lengths
    sequences = sum(lengths.values())
    edges, counts = histogram(lengths, max_seq_length)
    notes: list[str] = []
    if invalid:
        notes.append(f"{invalid} rows fail validation and are not counted; `lmforge datasets validate` lists them")
    if packed:
        notes.append(f"text is packed into blocks of {max_seq_length} tokens, so nothing is truncated")
    if detected is DatasetFormat.PROMPT_ONLY:
        notes.append("the trained tokens are generated during the run, so only the prompts are counted")
    if acc.dropped:
        notes.append(f"{acc.dropped} sequences keep no trained token at max_seq_length {max_seq_length} "
                     "(the prompt fills it) and are dropped by the trainer")
    return DatasetStats(
        format=detected, rows=rows, invalid_rows=invalid, sequences=sequences, total_tokens=acc.total,
        trained_tokens=acc.trained, max_seq_length=max_seq_length, truncated_sequences=acc.truncated,
        truncated_tokens=acc.truncated_tokens, trained_tokens_after_truncation=acc.trained_kept,
        dropped_sequences=acc.dropped, duplicate_rows=duplicates,
        percentiles={p: nearest_rank(lengths, p) for p in PERCENTILES}, max_tokens=max(lengths, default=0),
        mean_tokens=acc.total / sequences if sequences else 0.0, histogram_edges=edges, histogram_counts=counts,
        languages=languages, epochs=epochs, estimated_trained_tokens=acc.trained_kept * epochs, packed=packed,
        notes=notes, seconds=time.perf_counter() - started)


def _check_tokenizer(fmt: DatasetFormat, tokenizer: ChatTokenizer) -> None:
    if fmt in SFT_FORMATS and not tokenizer.chat_template:
        raise FailedPrecondition("base_model_id: the model has no chat template; chat rows are rendered with it "
                                 "(use an instruct/chat model, or one whose tokenizer defines one)")


def _renderable(row: dict, fmt: DatasetFormat, tokenizer: ChatTokenizer) -> bool:
    """Without a chat template, message-list cells cannot be rendered (the loaders refuse those rows)."""
    if tokenizer.chat_template or fmt not in (*PREFERENCE_FORMATS, DatasetFormat.PROMPT_ONLY):
        return True
    return not any(isinstance(row.get(key), list) for key in _CONTENT_KEYS[fmt])


def _tokenize(batch: _Batch, tokenizer: ChatTokenizer) -> tuple[list[list[int]], list[list[int]], list[int]]:
    """The token ids of a batch's rendered and plain texts, and the token counts of its language texts.
    Runs on the helper thread: the tokenizer's batch calls release the GIL, so the next batch is read and
    rendered meanwhile."""
    return (tokenizer.token_ids(batch.plain, add_special_tokens=False),
            tokenizer.token_ids(batch.special, add_special_tokens=True),
            tokenizer.count(batch.contents))


def _accumulate(batch: _Batch, tokenized, acc: _Accumulator, languages: dict[str, LanguageStats]) -> None:
    plain, special, content_tokens = tokenized
    ids = (plain, special)
    for prompts, (kind, index) in batch.sequences:
        full = ids[kind][index]
        if prompts is None:
            acc.add(len(full), None)
            continue
        prompt_length = 0
        if prompts:  # the first is the rendered prompt; the others are the row's other responses
            prompt = ids[prompts[0][0]][prompts[0][1]]
            prompt_length = common_prefix_length(prompt, full)
            for other_kind, other_index in prompts[1:]:
                prompt_length = min(prompt_length, common_prefix_length(prompt, ids[other_kind][other_index]))
        acc.add(len(full), prompt_length)
    for (language, characters, words), tokens in zip(batch.content_languages, content_tokens):
        stats = languages[language]
        stats.texts += 1
        stats.characters += characters
        stats.words += words
        stats.tokens += tokens


__all__ = ["ChatTokenizer", "DatasetStats", "LanguageStats", "describe_file", "histogram", "nearest_rank",
           "row_texts", "text_language"]
