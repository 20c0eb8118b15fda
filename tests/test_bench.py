"""benchmarks/bench_train.py on the CPU: the packed batches it would pick are exact, and each variant runs end to end.

The GPU runs of the benchmark are rare and short (see benchmarks/RESULTS.md), so its CPU path is kept working here.
"""

import importlib.util
import json
import re

import pytest
import yaml
from conftest import PYTHON, REPO, run_script


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_train", REPO / "benchmarks" / "bench_train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("args, message", [
    (["--variants", "padding_free+ckpt+8bit", "padded+ckpt"],
     "unknown variant 'padded+ckpt': <padded|packing|padding_free>+<ckpt|no-ckpt>+<8bit|4bit|16bit>[+liger]"),
    (["--model", "no-such-model"], "--model: tiny, small, mistral-7b-shaped or a model folder, got 'no-such-model'"),
    (["--steps", "0"], "--warmup and --steps must be at least 1"),
])
def test_bad_arguments_are_refused_before_anything_runs(bench, capsys, args, message):
    with pytest.raises(SystemExit) as stopped:
        bench.parse_arguments(args)
    assert stopped.value.code == 2
    assert message in capsys.readouterr().err


def test_variants_are_the_flags_of_train_sft(bench):
    from cthulhu_sft.config import parse_args

    _, training_args, model_args = parse_args(
        ["--config", "sft_config.yaml", "--bf16", "false", *bench.variant_flags("packing+no-ckpt+4bit")])
    assert training_args.packing and not training_args.activation_checkpointing
    assert model_args.load_in_4bit and not model_args.load_in_8bit


def test_a_failed_variant_keeps_its_row_and_the_estimate_shows_on_a_gpu(bench):
    measured = {"variant": "padded+ckpt+8bit", "answer_tokens_per_s": 100.0, "tokens_per_s": 120.0,
                "padding_share": 0.3, "step_seconds": 2.0, "examples_per_step": 8.0, "peak_memory": 20 * 1024**3,
                "estimate_peak_allocated": 18 * 1024**3, "mfu": 0.41}
    results = [measured, {"variant": "padding_free+no-ckpt+8bit", "error": "torch.OutOfMemoryError: CUDA out of memory"},
               {**measured, "variant": "padding_free+ckpt+8bit", "answer_tokens_per_s": 150.0}]
    head, _, *rows = bench.throughput_table(results, cuda=True)
    assert head == ("| variant | answer tok/s | tokens/s | vs first | padding | s/step | examples/step | peak GiB | "
                    "estimate GiB | MFU |")
    assert rows[0] == "| padded+ckpt+8bit | 100 | 120 | 1.00x | 30 % | 2.00 | 8.0 | 20.00 | 18.00 | 41.0 % |"
    assert rows[1].startswith("| padding_free+no-ckpt+8bit | failed: torch.OutOfMemoryError")
    assert rows[1].count("|") == head.count("|")
    assert "| 1.50x |" in rows[2]
    cpu_head = bench.throughput_table(results, cuda=False)[0]
    assert "peak RSS GiB |" in cpu_head and "estimate" not in cpu_head and "MFU" not in cpu_head


def table_rows(text: str, first_cell: str) -> list[list[str]]:
    """The cells of the Markdown table whose header starts with `first_cell`."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_cell} |"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


@pytest.mark.slow
def test_packing_and_padding_free_give_each_example_its_own_loss(tiny_model_dir):
    result = run_script([PYTHON, "benchmarks/bench_train.py", "--exactness", "--model", str(tiny_model_dir)], timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = table_rows(result.stdout, "attention")
    attentions = {row[0] for row in rows}
    assert {"sdpa", "eager", "flex_attention"} <= attentions
    for attention, batching, loss, alone, _ in rows:
        difference = abs(float(loss) - float(alone))
        if batching.startswith("control"):
            assert difference > 1e-4, f"{attention}: the leak control matches, so the check cannot see a leak"
        else:
            assert difference < 1e-5, f"{attention} {batching}: {loss} vs {alone} alone"
    assert len(rows) == 4 * len(attentions)


@pytest.mark.slow
def test_each_variant_trains_and_is_measured(tiny_model_dir, tmp_path):
    results_file = tmp_path / "RESULTS.md"
    results_file.write_text("# Results\n", encoding="utf-8")
    variants = ["padded+ckpt+8bit", "packing+no-ckpt+4bit"]  # padding-free+ckpt+8bit is what every training test runs
    result = run_script(
        [PYTHON, "benchmarks/bench_train.py", "--model", str(tiny_model_dir), "--variants", *variants,
         "--batch_size", "2", "--warmup", "1", "--steps", "1", "--append_to", str(results_file)],
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    raw = re.search(r"raw results: (\S+)", result.stderr).group(1)
    measured = {entry["variant"]: entry for entry in json.loads(open(raw, encoding="utf-8").read())}
    assert list(measured) == variants
    for variant, entry in measured.items():
        assert "error" not in entry, f"{variant}: {entry.get('error')}"
        assert entry["tokens_per_s"] >= entry["answer_tokens_per_s"] > 0
        assert entry["peak_memory"] > 0 and entry["estimate_peak_allocated"] > 0  # the GPU estimate, computed anyway
    assert measured["padded+ckpt+8bit"]["padding_share"] > 0.05  # examples of different lengths padded to the longest
    assert measured["packing+no-ckpt+4bit"]["padding_share"] == 0
    assert measured["padded+ckpt+8bit"]["examples_per_step"] == 2
    assert measured["packing+no-ckpt+4bit"]["examples_per_step"] > 2  # a packed row holds several examples

    # max_length comes from sft_config.yaml; the section is appended with the command that produced it
    shipped = yaml.safe_load((REPO / "sft_config.yaml").read_text(encoding="utf-8"))
    section = results_file.read_text(encoding="utf-8")
    assert section.startswith("# Results\n\n### Throughput: ")
    assert f"packed rows of up to {shipped['max_length']} tokens" in section
    assert "- Command: `python benchmarks/bench_train.py --model " in section
    assert [row[0] for row in table_rows(section, "variant")] == variants
