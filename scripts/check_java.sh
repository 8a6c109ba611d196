#!/usr/bin/env bash
# Stop at once, with what to install, when Java 17+ is missing (PySpark 4 needs it).
set -euo pipefail
java_bin="${JAVA_HOME:+$JAVA_HOME/bin/java}"
java_bin="${java_bin:-$(command -v java || true)}"
if [ -z "$java_bin" ] || [ ! -x "$java_bin" ]; then
  echo "vidspark: Java not found. PySpark needs Java 17 or newer: install it (Debian/Ubuntu: sudo apt-get install openjdk-17-jre-headless; macOS: brew install openjdk@17) or set JAVA_HOME." >&2
  exit 2
fi
version=$("$java_bin" -version 2>&1 | sed -n 's/.*version "\([0-9][0-9]*\)\(\.\([0-9]*\)\)\{0,1\}.*/\1 \3/p' | head -1)
major=${version%% *}
if [ "$major" = "1" ]; then major=${version##* }; fi
if [ -z "$major" ] || [ "$major" -lt 17 ]; then
  echo "vidspark: $java_bin is Java ${major:-unknown}; PySpark needs Java 17 or newer: install openjdk-17 and set JAVA_HOME." >&2
  exit 2
fi
