import numpy as np
import torch

from recsys.model.towers import UserTower, gap_buckets
from recsys.model.train import _positions_and_targets


def test_user_tower_is_causal():
    torch.manual_seed(0)
    tower = UserTower(dim=16, max_len=6, n_types=3, layers=2, heads=2, dropout=0.0).eval()
    x = torch.randn(1, 5, 16)
    types = torch.ones(1, 5, dtype=torch.long)
    valid = torch.ones(1, 5, dtype=torch.bool)
    gaps = torch.ones(1, 5, dtype=torch.long)
    a = tower(x, types, gaps, valid)
    x2 = x.clone()
    x2[0, 4] = torch.randn(16)  # change only the last step
    b = tower(x2, types, gaps, valid)
    assert torch.allclose(a[0, :4], b[0, :4], atol=1e-5)
    assert not torch.allclose(a[0, 4], b[0, 4])
    assert torch.allclose(a.norm(dim=-1), torch.ones(1, 5), atol=1e-5)


def test_last_state_equals_the_full_forward_at_each_rows_last_step():
    torch.manual_seed(0)
    lens = torch.tensor([8, 1, 5, 3, 7])  # padded rows of every kind, one full
    valid = torch.arange(8)[None, :] < lens[:, None]  # [5, 8] left-aligned
    for layers in (1, 2, 3):
        tower = UserTower(dim=16, max_len=8, n_types=3, layers=layers, heads=2, dropout=0.1).eval()
        x, types, gaps = torch.randn(5, 8, 16), torch.randint(1, 4, (5, 8)), torch.randint(1, 20, (5, 8))
        with torch.no_grad():
            full = tower(x, types, gaps, valid)[torch.arange(5), lens - 1]  # [5, 16]
            last = tower.last(x, types, gaps, valid)
        torch.testing.assert_close(last, full, atol=1e-5, rtol=1e-5)
        x[0, 3] += 1.0  # an earlier step of row 0 still moves its last state
        with torch.no_grad():
            moved = tower.last(x, types, gaps, valid)
        assert not torch.allclose(moved[0], last[0]) and torch.allclose(moved[1:], last[1:])


def test_gap_buckets():
    ts = torch.tensor([[0, 60, 60 + 3600, 0]])
    valid = torch.tensor([[True, True, True, False]])
    # first step 1; 1 minute -> floor(log2 2)=1 -> 3; 60 min -> floor(log2 61)=5 -> 7; pad 0
    assert gap_buckets(ts, valid).tolist() == [[1, 3, 7, 0]]


def test_targets_next_item_and_horizon():
    rng = np.random.default_rng(0)
    items = torch.tensor([[10, 11, 12, 13], [20, 21, 0, 0]])
    day = 86400
    ts = torch.tensor([[0, 1, 10 * day, 10 * day + 1], [0, 5, 0, 0]])
    valid = torch.tensor([[True, True, True, True], [True, True, False, False]])
    states = torch.arange(8, dtype=torch.float32).reshape(2, 4, 1)
    q, y = _positions_and_targets(states, items, ts, valid, 100, 0.0, rng)
    pairs = sorted(zip(q[:, 0].tolist(), y.tolist(), strict=True))
    assert pairs == [(0.0, 11), (1.0, 12), (2.0, 13), (4.0, 21)]
    # horizon 1 day: from step 0 only steps 1 is within a day; from step 1 the next (12)
    # is beyond it but the next step is always eligible
    for _ in range(20):
        q, y = _positions_and_targets(states, items, ts, valid, 100, 1.0, rng)
        got = dict(zip(q[:, 0].tolist(), y.tolist(), strict=True))
        assert got[0.0] == 11 and got[1.0] == 12 and got[2.0] == 13 and got[4.0] == 21


