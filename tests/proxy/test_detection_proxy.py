"""The detection proxy: slices of the training split, scores of full and pruned detectors, the cache,
BatchNorm recalibration, the score/task check, and bit-identical scores after pickling and in a worker."""

from __future__ import annotations

import copy
import math
import pickle

import numpy as np
import pytest
import torch
from torch import nn

from acp.core.architecture import ModelIdentity
from acp.detection_data import load_shapes, make_detection_splits
from acp.errors import UserError
from acp.propose.criteria import make_criterion
from acp.proxy.detection import (
    DetectionProxyData,
    DetectionProxyEvaluator,
    detection_proxy_slices,
    finalist_detection_proxy_data,
)
from acp.proxy.evaluator import ProxyEvaluator, Result, batchnorm_layers, evaluate_widths
from acp.prune import build_space, materialize
from acp.settings import ProxySettings

pytest.importorskip("torchmetrics.detection")

# SSDlite at half width, 4 outputs (shapes' 3 classes + background): the fastest detector acp traces
IDENTITY = ModelIdentity("ssdlite320_mobilenet_v3_large", 4, (3, 320, 320), {"width_mult": 0.5})
SETTINGS = ProxySettings(
    calibration_batches=2, calibration_batch_size=4, eval_batch_size=8, validation_images=8, score="map50"
)


@pytest.fixture(scope="module")
def shapes():
    data = load_shapes("shapes:64")
    return data, make_detection_splits(data, "random:0.1", seed=0)


@pytest.fixture(scope="module")
def setup(shapes):
    data, splits = shapes
    torch.manual_seed(0)
    model, space = build_space(IDENTITY)
    criterion = make_criterion("l1", space, model=model)
    proxy_data = DetectionProxyData.from_detection_data(
        data, splits.train, calibration_images=8, validation_images=8, seed=3
    )
    return model.eval(), space, criterion, proxy_data


def make_evaluator(setup, **changes) -> DetectionProxyEvaluator:
    model, space, criterion, proxy_data = setup
    return DetectionProxyEvaluator(
        model, space, criterion, proxy_data, SETTINGS.replace(**changes), identity=IDENTITY
    )


# --- settings and data ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("score", "task"), [("map50", "classification"), ("map", "classification"), ("accuracy", "detection")]
)
def test_a_score_of_the_other_task_is_a_user_error_naming_the_field(score, task):
    settings = ProxySettings(score=score)  # each score is a valid [proxy] score on its own
    with pytest.raises(UserError, match=rf"^\[proxy\]\.score: '{score}' scores .* not {task}"):
        settings.require_task(task)
    evaluator_type = ProxyEvaluator if task == "classification" else DetectionProxyEvaluator
    with pytest.raises(UserError, match=r"^\[proxy\]\.score: "):  # checked before anything else
        evaluator_type(nn.Identity(), None, None, None, settings)
    assert ProxySettings(score="loss").require_task(task).score == "loss"
    with pytest.raises(UserError, match=r"^\[proxy\]\.score = 'map75' is not allowed"):
        ProxySettings(score="map75")


def test_slices_are_disjoint_deterministic_and_from_the_training_split(shapes):
    data, splits = shapes
    calibration, validation = detection_proxy_slices(splits.train, 8, 8, seed=3)
    assert len(set(calibration.tolist())) == 8 and len(set(validation.tolist())) == 8
    assert not set(calibration.tolist()) & set(validation.tolist())
    assert set(calibration.tolist()) | set(validation.tolist()) <= set(splits.train.tolist())
    again = detection_proxy_slices(splits.train, 8, 8, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip((calibration, validation), again))
    other = detection_proxy_slices(splits.train, 8, 8, seed=4)
    assert not np.array_equal(validation, other[1])
    avoided = detection_proxy_slices(splits.train, 8, 8, seed=3, avoid=validation)[1]
    assert not set(avoided.tolist()) & set(validation.tolist())

    proxy = DetectionProxyData.from_detection_data(
        data, splits.train, calibration_images=8, validation_images=8, seed=3
    )
    for images, targets, indices, with_ignored in (
        (proxy.calibration_images, proxy.calibration_targets, calibration, False),
        (proxy.validation_images, proxy.validation_targets, validation, True),
    ):
        for image, target, index in zip(images, targets, indices):
            expected_image, expected_target = data.sample(int(index), with_ignored=with_ignored)
            assert torch.equal(image, expected_image) and image.dtype == torch.float32
            assert target.keys() == expected_target.keys()
            assert all(torch.equal(target[key], expected_target[key]) for key in target)
    assert "iscrowd" in proxy.validation_targets[0] and "iscrowd" not in proxy.calibration_targets[0]
    description = proxy.description
    assert (description["calibration_images"], description["validation_images"], description["seed"]) == (
        8,
        8,
        3,
    )
    assert description["train_size"] == len(splits.train) and description["validation_objects"] > 0
    rebuilt = DetectionProxyData.from_detection_data(
        data, splits.train, calibration_images=8, validation_images=8, seed=3
    )
    assert rebuilt.fingerprint() == proxy.fingerprint() and rebuilt.description == description
    shifted = DetectionProxyData.from_detection_data(
        data, splits.train, calibration_images=8, validation_images=8, seed=4
    )
    assert shifted.fingerprint() != proxy.fingerprint()


