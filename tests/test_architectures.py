"""Published architectures with random weights (``model.init: random``).

Unit tests: every registered architecture builds, on the meta device (nothing allocated), with the
published shapes and parameter count; names are resolved and refused as documented; a random model's
tokenizer follows the rule of docs/architectures.md; a pretrained checkpoint that cannot be found is an
error, never a random model; the checkpoint signature records a random init. The distributed test trains
a random t5-small on 2 ranks under ZeRO-3, built partitioned (no rank holds a whole weight).
"""

import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSeq2SeqLM, BertTokenizer

from harness import run_distributed
from launch.train import main
from runs import tiny_config
from sparse_dist.checkpoint import run_signature, signature_differences
from sparse_dist.config import ConfigError
from sparse_dist.distributed.gather import full_numel
from sparse_dist.models.architectures import ARCHITECTURES, get_architecture
from sparse_dist.models.build import load_model_config, load_tokenizer

CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "tiny_t5_rte.yaml")
# The parameter counts published for these checkpoints, in millions (rounded to two decimals).
PUBLISHED_MILLIONS = {"bert-base-uncased": 109.48, "bert-large-uncased": 335.14, "roberta-large": 355.36,
                      "t5-small": 60.51, "t5-base": 222.90, "t5-large": 737.67, "t5-3b": 2851.60,
                      "t5-11b": 11307.32, "gpt2-medium": 354.82}
# What AutoModel builds for encoders and GPT-2 (the bare model, the published figure); whole LMs for the rest.
AUTO_CLASS = {"bert": AutoModel, "roberta": AutoModel, "gpt2": AutoModel, "t5": AutoModelForSeq2SeqLM,
              "llama": AutoModelForCausalLM}


def build_on_meta(name: str, **overrides) -> torch.nn.Module:
    architecture = ARCHITECTURES[name]
    with torch.device("meta"):
        return AUTO_CLASS[architecture.model_type].from_config(architecture.config(**overrides))


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_parameter_count_is_the_published_one(name):
    model = build_on_meta(name)
    assert all(p.is_meta for p in model.parameters())
    count = sum(p.numel() for p in model.parameters())
    assert count == ARCHITECTURES[name].parameters
    if name in PUBLISHED_MILLIONS:
        assert round(count / 1e6, 2) == PUBLISHED_MILLIONS[name]


def test_shapes_are_the_published_ones():
    shapes = {name: dict(build_on_meta(name).named_parameters()) for name in
              ("bert-large-uncased", "roberta-large", "t5-11b", "gpt2-medium",
               "TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T")}
    bert = shapes["bert-large-uncased"]
    assert bert["embeddings.word_embeddings.weight"].shape == (30522, 1024)
    assert bert["encoder.layer.23.intermediate.dense.weight"].shape == (4096, 1024)
    assert "encoder.layer.24.output.dense.weight" not in bert
    assert shapes["roberta-large"]["embeddings.position_embeddings.weight"].shape == (514, 1024)
    t5 = shapes["t5-11b"]
    assert t5["encoder.block.0.layer.0.SelfAttention.q.weight"].shape == (128 * 128, 1024)  # heads x d_kv
    assert t5["decoder.block.23.layer.2.DenseReluDense.wi.weight"].shape == (65536, 1024)
    assert t5["shared.weight"].shape == (32128, 1024)
    assert shapes["gpt2-medium"]["h.23.attn.c_attn.weight"].shape == (1024, 3 * 1024)  # Conv1D: (in, out)
    llama = shapes["TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T"]
    assert llama["model.layers.21.self_attn.k_proj.weight"].shape == (4 * 64, 2048)  # 4 key-value heads
    assert llama["lm_head.weight"].shape == (32000, 2048)  # not tied


def test_names_and_overrides():
    assert get_architecture("google-t5/t5-base") is ARCHITECTURES["t5-base"]
    assert get_architecture("FacebookAI/roberta-large") is ARCHITECTURES["roberta-large"]
    with pytest.raises(ValueError, match=r"^no published architecture 'someone/t5-base' is known; known: "
                                         r"bert-base-uncased, bert-large-uncased, roberta-base, "):
        get_architecture("someone/t5-base")
    assert ARCHITECTURES["t5-large"].config(num_layers=2).num_layers == 2
    with pytest.raises(ValueError, match=r"^t5-large: layers is not a t5 config key$"):
        ARCHITECTURES["t5-large"].config(layers=2)


def check(capsys, tmp_path, data_dir, *overrides: str) -> tuple[int, str]:
    """``launch.train --check`` in this process: exit status and stderr."""
    capsys.readouterr()
    status = main(["--check", "--config", CONFIG, f"job.run_dir={tmp_path / 'run'}",
                   f"data.local_dir={data_dir}", *overrides])
    return status, capsys.readouterr().err.strip()


def test_random_init_passes_the_checks_offline(capsys, tmp_path, data_dir):
    assert check(capsys, tmp_path, data_dir, "model.name_or_path=t5-large", "model.init=random") == (0, "")


def test_a_missing_pretrained_checkpoint_is_an_error_not_a_random_model(capsys, tmp_path, data_dir):
    status, err = check(capsys, tmp_path, data_dir, "model.name_or_path=t5-11b")  # model.init: pretrained
    assert status == 2 and "\n" not in err
    assert err.startswith("config error: model.name_or_path: cannot load 't5-11b': ")
    assert err.endswith("(model.init=random builds its published architecture with random weights, if that is "
                        "what you want)")


