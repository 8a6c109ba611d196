"""Shared by the benchmarks: where their JSON goes, how it is written, and the machine it was measured on."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def gpus() -> list[dict[str, str]]:
    """NVIDIA GPUs as ``nvidia-smi`` lists them (name, memory, compute capability, driver); empty without one."""
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,compute_cap,driver_version", "--format=csv,noheader"], capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    rows = [[v.strip() for v in line.split(",")] for line in out.strip().splitlines() if line.strip()]
    return [dict(zip(("name", "memory", "compute_capability", "driver"), r, strict=False)) for r in rows]


def machine() -> dict[str, Any]:
    """The hardware and software a result holds for: CPU model and the flags that decide TensorFlow's kernels, cores, GPUs, versions.

    Results are compared only within one run: machines differ from run to run (a 2-core VM's CPU model
    changes between sessions), so every JSON says which one it came from.
    """
    from vidspark.backbone import auto_precision, cpu_info

    cpu = cpu_info()
    gpu = gpus()
    return {
        "cpu_model": cpu["model"],
        "cpu_flags": cpu["flags"],
        "cores": cpu["cores"],
        "cpu_count": os.cpu_count(),
        "gpus": gpu,
        "auto_precision_cpu": auto_precision(None, cpu["flags"]),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {p: _version(p) for p in ("tensorflow", "keras", "pyspark", "lightgbm", "numpy", "av", "pillow")},
    }


def describe(m: dict[str, Any]) -> str:
    """One line for a table's caption: ``AMD EPYC (avx512_bf16 ...), 2 cores, TensorFlow 2.x / Keras 3.y``."""
    gpu = "; GPU " + ", ".join(g["name"] for g in m["gpus"]) if m["gpus"] else "; no GPU"
    v = m["versions"]
    return f"{m['cpu_model']} ({' '.join(m['cpu_flags']) or 'no listed flags'}), {m['cores']} cores{gpu}; TensorFlow {v['tensorflow']}, Keras {v['keras']}"


def write_results(results: dict[str, Any], out: str | Path) -> None:
    """Write a benchmark's results as JSON (folders created), with the machine they were measured on, and say where."""
    results = {"machine": {**machine(), **results.get("machine", {})}, **{k: v for k, v in results.items() if k != "machine"}}
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"machine: {describe(results['machine'])}")
    print(f"wrote {path}")
