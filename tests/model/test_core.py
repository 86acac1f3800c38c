"""model/core.py: CORE spans per item kind, an oracle scores 100%, padding and batch size change nothing."""
import pytest
import torch

from model.core import (centered, common_length, core_score, fewshot, generate, render, score, sequences)
from model.gpt import GPT, GPTConfig

BOS = 0


def encode(texts):
    """One token per character (ids 1..255): spans can be read off the text."""
    return [[1 + (ord(c) % 255) for c in t] for t in texts]


MC = {"query": "Which is warm?", "choices": ["a hot stove", "a cold stone", "a hot bath"], "gold": 0}
SCHEMA = {"context_options": ["Then the cup fell", "Then the dog barked"],
          "continuation": "and it was pushed.", "gold": 0}
LM = {"context": "The river rose again and the town ", "continuation": "flooded"}


def test_multiple_choice_scores_from_the_first_token_where_choices_differ():
    prompts = render("multiple_choice", MC, "\nAnswer: ")
    seq = sequences("multiple_choice", prompts, encode, BOS, 1000, gold=0)
    prefix = len("Which is warm?\nAnswer: a ")  # "a " is shared by every choice, so it is not scored
    assert seq.starts == [1 + prefix] * 3 and seq.ends == [1 + len(p) for p in prompts]
    assert all(t[0] == BOS for t in seq.tokens)


def test_schema_scores_the_shared_continuation():
    seq = sequences("schema", render("schema", SCHEMA, " "), encode, BOS, 1000, gold=0)
    span = len(" and it was pushed.")  # the common suffix: the delimiter and the continuation
    assert [e - s for s, e in zip(seq.starts, seq.ends)] == [span, span]
    assert seq.tokens[0][seq.starts[0]:] == encode([" and it was pushed."])[0]


def test_language_modelling_scores_the_continuation_after_a_clean_prefix():
    without, with_ = render("language_modelling", LM, " ")
    assert without == "The river rose again and the town" and with_.endswith("town flooded")
    seq = sequences("language_modelling", [without, with_], encode, BOS, 1000)
    assert len(seq.tokens) == 1 and seq.tokens[0][seq.starts[0]:] == encode([" flooded"])[0]


def test_long_sequences_are_cropped_from_the_left_and_spans_follow():
    full = sequences("multiple_choice", render("multiple_choice", MC, "\nAnswer: "), encode, BOS, 1000)
    short = sequences("multiple_choice", render("multiple_choice", MC, "\nAnswer: "), encode, BOS, 12)
    for f, s, fs, ss, fe, se in zip(full.tokens, short.tokens, full.starts, short.starts, full.ends, short.ends):
        assert len(s) == 12 and s == f[-12:] and fe - fs == se - ss


def test_fewshot_examples_exclude_the_item_and_are_rendered_solved():
    items = [{**MC, "query": f"Q{i}?"} for i in range(12)]
    shots = fewshot(items, 3, 10)
    assert len(shots) == 10 and items[3] not in shots and shots == fewshot(items, 3, 10)
    prompt = render("multiple_choice", items[3], "\nAnswer: ", shots)[0]
    assert prompt.startswith(f"{shots[0]['query']}\nAnswer: a hot stove\n\n") and prompt.endswith("Q3?\nAnswer: a hot stove")


class Oracle(torch.nn.Module):
    """Logits that put the next token of any known-correct sequence far ahead; flat elsewhere."""

    def __init__(self, gold):
        super().__init__()
        self.gold = gold
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, ids):
        out = torch.zeros(*ids.shape, 256)
        for r, row in enumerate(ids.tolist()):
            for g in self.gold:
                if row[:len(g)] == g:
                    for p in range(len(g) - 1):
                        out[r, p, g[p + 1]] = 20.0
        return out


def prepared(items):
    out, gold = [], []
    for kind, item in items:
        seq = sequences(kind, render(kind, item, " "), encode, BOS, 1000, gold=item.get("gold"))
        out.append(seq)
        gold.append(seq.tokens[item.get("gold", 0)])
    return out, gold


def test_an_oracle_gets_every_item_right():
    mc2 = {**MC, "query": "Which is warm, too?", "gold": 2}  # an oracle knows one right answer per question
    sc2 = {**SCHEMA, "continuation": "so it was loud.", "gold": 1}
    items, gold = prepared([("multiple_choice", MC), ("multiple_choice", mc2), ("schema", SCHEMA),
                            ("schema", sc2), ("language_modelling", LM)])
    results = score(Oracle(gold), items, batch_rows=4)
    assert [r.correct for r in results] == [True] * 5 and [r.prediction for r in results] == [0, 2, 0, 1, 1]
    wrong = score(Oracle([]), items[-1:])  # knows nothing: greedy misses the continuation
    assert not wrong[0].correct


def test_padding_and_batch_size_change_no_score():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=256, depth=2, d_model=64, seq_len=256)).eval()
    items, _ = prepared([("multiple_choice", MC), ("schema", SCHEMA), ("language_modelling", LM),
                         ("multiple_choice", {**MC, "query": "Which one is warm, then?"})])
    runs = [score(model, items, batch_rows=b) for b in (1, 3, 100)]
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert a.prediction == b.prediction
            assert torch.allclose(torch.tensor(a.losses), torch.tensor(b.losses), atol=1e-5)


def test_centered_accuracy_and_core():
    assert centered(0.25, 0.25) == 0 and centered(1.0, 0.62) == 1 and centered(0.0, 0.5) == -1
    assert core_score({"a": 0.5, "b": -0.1}) == 0.2


