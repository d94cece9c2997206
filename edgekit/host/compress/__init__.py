"""Host-side compression: one module and one verb per technique (prune, distill, spiral)."""

from .distill import distill, kd_loss
from .prune import prune, prune_unstructured
from .spiral import spiral

__all__ = ["distill", "kd_loss", "prune", "prune_unstructured", "spiral"]
