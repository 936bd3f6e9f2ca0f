"""dpo: the DPO family on TRL's preference trainers (recipe.py): DPO (sigmoid), IPO, hinge, the
reference-free ORPO and SimPO, and KTO on unpaired rows."""

from __future__ import annotations

from dataclasses import dataclass

from services.trainer.data import DatasetFormat
from services.trainer.methods.definition import MethodDefinition, RequestChecks, enum_choice, optional
from services.trainer.spec import TrainingSpec


@dataclass
class DpoSpec:
    beta: float = 0.1
    loss: str = "sigmoid"  # sigmoid | ipo | hinge | orpo | simpo | kto (the proto's PreferenceLoss)
    simpo_gamma: float = 0.5
    format: str = "auto"

    @property
    def uses_reference(self) -> bool:
        """ORPO and SimPO need no reference model."""
        return self.loss not in ("orpo", "simpo")


def from_proto(message, checks: RequestChecks) -> DpoSpec:
    spec = DpoSpec(loss=enum_choice(message, "loss", checks, "dpo.loss", "sigmoid"))
    # SimPO's beta scales a length-normalised log-probability: its paper uses 2-2.5, not DPO's 0.1.
    spec.beta = optional(message, "beta", 2.0 if spec.loss == "simpo" else 0.1)
    spec.simpo_gamma = optional(message, "simpo_gamma", spec.simpo_gamma)
    checks.in_range(spec.beta, "dpo.beta", 0, 100, low_open=True)
    checks.in_range(spec.simpo_gamma, "dpo.simpo_gamma", 0, 100)
    return spec


def check(spec: TrainingSpec, checks: RequestChecks) -> None:
    checks.require(not (spec.method_spec.loss == "kto" and spec.hyperparameters.batch_size < 2),
                   "hyperparameters.batch_size", "KTO estimates its KL term from mismatched prompt/completion "
                   "pairs within a batch, so a batch needs at least 2 rows", "use batch_size 2 or more")


def formats(spec: DpoSpec) -> tuple[DatasetFormat, ...]:
    """Preference pairs; the KTO loss also takes unpaired rows (each pair gives one good, one bad row)."""
    if spec.loss == "kto":
        return DatasetFormat.UNPAIRED_PREFERENCE, DatasetFormat.PREFERENCE
    return (DatasetFormat.PREFERENCE,)


METHOD = MethodDefinition(
    name="dpo", spec_class=DpoSpec, from_proto=from_proto, check=check, formats=formats,
    recipe="services.trainer.methods.dpo.recipe",
    summary="preference optimisation: DPO, IPO, hinge, ORPO, SimPO, KTO")
