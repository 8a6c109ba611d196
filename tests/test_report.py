"""`vidspark report`: the page made from the demo's real outputs, its text checked against the run record and the
tables, and the page opened in a real headless Chromium (no console errors, a screenshot of the window's size)."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from datetime import date, datetime, timezone
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import pyarrow.dataset as ds
import pytest
from PIL import Image

from vidspark.errors import ConfigError
from vidspark.outputs import append_partitioned, parquet_writer
from vidspark.report import find_run_record, render, report
from vidspark.schemas import ERRORS_SCHEMA, VIDEO_PREDICTIONS_SCHEMA

OTHER_RUN = "20261119T020000Z-run-0ld0ld"
WINDOW = (1280, 2400)


# ---------------------------------------------------------------------------------------------
# The page, parsed with the standard library
# ---------------------------------------------------------------------------------------------


@dataclass
class Cell:
    tag: str
    attrs: dict[str, str]
    text: str = ""


class Page(HTMLParser):
    """What the tests read of the page: text of elements with an id, tables by id (rows of cells), list items with
    their links, every attribute, the images' sources."""

    def __init__(self) -> None:
        super().__init__()
        self.by_id: dict[str, str] = {}
        self.tables: dict[str, list[tuple[dict[str, str], list[Cell]]]] = {}
        self.items: list[tuple[str, list[str]]] = []  # <li>: its text, the hrefs in it
        self.attrs: list[tuple[str, str, str]] = []
        self.images: list[str] = []
        self._open_ids: list[tuple[str, str, list[str]]] = []
        self._table: list[str | None] = []
        self._cell: Cell | None = None
        self._item: tuple[list[str], list[str]] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.attrs += [(tag, k, v) for k, v in a.items()]
        if tag == "img":
            self.images.append(a.get("src", ""))
        elif tag == "li":
            self._item = ([], [])
        elif tag == "a" and self._item is not None and "href" in a:
            self._item[1].append(a["href"])
        if tag == "table":
            self._table.append(a.get("id"))
            if a.get("id"):
                self.tables[a["id"]] = []
        elif tag == "tr" and self._table and self._table[-1]:
            self.tables[self._table[-1]].append((a, []))
        elif tag in ("td", "th") and self._table and self._table[-1]:
            self._cell = Cell(tag, a)
            self.tables[self._table[-1]][-1][1].append(self._cell)
        if "id" in a and tag not in ("img", "br", "meta"):
            self._open_ids.append((tag, a["id"], []))

    def handle_endtag(self, tag: str) -> None:
        if tag == "table" and self._table:
            self._table.pop()
        elif tag in ("td", "th"):
            self._cell = None
        elif tag == "li" and self._item is not None:
            self.items.append(("".join(self._item[0]).strip(), self._item[1]))
            self._item = None
        if self._open_ids and self._open_ids[-1][0] == tag:
            _, ident, parts = self._open_ids.pop()
            self.by_id[ident] = "".join(parts).strip()
            if self._open_ids:
                self._open_ids[-1][2].extend(parts)

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.text += data
        if self._item is not None:
            self._item[0].append(data)
        if self._open_ids:
            self._open_ids[-1][2].append(data)

    def rows(self, table: str) -> list[list[str]]:
        """A table's rows as cell texts, the header row first."""
        return [[c.text.strip() for c in cells] for _, cells in self.tables[table]]


def parse(text: str) -> Page:
    page = Page()
    page.feed(text)
    page.close()
    return page


def number(text: str) -> int:
    return int(text.replace(",", ""))


# ---------------------------------------------------------------------------------------------
# Fixtures: the demo's outputs (copied, plus rows of another run that the report must leave out)
# ---------------------------------------------------------------------------------------------


@dataclass
class Made:
    output: Path
    html: Path
    summary: dict
    record: dict
    text: str
    page: Page