def test_an_unknown_name_with_random_init_lists_the_known_ones(capsys, tmp_path, data_dir):
    status, err = check(capsys, tmp_path, data_dir, "model.name_or_path=t5-medium", "model.init=random")
    assert (status, err) == (2, "config error: model.name_or_path: model.init=random: no published architecture "
                                f"'t5-medium' is known; known: {', '.join(ARCHITECTURES)}")


def test_a_tokenizer_is_chosen_for_random_models_only(capsys, tmp_path, data_dir):
    status, err = check(capsys, tmp_path, data_dir, "model.tokenizer=tiny-t5")
    assert (status, err) == (2, "config error: model.tokenizer: chooses the tokenizer of a random model only "
                                "(model.init=random); a pretrained checkpoint reads with its own; leave it unset, "
                                "got 'tiny-t5'")


def test_the_tokenizer_of_a_random_model(tmp_path):
    config = tiny_config(tmp_path, model="t5-small", task="rte").model
    config.init = "random"
    model_config = load_model_config(config)
    tokenizer = load_tokenizer(config, model_config)
    assert tokenizer.name_or_path.endswith("tiny-t5")  # the family's tiny tokenizer by default
    assert tokenizer.model_max_length == 512  # the published tokenizer's limit
    assert model_config.vocab_size == 32128 and len(tokenizer) < 32128  # the shape stays the published one
    assert (model_config.pad_token_id, model_config.eos_token_id, model_config.decoder_start_token_id) == (
        tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
    gpt2 = tiny_config(tmp_path, model="gpt2-medium", task="sst2").model
    gpt2.init = "random"
    gpt2_config = load_model_config(gpt2)
    assert gpt2_config.eos_token_id == 50256  # as published, until the tokenizer is chosen
    gpt2_tokenizer = load_tokenizer(gpt2, gpt2_config)
    assert gpt2_config.eos_token_id == gpt2_config.pad_token_id == gpt2_tokenizer.eos_token_id == 0

    words = [f"w{i}" for i in range(40_000)]  # more ids than bert-base's 30,522
    BertTokenizer(vocab={w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words])}
                  ).save_pretrained(tmp_path / "big_tokenizer")
    bert = tiny_config(tmp_path, model="bert-base-uncased").model
    bert.init, bert.tokenizer = "random", str(tmp_path / "big_tokenizer")
    with pytest.raises(ConfigError) as error:
        load_tokenizer(bert, load_model_config(bert))
    assert str(error.value) == (f"model.tokenizer: {tmp_path / 'big_tokenizer'} has 40005 tokens and "
                                "bert-base-uncased a vocabulary of 30522; its ids would not fit")


def test_a_random_run_and_a_pretrained_run_never_share_checkpoints(tmp_path):
    config = tiny_config(tmp_path)
    pretrained = run_signature(config, "fp32")
    config.model.init = "random"
    random = run_signature(config, "fp32")
    assert (pretrained["model.init"], random["model.init"]) == ("pretrained", "random")
    assert signature_differences(pretrained, random) == ["model.init is 'pretrained' there, 'random' here"]
    assert signature_differences(random, pretrained) == ["model.init is 'random' there, 'pretrained' here"]
    older = {key: value for key, value in pretrained.items() if key != "model.init"}  # before the key existed
    assert signature_differences(older, pretrained) == []


def train_random_t5_small(root: str) -> dict:
    """On every rank: two steps of a random t5-small under ZeRO-3; what each rank holds of it."""
    from sparse_dist.distributed.env import init_distributed
    from sparse_dist.trainer import Trainer

    env = init_distributed()
    config = tiny_config(root, world_size=env.world_size, model="t5-small", task="rte", zero={"stage": 3},
                         training={"max_steps": 2, "global_batch_size": 4, "micro_batch_size": 2},
                         data={"max_seq_length": 32, "max_target_length": 4, "max_eval_examples": 2},
                         eval={"max_new_tokens": 2})
    config.model.init = "random"
    trainer = Trainer(config, env)
    parameters = list(trainer.built.pretrained.parameters())
    held = {"full": sum(full_numel(p) for p in parameters), "local": sum(p.ds_tensor.numel() for p in parameters),
            "largest_local": max(p.ds_tensor.numel() for p in parameters),
            "largest_full": max(full_numel(p) for p in parameters)}
    result = trainer.train()
    dist.barrier()
    return {"held": held, "steps": result.steps, "warnings": trainer.built.warnings}


@pytest.mark.distributed
@pytest.mark.slow  # 77-103 s here: a 60M-parameter T5 built and trained on 2 ranks
def test_a_random_t5_small_trains_partitioned_under_zero3(tmp_path):
    ranks = run_distributed(train_random_t5_small, 2, str(tmp_path))
    for rank in ranks:
        held = rank["held"]
        assert held["full"] == ARCHITECTURES["t5-small"].parameters
        assert held["local"] <= held["full"] // 2 + 2 * 200  # a half, plus the partitions' padding
        assert held["largest_local"] == held["largest_full"] // 2  # the embedding table, split in two
        assert rank["steps"] == 2
        assert rank["warnings"][0].startswith("model.init=random: t5-small is its published architecture "
                                              "(60.51M parameters) with RANDOM weights")
    completed = json.loads((tmp_path / "COMPLETED").read_text())
    assert completed["model.init"] == "random"
    assert completed["warnings"][0] == ranks[0]["warnings"][0]
