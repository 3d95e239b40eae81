"""Model surgery: which layers are pruned, and by which representation they are replaced.

By default every nn.Linear and nn.Conv2d weight (subclasses included, such as the ``out_proj`` of
nn.MultiheadAttention) is pruned except the model's first layer and its final classifier (the usual
choice in the pruning literature). A subclass with its own ``forward`` is left dense: replacing it would
change what it computes. Every weight left dense is named with the reason in ``model.left_dense``
(``summary.summary`` prints it beside the pruned layers). A model may name its own dense
layers with a ``keep_dense`` attribute (e.g. the transformer's first layer is an embedding, so only
its classifier stays dense); ``keep_dense=`` here overrides both (``dense_layers`` says which they are).
``check_scheme`` checks a scheme against every layer it would prune, before any is touched: sparsify runs it
first, and the grid runs it on models built on the meta device before anything trains.

Which representation stores a layer is the scheme's, or, for a selection policy (``auto``), the one
the policy picks for that layer; either way the layer's ``sparse_weight.name`` says which.

A scheme with a dynamic schedule (``random:0.9/rigl``, ``magnitude:0.9/gmp``) needs the run's length
(``total_steps``) and leaves a ``MaskUpdater`` on the model as ``model.mask_updater`` (``updater.py``):
the training loop calls ``model.mask_updater.step(optimizer)`` after each optimizer step. A gradual
schedule (``gmp``, ``oneshot``) builds every pruned layer dense, stored ``masked``, and the updater
moves each to the scheme's representation when it is sparse enough to pay. A distribution other than
uniform (``/erk``) sets each layer's count of zeroed weights (``distributions.py``).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable

import torch
from torch import nn

from . import distributions
from .patterns import as_matrix, make_mask
from .representations import REPRESENTATIONS, SparseConv2d, SparseLinear, auto
from .schemes import Scheme, parse_scheme
from .updater import MaskUpdater

# representation name -> the policy that picks a concrete representation per layer:
# (scheme, layer name, layer, mask, input shape or None) -> representation name
POLICIES = {"auto": auto.choose, "fastest": auto.choose}  # auto.choose reads which rule from the scheme


_KINDS = (nn.Linear, nn.Conv2d)


def _own_forward(module: nn.Module) -> bool:
    """A Linear/Conv2d subclass that computes something else than its base class."""
    base = next(k for k in _KINDS if isinstance(module, k))
    return type(module).forward is not base.forward


def _weight_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The Linear and Conv2d layers (by kind: subclasses too) that a sparse layer can replace."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, _KINDS) and not _own_forward(m)]


def left_dense_reasons(model: nn.Module, pruned: Iterable[str], keep_dense: Iterable[str] | None) -> dict[str, str]:
    """Every weight of ``model`` that ``pruned`` leaves dense -> why (weights of at least two dimensions: layers'
    matrices and kernels, not norms and biases)."""
    pruned, explicit = set(pruned), keep_dense is not None
    layers = [n for n, _ in _weight_layers(model)]
    model_named = set(getattr(model, "keep_dense", None) or ())
    reasons = {}
    for name, module in model.named_modules():
        if isinstance(module, (SparseLinear, SparseConv2d)) or name in pruned:
            continue
        if isinstance(module, nn.MultiheadAttention):
            for pname in ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight"):
                if getattr(module, pname, None) is not None:
                    reasons[f"{name}.{pname}" if name else pname] = (
                        "nn.MultiheadAttention's own q/k/v projection parameter, not a layer: left dense")
        if isinstance(module, _KINDS):
            if _own_forward(module):
                why = f"{type(module).__name__} has its own forward: replacing it would change what it computes"
            elif explicit and name in set(keep_dense):
                why = "named by keep_dense"
            elif explicit:
                why = "not prunable here"
            elif name in model_named:
                why = "named by the model's keep_dense"
            elif layers and name == layers[0]:
                why = "the first layer: dense by default"
            elif layers and name == layers[-1]:
                why = "the last layer (the classifier): dense by default"
            else:
                why = "not prunable here"
            reasons[name] = why
        elif isinstance(getattr(module, "weight", None), nn.Parameter) and module.weight.dim() >= 2:
            reasons[name] = (f"{type(module).__name__}: only Linear and Conv2d layers are pruned"
                             if not isinstance(module, nn.Embedding) else "nn.Embedding: a lookup, not a product")
    return reasons


def dense_layers(model: nn.Module, also: Iterable[str] = ()) -> set[str]:
    """The layers a scheme leaves dense by default, plus ``also``: the model's ``keep_dense``, else its
    first and last Linear/Conv2d (none when it has only one)."""
    default = getattr(model, "keep_dense", None)
    if default is None:
        layers = [n for n, _ in _weight_layers(model)]
        default = {layers[0], layers[-1]} if len(layers) > 1 else set()
    return set(default) | set(also)


def prunable_layers(model: nn.Module, keep_dense: Iterable[str] | None = None) -> list[tuple[str, nn.Module]]:
    """(name, module) of the Linear/Conv2d layers that the scheme applies to, in model order: all but
    ``keep_dense`` (default: ``dense_layers(model)``). ValueError when it names a layer the model lacks."""
    layers = _weight_layers(model)
    keep_dense = dense_layers(model) if keep_dense is None else set(keep_dense)
    unknown = keep_dense - {n for n, _ in layers}
    if unknown:
        raise ValueError(f"keep_dense names {sorted(unknown)}, which are not Linear/Conv2d layers of this model; "
                         f"its layers are {[n for n, _ in layers]}")
    return [(n, m) for n, m in layers if n not in keep_dense]


class LayerRefused(ValueError):
    """A scheme one layer cannot take; the message names the layer and the fix, ``layer`` is its name."""

    def __init__(self, message: str, layer: str):
        super().__init__(message)
        self.layer = layer


def check_scheme(model: nn.Module, scheme: Scheme | str,
                 keep_dense: Iterable[str] | None = None) -> list[tuple[str, nn.Module]]:
    """The layers ``scheme`` prunes in ``model`` (``prunable_layers``), each checked against it first: a grouped
    convolution, a pattern that does not fit the layer's weight matrix, or a representation that cannot
    serve it raises LayerRefused; a representation this machine cannot run raises RepresentationUnavailable.
    A dense scheme prunes nothing (and checks nothing). Reads only shapes: a model on the meta device will do."""
    scheme = parse_scheme(scheme)
    if not scheme.pattern.sparse:
        return []
    layers = prunable_layers(model, keep_dense)
    shapes = {}
    for name, layer in layers:  # what the pattern needs, on every layer, before what this machine can run
        if isinstance(layer, nn.Conv2d) and layer.groups != 1:
            raise LayerRefused(f"layer {name!r}: grouped convolutions (groups={layer.groups}) are not supported; "
                               f"leave it dense with sparsify(..., keep_dense=[{name!r}, ...])", name)
        shapes[name] = tuple(as_matrix(layer.weight).shape)
        _refused_by(name, scheme.pattern.check_shape, shapes[name], name)
    if scheme.representation not in POLICIES:  # a policy checks its candidates itself (masked serves every layer)
        representation = REPRESENTATIONS[scheme.representation]
        for name, layer in layers:
            _refused_by(name, representation.check_layer, scheme, shapes[name], name)
            why = representation.unsupported(layer.weight.dtype, layer.weight.device)
            if why and not layer.weight.is_meta:
                raise LayerRefused(f"layer {name!r} is {layer.weight.dtype} on {layer.weight.device.type}, where "
                                   f"'{scheme.representation}' cannot run: {why}; choose another representation "
                                   "('masked' runs anywhere)", name)
    return layers


def _refused_by(layer: str, check, *args) -> None:
    """``check(*args)``, its ValueError raised again as LayerRefused (the same message) for ``layer``."""
    try:
        check(*args)
    except ValueError as e:
        raise LayerRefused(str(e), layer) from e


def layer_seed(seed: int, name: str) -> int:
    """A per-layer seed that does not depend on Python's hash randomisation."""
    return (int(seed) * 1_000_003 + zlib.crc32(name.encode())) % (2**63)


