"""The distillation recipes by name: ``RECIPES`` and ``get_recipe``.

Each entry maps a recipe name to the module that defines it; the module is imported
only when the recipe is used (so ``--help`` stays fast and one recipe's import error
does not break the others). The module's ``RECIPE`` attribute is the
:class:`~medistill.distill.recipes.base.Recipe` subclass.

Example:

>>> sorted(RECIPES)
['cakd-mskd', 'kamsd', 'sikd', 'sscd']
"""

from __future__ import annotations

import importlib

from medistill.errors import MedistillError

RECIPES: dict[str, str] = {
    "kamsd": "medistill.distill.recipes.kamsd",
    "cakd-mskd": "medistill.distill.recipes.cakd_mskd",
    "sikd": "medistill.distill.recipes.sikd",
    # --- SSCD (helper D2's module) ---
    "sscd": "medistill.distill.recipes.sscd",
}


def get_recipe(name: str) -> type:
    """The recipe class registered as ``name``.

    Raises:
        MedistillError: for an unknown name (listing the valid ones) or a recipe module
            that cannot be imported.
    """
    if name not in RECIPES:
        raise MedistillError(f"unknown recipe {name!r}; valid recipes: {', '.join(RECIPES)}")
    try:
        module = importlib.import_module(RECIPES[name])
    except ImportError as error:
        raise MedistillError(f"recipe {name!r} cannot be loaded ({RECIPES[name]}): {error}") from error
    return module.RECIPE
