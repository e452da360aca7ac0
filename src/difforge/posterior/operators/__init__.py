"""Linear measurement operators ``y = A x``: one unit per operator, registered in ``registry``."""

from difforge.posterior.operators.base import SVD, LinearOperator

__all__ = ["SVD", "LinearOperator"]
