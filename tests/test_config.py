from __future__ import annotations

import pytest

from vidspark.cli import main
from vidspark.config import REDACTED, Conf, load_conf, redacted
from vidspark.errors import ConfigError


def test_defaults_and_repo_confs_load():
    assert load_conf().predict.window == 128
    for name in ("local", "cluster", "gpu"):
        conf = load_conf(f"conf/{name}.yaml")
        assert isinstance(conf, Conf)
    gpu = load_conf("conf/gpu.yaml")
    assert gpu.featurizer.task_gpus == 0.25 and gpu.featurizer.task_cpus == 2 and "spark.task.resource.gpu.amount" not in gpu.spark


def test_layout_override_keeps_braces():
    assert load_conf(overrides=["input.layout={label}/**"]).input.layout == "{label}/**"


def test_overrides_are_typed():
    conf = load_conf(overrides=["featurizer.batch_size=64", "predict.window=1", "train.params.num_leaves=7", "spark.sql.shuffle.partitions=3"])
    assert conf.featurizer.batch_size == 64 and conf.predict.window == 1
    assert conf.train.params == {"num_leaves": 7}
    assert conf.spark["spark.sql.shuffle.partitions"] == 3


@pytest.mark.parametrize(
    "override, needle",
    [
        ("featurizer.colour=red", "featurizer.colour"),
        ("nosuch.key=1", "nosuch"),
        ("featurizer.batch_size=lots", "featurizer.batch_size"),
        ("featurizer.batch_size=4097", "out of range"),
        ("featurizer.skip_static=1.5", "out of range"),
        ("featurizer.decode_mode=sometimes", "allowed: auto, alternate, overlap"),
        ("job.max_error_fraction=1.5", "job.max_error_fraction"),
        ("storage.retry_mode=sometimes", "allowed: standard, adaptive, legacy"),
        ("input.layout={colour}/**", "unknown field"),
        ("input.layout={label/**", "unbalanced brace"),
        ("input.layout=a/**/b**", "must be a whole component"),
        ("predict.window=true", "expected int"),
        ("featurizer.precision=float8", "allowed: auto, float32, bfloat16, float16"),
        ("featurizer.xla=maybe", "featurizer.xla"),
    ],
)
def test_bad_values_name_the_key(override, needle):
    with pytest.raises(ConfigError, match=needle.replace("{", r"\{").replace("}", r"\}")):
        load_conf(overrides=[override])


def test_missing_conf_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_conf(tmp_path / "nope.yaml")


def test_redaction():
    secrets = {
        "spark.hadoop.fs.s3a.secret.key": "hunter2",
        "spark.hadoop.fs.s3a.access.key": "AKIA123",
        "spark.hadoop.fs.azure.account.key.acct.blob.core.windows.net": "azkey",
        "spark.hadoop.google.cloud.auth.service.account.private.key": "gkey",
        "spark.hadoop.fs.s3a.encryption.key": "enckey",
    }
    conf = load_conf(overrides=[f"{k}={v}" for k, v in secrets.items()] + ["spark.sql.shuffle.partitions=7"])
    red = redacted(conf)["spark"]
    for key in secrets:
        assert red[key] == REDACTED, key
    assert red["spark.sql.shuffle.partitions"] == 7
    assert not any(v in repr(redacted(conf)) for v in secrets.values())


def test_cli_bad_conf_exits_2_before_spark(capsys, tmp_path):
    code = main(["featurize", "--input", str(tmp_path), "--output", str(tmp_path / "f"), "--set", "featurizer.batch_size=-1"])
    assert code == 2
    assert "featurizer.batch_size" in capsys.readouterr().err


def test_video_sampling_keys_are_validated():
    conf = load_conf(None, ["video.fps=2.5", "video.max_frames=100", "events.gap_seconds=30"])
    assert conf.video.fps == 2.5 and conf.video.max_frames == 100 and conf.events.gap_seconds == 30.0
    with pytest.raises(ConfigError, match="video.fps.*every_n_frames"):
        load_conf(None, ["video.fps=2", "video.every_n_frames=5"])
    with pytest.raises(ConfigError, match="video.every_n_frames"):
        load_conf(None, ["video.every_n_frames=0"])
    with pytest.raises(ConfigError, match="video.bogus"):
        load_conf(None, ["video.bogus=1"])


@pytest.mark.parametrize(
    "master, cpus",
    [
        ("local", 1),
        ("local[2]", 2),
        ("local[2,4]", 2),
        ("local[16]", 4),
        ("local[1]", 1),
        ("local[6]", 3),
        ("local[10]", 2),
        ("local[7]", 1),
        ("spark://h:7077", None),
        ("yarn", None),
        ("local-cluster[2,1,1024]", None),
    ],
)
def test_task_cpus_of_a_master(master, cpus):
    """local[N]: featurize tasks of up to 4 cores dividing N (one TensorFlow pool each); clusters keep their own spark.task.cpus."""
    from vidspark import app

    assert app.local_task_cpus(master) == cpus


@pytest.mark.parametrize("available, cpus", [(8, 4), (6, 3), (2, 2), (1, 1)])
def test_task_cpus_of_local_star_follow_the_cpus_this_process_may_use(available, cpus, monkeypatch):
    from vidspark import app

    monkeypatch.setattr(app, "available_cpus", lambda: available)
    assert app.local_task_cpus("local[*]") == cpus
