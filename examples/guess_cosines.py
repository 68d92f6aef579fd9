"""Per-block cosine with the end-to-end gradient, one bar per guess, from `fgc diagnose` runs.

Fournier et al.'s question, asked of several `diagnose.json` files made on the same trained
network (e.g. one per guess preset): how well does each guess's projected update point
along the true gradient of the end-to-end loss, block by block, in activity and in weight
space? Reads each run's ``blocks[*].{activity,weights}.cos_e2e`` (first K) and draws two
panels of grouped bars, with the spread over batches and draws (``cos_e2e_std``) as error
bars.

    python examples/guess_cosines.py NAME=DIR [NAME=DIR ...] -o cosines.png [--json table.json]

``DIR`` is a diagnose output folder (or its diagnose.json). ``--json`` also writes the
numbers drawn, so a table and the figure cannot disagree.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

SPACES = ("activity", "weights")


def read(path: str) -> dict:
    p = Path(path)
    p = p / "diagnose.json" if p.is_dir() else p
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        sys.exit(f"{p}: not a readable diagnose.json ({e}); run `fgc diagnose ... -o DIR` first")


def table(runs: dict[str, dict]) -> dict:
    """``{name: {space: {block: (cos, std)}}}`` plus the blocks in network order."""
    blocks: list[str] = []
    out: dict[str, dict] = {}
    for name, r in runs.items():
        rows = [*r["blocks"], r["all"]]
        for b in r["blocks"]:
            if b["block"] not in blocks:
                blocks.append(b["block"])
        out[name] = {s: {b["block"]: (b[s]["cos_e2e"][0], b[s]["cos_e2e_std"][0])
                         for b in rows if b.get(s) and b[s].get("cos_e2e")}
                     for s in SPACES}
    return {"blocks": [*blocks, "all"], "cos_e2e": out}


def draw(t: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names, blocks = list(t["cos_e2e"]), t["blocks"]
    fig, axes = plt.subplots(2, 1, figsize=(1.1 * len(blocks) + 3, 6.5), sharex=True)
    width = 0.8 / len(names)
    x = np.arange(len(blocks))
    for ax, space in zip(axes, SPACES):
        for i, name in enumerate(names):
            got = t["cos_e2e"][name][space]
            cos = [got.get(b, (np.nan, 0))[0] for b in blocks]
            err = [got.get(b, (0, 0))[1] for b in blocks]
            ax.bar(x + (i - (len(names) - 1) / 2) * width, cos, width, yerr=err, capsize=2,
                   label=name)
        ax.axhline(0, color="black", lw=0.6)
        ax.set_ylabel(f"cos with end-to-end\n({space} space)")
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(ncol=min(len(names), 6), fontsize=8, loc="upper right")
    axes[-1].set_xticks(x, blocks, rotation=30, ha="right")
    fig.suptitle("Projected update vs the true gradient, per block")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", metavar="NAME=DIR")
    ap.add_argument("-o", "--out", required=True, help="figure path (.png)")
    ap.add_argument("--json", help="also write the drawn numbers here")
    a = ap.parse_args(argv)
    runs = {}
    for item in a.runs:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            ap.error(f"{item!r}: give NAME=DIR, e.g. local-cnn=runs/diag/local-cnn")
        runs[name] = read(path)
    t = table(runs)
    draw(t, a.out)
    if a.json:
        Path(a.json).write_text(json.dumps(t, indent=1) + "\n", encoding="utf-8")
    for space in SPACES:
        print(f"{space}: " + "  ".join(t["blocks"]))
        for name, got in t["cos_e2e"].items():
            print(f"  {name:>13} " + " ".join(f"{got[space].get(b, (float('nan'),))[0]:+.3f}"
                                           for b in t["blocks"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
