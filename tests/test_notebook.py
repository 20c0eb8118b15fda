"""The Colab notebook runs top to bottom on the tiny model: train two steps, answer, evaluate.

Its "parameters" cell is overridden the way papermill does it: a cell injected right after it.
Installing, crawling and pushing are switched off; the shipped sample data in data/sample/ is used.
"""

import json
import os
import sys

import nbformat
import pytest
from conftest import REPO
from nbclient import NotebookClient

NOTEBOOK = REPO / "notebooks" / "cthulhu_sft_colab.ipynb"


def cell_text(cell) -> str:
    return "".join(output.get("text", "") for output in cell.get("outputs", []) if output.get("output_type") == "stream")


def test_notebook_is_saved_without_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    assert all(not cell.get("outputs") and cell.get("execution_count") is None for cell in notebook.cells if cell.cell_type == "code")
    assert sum("parameters" in cell.metadata.get("tags", []) for cell in notebook.cells) == 1


@pytest.mark.slow
def test_notebook_runs_on_the_tiny_model(tiny_model_dir, tmp_path, monkeypatch):
    """...and a question that would break (or run commands in) a shell line reaches the model as text."""
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    pwned = tmp_path / "pwned"
    question = f'クトゥルフの "正体" は？"; touch {pwned}; echo "$(touch {pwned})`touch {pwned}`'
    [index] = [i for i, cell in enumerate(notebook.cells) if "parameters" in cell.metadata.get("tags", [])]
    output_dir = tmp_path / "adapter"
    parameters = {
        "INSTALL": False,
        "PREPARE_DATA": False,
        "OUTPUT_DIR": str(output_dir),
        "TRAIN_ARGS": f"--model_name_or_path {tiny_model_dir} --load_in_8bit false --dtype float32 --bf16 false "
                      "--max_steps 2 --report_to none --sample_max_new_tokens 4 --knowledge_check false "
                      # micro-batches of 2, not sft_config's 8 x 2: a step of 16 examples costs seconds on the CPU
                      "--per_device_train_batch_size 2 --gradient_accumulation_steps 1 "
                      "--train_file data/sample/train.jsonl --eval_file data/sample/eval.jsonl",
        "LOAD_ARGS": "",
        "QUESTION": question,
        "GENERATE_ARGS": "--temperature 0 --max_new_tokens 4 --show_prompt_ids",
        "EVAL_ARGS": "--limit 2 --temperatures 0 0.7 --max_new_tokens 4 --sets unseen=data/sample/eval.jsonl",
    }
    source = "\n".join(f"{name} = {value!r}" for name, value in parameters.items())
    notebook.cells.insert(index + 1, nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]}))
    # The notebook's shell commands (!python, !accelerate) must find this environment's executables.
    monkeypatch.setenv("PATH", os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])

    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}).execute()

    assert (output_dir / "adapter_model.safetensors").is_file() and (output_dir / "run.json").is_file()
    [chat] = [cell for cell in notebook.cells if '"--prompt"' in cell.source]
    assert "Loading" in cell_text(chat)
    assert not pwned.exists(), "a parameter was run as a command"
    from cthulhu_sft.format import MistralFormat

    [ids] = [json.loads(line.split(":", 1)[1]) for line in cell_text(chat).splitlines() if line.startswith("prompt ids:")]
    expected = MistralFormat.from_pretrained(str(tiny_model_dir)).encode_prompt([{"role": "user", "content": question}])
    assert ids == expected, "the question reached the model changed"
    report = json.loads((tmp_path / "adapter-eval" / "report.json").read_text(encoding="utf-8"))
    runs = {(result["model"], result["temperature"]) for result in report["results"] if result["set"] == "unseen"}
    assert runs == {("base", 0.0), ("base", 0.7), ("tuned", 0.0), ("tuned", 0.7)}
    assert any(output.get("data", {}).get("image/png") for cell in notebook.cells for output in cell.get("outputs", []))


def failing_step(source: str, parameters: dict, tmp_path):
    """Runs the notebook's helper cell and one step's source with these parameters; returns the error."""
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    helpers = [cell.source for cell in notebook.cells if "def run(" in cell.source]
    setup = "\n".join(f"{name} = {value!r}" for name, value in parameters.items())
    cells = [nbformat.v4.new_code_cell(text) for text in (setup, *helpers, source)]
    client = NotebookClient(nbformat.v4.new_notebook(cells=cells), timeout=120, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    with pytest.raises(Exception) as error:
        client.execute()
    return str(error.value)


@pytest.mark.slow
def test_the_placeholder_repository_and_failed_steps_stop_the_notebook(tmp_path):
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    [install] = [cell.source for cell in notebook.cells if "REPO_URL" in cell.source and "if INSTALL" in cell.source]
    error = failing_step(install, {"INSTALL": True, "REPO_URL": "https://github.com/<user>/cthulhu-sft.git"}, tmp_path)
    assert "REPO_URL still holds the placeholder <user>" in error
    error = failing_step('run(sys.executable, "-c", "raise SystemExit(3)")', {}, tmp_path)
    assert "failed (exit status 3)" in error
