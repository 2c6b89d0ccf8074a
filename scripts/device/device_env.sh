# Set up this project on the GPU machine (Python 3.12, torch preinstalled, no internet). Source it, from the
# repository root, at the start of a device command whose carry names .whl:
#
#     source scripts/device/device_env.sh && python3 -m synth_transforms ...
#
# It installs the carried wheels (.whl/*.whl, made here by `python scripts/device/fetch_device_wheels.py`) into
# $DEVICE_SITE (default /tmp/site), exports PYTHONPATH=$DEVICE_SITE:$PWD (the project itself is imported from the
# working tree), checks the imports and prints the versions, torch's CUDA and the GPU. itk is not carried (~270 MiB of
# binary wheels, optional reader only). On error it prints why and returns 1 (it never exits the caller's shell
# itself; a `set -e` caller stops there), and it leaves the caller's shell options as they were.

_device_env() {
    local site="${DEVICE_SITE:-/tmp/site}"
    local wheels=(.whl/*.whl)
    if [ ! -d .whl ] || [ ! -e "${wheels[0]:-}" ]; then
        echo "device_env: no wheels in $PWD/.whl:" \
            "run python scripts/device/fetch_device_wheels.py here first and name .whl in carry" >&2
        return 1
    fi
    if [ ! -d synth_transforms ]; then
        echo "device_env: source this from the repository root (no synth_transforms/ in $PWD)" >&2
        return 1
    fi
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
        "${wheels[@]}" || {
        echo "device_env: pip install of ${wheels[*]} into $site failed" >&2
        return 1
    }
    case ":${PYTHONPATH:-}:" in
    *":$site:$PWD:"*) ;;  # sourced twice: already in front
    *) export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}" ;;
    esac
    python3 - <<'PY' || {
import fire, ignite, monai, nibabel, synth_transforms, torch

versions = {m.__name__: getattr(m, "__version__", "?") for m in (monai, ignite, nibabel, fire, torch)}
print("device_env:", ", ".join(f"{name} {version}" for name, version in versions.items()))
print(f"device_env: monai from {monai.__file__}, synth_transforms from {synth_transforms.__file__}")
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
print(f"device_env: torch.cuda.is_available()={torch.cuda.is_available()}, GPU: {gpu}")
PY
        echo "device_env: import check failed with PYTHONPATH=$PYTHONPATH (a wheel missing from .whl?)" >&2
        return 1
    }
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    echo "device_env: source this file (source scripts/device/device_env.sh), do not run it" >&2
    exit 1
fi
# Called as a condition, so a `set -e` caller's errexit cannot end the shell inside the function; then return 1.
if _device_env; then
    unset -f _device_env
else
    unset -f _device_env
    return 1
fi
