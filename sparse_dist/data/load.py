"""Read a task's raw splits, from a local directory or the hub, into canonical columns.

Every split comes back as a ``datasets.Dataset`` with the canonical columns
``text_a``, ``text_b`` (pairs only) and ``label`` for GLUE, or ``triples``, ``references`` and
``category`` for WebNLG, the SQuAD columns (``id``, ``title``, ``context``, ``question``, ``answers``), or
``tokens`` and ``label`` (a tag id per word) for CoNLL-2003, plus ``idx`` (the row's position in the split).
Problems with the files (a missing file or column, an unknown label, an empty split, a SQuAD answer not at
its ``answer_start``) raise :class:`DataError` with the path (and the row); a split the hub cannot give
(offline, not cached) raises it with the dataset's name.
:func:`check_data_source` is the part of that which can be seen without reading the data (the local
files exist, their header has the columns, every SQuAD answer is where it says, the hub is reachable
when they are missing), for the checks that run before any rank starts.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets

from sparse_dist.config import ConfigError
from sparse_dist.tasks.spec import TaskSpec

log = logging.getLogger(__name__)


class DataError(ValueError):
    """A problem with a task's data files, reported with the file it is in."""


def resolve_local_dir(task: TaskSpec, local_dir: str | None) -> Path | None:
    """The task's local directory if it exists; None means "use the hub" (and says so in the log)."""
    if local_dir is None or task.local is None:
        return None
    path = Path(local_dir) / task.local.directory
    if path.is_dir():
        return path
    log.warning("data.local_dir: %s does not exist; loading %s/%s from the hub instead", path, task.hub_path,
                task.hub_name)
    return None


