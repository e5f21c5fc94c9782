"""Text-to-text generation: structured input in, a sentence out, scored against references (WebNLG, BLEU).

Only text-to-text models serve it. Training has one example per reference sentence, cut at
``data.max_target_length``; a dev example's gold answer is its list of references.
"""

from __future__ import annotations

from typing import Any

from sparse_dist.config import ConfigError
from sparse_dist.tasks.base import TaskType


class TextGeneration(TaskType):
    name = "generation"

    def num_labels(self, task) -> int:
        return 1

    def gold(self, raw) -> list:
        return list(raw["references"])

    def train_examples(self, raw):
        return raw.map(_expand_references, batched=True, remove_columns=raw.column_names, keep_in_memory=True)

    def check_model(self, task, kind: str, config, name: str, head: str, key: str) -> None:
        if kind == "encoder":
            raise ConfigError(f"{key}: {name} is an encoder ({config.model_type}); task {task.name} needs a "
                              "text-to-text model such as T5")
        return None

    def source_segments(self, task, example: dict[str, Any]) -> list[tuple[str, bool]]:
        triples = " && ".join(t.replace("_", " ") for t in example["triples"])
        return [(f"{task.text_prefix}:", False), (triples, True)]

    def training_target(self, task, example: dict[str, Any]) -> str:
        return example["target"]

    def parse_prediction(self, task, text: str) -> str:
        return text.strip()


def _expand_references(batch: dict[str, list]) -> dict[str, list]:
    out: dict[str, list] = {"triples": [], "target": []}
    for triples, references in zip(batch["triples"], batch["references"]):
        for reference in references:
            out["triples"].append(triples)
            out["target"].append(reference)
    return out


TEXT_GENERATION = TextGeneration()
