"""The memory planner (``sparse-dist plan``): its exact lines equal what real engines allocate per rank, for
tiny BERT, T5 and GPT-2 at 1 and 2 ranks under ZeRO 0-3 with every pruning method; its command line."""

from __future__ import annotations

import pytest

from harness import run_distributed
from runs import tiny_config
from sparse_dist.cli import main as cli_main

TASKS = {"tiny-bert": "sst2", "tiny-t5": "webnlg", "tiny-gpt2": "webnlg"}
METHODS = ("none", "magnitude", "movement", "soft_movement", "smp", "platon", "pins")
STAGES = (0, 1, 2, 3)
# Every method at every stage on BERT; T5 and GPT-2 at every stage with one method of each kind of state
# (learned scores with trained weights, frozen weights with scores, statistics with a teacher); SMP on a
# task without label words, whose new task head trains with the scores (ZeRO-0: under ZeRO-2 and 3 the
# planner still misses part of that head's gradient and padding). One rank: the same kinds on fewer stages.
# 73 engines in all, each one optimizer step.
COMBINATIONS = {
    2: [("tiny-bert", s, m) for s in STAGES for m in METHODS]
    + [(model, s, m) for model in ("tiny-t5", "tiny-gpt2") for s in STAGES for m in ("movement", "smp", "pins")]
    + [("tiny-bert/conll2003", 0, "smp")],
    1: [("tiny-bert", s, m) for s in STAGES for m in ("none", "movement", "pins")]
    + [(model, s, m) for model in ("tiny-t5", "tiny-gpt2") for s in (0, 3) for m in ("smp", "pins")],
}
EXACT_LINES = ("weights", "gradients", "optimizer state", "mask scores", "score optimizer state",
               "importance statistics", "masks", "teacher partition")


def method_sections(method: str) -> dict:
    """Pruning (and, for PINS, its self-regularization teacher) of a one-step run that builds every state."""
    pruning = {"method": method}
    if method == "smp":
        pruning["scope"] = "local"
    if method in ("platon", "pins"):
        pruning.update(window_steps=1, prune_every_steps=1)
    sections = {"pruning": pruning}
    if method == "pins":
        sections["distill"] = {"self_regularization": True}
    return sections


def measure_every_combination(root: str, combinations: list[tuple[str, int, str]]) -> list[dict]:
    """On every rank: for each (model, stage, method), build the trainer, run one optimizer step (recording
    the gradients inside it), build the teacher, and compare the planner's exact lines with what is held."""
    import torch.distributed as dist

    from sparse_dist.distributed.env import init_distributed
    from sparse_dist.distributed.memory import GradientProbe, measure_allocated
    from sparse_dist.plan import plan_memory
    from sparse_dist.trainer import Trainer

    env = init_distributed()
    rows = []
    for case, stage, method in combinations:
        label = f"{case} ZeRO-{stage} {method}"
        model, _, task = case.partition("/")  # "model/task", or a model on its TASKS entry
        config = tiny_config(f"{root}/{model}_{task}_{stage}_{method}", world_size=env.world_size, model=model,
                             task=task or TASKS[model], zero={"stage": stage}, **method_sections(method))
        trainer = Trainer(config, env)
        probe = GradientProbe(trainer.engine)
        trainer.pruner.start()
        trainer.engine.train()
        batches = iter(trainer_batches(trainer, env))
        trainer.train_step([next(batches) for _ in range(config.grad_accum_steps)])
        probe.remove()
        trainer.distiller.on_evaluation(True)  # the self-regularization teacher is built at an improvement
        teachers = [t for t in (trainer.distiller.teacher, getattr(trainer.distiller, "self_teacher", None))
                    if t is not None]
        measured = measure_allocated(trainer.engine, trainer.pruner, teachers)
        measured["gradients"] = probe.peak["gradients"]
        measured["score optimizer state"] += probe.peak["score optimizer state"]
        planned = plan_memory(config, env.world_size, env.rank, on_gpu=False).bytes_by_name()
        rows.append({"label": label, "measured": {k: measured[k] for k in EXACT_LINES},
                     "planned": {k: planned[k] for k in EXACT_LINES}})
        del trainer, probe
        dist.barrier()
    return rows


