"""The one evaluation: `evaluate_model` (sets in, results and generations out), used by evaluate.py and by the
knowledge check at the end of training, so that a model card's numbers are what evaluate.py reproduces.

One answer (`score_item`), from cthulhu_sft/grading.py and cthulhu_sft/metrics.py:
    grade           rows with `answers` only (else None): correct, incorrect or not_attempted (grading.py),
                    against the row's accepted answers and every other name of their articles (sets.Corpus);
                    `correct` is grade == correct, `grade_reason` says why.
    empty           the answer holds no letter or digit: not attempted, and apart from every other rate.
    abstained       the answer says it does not know and offers nothing: no candidate answer, no unsupported term.
    japanese        metrics.is_japanese; Latin words of an answer not in Japanese are not claims.
    unsupported_terms
                    the answer's claimed terms (metrics.claimed_terms, and titles and kanji place names:
                    metrics.named_terms; not everyday katakana such as データ: grading.COMMON_WORDS) that
                    neither the question, the reference, the row's own article nor any crawled article states
                    (era years compared as Western years).
    hallucinated    at least one unsupported term.
    truncated       the answer was cut at max_new_tokens (did not end with </s>); None when unknown.
    rouge_l_f1, fact_recall, and the term counts that report.aggregate pools.

What the hallucination measure cannot see: a wrong fact made of terms the corpus states elsewhere (the year of
another story, a real author in the wrong role), an invention in common words (海底都市 for 氷の下), anything at
all when no article text is given (then only the question and reference support terms); and a true fact that
the crawl does not state counts as invented.

Open book (`OpenBook`: a retriever over source_texts.jsonl, cthulhu_sft/retrieval.py): every row is also asked
with the retriever's top passages in the user turn (retrieval.open_book_prompt), graded the same way, and
`open_book_item` adds (the grades and scores are those of the answer without its citation marks, `graded_text`:
a [1] is neither a number the answer claims nor a second candidate):
    sources         the passages shown, in their numbered order: title, section, revid.
    cited           the passage numbers the answer cites (retrieval.parse_citations), shown or not.
    cites           the answer cites at least one passage that was shown.
    citation_correct
                    correct answers only (else None): the answer cites at least one passage, every number it
                    cites was shown, and every passage it cites contains an accepted answer (metrics.
                    answer_is_correct, with the same accepted forms as the grade): citing every passage, or a
                    number that was not shown, is not a correct citation.
    passages_hold_answer
                    rows with `answers` only (else None): a shown passage contains an accepted answer; when it
                    does not, saying retrieval.NOT_FOUND (an abstention) is the right reply.
"""

import math
import sys
from dataclasses import dataclass, field

from . import grading, metrics, report, retrieval
from .report import aggregate, wilson_interval  # noqa: F401  (re-exported: one import for the callers)
from .sets import (  # noqa: F401  (re-exported: app.py reads source texts through this module)
    DEFAULT_SETS,
    Corpus,
    article_corpus,
    article_texts,
    cached_source_texts,
    check_rows,
    match_answers,
    quiz_problems,
    read_answers,
    read_set,
    read_source_texts,
)

# Room beyond the longest reference answer: a model's paraphrase may be longer than the reference.
MAX_NEW_TOKENS_MARGIN = 1.25
MAX_NEW_TOKENS_SLACK = 16
# Batches sized to the device: the key/value cache of a batch may take this share of the free GPU memory
KV_CACHE_SHARE = 0.4
MAX_BATCH_SIZE = 64
CPU_BATCH_SIZE = 8


