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
    finalist = RerankSettings(validation_images=500).proxy_settings(proxy)
    search_data = default_proxy_data(data, splits.train, proxy, seed=5)
    finalist_data = finalist_proxy_data(data, splits.train, proxy, finalist, seed=5)
    calibration, used = proxy_slices(data.labels, splits.train, 64, 300, seed=5)
    _, fresh = proxy_slices(data.labels, splits.train, 64, 500, seed=5, avoid=used)
    assert not set(fresh.tolist()) & set(used.tolist()) and not set(fresh.tolist()) & set(calibration.tolist())
    assert len(finalist_data.validation_labels) == 500
    assert finalist_data.validation_labels.tolist() == data.labels[fresh].tolist()
    # the same calibration images (same order), so BatchNorm statistics are estimated alike
    assert finalist_data.calibration_images.equal(search_data.calibration_images)
    assert "avoided_sha256" in finalist_data.description and "avoided_sha256" not in search_data.description
    again = finalist_proxy_data(data, splits.train, proxy, finalist, seed=5)
    assert again.fingerprint() == finalist_data.fingerprint()


def test_a_small_split_gives_the_finalists_what_is_left(digits):
    data, splits = digits
    proxy = ProxySettings(calibration_batches=2, calibration_batch_size=32, validation_images=700)
    finalist = RerankSettings(validation_images=5000).proxy_settings(proxy)
    finalist_data = finalist_proxy_data(data, splits.train, proxy, finalist, seed=0)
    assert len(finalist_data.validation_labels) == len(splits.train) - 64 - 700
    tiny = np.sort(splits.train)[:200]
    proxy = ProxySettings(calibration_batches=1, calibration_batch_size=100, validation_images=100)
    reused = finalist_proxy_data(data, tiny, proxy, RerankSettings().proxy_settings(proxy), seed=0)
    assert len(reused.validation_labels) == 100  # nothing left: the search's validation images again
    assert isinstance(reused, ProxyData)
