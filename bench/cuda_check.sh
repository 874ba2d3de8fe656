#!/usr/bin/env bash
# The PyTorch backend's checks that need a CUDA device, as one script for a machine with a GPU and no
# network: zennit and captum come as wheels in .whl/ (pip download, see docs/contributing), torch is the
# machine's own. Writes its logs to $OUT (or ./cuda-check).
set -u
OUT=${OUT:-cuda-check}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . >"$OUT/install.log" 2>&1 || cat "$OUT/install.log"
{ nvidia-smi -L; python3 -c "import torch, numpy, zennit, captum; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0), 'numpy', numpy.__version__, 'captum', captum.__version__)"; } | tee "$OUT/machine.txt"
# 1. the CUDA tests of the test suite (they skip on a machine without CUDA)
timeout 240 python3 -m pytest -p no:cacheprovider -m "" tests/test_pytorch.py -k "cuda or zero_eps" -v -rs 2>&1 | tail -25 | tee "$OUT/tests.txt"
# 2. the example's packaged suite on the GPU: the same verdicts as on the CPU
timeout 240 python3 -m pytest -p no:cacheprovider examples/torch_rules.yaml --lrp-device=cuda -q -rxX 2>&1 | tail -15 | tee "$OUT/example_cuda.txt"
# 3. through pytest-lrp vs zennit direct, on the GPU
timeout 240 python3 bench/torch_speed.py --device cuda --samples 8 --rounds 5 2>&1 | tail -40 | tee "$OUT/speed_cuda.txt"
