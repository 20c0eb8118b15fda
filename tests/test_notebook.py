"""The Colab notebook runs top to bottom on the tiny model: train two steps, answer, evaluate.

Its "parameters" cell is overridden the way papermill does it: a cell injected right after it.
Installing, crawling and pushing are switched off; the shipped sample data in data/ is used.
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
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    [index] = [i for i, cell in enumerate(notebook.cells) if "parameters" in cell.metadata.get("tags", [])]
    output_dir = tmp_path / "adapter"
    parameters = {
        "INSTALL": False,
        "PREPARE_DATA": False,
        "OUTPUT_DIR": str(output_dir),
        "TRAIN_ARGS": f"--model_name_or_path {tiny_model_dir} --load_in_8bit false --dtype float32 --bf16 false "
                      "--max_steps 2 --report_to none --sample_max_new_tokens 4",
        "LOAD_ARGS": "",
        "GENERATE_ARGS": "--temperature 0 --max_new_tokens 4",
        "EVAL_ARGS": "--limit 2 --temperatures 0 0.7 --max_new_tokens 4",
    }
    source = "\n".join(f"{name} = {value!r}" for name, value in parameters.items())
    notebook.cells.insert(index + 1, nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]}))
    # The notebook's shell commands (!python, !accelerate) must find this environment's executables.
    monkeypatch.setenv("PATH", os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])

    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}).execute()

    assert (output_dir / "adapter_model.safetensors").is_file() and (output_dir / "run.json").is_file()
    [chat] = [cell for cell in notebook.cells if "--prompt" in cell.source]
    assert "Loading" in cell_text(chat)
    report = json.loads((tmp_path / "adapter-eval" / "report.json").read_text(encoding="utf-8"))
    assert [model["label"] for model in report["models"]] == ["base", "tuned"]
    assert report["models"][1]["adapter"] == str(output_dir)
    assert [run["temperature"] for run in report["models"][1]["runs"]] == [0.0, 0.7]
    assert any(output.get("data", {}).get("image/png") for cell in notebook.cells for output in cell.get("outputs", []))