@dataclass
class EvalSet:
    """A set as evaluated: its first `limit` rows, those scored, and what the quiz self-check found."""

    name: str
    path: str
    rows: list[dict]
    checks: dict[str, list[dict]] = field(default_factory=dict)
    with_text: int = 0
    retrieval: dict | None = None  # open book: OpenBook.recall of the scored rows

    @property
    def scored(self) -> list[dict]:
        wrong = {id(row) for row in self.checks.get("wrong", [])}
        return [row for row in self.rows if id(row) not in wrong]

    def summary(self) -> dict:
        """What report.json says of the set."""
        with_answers = sum(bool(row.get("answers")) for row in self.rows)
        listed = lambda kind: [{key: row.get(key) for key in ("line", "instruction", "answers", "title")}  # noqa: E731
                               for row in self.checks.get(kind, [])]
        return {"path": self.path, "rows": len(self.rows), "scored": len(self.scored), "with_answers": with_answers,
                "with_text": self.with_text, "excluded": listed("wrong"), "not_taught": listed("not_taught"),
                "unchecked": with_answers - len(self.checks.get("checked", [])) - len(self.checks.get("wrong", [])),
                **({"retrieval": self.retrieval} if self.retrieval is not None else {})}


@dataclass
class Decoding:
    """How the answers are made: each temperature, greedy at 0; max_new_tokens None: per set, from its references."""

    temperatures: list[float] = field(default_factory=lambda: [0.0])
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    max_new_tokens: int | None = None
    seed: int = 0
    batch_size: int = CPU_BATCH_SIZE


@dataclass
class OpenBook:
    """Open-book answering: the retriever of a source_texts.jsonl and how many passages the prompt shows."""

    retriever: "retrieval.Retriever"
    top_k: int = retrieval.DEFAULT_TOP_K
    max_tokens: int = retrieval.PROMPT_MAX_TOKENS

    turns: dict = field(default_factory=dict, repr=False)  # (question, fmt) -> prompts(): asked more than once a set

    def prompts(self, rows: list[dict], fmt) -> list[tuple[str, list]]:
        """(user turn, passages shown) per row: the top_k best passages that fit max_tokens (retrieval.open_book_turn),
        each question retrieved once however often its set is answered (sizing, then each model)."""
        return [self.turn(row["instruction"], fmt) for row in rows]

    def turn(self, question: str, fmt) -> tuple[str, list]:
        key = (question, id(fmt))
        if key not in self.turns or self.turns[key][0] is not fmt:
            self.turns[key] = fmt, retrieval.open_book_turn(self.retriever, question, fmt, self.top_k, self.max_tokens)
        return self.turns[key][1]

    def recall(self, rows: list[dict]) -> dict | None:
        """Retrieval recall@1/3/5 of the rows' own articles (rows with a `title`), as `python -m
        cthulhu_sft.retrieval --recall` computes it; None when no row has a title."""
        pairs = [(row["instruction"], row["title"]) for row in rows if row.get("title")]
        if not pairs:
            return None
        return {"questions": len(pairs), **{f"recall@{k}": value for k, value in retrieval.recall_at_k(self.retriever, pairs).items()}}


def prepare_set(name: str, path: str, rows: list[dict], corpus: Corpus) -> EvalSet:
    return EvalSet(name, path, rows, check_rows(rows, corpus), sum(bool(corpus.text(row.get("title"))) for row in rows))


def default_max_new_tokens(rows: list[dict], fmt) -> int:
    """The longest reference answer of the rows in tokens (MistralFormat), times 1.25, plus 16."""
    longest = max(len(fmt.encode_text(row["response"])) for row in rows)
    return int(longest * MAX_NEW_TOKENS_MARGIN) + MAX_NEW_TOKENS_SLACK


def device_batch_size(model, tokens: int) -> int:
    """Answers per batch for this device: CPU_BATCH_SIZE on the CPU; on a GPU, what its free memory holds
    (fitting_batch_size)."""
    import torch

    device = model.get_input_embeddings().weight.device
    if device.type != "cuda":
        return CPU_BATCH_SIZE
    free, _ = torch.cuda.mem_get_info(device)
    return fitting_batch_size(free, model.config, tokens)


