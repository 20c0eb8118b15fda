"""benchmarks/gpu_check.py --smoke: the GPU check's own code on the CPU with the tiny model in bf16, end to end."""

import contextlib
import importlib.util
import io
import json
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

GPU_CHECK = REPO / "benchmarks" / "gpu_check.py"

BASES = {"8bit": "Linear8bitLt", "4bit": "Linear4bit", "bf16": "Linear"}
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def cache_with_the_tiny_model(work: Path, tiny_model_dir: Path) -> Path:
    """A --cache_dir that already holds the tiny model (the one the check would write there: same builder, seed)."""
    (work / "cache").mkdir()
    (work / "cache" / "tiny").symlink_to(tiny_model_dir, target_is_directory=True)
    return work / "cache"


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, tiny_model_dir):
    """`python benchmarks/gpu_check.py --smoke ...` run as __main__ in this process (no second import of torch and
    the libraries): its stdout and stderr, and its exit status as returncode."""
    work = tmp_path_factory.mktemp("gpu-check")
    argv = [str(GPU_CHECK), "--smoke", "--out", str(work / "checks.jsonl"),
            "--cache_dir", str(cache_with_the_tiny_model(work, tiny_model_dir))]
    stdout, stderr = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr), \
            pytest.raises(SystemExit) as exited:
        patch.setattr(sys, "argv", argv)
        runpy.run_path(str(GPU_CHECK), run_name="__main__")
    result = subprocess.CompletedProcess(argv, exited.value.code, stdout.getvalue(), stderr.getvalue())
    return work, result


def test_smoke_run_writes_one_json_record_per_line_to_stdout_and_the_file(smoke):
    work, result = smoke
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    records = [json.loads(line) for line in lines]  # nothing else on stdout
    assert all("check" in record for record in records)
    assert (work / "checks.jsonl").read_text(encoding="utf-8").splitlines() == lines
    assert records[0]["check"] == "environment" and records[0]["smoke"] is True
    assert records[-1] == {"check": "done", "seconds": records[-1]["seconds"], "errors": 0}


def test_every_base_and_variant_trains_in_bf16_and_is_measured(smoke):
    _, result = smoke
    records = [json.loads(line) for line in result.stdout.splitlines()]
    training = {(r["base"], r["variant"]): r for r in records if r["check"] == "training"}
    assert sorted(training) == sorted((base, variant) for base in BASES for variant in ("padding_free", "padded"))
    for (base, variant), record in training.items():
        assert record["layer0_linears"] == {
            name: {"input": "bfloat16", "output": "bfloat16", "class": BASES[base]} for name in PROJECTIONS}
        assert record["tokens_per_s"] > 0 and record["timed_steps"] == 1
        assert record["peak_memory_gib"] > 0 and record["estimate_gib"] > 0
        assert (record["padding_share"] > 0) == (variant == "padded")
    # the 7B estimate at sft_config.yaml's settings, per base: what the GPU run's peak is compared with
    seven_b = {base: training[(base, "padding_free")]["estimate_7b_gib"] for base in BASES}
    assert seven_b["4bit"] < seven_b["8bit"] < seven_b["bf16"]
    assert 10 < seven_b["8bit"] < 16
    estimates = {(r["base"], r["variant"]): r["estimate_7b_gib"] for r in records if r["check"] == "memory_estimate"}
    assert estimates == {key: record["estimate_7b_gib"] for key, record in training.items()}


def test_padding_free_is_exact_and_the_leak_control_shows(smoke):
    _, result = smoke
    records = [json.loads(line) for line in result.stdout.splitlines()]
    exactness = {r["base"]: r for r in records if r["check"] == "padding_free_exactness"}
    assert sorted(exactness) == sorted(BASES)
    for base, record in exactness.items():
        assert record["difference"] < 1e-4, base
        assert record["leak_visible"] and record["control_difference"] > 1e-4, base
    decode = [r for r in records if r["check"] == "decode"]
    assert sorted(r["base"] for r in decode) == sorted(BASES)
    assert all(r["tokens_per_s"] > 0 and 0 < r["new_tokens"] <= r["batch_size"] * 4 for r in decode)


def test_peak_is_compared_with_the_estimate_of_the_largest_batch_trained(smoke):
    """The worst-case estimate (estimate_gib: every row max_length long) overstates a step of shorter rows; the
    GPU's peak is compared with the estimate for the largest micro-batch actually trained (a padding-free row of
    its tokens, or the padded batch's rows), which memory.py gives for those settings."""
    from transformers import AutoConfig

    from cthulhu_sft.memory import GiB, ModelShape, estimate_memory

    work, result = smoke
    shape = ModelShape.from_config(AutoConfig.from_pretrained(work / "cache" / "tiny"))
    records = [json.loads(line) for line in result.stdout.splitlines()]
    for record in (r for r in records if r["check"] == "training"):
        batch = record["largest_batch"]
        rows = 1 if record["variant"] == "padding_free" else batch["rows"]
        assert batch["slots"] % rows == 0 and batch["slots"] >= record["tokens_per_micro_batch_max"]
        assert 0 < record["estimate_largest_batch_gib"] <= record["estimate_gib"]
        settings = record["estimate_settings"] | {"per_device_train_batch_size": rows,
                                                  "max_length": batch["slots"] // rows}
        assert record["estimate_largest_batch_gib"] == estimate_memory(shape, **settings).peak_allocated / GiB


def test_the_check_reads_tf32_as_a_gpu_run_sets_it(tmp_path, tiny_model_dir):
    """On a GPU, load_base_model enables TF32 with transformers' enable_tf32, which sets torch.backends.fp32_precision
    (torch >= 2.9's API); torch then raises on any read of the legacy torch.backends.cuda.matmul.allow_tf32 flag, so
    a check that reads it reports every base as an error right after loading it. Emulated on the CPU by setting the
    flag as enable_tf32 does, then running the bf16 base's smoke check in this process."""
    import torch

    spec = importlib.util.spec_from_file_location("gpu_check", GPU_CHECK)
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    previous = torch.backends.fp32_precision
    torch.backends.fp32_precision = "tf32"
    try:
        code = gpu_check.main(["--smoke", "--bases", "bf16", "--out", str(tmp_path / "checks.jsonl"),
                               "--cache_dir", str(cache_with_the_tiny_model(tmp_path, tiny_model_dir))])
    finally:
        torch.backends.fp32_precision = previous
    records = [json.loads(line) for line in (tmp_path / "checks.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r for r in records if r["check"] == "error"] == [] and code == 0
    [load] = [r for r in records if r["check"] == "load"]
    assert load["tf32"] == "tf32"
    assert {r["variant"] for r in records if r["check"] == "training"} == {"padding_free", "padded"}
