"""train_sft.py with test hooks, for tests that look inside a real run; launched like train_sft.py itself.

    CTHULHU_TEST_TRACE=<folder>      each process appends the input_ids it collates to <folder>/process-<i>.jsonl
    CTHULHU_TEST_DIE_AFTER=<step>    the process exits at once, as if killed, right after checkpoint-<step> is saved
    (with CTHULHU_TEST_TRACE, each process that runs the samples and the knowledge check also writes
    <folder>/after-training-<i>)
"""

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from accelerate import PartialState  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

import train_sft  # noqa: E402
from cthulhu_sft import run_record  # noqa: E402

build_trainer = train_sft.build_trainer
after_training = run_record.after_training


def after_training_traced(*args, **kwargs):
    folder = os.environ["CTHULHU_TEST_TRACE"]
    open(os.path.join(folder, f"after-training-{PartialState().process_index}"), "w").close()
    return after_training(*args, **kwargs)


class DieAfterSave(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            os._exit(9)


def traced(collator, folder: str):
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"process-{PartialState().process_index}.jsonl")

    def collate(examples):
        with open(path, "a", encoding="utf-8") as file:
            file.writelines(json.dumps(example["input_ids"]) + "\n" for example in examples)
        return collator(examples)

    return collate


def build_trainer_with_hooks(*args, **kwargs):
    trainer = build_trainer(*args, **kwargs)
    if os.environ.get("CTHULHU_TEST_TRACE"):
        trainer.data_collator = traced(trainer.data_collator, os.environ["CTHULHU_TEST_TRACE"])
    if os.environ.get("CTHULHU_TEST_DIE_AFTER"):
        trainer.add_callback(DieAfterSave(int(os.environ["CTHULHU_TEST_DIE_AFTER"])))
    return trainer


if __name__ == "__main__":
    train_sft.build_trainer = build_trainer_with_hooks
    if os.environ.get("CTHULHU_TEST_TRACE"):
        run_record.after_training = after_training_traced
    train_sft.setup_logging()
    train_sft.main(*train_sft.parse_args())
