import pytest

from recsys.config import ConfigError, load_config, parse_date, parse_set_overrides


def test_defaults_are_valid():
    cfg = load_config(environ={})
    assert cfg.run_id == "main"
    assert cfg.train.device == "auto"
    assert cfg.evaluate.gate_metric == "ndcg@10" and cfg.evaluate.gate_method == "ranked"
    assert cfg.model_split() == "rank" and cfg.evaluate.protocol == "time"


def test_precedence_yaml_env_cli(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("train:\n  time_budget_s: 10\n  batch_size: 16\nevents:\n  weights: {view: 0.5}\n")
    env = {"RECSYS__TRAIN__TIME_BUDGET_S": "20", "RECSYS__RETRIEVE__TOP_K": "7"}
    cfg = load_config(y, parse_set_overrides(["train.time_budget_s=30"]), environ=env)
    assert cfg.train.time_budget_s == 30  # CLI beats env beats YAML
    assert cfg.train.batch_size == 16  # YAML beats defaults
    assert cfg.retrieve.top_k == 7  # env
    assert cfg.events.weights["view"] == 0.5 and cfg.events.weights["purchase"] == 8.0  # dicts merge


def test_clear_errors():
    with pytest.raises(ConfigError, match=r"train\.batch_size"):
        load_config(overrides={"train": {"batch_size": 1}}, environ={})
    with pytest.raises(ConfigError, match=r"train\.not_a_key"):
        load_config(overrides={"train": {"not_a_key": 1}}, environ={})
    with pytest.raises(ConfigError, match="gate_metric"):
        load_config(overrides={"evaluate": {"gate_metric": "recall@7"}}, environ={})
    with pytest.raises(ConfigError, match="divisible"):
        load_config(overrides={"model": {"dim": 30, "user_heads": 4}}, environ={})
    with pytest.raises(ConfigError, match="not found"):
        load_config("/nonexistent.yaml", environ={})
    with pytest.raises(ConfigError, match=r"section\.key=value"):
        parse_set_overrides(["nonsense"])
    with pytest.raises(ConfigError, match="YYYY-MM-DD"):
        parse_date("22/11/2026")


def test_fingerprint_ignores_paths_but_not_model_settings():
    a = load_config(overrides={"paths": {"work_root": "/a"}}, environ={})
    b = load_config(overrides={"paths": {"work_root": "/b"}}, environ={})
    c = load_config(overrides={"train": {"lr": 0.1}}, environ={})
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()


def test_dag_trigger_may_only_tune():
    """Issue 8, item 13: the DAG's overrides param accepted any config, Spark JVM options
    and the database URL included."""
    import pytest

    from recsys.config import ConfigError, check_trigger_overrides

    ok = {"run_id": "exp1", "train": {"lr": 0.01}, "rerank": {"mmr_lambda": 0.5}, "evaluate": {"holdout_days": 0}}
    assert check_trigger_overrides(ok) == ok
    for bad in (
        {"spark": {"conf": {"spark.driver.extraJavaOptions": "-javaagent:/tmp/x.jar"}}},
        {"publish": {"database_url": "postgresql://evil/db"}},
        {"publish": {"force": True}},
        {"paths": {"work_root": "/"}},
        {"evaluate": {"gate_enabled": False}},
        {"model": {"encoder_path": "/tmp/pickle"}},
        {"events": {"max_reject_rate": 1.0}},
    ):
        with pytest.raises(ConfigError, match="may not set"):
            check_trigger_overrides(bad)
