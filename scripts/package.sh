#!/usr/bin/env bash
# Builds the Debian package of outboxd (CPack, packaging/CMakeLists.txt) and
# prints its path as the last line.
#
#   scripts/package.sh              a Release build in build-package/
#   scripts/package.sh BUILD_DIR    an already configured build tree (the
#                                   test suite packages its own build)
#
# Then: sudo apt install ./outboxd_*.deb (or dpkg -i), lintian on the file.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$root/build-package}
if [[ ! -f $build/CMakeCache.txt ]]; then
  cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DOUTBOXD_BUILD_TESTS=OFF >&2
fi
cmake --build "$build" --target outboxd >&2
rm -f "$build"/outboxd_*.deb
(cd "$build" && cpack -G DEB --config CPackConfig.cmake) >&2
ls "$build"/outboxd_*.deb
