"""Training recipes: one file per method (DESIGN.md §5.1), each exposing `run(ctx: RecipeContext) -> str`.

Recipes never import grpc or generated code: they get a typed spec, the checkpoint store and an `emit`
callable through `RecipeContext`, and return the store id of the final model or adapter.
"""

from __future__ import annotations

import importlib

# Method name -> module implementing it. Training methods of the mission not listed here answer
# UNIMPLEMENTED. "evaluate" is the recipe of Evaluate jobs (not a training method).
RECIPE_MODULES = {
    "pretrain": "services.trainer.recipes.pretrain",
    "continued_pretrain": "services.trainer.recipes.continued_pretrain",
    "sft": "services.trainer.recipes.sft",
    "reward": "services.trainer.recipes.reward",
    "dpo": "services.trainer.recipes.dpo",
    "grpo": "services.trainer.recipes.grpo",
    "ppo": "services.trainer.recipes.ppo",
    "rft": "services.trainer.recipes.rft",
    "distill": "services.trainer.recipes.distill",
    "evaluate": "services.trainer.recipes.evaluate",
}


def implemented_methods() -> tuple[str, ...]:
    """Training methods StartTraining accepts."""
    return tuple(m for m in RECIPE_MODULES if m != "evaluate")


def load_recipe(method: str):
    """The recipe module for a method (imported lazily: it pulls in torch and trl)."""
    return importlib.import_module(RECIPE_MODULES[method])
