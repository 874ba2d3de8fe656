"""Model structures pytest-lrp can explain, checked once when the model is loaded."""

from __future__ import annotations

from ..base.errors import LrpUsageError, shown


def check_softmax_only_at_the_end(model, path) -> None:
    """A final softmax is stripped before analysis; one inside the network has no LRP rule.

    innvestigate would refuse it too, but per analyzer and naming the layer by its
    Python repr; this says it once, by layer name.
    """
    for layer in model.layers[:-1]:
        if _applies_softmax(layer):
            raise LrpUsageError(
                f"{shown(path)}: layer '{layer.name}' applies a softmax inside the network; relevance cannot be "
                "propagated through it (only a softmax on the last layer is supported, and it is stripped)"
            )


def _applies_softmax(layer) -> bool:
    if type(layer).__name__ == "Softmax":
        return True
    activation = getattr(layer, "activation", None)
    return getattr(activation, "__name__", None) == "softmax"
