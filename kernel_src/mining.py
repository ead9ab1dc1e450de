"""Hard-negative mining: the share of last epoch's samples with the largest loss is drawn twice as often.

During epoch e every training sample's loss (BCE averaged over its classes, against the targets it was
trained on) is recorded; epoch e + 1's order is then a permutation, from (seed, epoch), of all samples plus
a second copy of the hardest `share` of those seen, cut to the epoch's usual length, so the number of steps
never changes. Both loss arrays live in the checkpoint: a resumed epoch gets the same order.

    miner = Miner(n, kit.mining.share, kit.seed)
    miner.begin(epoch, gather)         # at each epoch (part)'s start; rolls the record over once per epoch
    sampler.order_fn = miner.order     # the epoch's order
    miner.record(index, losses)        # per batch
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from .data import epoch_order

MINING_SALT = 0x4A2D


class Miner:
    def __init__(self, n: int, share: float, seed: int):
        self.n, self.share, self.seed = n, share, seed
        self.epoch = -1
        self.current = np.full(n, np.nan, dtype=np.float32)   # this epoch's losses (NaN: not seen yet)
        self.previous: Optional[np.ndarray] = None           # last epoch's, merged over the ranks

    def begin(self, epoch: int, gather: Callable[[np.ndarray], list[np.ndarray]] = lambda a: [a]) -> None:
        """Start recording `epoch`; a no-op when resuming inside it. Every rank calls it together."""
        if epoch == self.epoch:
            return
        if self.epoch >= 0 and epoch == self.epoch + 1:
            self.previous = np.fmax.reduce(np.stack(gather(self.current)), axis=0)
        else:
            self.previous = None
        self.current = np.full(self.n, np.nan, dtype=np.float32)
        self.epoch = epoch

    def record(self, index: np.ndarray, losses: np.ndarray) -> None:
        self.current[index] = losses

    def hardest(self) -> np.ndarray:
        """The indices of last epoch's hardest `share` of the samples seen (ties: the lower index)."""
        if self.previous is None:
            return np.zeros(0, dtype=np.int64)
        seen = np.flatnonzero(~np.isnan(self.previous))
        k = int(round(self.share * len(seen)))
        ranked = seen[np.lexsort((seen, -self.previous[seen]))]
        return ranked[:k]

    def order(self, epoch: int) -> np.ndarray:
        hard = self.hardest()
        if len(hard) == 0:
            return epoch_order(self.n, self.seed, epoch)
        pool = np.concatenate([np.arange(self.n), hard])
        return np.random.default_rng([self.seed & 0xFFFFFFFF, epoch, MINING_SALT]).permutation(pool)[:self.n]

    def state(self) -> dict:
        return {"epoch": self.epoch, "current": self.current.copy(),
                "previous": None if self.previous is None else self.previous.copy()}

    def load(self, state: dict) -> None:
        self.epoch, self.current, self.previous = state["epoch"], state["current"].copy(), state["previous"]
