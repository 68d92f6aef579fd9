"""Data augmentation as a registry: name → a vectorised function on a batch of images.

``train { augment = [crop(pad = 4), flip] }`` names augmentations in the order they
apply. Each is registered with :func:`register` together with its arguments (name,
type, default, check), so :func:`check` validates a spec's list with located
diagnostics and :func:`make` builds one jax function ``(images, key) -> images``
that runs inside the jit-compiled train step, on the device, on the raw ``uint8``
(or float) pixels before the network normalises them. Only the training batches
pass through it; evaluation never does.

Adding one (e.g. the BYOL-style two-view augmentation of a contrastive loss) is a
registration::

    @register("solarize", Param("threshold", (int, float), 128, lambda v: v >= 0))
    def _solarize(x, key, threshold): ...

Every augmentation draws its own randomness from ``key`` (folded with its position
in the list), per example, so a run is a function of its seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array, PRNGKeyArray

__all__ = ["AUGMENTATIONS", "Augmentation", "Param", "check", "make", "register"]


@dataclass(frozen=True)
class Param:
    """One keyword argument of an augmentation."""

    name: str
    kind: type | tuple = int
    default: Any = None
    ok: Callable[[Any], bool] = lambda v: True
    want: str = ""  # what `ok` demands, for the message


@dataclass(frozen=True)
class Augmentation:
    name: str
    fn: Callable[..., Array]  # (images [B, H, W, C], key, **kwargs) -> images
    params: tuple[Param, ...] = ()
    doc: str = ""


AUGMENTATIONS: dict[str, Augmentation] = {}


def register(name: str, *params: Param, doc: str = "") -> Callable:
    def deco(fn):
        if name in AUGMENTATIONS:
            raise ValueError(f"augmentation `{name}` is already registered")
        AUGMENTATIONS[name] = Augmentation(name, fn, params, doc or (fn.__doc__ or "").strip())
        return fn
    return deco


def _images(x: Array) -> None:
    if x.ndim != 4:
        raise ValueError(f"augmentations need images [B, H, W, C], got a batch of shape {x.shape}")


@register("crop", Param("pad", int, 4, lambda v: v >= 0, "an integer ≥ 0"),
          doc="pads each image with `pad` zero pixels on every side, then cuts a window of "
              "the original size at a random offset (a shift of up to ±pad pixels)")
def _crop(x: Array, key: PRNGKeyArray, pad: int) -> Array:
    _images(x)
    if pad == 0:
        return x
    b, h, w, c = x.shape
    padded = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    offsets = jax.random.randint(key, (b, 2), 0, 2 * pad + 1)

    def one(img, off):
        return jax.lax.dynamic_slice(img, (off[0], off[1], 0), (h, w, c))

    return jax.vmap(one)(padded, offsets)


@register("flip", doc="mirrors each image left-right with probability 1/2")
def _flip(x: Array, key: PRNGKeyArray) -> Array:
    _images(x)
    mirror = jax.random.bernoulli(key, 0.5, (x.shape[0],))
    return jnp.where(mirror.reshape(-1, 1, 1, 1), x[:, :, ::-1, :], x)


def check(calls, span_of: Callable[[int], Any], diags) -> None:
    """Validates ``[(name, kwargs), ...]`` against the registry; every problem is a
    diagnostic located by ``span_of(i)`` (the i-th list item)."""
    from fgc.graph.build import suggest
    for i, (name, kwargs) in enumerate(calls):
        aug = AUGMENTATIONS.get(name)
        if aug is None:
            diags.add("E207", f"unknown augmentation `{name}`", span_of(i),
                      suggest(name, AUGMENTATIONS) or f"known: {', '.join(sorted(AUGMENTATIONS))}")
            continue
        params = {p.name: p for p in aug.params}
        for k, v in kwargs:
            p = params.get(k)
            if p is None:
                diags.add("E203", f"augmentation `{name}` has no argument `{k}`", span_of(i),
                          suggest(k, params) or (f"arguments: {', '.join(params)}" if params
                                                 else f"`{name}` takes no arguments"))
            elif isinstance(v, bool) and bool not in (p.kind if isinstance(p.kind, tuple)
                                                      else (p.kind,)) \
                    or not isinstance(v, p.kind) or not p.ok(v):
                diags.add("E206", f"argument `{k}` of `{name}` must be {p.want or p.kind.__name__}, "
                          f"got {v!r}", span_of(i))


def make(calls) -> Callable[[Array, PRNGKeyArray], Array] | None:
    """One function ``(images, key) -> images`` applying ``[(name, kwargs), ...]`` in order;
    ``None`` for an empty list (the batch goes through untouched)."""
    calls = tuple(calls)
    if not calls:
        return None
    steps = []
    for name, kwargs in calls:
        aug = AUGMENTATIONS[name]
        kw = {p.name: p.default for p in aug.params} | dict(kwargs)
        steps.append((aug.fn, kw))

    def apply(x: Array, key: PRNGKeyArray) -> Array:
        for i, (fn, kw) in enumerate(steps):
            x = fn(x, jax.random.fold_in(key, i), **kw)
        return x

    return apply
