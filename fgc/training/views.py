"""Augmented views of a batch, made on the device inside the jitted train step.

``train { views = 2  augment = byol(min_area = 0.5) }`` turns a batch of ``B`` images
into ``2B`` rows: view 1 of every example, then view 2 (the layout a contrastive loss
reads, :mod:`fgc.lowering.contrastive`), the labels repeated to match. Every random
choice is drawn from the step's key, per image, and every transform is a batched
array expression (``jax.vmap`` over the images, no Python loop over them), so the views
of a step are a pure function of ``(key, batch)``: a resumed run makes the same ones.

The ``byol`` policy (Grill et al. 2020, as Ren et al. use it for their contrastive runs):

| transform | view 1 | view 2 |
|---|---|---|
| random resized crop: area ∈ [min_area, 1], aspect ∈ [3/4, 4/3], resized back (bilinear) | ✓ | ✓ |
| horizontal flip | p 0.5 | p 0.5 |
| colour jitter: brightness ±0.4, contrast ×[0.6, 1.4], saturation ×[0.8, 1.2], hue ±0.1 | p 0.8 | p 0.8 |
| grayscale | p 0.2 | p 0.2 |
| Gaussian blur, σ ∈ [0.1, 2], kernel ≈ image size / 10 | p 1.0 | p 0.1 |
| solarize (x ≥ 0.5 → 1 − x) | never | p 0.2 |

The jitter's four parts run in a random order per image, as in BYOL; hue rotates the
colour in YIQ space (a linear map; HSV's branches are not needed for small shifts).
Colour parts apply to 3-channel images only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from fgc.front.config import Call

__all__ = ["AUGMENTS", "Byol", "make_views"]

_LUMA = (0.2989, 0.5870, 0.1140)
_TO_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]],
                   np.float32)
_FROM_YIQ = np.linalg.inv(_TO_YIQ).astype(np.float32)


def _gray(img):
    w = jnp.asarray(_LUMA, img.dtype).reshape(1, 1, 3)
    return jnp.broadcast_to(jnp.sum(img * w, axis=-1, keepdims=True), img.shape)


def _crop(key, img, min_area: float):
    h, w = img.shape[0], img.shape[1]
    ka, kr, ky, kx = jax.random.split(key, 4)
    area = jax.random.uniform(ka, (), minval=min_area, maxval=1.0)
    logr = jax.random.uniform(kr, (), minval=math.log(3 / 4), maxval=math.log(4 / 3))
    ratio = jnp.exp(logr)
    fh = jnp.clip(jnp.sqrt(area / ratio), 0.0, 1.0)  # fractions of the side
    fw = jnp.clip(jnp.sqrt(area * ratio), 0.0, 1.0)
    y0 = jax.random.uniform(ky, ()) * (1.0 - fh) * h
    x0 = jax.random.uniform(kx, ()) * (1.0 - fw) * w
    scale = jnp.stack([1.0 / fh, 1.0 / fw]).astype(img.dtype)
    trans = jnp.stack([-y0 * scale[0], -x0 * scale[1]]).astype(img.dtype)
    return jax.image.scale_and_translate(img, img.shape, (0, 1), scale, trans, "linear",
                                         antialias=False)


def _jitter(key, img, strength: float):
    kb, kc, ks, kh, ko = jax.random.split(key, 5)
    b = jax.random.uniform(kb, (), minval=-0.4, maxval=0.4) * strength
    c = 1.0 + jax.random.uniform(kc, (), minval=-0.4, maxval=0.4) * strength
    s = 1.0 + jax.random.uniform(ks, (), minval=-0.2, maxval=0.2) * strength
    hue = jax.random.uniform(kh, (), minval=-0.1, maxval=0.1) * strength
    colour = img.shape[-1] == 3

    def brightness(x):
        return x + b

    def contrast(x):
        return (x - jnp.mean(x, axis=(0, 1), keepdims=True)) * c + \
            jnp.mean(x, axis=(0, 1), keepdims=True)

    def saturation(x):
        return (x - _gray(x)) * s + _gray(x) if colour else x

    def rotate_hue(x):
        if not colour:
            return x
        th = 2 * jnp.pi * hue
        one, zero = jnp.ones(()), jnp.zeros(())
        rot = jnp.stack([jnp.stack([one, zero, zero]),
                         jnp.stack([zero, jnp.cos(th), -jnp.sin(th)]),
                         jnp.stack([zero, jnp.sin(th), jnp.cos(th)])])
        m = jnp.asarray(_FROM_YIQ) @ rot @ jnp.asarray(_TO_YIQ)
        return x @ m.T.astype(x.dtype)

    branches = [lambda x, f=f: jnp.clip(f(x), 0.0, 1.0)
                for f in (brightness, contrast, saturation, rotate_hue)]
    order = jax.random.permutation(ko, 4)
    for i in range(4):  # step i applies part order[i]
        img = jax.lax.switch(order[i], branches, img)
    return img


def _blur(key, img):
    h = img.shape[0]
    radius = max(1, int(h / 10) // 2)
    sigma = jax.random.uniform(key, (), minval=0.1, maxval=2.0)
    t = jnp.arange(-radius, radius + 1, dtype=img.dtype)
    k = jnp.exp(-t * t / (2 * sigma * sigma))
    k = k / jnp.sum(k)
    pad = jnp.pad(img, ((radius, radius), (radius, radius), (0, 0)), mode="edge")
    rows = sum(k[i] * pad[i:i + h] for i in range(2 * radius + 1))            # [H, W+2r, C]
    w = img.shape[1]
    return sum(k[i] * rows[:, i:i + w] for i in range(2 * radius + 1))


def _maybe(key, p: float, f, img):
    if p <= 0:
        return img
    return jnp.where(jax.random.uniform(key, ()) < p, f(img), img)


@dataclass(frozen=True)
class Byol:
    """The BYOL augmentation policy (module docstring); ``min_area`` bounds the crop."""

    min_area: float = 0.08
    strength: float = 1.0
    blur: bool = True

    def view(self, key, img, which: int):
        """One augmented view (``which`` 0 or 1) of one image ``[H, W, C]`` on [0, 1]."""
        k = jax.random.split(key, 8)
        img = _crop(k[0], img, self.min_area)
        img = jnp.where(jax.random.uniform(k[1], ()) < 0.5, img[:, ::-1], img)
        img = _maybe(k[2], 0.8, lambda x: _jitter(k[3], x, self.strength), img)
        if img.shape[-1] == 3:
            img = _maybe(k[4], 0.2, _gray, img)
        if self.blur:
            img = _maybe(k[5], (1.0, 0.1)[which], lambda x: _blur(k[6], x), img)
        img = _maybe(k[7], (0.0, 0.2)[which], lambda x: jnp.where(x < 0.5, x, 1.0 - x), img)
        return jnp.clip(img, 0.0, 1.0)


AUGMENTS: dict[str, type] = {"byol": Byol}
"""Augmentation policy name → its class (keyword arguments = the spec's arguments)."""


def make_views(views: int, augment: Call | None) -> Callable | None:
    """``(key, x, labels) -> (x', labels')`` making ``views`` views of every image
    (``views × B`` rows, view by view), or None when the run uses the batch as it is.

    ``x`` is uint8 on 0..255 or float on [0, 1], ``[B, H, W, C]``; ``x'`` is float32
    on [0, 1].
    """
    if views == 1 and augment is None:
        return None
    policy = AUGMENTS[augment.name](**augment.as_dict()) if augment is not None else None

    def make(key, x, labels):
        x = x.astype(jnp.float32) / 255.0 if x.dtype == jnp.uint8 else x.astype(jnp.float32)
        out = []
        for v in range(views):
            if policy is None:
                out.append(x)
                continue
            keys = jax.random.split(jax.random.fold_in(key, v), x.shape[0])
            out.append(jax.vmap(lambda k, img, v=v: policy.view(k, img, min(v, 1)))(keys, x))
        return jnp.concatenate(out), jnp.concatenate([labels] * views)

    return make