@pytest.fixture(scope="module")
def made(spark, demo_run, tmp_path_factory) -> Made:
    work, _ = demo_run
    output = tmp_path_factory.mktemp("report") / "output"
    shutil.copytree(work / "output", output)
    # another run's rows in the tables this run wrote: an error (also of a camera this run had no errors in) and a
    # video with more flicker than any of this run's, in a partition the run predicted
    t = datetime(2026, 11, 19, 2, 0, tzinfo=timezone.utc)
    errors = [("/x/cam1/a.jpg", "decode", "DecodeError", "old", OTHER_RUN, t, "cam1", date(2026, 11, 20)), ("/x/cam9/b.jpg", "fetch", "OSError", "old", OTHER_RUN, t, "cam9", date(2026, 11, 20))]
    append_partitioned(spark.createDataFrame(errors, ERRORS_SCHEMA), str(output / "errors"), max_rows_per_file=1000)
    video = ("cam1", "cam1-old", date(2026, 11, 20), t, t, 40, 0, "car", 0.9, {"car": 0.9, "person": 0.1}, 999, 9, "m-old", OTHER_RUN)
    parquet_writer(spark.createDataFrame([video], VIDEO_PREDICTIONS_SCHEMA), "append").partitionBy("camera_id", "date").parquet(str(output / "predictions" / "videos"))

    html = output.parent / "report.html"
    summary = report(spark, output=str(output), html=str(html))
    record = json.loads((output / "runs" / f"{summary['run_id']}.json").read_text())
    text = html.read_text(encoding="utf-8")
    return Made(output, html, summary, record, text, parse(text))


def run_rows(path: Path, run_id: str):
    """The rows of ``run_id`` in a partitioned table, read with pyarrow (not Spark, not the report's code)."""
    pdf = ds.dataset(str(path), format="parquet", partitioning="hive").to_table().to_pandas()
    pdf["camera_id"] = pdf["camera_id"].astype(str)  # a partition column comes as a category
    return pdf[pdf["run_id"] == run_id].reset_index(drop=True)


# ---------------------------------------------------------------------------------------------
# Text content
# ---------------------------------------------------------------------------------------------


def test_counts_shown_are_the_run_records(made):
    run = made.record["summary"]["run"]  # the demo's record holds the nightly run's summary under "run"
    f, p = run["featurize"], run["predict"]
    expected = {
        "listed": f["listed"],
        "selected": f["selected"],
        "featurized_objects": f["featurized_objects"],
        "featurized": f["featurized"],
        "skipped_unchanged": f["skipped_unchanged"],
        "replaced_objects": f["replaced_objects"],
        "pruned_objects": f["pruned_objects"],
        "errors": f["error_count"],
        "video_files": f["videos"],
        "videos": p["videos"],
        "frames_predicted": p["frames"],
        "raw_label_switches": p["raw_label_switches"],
        "smoothed_label_switches": p["smoothed_label_switches"],
    }
    shown = {key: number(made.page.by_id[f"count-{key}"]) for key in expected}
    assert shown == expected
    assert expected["errors"] > 0 and expected["videos"] > 0 and expected["featurized"] > 0  # the demo exercises every section
    assert made.page.by_id["run-id"] == made.record["run_id"] and made.page.by_id["status"] == "ok"
    stages = [r[0] for r in made.page.rows("timings-table")[1:]]
    assert stages == [f"{part}: {k.removesuffix('_s').replace('_', ' ')}" for part in ("featurize", "predict") for k in run[part]["timings"]] + ["whole job (demo)"]
    assert float(made.page.rows("timings-table")[-1][1].replace(",", "")) == pytest.approx(made.record["duration_s"], abs=0.05)


def test_errors_by_camera_and_stage_are_the_runs_rows(made):
    rows = run_rows(made.output / "errors", made.record["run_id"])
    expected = {(str(cam), stage): n for (cam, stage), n in rows.groupby(["camera_id", "stage"]).size().items()}
    header, *body = made.page.tables["errors-table"]
    stages = [c.text for c in header[1]][1:-1]
    shown = {}
    for attrs, cells in body:
        assert cells[0].text == attrs["data-camera"]
        for stage, cell in zip(stages, cells[1:-1], strict=True):
            if number(cell.text):
                shown[(attrs["data-camera"], stage)] = number(cell.text)
        assert number(cells[-1].text) == sum(number(c.text) for c in cells[1:-1])
    assert shown == expected
    assert sum(expected.values()) == made.record["summary"]["run"]["error_count"]
    assert "cam9" not in made.text and "/x/cam1/a.jpg" not in made.text  # the other run's errors are left out
    assert made.summary["errors"] == sum(expected.values())


def test_label_distribution_sums_to_the_runs_videos(made):
    rows = run_rows(made.output / "predictions" / "videos", made.record["run_id"])
    header, *body = made.page.rows("labels-table")
    labels = header[1:-2]
    shown = {(r[0], lb): number(n) for r in body for lb, n in zip(labels, r[1:-2], strict=True) if number(n)}
    assert shown == {(str(cam), lb): n for (cam, lb), n in rows.groupby(["camera_id", "label"]).size().items()}
    totals = [number(r[-2]) for r in body]
    assert sum(totals) == made.record["summary"]["run"]["predict"]["videos"] == len(rows)
    assert all(number(r[-2]) == sum(number(n) for n in r[1:-2]) for r in body)


