"""The proxy evaluator: determinism, BatchNorm recalibration, caching, failures, data isolation, shipping."""

from __future__ import annotations

import copy
import dataclasses
import gc
import math
import pickle

import numpy as np
import pytest
import torch
from torch import nn

from acp.core.architecture import ModelIdentity
from acp.data import ImageData, load_data, make_splits
from acp.errors import UserError
from acp.models import create_model
from acp.propose.criteria import make_criterion
from acp.proxy.data import ProxyData
from acp.proxy.evaluator import (
    FAILED_SCORE,
    ProxyEvaluator,
    ProxySettings,
    Result,
    combined_score,
    evaluate_widths,
    recalibrate_batchnorm,
)
from acp.prune import materialize, space_for

IDENTITY = ModelIdentity("resnet8_cifar", 10, (3, 16, 16), {})
SETTINGS = ProxySettings(calibration_batches=4, calibration_batch_size=32, eval_batch_size=64, threads=1)


@pytest.fixture(scope="module")
def digits():
    data = load_data("digits:16")
    return data, make_splits(data, "random:0.2", seed=0)


@pytest.fixture(scope="module")
def setup(digits):
    data, splits = digits
    torch.manual_seed(0)
    model = create_model("resnet8_cifar", 10)
    with torch.no_grad():  # non-trivial BN statistics, so "not recalibrated" differs from "recalibrated"
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    space = space_for(model, IDENTITY, None)
    criterion = make_criterion("l1", space, model=model)
    proxy_data = ProxyData.from_image_data(
        data, splits.train, calibration_images=SETTINGS.calibration_images, validation_images=200, seed=3
    )
    return model, space, criterion, proxy_data


def make_evaluator(setup, **changes) -> ProxyEvaluator:
    model, space, criterion, proxy_data = setup
    return ProxyEvaluator(
        model, space, criterion, proxy_data, dataclasses.replace(SETTINGS, **changes), identity=IDENTITY
    )


def half_widths(space) -> np.ndarray:
    return space.uniform_widths(0.5)


# --- settings and data ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"calibration_batches": -1}, "calibration_batches"),
        ({"calibration_batch_size": 0}, "calibration_batch_size"),
        ({"eval_batch_size": 2.5}, "eval_batch_size"),
        ({"score": "top5"}, "score"),
        ({"threads": 0}, "threads"),
        ({"recalibrate_bn": 1}, "recalibrate_bn"),
        ({"finetune_momentum": 1.0}, "finetune_momentum"),
        ({"finetune_steps": 2, "finetune_lr": 0.0}, "finetune_lr"),
        ({"calibration_batches": 0}, "calibration_batches"),  # recalibration needs batches
    ],
)
def test_bad_settings_name_the_field(changes, field):
    with pytest.raises(UserError, match=rf"^\[proxy\]\.{field}\b"):
        ProxySettings(**changes)


def test_settings_from_a_table_reject_unknown_keys():
    assert ProxySettings.from_table({"calibration_batches": 3}).calibration_batches == 3
    with pytest.raises(UserError, match=r"^unknown key \[proxy\]\.batches \(did you mean"):
        ProxySettings.from_table({"batches": 3})


def test_proxy_data_slices_are_disjoint_stratified_and_from_the_training_split(digits):
    data, splits = digits
    proxy = ProxyData.from_image_data(
        data, splits.train, calibration_images=100, validation_images=300, seed=1
    )
    assert proxy.calibration_images.shape == (100, 3, 16, 16)
    assert proxy.validation_images.shape == (300, 3, 16, 16)
    assert proxy.calibration_images.dtype == torch.float32 and proxy.validation_images.is_contiguous()
    # find each slice image in the full data set: every one comes from the training indices, none twice
    normalized, _ = data.tensors()
    where: dict[bytes, list[int]] = {}
    for index, image in enumerate(normalized.numpy()):
        where.setdefault(image.tobytes(), []).append(index)
    train = set(splits.train.tolist())

    def origin(images):
        return [next(i for i in where[image.tobytes()] if i in train) for image in images.numpy()]

    calibration, validation = origin(proxy.calibration_images), origin(proxy.validation_images)
    assert not set(calibration) & set(validation)
    assert np.bincount(proxy.validation_labels.numpy(), minlength=10).tolist() == [30] * 10
    assert np.bincount(proxy.calibration_labels.numpy(), minlength=10).tolist() == [10] * 10
    assert proxy.validation_labels.tolist() == data.labels[validation].tolist()
    description = proxy.description
    assert (description["calibration_images"], description["validation_images"], description["seed"]) == (
        100,
        300,
        1,
    )
    assert description["train_size"] == len(splits.train)
    again = ProxyData.from_image_data(
        data, splits.train, calibration_images=100, validation_images=300, seed=1
    )
    assert again.fingerprint() == proxy.fingerprint() and again.description == description


