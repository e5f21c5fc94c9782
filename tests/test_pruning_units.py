"""Pruning math: schedules, the straight-through gradient, SMP-S budgets, regularisers, sites, masks."""

import math

import pytest
import torch
from transformers import AutoModelForSeq2SeqLM, AutoModelForSequenceClassification

from simulated_ranks import run_ranks
from sparse_dist.config import REGULARIZED_METHODS, ConfigError, PruningConfig, load_config
from sparse_dist.distill.teacher import MaskTeacher
from sparse_dist.distributed.bitmask import PackedMask, word_dtype
from sparse_dist.distributed.select import ALL_TIES, Threshold
from sparse_dist.models.tiny import tiny_checkpoint
from sparse_dist.pruning.build import PRUNERS
from sparse_dist.pruning.masked_linear import MaskedLinear
from sparse_dist.pruning.schedule import SparsitySchedule, kept_count
from sparse_dist.pruning.scopes import build_grouping, sigmoid_mass, smp_budgets, uniform_ks
from sparse_dist.pruning.sites import Site, find_sites, sites_table
from tiny_pruning import even_fragments, two_block_model


def test_cubic_schedule_at_its_edges():
    s = SparsitySchedule(target_remaining=0.1, total_steps=100, initial_warmup_steps=10, final_warmup_steps=20)
    assert s.remaining(0) == s.remaining(10) == 1.0
    assert s.remaining(11) == pytest.approx(0.1 + 0.9 * (1 - 1 / 70) ** 3)
    assert s.remaining(45) == pytest.approx(0.1 + 0.9 * 0.5 ** 3)
    assert s.remaining(80) == s.remaining(100) == 0.1
    assert all(s.remaining(t) >= s.remaining(t + 1) for t in range(100))
    assert s.progress(10) == 0.0 and s.progress(80) == 1.0


def test_linear_schedule_and_update_steps():
    s = SparsitySchedule(0.5, 20, initial_warmup_steps=2, final_warmup_steps=8, kind="linear", prune_every_steps=3)
    assert s.remaining(7) == pytest.approx(0.5 + 0.5 * (1 - 5 / 10))
    updates = [t for t in range(1, 21) if s.is_update_step(t, every_step_after_ramp=False)]
    assert updates == [5, 8, 11, 12]  # every 3 steps in the ramp, then once at its end
    after = [t for t in range(1, 21) if s.is_update_step(t, every_step_after_ramp=True)]
    assert after == [5, 8, 11, *range(12, 21)]


def test_kept_count_rounds():
    assert kept_count(0.1, 1000) == 100 and kept_count(0.3333, 3) == 1 and kept_count(1.0, 7) == 7
    assert kept_count(0.0, 7) == 0


def test_straight_through_gradient_matches_hand_computation():
    torch.manual_seed(0)
    linear = torch.nn.Linear(3, 2)
    layer = MaskedLinear(linear, score_init=0.0)
    with torch.no_grad():
        layer.scores.copy_(torch.tensor([[0.5, -1.0, 2.0], [0.1, 3.0, -0.2]]))
    layer.mode, layer.tensor_index = "threshold", 0
    layer.rule = Threshold(k=3, n=6, value=0.5, tie_tensor=ALL_TIES, tie_position=0)  # keeps 3.0, 2.0, 0.5
    x = torch.tensor([[1.0, 2.0, -1.0], [0.5, -1.0, 2.0]])
    c = torch.tensor([[1.0, -2.0], [3.0, 0.5]])
    (layer(x) * c).sum().backward()
    mask = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    grad_effective = c.T @ x  # dL/dW' for L = sum(c * (x W'^T + b))
    assert torch.allclose(layer.scores.grad, grad_effective * linear.weight)  # straight through the mask
    assert torch.allclose(linear.weight.grad, grad_effective * mask)
    assert torch.allclose(layer(x), x @ (linear.weight * mask).T + linear.bias)


def _thresholded(linear, keep: int) -> MaskedLinear:
    layer = MaskedLinear(linear, score_init=0.0)
    with torch.no_grad():
        layer.scores.copy_(torch.randn(layer.scores.shape))
    layer.mode, layer.tensor_index = "threshold", 0
    cut = float(layer.scores.flatten().sort(descending=True).values[keep - 1])
    layer.rule = Threshold(k=keep, n=layer.scores.numel(), value=cut, tie_tensor=ALL_TIES, tie_position=0)
    return layer


