"""Loading GLUE and WebNLG from the local layout (real files) and the hub schema; clear data errors."""

import datasets
import pytest

from sparse_dist.data.load import DataError, _canonical_glue, load_split, webnlg_hub_to_canonical
from sparse_dist.tasks import TASKS, get_task


def test_sst2_local(data_dir):
    train = load_split(get_task("sst2"), "train", str(data_dir))
    dev = load_split(get_task("sst2"), "validation", str(data_dir))
    assert (len(train), len(dev)) == (67349, 872)
    assert dev[0]["text_a"].startswith("it 's a charming and often affecting journey")
    assert dev[0]["label"] == 1 and dev[0]["idx"] == 0
    assert set(dev["label"]) == {0, 1}


def test_mrpc_local_reads_the_bom_header(data_dir):
    dev = load_split(get_task("mrpc"), "validation", str(data_dir))
    assert len(dev) == 408
    assert dev.column_names == ["text_a", "text_b", "label", "idx"]
    assert set(dev["label"]) == {0, 1}


def test_rte_local_maps_label_names_to_hub_ids(data_dir):
    dev = load_split(get_task("rte"), "validation", str(data_dir))
    assert len(dev) == 277
    assert dev[0]["label"] == 1  # 'not_entailment' is id 1 in nyu-mll/glue
    assert sorted(set(dev["label"])) == [0, 1]


def test_limit_keeps_the_first_rows(data_dir):
    full = load_split(get_task("rte"), "validation", str(data_dir))
    first = load_split(get_task("rte"), "validation", str(data_dir), limit=5)
    assert first["text_a"] == full["text_a"][:5] and first["idx"] == list(range(5))


def test_webnlg_local(data_dir, caplog):
    dev = load_split(get_task("webnlg"), "validation", str(data_dir))
    assert len(dev) == 870  # 872 entries, two of which carry no reference text at all
    assert "skipped 2 WebNLG entries" in caplog.text
    row = dev[0]
    assert row["triples"] and all(t.count(" | ") == 2 for t in row["triples"])
    assert row["references"] and all(isinstance(r, str) and r for r in row["references"])


def test_webnlg_hub_schema_maps_to_canonical_columns():
    batch = {"modified_triple_sets": [{"mtriple_set": [["A | b | C", "C | d | E"]]}],
             "lex": [{"text": ["A b C, which d E.", "C, d E, is b of A."], "comment": ["good", "good"]}],
             "category": ["Airport"]}
    assert webnlg_hub_to_canonical(batch) == {"triples": [["A | b | C", "C | d | E"]],
                                              "references": [["A b C, which d E.", "C, d E, is b of A."]],
                                              "category": ["Airport"]}


def test_hub_schema_of_every_glue_task_maps_to_canonical_columns():
    for name, task in TASKS.items():
        if task.reader != "table":  # WebNLG, SQuAD and CoNLL-2003 have readers of their own
            continue
        label = 0.4 if task.kind == "regression" else 1
        row = {column: (label if key == "label" else f"{key} text") for key, column in task.hub_columns.items()}
        raw = datasets.Dataset.from_list([row, row])
        canonical = _canonical_glue(task, raw, task.hub_columns, f"hub:{name}")
        assert canonical[0]["text_a"] == "text_a text"
        assert ("text_b" in canonical.column_names) == task.has_pair
        assert canonical[0]["label"] == pytest.approx(label)


def write_tsv(directory, name, text):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_text(text)


def test_local_layouts_of_other_glue_tasks(tmp_path):
    # CoLA has no header; MNLI has two dev files and string labels; STS-B is a regression.
    write_tsv(tmp_path / "glue/CoLA", "dev.tsv", "gj04\t1\t\tThe sailors rode the breeze clear of the rocks.\n"
                                                 "gj04\t0\t*\tThe more we study verbs.\n")
    cola = load_split(get_task("cola"), "validation", str(tmp_path))
    assert cola["label"] == [1, 0] and cola["text_a"][1] == "The more we study verbs."
    header = "index\tpromptID\tpairID\tgenre\tsentence1\tsentence2\tlabel1\tgold_label\n"
    write_tsv(tmp_path / "glue/MNLI", "dev_mismatched.tsv", header + "0\t1\t1\tfiction\tA man.\tA person.\tneutral\t"
                                                                     "contradiction\n")
    mnli = load_split(get_task("mnli"), "validation_mismatched", str(tmp_path))
    assert mnli[0] == {"text_a": "A man.", "text_b": "A person.", "label": 2, "idx": 0}
    write_tsv(tmp_path / "glue/STS-B", "dev.tsv", "index\tsentence1\tsentence2\tscore\n"
                                                  "0\tA plane.\tAn air plane.\t5.000\n1\tA cat.\tA dog.\t0.4\n")
    stsb = load_split(get_task("stsb"), "validation", str(tmp_path))
    assert stsb["label"] == pytest.approx([5.0, 0.4])


def test_data_errors_name_the_file(tmp_path):
    rte = get_task("rte")
    write_tsv(tmp_path / "glue/RTE", "train.tsv", "index\tsentence1\tsentence2\tlabel\n")
    with pytest.raises(DataError, match=r"glue/RTE/dev.tsv: file not found"):
        load_split(rte, "validation", str(tmp_path))
    with pytest.raises(DataError, match=r"RTE/train.tsv.*no examples"):
        load_split(rte, "train", str(tmp_path))
    write_tsv(tmp_path / "glue/RTE", "dev.tsv", "index\tsentence1\tlabel\n0\tA.\tentailment\n")
    with pytest.raises(DataError, match=r"RTE/dev.tsv: missing column 'sentence2' \(columns: index, sentence1, lab"):
        load_split(rte, "validation", str(tmp_path))
    write_tsv(tmp_path / "glue/RTE", "dev.tsv", "index\tsentence1\tsentence2\tlabel\n0\tA.\tB.\tentailment\n"
                                                "1\tC.\tD.\tmaybe\n")
    with pytest.raises(DataError, match=r"RTE/dev.tsv: row 2: unknown label 'maybe' for task rte"):
        load_split(rte, "validation", str(tmp_path))
    write_tsv(tmp_path / "glue/STS-B", "dev.tsv", "sentence1\tsentence2\tscore\nA.\tB.\thigh\n")
    with pytest.raises(DataError, match="label 'high' is not a number"):
        load_split(get_task("stsb"), "validation", str(tmp_path))
    (tmp_path / "webnlg/dev").mkdir(parents=True)
    with pytest.raises(DataError, match="no WebNLG files"):
        load_split(get_task("webnlg"), "validation", str(tmp_path))


def test_missing_local_dir_falls_back_to_the_hub_with_a_warning(tmp_path, caplog):
    # Offline (as in the tests) the hub attempt fails, as a data error of one line naming the dataset.
    with pytest.raises(DataError, match=r"^nyu-mll/glue/rte:validation: cannot be loaded from the hub \(the hub is "
                                        r"offline: HF_HUB_OFFLINE/HF_DATASETS_OFFLINE\): [^\n]+$"):
        load_split(get_task("rte"), "validation", str(tmp_path / "nowhere"))
    assert "does not exist; loading nyu-mll/glue/rte from the hub instead" in caplog.text


def test_unknown_task():
    with pytest.raises(ValueError, match="unknown task 'imdb'"):
        get_task("imdb")