def test_flicker_table_lists_the_most_switching_videos_in_order(made):
    rows = run_rows(made.output / "predictions" / "videos", made.record["run_id"])
    top = rows.sort_values(["raw_label_switches", "smoothed_label_switches", "camera_id", "video_id"], ascending=[False, False, True, True]).head(5)
    shown = [(r[1], r[2], number(r[5]), number(r[6])) for r in made.page.rows("flicker-table")[1:]]
    assert shown == [(str(r.camera_id), r.video_id, r.raw_label_switches, r.smoothed_label_switches) for r in top.itertuples()]
    raw = [s[2] for s in shown]
    assert raw == sorted(raw, reverse=True) and raw[0] == rows["raw_label_switches"].max()
    assert "cam1-old" not in made.text  # 999 switches, but another run's row


def test_images_are_embedded_pngs(made):
    assert len(made.page.images) == len(made.page.rows("flicker-table")) - 1 == made.summary["images"] == 5
    for src in made.page.images:
        prefix = "data:image/png;base64,"
        assert src.startswith(prefix)
        data = base64.b64decode(src[len(prefix) :], validate=True)
        with Image.open(io.BytesIO(data)) as img:
            img.verify()
        with Image.open(io.BytesIO(data)) as img:
            assert img.format == "PNG" and img.size[0] >= 800 and img.size[1] >= 400
            img.load()


def test_page_is_self_contained_and_links_the_outputs(made):
    assert not re.search(r"https?://", made.text, re.IGNORECASE)
    assert 'src="/' not in made.text and "<script" not in made.text.lower() and "<link" not in made.text.lower()
    assert "url(" not in made.text and "@import" not in made.text
    assert all(v.startswith("data:") for tag, k, v in made.page.attrs if k == "src")
    links = {text.split(":", 1)[0]: hrefs[0] for text, hrefs in made.page.items if hrefs}
    assert set(links) == {"features", "errors", "frame predictions", "video predictions", "model", "run record"}
    for what, href in links.items():
        assert href.startswith("file:///"), href
        assert Path(unquote(urlparse(href).path)).exists(), (what, href)
    assert made.summary["bytes"] == made.html.stat().st_size < 1_500_000


def test_latest_run_record_is_the_default_and_others_are_found_by_id(spark, made, tmp_path):
    runs = tmp_path / "out" / "runs"
    runs.mkdir(parents=True)

    def put(run_id: str, job: str, started: str) -> None:
        (runs / f"{run_id}.json").write_text(json.dumps({"run_id": run_id, "job": job, "started": started, "status": "ok", "summary": {}}))

    put("20261120T020000Z-run-aaaaaa", "run", "2026-11-20T02:00:00+00:00")
    put("20261121T020000Z-run-bbbbbb", "run", "2026-11-21T02:00:00+00:00")
    put("20261122T020000Z-train-cccccc", "train", "2026-11-22T02:00:00+00:00")  # later, but not a nightly run
    out = str(tmp_path / "out")
    assert find_run_record(spark, out)["run_id"] == "20261121T020000Z-run-bbbbbb"
    put("nightly-2026-11-22", "run", "2026-11-22T02:30:00+00:00")  # an id given with --run-id: read to learn when it started
    assert find_run_record(spark, out)["run_id"] == "nightly-2026-11-22"
    assert find_run_record(spark, out, run_id="20261120T020000Z-run-aaaaaa")["started"].startswith("2026-11-20")
    with pytest.raises(ConfigError, match="no run record 'nope'.*nightly-2026-11-22"):
        find_run_record(spark, out, run_id="nope")
    with pytest.raises(ConfigError, match="no record of `vidspark run`"):
        find_run_record(spark, str(tmp_path / "empty"))
    assert find_run_record(spark, str(made.output))["run_id"] == made.record["run_id"]