def test_windows_cover_every_transition_once():
    from recsys.features import Sequences
    from recsys.model.data import pad_windows, windows

    # user 0: 7 steps, user 1: 1 step (no transition), user 2: 3 steps
    lens = [7, 1, 3]
    offsets = np.r_[0, np.cumsum(lens)]
    seqs = Sequences(np.array(["a", "b", "c"], dtype=object), offsets, np.arange(11), np.ones(11, int), np.arange(11))
    w = windows(seqs, np.arange(3), max_len=3)
    assert w.tolist() == [[0, 4, 7, 0], [0, 2, 5, 0], [0, 0, 3, 0], [2, 0, 3, 0]]
    # (row, position whose next step is predicted), counted positions only
    counted = lambda w: sorted((int(r), s + t) for r, s, e, f in w for t in range(f, e - s - 1))  # noqa: E731
    every = [(0, 0), (0, 1), (0, 2), (0, 3), (0, 4), (0, 5), (2, 0), (2, 1)]
    assert counted(w) == every
    assert windows(seqs, np.array([0]), max_len=3, drop_last=2).tolist() == [[0, 2, 5, 0], [0, 0, 3, 0]]
    items, _types, _ts, valid = pad_windows(seqs, w)
    assert items[0].tolist() == [4, 5, 6] and items[3].tolist() == [8, 9, 10] and valid.all()
    # min_context 3 (max_len 4): every counted prediction sees 3 steps, or all before it
    # near the start; still each transition exactly once.
    w3 = windows(seqs, np.arange(3), max_len=4, min_context=3)
    assert w3.tolist() == [[0, 3, 7, 2], [0, 2, 6, 2], [0, 1, 5, 2], [0, 0, 4, 0], [2, 0, 3, 0]]
    assert counted(w3) == every
    assert all(s == 0 or f + 1 >= 3 for _r, s, _e, f in w3)


def test_objective_auto_follows_how_the_ranker_is_labelled(tmp_path):
    import datetime as dt

    from recsys import jsonio
    from recsys.config import load_config
    from recsys.model.train import resolve_objective
    from recsys.rundir import RunDir

    cfg = load_config(overrides={"paths": {"work_root": str(tmp_path)}}, environ={})
    rd = RunDir(cfg, dt.date(2026, 11, 22))
    assert resolve_objective(cfg, rd, "rank") == "next_item"  # nothing written: next item
    jsonio.write(rd.path("features", "rank", "split.json"), {"cutoff": "2026-11-21", "rank_labels_by": "days"})
    assert resolve_objective(cfg, rd, "rank") == "horizon"  # users come back daily
    fixed = load_config(overrides={"paths": {"work_root": str(tmp_path)}, "train": {"objective": "next_item"}},
                        environ={})  # fmt: skip
    assert resolve_objective(fixed, rd, "rank") == "next_item"


def test_weight_average_tracks_steps_and_swaps_back():
    from types import SimpleNamespace

    import torch

    from recsys.config import load_config
    from recsys.model.train import Trainer

    cfg = load_config(overrides={"train": {"ema_decay": 0.5}}, environ={})
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    tr = Trainer(cfg=cfg, bundle=SimpleNamespace(model=model), seqs=None, train_wins=np.zeros((0, 4)),  # type: ignore[arg-type]
                 val_rows=np.zeros(0), target_freq=np.zeros(0), opt=None, rng=None, full_softmax=True)  # type: ignore[arg-type]  # fmt: skip
    tr.start_average()
    for w in (4.0, 8.0):  # two steps: 0 -> 0.5 * 0 + 0.5 * 4 = 2 -> 0.5 * 2 + 0.5 * 8 = 5
        with torch.no_grad():
            model.weight.fill_(w)
        tr.update_average()
    with tr.averaged():
        assert model.weight.item() == 5.0
    assert model.weight.item() == 8.0  # the trained weights are back for the next step
    tr_off = Trainer(cfg=load_config(overrides={"train": {"ema_decay": 0.0}}, environ={}),
                     bundle=SimpleNamespace(model=model), seqs=None, train_wins=np.zeros((0, 4)),  # type: ignore[arg-type]
                     val_rows=np.zeros(0), target_freq=np.zeros(0), opt=None, rng=None, full_softmax=True)  # type: ignore[arg-type]  # fmt: skip
    tr_off.start_average()
    tr_off.update_average()
    with tr_off.averaged():
        assert model.weight.item() == 8.0