@pytest.mark.parametrize("conv1d", [False, True], ids=["linear", "conv1d"])
@pytest.mark.parametrize("frozen", [False, True], ids=["trained", "frozen"])
@pytest.mark.parametrize("tokens", [(3, 4), (6,)], ids=["batch-seq", "flat-no-bias"])
def test_masked_layer_matches_autograd_through_the_masked_weight(conv1d, frozen, tokens):
    """Token inputs [batch, seq, in] (with a bias) or [tokens, in] (without), Linear or GPT-2's transposed
    Conv1D, weights trained (movement) or frozen (SMP): output and every gradient equal autograd's on
    ``x @ (W * M)^T + b`` with ``M`` straight through; a no-grad pass gives the same output."""
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    linear = Conv1D(5, 7) if conv1d else torch.nn.Linear(7, 5)
    if len(tokens) == 1:
        linear.bias = None
    linear.weight.requires_grad_(not frozen)
    layer = _thresholded(linear, keep=17)
    x = torch.randn(*tokens, 7, requires_grad=True)
    c = torch.randn(*tokens, 5)
    (layer(x) * c).sum().backward()

    weight = linear.weight.detach().clone().requires_grad_(not frozen)
    scores = layer.scores.detach().clone().requires_grad_()
    bias = linear.bias.detach().clone().requires_grad_() if linear.bias is not None else None
    x2 = x.detach().clone().requires_grad_()
    mask = layer.current_mask().float() + scores - scores.detach()  # forward: M; backward: identity to S
    masked = weight * mask
    y = (x2 @ masked + (0 if bias is None else bias)) if conv1d else torch.nn.functional.linear(x2, masked, bias)
    (y * c).sum().backward()
    torch.testing.assert_close(layer(x), y)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), y)
    torch.testing.assert_close(layer.scores.grad, scores.grad)
    torch.testing.assert_close(x.grad, x2.grad)
    if bias is not None:
        torch.testing.assert_close(linear.bias.grad, bias.grad)
    assert (linear.weight.grad is None) if frozen else torch.equal(linear.weight.grad == 0, ~layer.current_mask())
    if not frozen:
        torch.testing.assert_close(linear.weight.grad, weight.grad)


def test_masked_layer_keeps_no_copy_of_its_weight_or_scores_for_the_backward():
    """Under ZeRO-3 a layer's weight and scores are whole while it runs; a masked weight or ``sigmoid(S)`` (the
    regulariser's) kept until the backward would hold the whole of every prunable weight on every rank. What
    the backward keeps is the input and the layer's own weight and scores (no copies)."""
    torch.manual_seed(0)
    layer = _thresholded(torch.nn.Linear(64, 32), keep=1000)
    layer.track_sigmoid_mass = True
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        x = torch.randn(2, 3, 64, requires_grad=True)
        loss = layer(x).sum() + layer.sigmoid_mass
    pointers = {layer.weight.data_ptr(), layer.scores.data_ptr(), x.data_ptr()}
    assert len(saved) == 4 and all(t.data_ptr() in pointers for t in saved), [tuple(t.shape) for t in saved]
    loss.backward()
    s = torch.sigmoid(layer.scores.detach())
    expected = (torch.ones(2 * 3, 32).T @ x.detach().reshape(-1, 64)) * layer.weight.detach() + s * (1 - s) / s.numel()
    torch.testing.assert_close(layer.scores.grad, expected)


def sites_of(kinds: str, sizes: list[int]) -> list[Site]:
    return [Site(f"m{i}", str(i), kind, (1, n)) for i, (kind, n) in enumerate(zip(kinds, sizes))]


def test_smp_s_budgets_follow_the_formula():
    sites = sites_of("QQQKK", [100, 100, 100, 50, 150])
    mass = [30, 10, 20, 5, 45]  # R(S_l) per matrix, any unit
    ks = smp_budgets(sites, mass, remaining=0.4)
    # type Q: v_l = 0.4 * 3 * R_l / 60; type K: v_l = 0.4 * 2 * R_l / 50, capped at 1
    assert ks == [round(0.4 * 3 * 30 / 60 * 100), round(0.4 * 3 * 10 / 60 * 100), round(0.4 * 3 * 20 / 60 * 100),
                  round(0.4 * 2 * 5 / 50 * 50), round(min(1.0, 0.4 * 2 * 45 / 50) * 150)]
    assert smp_budgets(sites_of("QQ", [10, 10]), [1, 99], remaining=0.9)[1] == 10  # capped at the whole matrix