def hub_offline() -> bool:
    """True when the hub must not be reached (HF_HUB_OFFLINE or HF_DATASETS_OFFLINE set)."""
    return any(os.environ.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE")
               for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def check_data_source(task: TaskSpec, local_dir: str | None, dev_only: bool = False) -> None:
    """What can be known about a task's data without reading it: with ``data.local_dir`` set, either the
    task's files are there (each split's file, its header naming the columns; only the dev splits' if
    ``dev_only``) or the hub can be asked. Raises :class:`ConfigError` naming ``data.local_dir`` and the file."""
    if local_dir is None or task.local is None:
        return
    directory = Path(local_dir) / task.local.directory
    if not directory.is_dir():
        if hub_offline():
            raise ConfigError(f"data.local_dir: {directory} does not exist, and the hub is offline "
                              f"(HF_HUB_OFFLINE/HF_DATASETS_OFFLINE), so {task.name} cannot be loaded")
        return  # load_split says it falls back to the hub
    splits = task.dev_splits if dev_only else (task.train_split, *task.dev_splits)
    for split in splits:
        if split not in task.local.files:
            raise ConfigError(f"data.local_dir: task {task.name} has no {split} split in the local layout")
        READERS[task.reader].check_local(task, directory / task.local.files[split], split)


def load_split(task: TaskSpec, split: str, local_dir: str | None, limit: int | None = None) -> datasets.Dataset:
    """One split of a task in canonical columns, truncated to its first ``limit`` rows if given."""
    directory = resolve_local_dir(task, local_dir)
    reader = READERS[task.reader]
    if directory is not None:
        raw, where = reader.load_local(task, split, directory, limit)
    else:
        raw, where = reader.load_hub(task, split, limit)
    if len(raw) == 0:
        raise DataError(f"{where}: the {split} split has no examples")
    return raw.add_column("idx", list(range(len(raw))))


def _first(raw: datasets.Dataset, limit: int | None) -> datasets.Dataset:
    return raw if limit is None or limit >= len(raw) else raw.select(range(limit))


# --- GLUE ---------------------------------------------------------------------------------------


def _load_glue_local(task: TaskSpec, split: str, directory: Path,
                     limit: int | None) -> tuple[datasets.Dataset, str]:
    layout = task.local
    if split not in layout.files:
        raise DataError(f"{directory}: task {task.name} has no {split} split (known: {', '.join(layout.files)})")
    path = directory / layout.files[split]
    if not path.is_file():
        raise DataError(f"{path}: file not found (task {task.name}, split {split})")
    options: dict[str, Any] = {"delimiter": "\t", "quoting": csv.QUOTE_NONE, "encoding": "utf-8-sig"}
    if not layout.header:
        options.update(header=None, column_names=list(layout.names))
    try:
        raw = datasets.load_dataset("csv", data_files={split: str(path)}, split=split, keep_in_memory=True, **options)
    except ValueError as error:  # datasets' words for a header-only file, or a file pandas cannot parse
        if "corresponds to no data" in str(error):
            raise DataError(f"{path}: the {split} split has no examples") from None
        raise DataError(f"{path}: not a readable TSV file ({error})") from None
    return _canonical_glue(task, _first(raw, limit), layout.columns, str(path)), str(path)


def _load_hub(task: TaskSpec, split: str) -> datasets.Dataset:
    try:
        return datasets.load_dataset(task.hub_path, task.hub_name, split=split)
    except (ConnectionError, OSError, ValueError) as error:  # offline and not cached, unknown name, no network
        first = next((line for line in str(error).splitlines() if line.strip()), type(error).__name__)
        offline = " (the hub is offline: HF_HUB_OFFLINE/HF_DATASETS_OFFLINE)" if hub_offline() else ""
        raise DataError(f"{task.hub_path}/{task.hub_name}:{split}: cannot be loaded from the hub{offline}: "
                        f"{first}") from None


def _load_glue_hub(task: TaskSpec, split: str, limit: int | None) -> datasets.Dataset:
    raw = _load_hub(task, split)
    return _canonical_glue(task, _first(raw, limit), task.hub_columns, f"{task.hub_path}/{task.hub_name}:{split}")


def _canonical_glue(task: TaskSpec, raw: datasets.Dataset, columns: dict[str, str], where: str) -> datasets.Dataset:
    missing = [name for name in columns.values() if name not in raw.column_names]
    if missing:
        raise DataError(f"{where}: missing column {missing[0]!r} (columns: {', '.join(raw.column_names)})")
    if len(raw) == 0:
        raise DataError(f"{where}: no examples")
    out: dict[str, list] = {key: [] for key in columns}
    source = {key: raw.data.column(name).to_pylist() for key, name in columns.items()}
    for row in range(len(raw)):
        for key in ("text_a", "text_b"):
            if key in source:
                text = source[key][row]
                out[key].append("" if text is None or (isinstance(text, float) and math.isnan(text)) else str(text))
        out["label"].append(task.type.label_value(task, source["label"][row], where, row))
    features = {"text_a": datasets.Value("string"), "label": datasets.Value(task.type.label_dtype)}
    if "text_b" in out:
        features["text_b"] = datasets.Value("string")
    return datasets.Dataset.from_dict(out, features=datasets.Features({k: features[k] for k in out}))


# --- WebNLG -------------------------------------------------------------------------------------


def _load_webnlg_local(task: TaskSpec, split: str, directory: Path, limit: int | None = None) -> datasets.Dataset:
    """The entries of a split's XML files in file order; with ``limit``, files are read only until that
    many entries are in (the same first rows as reading them all)."""
    if split not in task.local.files:
        raise DataError(f"{directory}: WebNLG has no {split} split (known: {', '.join(task.local.files)})")
    split_dir = directory / task.local.files[split]
    files = sorted(split_dir.glob("*triples/*.xml"))
    if not files:
        raise DataError(f"{split_dir}: no WebNLG files (expected <N>triples/<Category>.xml)")
    rows: dict[str, list] = {"triples": [], "references": [], "category": []}
    skipped = 0
    for file in files:
        parsed, unusable = _parse_webnlg_file(file)
        skipped += unusable
        for key, values in parsed.items():
            rows[key].extend(values)
        if limit is not None and len(rows["triples"]) >= limit:
            break
    if skipped:
        log.warning("%s: skipped %d WebNLG entries without any reference text (kept %d)", split_dir, skipped,
                    len(rows["triples"]))
    return datasets.Dataset.from_dict(rows)


def _parse_webnlg_file(path: Path) -> tuple[dict[str, list], int]:
    """Entries of one WebNLG 2017 XML file (modified triples, every reference text), and how many
    entries had no reference text at all (a few in the release; they can be neither trained nor scored)."""
    try:
        root = ElementTree.parse(path).getroot()
    except ElementTree.ParseError as error:
        raise DataError(f"{path}: malformed WebNLG XML: {error}") from None
    out: dict[str, list] = {"triples": [], "references": [], "category": []}
    unusable = 0
    for entry in root.iter("entry"):
        triples = [t.text.strip() for t in entry.iter("mtriple") if t.text]
        references = [text.text.strip() for lex in entry.iter("lex") for text in lex.iter("text") if text.text]
        if not references:  # WebNLG 2017 v1.4 keeps the sentence in <text>; older files put it in <lex>.
            references = [lex.text.strip() for lex in entry.iter("lex") if lex.text and lex.text.strip()]
        if not triples:
            raise DataError(f"{path}: entry {entry.get('eid')} has no triples")
        if not references:
            unusable += 1
            continue
        out["triples"].append(triples)
        out["references"].append(references)
        out["category"].append(entry.get("category", ""))
    return out, unusable


def _load_webnlg_hub(task: TaskSpec, split: str) -> datasets.Dataset:
    raw = _load_hub(task, split)
    return raw.map(webnlg_hub_to_canonical, batched=True, remove_columns=raw.column_names)


def webnlg_hub_to_canonical(batch: dict[str, list]) -> dict[str, list]:
    """Rows of the hub's ``web_nlg`` schema (modified_triple_sets, lex) in canonical columns."""
    return {
        "triples": [list(sets["mtriple_set"][0]) for sets in batch["modified_triple_sets"]],
        "references": [list(lex["text"]) for lex in batch["lex"]],
        "category": list(batch["category"]),
    }


# --- CoNLL-2003 ---------------------------------------------------------------------------------


def _load_conll_local(task: TaskSpec, split: str, directory: Path,
                      limit: int | None) -> tuple[datasets.Dataset, str]:
    from sparse_dist.data.conll import read_conll2003

    if split not in task.local.files:
        raise DataError(f"{directory}: task {task.name} has no {split} split (known: {', '.join(task.local.files)})")
    path = directory / task.local.files[split]
    return read_conll2003(path, limit).rename_column("ner_tags", "label"), str(path)


def _load_conll_hub(task: TaskSpec, split: str, limit: int | None) -> tuple[datasets.Dataset, str]:
    # The hub's copy (eriktks/conll2003) is a loading script, which datasets 4 and later refuse to run.
    raise DataError(f"{task.hub_path}:{split}: the hub's {task.name} is a loading script that this datasets "
                    f"version cannot run; set data.local_dir to a directory holding {task.local.directory}/"
                    f"{{{','.join(task.local.files.values())}}} (the CoNLL-2003 column files)")


def _check_conll(task: TaskSpec, path: Path, split: str) -> None:
    # Reading a whole file takes under a second (train: 14,041 sentences), and a bad line found here is one
    # ConfigError before any rank starts instead of a DataError on every rank.
    from sparse_dist.data.conll import read_conll2003

    try:
        read_conll2003(path)
    except DataError as error:
        raise ConfigError(f"data.local_dir: {error}") from None


# --- readers ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reader:
    """How one file format is read: a split from the local layout or from the hub, each with where it came
    from (for errors), and the checks of a local split's file that need no reading of the data."""

    load_local: Callable[[TaskSpec, str, Path, int | None], tuple[datasets.Dataset, str]]
    load_hub: Callable[[TaskSpec, str, int | None], tuple[datasets.Dataset, str]]
    check_local: Callable[[TaskSpec, Path, str], None]


def _check_table(task: TaskSpec, path: Path, split: str) -> None:
    if not path.is_file():
        raise ConfigError(f"data.local_dir: {path}: file not found (task {task.name}, split {split})")
    if task.local.header:
        with path.open(encoding="utf-8-sig") as handle:
            header = handle.readline().rstrip("\r\n").split("\t")
        missing = [name for name in task.local.columns.values() if name not in header]
        if missing:
            raise ConfigError(f"data.local_dir: {path}: missing column {missing[0]!r} (columns: "
                              f"{', '.join(header)})")


def _check_webnlg(task: TaskSpec, path: Path, split: str) -> None:
    if not any(path.glob("*triples/*.xml")):
        raise ConfigError(f"data.local_dir: {path}: no WebNLG files (expected <N>triples/<Category>.xml)")


# --- SQuAD -------------------------------------------------------------------------------------


def _load_squad_local(task: TaskSpec, split: str, directory: Path, limit: int | None) -> tuple[datasets.Dataset, str]:
    from sparse_dist.data.squad import read_squad  # imports this module (DataError)

    if split not in task.local.files:
        raise DataError(f"{directory}: SQuAD has no {split} split (known: {', '.join(task.local.files)})")
    path = directory / task.local.files[split]
    return read_squad(path, limit), str(path)


def _check_squad(task: TaskSpec, path: Path, split: str) -> None:
    """Reads the whole file (a few MB): an answer not at its answer_start is refused before ranks start."""
    from sparse_dist.data.squad import read_squad

    if not path.is_file():
        raise ConfigError(f"data.local_dir: {path}: file not found (task {task.name}, split {split})")
    try:
        read_squad(path)
    except DataError as error:
        raise ConfigError(f"data.local_dir: {error}") from None


READERS: dict[str, Reader] = {
    "table": Reader(
        load_local=_load_glue_local,
        load_hub=lambda task, split, limit: (_load_glue_hub(task, split, limit),
                                             f"{task.hub_path}/{task.hub_name}:{split}"),
        check_local=_check_table),
    "webnlg": Reader(
        load_local=lambda task, split, directory, limit: (
            _first(_load_webnlg_local(task, split, directory, limit), limit), str(directory / task.local.files[split])),
        load_hub=lambda task, split, limit: (_first(_load_webnlg_hub(task, split), limit), f"{task.hub_path}:{split}"),
        check_local=_check_webnlg),
    "squad": Reader(
        load_local=_load_squad_local,
        load_hub=lambda task, split, limit: (_first(_load_hub(task, split), limit), f"{task.hub_path}:{split}"),
        check_local=_check_squad),
    "conll": Reader(load_local=_load_conll_local, load_hub=_load_conll_hub, check_local=_check_conll),
}
"""Every file format by :attr:`TaskSpec.reader` name: ``table`` (TSV files with a header, or hub columns, as
GLUE), ``webnlg`` (WebNLG 2017 XML), ``squad`` (SQuAD v1.1 JSON, or the hub's ``rajpurkar/squad`` columns)
and ``conll`` (CoNLL-2003 column files, local only: ``tokens`` and a ``label`` list of tag ids per sentence)."""
