"""PLATON/PINS importance and the distillation losses against hand computations."""

import math

import pytest
import torch

from simulated_ranks import run_ranks
from sparse_dist.config import ConfigError, load_config
from sparse_dist.distill.losses import adaptive_kd, loss_units, standard_kd
from sparse_dist.pruning.importance import ImportancePruner, ImportanceState, pins_importance, platon_importance
from sparse_dist.pruning.schedule import kept_count
from sparse_dist.pruning.sites import find_sites
from tiny_pruning import even_fragments, two_block_model


def reference_platon(importances: list[list[float]], window: int, beta1: float, beta2: float):
    """PLATON's update_ipt_with_local_window, element by element, in plain Python."""
    n = len(importances[0])
    ipt, avg, unc = [0.0] * n, [0.0] * n, [0.0] * n
    for step, current in enumerate(importances, start=1):
        local = step % window
        for i in range(n):
            if local == 0:
                avg[i] = beta1 * avg[i] + (1 - beta1) * ipt[i]
                unc[i] = beta2 * unc[i] + (1 - beta2) * abs(ipt[i] - avg[i])
                ipt[i] = current[i]
            else:
                ipt[i] = (ipt[i] * local + current[i]) / (local + 1)
    return ipt, avg, unc


def test_window_ema_and_uncertainty_follow_the_released_code():
    torch.manual_seed(0)
    steps = [torch.rand(5).tolist() for _ in range(23)]
    state = ImportanceState(5, torch.device("cpu"))
    for step, values in enumerate(steps, start=1):
        state.observe(torch.tensor(values), step, window_steps=4, beta1=0.85, beta2=0.95)
    ipt, avg, unc = reference_platon(steps, 4, 0.85, 0.95)
    assert state.window.tolist() == pytest.approx(ipt, rel=1e-6)
    assert state.average.tolist() == pytest.approx(avg, rel=1e-6)
    assert state.uncertainty.tolist() == pytest.approx(unc, rel=1e-6)
    assert state.score(0.95).tolist() == pytest.approx([a * u for a, u in zip(avg, unc)], rel=1e-6)
    assert state.score(1.0).tolist() == pytest.approx(avg, rel=1e-6)


def masks_over_steps(overrides: list[str], steps: int) -> list[dict]:
    """An importance pruner on one simulated rank, fed random importance as its optimizer tap would; after
    every step: whether a new mask was chosen, the kept elements, and the scores it could choose from."""
    config = load_config(None, [*overrides, f"training.max_steps={steps}"], world_size=1).pruning

    def on_rank(comm):
        model = two_block_model()
        pruner = ImportancePruner(config, model, find_sites(model), steps, comm)
        pruner.fragments = even_fragments([(f"{s.name}.weight", model.get_submodule(s.name).weight)
                                           for s in pruner.sites], comm.rank, comm.world_size)
        pruner.states = [ImportanceState(f.numel, torch.device("cpu")) for f in pruner.fragments]
        pruner.start()
        generator, records = torch.Generator().manual_seed(0), []
        for step in range(1, steps + 1):
            for state in pruner.states:
                state.observe(torch.rand(state.window.numel(), generator=generator), step, config.window_steps,
                              config.beta1, config.beta2)
            updates = pruner.updates
            pruner.step(step)
            records.append({"step": step, "chosen": pruner.updates > updates, "target": pruner.target,
                            "kept": torch.cat([m.unpack() for m in pruner.masks]),
                            "scores": torch.cat([s.score(config.beta2) for s in pruner.states])})
        return records

    return run_ranks(on_rank, 1)[0]


