"""The named real sources a LoRA bank is built from: one adapter per source.

Why named sources: the K-shot guided method assumes a bank of experts that each know one kind
of task. ../shared/data holds the raw material: the seven FLAN v2 CoT files (each its own
reasoning task), Code Alpaca, and the T0 sample, whose 37 P3 datasets are grouped into the
task clusters of the T0 paper (Sanh et al. 2022, fig. 2) so that each group is one skill
(extractive QA, sentiment, summarisation, ...). A source is a name and a reader; the bank
build picks records from it, so what an adapter was trained on is always one name.

The T0 groups are read through the sample's manifest (template -> dataset): a dataset the
manifest names that no group claims is an error, never silently left out of every adapter.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from taskexpert.errors import InputError
from taskexpert.importers.pools import import_codealpaca, import_flan_cot, import_t0
from taskexpert.records import Record

FLAN_TASKS = ("aqua", "creak", "ecqa", "gsm8k", "qasc", "sensemaking", "strategyqa")
T0_MANIFEST = "self-instruct/t0_train_50k_manifest.json"

# T0's task clusters over the datasets of the sample (T0 paper, fig. 2).
T0_GROUPS: dict[str, tuple[str, ...]] = {
    "extractive_qa": (
        "adversarial_qa_dbert",
        "adversarial_qa_dbidaf",
        "adversarial_qa_droberta",
        "duorc_ParaphraseRC",
        "duorc_SelfRC",
        "quoref",
        "ropes",
    ),
    "multiple_choice_qa": (
        "commonsense_qa",
        "cosmos_qa",
        "dream",
        "qasc",
        "quarel",
        "quartz",
        "sciq",
        "social_i_qa",
        "wiki_hop_original",
        "wiqa",
    ),
    "closed_book_qa": ("kilt_tasks_hotpotqa", "wiki_qa"),
    "sentiment": ("amazon_polarity", "app_reviews", "imdb", "rotten_tomatoes", "yelp_review_full"),
    "topic_classification": ("ag_news", "dbpedia_14", "trec"),
    "structure_to_text": ("common_gen", "wiki_bio"),
    "summarization": ("cnn_dailymail_3_0_0", "gigaword", "multi_news", "samsum", "xsum"),
    "paraphrase": ("glue_mrpc", "glue_qqp", "paws_labeled_final"),
}

Reader = Callable[[Path], Iterator[Record]]


@dataclass(frozen=True)
class Source:
    """One bank source: its name (the adapter's directory name) and how to read it."""

    name: str
    description: str
    read: Reader  # the shared data directory -> its records, in file order


def _flan(task: str) -> Reader:
    return lambda root: import_flan_cot(root / "flan-v2-cot" / f"{task}_train.tsv")


def _codealpaca(root: Path) -> Iterator[Record]:
    return import_codealpaca(root / "codealpaca")


def t0_datasets(root: Path) -> set[str]:
    """The P3 datasets the T0 sample's manifest names; every one must belong to a group."""
    path = root / T0_MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError("T0 manifest not found", path) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"unreadable T0 manifest ({exc})", path) from None
    if not isinstance(manifest, dict):
        raise InputError("expected an object of template -> {dataset, ...}", path)
    datasets = set()
    for template, entry in manifest.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("dataset"), str):
            raise InputError("expected {dataset: name, ...}", path, field=template)
        datasets.add(entry["dataset"])
    grouped = {d for members in T0_GROUPS.values() for d in members}
    unknown = sorted(datasets - grouped)
    if unknown:
        raise InputError(
            f"dataset(s) {', '.join(unknown)} belong to no T0 group (add them to T0_GROUPS)",
            path,
            field="dataset",
        )
    return datasets


def _t0_group(group: str) -> Reader:
    members = {f"t0/{dataset}" for dataset in T0_GROUPS[group]}

    def read(root: Path) -> Iterator[Record]:
        t0_datasets(root)  # the manifest checked before any record is read
        for record in import_t0(root / "self-instruct"):
            if record.source in members and record.output.strip():  # trec has empty outputs
                yield record

    return read


def _all_sources() -> dict[str, Source]:
    sources = [Source(task, f"FLAN v2 CoT {task}", _flan(task)) for task in FLAN_TASKS]
    sources.append(Source("codealpaca", "Code Alpaca 2k (CC BY-NC 4.0)", _codealpaca))
    for group, datasets in T0_GROUPS.items():
        about = f"T0 {group.replace('_', ' ')} ({', '.join(datasets)})"
        sources.append(Source(f"t0-{group}", about, _t0_group(group)))
    return {source.name: source for source in sources}


SOURCES: dict[str, Source] = _all_sources()


def get_source(name: str) -> Source:
    """The source called `name`; an unknown name lists the known ones."""
    if name not in SOURCES:
        raise InputError(f"unknown source {name!r} (known: {', '.join(SOURCES)})", field="from")
    return SOURCES[name]


def read_source(name: str, data_dir: str | Path) -> Iterator[Record]:
    """Stream the records of source `name` from the shared data directory `data_dir`."""
    root = Path(data_dir)
    if not root.is_dir():
        raise InputError("shared data directory not found", root, field="data")
    return get_source(name).read(root)
