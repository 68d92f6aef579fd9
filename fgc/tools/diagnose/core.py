"""Every call `fgc diagnose` makes into fgc's learning core, one small function per kind
of call, so that a change to how update rules are built, how a network's trainable arrays
are filtered or how a plan is lowered is one edit here."""

from __future__ import annotations


def trainable(net):
    """The network's trainable arrays (the gradient pytree's structure)."""
    import equinox as eqx
    from fgc.lowering.modules import trainable as spec
    return eqx.filter(net, spec(net))


def _partition(net):
    import equinox as eqx
    from fgc.lowering.modules import trainable as spec
    return eqx.partition(net, spec(net))


def _objective(params, static, x, y):
    """The objective the algorithm minimises, of the network ``params`` + ``static``."""
    import equinox as eqx

    from fgc.learning.estimators import objective
    return objective(eqx.combine(params, static).forward(x, y).losses)


def build_rule(plan, net):
    """The update rule of a plan for a lowered network."""
    from fgc.learning.estimators import UpdateRule
    return UpdateRule.build(plan, net)


def end_to_end_net(bp, run, net):
    """``net``'s layers inside the network BP lowers to (its losses, no stop-gradients)."""
    import equinox as eqx
    import jax

    from fgc.lowering.lower import lower
    ref = lower(bp, jax.random.key(0), stats=(run.data.mean, run.data.std))
    return eqx.tree_at(lambda n: n.layers, ref, net.layers)


# --- the jitted pieces --------------------------------------------------------------------------

def _grad_fn():
    import equinox as eqx
    import jax

    @eqx.filter_jit
    def grad(net, x, y):
        params, static = _partition(net)
        return jax.tree_util.tree_leaves(
            jax.grad(lambda p: _objective(p, static, x, y))(params))
    return grad


def _per_example_fn(indices: tuple[int, ...]):
    """Σₙ ‖∇Jₙ‖² per selected leaf, Jₙ the objective of example n alone."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    @eqx.filter_jit
    def per_example(net, x, y):
        params, static = _partition(net)

        def one(xn, yn):
            g = jax.grad(lambda p: _objective(p, static, xn[None], yn[None]))(params)
            leaves = jax.tree_util.tree_leaves(g)
            return jnp.stack([jnp.sum(leaves[i] ** 2) for i in indices])
        return jax.vmap(one)(x, y).sum(axis=0)
    return per_example


def _draws_fn(rule, indices: tuple[int, ...]):
    """``chunk`` independent estimates of one batch, reduced to what the statistics need:
    Σ (ĝ − g) and Σ (ĝ − g)² per dimension (the variance, without cancellation), and per
    draw and leaf ĝ·g, ĝ·g_e2e and ‖ĝ‖² (the cosines of any set of leaves)."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    @eqx.filter_jit
    def draws(net, x, y, keys, true, e2e):
        def one(key):
            leaves = jax.tree_util.tree_leaves(rule.estimate(net, x, y, key).grads)
            est = [leaves[i] for i in indices]
            err = [a - t for a, t in zip(est, true)]
            dots = jnp.stack([jnp.stack([jnp.vdot(a, t), jnp.vdot(a, e), jnp.vdot(a, a)])
                              for a, t, e in zip(est, true, e2e)])  # [leaves, 3]
            return err, dots
        err, dots = jax.vmap(one)(keys)
        return [e.sum(0) for e in err], [(e * e).sum(0) for e in err], dots
    return draws