@pytest.mark.parametrize("method", ["platon", "pins"])
def test_masks_come_only_after_an_importance_update(method):
    """Defaults (window 10, no warm-up): until the first EMA update at step 10 every score is 0, so no mask is
    chosen; during the ramp masks change at window ends only, after it when the EMA or the target changes."""
    records = masks_over_steps([f"pruning.method={method}", "pruning.final_warmup_steps=15"], steps=40)
    assert [r["step"] for r in records if r["chosen"]] == [10, 20, 25, 30, 40]  # the ramp ends at step 25
    assert all(bool(r["kept"].all()) for r in records[:9])
    for r in records[9:]:  # the global top-k of Ibar * U (random importance: no ties)
        k = kept_count(r["target"], r["kept"].numel())
        assert int(r["kept"].sum()) == k
        assert torch.equal(r["kept"], r["scores"] >= r["scores"].topk(k).values[-1])
    every_second_window = masks_over_steps([f"pruning.method={method}", "pruning.prune_every_steps=20",
                                            "pruning.final_warmup_steps=15"], steps=40)
    assert [r["step"] for r in every_second_window if r["chosen"]] == [20, 25, 30, 40]


@pytest.mark.parametrize("overrides, message", [
    (["pruning.prune_every_steps=1"], "pruning.prune_every_steps: platon updates masks at window ends: must be a "
                                      "multiple of pruning.window_steps=10, got 1"),
    (["pruning.window_steps=4", "pruning.prune_every_steps=6"], "must be a multiple of pruning.window_steps=4"),
    (["training.max_steps=8"], "pruning.window_steps: platon chooses masks at window ends; the first must come by "
                               "training.max_steps=8, got 10"),
])
def test_importance_settings_that_cannot_follow_the_windows_are_rejected(overrides, message):
    with pytest.raises(ConfigError) as caught:
        load_config(None, ["pruning.method=platon", *overrides], world_size=1)
    assert message in str(caught.value)
    assert load_config(None, ["pruning.method=pins"], world_size=1).pruning.prune_every_steps == 10
    assert load_config(None, ["pruning.method=magnitude"], world_size=1).pruning.prune_every_steps == 1
    with pytest.raises(ConfigError, match="pruning.prune_every_steps: movement updates its masks at every step"):
        load_config(None, ["pruning.method=movement", "pruning.prune_every_steps=2"], world_size=1)


def test_pins_score_is_minus_w_g_plus_eta_g_squared():
    w, g = torch.tensor([0.5, -1.0, 0.0, 2.0]), torch.tensor([0.2, 0.3, -1.0, -0.1])
    eta = 0.1
    expected = [-0.5 * 0.2 + eta * 0.04, 1.0 * 0.3 + eta * 0.09, 0.0 + eta * 1.0, 2.0 * 0.1 + eta * 0.01]
    assert pins_importance(w, g, eta, signed=True).tolist() == pytest.approx(expected)
    assert pins_importance(w, g, eta, signed=False).tolist() == pytest.approx([abs(v) for v in expected])
    assert platon_importance(w, g).tolist() == pytest.approx([0.1, 0.3, 0.0, 0.2])


def test_adaptive_kd_equals_a_hand_computation():
    student = torch.tensor([[2.0, 0.0, -1.0], [0.1, 0.2, 0.3]])
    teacher = torch.tensor([[1.0, 1.0, 0.0], [3.0, -1.0, 0.0]])
    labels = torch.tensor([0, 2])
    T = 2.0
    total = 0.0
    for s, t, y in zip(student, teacher, labels):
        p = torch.softmax(s, -1)
        alpha = 1 - float(-(p * p.log()).sum()) / math.log(3)
        soft_ce = -float((torch.softmax(t / T, -1) * torch.log_softmax(s / T, -1)).sum()) * T**2
        ce = -float(torch.log_softmax(s, -1)[y])
        total += alpha * soft_ce + (1 - alpha) * ce
    parts = adaptive_kd(student, teacher, labels, regression=False, temperature=T)
    assert float(parts["loss"]) == pytest.approx(total / 2)
    confident = torch.tensor([[20.0, -20.0, -20.0]])
    assert float(adaptive_kd(confident, teacher[:1], labels[:1], False, T)["alpha"]) == pytest.approx(1, abs=1e-6)


