#!/usr/bin/env bash
# Runs the fuzz targets in fuzz/ for a while each.
#   tools/fuzz.sh [seconds per target, default 120] [target...]
# Targets: host_calls, config, authority (all when none is named). Needs
# `cargo install cargo-fuzz`. Findings land in fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds="${1:-120}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(host_calls config authority)
fi
for target in "${targets[@]}"; do
  mkdir -p "corpus/$target"
  # cargo-fuzz passes nightly-only flags; RUSTC_BOOTSTRAP lets stable accept them.
  RUSTC_BOOTSTRAP=1 cargo fuzz run -s none "$target" "corpus/$target" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048
done
