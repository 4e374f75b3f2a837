from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch
from conftest import shared_file, write_image_folder

from acp.data import (
    CIFAR10_MEAN,
    augment,
    iterate_batches,
    load_data,
    make_splits,
    take_stratified,
)
from acp.errors import UserError


def test_image_folder_decodes_in_sorted_order(tmp_path):
    expected = write_image_folder(tmp_path / "imgs")
    data = load_data(str(tmp_path / "imgs"), cache_dir=tmp_path / "cache")
    assert np.array_equal(data.images, expected)
    assert data.classes == ["a", "b", "c"]
    assert data.labels.tolist() == [0] * 6 + [1] * 6 + [2] * 6
    assert data.files[:2] == ["a/0000.png", "a/0001.png"]
    assert data.image_shape == (3, 8, 8)


def test_cache_is_used_and_invalidated_when_a_file_changes(tmp_path):
    from PIL import Image

    root = tmp_path / "imgs"
    write_image_folder(root)
    cache = tmp_path / "cache"
    load_data(str(root), cache_dir=cache)
    cached = list(cache.glob("*.npy"))
    assert len(cached) == 1
    # a valid cache is read, not re-decoded: poison it and see the poisoned pixels come back
    poisoned = np.load(cached[0])
    poisoned[0, 0, 0, 0] ^= 0xFF
    np.save(cached[0], poisoned)
    assert load_data(str(root), cache_dir=cache).images[0, 0, 0, 0] == poisoned[0, 0, 0, 0]
    # touching a file (new mtime) and changing its pixels invalidates the cache
    new_pixels = np.full((8, 8, 3), 7, dtype=np.uint8)
    Image.fromarray(new_pixels).save(root / "a" / "0000.png")
    stat = os.stat(root / "a" / "0000.png")
    os.utime(root / "a" / "0000.png", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    reloaded = load_data(str(root), cache_dir=cache)
    assert np.array_equal(reloaded.images[0], new_pixels)
    assert len(list(cache.glob("*.npy"))) == 2


def test_bad_data_paths_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="data path not found"):
        load_data(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no class subfolders"):
        load_data(str(tmp_path / "empty"))
    (tmp_path / "noimg" / "cls").mkdir(parents=True)
    with pytest.raises(UserError, match="contains no images"):
        load_data(str(tmp_path / "noimg"))
    write_image_folder(tmp_path / "mixed", size=8)
    write_image_folder(tmp_path / "mixed", size=9, classes=("z",))
    with pytest.raises(UserError, match="all images must have one size"):
        load_data(str(tmp_path / "mixed"), cache_dir=tmp_path / "c")
    with pytest.raises(UserError, match="digits:16"):
        load_data("digits:x")
    with pytest.raises(UserError, match="digits:16"):
        load_data("digits:\u00b2")  # '²' passes str.isdigit but not int(): still the field's message
    with pytest.raises(UserError, match="tail:K needs a positive integer"):
        make_splits(load_data("digits:8"), "tail:\u00b2", seed=0)


def test_digits_are_upsampled_three_channel_images():
    data = load_data("digits:16")
    assert data.images.shape == (1797, 16, 16, 3) and data.images.dtype == np.uint8
    assert data.num_classes == 10
    images, labels = data.tensors(np.arange(4))
    assert images.shape == (4, 3, 16, 16) and images.dtype == torch.float32
    assert labels.tolist() == data.labels[:4].tolist()


def test_random_split_is_deterministic_stratified_and_disjoint():
    data = load_data("digits")
    first, second = make_splits(data, "random:0.2", seed=3), make_splits(data, "random:0.2", seed=3)
    assert np.array_equal(first.val, second.val) and np.array_equal(first.train, second.train)
    assert first.describe() == second.describe()
    other = make_splits(data, "random:0.2", seed=4)
    assert not np.array_equal(first.val, other.val)
    assert len(np.intersect1d(first.train, first.val)) == 0
    assert len(first.train) + len(first.val) == len(data)
    counts = np.bincount(data.labels[first.val], minlength=10)
    assert counts.min() >= 34 and counts.max() <= 38


def test_tail_split_holds_out_the_last_files_of_each_class(tmp_path):
    write_image_folder(tmp_path / "imgs", per_class=6)
    data = load_data(str(tmp_path / "imgs"), cache_dir=tmp_path / "c")
    splits = make_splits(data, "tail:2")
    assert [data.files[i] for i in splits.val] == [
        "a/0004.png",
        "a/0005.png",
        "b/0004.png",
        "b/0005.png",
        "c/0004.png",
        "c/0005.png",
    ]
    with pytest.raises(UserError, match="unknown split"):
        make_splits(data, "bogus")
    with pytest.raises(UserError, match="has only 6 images"):
        make_splits(data, "tail:6")


def test_shared_cifar_split_is_available_by_name():
    root = shared_file("data", "cifar10", "train")
    from acp.data import list_image_folder

    files, labels, classes = list_image_folder(root)
    assert len(files) == 50_000
    # make_splits needs only labels/files/classes; avoid decoding 50,000 JPEGs in the default suite
    from acp.data import ImageData

    data = ImageData(np.zeros((len(files), 1, 1, 3), np.uint8), labels, classes, str(root), files=files)
    splits = make_splits(data, "shared")
    assert len(splits.train) == 45_000 and len(splits.val) == 5_000
    assert files[splits.val[0]] == "airplane/4500.jpg" and files[splits.val[-1]] == "truck/4999.jpg"
    assert make_splits(data, "auto").method == "tail:500"
    assert data.mean == CIFAR10_MEAN


def test_cifar_format_is_detected_and_read(tmp_path):
    directory = tmp_path / "cifar-10-batches-py"
    directory.mkdir()
    rng = np.random.default_rng(0)
    batches = []
    for index in range(1, 6):
        pixels = rng.integers(0, 256, size=(4, 3072), dtype=np.uint8)
        batch = {"data": pixels, "labels": [index % 10] * 4}
        (directory / f"data_batch_{index}").write_bytes(pickle.dumps(batch))
        batches.append(pixels)
    (directory / "test_batch").write_bytes(pickle.dumps({"data": batches[0], "labels": [1, 2, 3, 4]}))
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (directory / "batches.meta").write_bytes(pickle.dumps({"label_names": names}))
    data = load_data(str(tmp_path))
    assert data.images.shape == (20, 32, 32, 3)
    assert np.array_equal(data.images[0], batches[0][0].reshape(3, 32, 32).transpose(1, 2, 0))
    assert data.test is not None and data.test.labels.tolist() == [1, 2, 3, 4]


def test_cifar_pickle_with_code_is_refused(tmp_path):
    directory = tmp_path / "cifar-10-batches-py"
    directory.mkdir()
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (directory / "data_batch_1").write_bytes(pickle.dumps({"data": Payload(), "labels": []}))
    (directory / "batches.meta").write_bytes(pickle.dumps({"label_names": ["x"]}))
    with pytest.raises(UserError, match="refusing to load"):
        load_data(str(tmp_path))
    assert not marker.exists()


def test_augmentation_is_a_crop_and_flip_driven_by_the_generator():
    batch = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    first = augment(batch, torch.Generator().manual_seed(1))
    second = augment(batch, torch.Generator().manual_seed(1))
    assert torch.equal(first, second) and first.shape == batch.shape
    # with zero padding the only changes are flips: each image equals itself or its mirror
    flipped = augment(batch, torch.Generator().manual_seed(5), padding=0)
    for original, result in zip(batch, flipped):
        assert torch.equal(result, original) or torch.equal(result, original.flip(-1))


def test_batches_cover_indices_once_and_shuffle_reproducibly():
    data = load_data("digits:8")
    indices = np.arange(100)
    order = [
        labels
        for _, labels in iterate_batches(
            data, indices, 32, shuffle=True, generator=torch.Generator().manual_seed(0)
        )
    ]
    again = [
        labels
        for _, labels in iterate_batches(
            data, indices, 32, shuffle=True, generator=torch.Generator().manual_seed(0)
        )
    ]
    assert [t.tolist() for t in order] == [t.tolist() for t in again]
    assert sum(len(t) for t in order) == 100
    with pytest.raises(ValueError):
        next(iterate_batches(data, indices, 8, shuffle=True))


def test_take_stratified_is_balanced_and_seeded():
    labels = np.repeat(np.arange(4), 50)
    subset = take_stratified(np.arange(200), labels, 20, seed=1)
    assert len(subset) == 20 and np.bincount(labels[subset]).tolist() == [5, 5, 5, 5]
    assert np.array_equal(subset, take_stratified(np.arange(200), labels, 20, seed=1))
