from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from vidspark.config import TrainConf
from vidspark.errors import ModelError
from vidspark.model import check_compatible, load_model_dir, save_model_dir
from vidspark.train import fit_booster, lgb_params


def trained(n_classes: int, tmp_path):
    rng = np.random.default_rng(n_classes)
    X = rng.normal(size=(300, 16)).astype(np.float32)
    y = (X[:, 0] * 2 + X[:, 1] > 0).astype(int) if n_classes == 2 else np.digitize(X[:, 0], [-0.5, 0.5])
    booster = fit_booster(lgb_params(TrainConf(), n_classes), X, y, num_boost_round=30)
    meta = {"classes": [f"c{i}" for i in range(n_classes)], "feature_dim": 16, "featurizer": "resnet50/random-seed0@224"}
    path = save_model_dir(tmp_path / "model", model_str=booster.model_to_string(), meta=meta, cv_report={"ok": True})
    return booster, X, Path(path)


@pytest.mark.parametrize("n_classes", [2, 3])
def test_save_load_predict_round_trip(tmp_path, n_classes):
    booster, X, path = trained(n_classes, tmp_path)
    model = load_model_dir(path)
    proba = model.predict_proba(X)
    assert proba.shape == (len(X), n_classes)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-9)
    expected = booster.predict(X)
    np.testing.assert_allclose(proba[:, 1] if n_classes == 2 else proba, expected, rtol=1e-12)
    assert model.classes == [f"c{i}" for i in range(n_classes)]


def test_overwrite_replaces_the_model_and_leaves_no_temp_dirs(tmp_path):
    trained(2, tmp_path)
    trained(3, tmp_path)
    assert load_model_dir(tmp_path / "model").classes == ["c0", "c1", "c2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_a_save_that_fails_midway_keeps_the_previous_model_whole(tmp_path):
    _, X, path = trained(2, tmp_path)
    before = load_model_dir(path).predict_proba(X)

    def crash(folder):  # dies after model.txt, model.json and cv_report.json of the new model are written
        assert (folder / "model.txt").exists()
        raise OSError("disk full")

    new = trained(3, tmp_path / "other")[0]
    meta = {"classes": ["c0", "c1", "c2"], "feature_dim": 16, "featurizer": "resnet50/random-seed0@224"}
    with pytest.raises(OSError, match="disk full"):
        save_model_dir(path, model_str=new.model_to_string(), meta=meta, cv_report={}, write_extra=crash)
    model = load_model_dir(path)  # the old model, complete: its checksum matches
    assert model.classes == ["c0", "c1"]
    np.testing.assert_allclose(model.predict_proba(X), before, rtol=1e-12)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "other"]


def test_truncated_model_txt_is_refused(tmp_path):
    _, _, path = trained(2, tmp_path)
    txt = path / "model.txt"
    txt.write_text(txt.read_text()[:200])
    with pytest.raises(ModelError, match="checksum"):
        load_model_dir(path)


def test_broken_or_missing_json_is_refused(tmp_path):
    _, _, path = trained(2, tmp_path)
    (path / "model.json").write_text("{not json")
    with pytest.raises(ModelError, match="not valid JSON"):
        load_model_dir(path)
    (path / "model.json").unlink()
    with pytest.raises(ModelError, match="no model.json"):
        load_model_dir(path)


def test_feature_dim_mismatch_in_json_is_refused(tmp_path):
    _, _, path = trained(2, tmp_path)
    meta = json.loads((path / "model.json").read_text())
    meta["feature_dim"] = 2048
    (path / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="expects 16 features"):
        load_model_dir(path)


def test_compatibility_check(tmp_path):
    _, _, path = trained(2, tmp_path)
    model = load_model_dir(path)
    check_compatible(model, featurizers=["resnet50/random-seed0@224"], feature_dim=16)
    with pytest.raises(ModelError, match="imagenet"):
        check_compatible(model, featurizers=["resnet50/imagenet@224"], feature_dim=16)
    with pytest.raises(ModelError, match="16 features"):
        check_compatible(model, featurizers=["resnet50/random-seed0@224"], feature_dim=2048)


def test_a_model_directory_at_a_hadoop_uri_round_trips(spark, tmp_path):
    """Any Hadoop URI (here file://, the same code path as s3a:// or hdfs://) is written and read through Spark's FileSystem."""
    booster, X, _ = trained(2, tmp_path / "local")
    uri = (tmp_path / "remote" / "model").as_uri()
    meta = {"classes": ["c0", "c1"], "feature_dim": 16, "featurizer": "resnet50/random-seed0@224"}
    assert save_model_dir(uri, model_str=booster.model_to_string(), meta=meta, cv_report={"ok": True}, spark=spark) == uri
    assert save_model_dir(uri, model_str=booster.model_to_string(), meta=meta, cv_report={"ok": 2}, spark=spark) == uri  # replaced in place
    assert sorted(p.name for p in (tmp_path / "remote").iterdir()) == ["model"]
    model = load_model_dir(uri, spark=spark)
    np.testing.assert_allclose(model.predict_proba(X)[:, 1], booster.predict(X), rtol=1e-12)
    assert json.loads((tmp_path / "remote" / "model" / "cv_report.json").read_text()) == {"ok": 2}
    with pytest.raises(ModelError, match="no session"):
        load_model_dir(uri)
    with pytest.raises(ModelError, match="does not exist"):
        load_model_dir((tmp_path / "nowhere").as_uri(), spark=spark)


