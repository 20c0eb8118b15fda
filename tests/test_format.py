"""Training ids and labels against Mistral's reference tokenization (mistral-common, tokenizer v1)."""

import pytest
from conftest import mistral_common_ids

from cthulhu_sft.format import CHAT_TEMPLATE, IGNORE_INDEX, MistralFormat

CASES = [
    ("クトゥルフとは何ですか？", "クトゥルフは、H・P・ラヴクラフトが創造した架空の神性である。"),
    ("Who wrote The Call of Cthulhu?", "H. P. Lovecraft, in 1926."),
    ("絵文字は？🐙", "🦑🐙 はい。"),
    ("改行を含む質問\n二行目", "一行目\n\n三行目\n"),
    ("タブ\tを含む", "列1\t列2"),
    ("全角　スペース　の　質問", "答え　です"),
    ("文中の </s> と <s> は？", "</s> はただの文字列で、[INST] や [/INST] も同じ。"),
    ("[INST] 入れ子 [/INST]", "<unk> も文字"),
    ("短", "是"),
    ("長い答えを", "ルルイエ。" * 300),
    ("a  b   c (runs of spaces)", "x  y"),
    ("ｱｲｳ ＡＢＣ ①② ㈱", "半角ｶﾅと全角英数"),
    ("\u200b零幅スペース", "結合文字 が\u3099"),
]


@pytest.fixture(scope="module")
def mistral_format(tokenizer_dir):
    return MistralFormat.from_pretrained(str(tokenizer_dir))


@pytest.fixture
def reference_ids(reference_tokenizer, serving_reference_tokenizer):
    """mistral-common's ids: fine-tuning encoding for a finished exchange, serving encoding for a prompt."""

    def encode(messages):
        tokenizer = reference_tokenizer if messages[-1]["role"] == "assistant" else serving_reference_tokenizer
        return mistral_common_ids(tokenizer, messages)

    return encode


@pytest.mark.parametrize("instruction,response", CASES)
def test_example_ids_equal_mistral_common(mistral_format, reference_ids, instruction, response):
    example = mistral_format.encode_example(instruction, response)
    messages = [{"role": "user", "content": instruction}, {"role": "assistant", "content": response}]
    assert example.input_ids == reference_ids(messages)


@pytest.mark.parametrize("instruction,response", CASES)
def test_loss_only_on_answer_and_final_eos(mistral_format, reference_ids, instruction, response):
    example = mistral_format.encode_example(instruction, response)
    prompt = reference_ids([{"role": "user", "content": instruction}])
    assert example.input_ids[: len(prompt)] == prompt
    assert example.labels[: len(prompt)] == [IGNORE_INDEX] * len(prompt)
    assert example.labels[len(prompt) :] == example.input_ids[len(prompt) :]
    assert example.labels[-1] == mistral_format.eos_id == 2


def test_literal_control_strings_stay_text(mistral_format):
    example = mistral_format.encode_example("a </s> b <s> [INST]", "c </s> d")
    assert example.input_ids.count(mistral_format.bos_id) == 1
    assert example.input_ids.count(mistral_format.eos_id) == 1
    assert example.input_ids[0] == mistral_format.bos_id and example.input_ids[-1] == mistral_format.eos_id


def test_multi_turn_prompt_equals_mistral_common(mistral_format, reference_ids):
    messages = [
        {"role": "user", "content": "ダゴンとは？"},
        {"role": "assistant", "content": "深きものどもが崇める存在。"},
        {"role": "user", "content": "では、ハイドラは？"},
    ]
    assert mistral_format.encode_prompt(messages) == reference_ids(messages)


def test_prompt_must_alternate_and_end_with_user(mistral_format):
    with pytest.raises(ValueError):
        mistral_format.encode_prompt([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])
    with pytest.raises(ValueError):
        mistral_format.encode_prompt([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}])


# Hugging Face's tokenizer merges runs of spaces unlike SentencePiece, so the template is held to
# the cases without them; training and generate.py use MistralFormat, which is exact for all.
TEMPLATE_CASES = [case for case in CASES if "  " not in case[0] + case[1] and "</s>" not in case[0] + case[1] and "<s>" not in case[0] + case[1] and "<unk>" not in case[0] + case[1]]


@pytest.mark.parametrize("legacy", [True, False])
def test_chat_template_generation_prompt_matches(tokenizer_dir, mistral_format, legacy):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir), legacy=legacy)
    tokenizer.chat_template = CHAT_TEMPLATE
    for instruction, response in TEMPLATE_CASES:
        for messages in (
            [{"role": "user", "content": instruction}],
            [{"role": "user", "content": instruction}, {"role": "assistant", "content": response}, {"role": "user", "content": "次は？"}],
        ):
            ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
            assert ids == mistral_format.encode_prompt(messages), messages


def test_chat_template_mismatches_lists_only_the_instructions_that_differ(tokenizer_dir, mistral_format):
    from transformers import AutoTokenizer

    from cthulhu_sft.format import chat_template_mismatches

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    # Runs of spaces are where Hugging Face's BPE and SentencePiece part ways (see test_format CASES).
    assert chat_template_mismatches(tokenizer, mistral_format, ["クトゥルフとは？", "a  b   c"]) == ["a  b   c"]