def test_proxy_data_refuses_more_images_than_the_training_split(digits):
    data, splits = digits
    with pytest.raises(UserError, match=r"training split has only 1438"):
        ProxyData.from_image_data(data, splits.train, calibration_images=1000, validation_images=1000)
    with pytest.raises(UserError, match="validation_images must be a positive integer"):
        ProxyData.from_image_data(data, splits.train, calibration_images=10, validation_images=0)


def test_evaluator_refuses_data_with_too_few_calibration_images(setup):
    model, space, criterion, proxy_data = setup
    settings = dataclasses.replace(SETTINGS, calibration_batches=5)
    with pytest.raises(UserError, match=r"5 calibration batches of 32 images \(160\).*has 128"):
        ProxyEvaluator(model, space, criterion, proxy_data, settings)


def test_the_test_split_is_not_reachable_from_the_evaluator(digits, setup):
    data, splits = digits
    model, space, criterion, _ = setup
    test_images = np.full((7, 16, 16, 3), 201, dtype=np.uint8)
    holder = ImageData(data.images, data.labels, data.classes, "digits:16", mean=data.mean, std=data.std)
    holder.test = ImageData(test_images, np.zeros(7, dtype=np.int64), data.classes, "digits:16#test")
    proxy = ProxyData.from_image_data(
        holder, splits.train, calibration_images=SETTINGS.calibration_images, validation_images=200
    )
    evaluator = ProxyEvaluator(model, space, criterion, proxy, SETTINGS)
    evaluator.evaluate(half_widths(space))
    seen: set[int] = set()
    stack: list = [evaluator]
    while stack:
        item = stack.pop()
        if id(item) in seen or isinstance(item, type):
            continue
        seen.add(id(item))
        assert not isinstance(item, ImageData), "an ImageData (which carries .test) is reachable"
        assert item is not holder.test.images
        stack.extend(gc.get_referents(item))
    # and the images themselves are not in what a worker receives
    assert test_images[0].tobytes() not in pickle.dumps(evaluator)


# --- evaluation --------------------------------------------------------------------------------------


def test_result_fields_and_costs(setup):
    model, space, criterion, proxy_data = setup
    evaluator = make_evaluator(setup)
    widths = half_widths(space)
    result = evaluator.evaluate(widths)
    assert result.ok and result.status == "ok" and not result.cached
    assert result.widths == tuple(int(w) for w in widths)
    assert (result.macs, result.params) == space.cost(widths)
    correct = round(result.accuracy * 200)
    assert result.accuracy == correct / 200
    assert result.score == combined_score(correct, result.loss, 200, "loss") == -result.loss  # the default
    assert result.seconds > 0 and math.isfinite(result.loss)
    assert result.to_dict()["widths"] == list(result.widths)
    description = evaluator.describe()
    assert description["data"]["validation_images"] == 200 and description["criterion"] == "l1"
    assert description["settings"]["calibration_batches"] == 4 and description["token"] == evaluator.token


def test_score_formula_orders_by_accuracy_then_loss():
    assert combined_score(51, 100.0, 100, "accuracy") > combined_score(50, 0.0, 100, "accuracy")
    assert combined_score(50, 0.5, 100, "accuracy") > combined_score(50, 0.6, 100, "accuracy")
    assert combined_score(50, 0.0, 100, "accuracy") == 0.51
    assert combined_score(50, 0.25, 100, "loss") == -0.25


def test_evaluation_is_deterministic_across_evaluators(setup):
    model, space, criterion, proxy_data = setup
    widths = half_widths(space)
    first = make_evaluator(setup).evaluate(widths)
    rebuilt = ProxyEvaluator(
        copy.deepcopy(model), space, make_criterion("l1", space, model=model), proxy_data, SETTINGS
    )
    second = rebuilt.evaluate(widths)
    assert not second.cached
    assert (first.score, first.accuracy, first.loss) == (second.score, second.accuracy, second.loss)


def test_identical_widths_hit_the_cache(setup):
    evaluator = make_evaluator(setup)
    space = evaluator.space
    widths = half_widths(space)
    first = evaluator.evaluate(widths)
    second = evaluator.evaluate([int(w) for w in widths])
    third = evaluator.evaluate({group.id: int(w) for group, w in zip(space.groups, widths)})
    assert not first.cached and second.cached and third.cached
    assert second == Result(**{**first.__dict__, "cached": True}) == third
    assert (evaluator.evaluations, evaluator.cache_hits, evaluator.cache_len) == (1, 2, 1)
    other = evaluator.evaluate(space.uniform_widths(0.75))
    assert not other.cached and evaluator.evaluations == 2


