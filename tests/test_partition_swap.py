"""Crash-safe partition replacement: staged write, manifest, swap, and recovery of a killed swap."""

from __future__ import annotations

from datetime import date

import pytest

from vidspark.outputs import partition_path, recover_table, replace_partitions, staging_root

SCHEMA = "uri string, n long, camera_id string, date date"


def rows(spark, table):
    return sorted((r["uri"], r["n"], r["camera_id"], r["date"].isoformat()) for r in spark.read.parquet(table).collect())


def frame(spark, data):
    return spark.createDataFrame([(u, n, c, date.fromisoformat(d)) for u, n, c, d in data], schema=SCHEMA)


OLD = [("a", 1, "cam1", "2026-11-20"), ("b", 1, "cam1", "2026-11-21"), ("c", 1, "cam 2/x", "2026-11-20")]
NEW = [("a", 2, "cam1", "2026-11-20"), ("c", 2, "cam 2/x", "2026-11-20"), ("d", 2, "cam3", "2026-11-22")]


def test_replace_only_the_partitions_written(spark, tmp_path):
    table = str(tmp_path / "t")
    replace_partitions(spark, frame(spark, OLD), table, run_id="r1")
    assert rows(spark, table) == sorted(OLD)
    written = replace_partitions(spark, frame(spark, NEW), table, run_id="r2")
    assert written == ["camera_id=cam 2%2Fx/date=2026-11-20", "camera_id=cam1/date=2026-11-20", "camera_id=cam3/date=2026-11-22"]
    assert rows(spark, table) == sorted([*NEW, ("b", 1, "cam1", "2026-11-21")])  # cam1/2026-11-21 untouched
    assert not (tmp_path / "_staging").exists()  # nothing left beside the table


def test_merge_that_reads_the_table_itself_and_empties_a_partition(spark, tmp_path):
    table = str(tmp_path / "t")
    replace_partitions(spark, frame(spark, OLD), table, run_id="r1")
    merged = spark.read.parquet(table).where("uri != 'b'").unionByName(frame(spark, [("e", 3, "cam1", "2026-11-20")]))
    scope = [partition_path("cam1", "2026-11-20"), partition_path("cam1", "2026-11-21")]
    replace_partitions(spark, merged.where("camera_id = 'cam1'"), table, run_id="r2", scope=scope)
    assert rows(spark, table) == sorted([("a", 1, "cam1", "2026-11-20"), ("e", 3, "cam1", "2026-11-20"), ("c", 1, "cam 2/x", "2026-11-20")])
    assert not (tmp_path / "t" / "camera_id=cam1" / "date=2026-11-21").exists()


@pytest.mark.parametrize("fail_after", [0, 1, 2])
def test_a_swap_killed_midway_is_rolled_forward_by_the_next_run(spark, tmp_path, fail_after):
    table = str(tmp_path / "t")
    replace_partitions(spark, frame(spark, OLD), table, run_id="r1")
    with pytest.raises(RuntimeError, match="injected"):
        replace_partitions(spark, frame(spark, NEW), table, run_id="r2", _fail_after=fail_after)
    # What a reader sees meanwhile: every partition whole, either the old or the new one.
    seen = rows(spark, table)
    by_part: dict[tuple[str, str], set] = {}
    for r in seen:
        by_part.setdefault((r[2], r[3]), set()).add(r)
    for part, got in by_part.items():
        old = {r for r in OLD if (r[2], r[3]) == part}
        new = {r for r in NEW if (r[2], r[3]) == part}
        assert got in (old, new), part
    done = recover_table(spark, table)
    assert done and "rolled forward" in done[0]
    assert rows(spark, table) == sorted([*NEW, ("b", 1, "cam1", "2026-11-21")])


def test_killed_between_the_two_renames_and_before_the_manifest(spark, tmp_path):
    table = str(tmp_path / "t")
    replace_partitions(spark, frame(spark, OLD), table, run_id="r1")
    with pytest.raises(RuntimeError):
        replace_partitions(spark, frame(spark, NEW), table, run_id="r2", _fail_after=1)
    # simulate the kill landing after "old -> trash" of the next partition, before "staged -> table"
    run_dir = tmp_path / "_staging" / "t" / "r2"
    target = tmp_path / "t" / "camera_id=cam1" / "date=2026-11-20"
    (run_dir / "trash" / "camera_id=cam1").mkdir(parents=True, exist_ok=True)
    target.rename(run_dir / "trash" / "camera_id=cam1" / "date=2026-11-20")
    recover_table(spark, table)
    assert rows(spark, table) == sorted([*NEW, ("b", 1, "cam1", "2026-11-21")])
    # a write that died before its manifest leaves only staging files: removed, the table untouched
    frame(spark, NEW).write.partitionBy("camera_id", "date").parquet(staging_root(table) + "/r3/data")
    assert "removed unfinished staging r3" in recover_table(spark, table)
    assert rows(spark, table) == sorted([*NEW, ("b", 1, "cam1", "2026-11-21")])


def test_interrupted_file_by_file_rename_is_finished_not_deleted(spark, tmp_path):
    """On object stores a folder rename copies file by file: a kill leaves part of the new partition in place."""
    table = str(tmp_path / "t")
    replace_partitions(spark, frame(spark, OLD), table, run_id="r1")
    many = [(f"n{i}", 9, "cam1", "2026-11-20") for i in range(6)]
    with pytest.raises(RuntimeError):
        replace_partitions(spark, frame(spark, many), table, run_id="r2", max_rows_per_file=2, _fail_after=0)  # a partition of 3 files
    run_dir = tmp_path / "_staging" / "t" / "r2"
    target = tmp_path / "t" / "camera_id=cam1" / "date=2026-11-20"
    (run_dir / "trash" / "camera_id=cam1").mkdir(parents=True)
    target.rename(run_dir / "trash" / "camera_id=cam1" / "date=2026-11-20")
    staged = run_dir / "data" / "camera_id=cam1" / "date=2026-11-20"
    target.mkdir()
    files = sorted(p for p in staged.iterdir() if p.suffix == ".parquet")
    assert len(files) >= 2
    files[0].rename(target / files[0].name)  # the copy got one file across before the kill
    recover_table(spark, table)
    assert sorted(r for r in rows(spark, table) if r[2] == "cam1" and r[3] == "2026-11-20") == sorted(many)


def test_rows_outside_the_declared_scope_are_refused(spark, tmp_path):
    table = str(tmp_path / "t")
    with pytest.raises(Exception, match="outside this write's scope"):
        replace_partitions(spark, frame(spark, NEW), table, run_id="r1", scope=[partition_path("cam1", "2026-11-20")])
    assert not (tmp_path / "t").exists()
