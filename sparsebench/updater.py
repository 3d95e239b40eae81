"""The mask updater: drives a scheme's schedule during training, one call per optimizer step.

``sparsify(model, scheme, total_steps=T)`` with a dynamic schedule (``schedules.py``) attaches one
``MaskUpdater`` to the model as ``model.mask_updater``. A training loop calls
``model.mask_updater.step(optimizer)`` right after each ``optimizer.step()``; nothing else changes::

    model = sparsify(model, "random:0.9/rigl@csr", total_steps=T, example_inputs=batch)
    optimizer = torch.optim.Adam(model.parameters())
    for x, y in batches:                      # T steps
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        model.mask_updater.step(optimizer)    # prunes, or drops and grows, when the schedule says

The shape follows jaxpruner's updater (an object the loop calls after the gradient update, holding
the schedule), not torch's pruning hooks: those re-apply a mask to a dense weight on every forward,
which is what sparse storage exists to avoid. The updater changes the stored structure itself
(``restructure``) and tells the optimizer (its state is carried, dropped or zeroed per weight).

What each schedule does at an update, per pruned layer (units: weights, or blocks by L1 norm):
- ``gmp``/``oneshot``: prune the kept units of smallest magnitude until the layer zeroes the
  distribution's count at the schedule's level. Layers start dense, stored ``masked``; a layer moves
  to the scheme's representation (``auto``: the one ``auto`` picks) once that representation trains
  in no more memory than the dense layer (``auto``'s memory rule). ``switches`` records when.
- ``set``/``rigl``: drop ``round(alpha_t * kept)`` kept units of smallest magnitude, then grow as
  many among the units not kept after the drop: at random (``set``) or where the magnitude of the dense
  weight gradient of this step's batch is largest (``rigl``). The kept count never changes.
  RigL's dense gradient is computed only on the step before each update: hooks save each layer's
  input and output gradient and form ``dy^T x`` (for a conv, its weight gradient) one layer at a time.

Every update is timed: ``update_s`` (the mask changes, in ``step``) and ``dense_grad_s`` (RigL's dense
gradients, inside the backward pass of the step before an update). ``report()`` is what a result stores.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace

import torch
from torch import nn

from . import distributions
from .patterns import as_matrix, unit_scores
from .representations import REPRESENTATIONS, SparseLinear
from .restructure import restructure, switch, unit_mask
from .schedules import RigL
from .schemes import Scheme


def dense_weight_grad(module: nn.Module, x: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    """The gradient of the loss with respect to every position of the layer's weight, (out, in*kh*kw)."""
    if isinstance(module, SparseLinear):
        return dy.reshape(-1, dy.shape[-1]).t() @ x.reshape(-1, x.shape[-1])
    shape = module.sparse_weight.shape
    grad = torch.nn.grad.conv2d_weight(module.padded(x), shape, dy, module.stride, module.kernel_padding,
                                       module.dilation)
    return as_matrix(grad)


def without_smallest(units: torch.Tensor, scores: torch.Tensor, k: int) -> torch.Tensor:
    """``units`` less its ``k`` kept units of smallest score. topk over the kept units only: a few
    bytes per kept unit, not a sort of the whole layer."""
    idx = units.reshape(-1).nonzero().reshape(-1)
    gone = idx[torch.topk(scores.reshape(-1)[idx], k, largest=False, sorted=False).indices]
    out = units.clone().reshape(-1)
    out[gone] = False
    return out.reshape(units.shape)


def with_largest(units: torch.Tensor, scores: torch.Tensor, k: int) -> torch.Tensor:
    """``units`` plus the ``k`` units of largest score among those it does not keep."""
    free = scores.reshape(-1).masked_fill(units.reshape(-1), -math.inf)
    out = units.clone().reshape(-1)
    out[torch.topk(free, k, sorted=False).indices] = True
    return out.reshape(units.shape)