def test_cache_is_bounded(setup):
    evaluator = make_evaluator(setup, cache_size=1)
    space = evaluator.space
    evaluator.evaluate(half_widths(space))
    evaluator.evaluate(space.full_widths())
    assert not evaluator.evaluate(half_widths(space)).cached
    assert evaluator.cache_len == 1


def test_recalibrated_statistics_equal_a_direct_computation(setup):
    model, space, criterion, proxy_data = setup
    evaluator = make_evaluator(setup)
    widths = half_widths(space)
    recalibrated = evaluator.pruned_model(widths)

    # Direct: run the same batches through a fresh copy with BN in train mode (normalizing by batch
    # statistics, so BN inputs do not depend on running statistics) and average per-batch moments.
    fresh = materialize(model, evaluator.architecture(widths), space).eval()
    inputs: dict[str, list[torch.Tensor]] = {}
    for name, module in fresh.named_modules():
        if isinstance(module, nn.BatchNorm2d):
            module.train()
            module.register_forward_pre_hook(
                lambda m, args, name=name: inputs.setdefault(name, []).append(args[0])
            )
    batches = proxy_data.calibration_batches(SETTINGS.calibration_batch_size, SETTINGS.calibration_batches)
    with torch.no_grad():
        for batch in batches:
            fresh(batch)
    norms = dict(recalibrated.named_modules())
    assert len(inputs) == len([m for m in recalibrated.modules() if isinstance(m, nn.BatchNorm2d)]) > 0
    for name, seen in inputs.items():
        assert len(seen) == SETTINGS.calibration_batches
        means = torch.stack([x.double().mean(dim=(0, 2, 3)) for x in seen]).mean(0)
        variances = torch.stack([x.double().transpose(0, 1).flatten(1).var(dim=1) for x in seen]).mean(0)
        norm = norms[name]
        assert not norm.training and norm.momentum == 0.1
        assert int(norm.num_batches_tracked) == SETTINGS.calibration_batches
        torch.testing.assert_close(norm.running_mean.double(), means, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(norm.running_var.double(), variances, rtol=1e-5, atol=1e-6)


def test_without_recalibration_statistics_are_inherited(setup):
    model, space, criterion, proxy_data = setup
    widths = half_widths(space)
    evaluator = make_evaluator(setup, recalibrate_bn=False)
    kept = evaluator.pruned_model(widths)
    reference = materialize(model, evaluator.architecture(widths), space)
    for (name, tensor), (_, expected) in zip(kept.state_dict().items(), reference.state_dict().items()):
        assert torch.equal(tensor, expected), name
    assert evaluator.evaluate(widths).score != make_evaluator(setup).evaluate(widths).score


def test_recalibrate_leaves_dropout_off():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.9), nn.Conv2d(4, 2, 1), nn.BatchNorm2d(2)
    )
    batches = [torch.randn(8, 3, 6, 6) for _ in range(3)]
    recalibrate_batchnorm(model, batches)
    reference = copy.deepcopy(model)
    reference[2] = nn.Identity()
    recalibrate_batchnorm(reference, batches)
    assert torch.equal(model[4].running_mean, reference[4].running_mean)
    assert not model.training and not model[1].training


def test_finetune_steps_are_deterministic_and_keep_the_global_rng(setup):
    space = setup[1]
    widths = half_widths(space)
    evaluator = make_evaluator(setup, finetune_steps=3, finetune_lr=0.05)
    state = torch.get_rng_state()
    first = evaluator.evaluate(widths)
    assert torch.equal(state, torch.get_rng_state())
    second = make_evaluator(setup, finetune_steps=3, finetune_lr=0.05).evaluate(widths)
    assert first.ok and first.score == second.score
    assert first.score != make_evaluator(setup).evaluate(widths).score


def test_loss_score(setup):
    result = make_evaluator(setup, score="loss").evaluate(half_widths(setup[1]))
    assert result.score == -result.loss


# --- failures ------------------------------------------------------------------------------------


def test_non_finite_outputs_fail_without_raising(setup):
    model, space, criterion, proxy_data = setup
    broken = copy.deepcopy(model)
    with torch.no_grad():
        broken.fc.weight.fill_(float("nan"))
    evaluator = ProxyEvaluator(broken, space, criterion, proxy_data, SETTINGS)
    result = evaluator.evaluate(half_widths(space))
    assert result.status.startswith("failed: NonFiniteScore: non-finite validation loss")
    assert result.score == FAILED_SCORE and math.isnan(result.accuracy) and not result.ok
    assert (result.macs, result.params) == space.cost(half_widths(space))
    assert evaluator.evaluate(half_widths(space)).cached  # failures are deterministic too