def test_data_pickles_each_image_once_and_round_trips(setup):
    proxy = setup[3]
    payload = pickle.dumps(proxy)
    pixels = sum(image.numel() * 4 for image in proxy.calibration_images + proxy.validation_images)
    assert pixels < len(payload) < pixels + 20_000
    restored = pickle.loads(payload)
    assert restored.fingerprint() == proxy.fingerprint() and restored.description == proxy.description
    assert [t.keys() for t in restored.validation_targets] == [t.keys() for t in proxy.validation_targets]


def test_finalist_data_is_scored_on_images_the_search_did_not_score_on(shapes):
    data, splits = shapes
    finalist = SETTINGS.replace(calibration_batches=3, validation_images=16)
    _, searched = detection_proxy_slices(splits.train, SETTINGS.calibration_images, 8, seed=0)
    proxy = finalist_detection_proxy_data(data, splits.train, SETTINGS, finalist, seed=0)
    assert (proxy.description["calibration_images"], proxy.description["validation_images"]) == (12, 16)
    _, chosen = detection_proxy_slices(splits.train, 12, 16, seed=0, avoid=searched)
    assert not set(chosen.tolist()) & set(searched.tolist())
    assert (
        proxy.description["validation_sha256"]
        != DetectionProxyData.from_detection_data(
            data, splits.train, calibration_images=12, validation_images=16, seed=0
        ).description["validation_sha256"]
    )


def image_and_target(boxes, labels, crowd=None):
    target = {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(labels, dtype=torch.int64),
    }
    if crowd is not None:
        target["iscrowd"] = torch.tensor(crowd, dtype=torch.int64)
    return torch.full((3, 8, 8), 0.5), target


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"validation": [image_and_target([], [], [])]}, r"validation_targets: none of the 1 validation"),
        ({"validation": [image_and_target([[0, 0, 4, 4]], [1], [1])]}, r"validation_targets: none of the"),
        ({"validation": []}, r"validation_images must be a non-empty list"),
        ({"calibration_images": [torch.full((3, 8, 8), 2.0)]}, r"calibration_images\[0\] has values outside"),
        ({"calibration_images": [torch.zeros(1, 8, 8)]}, r"calibration_images\[0\] is \(1, 8, 8\)"),
        ({"calibration_targets": [{"boxes": torch.zeros(1, 4)}]}, r"calibration_targets\[0\] must be a dict"),
        (
            {
                "calibration_targets": [
                    {"boxes": torch.zeros(2, 4), "labels": torch.ones(1, dtype=torch.int64)}
                ]
            },
            r"calibration_targets\[0\]: boxes must be a float32 tensor of shape \(1, 4\)",
        ),
    ],
)
def test_bad_proxy_data_names_the_field(change, message):
    image, target = image_and_target([[0, 0, 4, 4]], [1], [0])
    fields = {
        "calibration_images": [image],
        "calibration_targets": [{key: target[key] for key in ("boxes", "labels")}],
        "validation_images": [image],
        "validation_targets": [target],
    }
    if "validation" in change:
        pairs = change.pop("validation")
        fields["validation_images"] = [pair[0] for pair in pairs]
        fields["validation_targets"] = [pair[1] for pair in pairs]
    fields.update(change)
    with pytest.raises(UserError, match=rf"^proxy data: {message}"):
        DetectionProxyData(**fields)


def test_too_few_images_and_a_classifier_are_user_errors(shapes, setup):
    data, splits = shapes
    with pytest.raises(UserError, match=rf"training split has only {len(splits.train)}$"):
        DetectionProxyData.from_detection_data(
            data, splits.train, calibration_images=400, validation_images=100
        )
    with pytest.raises(UserError, match="calibration_images must be a positive integer"):
        DetectionProxyData.from_detection_data(data, splits.train, calibration_images=0, validation_images=4)
    with pytest.raises(UserError, match=r"4 calibration batches of 4 images \(16\).*has 8"):
        make_evaluator(setup, calibration_batches=4)
    _, space, criterion, proxy_data = setup
    with pytest.raises(UserError, match="^base_model: expected a torchvision box detector"):
        DetectionProxyEvaluator(nn.Conv2d(3, 3, 1), space, criterion, proxy_data, SETTINGS)
    with pytest.raises(UserError, match="^proxy data: expected DetectionProxyData, got str"):
        DetectionProxyEvaluator(setup[0], space, criterion, "shapes", SETTINGS)


# --- evaluation --------------------------------------------------------------------------------------


