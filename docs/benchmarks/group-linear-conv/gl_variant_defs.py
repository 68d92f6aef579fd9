# fgc's GroupLinear.__call__ as it was shipped before (einsum), as a grouped 1-wide convolution
# (conv), and as shipped now (hybrid): the forms variant.py, f64check.py and vmapped_grads.py compare.
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


# hybrid: fgc's GroupLinear as shipped since it became a custom_jvp (fgc/lowering/grouped.py:
# the convolution for the primal and the input tangent, the einsum for the weight tangent).
hybrid = M.GroupLinear.__call__
