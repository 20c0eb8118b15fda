"""The model card (README.md) of a trained adapter: Hub metadata, data provenance with attribution, results."""

from huggingface_hub import ModelCard, ModelCardData

from cthulhu_sft.inference import decoding_options

SOURCE_LICENSE = "CC BY-SA 4.0"
WIKIPEDIA_LICENSE_URL = "https://creativecommons.org/licenses/by-sa/4.0/"


def _sources(records: list[dict]) -> list[dict]:
    """Distinct source articles (title, URL, revision) of the records, in first-seen order."""
    seen = {}
    for record in records:
        source = record.get("source")
        if source and source not in seen:
            seen[source] = {"title": record.get("title") or source, "source": source, "revid": record.get("revid")}
    return list(seen.values())


def _attribution_lines(sources: list[dict]) -> str:
    lines = []
    for source in sources:
        revision = f" (revision {source['revid']})" if source.get("revid") else ""
        lines.append(f"- [{source['title']}]({source['source']}){revision}")
    return "\n".join(lines) or "- (no source URLs were recorded in the data files)"


def _hyperparameters(config: dict) -> str:
    keys = (
        "model_name_or_path", "load_in_8bit", "load_in_4bit", "dtype", "lora_r", "lora_alpha", "lora_dropout",
        "lora_target_modules", "max_length", "num_train_epochs", "max_steps", "per_device_train_batch_size",
        "gradient_accumulation_steps", "learning_rate", "lr_scheduler_type", "warmup_steps", "seed",
    )
    return "\n".join(f"| `{key}` | `{config.get(key)}` |" for key in keys if key in config)


def render(*, repo_id: str | None, base_model: str | None, base_model_path: str, license: str,
           config: dict, metrics: dict, records: list[dict], dataset_ids: list[str] | None = None) -> str:
    """README.md text. `base_model` is a Hub id (the Hub rejects local paths in the metadata), or None."""
    card_data = ModelCardData(
        base_model=base_model,
        library_name="peft",
        license=license,
        language=["ja"],
        datasets=dataset_ids or None,
        pipeline_tag="text-generation",
        tags=["lora", "sft", "trl", "mistral", "cthulhu-mythos", "japanese"],
    )
    name = repo_id or "cthulhu-sft adapter"
    base = base_model or base_model_path
    base_link = f"[{base}](https://huggingface.co/{base})" if base_model else f"`{base}`"
    eval_loss = metrics.get("eval_loss")
    eval_text = f"{eval_loss:.4f}" if isinstance(eval_loss, (int, float)) else "not evaluated"
    sources = _sources(records)
    # the snippet decodes as train_sft.py's samples did
    decoding = ", ".join(f"{key}={value}" for key, value in decoding_options(config["sample_temperature"]).items())
    body = f"""
# {name}

クトゥルフ神話に関する日本語 Wikipedia の記事から作った質問応答で、{base_link} を
LoRA で追加学習したアダプタです（cthulhu-sft で学習）。
A LoRA adapter for {base}, fine-tuned on Cthulhu-mythos question/answer pairs built from Japanese Wikipedia.

## 使い方 / How to use

Prompts must use the Mistral instruct format exactly as in training: `<s>[INST] 質問 [/INST]`.
The tokenizer's chat template does this:

```python
from peft import AutoPeftModelForCausalLM
from transformers import AutoTokenizer

model = AutoPeftModelForCausalLM.from_pretrained("{repo_id or 'path/to/adapter'}", device_map="auto")
tokenizer = AutoTokenizer.from_pretrained("{repo_id or 'path/to/adapter'}")
messages = [{{"role": "user", "content": "クトゥルフとはどのような存在ですか？"}}]
inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
output = model.generate(**inputs.to(model.device), max_new_tokens={config["sample_max_new_tokens"]}, {decoding})
print(tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
```

A low temperature (0–0.3) gives fewer made-up facts. `generate.py` of cthulhu-sft builds the prompt ids
with Mistral's SentencePiece model directly, which is exact even for unusual spacing.

## 結果 / Results

| metric | value |
|---|---|
| final eval loss | {eval_text} |
| train loss | {metrics.get("train_loss", "n/a")} |
| train runtime (s) | {metrics.get("train_runtime", "n/a")} |

The full configuration, the sha256 of each data file, package versions and the git commit of the
training code are in [`run.json`](run.json).

## 学習設定 / Training hyperparameters

| option | value |
|---|---|
{_hyperparameters(config)}

## データと出典 / Data and attribution

The training text comes from Japanese Wikipedia articles, licensed under
[{SOURCE_LICENSE}]({WIKIPEDIA_LICENSE_URL}); this adapter is shared under `{license}`.
Question/answer pairs were generated from the articles' sections by `prepare_data.py`.
Source articles (title, URL, revision):

{_attribution_lines(sources)}

## 制限 / Limitations

The model can still state wrong facts with confidence; check important answers against the sources.
"""
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n{body}").content
