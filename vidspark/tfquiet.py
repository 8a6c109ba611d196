"""TensorFlow without its start-up notices: the import and the first device query, with known noise filtered out.

On a healthy CPU machine TensorFlow prints absl/oneDNN/CUDA notices straight to file descriptor 2
(``I0000 ... port.cc] oneDNN custom operations are on``, ``E0000 ... failed call to cuInit``),
before Python's logging or ``TF_CPP_MIN_LOG_LEVEL`` can catch all of them. An operator reading a
nightly log sees "ERROR"-looking lines on a run that is fine. Here the import and the first device
query run with fd 2 captured, and only lines matching the known start-up notices are dropped: every
other line (a real error) is written back. ``VIDSPARK_FRAMEWORK_LOGS=1`` (conf ``job.framework_logs``)
turns the filtering off.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
from collections.abc import Iterator
from typing import Any

# absl-format lines (I/W/E + MMDD + time + thread + file.cc:line]) from the files that print start-up notices, and their continuations.
NOISE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|[IWE]\d{4} [\d:.]+\s+\d+ (port|cudart_stub|cpu_feature_guard|cuda_platform|cuda_dnn|cuda_fft|cuda_blas|cuda_executor|cuda_diagnostics|gpu_device|computation_placer)\.cc:\d+\]"
    r"|To enable the following instructions: .* rebuild TensorFlow with the appropriate compiler flags\.)"
)
_LOCK = threading.RLock()
_tf: Any = None


def framework_logs() -> bool:
    """Whether TensorFlow's own start-up logs are wanted (``job.framework_logs: true``)."""
    return os.environ.get("VIDSPARK_FRAMEWORK_LOGS") == "1"


def drop_noise(text: str) -> str:
    """``text`` without the lines of TensorFlow's known start-up notices."""
    return "".join(line for line in text.splitlines(keepends=True) if not NOISE.search(line))


@contextlib.contextmanager
def filtered_stderr() -> Iterator[None]:
    """Route file descriptor 2 through a pipe for the block; a thread passes every line on except the known start-up notices.

    Lines go on as they come, so a crash inside the block (an abort in a native library) still
    leaves its message on stderr.
    """
    with _LOCK:
        sys.stderr.flush()
        saved = os.dup(2)
        r, w = os.pipe()
        os.dup2(w, 2)
        os.close(w)

        def pump() -> None:
            with os.fdopen(r, "rb") as source:
                for line in source:
                    if not NOISE.search(line.decode("utf-8", errors="replace")):
                        with contextlib.suppress(OSError):
                            os.write(saved, line)

        thread = threading.Thread(target=pump, name="vidspark-stderr-filter", daemon=True)
        thread.start()
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)  # the pipe's last write end closes: the pump reads to the end and stops
            thread.join(timeout=10)
            if not thread.is_alive():
                os.close(saved)


def import_tensorflow() -> Any:
    """``import tensorflow`` and its first GPU query (where CUDA reports), quietly unless framework logs are on."""
    global _tf
    if _tf is not None:
        return _tf
    with _LOCK:
        if _tf is None:
            if framework_logs():
                import tensorflow as tf

                tf.config.list_physical_devices("GPU")
            else:
                os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # no INFO lines once absl is up; warnings and errors still show
                with filtered_stderr():
                    import tensorflow as tf

                    tf.config.list_physical_devices("GPU")
            _tf = tf
    return _tf
