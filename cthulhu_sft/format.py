"""The Mistral instruct format, token for token as Mistral's reference (mistral-common, tokenizer v1) builds it.

mistral-common encodes a conversation as
    <s> sp("[INST] {user} [/INST]") sp("{assistant}") </s> sp("[INST] {user} [/INST]") ...
where sp() is a plain SentencePiece encode of that piece alone (with its dummy-prefix "▁"), so text
such as a literal "</s>" or "[INST]" inside a message is always ordinary text. Hugging Face's fast
tokenizer merges runs of spaces differently from SentencePiece, so the ids are built here with
SentencePiece itself, from the model's own `tokenizer.model`.
"""

import os
from dataclasses import dataclass

import sentencepiece

# For `tokenizer.apply_chat_template`: the leading spaces make Hugging Face's tokenizer emit the same
# "▁[" and "▁answer" pieces as mistral-common with legacy and non-legacy Llama tokenizer settings alike.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "{% if message['role'] == 'user' %}{{ ' [INST] ' + message['content'] + ' [/INST]' }}"
    "{% else %}{{ ' ' + message['content'] + eos_token }}{% endif %}"
    "{% endfor %}"
)

IGNORE_INDEX = -100  # label of tokens that carry no loss


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]


class MistralFormat:
    """Encodes conversations in the Mistral instruct format with the model's SentencePiece model."""

    def __init__(self, model_file: str):
        self.model_file = model_file
        self.sp = sentencepiece.SentencePieceProcessor(model_file=model_file)
        self.bos_id = self.sp.bos_id()
        self.eos_id = self.sp.eos_id()

    @classmethod
    def from_pretrained(cls, name_or_path: str, revision: str | None = None) -> "MistralFormat":
        """Loads `tokenizer.model` from a local model or tokenizer folder, or from the Hub."""
        if os.path.isdir(name_or_path):
            model_file = os.path.join(name_or_path, "tokenizer.model")
            if not os.path.isfile(model_file):
                raise FileNotFoundError(f"{name_or_path} has no tokenizer.model (the SentencePiece model)")
        else:
            from huggingface_hub import hf_hub_download

            model_file = hf_hub_download(name_or_path, "tokenizer.model", revision=revision)
        return cls(model_file)

    def encode_text(self, text: str) -> list[int]:
        return self.sp.encode(text)

    def encode_user(self, content: str) -> list[int]:
        return self.encode_text(f"[INST] {content} [/INST]")

    def encode_answer(self, content: str) -> list[int]:
        return self.encode_text(content) + [self.eos_id]

    def encode_prompt(self, messages: list[dict]) -> list[int]:
        """Ids of a conversation that ends with a user message, ready for the model to answer.

        `messages` alternate {"role": "user"|"assistant", "content": str}, starting and ending with "user".
        """
        if not messages or messages[-1]["role"] != "user":
            raise ValueError("the conversation must end with a user message")
        ids = [self.bos_id]
        for index, message in enumerate(messages):
            expected = "user" if index % 2 == 0 else "assistant"
            if message["role"] != expected:
                raise ValueError(f"message {index} has role {message['role']!r}, expected {expected!r}")
            encode = self.encode_user if expected == "user" else self.encode_answer
            ids += encode(message["content"])
        return ids

    def encode_example(self, instruction: str, response: str) -> Example:
        """A training example: loss on the answer's tokens and its closing </s> only."""
        prompt = self.encode_prompt([{"role": "user", "content": instruction}])
        answer = self.encode_answer(response)
        return Example(input_ids=prompt + answer, labels=[IGNORE_INDEX] * len(prompt) + answer)

    def decode(self, ids: list[int]) -> str:
        return self.sp.decode(ids)


def chat_template_mismatches(tokenizer, fmt: MistralFormat, instructions: list[str]) -> list[str]:
    """Instructions for which `tokenizer.apply_chat_template` (with CHAT_TEMPLATE) gives other ids than training.

    Hugging Face's tokenizer can differ from SentencePiece on unusual spacing; the saved template is only a
    convenience for users of the tokenizer, so a mismatch is reported rather than fatal.
    """
    mismatches = []
    for instruction in instructions:
        messages = [{"role": "user", "content": instruction}]
        ids = tokenizer.apply_chat_template(
            messages, chat_template=CHAT_TEMPLATE, add_generation_prompt=True, tokenize=True, return_dict=True
        )["input_ids"]
        if list(ids) != fmt.encode_prompt(messages):
            mismatches.append(instruction)
    return mismatches


def tokenizer_error(name_or_path: str, error: Exception) -> str:
    """What went wrong fetching tokenizer.model (MistralFormat.from_pretrained), and what to do."""
    from huggingface_hub.errors import GatedRepoError, HFValidationError

    message = f"cannot read tokenizer.model of {name_or_path}: {type(error).__name__}: {(str(error).splitlines() or [''])[0]}"
    if isinstance(error, GatedRepoError):
        message += ("\nThe model is gated: accept its terms on its Hub page, then log in with `hf auth login` "
                    "(or set HF_TOKEN).")
    elif isinstance(error, HFValidationError):
        message += "\nIt is neither a local folder nor a Hub id."
    return message
