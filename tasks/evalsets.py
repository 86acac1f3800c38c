"""Evaluation sets (the benchmark items) in the DCLM/nanochat CORE formats: reading, validating, the smoke set,
and fetching. (benchmarks/ at the top of the repository is something else: the speed and quality scripts.)

A benchmark directory holds one ``<task>.jsonl`` per task. Each line is one item in one of three formats:

- multiple choice: ``{"query": str, "choices": [str, ...], "gold": int}``
- schema: ``{"context_options": [str, ...], "continuation": str, "gold": int}``
- language modelling: ``{"context": str, "continuation": str}``

A line that is not JSON, or fits none of these, is a ``BenchmarkError`` naming the file and line.

Crucible ships no third-party benchmark text. ``write_smoke(dir)`` writes a tiny set of items we wrote ourselves,
under the 7 task names, so the demo evaluates end to end on a fresh clone; ``fetch(url, dir)`` downloads the real
sets (``crucible benchmarks fetch``) for users with a network.
"""
from __future__ import annotations

import hashlib
import json
import re
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.shards import atomic_write_bytes

MULTIPLE_CHOICE, SCHEMA, LANGUAGE_MODELLING = "multiple_choice", "schema", "language_modelling"


@dataclass(frozen=True)
class TaskSpec:
    name: str
    kind: str
    shots: int
    delimiter: str
    random_baseline: float


TASKS: dict[str, TaskSpec] = {t.name: t for t in [
    TaskSpec("arc_easy", MULTIPLE_CHOICE, 10, "\nAnswer: ", 0.25),
    TaskSpec("arc_challenge", MULTIPLE_CHOICE, 10, "\nAnswer: ", 0.25),
    TaskSpec("piqa", MULTIPLE_CHOICE, 10, "\nAnswer: ", 0.50),
    TaskSpec("boolq", MULTIPLE_CHOICE, 10, "\nAnswer: ", 0.62),
    TaskSpec("copa", MULTIPLE_CHOICE, 0, " ", 0.50),
    TaskSpec("winogrande", SCHEMA, 0, " ", 0.50),
    TaskSpec("lambada_openai", LANGUAGE_MODELLING, 0, " ", 0.00),
]}


class BenchmarkError(ValueError):
    """A benchmark file that cannot be used; the message names the file and the line."""


def item_kind(item: Any) -> str:
    """The format of one parsed line, or a ValueError saying what is wrong with it."""
    if not isinstance(item, dict):
        raise ValueError(f"expected a JSON object, got {type(item).__name__}")

    def text_list(key: str) -> list[str]:
        value = item[key]
        if not (isinstance(value, list) and len(value) >= 2 and all(isinstance(v, str) for v in value)):
            raise ValueError(f"{key!r} must be a list of at least 2 strings")
        return value

    def gold(options: list[str]) -> None:
        g = item["gold"]
        if not (isinstance(g, int) and not isinstance(g, bool) and 0 <= g < len(options)):
            raise ValueError(f"'gold' must be an index into {len(options)} options, got {g!r}")

    def text(key: str) -> None:
        if not isinstance(item[key], str):
            raise ValueError(f"{key!r} must be a string")

    if "choices" in item or "query" in item:
        missing = {"query", "choices", "gold"} - set(item)
        if missing:
            raise ValueError(f"multiple-choice item lacks {sorted(missing)}")
        text("query")
        gold(text_list("choices"))
        return MULTIPLE_CHOICE
    if "context_options" in item:
        missing = {"continuation", "gold"} - set(item)
        if missing:
            raise ValueError(f"schema item lacks {sorted(missing)}")
        text("continuation")
        gold(text_list("context_options"))
        return SCHEMA
    if "context" in item and "continuation" in item:
        text("context")
        text("continuation")
        return LANGUAGE_MODELLING
    raise ValueError(f"unknown item format with keys {sorted(item)}; expected query/choices/gold, "
                     "context_options/continuation/gold or context/continuation")


MAX_ITEM_BYTES = 1 << 20  # the largest real item (a lambada passage) is a few KB; more is not a benchmark item
MAX_FILE_BYTES = 256 << 20  # a fetched file larger than this is refused before it is stored


