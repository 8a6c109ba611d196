#!/usr/bin/env bash
# build_dist.sh wheel|env PYTHON OUTDIR [CONSTRAINTS]: what `make dist` builds (tests call it too).
#   wheel: OUTDIR/vidspark-VERSION-py3-none-any.whl, built with PYTHON (setuptools, no download).
#   env:   OUTDIR/vidspark-VERSION-env.tar.gz, the executors' Python environment: a fresh venv of
#          PYTHON's interpreter with the wheel's dependencies pinned by CONSTRAINTS, packed with
#          venv-pack. Neither pyspark (the cluster's Spark provides it) nor vidspark (the wheel,
#          shipped with --py-files, is the one copy) is in it, so a code change rebuilds the wheel only.
#          ENV_PYTHON=/usr/bin/python3.11 makes env/bin/python point there on the nodes instead of at
#          PYTHON's interpreter (same minor version needed).
# Everything is built in a temporary folder next to the target and renamed into place, so a
# half-built file never has the final name and two builds never write the same file.
set -euo pipefail

what="${1:?wheel or env}"
python="${2:?python}"
out="${3:?output folder}"
constraints="${4:-}"
root="$(cd "$(dirname "$0")/.." && pwd)"
version="$(sed -n 's/^__version__ = "\([^"]*\)"$/\1/p' "$root/vidspark/__init__.py")"
[ -n "$version" ] || { echo "build_dist.sh: no __version__ in vidspark/__init__.py" >&2; exit 2; }
wheel="vidspark-$version-py3-none-any.whl"

mkdir -p "$out"
tmp="$(mktemp -d "$out/.build-$what.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

case "$what" in
  wheel)
    # Build from a copy: setuptools writes build/ and *.egg-info next to the sources.
    mkdir "$tmp/src"
    cp -R "$root/pyproject.toml" "$root/setup.py" "$root/README.md" "$root/vidspark" "$tmp/src/"
    find "$tmp/src" -name __pycache__ -prune -exec rm -rf {} +
    "$python" -m pip wheel --quiet --no-deps --no-build-isolation --wheel-dir "$tmp/wheel" "$tmp/src" 2> >(grep -v -e BetaConfiguration -e 'is still \*beta\*' >&2)
    [ -f "$tmp/wheel/$wheel" ] || { echo "build_dist.sh: expected $wheel, got: $(ls "$tmp/wheel")" >&2; exit 1; }
    chmod 0644 "$tmp/wheel/$wheel"
    mv -f "$tmp/wheel/$wheel" "$out/$wheel"
    echo "$out/$wheel"
    ;;
  env)
    [ -f "$out/$wheel" ] || { echo "build_dist.sh: $out/$wheel missing: build the wheel first" >&2; exit 2; }
    [ -f "$constraints" ] || { echo "build_dist.sh: constraints file '$constraints' not found" >&2; exit 2; }
    packer="$(dirname "$python")/venv-pack"
    [ -x "$packer" ] || { echo "build_dist.sh: $packer not found: pip install venv-pack (it is in vidspark's [test] extra)" >&2; exit 2; }
    "$python" -m venv "$tmp/env"
    "$tmp/env/bin/python" -m pip install --quiet --disable-pip-version-check -c "$constraints" "$out/$wheel"
    "$tmp/env/bin/python" -m pip uninstall --quiet --yes vidspark
    if "$tmp/env/bin/python" -c 'import pyspark' 2>/dev/null; then
      echo "build_dist.sh: pyspark got into the executor environment; it must come from the cluster's Spark" >&2
      exit 1
    fi
    if [ -n "${ENV_PYTHON:-}" ]; then
      # venv-pack --python-prefix mislinks Python 3.11 venvs (bin/python3 -> .../bin/python3.113): relink by hand.
      case "$ENV_PYTHON" in /*) ;; *) echo "build_dist.sh: ENV_PYTHON must be an absolute path" >&2; exit 2 ;; esac
      for link in "$tmp"/env/bin/python*; do
        if [ -L "$link" ] && [[ "$(readlink "$link")" == /* ]]; then ln -sfn "$ENV_PYTHON" "$link"; fi
      done
      sed -i -e "s|^home = .*|home = $(dirname "$ENV_PYTHON")|" -e "s|^executable = .*|executable = $ENV_PYTHON|" "$tmp/env/pyvenv.cfg"
    fi
    # TensorFlow's C++ headers (430 MB, 18 000 files: 40 % of the env's files) only serve building custom ops.
    "$packer" --quiet --prefix "$tmp/env" --output "$tmp/env.tar.gz" --exclude 'lib/python*/site-packages/tensorflow/include/*'
    chmod 0644 "$tmp/env.tar.gz"
    mv -f "$tmp/env.tar.gz" "$out/vidspark-$version-env.tar.gz"
    echo "$out/vidspark-$version-env.tar.gz"
    ;;
  *) echo "build_dist.sh: unknown target '$what' (wheel, env)" >&2; exit 2 ;;
esac
