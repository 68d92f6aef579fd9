"""``fgc train --tensorboard``: each epoch's metrics also as TensorBoard event files.

Written through tensorboardX (``pip install -e ".[tensorboard]"``), a small writer with no
TensorFlow or PyTorch behind it; ``tensorboard --logdir runs/`` then shows every run.
"""

from __future__ import annotations

import math
from pathlib import Path

from fgc.errors import FgError


class TensorBoardWriter:
    """Writes a metrics row of :func:`fgc.training.train.train` per epoch (``on_epoch``).

    Scalars, by epoch: ``error/test``, ``error/train``, ``loss/train`` and one
    ``loss/NAME`` per loss, ``lr/GROUP`` per parameter group, ``speed/images_per_second``.
    """

    def __init__(self, logdir: str | Path):
        try:
            import tensorboardX  # noqa: F401  (fail before training, not after an epoch)
        except ImportError:
            raise FgError("--tensorboard needs the tensorboardX package: "
                          "pip install -e \".[tensorboard]\" (or pip install tensorboardX)"
                          ) from None
        self.logdir = Path(logdir)
        self._w = None  # opened at the first epoch: a run that fails to start leaves no folder

    def __call__(self, row: dict) -> None:
        if self._w is None:
            from tensorboardX import SummaryWriter
            self._w = SummaryWriter(logdir=str(self.logdir))
        step = int(row["epoch"])
        scalars = {"error/test": row.get("test_error"), "error/train": row.get("train_error"),
                   "loss/train": row.get("train_loss"),
                   "speed/images_per_second": row.get("images_per_second")}
        scalars.update({f"loss/{k}": v for k, v in (row.get("losses") or {}).items()})
        scalars.update({f"lr/{k}": v for k, v in (row.get("lr") or {}).items()})
        for tag, v in scalars.items():
            if isinstance(v, (int, float)) and math.isfinite(v):
                self._w.add_scalar(tag, float(v), step)
        self._w.flush()

    def close(self) -> None:
        if self._w is not None:
            self._w.close()
