"""Training recipes: one file per method (DESIGN.md §5.1), each exposing `run(ctx: RecipeContext) -> str`.

Recipes never import grpc or generated code: they get a typed spec, the checkpoint store and an `emit`
callable through `RecipeContext`, and return the store id of the final model or adapter.
"""

from __future__ import annotations

import importlib

# Method name -> module implementing it. Methods of the mission not listed here answer UNIMPLEMENTED.
RECIPE_MODULES = {
    "sft": "services.trainer.recipes.sft",
}


def implemented_methods() -> tuple[str, ...]:
    return tuple(RECIPE_MODULES)


def load_recipe(method: str):
    """The recipe module for a method (imported lazily: it pulls in torch and trl)."""
    return importlib.import_module(RECIPE_MODULES[method])
