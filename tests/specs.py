"""The small specs the tests share: LocalMixers in miniature, written once.

Each function returns ``.fg`` text; its arguments are what the tests vary (the title, the
image and class counts, the width), so a test names only what it needs.
"""

from __future__ import annotations

# How the local loss of `local_mixer` is replicated; tests swap it for other axes.
REPLICATE = "replicate = [patches, groups]"

_BLOCKS = """\
block stem(width, groups) {
  h = in | dense(width) | layernorm | perturb | relu
  out h | group_linear(width, groups = groups) | layernorm(groups = groups) | perturb | relu
}

block mixer(width, groups) {
  t = in | token_mix | layernorm | perturb | relu
  h = t | dense(width) | layernorm | perturb | relu
  out h | group_linear(width, groups = groups) | layernorm(groups = groups) | perturb
        | add(in) | relu
}
"""

_LEAN_BLOCKS = """\
block stem(width) {
  out in | dense(width) | layernorm | perturb | relu
}

block mixer(width, groups) {
  t = in | token_mix | layernorm | perturb | relu
  out t | group_linear(width, groups = groups) | layernorm(groups = groups) | perturb
        | add(in) | relu
}
"""


def _header(title: str, image: int, classes: int, normalize: str | None) -> str:
    norm = f", normalize = {normalize}" if normalize else ""
    return (f'\nspec "{title}"\n'
            f"input x = image({image}, {image}, 1), classes = {classes}{norm}\n\n")


def local_mixer(title: str, *, image: int = 8, classes: int = 4, width: int = 8,
                normalize: str | None = None, zero_readout: bool = True,
                local: bool = True) -> str:
    """A two-block LocalMixer: ``image``×``image`` images cut into 2×2 patches, ``width``
    channels in 2 groups, a stem (dense, group-linear) and a mixer block (token mixing,
    dense, group-linear and a residual), local losses replicated over patches and groups
    (``local=False`` leaves them out: the final loss only) and a readout, zero-initialised
    unless ``zero_readout=False``."""
    local_head = ("head local_head(groups) = layernorm(groups = groups) | mean(patches) | "
                  "linear(classes)\n") if local else ""
    init = ", init = zeros" if zero_readout else ""
    local_loss = f"loss local = local_head(2) on blocks, {REPLICATE}, groups = 2\n" \
        if local else ""
    return (_header(title, image, classes, normalize) + _BLOCKS + "\n" + local_head
            + f"head readout = mean(patches) | layernorm | linear(classes{init})\n\n"
            f"network {{\n  out x | patchify(2) | stem({width}, 2) | mixer({width}, 2)\n}}\n\n"
            + local_loss + "loss final = readout on output\n")


def lean_mixer(title: str) -> str:
    """A leaner two-block LocalMixer on 8×8 images in 2×2 patches, 8 channels, 4 classes:
    a one-layer stem, a mixer block of token mixing and a 2-group group-linear with a
    residual, a local loss replicated over patches and a zero-initialised readout."""
    return (_header(title, 8, 4, None) + _LEAN_BLOCKS + "\n"
            "head local_head = mean(patches) | linear(classes)\n"
            "head readout = mean(patches) | layernorm | linear(classes, init = zeros)\n\n"
            "network {\n  out x | patchify(2) | stem(8) | mixer(8, 2)\n}\n\n"
            "loss local = local_head on blocks, replicate = [patches]\n"
            "loss final = readout on output\n")


def guess_blocks(title: str = "guess blocks", *, blocks: int = 3, width: int = 5,
                 batchnorm: bool = False, algorithms: str = "") -> str:
    """``blocks`` small dense blocks on 6-vectors, 3 classes, each with a small local
    auxiliary head (``loss local = aux on blocks``) and a readout: the multi-block spec
    the gradient-guess estimators of Fournier et al. are tested on. ``batchnorm=True``
    puts a batch norm in every block (the examples are then coupled in the target pass);
    ``algorithms`` is appended (``algorithm`` sections)."""
    norm = "batchnorm" if batchnorm else "layernorm"
    return (f'\nspec "{title}"\ninput x = vector(6), classes = 3\n\n'
            f"block layer(w) {{\n  out in | dense(w) | {norm} | relu\n}}\n\n"
            "head aux = dense(4) | relu | linear(classes)\n"
            "head readout = linear(classes)\n\n"
            f"network {{\n  out x | {' | '.join([f'layer({width})'] * blocks)}\n}}\n\n"
            "loss local = aux on blocks\nloss final = readout on output\n" + algorithms)