def test_sigmoid_mass_is_exact_and_independent_of_sharding():
    torch.manual_seed(3)
    scores = [torch.randn(1000), torch.randn(37) * 5]

    def on_rank(comm):
        pieces = [s.tensor_split(comm.world_size)[comm.rank] for s in scores]
        return sigmoid_mass(pieces, temperature=0.5, comm=comm)

    one, three = run_ranks(on_rank, 1)[0], run_ranks(on_rank, 3)[0]
    assert one == three
    for got, s in zip(one, scores):
        assert got / 2**24 == pytest.approx(float(torch.sigmoid(s.double() / 0.5).sum()), abs=len(s) * 2**-24)


def test_uniform_ks_per_scope():
    sites = sites_of("QKQ", [10, 20, 30])
    assert uniform_ks(build_grouping(sites, "local"), 0.5) == [5, 10, 15]
    per_type = build_grouping(sites, "per_type")
    assert per_type.group == [0, 1, 0] and per_type.tensor == [0, 0, 1] and uniform_ks(per_type, 0.5) == [20, 10]
    assert uniform_ks(build_grouping(sites, "global"), 0.25) == [15]


def regularised_pruner(config: PruningConfig, total_steps: int = 10):
    """The method's pruner on :func:`two_block_model`, masked layers in place (keeping every weight), scores
    drawn from N(0, 1)."""
    model = two_block_model()
    pruner = PRUNERS[config.method](config, model, find_sites(model), total_steps=total_steps, comm=None)
    pruner.prepare(model)
    with torch.no_grad():
        for i, layer in enumerate(pruner.layers):
            layer.scores.normal_(generator=torch.Generator().manual_seed(i))
            n = layer.scores.numel()
            layer.rule = Threshold(k=n, n=n, value=-math.inf, tie_tensor=ALL_TIES, tie_position=0)
    return pruner


def test_soft_movement_regulariser_is_lambda_times_mean_sigmoid_mass():
    config = PruningConfig(method="soft_movement", scope="global", target_remaining=0.2, regularizer_lambda=400.0,
                           soft_threshold=0.1)
    pruner = regularised_pruner(config)
    for layer in pruner.layers:  # the forward pass records each layer's sigmoid mass
        layer(torch.randn(2, layer.in_features))
    term = pruner.loss_terms(step=5)["regularizer"]
    mean_mass = sum(float(torch.sigmoid(layer.scores.detach()).mean()) for layer in pruner.layers) / 2
    assert float(term) == pytest.approx(400.0 * pruner.schedule.progress(5) * mean_mass)
    term.backward()
    assert all(layer.scores.grad is not None for layer in pruner.layers)


def test_smp_regulariser_has_no_temperature():
    """SMP's code: lambda_t mean_l mean(sigmoid(S_l)), the temperature p only in the SMP-S budgets. Its gradient
    is lambda_t sigmoid'(S) / (n_l L), whatever p (the paper's sigmoid(S / p) would divide it by about p)."""
    config = PruningConfig(method="smp", scope="per_type", target_remaining=0.2, regularizer_lambda=400.0,
                           temperature=4.0)
    pruner = regularised_pruner(config)
    for layer in pruner.layers:
        layer(torch.randn(2, layer.in_features))
    pruner.loss_terms(step=5)["regularizer"].backward()
    weight = 400.0 * (1 - (1 - 5 / 10) ** 3)  # lambda_t = lambda (1 - (1 - t/T)^3)
    for layer in pruner.layers:
        s = torch.sigmoid(layer.scores.detach())
        torch.testing.assert_close(layer.scores.grad, weight * s * (1 - s) / (s.numel() * len(pruner.layers)))


