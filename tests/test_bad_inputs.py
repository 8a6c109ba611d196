"""Archives nobody curates: a corpus of broken and odd inputs, a seeded mutation fuzz of the decode path,
secrets that must never leak, and no deserialisation of code from storage."""

from __future__ import annotations

import io
import json
import logging
import random
import re
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vidspark.config import FeaturizerConf, StorageConf, VideoConf
from vidspark.frames import _load_one
from vidspark.synthetic import S3Sink, encode_video, jpeg_bytes, scene
from vidspark.video import DecodeReport, decode_frames

ROOT = Path(__file__).resolve().parents[1]


def encoded(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def bomb_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares width x height pixels (no real data)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def corpus() -> tuple[dict[str, bytes], set[str]]:
    """Objects by key, and the keys that must end as errors rows (all others as features rows)."""
    rng = np.random.default_rng(50)
    base = scene("car", rng, size=(160, 120))
    objs: dict[str, bytes] = {}
    bad: set[str] = set()
    for fmt, ext in (("JPEG", "jpg"), ("PNG", "png"), ("WEBP", "webp"), ("GIF", "gif"), ("TIFF", "tif")):
        good = encoded(base.convert("P") if fmt == "GIF" else base, fmt)
        objs[f"car/ok.{ext}"] = good
        objs[f"car/truncated.{ext}"] = good[: len(good) // 3]
        objs[f"car/empty.{ext}"] = b""
        garbled = bytearray(good)
        garbled[16:] = bytes(rng.integers(0, 256, len(good) - 16, dtype=np.uint8))
        objs[f"car/corrupt.{ext}"] = bytes(garbled)
        bad |= {f"car/truncated.{ext}", f"car/empty.{ext}", f"car/corrupt.{ext}"}
    objs["car/not-an-image.jpg"] = b"%PDF-1.4 not an image at all" * 20
    objs["car/lying-extension.jpg"] = encoded(base, "PNG")  # a PNG named .jpg: read by content
    objs["car/bomb.png"] = bomb_png(100_000, 100_000)
    objs["car/over-limit.png"] = encoded(Image.new("RGB", (2500, 2000), (9, 9, 9)), "PNG")  # 5 Mpx > the 4 Mpx limit set below
    bad |= {"car/not-an-image.jpg", "car/bomb.png", "car/over-limit.png"}
    objs["car/one-pixel.png"] = encoded(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG")
    objs["car/strip-20000x20.png"] = encoded(Image.new("RGB", (20000, 20), (10, 200, 10)), "PNG")
    frames = [scene("car", rng, size=(64, 48)).convert("P") for _ in range(3)]
    objs["car/animated.gif"] = encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    objs["car/cmyk.jpg"] = encoded(base.convert("CMYK"), "JPEG")
    objs["car/palette.png"] = encoded(base.convert("P"), "PNG")
    objs["car/grey16.png"] = encoded(Image.fromarray((np.arange(160 * 120, dtype=np.uint16).reshape(120, 160) * 3).astype(np.uint16)), "PNG")
    objs["car/alpha.png"] = encoded(base.convert("RGBA"), "PNG")
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        objs[f"car/exif-{orientation}.jpg"] = encoded(base, "JPEG", exif=exif.tobytes())
    good = jpeg_bytes(base)
    for key in ("odd keys/with space.jpg", "ünïcødé/фото 😀.jpg", "pct/100%.jpg", "plus/a+b=c.jpg", "dots/../x.jpg", "double//slash.jpg"):
        objs[key] = good
    return objs, bad


@pytest.mark.slow
def test_corpus_of_bad_inputs_is_accounted_for_and_the_job_finishes(spark, s3_client, bucket, tmp_path):
    from vidspark.cli import main

    objs, bad = corpus()
    sink = S3Sink(s3_client, bucket, prefix="archive")
    for key, data in objs.items():
        sink.put(key, data)
    out = tmp_path / "out"
    args = ["featurize", "--input", f"s3://{bucket}/archive", "--output", str(out / "features"), "--run-id", "corpus", "--set", "featurizer.weights=random"]
    args += ["--set", "featurizer.max_image_pixels=4000000", "--set", "job.max_error_fraction=0.5"]
    assert main(args, spark=spark) == 0
    feats = {r["uri"] for r in spark.read.parquet(str(out / "features")).select("uri").collect()}
    errors = {r["uri"]: r for r in spark.read.parquet(str(out / "errors")).collect()}
    prefix = f"s3://{bucket}/archive/"
    expected_bad = {prefix + k for k in bad}
    assert set(errors) == expected_bad, set(errors) ^ expected_bad
    assert feats == {prefix + k for k in objs} - expected_bad  # every other object, odd keys included
    assert all(e["stage"] == "decode" and e["message"] for e in errors.values())
    assert "pixel" in errors[prefix + "car/bomb.png"]["message"] or "bomb" in errors[prefix + "car/bomb.png"]["message"]
    assert "over the limit" in errors[prefix + "car/over-limit.png"]["message"]
    record = json.loads((out / "runs" / "corpus.json").read_text())["summary"]
    assert record["listed"] == len(objs) and record["featurized"] + record["error_count"] == len(objs)
    # an empty prefix: nothing listed, nothing written, success
    assert main(["featurize", "--input", f"s3://{bucket}/nothing-here", "--output", str(tmp_path / "empty" / "features"), "--set", "featurizer.weights=random"], spark=spark) == 0


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One seeded mutation: flip bytes, cut, splice a chunk elsewhere, zero or randomise a run."""
    b = bytearray(data)
    op = rng.randrange(5)
    if op == 0:
        for _ in range(rng.randint(1, 20)):
            b[rng.randrange(len(b))] = rng.randrange(256)
    elif op == 1:
        b = b[: rng.randrange(1, len(b))]
    elif op == 2:
        i, j = sorted(rng.sample(range(len(b)), 2))
        k = rng.randrange(len(b))
        b[k:k] = b[i:j]
    elif op == 3:
        i = rng.randrange(len(b))
        b[i : i + rng.randint(1, 400)] = bytes(min(400, len(b) - i))
    else:
        i = rng.randrange(len(b))
        n = rng.randint(1, 400)
        b[i : i + n] = bytes(rng.randrange(256) for _ in range(min(n, len(b) - i)))
    return bytes(b)


def test_mutation_fuzz_of_jpeg_png_and_mp4_decoding(tmp_path):
    """Seeded, bounded (a minute): every mutated input ends as frames or an error, quickly, never as a crash."""
    rng = random.Random(1234)
    img = scene("person", np.random.default_rng(3), size=(160, 120))
    seeds = {"jpg": jpeg_bytes(img), "png": encoded(img, "PNG")}
    mp4 = encode_video([scene("car", np.random.default_rng(i), size=(96, 72)) for i in range(12)], fps=8, gop=4)
    fconf, sconf = FeaturizerConf(image_size=64), StorageConf()
    budget = time.monotonic() + 60
    tried = {"jpg": 0, "png": 0, "mp4": 0}
    outcomes = {"ok": 0, "error": 0}
    slowest = 0.0
    while time.monotonic() < budget and sum(tried.values()) < 900:
        kind = rng.choice(["jpg", "png", "mp4"])
        data = mutate(seeds[kind] if kind != "mp4" else mp4, rng)
        path = tmp_path / f"x.{kind}"
        path.write_bytes(data)
        t0 = time.monotonic()
        if kind == "mp4":
            report = DecodeReport()
            frames = list(decode_frames(str(path), VideoConf(), size=32, report=report, stall_timeout_s=10))
            assert all(f.pixels.shape == (32, 32, 3) for f in frames)
            outcomes["ok" if frames and report.error() is None else "error"] += 1
        else:
            arr, err = _load_one(str(path), None, fconf, sconf)
            assert (arr is None) != (err is None)
            if arr is not None:
                assert arr.shape == (64, 64, 3) and arr.dtype == np.uint8
            else:
                assert err[0] == "decode" and err[2]
            outcomes["ok" if arr is not None else "error"] += 1
        elapsed = time.monotonic() - t0
        slowest = max(slowest, elapsed)
        assert elapsed < 10, f"a mutated {kind} took {elapsed:.1f} s"
        tried[kind] += 1
    print(f"fuzz: {tried}, outcomes {outcomes}, slowest {slowest:.2f} s")
    assert min(tried.values()) >= 30 and outcomes["error"] > 0 and outcomes["ok"] > 0


def test_image_decode_that_runs_past_the_time_limit_is_an_error_row(tmp_path):
    import pandas as pd

    from vidspark.frames import make_featurize_fn

    (tmp_path / "a.jpg").write_bytes(jpeg_bytes(scene("car", np.random.default_rng(1), size=(64, 48))))
    slow = tmp_path / "slow.jpg"
    import os

    os.mkfifo(slow)  # a read that never returns: the object hangs
    fconf = FeaturizerConf(weights="random", image_size=32, batch_size=4, decode_timeout_s=1.0)
    rows = []
    for name in ("a.jpg", "slow.jpg"):
        rows.append(
            {
                "uri": str(tmp_path / name),
                "etag": "e",
                "camera_id": "c",
                "video_id": None,
                "frame_idx": 0,
                "frame_ts": pd.Timestamp("2026-11-20"),
                "date": pd.Timestamp("2026-11-20").date(),
                "label": None,
            }
            | {"size": 1, "key": name, "kind": "image", "seg_start": None, "seg_end": None, "first_idx": None, "prev_pts": None, "last_idx": None, "seg_no": None}
        )
    t0 = time.monotonic()
    out = pd.concat(list(make_featurize_fn(fconf, StorageConf(), "fid")(iter([pd.DataFrame(rows)]))))
    assert time.monotonic() - t0 < 60
    by_uri = out.set_index("uri")
    assert by_uri.loc[str(slow), "error_type"] == "DecodeTimeout" and by_uri.loc[str(tmp_path / "a.jpg"), "featurizer"] == "fid"
    with open(slow, "wb"):  # release the abandoned thread
        pass


SECRET = "vidspark-test-secret"  # conftest's AWS_SECRET_ACCESS_KEY


@pytest.mark.slow
def test_secrets_never_reach_outputs_or_logs(spark, s3_client, bucket, tmp_path, caplog, capsys):
    from vidspark.cli import main
    from vidspark.synthetic import write_labeled_set

    write_labeled_set(S3Sink(s3_client, bucket), classes=("car", "person"), per_class=8, seed=60, size=(96, 72))
    out = tmp_path / "out"
    common = [
        "--set",
        "featurizer.weights=random",
        "--set",
        "train.num_boost_round=20",
        "--set",
        f"spark.hadoop.fs.s3a.secret.key={SECRET}",
        "--set",
        f"storage.endpoint_url={s3_client.meta.endpoint_url}",
    ]
    caplog.set_level(logging.DEBUG)
    assert main(["featurize", "--input", f"s3://{bucket}", "--output", str(out / "features"), "--log-level", "DEBUG", *common], spark=spark) == 0
    assert main(["train", "--features", str(out / "features"), "--model", str(out / "model"), "--folds", "2", "--log-level", "DEBUG", *common], spark=spark) == 0
    assert main(["predict", "--features", str(out / "features"), "--model", str(out / "model"), "--output", str(out / "pred"), *common], spark=spark) == 0
    # an access failure: the message names the bucket, never the key material
    assert main(["featurize", "--input", "s3://no-such-bucket-here", "--output", str(out / "f2"), *common], spark=spark) == 3
    captured = capsys.readouterr()
    texts = [caplog.text, captured.out, captured.err]
    files = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.suffix == ".parquet" for p in files) and any(p.name == "model.json" for p in files) and any(p.parent.name == "runs" for p in files)
    for p in files:
        assert SECRET.encode() not in p.read_bytes(), p
    for text in texts:
        assert SECRET not in text
    assert "***" in caplog.text  # the effective conf was logged, with the secret-looking key redacted


def test_nothing_read_from_storage_is_unpickled_or_evaluated():
    pattern = re.compile(r"\b(pickle|cloudpickle|marshal|shelve|dill)\b|\beval\(|\bexec\(|yaml\.load\(|yaml\.unsafe_load|np\.load\([^)]*allow_pickle\s*=\s*True")
    hits = [f"{p.name}:{n}: {line.strip()}" for p in (ROOT / "vidspark").glob("*.py") for n, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert hits == []
    # the model is LightGBM text + JSON, loaded as such
    model_src = (ROOT / "vidspark" / "model.py").read_text()
    assert "model_str=" in model_src or "model_file=" in model_src
