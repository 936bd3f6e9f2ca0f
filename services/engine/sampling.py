"""Generation parameters, validated in one place: each error names the field and its allowed range."""

from __future__ import annotations

from dataclasses import dataclass, field

from services.common.errors import InvalidArgument, Violation

MAX_STOP_SEQUENCES = 16
MAX_CHOICES = 16


@dataclass
class SamplingConfig:
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    min_p: float = 0.0
    repetition_penalty: float = 1.0  # 1 = off (multiplicative, as transformers)
    presence_penalty: float = 0.0  # additive, OpenAI semantics
    frequency_penalty: float = 0.0  # additive per occurrence, OpenAI semantics
    seed: int | None = None
    max_new_tokens: int = 256
    stop: list[str] = field(default_factory=list)
    n: int = 1
    ignore_eos: bool = False  # decode past end-of-turn until max_new_tokens (benchmarks)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def for_choice(self, index: int) -> SamplingConfig:
        """The config of choice `index` of n: a seeded request gives each choice its own derived seed."""
        seed = None if self.seed is None else self.seed + index
        return SamplingConfig(**{**self.__dict__, "seed": seed, "n": 1, "stop": list(self.stop)})


_RANGES = {
    # field: (low, high, low_open)
    "temperature": (0.0, 2.0, False),
    "top_p": (0.0, 1.0, True),
    "top_k": (0, 1_000_000, False),
    "min_p": (0.0, 1.0, False),
    "repetition_penalty": (0.0, 2.0, True),
    "presence_penalty": (-2.0, 2.0, False),
    "frequency_penalty": (-2.0, 2.0, False),
    "max_new_tokens": (1, 1_000_000, False),
    "n": (1, MAX_CHOICES, False),
}


def checked_sampling(values: dict, prefix: str = "sampling.") -> SamplingConfig:
    """Build a SamplingConfig from the fields a client set; every bad field is reported at once."""
    config = SamplingConfig(**{k: v for k, v in values.items() if v is not None})
    violations = []
    for name, (low, high, low_open) in _RANGES.items():
        value = getattr(config, name)
        if not ((value > low if low_open else value >= low) and value <= high):
            bracket = "(" if low_open else "["
            violations.append(Violation(0, prefix + name, f"{value} is out of range",
                                        f"allowed range is {bracket}{low}, {high}]"))
    if len(config.stop) > MAX_STOP_SEQUENCES:
        violations.append(Violation(0, prefix + "stop", f"{len(config.stop)} stop sequences",
                                    f"at most {MAX_STOP_SEQUENCES}"))
    if any(not s for s in config.stop):
        violations.append(Violation(0, prefix + "stop", "an empty stop sequence", "remove it"))
    if violations:
        raise InvalidArgument("invalid sampling parameters: " + "; ".join(
            f"{v.field} {v.reason} ({v.hint})" for v in violations), violations)
    return config
