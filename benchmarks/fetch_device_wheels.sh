#!/usr/bin/env bash
# For developers whose session is lent a GPU machine through the `device` tool (see "GPU" in RESULTS.md):
# downloads into .whl/ (git-ignored through .git/info/exclude) the wheels that machine lacks, at the versions
# installed in this checkout's .venv, plus Mistral's SentencePiece file (so that mistral-common need not travel).
# The machine's image has Python 3.12, torch, accelerate, tokenizers, safetensors and sentencepiece, but not trl,
# bitsandbytes or datasets, and older transformers and peft. Everything must stay under the tool's 64 MiB.
#   benchmarks/fetch_device_wheels.sh        (then run the command in RESULTS.md with carry [".whl"])
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
rm -rf .whl && mkdir .whl
pins=$("$python" -c 'import importlib.metadata as m; print(" ".join(f"{n}=={m.version(n)}" for n in
    ("bitsandbytes", "trl", "peft", "transformers", "datasets", "dill", "multiprocess")))')
platforms=()
for tag in manylinux_2_28 manylinux_2_27 manylinux_2_24 manylinux_2_17 manylinux2014 manylinux1; do
    platforms+=(--platform "${tag}_x86_64")
done
# shellcheck disable=SC2086  # one argument per pin
"$python" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d .whl $pins
# Liger kernels (Triton, which the image has) for the benchmark's +liger variant; not a requirement of the product
"$python" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d .whl liger-kernel
"$python" -c 'from cthulhu_sft.tiny import sentencepiece_v1_file; print(sentencepiece_v1_file())' \
    | xargs -I{} cp {} .whl/tokenizer.model
ls .whl
du -sh .whl