def trainer_batches(trainer, env):
    from sparse_dist.data.sampler import TrainBatchSampler
    from sparse_dist.data.task_data import build_train_loader

    training = trainer.config.training
    sampler = TrainBatchSampler(len(trainer.task_data.train), training.global_batch_size, training.micro_batch_size,
                                env.rank, env.world_size, trainer.config.job.seed)
    return build_train_loader(trainer.task_data, sampler)


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.parametrize("world_size", [1, 2])
def test_planned_bytes_equal_allocated_bytes(world_size, tmp_path):
    combinations = COMBINATIONS[world_size]
    results = run_distributed(measure_every_combination, world_size, str(tmp_path), combinations)
    mismatches = []
    for rank, rows in enumerate(results):
        assert len(rows) == len(combinations)
        for row in rows:
            for line in EXACT_LINES:
                if row["planned"][line] != row["measured"][line]:
                    mismatches.append(f"rank {rank} {row['label']} {line}: planned {row['planned'][line]}, "
                                      f"allocated {row['measured'][line]}")
    assert mismatches == []
    # Every kind of state was there to compare: a zero on both sides everywhere would prove nothing.
    held = {line for rows in results for row in rows for line in EXACT_LINES if row["measured"][line] > 0}
    assert held == set(EXACT_LINES)


# --- unit tests: no ranks, the meta device only ----------------------------------------------------------------


def test_zero0_weights_are_the_models_parameters_and_adam_doubles_them(tmp_path):
    """ZeRO-0 in fp32 on one CPU: every parameter once, its gradient once, two Adam moments and a 4-byte step."""
    from sparse_dist.models.build import load_checkpoint_config
    from sparse_dist.plan import plan_memory

    config = tiny_config(tmp_path, pruning={"method": "magnitude"})
    numels = _parameter_numels(config)
    numel, tensors = sum(numels), len(numels)
    plan = plan_memory(config, world_size=1, on_gpu=False).bytes_by_name()
    hidden = load_checkpoint_config("tiny-bert").hidden_size
    assert numel > 2 * 12 * hidden * hidden  # more than the blocks' matrices: embeddings, norms, head
    assert plan["weights"] == 4 * numel
    assert plan["gradients"] == 4 * numel
    assert plan["optimizer state"] == 2 * 4 * numel + 4 * tensors
    assert plan["masks"] == 16_384 // 8  # 12 matrices, 16,384 prunable weights, one bit each
    assert plan["mask scores"] == plan["importance statistics"] == plan["teacher partition"] == 0


def _parameter_numels(config) -> list[int]:
    from sparse_dist.plan import build_meta_model

    model, _, _ = build_meta_model(config)
    assert all(p.is_meta for p in model.parameters())  # nothing allocated
    return [p.numel() for p in model.parameters()]