def test_a_mask_teacher_pass_leaves_the_students_state_and_regulariser_gradient_unchanged():
    """SMP with self-regularization: the teacher (an older mask) runs the student's own layers between the
    student's forward pass and the backward pass of the loss. The gradient on the scores must be what it is
    without that pass, regulariser included, and every masked layer must be left as it was."""
    model = AutoModelForSequenceClassification.from_pretrained(tiny_checkpoint("tiny-bert"), hidden_dropout_prob=0.0,
                                                               attention_probs_dropout_prob=0.0)
    config = PruningConfig(method="smp", scope="per_type", target_remaining=0.3, regularizer_lambda=400.0)
    generator = torch.Generator().manual_seed(0)
    batch = {"input_ids": torch.randint(5, model.config.vocab_size, (4, 12), generator=generator),
             "attention_mask": torch.ones(4, 12, dtype=torch.long), "labels": torch.tensor([0, 1, 1, 0])}

    def on_rank(comm):
        pruner = PRUNERS["smp"](config, model, find_sites(model), total_steps=10, comm=comm)
        pruner.prepare(model)
        pruner.fragments = even_fragments([(f"{s.name}.scores", layer.scores) for s, layer in
                                           zip(pruner.sites, pruner.layers)], comm.rank, comm.world_size)
        with torch.no_grad():
            for layer in pruner.layers:
                layer.scores.normal_(generator=generator)
        pruner.start()
        teacher = MaskTeacher(model, pruner, comm)
        teacher.copy_from(model)  # the teacher keeps the masks of step 0 (everything)
        pruner.step(5)  # the student's masks move on
        model.train()

        def score_grads(teacher_pass: bool, regulariser: bool = True) -> list[torch.Tensor]:
            model.zero_grad()
            outputs = model(**batch)
            if teacher_pass:
                before = [layer.snapshot() for layer in pruner.layers]
                assert not torch.equal(teacher.logits(batch), outputs.logits.detach())  # the older mask
                after = [layer.snapshot() for layer in pruner.layers]
                assert all(a.keys() == b.keys() and all(a[k] is b[k] for k in a) for a, b in zip(after, before))
                assert model.training
            terms = pruner.loss_terms(5) if regulariser else {}
            (outputs.loss + sum(terms.values())).backward()
            return [layer.scores.grad.clone() for layer in pruner.layers]

        return score_grads(False), score_grads(True), score_grads(False, regulariser=False)

    plain, with_teacher, task_only = run_ranks(on_rank, 1)[0]
    assert all(not torch.allclose(a, b) for a, b in zip(plain, task_only))  # the regulariser's part is there
    for a, b in zip(plain, with_teacher):
        assert torch.equal(a, b)


def soft_movement_masks(world_size: int, floor: float | None) -> list[dict]:
    """Soft movement at the end of its ramp (tau 0.5: a score passes if > 0) on ``world_size`` simulated ranks.
    The intermediate matrix has no positive score (six at -1, six at -2), the output matrix six of twelve.
    Per matrix: the whole mask assembled from the ranks' packed masks, and the mask its forward pass uses."""
    extra = {} if floor is None else {"soft_min_remaining": floor}
    config = PruningConfig(method="soft_movement", scope="global", soft_threshold=0.5, regularizer_lambda=0.0, **extra)
    scores = [torch.tensor([-1.0] * 6 + [-2.0] * 6), torch.tensor([0.5, -0.5] * 6)]

    def on_rank(comm):
        model = two_block_model()
        pruner = PRUNERS["soft_movement"](config, model, find_sites(model), total_steps=10, comm=comm)
        pruner.prepare(model)
        with torch.no_grad():
            for layer, values in zip(pruner.layers, scores):
                layer.scores.copy_(values.view_as(layer.scores))
        pruner.fragments = even_fragments([(f"{s.name}.scores", layer.scores) for s, layer in
                                           zip(pruner.sites, pruner.layers)], comm.rank, comm.world_size)
        pruner.start()
        pruner.step(10)
        out = []
        for site, fragment, mask, layer in zip(pruner.sites, pruner.fragments, pruner.masks, pruner.layers):
            whole = torch.zeros(site.numel, dtype=torch.int64)
            whole[fragment.start:fragment.start + fragment.numel] = mask.unpack().long()
            comm.all_reduce(whole)
            x = torch.randn(2, layer.in_features)
            forward = layer(x)
            expected = torch.nn.functional.linear(x, layer.weight * layer.current_mask(), layer.bias)
            out.append({"packed": whole.bool(), "forward": layer.current_mask().reshape(-1),
                        "forward_output_matches": bool(torch.equal(forward, expected))})
        return out

    ranks = run_ranks(on_rank, world_size)
    for other in ranks[1:]:  # every rank holds the same whole masks and masks its forward pass alike
        assert all(torch.equal(a["packed"], b["packed"]) and torch.equal(a["forward"], b["forward"])
                   for a, b in zip(other, ranks[0]))
    return ranks[0]


