"""WebNLG 2017 data-to-text: RDF triples in, a sentence out, scored by BLEU against every reference."""

from __future__ import annotations

from sparse_dist.tasks.generation import TEXT_GENERATION
from sparse_dist.tasks.spec import LocalLayout, TaskSpec

TASKS = {
    "webnlg": TaskSpec(
        name="webnlg", type=TEXT_GENERATION, hub_path="web_nlg", hub_name="webnlg_challenge_2017",
        hub_columns={}, metrics=("bleu",), primary_metric="bleu", text_prefix="translate triples to text",
        text_fields=(), local=LocalLayout(directory="webnlg", files={"train": "train", "validation": "dev"},
                                          columns={}),
        dev_splits=("validation",), reader="webnlg"),
}