class ExplodingCriterion:
    name = "exploding"

    def select(self, group_id, width):
        raise RuntimeError(f"no ranking for {group_id}")


def test_exceptions_fail_without_raising(setup):
    model, space, _, proxy_data = setup
    evaluator = ProxyEvaluator(model, space, ExplodingCriterion(), proxy_data, SETTINGS)
    result = evaluator.evaluate(half_widths(space))
    assert result.status == "failed: RuntimeError: no ranking for conv1"
    assert result.score == FAILED_SCORE
    out_of_range = make_evaluator(setup).evaluate([999] * len(space.groups))
    assert out_of_range.status.startswith("failed: UserError: widths: group 'conv1' width 999 out of range")
    assert out_of_range.macs is None and out_of_range.widths == ()


def test_a_criterion_without_rankings_is_used_through_select(setup):
    model, space, criterion, proxy_data = setup

    class SelectOnly:
        def select(self, group_id, width):
            return criterion.select(group_id, width)

    widths = half_widths(space)
    through_select = ProxyEvaluator(model, space, SelectOnly(), proxy_data, SETTINGS).evaluate(widths)
    assert through_select.score == make_evaluator(setup).evaluate(widths).score


# --- architecture and shipping ----------------------------------------------------------------------


def test_architecture_keeps_what_the_criterion_selects(setup):
    model, space, criterion, _ = setup
    evaluator = make_evaluator(setup)
    widths = half_widths(space)
    architecture = evaluator.architecture(widths, provenance={"source": "search"})
    assert architecture.keep == {
        g.id: tuple(criterion.select(g.id, w).tolist()) for g, w in zip(space.groups, widths)
    }
    assert architecture.provenance["criterion"] == "l1" and architecture.model == IDENTITY
    assert (architecture.macs, architecture.params) == space.cost(widths)


def test_pickled_evaluator_is_a_per_process_singleton_with_equal_scores(setup):
    evaluator = make_evaluator(setup)
    widths = half_widths(evaluator.space)
    expected = evaluator.evaluate(widths)
    payload = pickle.dumps(evaluator)
    assert len(payload) < 2_000_000  # weights + data (digits are small), no caches
    first, second = pickle.loads(payload), pickle.loads(payload)
    assert first is second and first is not evaluator
    assert first.token == evaluator.token
    shipped = first.evaluate(widths)
    assert shipped.score == expected.score and first.evaluate(widths).cached
    clone = copy.deepcopy(evaluator)
    assert clone is not first and clone.cache_len == 0 and clone.evaluate(widths).score == expected.score


def test_scores_are_bit_identical_in_worker_processes(setup):
    # loky is what joblib's backend runs on; a private executor (not loky's process-wide reusable one,
    # which joblib.Parallel would later pick up without its own bookkeeping and fail on)
    from joblib.externals.loky import ProcessPoolExecutor

    evaluator = make_evaluator(setup)
    space = evaluator.space
    candidates = [half_widths(space), space.uniform_widths(0.75)]
    local = [evaluator.evaluate(widths) for widths in candidates]
    with ProcessPoolExecutor(max_workers=1) as executor:
        first = executor.submit(evaluate_widths, evaluator, [candidates[0], candidates[0]]).result()
        second = executor.submit(evaluate_widths, evaluator, [candidates[1], candidates[0]]).result()
    for here, remote in zip(local, (first[0], second[0])):
        assert (remote.score, remote.loss, remote.accuracy) == (here.score, here.loss, here.accuracy)
        assert not remote.cached
    assert first[1].cached  # within one task
    assert second[1].cached  # across tasks: the worker kept its evaluator (and cache) for this token


def test_release_freed_memory_trims_the_heap_on_glibc():
    import platform

    from acp.proxy.memory import release_freed_memory

    assert release_freed_memory() is (platform.libc_ver()[0] == "glibc")


def test_the_token_ignores_validation_images(setup):
    """The proxy-validation slice is covered by the data fingerprint; keeping the field out of the token
    keeps the tokens (and so the resume fingerprints) of runs made before it joined ProxySettings."""
    model, space, criterion, proxy_data = setup
    tokens = {
        ProxyEvaluator(model, space, criterion, proxy_data, SETTINGS.replace(validation_images=count)).token
        for count in (100, 2000)
    }
    assert len(tokens) == 1
    changed = ProxyEvaluator(model, space, criterion, proxy_data, SETTINGS.replace(calibration_batches=3))
    assert changed.token not in tokens