@pytest.mark.parametrize("floor, kept", [(None, 1), (0.25, 4), (0.0, 0)])
def test_soft_movement_keeps_a_floor_of_each_matrix(floor, kept):
    """The released code keeps int(0.005 n) + 1 of a matrix's highest scores when fewer pass tau (here 1 of 12;
    4 of 12 with a floor of 0.25; none with the floor off). Ties go to the lower index, on any number of ranks;
    a matrix above its floor keeps exactly what passes; the forward pass masks with the packed masks."""
    results = {ws: soft_movement_masks(ws, floor) for ws in (1, 2, 3)}
    for ws, (emptied, half) in results.items():
        assert emptied["packed"].tolist() == [True] * kept + [False] * (12 - kept), f"{ws} rank(s)"
        assert half["packed"].tolist() == [True, False] * 6, f"{ws} rank(s)"
        for matrix in (emptied, half):
            assert torch.equal(matrix["forward"], matrix["packed"]) and matrix["forward_output_matches"]


@pytest.mark.parametrize("method", ["movement", "smp", "soft_movement"])
def test_a_resumed_pruner_masks_its_forward_pass_with_the_saved_masks(method):
    """Resuming restores the masks and the selection rules, and the layers' forward pass uses them at once
    (before the first step after the resume, which is when they would otherwise be set)."""
    extra = {"soft_movement": {"soft_threshold": 0.5, "regularizer_lambda": 0.0},
             "smp": {"regularizer_lambda": 400.0}}.get(method, {})
    config = PruningConfig(method=method, scope="per_type" if method == "smp" else "global", target_remaining=0.3,
                           **extra)

    def on_rank(comm):
        def build():
            model = two_block_model()
            pruner = PRUNERS[method](config, model, find_sites(model), total_steps=10, comm=comm)
            pruner.prepare(model)
            with torch.no_grad():
                for i, layer in enumerate(pruner.layers):
                    layer.scores.normal_(generator=torch.Generator().manual_seed(i))
            pruner.fragments = even_fragments([(f"{s.name}.scores", layer.scores) for s, layer in
                                               zip(pruner.sites, pruner.layers)], comm.rank, comm.world_size)
            return pruner

        saved = build()
        saved.start()
        saved.step(6)
        resumed = build()
        resumed.load_state_dict([saved.state_dict()])
        return [(layer.current_mask().reshape(-1), mask.unpack()) for layer, mask in zip(resumed.layers, saved.masks)]

    for forward, packed in run_ranks(on_rank, 1)[0]:
        assert torch.equal(forward, packed) and 0 < int(packed.sum()) < packed.numel()


def test_movement_has_no_regulariser_and_keeps_per_matrix_by_default():
    """Sanh et al.: top-k per matrix and no regulariser; global is an option. Only soft movement and SMP
    regularise, and the pruner classes say so (the config's table of regularised methods agrees)."""
    config = load_config(None, ["pruning.method=movement"], world_size=1).pruning
    assert config.scope == "local" and config.regularizer_lambda is None
    global_scope = load_config(None, ["pruning.method=movement", "pruning.scope=global"], world_size=1).pruning
    assert global_scope.scope == "global"
    pruner = regularised_pruner(config)
    for layer in pruner.layers:
        layer(torch.randn(2, layer.in_features))
    assert pruner.loss_terms(1) == {} and all(layer.sigmoid_mass is None for layer in pruner.layers)
    assert {m for m, cls in PRUNERS.items() if cls.regularized} == set(REGULARIZED_METHODS)
    for overrides in (["pruning.method=soft_movement"], ["pruning.method=smp", "pruning.scope=local"]):
        assert load_config(None, overrides, world_size=1).pruning.regularizer_lambda == 400.0  # the papers'


