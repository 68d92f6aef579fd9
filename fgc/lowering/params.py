"""Labels over a lowered network's parameters: which node and group owns each array,
which arrays are weights, and how many parameters there are (buffers excluded).

Both the optimizer set-up (:mod:`fgc.training.optimizers`) and user code that builds its
own optax transformation read a network's arrays through these.
"""

from __future__ import annotations

import equinox as eqx
import jax
from jaxtyping import PyTree

from fgc.lowering.modules import is_buffer, trainable

if False:  # typing only
    from fgc.lowering.lower import Network
    from fgc.plan.program import Plan

__all__ = ["count_params", "is_weight", "node_of", "param_labels", "weight_mask"]


def node_of(path) -> str:
    """The node that owns the array at ``path`` (paths into a Network's arrays are
    ``(.layers, [node id], .param)``)."""
    return path[1].key


def is_weight(path) -> bool:
    """Whether the array at ``path`` is a weight or kernel (not a bias or norm parameter):
    what weight decay applies to."""
    return getattr(path[-1], "name", None) == "weight"


def param_labels(network: Network, plan: Plan) -> PyTree[str]:
    """Each parameter's group name (from ``plan.assignment``), for ``optax.partition``.

    Args:
      network: the network, or its parameters ``eqx.filter(network, trainable(network))``
        (or any pytree of the same structure).
      plan: the plan it was lowered from.

    Returns:
      A pytree shaped like ``eqx.filter(network, trainable(network))`` with the group
      name at every array leaf.

    A ``Network`` is callable, and optax calls a callable ``param_labels`` or
    ``mask`` instead of reading it as a tree; hand optax a function:

    Example:
        >>> labels = functools.partial(param_labels, plan=plan)     # doctest: +SKIP
        >>> opt = optax.partition({g: optax.sgd(0.1) for g in plan.groups}, labels)
        >>> opt.init(eqx.filter(net, trainable(net)))
    """
    def label(path, leaf):
        nid = node_of(path)
        if nid not in plan.assignment:
            raise KeyError(f"`{nid}` has parameters but no group in the plan")
        return plan.assignment[nid]

    return jax.tree_util.tree_map_with_path(label, eqx.filter(network, trainable(network)))


def weight_mask(network: Network) -> PyTree[bool]:
    """True for weights and kernels, False for biases and norm scales/shifts.

    Args:
      network: the network or its parameters (any pytree of its structure).

    Returns:
      A pytree shaped like ``eqx.filter(network, trainable(network))``.

    Pass the function itself where optax takes a mask (a mask *tree* shaped like
    a ``Network`` is callable, and optax would call it):

    Example:
        >>> decay = optax.add_decayed_weights(1e-4, mask=weight_mask)   # doctest: +SKIP
    """
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: is_weight(path),
        eqx.filter(network, trainable(network)))


def count_params(network: Network) -> int:
    """Number of trainable parameters (buffers such as batch-norm running statistics
    excluded); also works on ``eqx.filter_eval_shape`` output."""
    kept = jax.tree_util.tree_map(lambda x: None if is_buffer(x) else x, network, is_leaf=is_buffer)
    leaves = jax.tree_util.tree_leaves(
        kept, is_leaf=lambda x: isinstance(x, jax.ShapeDtypeStruct))
    return sum(int(x.size) for x in leaves if eqx.is_array(x) or isinstance(x, jax.ShapeDtypeStruct))
