"""The embed stage's user vectors, read one user shard at a time."""

from __future__ import annotations

import numpy as np

from recsys.features import load_catalog
from recsys.model.embed import combine, split_user_vectors
from recsys.model.train import load_bundle, load_bundles
from recsys.shards import serving_users, shard_of


def test_serving_users_embedded_shard_by_shard_equal_one_read(tiny_run, tiny_rd):
    cfg, _ = tiny_run
    catalog = load_catalog(tiny_rd.require("features", "catalog"))
    bundle = load_bundle(cfg, tiny_rd)
    bundle.texts = catalog.texts  # as embed_all sets them
    table, _ = bundle.item_table()
    whole_ids, whole = split_user_vectors(cfg, tiny_rd, [bundle], [table], catalog, "full")
    n_users = serving_users(tiny_rd)
    small = cfg.model_copy(update={"scale": cfg.scale.model_copy(update={"users_per_shard": n_users // 3 + 1})})
    ids, vecs = split_user_vectors(small, tiny_rd, [bundle], [table], catalog, "full")
    assert len(ids) == len(whole_ids) == n_users and set(ids) == set(whole_ids)
    # shard by shard: every user of shard 0 before any of shard 1, ...
    assert (np.diff(shard_of(ids, 3)) >= 0).all() and len(set(shard_of(ids, 3))) == 3
    pos = {u: i for i, u in enumerate(whole_ids)}
    np.testing.assert_allclose(vecs, whole[[pos[u] for u in ids]], atol=1e-5)


def test_user_vectors_in_length_order_equal_one_user_at_a_time(tiny_run, tiny_rd):
    from recsys.features import load_sequences

    cfg, _ = tiny_run
    catalog = load_catalog(tiny_rd.require("features", "catalog"))
    bundle = load_bundle(cfg, tiny_rd)
    bundle.texts = catalog.texts
    table, _ = bundle.item_table()
    seqs = load_sequences(tiny_rd.require("features", "full", "sequences"), catalog.index(), bundle.type_names)
    lengths = seqs.lengths()
    assert lengths.min() < lengths.max()  # histories of different lengths: batches are padded
    rows = np.random.default_rng(0).permutation(len(seqs))[:200]
    batched = bundle.user_vectors(seqs, table, cfg.model.max_seq_len, batch_size=64, rows=rows).numpy()
    alone = np.concatenate([bundle.user_vectors(seqs, table, cfg.model.max_seq_len, batch_size=1, rows=rows[i : i + 1]).numpy()
                            for i in range(len(rows))])  # fmt: skip
    np.testing.assert_allclose(batched, alone, atol=1e-5)  # each user's own vector, in rows' order
    tail = bundle.user_vectors(seqs, table, cfg.model.max_seq_len, batch_size=64, rows=rows, drop_last=1).numpy()
    assert not np.allclose(tail, batched, atol=1e-3)  # drop_last reads a shorter history


def test_ensemble_vectors_score_the_members_mean(tiny_run, tiny_rd):
    """The tiny night trains a seed ensemble (250 users <= train.ensemble_max_users): the
    served vectors are the members' concatenated / sqrt(M), so one inner product plus the
    stored bias is the mean of the members' own scores, and the vectors stay unit."""
    cfg, results = tiny_run
    catalog = load_catalog(tiny_rd.require("features", "catalog"))
    bundles = load_bundles(cfg, tiny_rd)
    assert len(bundles) == cfg.train.ensemble_members == results["train"]["members"] == 3
    seeds = [m["seed"] for m in results["train"]["member_runs"]]
    assert seeds == [cfg.train.seed, cfg.train.seed + 1, cfg.train.seed + 2]
    for b in bundles:
        b.texts = catalog.texts
    tables, biases = zip(*(b.item_table() for b in bundles), strict=True)
    assert not np.allclose(tables[0].numpy(), tables[1].numpy(), atol=1e-3)  # different models
    items = np.load(tiny_rd.require("embeddings", "items.npy"))
    bias = np.load(tiny_rd.require("embeddings", "item_bias.npy"))
    assert items.shape == (len(catalog.ids), 3 * tables[0].shape[1])
    np.testing.assert_allclose(np.linalg.norm(items, axis=1), 1.0, atol=1e-4)
    np.testing.assert_allclose(items, combine([tb.numpy() for tb in tables]), atol=1e-5)
    _, users = split_user_vectors(cfg, tiny_rd, bundles, list(tables), catalog, "full")
    t = 1.0 / cfg.train.temperature
    member_users = [split_user_vectors(cfg, tiny_rd, [b], [tb], catalog, "full")[1]
                    for b, tb in zip(bundles, tables, strict=True)]  # fmt: skip
    mean = np.mean([u @ tb.numpy().T * t + bb.numpy() for u, tb, bb in zip(member_users, tables, biases, strict=True)],
                   axis=0)  # fmt: skip
    np.testing.assert_allclose(users @ items.T * t + bias, mean, rtol=1e-4, atol=1e-3)  # [U, N]
    np.testing.assert_allclose(combine([np.eye(2), np.eye(2)]), np.hstack([np.eye(2), np.eye(2)]) / np.sqrt(2))
