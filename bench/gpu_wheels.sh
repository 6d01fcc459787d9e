#!/usr/bin/env bash
# Fetch, here (where pip reaches the registry), the packages bench/gpu_train.sh needs that the GPU machine's image
# lacks, as x86-64 CPython 3.12 wheels into .whl/ (ignored by git; name it in the device run's `carry`).
# The image has torch, pytorch-lightning, numpy, einops, rich, safetensors, opencv, msgpack, ninja, psutil, py-cpuinfo.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
WHEELS="diffusers==0.42.1 omegaconf==2.4.0 webdataset==1.0.2 braceexpand==0.1.7 av==18.1.0 soundfile==0.14.0
cffi==2.1.1 pycparser==3.12 hjson==3.1.0 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0
typing-inspection==0.4.5"
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl $WHEELS
python3 -m pip download --no-deps --no-binary=:all: -d .whl deepspeed==0.19.8  # an sdist only
du -sh .whl