def read_items(path: Path) -> list[dict[str, Any]]:
    """Every item of one file, validated; a bad line is an error naming the file and line number.

    The file is read a line at a time and a line is read at most ``MAX_ITEM_BYTES`` deep, so a huge line costs
    no more memory than that before it is refused.
    """
    items = []
    kinds = set()
    try:
        fh = open(path, "rb")
    except OSError as err:
        raise BenchmarkError(f"{path}: cannot read: {err}") from None
    with fh:
        for number, raw in enumerate(iter(lambda: fh.readline(MAX_ITEM_BYTES + 1), b""), 1):
            if len(raw) > MAX_ITEM_BYTES:
                raise BenchmarkError(f"{path}:{number}: a line longer than {MAX_ITEM_BYTES:,} bytes is not a "
                                     "benchmark item")
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise BenchmarkError(f"{path}:{number}: not UTF-8: {err}") from None
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                kinds.add(item_kind(item))
            except (json.JSONDecodeError, ValueError) as err:
                raise BenchmarkError(f"{path}:{number}: {err}") from None
            items.append(item)
    if len(kinds) > 1:
        raise BenchmarkError(f"{path}: mixes item formats {sorted(kinds)}")
    return items


_LABEL = re.compile(r"^\s*(?:Passage|Question|Answer)\s*:\s*", re.MULTILINE)


def contamination_text(item: dict[str, Any]) -> str:
    """The item as it would appear in a leaked copy: its question with its gold answer, labels removed."""
    kind = item_kind(item)
    if kind == MULTIPLE_CHOICE:
        text = f"{item['query']} {item['choices'][item['gold']]}"
    elif kind == SCHEMA:
        text = f"{item['context_options'][item['gold']]} {item['continuation']}"
    else:
        text = f"{item['context']} {item['continuation']}"
    return _LABEL.sub("", text)


def benchmark_files(directory: Path, tasks: list[str] | None = None) -> list[Path]:
    directory = Path(directory)
    if not directory.is_dir():
        raise BenchmarkError(f"benchmark directory {directory} does not exist: point decontaminate.benchmarks_dir "
                             "at one, unset it for the built-in smoke set, or run `crucible benchmarks fetch`")
    files = sorted(directory.glob("*.jsonl"))
    if tasks:
        by_name = {f.stem: f for f in files}
        missing = [t for t in tasks if t not in by_name]
        if missing:
            raise BenchmarkError(f"{directory}: no file for tasks {missing}; it holds {sorted(by_name)}")
        files = [by_name[t] for t in tasks]
    if not files:
        raise BenchmarkError(f"benchmark directory {directory} holds no .jsonl files")
    return files


def fingerprint(files: list[Path]) -> str:
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.name.encode() + b"\0" + hashlib.sha256(f.read_bytes()).digest())
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------------------------
# The smoke set: items written for Crucible, a handful per task, in the real formats.