def test_zero3_partitions_shrink_with_the_world_size_and_pins_teacher_is_on_the_host(tmp_path):
    from sparse_dist.plan import plan_memory

    config = tiny_config(tmp_path, zero={"stage": 3}, **method_sections("pins"))
    numels = _parameter_numels(config)
    one, eight = (plan_memory(config, world_size=w, on_gpu=False) for w in (1, 8))
    assert one.line("teacher partition").device_bytes == 0
    assert one.line("teacher partition").host_bytes == 4 * sum(numels)
    # Every tensor is padded to a multiple of 8 and split in 8.
    assert eight.line("teacher partition").host_bytes == 4 * sum(-(-n // 8) for n in numels)
    assert eight.line("importance statistics").device_bytes == 3 * 4 * 16_384 // 8


def test_cpu_estimates_count_touched_bucket_pages_allocator_cache_and_baseline(tmp_path):
    """On CPUs the 5e8-element reduce bucket is resident only where gradients were written (and ZeRO-3's
    reduce-scatter copies those), glibc keeps freed whole parameters and gradients, and each rank holds the
    measured process baseline; a GPU holds the whole bucket and has none of the CPU lines."""
    from sparse_dist.plan import CPU_PROCESS_BASELINE_BYTES, plan_memory

    config = tiny_config(tmp_path, zero={"stage": 3})
    numel = sum(_parameter_numels(config))  # dense: every parameter is trained
    cpu = plan_memory(config, world_size=2, on_gpu=False)
    assert cpu.line("gradient buckets").device_bytes == 2 * 4 * numel
    assert cpu.line("allocator cache").device_bytes == 2 * 4 * numel
    assert cpu.line("process baseline").device_bytes == CPU_PROCESS_BASELINE_BYTES == 466 * 2**20
    gpu = plan_memory(config, world_size=2, on_gpu=True)
    assert gpu.line("gradient buckets").device_bytes == 500_000_000 * 2  # bf16, allocated whole
    assert {"allocator cache", "process baseline"}.isdisjoint(gpu.bytes_by_name())


def test_a_fixed_mmap_threshold_leaves_only_smaller_tensors_in_the_allocator_cache(tmp_path, monkeypatch, capsys):
    """With glibc's ``MALLOC_MMAP_THRESHOLD_`` set, a freed tensor at least that large goes back to the system:
    the cache counts only the parameters and gradients below it; the plan command reads the variable."""
    from sparse_dist.plan import malloc_mmap_threshold, plan_memory

    config = tiny_config(tmp_path, zero={"stage": 3})
    numels = _parameter_numels(config)  # dense: every parameter is trained, so each counts twice
    threshold = 4 * sorted(numels)[len(numels) // 2]  # the median tensor's bytes
    plan = plan_memory(config, world_size=2, on_gpu=False, mmap_threshold=threshold)
    assert plan.line("allocator cache").device_bytes == 2 * 4 * sum(n for n in numels if 4 * n < threshold) > 0
    assert plan_memory(config, world_size=2, on_gpu=False, mmap_threshold=1).line("allocator cache").device_bytes == 0
    assert malloc_mmap_threshold({"MALLOC_MMAP_THRESHOLD_": "131072"}) == 131072
    assert malloc_mmap_threshold({}) is None and malloc_mmap_threshold({"MALLOC_MMAP_THRESHOLD_": "x"}) is None
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "1")
    assert cli_main(["plan", "--config", "configs/tiny_bert_sst2.yaml", "--world-size", "2", "--cpu",
                     "zero.stage=3"]) == 0
    assert "MALLOC_MMAP_THRESHOLD_=1: larger freed tensors go back" in capsys.readouterr().out


def test_plan_command_prints_every_line_and_whether_it_fits(tmp_path, capsys):
    status = cli_main(["plan", "--config", "configs/tiny_pins_bert_rte.yaml", "--world-size", "2", "--cpu",
                       "--device-memory", "1MiB", "zero.stage=3"])
    out = capsys.readouterr().out
    assert status == 0
    for line in ("weights", "gradients", "optimizer state", "mask scores", "importance statistics", "masks",
                 "teacher partition", "activations", "total exact"):
        assert f"\n  {line} " in out
    assert "does NOT fit in 1.00 MiB" in out


def test_every_example_of_the_help_runs(capsys):
    from sparse_dist.cli import plan

    examples = [line.split("#")[0].split()[2:] for line in plan.__doc__.splitlines()
                if line.strip().startswith("sparse-dist plan ")]
    assert len(examples) == 3
    for example in examples:
        assert cli_main(["plan", *example]) == 0, example
        assert "fits in 80.00 GiB" in capsys.readouterr().out


def test_plan_json_is_the_plan_of_the_rank_asked_for(capsys):
    import json

    status = cli_main(["plan", "--config", "configs/tiny_pins_bert_rte.yaml", "--world-size", "2", "--cpu", "--rank",
                       "1", "--json", "zero.stage=3"])
    plan = json.loads(capsys.readouterr().out)  # stdout is the JSON alone
    assert status == 0 and plan["rank"] == 1 and plan["world_size"] == 2 and plan["fits"] is True
    exact = [line for line in plan["lines"] if line["kind"] == "exact"]
    assert [line["name"] for line in exact] == list(EXACT_LINES)
    assert plan["device_bytes_exact"] == sum(line["device_bytes"] for line in exact)


def test_plan_help_shows_a_real_example(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["plan", "--help"])
    assert exit_info.value.code == 0
    assert "sparse-dist plan --config configs/pins_t5_large.yaml --world-size 8" in capsys.readouterr().out


@pytest.mark.parametrize("arguments, message", [
    (["--device-memory", "eighty"], "error: --device-memory: not a size: 'eighty'"),
    (["--world-size", "0"], "error: --world-size must be >= 1"),
    (["pruning.method=pruned"], "config error: pruning.method: must be one of"),
    (["model.name_or_path=no-such-model"], "config error: model.name_or_path: cannot load 'no-such-model'"),
])
def test_plan_refuses_bad_input_with_one_line(arguments, message, capsys):
    base = ["plan", "--config", "configs/tiny_bert_sst2.yaml", "--cpu"]
    if arguments[0] != "--world-size":
        base += ["--world-size", "2"]
    status = cli_main(base + arguments)
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith(message) and err.count("\n") == 1