@pytest.mark.parametrize("name, loader, kinds, count", [
    ("tiny-bert", AutoModelForSequenceClassification, {"Q", "K", "V", "O", "U", "D"}, 12),
    ("tiny-roberta", AutoModelForSequenceClassification, {"Q", "K", "V", "O", "U", "D"}, 12),
    ("tiny-t5", AutoModelForSeq2SeqLM, {"enc.self.q", "enc.self.k", "enc.self.v", "enc.self.o", "enc.ffn.wi",
                                        "enc.ffn.wo", "dec.self.q", "dec.self.k", "dec.self.v", "dec.self.o",
                                        "dec.cross.q", "dec.cross.k", "dec.cross.v", "dec.cross.o", "dec.ffn.wi",
                                        "dec.ffn.wo"}, 32),
])
def test_sites_are_the_block_matrices_only(name, loader, kinds, count):
    model = loader.from_pretrained(tiny_checkpoint(name))
    sites = find_sites(model)
    assert {s.kind for s in sites} == kinds and len(sites) == count
    names = " ".join(s.name for s in sites)
    for excluded in ("embeddings", "pooler", "classifier", "lm_head", "shared"):
        assert excluded not in names
    assert sites_table(sites).splitlines()[-1].split()[1:] == [str(count), f"{sum(s.numel for s in sites):,d}"]
    with pytest.raises(ValueError, match="no prunable matrices"):
        find_sites(torch.nn.Sequential(torch.nn.Linear(2, 2)))


def test_packed_masks_round_trip_and_count():
    torch.manual_seed(0)
    for n in (0, 1, 7, 8, 9, 1001):
        mask = torch.rand(n) < 0.3
        packed = PackedMask.pack(mask)
        assert packed.nbytes == (n + 7) // 8 and torch.equal(packed.unpack(), mask)
        assert packed.count() == int(mask.sum())
        other = torch.rand(n) < 0.5
        assert packed.flips(PackedMask.pack(other)) == int((mask ^ other).sum())


def test_packed_masks_every_byte_pattern_and_exact_zeroing():
    # Every value a byte of bits can take, in order: bit j of byte b is element 8 b + j.
    bits = (torch.arange(256).unsqueeze(1) >> torch.arange(8)) & 1
    mask = bits.reshape(-1).bool()
    packed = PackedMask.pack(mask)
    assert torch.equal(packed.bits, torch.arange(256, dtype=torch.uint8))
    assert torch.equal(packed.unpack(), mask) and packed.count() == 1024
    specials = torch.tensor([float("nan"), float("inf"), float("-inf"), -0.0, 1.5, -2.0, 3e38, 1e-45])
    for dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
        values = specials.to(dtype).repeat(256)
        words = packed.keep_words(word_dtype(dtype))
        assert words.dtype.itemsize == values.element_size() and words.numel() == 2048
        expected = torch.where(mask, values, torch.zeros((), dtype=dtype))
        values.view(word_dtype(dtype)).bitwise_and_(words)
        assert torch.equal(values.view(word_dtype(dtype)), expected.view(word_dtype(dtype)))  # +0.0, bit for bit


@pytest.mark.parametrize("overrides, message", [
    (["pruning.method=smp", "pruning.scope=global"], "pruning.scope: smp supports local, per_type, got 'global'"),
    (["pruning.method=magnitude", "pruning.target_remaining=0"], "pruning.target_remaining: must be in (0, 1]"),
    (["pruning.method=movement", "pruning.initial_warmup_steps=60", "pruning.final_warmup_steps=40",
      "training.max_steps=100"], "pruning.final_warmup_steps: initial + final warm-up must leave a ramp"),
    (["pruning.method=smp", "pruning.scope=local", "model.head=classifier"], "model.head: smp keeps the pretrained"),
    (["pruning.method=smp"], "pruning.scope: smp has no default scope: choose one of local, per_type, got 'auto'"),
    (["pruning.method=movement", "pruning.regularizer_lambda=400"],
     "pruning.regularizer_lambda: movement has no regulariser (only soft_movement and smp do); leave it unset, "
     "got 400.0"),
    (["pruning.method=platon", "pruning.regularizer_lambda=0"], "pruning.regularizer_lambda: platon has no regul"),
    (["pruning.method=soft_movement", "pruning.regularizer_lambda=-1"], "pruning.regularizer_lambda: must be >= 0"),
])
def test_bad_pruning_configs(overrides, message):
    with pytest.raises(ConfigError) as caught:
        load_config(None, overrides, world_size=1)
    assert message in str(caught.value)


def test_smp_resolves_the_label_word_head():
    assert load_config(None, ["pruning.method=smp", "pruning.scope=local"], world_size=1).model.head == "label_words"
    assert load_config(None, ["pruning.method=movement"], world_size=1).model.head == "classifier"
    assert math.isclose(load_config(None, [], world_size=1).pruning.score_lr, 1e-2)
