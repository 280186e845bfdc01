"""recbandits.ope: off-policy evaluation of a target policy on a logged-feedback dataset (docs/evaluation.md)."""

from recbandits.ope.estimators import ESTIMATORS, Estimate, LoggedRows, estimate, support

__all__ = ["ESTIMATORS", "Estimate", "LoggedRows", "estimate", "support"]