def test_full_and_pruned_detectors_score_and_repeat_from_the_cache(setup):
    model, space, _, _ = setup
    before = copy.deepcopy(model.state_dict())
    evaluator = make_evaluator(setup)
    full = evaluator.evaluate(space.full_widths())
    widths = space.uniform_widths(0.5)
    pruned = evaluator.evaluate(widths)
    for result in (full, pruned):
        assert result.ok and not result.cached and math.isfinite(result.score)
        assert 0 <= result.score <= 1 and result.accuracy == result.score and math.isnan(result.loss)
    assert (pruned.macs, pruned.params) == space.cost(widths) and pruned.macs < full.macs
    again = evaluator.evaluate([int(width) for width in widths])
    assert again.cached and again == Result(**{**pruned.__dict__, "cached": True})
    assert (evaluator.evaluations, evaluator.cache_hits, evaluator.cache_len) == (2, 1, 2)
    after = model.state_dict()
    assert all(torch.equal(before[key], after[key]) for key in before)  # the caller's detector is untouched
    assert evaluator.describe()["data"]["validation_images"] == 8


def test_loss_score_is_minus_the_detection_loss(setup):
    result = make_evaluator(setup, score="loss").evaluate(setup[1].uniform_widths(0.5))
    assert result.ok and result.score == -result.loss and result.loss > 0 and math.isnan(result.accuracy)


def test_recalibration_re_estimates_a_pruned_detectors_statistics_only(setup):
    model, space, _, _ = setup
    evaluator = make_evaluator(setup)
    base_statistics = [
        (norm.running_mean.clone(), norm.running_var.clone()) for norm in batchnorm_layers(model)
    ]
    widths = space.uniform_widths(0.5)
    recalibrated = evaluator.pruned_model(widths)
    inherited = materialize(model, evaluator.architecture(widths), space)
    pairs = list(zip(batchnorm_layers(recalibrated), batchnorm_layers(inherited)))
    assert len(pairs) > 30
    changed = 0
    for norm, original in pairs:
        assert int(norm.num_batches_tracked) == SETTINGS.calibration_batches  # reset, then 2 batches
        assert norm.momentum == original.momentum == 0.03 and not norm.training
        changed += not torch.equal(norm.running_mean, original.running_mean)
    assert changed == len(pairs)
    assert not recalibrated.training
    for norm, (mean, var) in zip(batchnorm_layers(model), base_statistics):
        assert torch.equal(norm.running_mean, mean) and torch.equal(norm.running_var, var)
    assert (
        make_evaluator(setup, recalibrate_bn=False).evaluate(widths).score != evaluator.evaluate(widths).score
    )


def test_finetune_steps_are_deterministic_and_keep_the_global_rng(setup):
    widths = setup[1].uniform_widths(0.5)
    state = torch.get_rng_state()
    first = make_evaluator(setup, score="loss", finetune_steps=1).evaluate(widths)
    assert torch.equal(state, torch.get_rng_state())
    second = make_evaluator(setup, score="loss", finetune_steps=1).evaluate(widths)
    assert first.ok and first.score == second.score
    assert first.score != make_evaluator(setup, score="loss").evaluate(widths).score


def test_the_token_covers_the_detectors_settings(setup):
    model, space, criterion, proxy_data = setup
    token = make_evaluator(setup).token
    assert make_evaluator(setup).token == token
    stricter = copy.deepcopy(model)
    stricter.score_thresh = 0.5  # same weights, fewer detections: another score
    assert DetectionProxyEvaluator(stricter, space, criterion, proxy_data, SETTINGS).token != token
    assert make_evaluator(setup, score="map").token != token


# --- shipping ----------------------------------------------------------------------------------------


def test_pickled_evaluator_scores_bit_identically_here_and_in_a_fresh_process(setup):
    from joblib.externals.loky import ProcessPoolExecutor

    evaluator = make_evaluator(setup)
    space = evaluator.space
    candidates = [space.uniform_widths(0.5), space.uniform_widths(0.75)]
    local = [evaluator.evaluate(widths) for widths in candidates]
    payload = pickle.dumps(evaluator)
    weights = sum(tensor.numel() * tensor.element_size() for tensor in setup[0].state_dict().values())
    assert len(payload) < 1.5 * weights + len(pickle.dumps(setup[3]))  # weights and images once, no cache
    first, second = pickle.loads(payload), pickle.loads(payload)
    assert first is second and type(first) is DetectionProxyEvaluator and first.token == evaluator.token
    assert first.evaluate(candidates[0]).score == local[0].score
    with ProcessPoolExecutor(max_workers=1) as executor:
        remote = executor.submit(evaluate_widths, evaluator, [*candidates, candidates[0]]).result()
    for here, there in zip(local, remote):
        assert (there.score, there.accuracy, there.macs) == (here.score, here.accuracy, here.macs)
        assert there.ok and not there.cached
    assert remote[2].cached
