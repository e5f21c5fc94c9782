"""CoNLL-2003 named entity recognition: BIO tags of persons, organisations, locations and miscellany per word.

Local files only (``conll2003/{train,valid,test}.txt`` under ``data.local_dir``, read by
:func:`~sparse_dist.data.conll.read_conll2003`): the hub's copy, ``eriktks/conll2003``, is a loading script
that ``datasets`` 4 and later no longer run. Label ids are the hub's. Model selection reads entity-level F1.
"""

from __future__ import annotations

from sparse_dist.data.conll import CONLL2003_FILES, CONLL2003_LABELS
from sparse_dist.tasks.spec import LocalLayout, TaskSpec
from sparse_dist.tasks.token_classification import TOKEN_CLASSIFICATION

TASKS = {
    "conll2003": TaskSpec(
        name="conll2003", type=TOKEN_CLASSIFICATION, hub_path="eriktks/conll2003", hub_name=None,
        hub_columns={"tokens": "tokens", "label": "ner_tags"}, label_names=CONLL2003_LABELS,
        metrics=("f1", "precision", "recall", "accuracy"), primary_metric="f1", text_fields=(),
        local=LocalLayout(directory="conll2003", files=CONLL2003_FILES, columns={}), reader="conll"),
}