def test_a_failed_run_without_outputs_still_gets_a_page(spark, tmp_path):
    runs = tmp_path / "out" / "runs"
    runs.mkdir(parents=True)
    record = {"run_id": "r-failed", "job": "run", "started": "2026-11-22T02:00:00+00:00", "status": "failed", "exit_code": 3, "message": "bucket gone", "summary": {}}
    (runs / "r-failed.json").write_text(json.dumps(record))
    summary = report(spark, output=str(tmp_path / "out"), html=str(tmp_path / "r.html"))
    page = parse((tmp_path / "r.html").read_text())
    assert summary["status"] == "failed" and page.by_id["status"] == "failed"
    assert page.by_id["count-listed"] == "—" and "bucket gone" in page.by_id["notes"] and "No errors table" in page.by_id["notes"]
    assert summary["images"] == 0 and summary["videos"] == 0


def test_outputs_on_a_cluster_are_linked_as_given():
    """An ``s3a://`` output root: its URIs are the links; a model named by a registry URI is shown, not linked."""
    record = {"run_id": "r1", "job": "run", "status": "ok", "summary": {}}
    links = [("features", "s3a://lake/out/features"), ("model", "models:/cars@prod"), ("run record", "s3a://lake/out/runs/r1.json")]
    page = parse(render(record, run_summary={}, counts={}, timings=[], errors_by_camera={}, error_examples=[], labels_by_camera={}, flicker=[], images={}, links=links, notes=[]))
    assert page.items == [
        ("features: s3a://lake/out/features", ["s3a://lake/out/features"]),
        ("model: models:/cars@prod", []),
        ("run record: s3a://lake/out/runs/r1.json", ["s3a://lake/out/runs/r1.json"]),
    ]


# ---------------------------------------------------------------------------------------------
# In a real browser (two launches: the report, and a page that must be caught)
# ---------------------------------------------------------------------------------------------


def chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    pytest.fail("Chromium is not installed, and the report must be opened in a real browser: run scripts/install_browser.sh (as root: apt-get update && apt-get install -y chromium)")


def open_in_browser(page: Path, tmp: Path) -> tuple[Path, str, str]:
    """Load ``page`` in headless Chromium: the screenshot's path, the DOM it printed, its log (stderr)."""
    shot = tmp / "shot.png"
    cmd = [
        chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        f"--user-data-dir={tmp / 'profile'}",
        f"--screenshot={shot}",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        "--enable-logging=stderr",
        "--v=0",
        "--dump-dom",
        page.resolve().as_uri(),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    return shot, res.stdout, res.stderr


def console_messages(log: str) -> list[str]:
    """Lines of Chromium's log that report a console message (``INFO:CONSOLE:1] "text", source: ...``, older ``CONSOLE(1)``)."""
    return [ln for ln in log.splitlines() if re.search(r":CONSOLE[:(]\d*", ln)]


def test_report_loads_in_chromium_without_console_errors(made, tmp_path):
    shot, dom, log = open_in_browser(made.html, tmp_path)
    assert console_messages(log) == []
    with Image.open(shot) as img:
        assert img.format == "PNG" and img.size == WINDOW
        colours = img.convert("RGB").resize((64, 120)).getcolors(64 * 120)
        assert colours is not None and len(colours) > 20  # rendered, not a blank page
    assert made.record["run_id"] in dom and dom.count("data:image/png;base64,") == 5


def test_a_console_error_is_caught(tmp_path):
    """The check above can fail: a page that logs a console error is seen as one."""
    page = tmp_path / "bad.html"
    page.write_text('<!DOCTYPE html><html><head><meta charset="utf-8"><title>bad</title></head><body><p>x</p><script>console.error("deliberate report failure")</script></body></html>')
    _, _, log = open_in_browser(page, tmp_path)
    found = console_messages(log)
    assert len(found) == 1 and "deliberate report failure" in found[0]


def test_cli_report_and_run_report(spark, made, tmp_path):
    """`vidspark report` writes the page of the latest run; `vidspark run --report` writes its own run's page at the end."""
    from vidspark.cli import main

    page = tmp_path / "cli.html"
    assert main(["report", "--output", str(made.output), "--html", str(page)], spark=spark) == 0
    assert made.summary["run_id"] in page.read_text(encoding="utf-8")
    empty = tmp_path / "empty-night" / "cam1"
    empty.mkdir(parents=True)
    nightly = tmp_path / "nightly.html"
    argv = ["run", "--input", str(empty.parent), "--model", str(made.output / "model"), "--output", str(made.output), "--run-id", "night-0", "--report", str(nightly)]
    assert main([*argv, "--set", "featurizer.weights=random", "--set", "featurizer.image_size=32"], spark=spark) == 0
    text = nightly.read_text(encoding="utf-8")
    assert "night-0" in text and made.summary["run_id"] not in text
