#!/usr/bin/env bash
# The whole GPU protocol in one device call (docs/gpu_runs.md): run from the repository root on the device machine,
# with .whl and .data named in carry:
#
#     bash scripts/device/gpu_run.sh [more gpu_call.py run flags, e.g. --seeds 0,1,2]
#
# The call's clock starts before the install (GPU_CALL_STARTED), so its 8.5-minute budget covers it; the output is
# unbuffered and also written to $OUT/gpu_call.log, which comes back with the packed files.
export GPU_CALL_STARTED="$(date +%s.%N)" PYTHONUNBUFFERED=1
dest="${OUT:-runs/gpu_call_packed}"
mkdir -p "$dest" && source scripts/device/device_env.sh || exit 1
python3 scripts/device/gpu_call.py run --out runs/gpu_call --dest "$dest" "$@" 2>&1 | tee "$dest/gpu_call.log"
exit "${PIPESTATUS[0]}"
