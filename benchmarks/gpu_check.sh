#!/usr/bin/env bash
# The GPU check as the device machine runs it (`make gpu-check`; docs/gpu-check.md): install the
# carried wheels into a folder of their own beside the image's packages (--no-deps: torch and the
# rest stay the image's), unpack the carried MNIST, and run benchmarks/gpu_check.py with the
# project on PYTHONPATH (nothing is pip-installed from the project: its pins name torch 2.14.1).
# Without .gpu-carry/ it runs with what GPU_PYTHON has and $MNIST_ROOT. Arguments go to the script.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${GPU_PYTHON:-python3}
carry=${GPU_CARRY:-.gpu-carry}
if [ -d "$carry/wheels" ]; then
    site=${GPU_SITE:-/tmp/lenet5-gpu-site}
    "$python" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$site" --find-links "$carry/wheels" -r benchmarks/gpu_requirements.txt
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
if [ -f "$carry/MNIST.tar.gz" ]; then
    mnist=${GPU_MNIST:-/tmp/lenet5-mnist}
    mkdir -p "$mnist"
    tar -xzf "$carry/MNIST.tar.gz" -C "$mnist"
    export MNIST_ROOT="$mnist"
fi
export PYTHONPATH="$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
exec "$python" benchmarks/gpu_check.py "$@"