def test_adaptive_kd_per_target_token_excludes_padding():
    torch.manual_seed(1)
    student, teacher = torch.randn(2, 3, 5), torch.randn(2, 3, 5)
    labels = torch.tensor([[1, 4, -100], [0, -100, -100]])
    keep = labels != -100
    flat = adaptive_kd(student[keep], teacher[keep], labels[keep], regression=False, temperature=2.0)
    assert float(adaptive_kd(student, teacher, labels, False, 2.0)["loss"]) == pytest.approx(float(flat["loss"]))


def test_standard_kd_and_regression():
    student, teacher = torch.tensor([[1.0, -1.0]]), torch.tensor([[0.0, 2.0]])
    T = 2.0
    kl = float(torch.nn.functional.kl_div(torch.log_softmax(student / T, -1), torch.softmax(teacher / T, -1),
                                          reduction="batchmean"))
    ce = float(torch.nn.functional.cross_entropy(student, torch.tensor([1])))
    parts = standard_kd(student, teacher, torch.tensor([1]), False, 0.5, 0.5, T)
    assert float(parts["loss"]) == pytest.approx(0.5 * ce + 0.5 * T**2 * kl)
    reg = adaptive_kd(torch.tensor([[1.0], [2.0]]), torch.tensor([[1.5], [2.0]]), torch.tensor([0.0, 2.0]), True, T)
    assert float(reg["loss"]) == pytest.approx(0.5 * (0.25 / 2) + 0.5 * (1.0 / 2))



def _tiny_t5_loss(student, teacher, labels):
    from transformers import AutoModelForSeq2SeqLM

    from sparse_dist.models.tiny import tiny_checkpoint

    model = AutoModelForSeq2SeqLM.from_pretrained(tiny_checkpoint("tiny-t5")).eval()
    inputs = labels.clamp(min=3)  # any input that belongs to its row
    with torch.no_grad():
        return {"loss": model(input_ids=inputs, labels=labels).loss}


# Each case: the loss of (student logits, teacher logits, labels), and which labels it is given.
LOSSES = {
    "standard_kd_tokens": (lambda s, t, y: standard_kd(s, t, y, False, 0.5, 0.5, 2.0), lambda y: y),
    "adaptive_kd_tokens": (lambda s, t, y: adaptive_kd(s, t, y, False, 2.0), lambda y: y),
    "standard_kd_classes": (lambda s, t, y: standard_kd(s[:, 0], t[:, 0], y, False, 0.5, 0.5, 2.0),
                            lambda y: y[:, 0]),
    "adaptive_kd_regression": (lambda s, t, y: adaptive_kd(s[:, 0, :1], t[:, 0, :1], y, True, 2.0),
                               lambda y: y[:, 0].float()),
    "t5_model": (_tiny_t5_loss, lambda y: y),
}


@pytest.mark.parametrize("case", LOSSES)
def test_micro_batch_means_weighted_by_their_loss_units_give_the_global_mean(case):
    # Gradient accumulation in the trainer rests on this: every loss is a mean over loss_units of its batch,
    # so micro-batch losses weighted by their share of the units sum to the loss of the whole batch.
    loss, labels_of = LOSSES[case]
    torch.manual_seed(2)
    tokens = torch.randint(3, 7, (6, 5))
    tokens[torch.arange(5) >= torch.tensor([1, 5, 2, 4, 3, 5])[:, None]] = -100  # ragged targets, padded
    student, teacher, labels = torch.randn(6, 5, 7), torch.randn(6, 5, 7), labels_of(tokens)
    whole = loss(student, teacher, labels)
    micro = [slice(0, 2), slice(2, 3), slice(3, 6)]
    parts = [loss(student[m], teacher[m], labels[m]) for m in micro]
    units = [loss_units(labels[m]) for m in micro]
    assert loss_units(labels) == sum(units) == (20 if labels.dim() == 2 else 6)
    for name in whole:
        weighted = sum(float(part[name]) * count for part, count in zip(parts, units)) / sum(units)
        assert weighted == pytest.approx(float(whole[name]), rel=1e-5), name
