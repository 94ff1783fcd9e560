"""`frozenlm compare`: every way of specialising the frozen backbone, measured side by side."""

from frozenlm.compare.methods import BUDGETS, METHODS, Budget, Fitted, Method
from frozenlm.compare.runner import CompareConfig, compare, run_compare

__all__ = [
    "BUDGETS",
    "METHODS",
    "Budget",
    "CompareConfig",
    "Fitted",
    "Method",
    "compare",
    "run_compare",
]
