"""Leak accounting: each layer's change in relevance split into the mechanisms the rule's
formula implies, and the `leaks:` verdict of a conservation test.

The mechanisms come from the numpy reference (pytest_lrp.reference), the change from
innvestigate's per-layer relevance; what innvestigate changed that the formula does not
is `unexplained`. Sign convention as in the reference: a loss is negative.

Pure numpy: the engine fills a LeakAccount during the analysis (checks/reference_run.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..base.lazy import np
from ..config.rulefile import LEAK_MECHANISMS as MECHANISMS

UNEXPLAINED = "unexplained"


@dataclass
class LayerLeaks:
    """One layer's change (innvestigate: relevance handed to its inputs minus relevance at its
    output, per sample) and the reference's mechanisms for it."""

    name: str
    cls: str
    rule: str
    change: np.ndarray | None = field(repr=False)  # None: innvestigate kept no per-layer relevance
    mechanisms: dict = field(repr=False)  # mechanism -> (n,)

    @property
    def unexplained(self) -> np.ndarray | None:
        if self.change is None:
            return None
        return self.change - sum(self.mechanisms.values())


@dataclass
class LeakAccount:
    """The leak of one analysis by mechanism; ``errors`` is sum(R) - target per sample (signed)."""

    layers: list  # LayerLeaks, output first
    errors: np.ndarray = field(repr=False)
    # per sample: how far float32 rounding may move sum(R) from what the formula gives (the reference's bound)
    rounding: np.ndarray | None = field(default=None, repr=False)
    implementation: str = "innvestigate"  # whose changes per layer these are
    mechanisms: tuple = MECHANISMS  # the names the layers' mechanisms have (LXT's: config.rulefile)
    source: str = "numpy reference"  # what split the leak (LXT's: measured per module, transformer/accounting.py)

    def total(self, mechanism: str) -> np.ndarray:
        """Per sample: the mechanism summed over layers; for 'unexplained', the whole error minus every mechanism."""
        if mechanism == UNEXPLAINED:
            # Not the sum of the layers' unexplained parts: this also holds what happens
            # outside the layers (the relevance innvestigate starts with), and needs no
            # per-layer relevance from innvestigate, which index-mode analyses lack.
            return self.errors - sum(self.total(m) for m in self.mechanisms)
        return (
            np.sum([layer.mechanisms[mechanism] for layer in self.layers], axis=0)
            if self.layers
            else np.zeros_like(self.errors)
        )

    def totals(self, sample: int) -> dict:
        return {name: float(self.total(name)[sample]) for name in (*self.mechanisms, UNEXPLAINED)}


@dataclass
class LeakVerdict:
    """How the conservation test of a rule with `leaks:` came out for its samples."""

    declared: tuple
    explained: np.ndarray  # per sample: not conserved, but only declared mechanisms exceed the tolerance
    beyond: dict  # sample -> names of the undeclared mechanisms (or 'unexplained') beyond the tolerance

    @property
    def holds(self) -> bool:
        return not self.beyond


def judge(
    account: LeakAccount, failing: np.ndarray, bounds: np.ndarray, declared: tuple, unexplained_bounds: np.ndarray
) -> LeakVerdict:
    """A failing sample is excused when every undeclared mechanism stays within its bound and the unexplained rest
    within ``unexplained_bounds`` (the tolerance applied to the relevance that flows, see conservation.py)."""
    beyond = {}
    for sample in np.flatnonzero(failing):
        limits = {name: bounds[sample] for name in account.mechanisms}
        limits[UNEXPLAINED] = unexplained_bounds[sample]
        over = [
            name
            for name, limit in limits.items()
            if name not in declared and not abs(account.total(name)[sample]) <= limit
        ]
        if over:
            beyond[int(sample)] = over
    explained = failing & ~np.isin(np.arange(len(failing)), list(beyond))
    return LeakVerdict(declared=tuple(declared), explained=explained, beyond=beyond)


def split_line(account: LeakAccount, sample: int, target: float) -> str:
    """'leak by mechanism, sample 3: bias -1.2 (-9.8%), stabilizer 0, ..., unexplained +1e-06'."""
    parts = []
    for name, value in account.totals(sample).items():
        share = f" ({value / abs(target):+.1%})" if target != 0 and value != 0 and np.isfinite(value) else ""
        parts.append(f"{name} {value:+.3g}{share}" if value != 0 else f"{name} 0")
    return f"leak by mechanism ({account.source}), sample {sample}: " + ", ".join(parts)


def layer_lines(account: LeakAccount, sample: int) -> str:
    """The layers where something leaks, output first, each with its mechanisms and unexplained rest."""
    lines = []
    for layer in account.layers:
        values = {m: float(layer.mechanisms[m][sample]) for m in account.mechanisms}
        rest = layer.unexplained
        if rest is not None:
            values[UNEXPLAINED] = float(rest[sample])
        shown = [f"{name} {value:+.3g}" for name, value in values.items() if value != 0]
        if not shown or all(abs(v) < 1e-12 for v in values.values()):
            continue
        change = "" if layer.change is None else f"change {float(layer.change[sample]):+.4g} = "
        lines.append(f"  {layer.name} ({layer.cls}, {layer.rule}): {change}" + ", ".join(shown))
    if not lines:
        return ""
    return "\n".join(
        [f"leak per layer, sample {sample} ({account.implementation}'s change = mechanisms + unexplained):", *lines]
    )


def short_split(account: LeakAccount, sample: int, target: float) -> str:
    """The mechanisms that carry the leak, largest first, as a share of |target|: 'bias -9.8%, dropped -0.3%'."""
    totals = [(name, value) for name, value in account.totals(sample).items() if value != 0 and np.isfinite(value)]
    totals.sort(key=lambda item: -abs(item[1]))
    if target == 0:
        return ", ".join(f"{name} {value:+.3g}" for name, value in totals[:3])
    visible = [(name, value) for name, value in totals if abs(value / target) >= 5e-4][:3]
    return ", ".join(f"{name} {value / abs(target):+.1%}" for name, value in visible) or "none above 0.05%"
