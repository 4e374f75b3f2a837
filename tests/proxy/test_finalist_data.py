"""The finalists' proxy data: the search proxy's calibration images, validation images it never scored."""

from __future__ import annotations

import numpy as np
import pytest

from acp.data import load_data, make_splits
from acp.proxy.data import ProxyData, proxy_slices
from acp.proxy.evaluator import default_proxy_data, finalist_proxy_data
from acp.settings import ProxySettings, RerankSettings


@pytest.fixture(scope="module")
def digits():
    data = load_data("digits:16")
    return data, make_splits(data, "random:0.2", seed=0)


def test_finalists_are_scored_on_validation_images_the_search_never_saw(digits):
    data, splits = digits  # 1,438 training images
    proxy = ProxySettings(calibration_batches=2, calibration_batch_size=32, validation_images=300)
    finalist = RerankSettings(calibration_batches=6, validation_images=500).proxy_settings(proxy)
    assert finalist.calibration_images == 192 and finalist.finetune_steps == RerankSettings().finetune_steps
    search_data = default_proxy_data(data, splits.train, proxy, seed=5)
    finalist_data = finalist_proxy_data(data, splits.train, proxy, finalist, seed=5)
    _, used = proxy_slices(data.labels, splits.train, 64, 300, seed=5)
    calibration, fresh = proxy_slices(data.labels, splits.train, 192, 500, seed=5, avoid=used)
    assert not set(fresh.tolist()) & (set(used.tolist()) | set(calibration.tolist()))
    assert len(finalist_data.validation_labels) == 500 and len(finalist_data.calibration_labels) == 192
    assert finalist_data.validation_labels.tolist() == data.labels[fresh].tolist()
    assert sorted(finalist_data.calibration_labels.tolist()) == sorted(data.labels[calibration].tolist())
    assert "avoided_sha256" in finalist_data.description and "avoided_sha256" not in search_data.description
    again = finalist_proxy_data(data, splits.train, proxy, finalist, seed=5)
    assert again.fingerprint() == finalist_data.fingerprint()


def test_a_small_split_gives_the_finalists_what_is_left(digits):
    data, splits = digits
    proxy = ProxySettings(calibration_batches=2, calibration_batch_size=32, validation_images=700)
    finalist = RerankSettings(calibration_batches=2, validation_images=5000).proxy_settings(proxy)
    finalist_data = finalist_proxy_data(data, splits.train, proxy, finalist, seed=0)
    _, used = proxy_slices(data.labels, splits.train, 64, 700, seed=0)
    calibration, _ = proxy_slices(data.labels, splits.train, 64, 1, seed=0)
    left = len(set(splits.train.tolist()) - set(used.tolist()) - set(calibration.tolist()))
    assert len(finalist_data.validation_labels) == left
    tiny = np.sort(splits.train)[:200]
    proxy = ProxySettings(calibration_batches=1, calibration_batch_size=100, validation_images=100)
    finalist = RerankSettings(calibration_batches=1).proxy_settings(proxy)
    reused = finalist_proxy_data(data, tiny, proxy, finalist, seed=0)
    assert len(reused.validation_labels) == 100  # nothing left: the search's validation images again
    assert isinstance(reused, ProxyData)
