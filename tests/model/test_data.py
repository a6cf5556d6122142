import numpy as np

from recsys.model.data import length_batches


def _wins(lengths: list[int]) -> np.ndarray:
    """[W, 4] windows (row, start, end, first) of the given lengths, one row each."""
    n = len(lengths)
    return np.stack([np.arange(n), np.zeros(n, int), np.asarray(lengths), np.zeros(n, int)], 1).astype(np.int64)


def _padded(wins: np.ndarray, batch: np.ndarray) -> int:
    return len(batch) * int((wins[batch, 2] - wins[batch, 1]).max())


def test_random_batches_keep_the_old_order():
    wins = _wins([5, 9, 2, 7, 3, 8, 4])
    got = length_batches(wins, 3, np.random.default_rng(7), pool=0)
    order = np.random.default_rng(7).permutation(7)
    assert [b.tolist() for b in got] == [order[:3].tolist(), order[3:6].tolist(), order[6:].tolist()]


def test_length_batches_cover_every_window_once_within_the_budget():
    rng = np.random.default_rng(0)
    lengths = rng.integers(2, 51, size=5_000).tolist()
    wins = _wins(lengths)
    got = length_batches(wins, 64, np.random.default_rng(1), pool=50)
    assert sorted(np.concatenate(got).tolist()) == list(range(5_000))
    budget = round(64 * np.mean(lengths))
    assert all(_padded(wins, b) <= budget for b in got)
    # About as many steps as batch_size windows a step would take (5000 / 64 = 78.1; 83
    # measured): a batch's windows shorten after its first, and each pool's last batch is
    # partly filled.
    assert 78 <= len(got) <= 86
    # Computed steps per real one: 1.91 in random batches (each pads to ~50), 1.03 here.
    assert sum(_padded(wins, b) for b in got) / sum(lengths) < 1.05


def test_a_planted_length_mix_pads_little():
    # Half the windows 50 steps, half 5: in random batches of 64 nearly every batch holds
    # a 50, so it computes 64 x 50 = 3,200 steps for 64 x 27.5 = 1,760 real ones (1.82x).
    wins = _wins([50, 5] * 3_200)
    real = 3_200 * 55

    def padded(pool: int) -> int:
        return sum(_padded(wins, b) for b in length_batches(wins, 64, np.random.default_rng(3), pool))

    assert padded(0) / real > 1.8
    assert padded(50) / real < 1.02  # only where a pool's sorted run changes length mid-batch
    # ... and the steps per batch are even: a batch of 5-step windows holds ten times more.
    sizes = {len(b) for b in length_batches(wins, 64, np.random.default_rng(3), 50)}
    assert {35, 352} <= sizes  # budget 64 x 27.5 = 1,760: 35 windows of 50, 352 of 5


def test_the_default_pool_follows_the_softmax():
    from recsys.config import load_config
    from recsys.model.train import Trainer

    def pool(full: bool, **train: int) -> int:
        cfg = load_config(overrides={"train": train}, environ={})
        tr = Trainer(cfg=cfg, bundle=None, seqs=None, train_wins=np.zeros((0, 4)), val_rows=np.zeros(0),  # type: ignore[arg-type]
                     target_freq=np.zeros(0), opt=None, rng=None, full_softmax=full)  # type: ignore[arg-type]  # fmt: skip
        return tr.length_pool()

    # By length where the sampled softmax leaves the transformer most of a step; random
    # batches with the full softmax, where it measured no faster (docs/benchmarks.md).
    assert pool(False) == 50 and pool(True) == 0
    assert pool(True, length_pool=20) == 20 and pool(False, length_pool=0) == 0