def test_validation_rows_sample_capped_every_or_none():
    from recsys.config import load_config
    from recsys.model.train import validation_rows

    lengths = np.array([10] * 900 + [4] * 100)  # 900 users with val_tail_steps (3) + 2 steps or more
    cfg = load_config(overrides={"train": {"val_fraction": 0.1, "max_val_users": 50}}, environ={})
    rows = validation_rows(cfg, lengths, np.random.default_rng(0))
    assert len(rows) == 50 and (lengths[rows] >= 5).all() and (np.diff(rows) > 0).all()  # 90 capped at 50
    uncapped = load_config(overrides={"train": {"val_fraction": 0.1, "max_val_users": 0}}, environ={})
    assert len(validation_rows(uncapped, lengths, np.random.default_rng(0))) == 90
    assert len(validation_rows(cfg, lengths, np.random.default_rng(0), every_user=True)) == 900  # no cap
    assert len(validation_rows(cfg, lengths, np.random.default_rng(0), none=True)) == 0


def test_covis_targets_follow_the_source_by_hand():
    from recsys.model.train import covis_targets

    items = torch.tensor([[5, 7, 9]])
    valid = torch.tensor([[True, True, True]])
    nbr = torch.zeros((10, 2), dtype=torch.long)
    val = torch.zeros((10, 2))
    nbr[7], val[7] = torch.tensor([1, 2]), torch.tensor([2.0, 2.0])
    nbr[5], val[5] = torch.tensor([3, 0]), torch.tensor([1.0, 0.0])  # a list shorter than K
    nbr[9], val[9] = torch.tensor([4, 1]), torch.tensor([4.0, 2.0])
    idx, w = covis_targets(items, valid, torch.tensor([0, 0, 0]), torch.tensor([0, 1, 2]), nbr, val, anchors=2)
    assert idx.tolist() == [[3, 0, 3, 0], [1, 2, 3, 0], [4, 1, 1, 2]]  # anchor t, then t - 1 (clamped at 0)
    # t=0: item 5 only (t-1 does not exist); t=1: 7's list + 5's / 2 = 2, 2, 0.5 of 4.5;
    # t=2: 9's list + 7's / 2 = 4, 2, 1, 1 of 8
    want = [[1.0, 0.0, 0.0, 0.0], [2 / 4.5, 2 / 4.5, 0.5 / 4.5, 0.0], [0.5, 0.25, 0.125, 0.125]]
    assert np.allclose(w.numpy(), want)


def _planted_teacher_rank(tiny_rd_cfg, rd, alpha: float, full: bool) -> float:
    """Train on the tiny night with a planted co-visitation table that says item z
    follows anchor a (z never does in the data); the mean rank of z among all items
    from the states at a's positions."""
    from recsys.config import _deep_merge, load_config
    from recsys.model.data import pad_windows
    from recsys.model.towers import gap_buckets
    from recsys.model.train import _setup

    over = {"train": {"covis_distill": alpha, "full_softmax_max_items": 10_000 if full else 0, "warm_start": False}}
    cfg = load_config(overrides=_deep_merge(tiny_rd_cfg.model_dump(mode="json"), over), environ={})
    tr, _, _, _ = _setup(cfg, rd)
    items = tr.seqs.items
    a = int(np.bincount(items).argmax())  # the most frequent item: many positions
    follows = set(items[1:][items[:-1] == a].tolist())
    z = next(i for i in np.argsort(np.bincount(items, minlength=tr.n_items)) if i not in follows and i != a)
    nbr, val = torch.zeros((tr.n_items, 3), dtype=torch.long), torch.zeros((tr.n_items, 3))
    nbr[a, 0], val[a, 0] = int(z), 1.0
    tr.covis = (nbr, val)
    for e in range(4):
        tr.epoch(e, None)
    tr.bundle.model.eval()
    with torch.no_grad():
        table, bias = tr.bundle.item_table()
        it, ty, ts, valid = pad_windows(tr.seqs, tr.train_wins)
        states = tr.bundle.model.user(table[it], ty, gap_buckets(ts, valid), valid)  # [W, L, d]
        q = states[(it == a) & valid]  # [P, d]
        scores = q @ table.T / cfg.train.temperature + bias  # [P, N]
        return float((scores > scores[:, [int(z)]]).sum(1).float().mean())


