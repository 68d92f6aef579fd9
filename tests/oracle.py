"""Hypothesis strategies for the gradient oracle: valid specs over every op, placement,
head form, algorithm and group mix, small enough to verify in seconds.

A generated case is ``(spec_text, algorithm_name)``. The specs are valid by
construction for the algorithm they come with (tests reject the rare ones the
checker still refuses, and count them).
"""

from __future__ import annotations

from hypothesis import strategies as st

PRESETS = ("bp", "l-bp", "lg-bp", "fg-w", "fg-a", "lg-fg-w", "lg-fg-a",
           "fa", "l-fa", "lg-fa", "dfa",
           "guess-local-a", "guess-local-w", "guess-ntk-a", "guess-ntk-w", "guess-random-a",
           "guess-random-w")
# Ren et al.'s forward-gradient rules first: hypothesis favours early choices, and they are
# where credit can go wrong (feedback and projection rules are compared allclose with their
# own references)
DRAW_ORDER = ("custom", "lg-fg-a", "lg-fg-w", "fg-a", "fg-w") + tuple(
    p for p in PRESETS if p not in ("lg-fg-a", "lg-fg-w", "fg-a", "fg-w"))
ACTS = ("relu", "gelu", "tanh", "identity")


@st.composite
def _norm(draw, width: int, image: bool) -> str:
    """A normalisation that keeps the width (or none)."""
    affine = draw(st.booleans())
    groups = draw(st.sampled_from([g for g in (1, 2) if width % g == 0]))
    choice = draw(st.sampled_from(("layernorm", "groupnorm", "batchnorm", "none")))
    if choice == "none":
        return ""
    if choice == "layernorm":
        return f" | layernorm(groups = {groups}, affine = {str(affine).lower()})"
    if choice == "groupnorm":
        return f" | groupnorm(groups = {groups}, affine = {str(affine).lower()})"
    return f" | batchnorm(affine = {str(affine).lower()})"


@st.composite
def _layer(draw, width_in: int, form: str, last: bool, block_in: int) -> tuple[str, int]:
    """One layer: a linear op, a norm, a perturbation site, an activation; a residual
    add of the block's input when the width matches it. Returns (text, output width)."""
    if form == "image":
        out = draw(st.sampled_from((2, 4)))
        lin = f"conv({out}, kernel = {draw(st.sampled_from((1, 3)))})"
    else:
        choices = ["dense", "group_linear"] + (["token_mix"] if form == "patches" else [])
        kind = draw(st.sampled_from(choices))
        out = width_in if kind == "token_mix" else draw(st.sampled_from((4, 8)))
        if kind == "token_mix":
            lin = "token_mix"
        elif kind == "group_linear" and width_in % 2 == 0:
            lin = f"group_linear({out}, groups = 2)"
        else:
            lin = f"dense({out})"
    text = lin + draw(_norm(out, form == "image")) + " | perturb"
    if last and out == block_in and draw(st.booleans()):
        text += " | add(in)"
    text += f" | {draw(st.sampled_from(ACTS))}"
    return text, out


@st.composite
def _head(draw, form: str, width: int, local: bool) -> tuple[str, str]:
    """A head and its loss options (replication only where the fused form applies)."""
    if form == "vector":
        pre = draw(st.sampled_from(("", f"layernorm(affine = true) | ", f"dense(4) | relu | ")))
        return pre + "linear(classes)", ""
    if form == "image":
        pool = draw(st.sampled_from(("global_avgpool", "flatten", "mean(patches)")))
        if local and pool == "mean(patches)" and width % 2 == 0 and draw(st.booleans()):
            return "mean(patches) | linear(classes)", ", replicate = [groups], groups = 2"
        return f"{pool} | linear(classes)", ""
    rep = draw(st.sampled_from(((), ("patches",), ("groups",), ("patches", "groups")))) \
        if local else ()
    if "groups" in rep and width % 2:
        rep = ("patches",)
    g = 2 if "groups" in rep else 1
    pre = draw(st.sampled_from(("", "layernorm", "group_linear")))
    if pre == "layernorm":
        pre = f"layernorm(groups = {g}, affine = {str(draw(st.booleans())).lower()}) | "
    elif pre == "group_linear":
        pre = f"group_linear({width}, groups = {g}) | "
    if not rep and draw(st.booleans()):
        return "mean(patches) | layernorm(affine = true) | linear(classes)", ""
    opts = (f", replicate = [{', '.join(rep)}]" + (", groups = 2" if g == 2 else "")) if rep else ""
    return pre + "mean(patches) | linear(classes)", opts


@st.composite
def cases(draw) -> tuple[str, str]:
    form = draw(st.sampled_from(("patches", "image", "vector")))
    channels = draw(st.sampled_from((1, 2)))
    prefix = {"patches": " | patchify(2)", "image": "", "vector": " | flatten"}[form]
    width = {"patches": 4 * channels, "image": channels, "vector": 16 * channels}[form]
    blocks, calls = [], []
    for i in range(draw(st.integers(1, 2))):
        body, w = [], width
        n = draw(st.integers(1, 2))
        for j in range(n):
            text, w = draw(_layer(w, form, last=j == n - 1, block_in=width))
            body.append(text)
        stmts = [f"  h{j} = {'in' if j == 0 else f'h{j - 1}'} | {t}" for j, t in enumerate(body[:-1])]
        src = f"h{len(body) - 2}" if len(body) > 1 else "in"
        stmts.append(f"  out {src} | {body[-1]}")
        blocks.append(f"block b{i}() {{\n" + "\n".join(stmts) + "\n}")
        calls.append(f"b{i}()" + (" | stopgrad" if draw(st.integers(0, 5)) == 0 else ""))
        width = w
    head_l, opts_l = draw(_head(form, width, local=True))
    head_f, _ = draw(_head(form, width, local=False))
    algo = draw(st.sampled_from(DRAW_ORDER))
    extra = ""
    if algo == "custom":
        perturb = draw(st.sampled_from(("activity", "weights")))
        extra = (f"algorithm custom {{\n  target = {draw(st.sampled_from(('local', 'global')))}\n"
                 f"  greedy = {str(draw(st.booleans())).lower()}\n"
                 f"  estimator = forward(perturb = {perturb}, noise = "
                 f"{draw(st.sampled_from(('gaussian', 'rademacher')))}, tangents = "
                 f"{draw(st.sampled_from((1, 2, 3)))})\n}}\n")
    if len(blocks) > 1 and (algo in ("custom", "fg-w", "fg-a", "lg-fg-w", "lg-fg-a")) \
            and draw(st.booleans()):
        perturb = draw(st.sampled_from(("activity", "weights")))
        est = draw(st.sampled_from((f"forward(perturb = {perturb})", "backprop")))
        extra += f"group first {{\n  params = b0\n  estimator = {est}\n}}\n"
    place = draw(st.sampled_from(("blocks", "b0")))
    text = (f'spec "oracle"\ninput x = image(4, 4, {channels}), classes = 3\n'
            + "\n".join(blocks)
            + f"\nhead local_head = {head_l}\nhead readout = {head_f}\n"
            + f"network {{\n  out x{prefix} | {' | '.join(calls)}\n}}\n"
            + f"loss local = local_head on {place}{opts_l}\nloss final = readout on output\n"
            + extra)
    return text, algo