def _booster(n_classes: int, seed: int):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(200, 16)).astype(np.float32)
    y = (X[:, 0] > 0).astype(int) if n_classes == 2 else np.digitize(X[:, 0], [-0.5, 0.5])
    meta = {"classes": [f"c{i}" for i in range(n_classes)], "feature_dim": 16, "featurizer": "resnet50/random-seed0@224"}
    return fit_booster(lgb_params(TrainConf(), n_classes), X, y, num_boost_round=10 + seed).model_to_string(), meta


def test_a_model_on_s3_commits_with_one_put_and_keeps_the_previous_booster(s3_client, bucket):
    """On the loopback S3 server: model.json (written last) names an immutable booster file; a reader of the old model.json still finds its file."""
    from vidspark.config import StorageConf

    uri, storage = f"s3://{bucket}/models/cars", StorageConf()
    names = lambda: sorted(o["Key"].rsplit("/", 1)[1] for o in s3_client.list_objects_v2(Bucket=bucket, Prefix="models/cars/").get("Contents", ()))  # noqa: E731
    first, meta = _booster(2, 1)
    save_model_dir(uri, model_str=first, meta=meta, cv_report={"n": 1}, write_extra=lambda d: (d / "confusion_matrix.png").write_bytes(b"png"), storage=storage)
    old_meta = json.loads(s3_client.get_object(Bucket=bucket, Key="models/cars/model.json")["Body"].read())
    assert names() == ["confusion_matrix.png", "cv_report.json", old_meta["model_file"], "model.json"]
    assert load_model_dir(uri, storage=storage).model_str == first
    second, meta3 = _booster(3, 2)
    save_model_dir(uri, model_str=second, meta=meta3, cv_report={"n": 2}, storage=storage)
    model = load_model_dir(uri, storage=storage)
    assert model.classes == ["c0", "c1", "c2"] and model.model_str == second
    old = s3_client.get_object(Bucket=bucket, Key="models/cars/" + old_meta["model_file"])["Body"].read().decode()
    assert old == first  # a reader that read the first model.json a moment ago loads the first model whole
    third, meta = _booster(2, 3)
    save_model_dir(uri, model_str=third, meta=meta, cv_report={}, storage=storage)
    boosters = [n for n in names() if n.startswith("model-")]
    assert len(boosters) == 2 and old_meta["model_file"] not in boosters  # the current one and the one before
    s3_client.put_object(Bucket=bucket, Key="models/cars/" + json.loads(s3_client.get_object(Bucket=bucket, Key="models/cars/model.json")["Body"].read())["model_file"], Body=b"tree\n")
    with pytest.raises(ModelError, match="checksum"):
        load_model_dir(uri, storage=storage)
    with pytest.raises(ModelError, match="no model.json"):
        load_model_dir(f"s3://{bucket}/models/none", storage=storage)


def test_a_model_uri_without_a_filesystem_is_refused_clearly(spark, tmp_path):
    from vidspark.errors import StorageError

    model_str, meta = _booster(2, 1)
    with pytest.raises(StorageError, match=r"no Hadoop FileSystem for 's3a://' \(org.apache.hadoop.fs.s3a.S3AFileSystem is not on the classpath\) \(add its connector jar"):
        save_model_dir("s3a://bucket/models/m", model_str=model_str, meta=meta, cv_report={}, spark=spark)
    with pytest.raises(StorageError, match="no Hadoop FileSystem for 'gs://'"):
        load_model_dir("gs://bucket/models/m", spark=spark)
    uri = (tmp_path / "viahadoop").as_uri()  # file:// through Hadoop: renamed into place
    save_model_dir(uri, model_str=model_str, meta=meta, cv_report={}, spark=spark)
    assert sorted(p.name for p in (tmp_path / "viahadoop").iterdir() if not p.name.startswith(".")) == ["cv_report.json", "model.json", "model.txt"]
    assert load_model_dir(uri, spark=spark).model_str == model_str


def test_concurrent_object_store_commits_never_delete_the_live_booster():
    """Two trainings commit to one object-store model directory at once (a retried job): whichever model.json lands last must find its booster."""
    from vidspark.model import _commit, _save_local, _Store

    class Memory(_Store):  # an object store's semantics: single-object PUT, GET, LIST, DELETE
        def __init__(self) -> None:
            self.objects: dict[str, bytes] = {}
            self.on_first_put = None

        def get(self, name):
            return self.objects.get(name)

        def put(self, name, data):
            hook, self.on_first_put = self.on_first_put, None
            if hook is not None:
                hook()
            self.objects[name] = data

        def names(self):
            return sorted(self.objects)

        def delete(self, name):
            self.objects.pop(name, None)

    def built(tmp, seed):
        model_str, meta = _booster(2, seed)
        return _save_local(tmp / f"m{seed}", model_str=model_str, meta=meta, cv_report={}), model_str

    import tempfile

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        (old, _), (a, _), (b, b_str) = built(tmp, 1), built(tmp, 2), built(tmp, 3)
        store = Memory()
        _commit(store, old)
        store.on_first_put = lambda: _commit(store, b)  # B commits whole while A has read the directory and starts writing
        _commit(store, a)  # A's model.json lands last
        assert json.loads(store.objects["model.json"])["model_file"] in store.objects  # the live booster (A's) is there
        b_meta = json.loads((b / "model.json").read_text())
        assert f"model-{b_meta['model_txt_sha256'][:16]}.txt" in store.objects  # B's was not deleted by A's clean-up
        _commit(store, b)  # and B again last: its booster, still there, is live
        live = json.loads(store.objects["model.json"])["model_file"]
        assert store.objects[live].decode() == b_str