def layer_inputs(model: nn.Module, layers, example_inputs) -> dict[str, tuple[int, ...]]:
    """The input shape each layer sees when ``model`` runs ``example_inputs`` (one no-grad forward)."""
    shapes: dict[str, tuple[int, ...]] = {}

    def record(name):
        def hook(module, args):  # returns None: the forward runs unchanged
            shapes.setdefault(name, tuple(args[0].shape))
        return hook

    hooks = [layer.register_forward_pre_hook(record(name)) for name, layer in layers]
    try:
        with torch.no_grad():
            model(example_inputs)
    finally:
        for hook in hooks:
            hook.remove()
    return shapes


def layer_counts(scheme: Scheme, layers) -> dict[str, int | None]:
    """Units each layer zeroes at build time: none for a gradual schedule (it starts dense), the
    distribution's counts for a non-uniform one, else None (the pattern's own per-layer rule)."""
    if scheme.schedule.starts_dense:
        return {name: 0 for name, _ in layers}
    if scheme.distribution == "uniform":
        return {name: None for name, _ in layers}
    shapes = {name: tuple(layer.weight.shape) for name, layer in layers}
    return distributions.counts(scheme.distribution, shapes, scheme.target_sparsity, scheme.pattern.unit)


def sparsify(model: nn.Module, scheme: Scheme | str, seed: int = 0, keep_dense: Iterable[str] | None = None,
             example_inputs: torch.Tensor | None = None, total_steps: int | None = None) -> nn.Module:
    """Replace the prunable layers of ``model`` in place with ``scheme``'s representation; returns the model.

    Every layer is checked (and, for a policy, its representation chosen) before any is replaced, so
    a refused scheme leaves the model untouched. Then the layers are replaced one at a time, each
    dense weight released as soon as its sparse form exists: building never holds the dense model
    and its sparse copy together (beyond one layer's weight). A prunable layer left on the meta device
    (``with torch.device("meta"):`` while building the model) is initialised here
    (``reset_parameters()``, on the device of the model's other parameters) just before its sparse
    form is made, so a model whose dense weights would not fit can be built sparse.
    ``example_inputs`` (a batch as training will see it) lets a selection policy (``auto``) time
    each layer at its input shape. ``total_steps``: the run's optimizer steps, which a dynamic
    schedule needs (its fractions are of it); the model then carries ``model.mask_updater``.
    """
    scheme = parse_scheme(scheme)
    if not scheme.pattern.sparse:
        model.left_dense = {name: "the scheme is dense" for name in left_dense_reasons(model, (), keep_dense)}
        return model
    if scheme.schedule.dynamic and total_steps is None:
        raise ValueError(f"scheme '{scheme}': schedule '{scheme.schedule}' needs the run's length; pass "
                         "sparsify(..., total_steps=<optimizer steps of the run>)")
    policy = POLICIES.get(scheme.representation)
    if policy is not None and scheme.schedule.starts_dense and example_inputs is None:
        raise ValueError(f"scheme '{scheme}': '{scheme.representation}' times each layer when it switches to sparse "
                         "storage; pass sparsify(..., example_inputs=a training batch)")
    layers = check_scheme(model, scheme, keep_dense)
    left_dense = left_dense_reasons(model, [n for n, _ in layers], keep_dense)
    counts = layer_counts(scheme, layers)
    meta = [name for name, layer in layers if layer.weight.is_meta]
    if meta and policy is not None:
        raise ValueError(f"layers {meta} are on the meta device: '{scheme.representation}' times each layer's real "
                         "weight; build the model on a real device, or choose a representation")
    real = [p for p in model.parameters() if not p.is_meta]
    device = real[0].device if real else torch.device("cpu")
    # a forward pass only for a policy, which times the layers at their input shapes
    shapes = layer_inputs(model, layers, example_inputs) if policy and example_inputs is not None else {}
    # every choice is made before any layer is replaced, so a refusal leaves the model untouched
    concrete = {name: scheme for name, _ in layers}
    if scheme.schedule.starts_dense:  # stored densely until the updater prunes them far enough to pay
        concrete = {name: scheme.with_representation("masked") for name, _ in layers}
    elif policy is not None:
        for name, layer in layers:
            mask = make_mask(layer.weight, scheme, seed=layer_seed(seed, name), layer=name, n_zero=counts[name])
            concrete[name] = scheme.with_representation(policy(scheme, name, layer, mask, shapes.get(name)))
            del mask
    # then one layer at a time: its sparse form is built and swapped in, and its dense weight is
    # dropped before the next is built, so at most one layer's dense weight lives beside sparse ones
    # (the caller's other references to a layer, if any, keep it alive)
    del layers
    for name in list(concrete):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        layer = getattr(parent, child)
        if layer.weight.is_meta:  # built lazily: its dense weight exists only while its sparse form is made
            layer.to_empty(device=device)
            layer.reset_parameters()
        mask = make_mask(layer.weight, scheme, seed=layer_seed(seed, name), layer=name, n_zero=counts[name])
        weight = REPRESENTATIONS[concrete[name].representation](layer.weight.detach(), mask, concrete[name])
        del mask
        new = SparseLinear(weight, layer.bias) if isinstance(layer, nn.Linear) else SparseConv2d(weight, layer.bias,
                                                                                                  layer)
        new.layer = name
        setattr(parent, child, new)
        del layer, weight, new  # the dense layer (and its weight) goes with the last reference
    model.left_dense = left_dense
    if scheme.schedule.dynamic:
        model.mask_updater = MaskUpdater(scheme, {name: model.get_submodule(name) for name in concrete},
                                         total_steps, seed=seed, input_shapes=shapes)
    return model