def test_common_length_and_greedy_generation():
    assert common_length([[1, 2, 3], [1, 2, 4]], "left") == 2 and common_length([[9, 2, 3], [1, 2, 3]], "right") == 2
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50, depth=1, d_model=32, seq_len=32)).eval()
    greedy = generate(model, [0, 5, 6], 8)
    assert greedy == generate(model, [0, 5, 6], 8) and len(greedy) == 8
    assert generate(model, [0, 5, 6], 8, temperature=1.0, seed=1) == generate(model, [0, 5, 6], 8, temperature=1.0,
                                                                            seed=1)


class Alone(torch.nn.Module):
    """The GPT without hidden/head: score() runs each sequence alone and reads its logits."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, ids):
        return self.inner(ids)


@pytest.mark.parametrize("heads", [(4, 4), (4, 2), (4, 1)])  # multi-head, grouped-query and multi-query attention
def test_packing_an_items_sequences_on_their_shared_prefix_scores_as_running_each_alone(heads):
    """Few-shot prompts (a long shared prefix), single-token choices (one pass for both), and sequences cropped
    from the left to different lengths (no shared prefix left): the packed rows give every sequence's losses."""
    from model.core import _segments

    torch.manual_seed(1)
    model = GPT(GPTConfig(vocab_size=256, depth=2, d_model=64, seq_len=160, n_heads=heads[0],
                          n_kv_heads=heads[1])).eval()
    mcs = [{**MC, "query": f"Which is warm, number {i}?"} for i in range(8)]
    yes_no = [{"query": f"Is thing {i} warm?", "choices": ["yes", "no"], "gold": i % 2} for i in range(8)]
    schemas = [{**SCHEMA, "continuation": f"and it was pushed {i} times."} for i in range(6)]
    items = []
    for pool, kind, max_len in ((mcs, "multiple_choice", 160), (mcs, "multiple_choice", 70),
                                (yes_no, "multiple_choice", 160), (schemas, "schema", 160),
                                (schemas, "schema", 60)):
        for i, item in enumerate(pool):
            prompts = render(kind, item, " ", fewshot(pool, i, 2))
            items.append(sequences(kind, prompts, encode, BOS, max_len, gold=item.get("gold")))
    items.append(sequences("language_modelling", render("language_modelling", LM, " "), encode, BOS, 160))
    segments, _ = _segments(items, 6.0 * model.cfg.d_model)
    assert sum(len(s.tokens) for s in segments) < 0.7 * sum(len(t) for it in items for t in it.tokens)
    assert any(s.parent is not None for s in segments)  # prefixes shared by tails (a KV cache) ...
    assert any(s.parent is None and not s.tails for s in segments)  # ... and sequences that run alone
    # cropped at different offsets, so that the sequences share (almost) nothing at the left
    assert any(len(it.tokens[0]) == 70 and common_length(it.tokens, "left") < 5 for it in items)
    packed = score(model, items, batch_rows=5)
    alone = score(Alone(model), items, batch_rows=1)
    for a, b in zip(packed, alone):
        assert a.prediction == b.prediction
        assert torch.allclose(torch.tensor(a.losses), torch.tensor(b.losses), atol=1e-4)
    assert [r.prediction for r in score(model, items, batch_rows=32, batch_tokens=10_000)] == \
        [r.prediction for r in packed]


def test_shots_kept_counts_the_examples_left_whole_after_the_left_crop():
    from model.core import shot_texts, shots_kept

    shots = [{**MC, "query": f"Question {i}?"} for i in range(4)]
    lengths = [len(t) for t in encode(shot_texts("multiple_choice", " ", shots))]  # one token per character
    assert shots_kept("multiple_choice", " ", shots, 0, encode) == 4
    assert shots_kept("multiple_choice", " ", shots, 1, encode) == 4  # only <|bos|> went
    assert shots_kept("multiple_choice", " ", shots, 2, encode) == 3  # one token into the first example
    assert shots_kept("multiple_choice", " ", shots, 1 + lengths[0], encode) == 3
    assert shots_kept("multiple_choice", " ", shots, 2 + lengths[0], encode) == 2
    assert shots_kept("multiple_choice", " ", shots, 10_000, encode) == 0


def test_packing_scores_the_smoke_sets_as_running_each_sequence_alone(tmp_path):
    """The project's own benchmark files in the CORE formats, their shots and delimiters, a BPE trained on them and
    a context short enough to crop many prompts: packed rows give every item the same prediction and losses."""
    from tasks.evalsets import TASKS, contamination_text, ensure_smoke, item_kind, read_items
    from tasks.tokenizer import TiktokenEncoder, train_bpe

    ensure_smoke(tmp_path)
    tasks = {name: (spec, read_items(tmp_path / f"{name}.jsonl")) for name, spec in TASKS.items()}
    tok = train_bpe(iter([contamination_text(it) for _, items in tasks.values() for it in items]), 600, ["<|bos|>"])
    bpe = TiktokenEncoder(tok).encode_batch
    torch.manual_seed(2)
    model = GPT(GPTConfig(vocab_size=tok.get_vocab_size(), depth=2, d_model=64, seq_len=128)).eval()
    items = []
    for spec, pool in tasks.values():
        kind = item_kind(pool[0])
        for i, item in enumerate(pool):
            prompts = render(kind, item, spec.delimiter, fewshot(pool, i, spec.shots))
            items.append(sequences(kind, prompts, bpe, 0, 128, gold=item.get("gold")))
    assert any(it.cropped for it in items) and any(not it.cropped for it in items)
    packed, alone = score(model, items), score(Alone(model), items, batch_rows=1)
    for a, b in zip(packed, alone):
        assert a.prediction == b.prediction
        assert torch.allclose(torch.tensor(a.losses), torch.tensor(b.losses), atol=1e-4)
