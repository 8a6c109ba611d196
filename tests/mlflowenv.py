"""MLflow for tests/test_tracking.py: the client (vidspark's ``mlflow`` extra) and a tracking server, each cached.

The client is ``mlflow-skinny``, resolved against the running environment (``.venv``) with
constraints.txt: when ``.venv`` has no mlflow (CI's ``make venv`` installs ``.[spark,test]`` only),
the packages it lacks are installed with ``--target`` into a folder that is appended to
``sys.path``, so nothing in ``.venv`` changes and every package ``.venv`` has wins. The server is the
full ``mlflow`` package of the same version in a venv of its own (it would downgrade pyarrow and
graphql-core in ``.venv``). Both live in pytest's cache folder under a key made of what they are
built from, built under temporary names and renamed into place, as tests/distenv.py does.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from tests.conftest import free_port
from tests.distenv import ROOT

PIP = ["-m", "pip", "install", "--quiet", "--disable-pip-version-check"]


def extra_requirements() -> list[str]:
    """The ``mlflow`` extra of pyproject.toml, e.g. ``["mlflow-skinny>=3.0"]``."""
    m = re.search(r"^mlflow = \[(.*)\]$", (ROOT / "pyproject.toml").read_text(), re.M)  # no tomllib before Python 3.11
    assert m, "no mlflow extra in pyproject.toml"
    return re.findall(r'"([^"]+)"', m.group(1))


def installed_client() -> str | None:
    """The version of the MLflow client importable here (``mlflow-skinny`` or full ``mlflow``), None if there is none."""
    if importlib.util.find_spec("mlflow") is None:
        return None
    for dist in ("mlflow-skinny", "mlflow"):
        try:
            return version(dist)
        except PackageNotFoundError:
            continue
    return None


def _key(*parts: str) -> str:
    h = hashlib.sha256()
    for part in (*parts, sys.version):
        h.update(part.encode())
    return h.hexdigest()[:16]


def _publish(staged: Path, final: Path) -> None:
    """Rename a finished build into place, then remove builds of other keys (older inputs, never used again)."""
    try:
        os.rename(staged, final)
    except OSError:  # another test run built it first
        shutil.rmtree(staged, ignore_errors=True)
    kind = final.name.split("-", 1)[0]
    for old in final.parent.glob(f"{kind}-*"):
        if old != final:
            shutil.rmtree(old, ignore_errors=True)


def client_path(cache: Path) -> tuple[str, Path | None]:
    """Make the MLflow client importable: ``(its version, the folder appended to sys.path or None)``."""
    have = installed_client()
    if have is not None:
        return have, None
    folder = cache / f"client-{_key(*extra_requirements(), (ROOT / 'constraints.txt').read_text())}"
    if not (folder / ".complete").exists():
        report = cache / f".report-{os.getpid()}.json"
        res = subprocess.run([sys.executable, *PIP, "--dry-run", "--report", str(report), "-c", str(ROOT / "constraints.txt"), *extra_requirements()], capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr[-3000:]
        missing = [f"{item['metadata']['name']}=={item['metadata']['version']}" for item in json.loads(report.read_text())["install"]]
        report.unlink()
        staged = cache / f".{folder.name}.{os.getpid()}"
        shutil.rmtree(staged, ignore_errors=True)
        res = subprocess.run([sys.executable, *PIP, "--no-deps", "--target", str(staged), *missing], capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr[-3000:]
        (staged / ".complete").write_text("\n".join(missing) + "\n")
        _publish(staged, folder)
    if str(folder) not in sys.path:
        sys.path.append(str(folder))  # after site-packages: what .venv has is imported from .venv
        importlib.invalidate_caches()
    return installed_client() or "?", folder


def server_venv(cache: Path, client_version: str) -> Path:
    """A venv with the full ``mlflow`` package of the client's version (built once); returns its ``bin/``."""
    venv = cache / f"server-{_key(client_version)}"
    if not (venv / "bin" / "mlflow").exists():
        t0 = time.monotonic()
        staged = cache / f".{venv.name}.{os.getpid()}"
        shutil.rmtree(staged, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(staged)], check=True, timeout=300)
        res = subprocess.run([str(staged / "bin" / "python"), *PIP, f"mlflow=={client_version}"], capture_output=True, text=True, timeout=900)
        assert res.returncode == 0, res.stderr[-3000:]
        # A venv's scripts name its interpreter by absolute path: rewrite them for the final folder.
        for script in (staged / "bin").iterdir():
            if script.is_file() and not script.is_symlink() and script.read_bytes()[:2] == b"#!":
                script.write_bytes(script.read_bytes().replace(str(staged).encode(), str(venv).encode()))
        for cfg in (staged / "pyvenv.cfg",):
            cfg.write_text(cfg.read_text().replace(str(staged), str(venv)))
        _publish(staged, venv)
        print(f"MLflow {client_version} server venv built in {time.monotonic() - t0:.0f} s")
    return venv / "bin"


@dataclass(frozen=True)
class Server:
    """A tracking server being started; :meth:`wait` before the first request."""

    url: str
    log: Path
    proc: subprocess.Popen

    def wait(self, timeout: float = 180.0) -> str:
        """Block until the server answers ``/health``; returns its URL."""
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc.poll() is None, f"mlflow server exited {self.proc.returncode}:\n{self.log.read_text()[-4000:]}"
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as resp:
                    if resp.status == 200:
                        return self.url
            except OSError:
                pass
            assert time.monotonic() < deadline, f"mlflow server did not answer in {timeout:.0f} s:\n{self.log.read_text()[-4000:]}"
            time.sleep(0.5)


@contextmanager
def tracking_server(bin_dir: Path, root: Path):
    """Start ``mlflow server`` on 127.0.0.1 (SQLite backend and artifacts under ``root``) without waiting for it; stopped on exit.

    It takes half a minute to answer (imports, database migrations): callers do other work
    meanwhile and call :meth:`Server.wait` when they need it.
    """
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = root / "server.log"
    cmd = [
        str(bin_dir / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination", str(root / "artifacts"), "--serve-artifacts",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PYTHON"))}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"  # the server starts its workers (uvicorn, gunicorn) from its venv
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=root, env=env, start_new_session=True)
    try:
        yield Server(url=f"http://127.0.0.1:{port}", log=log, proc=proc)
    finally:
        os.killpg(proc.pid, 15)  # the server's own process group: its workers too
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait(timeout=30)