class MaskUpdater:
    def __init__(self, scheme: Scheme, layers: dict[str, nn.Module], total_steps: int, seed: int = 0,
                 input_shapes: dict[str, tuple[int, ...]] | None = None):
        if not isinstance(total_steps, int) or total_steps < 1:
            raise ValueError(f"schedule '{scheme.schedule}' needs the run's length: total_steps must be a positive "
                             f"whole number of optimizer steps, got {total_steps!r}")
        self.scheme, self.schedule, self.total_steps = scheme, scheme.schedule, total_steps
        self.layers = dict(layers)  # name -> SparseLinear / SparseConv2d
        self.shapes = {name: tuple(m.sparse_weight.shape) for name, m in self.layers.items()}
        self.unit = scheme.pattern.unit
        self.sparsity = scheme.target_sparsity
        self.input_shapes = dict(input_shapes or {})
        self.level = 0.0 if self.schedule.starts_dense else self.sparsity
        self.gen = torch.Generator().manual_seed(int(seed) + 104729)  # SET's regrowth draws: their own stream
        self.steps = 0
        self.update_s = 0.0
        self.dense_grad_s = 0.0
        self.history: list[dict] = []  # one entry per update that changed a mask
        self.switches: list[dict] = []
        self.settled: set[str] = set()  # layers whose storage is decided (switched, or auto kept masked)
        self.capturing = self._captures_for(1)  # the first step may itself be an update
        self.dense_scores: dict[str, torch.Tensor] = {}
        self.hooks = []
        if isinstance(self.schedule, RigL):
            self.hooks = [m.register_forward_hook(self._capture(name)) for name, m in self.layers.items()]

    # -- the loop's one call ----------------------------------------------------------------
    def step(self, optimizer: torch.optim.Optimizer) -> bool:
        """Advance by one optimizer step; update masks where the schedule says. True if any mask changed."""
        self.steps += 1
        start = time.perf_counter()
        changed = self._apply(self.steps, optimizer)
        self.capturing = self._captures_for(self.steps + 1)
        self.update_s += time.perf_counter() - start
        return changed

    def _captures_for(self, step: int) -> bool:
        """Whether step ``step``'s backward pass must compute RigL's dense gradients (it ends in an update)."""
        return isinstance(self.schedule, RigL) and self.schedule.drop_fraction(step, self.total_steps) > 0

    def _apply(self, step: int, optimizer) -> bool:
        if self.schedule.starts_dense:
            level = self.schedule.level_at(step, self.total_steps, self.sparsity)
            if level > self.level:
                self._prune_to(level, optimizer, step)
                return True
        elif self.schedule.regrows:
            fraction = self.schedule.drop_fraction(step, self.total_steps)
            if fraction > 0:
                self._drop_and_grow(fraction, optimizer, step)
                return True
        return False

    # -- for the cost passes: the state at the end of the schedule, and one update now ----
    def finish_now(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Jump to the end of the schedule (gradual schedules: pruned to S and stored as they end);
        a drop-and-grow schedule's structure is already its final kind."""
        if self.schedule.starts_dense and self.level < self.sparsity:
            self._prune_to(self.sparsity, optimizer, self.steps)

    def capture_next(self) -> None:
        """Compute RigL's dense gradients in the next backward pass (``force_update`` needs them)."""
        self.capturing = isinstance(self.schedule, RigL)

    def force_update(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        """The schedule's largest update, now: prune to S (gradual), or drop and grow alpha (SET, RigL)."""
        start = time.perf_counter()
        if self.schedule.starts_dense:
            self.finish_now(optimizer)
        else:
            self._drop_and_grow(self.schedule.alpha, optimizer, self.steps)
        self.capturing = False
        self.update_s += time.perf_counter() - start

    # -- pruning ---------------------------------------------------------------------------
    def _prune_to(self, level: float, optimizer, step: int) -> None:
        targets = distributions.counts(self.scheme.distribution, self.shapes, level, self.unit)
        moved = 0
        for name, module in self.layers.items():
            weight = module.sparse_weight
            units = unit_mask(weight)
            more = targets[name] - int((~units).sum())  # pruning only: never regrow what is gone
            if more > 0:
                magnitude = unit_scores(as_matrix(weight.to_dense()).abs(), self.unit)
                restructure(weight, without_smallest(units, magnitude, more), optimizer)
                moved += more
            self._maybe_switch(name, module, optimizer, level, step)
        self.level = level
        self.history.append({"step": step, "sparsity": round(level, 6), "units_pruned": moved})

    def _maybe_switch(self, name: str, module: nn.Module, optimizer, level: float, step: int) -> None:
        """Move a densely stored layer to its sparse representation once it trains in no more memory there."""
        from .representations.auto import RULES, candidates, choose, training_bytes

        target = self.scheme.representation
        if name in self.settled or target == "masked" or module.sparse_weight.name != "masked":
            return
        weight = module.sparse_weight
        at_level = replace(self.scheme.static, pattern=replace(self.scheme.pattern, sparsity=round(level, 6)))
        shape2d = tuple(as_matrix(weight.kept).shape)
        names = [n for n in candidates(at_level, shape2d, name) if n != "masked"] if target in RULES else [target]
        dense, mask = weight.to_dense(), weight.mask()
        fits = any(training_bytes(REPRESENTATIONS[n](dense, mask, at_level.with_representation(n)))
                   <= 16 * weight.dense_numel for n in names)
        if not fits:
            return
        self.settled.add(name)
        chosen = target
        if target in RULES:  # a selection policy (auto, fastest): it picks the representation
            chosen = choose(at_level, name, module.plain(), mask, self.input_shapes.get(name))
            if chosen == "masked":
                return
        switch(module, chosen, optimizer)
        self.switches.append({"layer": name, "step": step, "sparsity": round(level, 6), "to": chosen})

    # -- drop and grow ---------------------------------------------------------------------
    def _drop_and_grow(self, fraction: float, optimizer, step: int) -> None:
        moved = 0
        for name, module in self.layers.items():
            weight = module.sparse_weight
            units = unit_mask(weight)
            kept = int(units.sum())
            k = min(math.floor(fraction * kept + 0.5), kept - 1)
            if k <= 0:
                continue
            magnitude = unit_scores(as_matrix(weight.to_dense()).abs(), self.unit)
            after_drop = without_smallest(units, magnitude, k)
            new = with_largest(after_drop, self._grow_scores(name, units.shape).to(units.device), k)
            if int(new.sum()) != kept:
                raise AssertionError(f"layer {name!r}: an update changed the kept count: {kept} -> {int(new.sum())}")
            moved += int((units & ~new).sum())
            restructure(weight, new, optimizer)
        self.dense_scores.clear()
        self.history.append({"step": step, "drop_fraction": round(fraction, 6), "units_moved": moved})

    def _grow_scores(self, name: str, shape) -> torch.Tensor:
        if not isinstance(self.schedule, RigL):
            return torch.rand(shape, generator=self.gen)
        if name not in self.dense_scores:
            raise RuntimeError(f"rigl needs the dense gradient of layer {name!r} from the update step's backward "
                               "pass: call mask_updater.step(optimizer) after every optimizer step (it arms the "
                               "capture on the step before each update)")
        return self.dense_scores[name]

    def _capture(self, name: str):
        def hook(module, args, output):
            if not self.capturing or not torch.is_grad_enabled() or not output.requires_grad:
                return
            x = args[0].detach()

            def on_grad(dy):
                start = time.perf_counter()
                with torch.no_grad():
                    self.dense_scores[name] = unit_scores(dense_weight_grad(module, x, dy).abs(), self.unit)
                self.dense_grad_s += time.perf_counter() - start

            output.register_hook(on_grad)
        return hook

    # -- what a result stores -----------------------------------------------------------------
    def report(self) -> dict:
        overhead = self.update_s + self.dense_grad_s
        return {"schedule": str(self.schedule), "distribution": self.scheme.distribution,
                "total_steps": self.total_steps, "steps": self.steps, "updates": len(self.history),
                "update_s": self.update_s, "dense_grad_s": self.dense_grad_s,
                "overhead_s_per_step": overhead / max(self.steps, 1),
                "switches": list(self.switches), "history": list(self.history)}

    def remove(self) -> None:
        """Detach the capture hooks (the model then trains with its masks fixed)."""
        for h in self.hooks:
            h.remove()
        self.hooks = []