_SMOKE: dict[str, list[dict[str, Any]]] = {
    "arc_easy": [
        {"query": "Question: Which tool is best for measuring the length of a table?",
         "choices": ["a thermometer", "a tape measure", "a balance", "a stopwatch"], "gold": 1},
        {"query": "Question: What do plants take in from the air to make their food?",
         "choices": ["oxygen", "nitrogen", "carbon dioxide", "helium"], "gold": 2},
        {"query": "Question: Which of these is a source of light?",
         "choices": ["the moon", "a mirror", "the sun", "a window"], "gold": 2},
        {"query": "Question: Water that is heated enough turns into what?",
         "choices": ["ice", "steam", "sand", "salt"], "gold": 1},
    ],
    "arc_challenge": [
        {"query": "Question: A student drops a ball and a feather in a room with no air. What happens?",
         "choices": ["The ball lands first.", "The feather lands first.", "They land together.",
                     "Neither one falls."], "gold": 2},
        {"query": "Question: Why does a metal spoon feel colder than a wooden spoon in the same room?",
         "choices": ["Metal is colder.", "Metal moves heat away from the hand faster.",
                     "Wood makes its own heat.", "Metal absorbs light."], "gold": 1},
        {"query": "Question: Which change to a circuit makes a bulb in it glow brighter?",
         "choices": ["adding a second battery in series", "cutting one wire", "adding a longer wire",
                     "removing the battery"], "gold": 0},
    ],
    "piqa": [
        {"query": "Question: How do you keep bread from going stale quickly?",
         "choices": ["Store it in a closed bag.", "Leave it open on the counter."], "gold": 0},
        {"query": "Question: How do you loosen a tight jar lid?",
         "choices": ["Run the lid under hot water, then twist.", "Put the jar in the freezer overnight."],
         "gold": 0},
        {"query": "Question: How can you dry wet shoes faster?",
         "choices": ["Stuff them with dry newspaper.", "Fill them with water."], "gold": 0},
    ],
    "boolq": [
        {"query": "Passage: The river rises in the hills and flows west for two hundred miles before it reaches "
                  "the sea. Small boats can travel its lower half all year.\nQuestion: does the river reach the "
                  "sea?\nAnswer:", "choices": ["no", "yes"], "gold": 1},
        {"query": "Passage: The library opens at nine in the morning on weekdays and stays closed on Sundays.\n"
                  "Question: is the library open on sunday?\nAnswer:", "choices": ["no", "yes"], "gold": 0},
        {"query": "Passage: Copper is a soft metal that carries electricity well, which is why it is used in "
                  "most household wiring.\nQuestion: is copper used in wiring?\nAnswer:",
         "choices": ["no", "yes"], "gold": 1},
    ],
    "copa": [
        {"query": "The glass fell off the table, therefore", "choices": ["it shattered on the floor.",
                                                                          "it filled with milk."], "gold": 0},
        {"query": "The children were hungry, therefore", "choices": ["they went to sleep.", "they ate lunch."],
         "gold": 1},
        {"query": "The road was covered in ice, because", "choices": ["the night had been very cold.",
                                                                       "the sun was shining."], "gold": 0},
    ],
    "winogrande": [
        {"context_options": ["The trophy did not fit in the case because the trophy",
                             "The trophy did not fit in the case because the case"],
         "continuation": "was too big.", "gold": 0},
        {"context_options": ["Anna lent her umbrella to Maria because Anna",
                             "Anna lent her umbrella to Maria because Maria"],
         "continuation": "had forgotten her own at home.", "gold": 1},
        {"context_options": ["The cat chased the mouse until the cat", "The cat chased the mouse until the mouse"],
         "continuation": "hid in a hole in the wall.", "gold": 1},
    ],
    "lambada_openai": [
        {"context": "She put the kettle on, found two cups and a box of tea bags, and asked whether he wanted milk "
                    "in his", "continuation": "tea"},
        {"context": "The dog waited by the door every evening, because at six o'clock its owner always came home "
                    "and took it for a", "continuation": "walk"},
        {"context": "He counted the coins twice, and both times he got the same answer: there was exactly enough "
                    "to pay for the", "continuation": "ticket"},
    ],
}


def write_smoke(directory: Path) -> Path:
    """Write the smoke benchmark (7 small files in the CORE formats) into ``directory``; returns it."""
    directory = Path(directory)
    for task, items in _SMOKE.items():
        body = "".join(json.dumps(item, ensure_ascii=False) + "\n" for item in items)
        atomic_write_bytes(directory / f"{task}.jsonl", body.encode())
    return directory


def smoke_dir(work_dir: Path) -> Path:
    """Where the smoke set lives when no benchmark directory is configured."""
    return Path(work_dir) / "benchmarks" / "smoke"


def ensure_smoke(directory: Path) -> None:
    """Write the smoke set where the config expects it, unless a complete set is already there."""
    directory = Path(directory)
    if not all((directory / f"{task}.jsonl").is_file() for task in _SMOKE):
        write_smoke(directory)


def fetch(base_url: str, directory: Path, tasks: list[str] | None = None, timeout: float = 60.0) -> list[Path]:
    """Download ``<base_url>/<task>.jsonl`` for each task, validate it, and write it atomically into directory.

    A file that is not a valid benchmark is refused before anything is written for it.
    """
    written = []
    for task in tasks or list(TASKS):
        url = f"{base_url.rstrip('/')}/{task}.jsonl"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                body = response.read(MAX_FILE_BYTES + 1)
        except OSError as err:
            raise BenchmarkError(f"cannot fetch {url}: {err}") from None
        if len(body) > MAX_FILE_BYTES:
            raise BenchmarkError(f"{url}: larger than {MAX_FILE_BYTES:,} bytes, not a benchmark file")
        target = Path(directory) / f"{task}.jsonl"
        staged = target.with_name(f".fetch-{task}.jsonl")
        staged.parent.mkdir(parents=True, exist_ok=True)
        staged.write_bytes(body)
        try:
            items = read_items(staged)
        except BenchmarkError as err:
            raise BenchmarkError(str(err).replace(str(staged), url)) from None
        finally:
            staged.unlink(missing_ok=True)
        if not items:
            raise BenchmarkError(f"{url}: no items")
        atomic_write_bytes(target, body)
        written.append(target)
    return written
