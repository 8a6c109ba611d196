"""What `make dist` builds, for the slow tests: the wheel (fresh) and the packed executor environment (cached).

Both come from ``scripts/build_dist.sh``, the script the Makefile runs. The env takes minutes to
build, so it is kept in pytest's cache folder (``.pytest_cache``, removed by ``make clean``) under a
key made of what it is built from (as the Makefile's rule: constraints.txt, pyproject.toml, the script).
Builds go to temporary names and are renamed into place, so concurrent test runs never see half a file.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "scripts" / "build_dist.sh"


def version() -> str:
    """vidspark's version, read as the Makefile and submit.sh read it (no import)."""
    m = re.search(r'^__version__ = "([^"]+)"$', (ROOT / "vidspark" / "__init__.py").read_text(), re.M)
    assert m, "no __version__ in vidspark/__init__.py"
    return m.group(1)


@dataclass(frozen=True)
class Dist:
    wheel: Path  # dist/vidspark-<version>-py3-none-any.whl, built from the working tree
    env_archive: Path  # dist/vidspark-<version>-env.tar.gz: dependencies only, no pyspark, no vidspark
    env_dir: Path  # the same environment unpacked (its bin/python runs a client-mode driver)


def build_wheel(out: Path) -> Path:
    """The wheel of the working tree, built into ``out`` by build_dist.sh (a few seconds, no download)."""
    res = subprocess.run([str(BUILD), "wheel", sys.executable, str(out)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    wheel = out / f"vidspark-{version()}-py3-none-any.whl"
    assert wheel.is_file(), res.stdout
    return wheel


def env_key() -> str:
    """What the packed env is made of: the pins, the package's metadata, the build script and the interpreter."""
    h = hashlib.sha256()
    for path in (ROOT / "constraints.txt", ROOT / "pyproject.toml", BUILD):
        h.update(path.read_bytes())
    h.update(sys.version.encode())
    return h.hexdigest()[:16]


def built_dist(cache: Path, tmp: Path) -> Dist:
    """A fresh wheel in ``tmp`` and the packed env from ``cache``, built there first when missing."""
    wheel = build_wheel(tmp)
    key = env_key()
    archive = cache / f"vidspark-{version()}-env-{key}.tar.gz"
    if not archive.is_file():
        res = subprocess.run([str(BUILD), "env", sys.executable, str(tmp), str(ROOT / "constraints.txt")], capture_output=True, text=True, timeout=1200)
        assert res.returncode == 0, res.stderr[-3000:]
        staged = cache / f".{archive.name}.{os.getpid()}"
        shutil.move(tmp / f"vidspark-{version()}-env.tar.gz", staged)
        os.replace(staged, archive)
        for old in cache.glob("vidspark-*-env-*"):  # other keys: older pins, never used again
            if key in old.name:
                continue
            if old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink(missing_ok=True)
    env_dir = cache / f"vidspark-{version()}-env-{key}"
    if not (env_dir / "bin" / "python").exists():
        staged = cache / f".{env_dir.name}.{os.getpid()}"
        shutil.rmtree(staged, ignore_errors=True)
        staged.mkdir()
        subprocess.run(["tar", "-xzf", str(archive), "-C", str(staged)], check=True, timeout=600)
        try:
            os.rename(staged, env_dir)
        except OSError:  # another test run unpacked it first
            shutil.rmtree(staged, ignore_errors=True)
    return Dist(wheel=wheel, env_archive=archive, env_dir=env_dir)
