"""Model surgery: which layers are pruned, and by which representation they are replaced.

By default every nn.Linear and nn.Conv2d weight is pruned except the model's first layer and its
final classifier (the usual choice in the pruning literature). A model may name its own dense
layers with a ``keep_dense`` attribute (e.g. the transformer's first layer is an embedding, so only
its classifier stays dense); ``keep_dense=`` here overrides both.

Which representation stores a layer is the scheme's, or, for a selection policy (``auto``), the one
the policy picks for that layer; either way the layer's ``sparse_weight.name`` says which.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable

import torch
from torch import nn

from .patterns import as_matrix, make_mask
from .representations import REPRESENTATIONS, SparseConv2d, SparseLinear, auto
from .schemes import Scheme, parse_scheme

# representation name -> the policy that picks a concrete representation per layer:
# (scheme, layer name, layer, mask, input shape or None) -> representation name
POLICIES = {"auto": auto.choose}


def prunable_layers(model: nn.Module, keep_dense: Iterable[str] | None = None) -> list[tuple[str, nn.Module]]:
    """(name, module) of the Linear/Conv2d layers that the scheme applies to, in model order."""
    layers = [(n, m) for n, m in model.named_modules() if type(m) in (nn.Linear, nn.Conv2d)]
    if keep_dense is None:
        keep_dense = getattr(model, "keep_dense", None)
    if keep_dense is None:
        keep_dense = {layers[0][0], layers[-1][0]} if len(layers) > 1 else set()
    keep_dense = set(keep_dense)
    unknown = keep_dense - {n for n, _ in layers}
    if unknown:
        raise ValueError(f"keep_dense names {sorted(unknown)}, which are not Linear/Conv2d layers of this model; "
                         f"its layers are {[n for n, _ in layers]}")
    return [(n, m) for n, m in layers if n not in keep_dense]


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


def sparsify(model: nn.Module, scheme: Scheme | str, seed: int = 0, keep_dense: Iterable[str] | None = None,
             example_inputs: torch.Tensor | None = None) -> nn.Module:
    """Replace the prunable layers of ``model`` in place with ``scheme``'s representation; returns the model.

    Every layer is checked before any is replaced, so a refused scheme leaves the model untouched.
    ``example_inputs`` (a batch as training will see it) lets a selection policy (``auto``) time
    each layer at its input shape.
    """
    scheme = parse_scheme(scheme)
    if not scheme.spec.sparse:
        return model
    policy = POLICIES.get(scheme.representation)
    layers = prunable_layers(model, keep_dense)
    for name, layer in layers:
        if isinstance(layer, nn.Conv2d) and layer.groups != 1:
            raise ValueError(f"layer {name!r}: grouped convolutions (groups={layer.groups}) are not supported; "
                             f"leave it dense with sparsify(..., keep_dense=[{name!r}, ...])")
        shape2d = tuple(as_matrix(layer.weight).shape)
        scheme.spec.check_shape(shape2d, name)
        if policy is None:  # a policy checks its candidates itself (masked serves every layer)
            REPRESENTATIONS[scheme.representation].check_layer(scheme, shape2d, name)
    # a forward pass only for a policy, which times the layers at their input shapes
    shapes = layer_inputs(model, layers, example_inputs) if policy and example_inputs is not None else {}
    replacements = {}  # all built before any is swapped in, so a failure leaves the model untouched
    for name, layer in layers:
        mask = make_mask(layer.weight, scheme, seed=layer_seed(seed, name), layer=name)
        concrete = scheme
        if policy is not None:
            concrete = scheme.with_representation(policy(scheme, name, layer, mask, shapes.get(name)))
        weight = REPRESENTATIONS[concrete.representation](layer.weight.detach(), mask, concrete)
        if isinstance(layer, nn.Linear):
            replacements[name] = SparseLinear(weight, layer.bias)
        else:
            replacements[name] = SparseConv2d(weight, layer.bias, layer)
    for name, new in replacements.items():
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
    return model