def test_distillation_teaches_the_planted_neighbour(tiny_run, tiny_rd):
    cfg, _ = tiny_run
    for full in (True, False):
        plain = _planted_teacher_rank(cfg, tiny_rd, 0.0, full)
        taught = _planted_teacher_rank(cfg, tiny_rd, 0.9, full)
        # measured: full softmax 192 -> 0, sampled 189 -> 17 (of 200+ items)
        assert taught < 30 and plain > 100, (full, plain, taught)


def test_heaviest_teacher_items_and_the_default_weight():
    from recsys.config import load_config
    from recsys.model.train import covis_distill, heaviest

    idx = torch.tensor([[3, 4, 5], [4, 6, 3]])
    w = torch.tensor([[0.5, 0.3, 0.2], [0.6, 0.0, 0.4]])  # totals: 3 0.9, 4 0.9, 5 0.2; 6 has no weight
    assert sorted(heaviest(idx, w, 2).tolist()) == [3, 4]
    assert sorted(heaviest(idx, w, 10).tolist()) == [3, 4, 5]
    cfg = load_config(environ={})
    assert covis_distill(cfg, "next_item") == 0.3 and covis_distill(cfg, "horizon") == 0.0
    set_ = load_config(overrides={"train": {"covis_distill": 0.1}}, environ={})
    assert covis_distill(set_, "horizon") == 0.1


def test_patience_holds_enough_steps_within_its_bounds():
    import pytest

    from recsys.config import ConfigError, load_config

    tc = load_config(environ={}).train  # 200 steps, between 3 and 8 epochs
    # ml-latest-small's 24-step epochs: ceil(200 / 24) = 9, held to 8; a 200-step epoch: 1, raised to 3.
    assert [tc.patience_epochs(s) for s in (24, 40, 50, 67, 100, 200, 5000)] == [8, 5, 4, 3, 3, 3, 3]
    assert tc.patience_epochs(0) == 8  # no step taken (a cut first epoch): the most
    off = load_config(overrides={"train": {"early_stopping_patience_steps": 0}}, environ={}).train
    assert off.patience_epochs(200) == 8
    with pytest.raises(ConfigError, match="early_stopping_min_patience"):
        load_config(overrides={"train": {"early_stopping_min_patience": 9}}, environ={})


def test_training_stops_after_the_patience_in_steps(tiny_run, tiny_rd):
    """A model that cannot improve (learning rate 1e-12: validation reads the same every
    epoch) stops after exactly the patience its epochs' steps give."""
    from recsys.config import _deep_merge, load_config
    from recsys.model.train import _fit, _setup

    cfg, _ = tiny_run
    base = _deep_merge(cfg.model_dump(mode="json"), {"train": {"lr": 1e-12, "max_epochs": 12, "warm_start": False,
                                                               "early_stopping_patience": 6, "early_stopping_min_patience": 1}})  # fmt: skip
    runs = {}
    for steps in (0, 1, 10_000):
        c = load_config(overrides=_deep_merge(base, {"train": {"early_stopping_patience_steps": steps}}), environ={})
        tr = _setup(c, tiny_rd)[0]
        fit = _fit(c, tr)
        per_epoch = fit["steps"] / (len(fit["history"]) - 1)
        runs[steps] = (fit["best_epoch"], len(fit["history"]) - 1, fit["patience_epochs"], per_epoch)
    assert runs[0][:3] == (0, 6, 6)  # off: always early_stopping_patience
    assert runs[1][:3] == (0, 1, 1)  # one step's patience: one epoch (the floor, 1 here)
    assert runs[10_000][:3] == (0, 6, 6)  # more steps than the most epochs hold: the most
    assert runs[0][3] > 1  # each epoch is several steps, so the rule had steps to count
