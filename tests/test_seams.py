"""The registries behind the seams: tasks, task types, model families and pruning methods agree with the
config and with each other (docs/extending.md)."""

import typing

from sparse_dist.config import PruningConfig, load_config
from sparse_dist.models.families import DEFAULT_FAMILY, get_family
from sparse_dist.pruning.build import PRUNERS
from sparse_dist.tasks import TASKS
from sparse_dist.tasks.base import TaskType


def test_the_config_names_exactly_the_registered_methods():
    names = typing.get_args(typing.get_type_hints(PruningConfig)["method"])
    assert set(names) == {"none", *PRUNERS}


def test_method_rules_are_class_attributes():
    for name, pruner in PRUNERS.items():
        assert pruner.default_scope is None or pruner.default_scope in pruner.scopes, name
        assert pruner.mask_updates in ("interval", "every_step", "window_ends"), name
    assert [m for m, p in PRUNERS.items() if p.freezes_weights] == ["smp"]
    assert load_config(None, ["pruning.method=smp", "pruning.scope=local"], world_size=1).model.head == "label_words"
    assert load_config(None, ["pruning.method=movement"], world_size=1).model.head == "classifier"
    assert PRUNERS["pins"].reads_weights_before_step and not PRUNERS["platon"].reads_weights_before_step


def test_one_registry_of_tasks_each_with_a_type():
    assert list(TASKS) == ["conll2003", "cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli",
                          "squad", "webnlg"]
    assert all(isinstance(task.type, TaskType) and task.name == name for name, task in TASKS.items())
    assert {name: task.kind for name, task in TASKS.items() if task.kind != "classification"} == {
        "stsb": "regression", "webnlg": "generation", "squad": "extractive_qa",
        "conll2003": "token_classification"}
    assert TASKS["stsb"].num_labels == 1 and TASKS["mnli"].num_labels == 3 and TASKS["squad"].num_labels == 2


def test_families_by_model_type():
    assert get_family("bert") is get_family("roberta") is DEFAULT_FAMILY and DEFAULT_FAMILY.kind == "encoder"
    assert get_family("t5") is get_family("mt5") and get_family("t5").kind == "seq2seq"
    assert get_family("t5").label_words is False and not get_family("t5").absolute_positions
    assert get_family("electra") is DEFAULT_FAMILY  # unclaimed types are read as BERT-like encoders
