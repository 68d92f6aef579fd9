# fgc's GroupLinear.__call__ as shipped (einsum) and as a grouped 1-wide convolution (conv):
# the two forms variant.py, f64check.py and vmapped_grads.py compare.
import jax, jax.numpy as jnp
from fgc.lowering import modules as M
def einsum(self, x):
    g, gi, go = self.weight.shape
    xg = x.reshape(*x.shape[:-1], g, gi)
    (xg, w), kw = M._operands(self.precision, xg, self.weight)
    y = jnp.einsum("...gi,gio->...go", xg, w, **kw)
    if self.bias is not None:
        y = y + M._lead(self.bias, y)
    return y.reshape(*x.shape[:-1], g * go)


def conv(self, x):
    g, gi, go = self.weight.shape
    lead = x.shape[:-1]
    (x2, w), kw = M._operands(self.precision, x.reshape(-1, 1, g * gi), self.weight)
    k = jnp.transpose(w, (1, 0, 2)).reshape(1, gi, g * go)  # W I O, O grouped by g
    y = jax.lax.conv_general_dilated(x2, k, (1,), "VALID", dimension_numbers=("NWC", "WIO", "NWC"),
                                     feature_group_count=g, **({"precision": kw["precision"]} if "precision" in kw else {}))
    y = y.reshape(*lead, g, go)
    if self.bias is not None:
        y = y + M._lead(self.bias, y)
    return y.reshape(*lead, g * go)


# hybrid: a custom_jvp whose primal and input tangent are the grouped convolution and whose
# weight tangent is the einsum, so reverse mode's weight gradient is a batched dot (vmaps well)
import functools
from jax.custom_derivatives import SymbolicZero


def _conv_raw(xg, w, kw):
    kw = dict(kw)
    g, gi, go = w.shape
    lead = xg.shape[:-2]
    k = jnp.transpose(w, (1, 0, 2)).reshape(1, gi, g * go)
    y = jax.lax.conv_general_dilated(xg.reshape(-1, 1, g * gi), k, (1,), "VALID",
                                     dimension_numbers=("NWC", "WIO", "NWC"),
                                     feature_group_count=g, **kw)
    return y.reshape(*lead, g, go)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _grouped(xg, w, kw):
    return _conv_raw(xg, w, kw)


@functools.partial(_grouped.defjvp, symbolic_zeros=True)
def _grouped_jvp(kw, primals, tangents):
    xg, w = primals
    dx, dw = tangents
    y = _conv_raw(xg, w, kw)
    parts = []
    if not isinstance(dx, SymbolicZero):
        parts.append(_conv_raw(dx, w, kw))
    if not isinstance(dw, SymbolicZero):
        parts.append(jnp.einsum("...gi,gio->...go", xg, dw, **dict(kw)))
    t = parts[0] if len(parts) == 1 else parts[0] + parts[1] if parts else jnp.zeros_like(y)
    return y, t


def hybrid(self, x):
    g, gi, go = self.weight.shape
    xg = x.reshape(*x.shape[:-1], g, gi)
    (xg, w), kw = M._operands(self.precision, xg, self.weight)
    y = _grouped(xg, w, tuple(sorted(kw.items())))
    if self.bias is not None:
        y = y + M._lead(self.bias, y)
    return y.reshape(*x.shape[:-1], g * go)