def fitting_batch_size(free_bytes: int, config, tokens: int) -> int:
    """As many sequences of `tokens` tokens as fit their key/value cache (16-bit) and a row of float32 logits in
    KV_CACHE_SHARE of `free_bytes`: a multiple of 8 when it is 8 or more, at most MAX_BATCH_SIZE, at least 1."""
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    per_sequence = tokens * 2 * config.num_hidden_layers * heads * head_dim * 2 + 4 * config.vocab_size
    fitting = int(KV_CACHE_SHARE * free_bytes // per_sequence)
    return max(1, min(MAX_BATCH_SIZE, fitting // 8 * 8 or fitting))


def longest_sequence(sets: list[EvalSet], fmt, max_new_tokens: int | None = None,
                     open_book: OpenBook | None = None) -> int:
    """Prompt plus answer tokens of the longest question of the sets (its open-book prompt too, with
    `open_book`), for sizing batches."""
    longest = 0
    for evaluated in sets:
        rows = evaluated.scored
        if rows:
            new = max_new_tokens or default_max_new_tokens(rows, fmt)
            turns = [row["instruction"] for row in rows]
            if open_book is not None:
                turns += [turn for turn, _ in open_book.prompts(rows, fmt)]
            prompt = max(len(fmt.encode_prompt([{"role": "user", "content": turn}])) for turn in turns)
            longest = max(longest, prompt + new)
    return longest


def score_item(row: dict, answer: str, stopped: bool | None, corpus: Corpus | None = None) -> dict:
    """One answer's scores against its set row (see the module docstring); `stopped` None when unknown."""
    corpus = corpus or Corpus()
    reference = row["response"]
    japanese = metrics.is_japanese(answer)
    stated = grading.western_years(metrics.normalize(answer))  # 昭和3年 claims 1928, as the corpus writes it
    claims = {term for term in metrics.claimed_terms(stated) | metrics.named_terms(stated) if not grading.is_common_word(term)}
    index = corpus.support() if corpus.texts else None
    supports = (grading.western_years(metrics.normalize(text)) for text in (row["instruction"], reference, corpus.text(row.get("title"))))
    unsupported = sorted(metrics.unsupported(claims, *supports, index=index))
    grade = grading.grade_answer(answer, corpus.accepted(row.get("answers")), row["instruction"], bool(unsupported))
    reference_terms = metrics.key_terms(reference)
    return {
        "grade": grade.grade,
        "correct": None if grade.grade is None else grade.grade == grading.CORRECT,
        "grade_reason": grade.reason,
        "empty": grade.empty,
        "abstained": grade.abstained,
        "japanese": japanese,
        "unsupported_terms": unsupported,
        "hallucinated": bool(unsupported),
        "stopped": stopped,
        "truncated": None if stopped is None else not stopped,
        "rouge_l_f1": metrics.rouge_l_f1(answer, reference),
        "fact_recall": metrics.fact_recall(answer, reference),
        "reference_terms": len(reference_terms),
        "recalled_terms": len(reference_terms & metrics.key_terms(answer)),
        "claimed_terms": len(claims),
    }


def graded_text(answer: str) -> str:
    """An open-book answer as it is graded: in metrics.normalize form, without its citation marks ([1], [1, 2],
    【2】, 資料2; retrieval.CITATION)."""
    return retrieval.CITATION.sub("", metrics.normalize(answer).translate(retrieval.BRACKETS))


def score_open_book(row: dict, answer: str, stopped: bool | None, shown: list, corpus: Corpus) -> dict:
    """An open-book answer's scores: score_item's of `graded_text`, and open_book_item's."""
    scores = score_item(row, graded_text(answer), stopped, corpus)
    return scores | open_book_item(row, answer, shown, scores, corpus)


def open_book_item(row: dict, answer: str, shown: list, scores: dict, corpus: Corpus) -> dict:
    """An open-book answer's citation scores (see the module docstring), beside its score_item scores."""
    accepted = corpus.accepted(row.get("answers"))
    cited = retrieval.parse_citations(answer)
    return {
        "sources": [{"title": hit.title, "section": hit.section, "revid": hit.revid} for hit in shown],
        "cited": cited,
        "cites": any(1 <= number <= len(shown) for number in cited),
        "citation_correct": (retrieval.citation_is_correct(answer, shown, accepted)
                             if scores["grade"] == grading.CORRECT else None),
        "passages_hold_answer": any(metrics.answer_is_correct(hit.text, accepted) for hit in shown) if accepted else None,
    }


def generation_row(name: str, label: str, temperature, row: dict, answer: str, scores: dict,
                   book: str = "closed") -> dict:
    """One line of generations.jsonl."""
    return {
        "set": name, "model": label, "book": book, "temperature": temperature, "line": row["line"], "title": row.get("title"),
        "kind": row.get("kind"), "instruction": row["instruction"], "reference": row["response"],
        "accepted": row.get("answers"), "answer": answer, **scores,
    }


def score_answers(label: str, answers: dict[str, dict[int, str]], sets: list[EvalSet], corpus: Corpus,
                  judge=None, open_book: OpenBook | None = None, fmt=None) -> tuple[list[dict], list[dict]]:
    """Answers made elsewhere ({set: {row index: answer}}) scored as one more system: (results, generations).
    With `open_book` (and `fmt`, which measures the prompt) they are open-book answers, their citations checked
    against the passages evaluate.py's retriever shows for each question."""
    book = "closed" if open_book is None else "open"
    results, generations = [], []
    for evaluated in sets:
        scored = {id(row) for row in evaluated.scored}
        pairs = [(evaluated.rows[index], answer) for index, answer in sorted(answers.get(evaluated.name, {}).items())
                 if id(evaluated.rows[index]) in scored]
        if open_book is None:
            items = [score_item(row, answer, None, corpus) for row, answer in pairs]
        else:
            prompts = open_book.prompts([row for row, _ in pairs], fmt)
            items = [score_open_book(row, answer, None, shown, corpus) for (row, answer), (_, shown) in zip(pairs, prompts)]
        _judge(judge, [row for row, _ in pairs], [answer for _, answer in pairs], items, corpus)
        results.append({"set": evaluated.name, "model": label, "book": book, "temperature": None, **aggregate(items)})
        generations += [generation_row(evaluated.name, label, None, row, answer, scores, book)
                        for (row, answer), scores in zip(pairs, items)]
    return results, generations


def _judge(judge, rows, answers, items, corpus: Corpus) -> None:
    if judge is None:
        return
    graded = [index for index, row in enumerate(rows) if row.get("answers")]
    verdicts = judge.grade([(rows[i]["instruction"], corpus.accepted(rows[i]["answers"]), answers[i]) for i in graded])
    for index, verdict in zip(graded, verdicts):
        items[index]["judge_grade"] = verdict


def evaluate_model(model, fmt, label: str, sets: list[EvalSet], decoding: Decoding, corpus: Corpus,
                   progress=None, losses: bool = True, judge=None, open_book: OpenBook | None = None) -> dict:
    """Answers every scored row of every set at each temperature with one loaded model, and scores them; with
    `open_book`, each row is asked closed-book and then open-book (its passages in the prompt).

    Returns {"results": [one aggregate per set, temperature and book], "generations": [one row per answer],
    "max_new_tokens": {set: n}, "losses": {set: reference-answer loss} (with `losses`)}. Open-book results carry
    `closed_share_of_open` (report.add_gaps). `progress` (a tqdm bar) advances by one per answer (and per
    reference loss).
    """
    output = {"results": [], "generations": [], "max_new_tokens": {}, "losses": {}}
    books = ["closed"] + (["open"] if open_book is not None else [])
    for number, evaluated in enumerate(sets, 1):
        rows = evaluated.scored
        where = f"{label} {evaluated.name} (set {number}/{len(sets)})"
        if not rows:  # every row left out: the set is still reported, with n 0
            output["results"] += [{"set": evaluated.name, "model": label, "book": book, "temperature": temperature,
                                   **aggregate([])} for temperature in decoding.temperatures for book in books]
            continue
        max_new_tokens = decoding.max_new_tokens or default_max_new_tokens(rows, fmt)
        output["max_new_tokens"][evaluated.name] = max_new_tokens
        reference = [(None, 0)] * len(rows)
        if losses:
            _describe(progress, f"{where}: loss")
            reference = answer_losses(model, fmt, [(row["instruction"], row["response"]) for row in rows],
                                      batch_size=decoding.batch_size, progress=progress)
            tokens = sum(n for _, n in reference)
            loss = sum(nll for nll, _ in reference) / tokens
            output["losses"][evaluated.name] = {"loss": loss, "perplexity": math.exp(loss), "answer_tokens": tokens}
        prompts = {"closed": [(row["instruction"], None) for row in rows]}
        if open_book is not None:
            prompts["open"] = open_book.prompts(rows, fmt)
        for temperature in decoding.temperatures:
            for book in books:
                _describe(progress, f"{where}: T={temperature:g}" + (", open book" if book == "open" else ""))
                _answer(model, fmt, label, evaluated.name, rows, prompts[book], book, temperature, max_new_tokens,
                        decoding, corpus, judge, reference, progress, output)
    report.add_gaps(output["results"])
    return output


def _answer(model, fmt, label, name, rows, prompts, book, temperature, max_new_tokens, decoding, corpus, judge,
            reference, progress, output) -> None:
    """One set at one temperature and book: generate, score, aggregate, into `output`."""
    from .inference import generate

    answers = generate(
        model, fmt, [[{"role": "user", "content": turn}] for turn, _ in prompts],
        temperature=temperature, top_p=decoding.top_p, max_new_tokens=max_new_tokens,
        repetition_penalty=decoding.repetition_penalty, seed=decoding.seed, batch_size=decoding.batch_size,
        progress=progress,
    )
    if book == "open":
        items = [score_open_book(row, answer.text, answer.stopped, shown, corpus)
                 for row, answer, (_, shown) in zip(rows, answers, prompts)]
    else:
        items = [score_item(row, answer.text, answer.stopped, corpus) for row, answer in zip(rows, answers)]
    _judge(judge, rows, [answer.text for answer in answers], items, corpus)
    output["results"].append({"set": name, "model": label, "book": book, "temperature": temperature, **aggregate(items)})
    for row, answer, scores, (nll, n) in zip(rows, answers, items, reference):
        output["generations"].append({
            **generation_row(name, label, temperature, row, answer.text, scores, book),
            "new_tokens": len(answer.token_ids), "reference_loss": nll / n if n else None,
        })


def _describe(progress, text: str) -> None:
    if progress is not None and hasattr(progress, "set_description"):
        progress.set_description(text)


def progress_bar(total: int, description: str):
    """A tqdm bar on stderr: answers done of `total`, rate and time left."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=description, unit="answer", file=sys.stderr, dynamic_ncols=True)


def answer_losses(model, fmt, pairs: list[tuple[str, str]], batch_size: int = 8, progress=None) -> list[tuple[float, int]]:
    """Summed negative log-likelihood (nats) and token count of each reference answer, as in training.

    The loss covers the answer's tokens and its closing </s> (the labels of `fmt.encode_example`). Returns
    [(nll_sum, n_tokens), ...] in the input order; `progress` (a tqdm bar) advances by each batch's size.
    """
    import torch

    from .format import IGNORE_INDEX

    examples = [fmt.encode_example(instruction, response) for instruction, response in pairs]
    order = sorted(range(len(examples)), key=lambda index: -len(examples[index].input_ids))  # longest first: OOM early
    results: list[tuple[float, int] | None] = [None] * len(examples)
    device = model.get_input_embeddings().weight.device
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                batch = [examples[index] for index in order[start : start + batch_size]]
                width = max(len(example.input_ids) for example in batch)
                input_ids = torch.full((len(batch), width), fmt.eos_id, dtype=torch.long)
                labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
                attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
                for row, example in enumerate(batch):
                    input_ids[row, : len(example.input_ids)] = torch.tensor(example.input_ids)
                    labels[row, : len(example.labels)] = torch.tensor(example.labels)
                    attention_mask[row, : len(example.input_ids)] = 1
                logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits
                targets = labels[:, 1:].to(logits.device)
                nll = torch.nn.functional.cross_entropy(
                    logits[:, :-1].float().transpose(1, 2), targets, ignore_index=IGNORE_INDEX, reduction="none"
                )
                for row, index in enumerate(order[start : start + batch_size]):
                    mask = targets[row] != IGNORE_INDEX
                    results[index] = (float(nll[row][mask].sum()), int(mask.sum()))
                if progress is not None:
                    progress.update(len(batch))
    finally:
        model.train(was_training)
    return results
