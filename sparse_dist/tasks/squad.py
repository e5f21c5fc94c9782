"""SQuAD v1.1, an extractive QA task (:mod:`sparse_dist.tasks.extractive_qa`): the official JSON files in
``<data.local_dir>/squad`` (the local train file holds the first 50 of the 442 articles), or
``rajpurkar/squad`` from the hub; exact match and F1 of the official script, F1 deciding "better"."""

from __future__ import annotations

from sparse_dist.tasks.extractive_qa import EXTRACTIVE_QA
from sparse_dist.tasks.spec import LocalLayout, TaskSpec

TASKS: dict[str, TaskSpec] = {
    "squad": TaskSpec(
        name="squad", type=EXTRACTIVE_QA, hub_path="rajpurkar/squad", hub_name=None, hub_columns={},
        metrics=("exact_match", "f1"), primary_metric="f1", text_fields=("question", "context"),
        local=LocalLayout(directory="squad", files={"train": "train-v1.1-first50articles.json",
                                                    "validation": "dev-v1.1.json"}, columns={}),
        reader="squad"),
}
