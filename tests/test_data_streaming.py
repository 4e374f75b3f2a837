"""Large ImageFolders: over the cache limit they are streamed (decoded by DataLoader workers) instead of
cached as one array; batches are bit-identical either way and whatever the number of workers; ``acp cache``
lists and clears what is cached."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import write_image_folder
from torch import nn

from acp.cli import main
from acp.data import iterate_batches, load_data, make_splits
from acp.errors import UserError
from acp.settings import DataSettings, Schedule

TINY = 1e-6  # GB: 1,000 bytes, smaller than any folder here decoded, so everything streams


def write_jpeg_folder(root, per_class=10, size=16, classes=("cat", "dog", "owl", "yak"), seed=0):
    """JPEGs (lossy: their decode is what is compared) of smooth random textures."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for name in classes:
        (root / name).mkdir(parents=True)
        for index in range(per_class):
            coarse = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
            image = Image.fromarray(coarse).resize((size, size), Image.BILINEAR)
            image.save(root / name / f"{index:03d}.jpg", quality=85)
    return root


def batches(data, seed, *, augmented=True):
    generator = torch.Generator().manual_seed(seed)
    return list(
        iterate_batches(data, np.arange(len(data)), 7, shuffle=True, augmented=augmented, generator=generator)
    )


def assert_same_batches(first, second):
    assert len(first) == len(second)
    for (images_a, labels_a), (images_b, labels_b) in zip(first, second):
        assert torch.equal(images_a, images_b) and torch.equal(labels_a, labels_b)


def test_a_folder_over_the_limit_is_streamed_and_no_array_is_cached(tmp_path):
    root = tmp_path / "imgs"
    write_image_folder(root, per_class=6, size=8)  # 18 x 8 x 8 x 3 = 3,456 bytes decoded
    cache = tmp_path / "cache"
    data = load_data(str(root), cache_dir=cache, cache_limit_gb=TINY)
    assert data.streamed and data.images is None
    assert data.image_shape == (3, 8, 8) and len(data) == 18 and data.classes == ["a", "b", "c"]
    assert list(cache.glob("*.npy")) == []
    (description,) = cache.glob("*.json")
    assert description.stat().st_size < 1000
    document = json.loads(description.read_text())
    assert document["mode"] == "streamed" and document["images"] == 18 and document["shape"] == [8, 8, 3]
    # within the limit the same folder is cached as one array
    assert not load_data(str(root), cache_dir=cache, cache_limit_gb=1.0).streamed
    assert len(list(cache.glob("*.npy"))) == 1


def test_the_environment_sets_the_limit_when_the_settings_do_not(tmp_path, monkeypatch):
    root = tmp_path / "imgs"
    write_image_folder(root)
    monkeypatch.setenv("ACP_CACHE_LIMIT_GB", str(TINY))
    assert load_data(str(root), cache_dir=tmp_path / "c").streamed
    assert not load_data(str(root), cache_dir=tmp_path / "c", cache_limit_gb=1.0).streamed
    monkeypatch.setenv("ACP_CACHE_LIMIT_GB", "lots")
    with pytest.raises(UserError, match=r"\$ACP_CACHE_LIMIT_GB = 'lots'"):
        load_data(str(root), cache_dir=tmp_path / "c")


def test_streamed_and_cached_give_identical_tensors_statistics_and_batches(tmp_path):
    root = write_jpeg_folder(tmp_path / "jpegs")
    cached = load_data(str(root), cache_dir=tmp_path / "c1", cache_limit_gb=1.0)
    streamed = load_data(str(root), cache_dir=tmp_path / "c2", cache_limit_gb=TINY, loader_workers=2)
    assert not cached.streamed and streamed.streamed
    assert (streamed.mean, streamed.std) == (cached.mean, cached.std)  # same sample, same formula
    indices = np.array([39, 0, 17, 17, 5])
    for got, expected in zip(streamed.tensors(indices), cached.tensors(indices)):
        assert torch.equal(got, expected)
    assert torch.equal(streamed.tensors()[0], cached.tensors()[0])
    assert_same_batches(batches(streamed, seed=3), batches(cached, seed=3))


@pytest.mark.parametrize("workers", [0, 2])
def test_streaming_is_deterministic_from_the_seed_whatever_the_workers(tmp_path, workers):
    root = write_jpeg_folder(tmp_path / "jpegs", per_class=9)
    streamed = load_data(str(root), cache_dir=tmp_path / "c", cache_limit_gb=TINY, loader_workers=workers)
    reference = load_data(str(root), cache_dir=tmp_path / "c", cache_limit_gb=TINY, loader_workers=1)
    first = batches(streamed, seed=11)
    assert_same_batches(first, batches(streamed, seed=11))
    assert_same_batches(first, batches(reference, seed=11))
    other = batches(streamed, seed=12)
    assert not all(torch.equal(a[1], b[1]) for a, b in zip(first, other))  # another seed, another order


def test_training_and_evaluation_on_a_streamed_set_match_the_cached_set(tmp_path):
    from acp.train.loop import evaluate, train

    root = write_jpeg_folder(tmp_path / "jpegs", per_class=6)
    results = []
    for limit, where in ((1.0, "cached"), (TINY, "streamed")):
        data = load_data(str(root), cache_dir=tmp_path / where, cache_limit_gb=limit, loader_workers=2)
        splits = make_splits(data, "tail:1")
        torch.manual_seed(0)
        model = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.LazyLinear(4)
        )
        schedule = Schedule(epochs=2, batch_size=5, channels_last=False)
        out = tmp_path / where / "run"
        history = train(model, data, splits.train, splits.val, schedule, out, progress=False)
        everything = evaluate(model, data, np.arange(len(data)))
        results.append((history[-1].train_loss, everything, model.state_dict()))
    (loss_a, eval_a, state_a), (loss_b, eval_b, state_b) = results
    assert loss_a == loss_b and eval_a == eval_b
    assert all(torch.equal(state_a[key], state_b[key]) for key in state_a)


def test_a_streamed_folder_with_an_image_of_another_size_is_an_error_naming_it(tmp_path):
    from PIL import Image

    root = tmp_path / "imgs"
    write_image_folder(root)
    Image.fromarray(np.zeros((9, 8, 3), np.uint8)).save(root / "b" / "0003.png")
    with pytest.raises(UserError, match=r"b/0003.png is 8x9, but .*a/0000.png is 8x8: all images must"):
        load_data(str(root), cache_dir=tmp_path / "c", cache_limit_gb=TINY)
    with pytest.raises(UserError, match=r"b/0003.png is 8x9, but .*a/0000.png is 8x8: all images must"):
        load_data(str(root), cache_dir=tmp_path / "c", cache_limit_gb=1.0)  # the cached path says the same


def test_a_streamed_folder_reads_its_statistics_from_the_cache_the_second_time(tmp_path):
    root = tmp_path / "imgs"
    write_image_folder(root)
    first = load_data(str(root), cache_dir=tmp_path / "c", cache_limit_gb=TINY)
    (description,) = (tmp_path / "c").glob("*.json")
    document = json.loads(description.read_text())
    document["mean"] = [0.25, 0.5, 0.75]
    description.write_text(json.dumps(document))
    second = load_data(str(root), cache_dir=tmp_path / "c", cache_limit_gb=TINY)
    assert second.mean == (0.25, 0.5, 0.75) and second.std == first.std


@pytest.mark.parametrize(
    ("field", "value", "wording"),
    [("cache_limit_gb", -1.0, "a number in"), ("loader_workers", -1, "an integer >= 0")],
)
def test_bad_values_of_the_data_settings_name_the_field(tmp_path, capsys, field, value, wording):
    with pytest.raises(UserError, match=rf"\[data\]\.{field} = -1(\.0)? is not allowed \(expected {wording}"):
        DataSettings(**{field: value})
    config = tmp_path / "run.toml"
    config.write_text(f'[model]\nname = "resnet20_cifar"\n\n[data]\nspec = "digits"\n{field} = {value}\n')
    assert main(["info", str(config)]) == 2
    error = capsys.readouterr().err
    assert f"[data].{field} = " in error and len(error.strip().splitlines()) == 1
    config.write_text(f'[model]\nname = "resnet20_cifar"\n\n[data]\n{field} = "many"\n')
    assert main(["info", str(config)]) == 2
    assert f"[data].{field} must be" in capsys.readouterr().err


def test_acp_cache_info_and_clear(tmp_path, monkeypatch, capsys):
    cache = tmp_path / "cache"
    monkeypatch.setenv("ACP_CACHE_DIR", str(cache))
    monkeypatch.setenv("ACP_CACHE_LIMIT_GB", "0.5")
    small, large = tmp_path / "small", tmp_path / "large"
    write_image_folder(small)
    write_image_folder(large, per_class=4, size=16, seed=1)
    load_data(str(small))  # within the limit: cached
    load_data(str(large), cache_limit_gb=TINY)  # streamed
    (cache / "latency").mkdir()
    (cache / "latency" / "latency-resnet20_cifar-torch-b1-0123456789abcdef0123.json").write_text("{}")
    (cache / "notes.txt").write_text("not acp's")

    assert main(["cache", "info"]) == 0
    out = capsys.readouterr().out
    assert f"cache directory: {cache}" in out
    assert "cache limit: 0.5 GB ($ACP_CACHE_LIMIT_GB" in out
    assert f"decoded array 18x8x8x3 of {small.resolve()}" in out
    assert f"streamed: 12 images 16x16x3 (0.00 GB decoded) of {large.resolve()}" in out
    assert "latency table resnet20_cifar-torch-b1" in out
    assert "notes.txt" not in out and "4 file(s)" in out

    assert main(["cache", "clear", "--only", "images"]) == 0
    out = capsys.readouterr().out
    assert out.count("removed ") == 4 and "removed 3 file(s)" in out
    assert sorted(path.name for path in cache.rglob("*") if path.is_file()) == [
        "latency-resnet20_cifar-torch-b1-0123456789abcdef0123.json",
        "notes.txt",
    ]
    assert main(["cache", "clear"]) == 0
    assert "removed 1 file(s)" in capsys.readouterr().out
    assert [path.name for path in cache.rglob("*") if path.is_file()] == ["notes.txt"]
    assert not load_data(str(small)).streamed  # decoded and cached again after a clear
    assert len(list(cache.glob("*.npy"))) == 1

    # --dir names another cache directory, before or after the action
    other = tmp_path / "other"
    load_data(str(small), cache_dir=other)
    assert main(["cache", "info", "--dir", str(other)]) == 0
    assert f"cache directory: {other}" in capsys.readouterr().out
    assert main(["cache", "--dir", str(other), "clear"]) == 0
    assert "removed 2 file(s)" in capsys.readouterr().out and list(other.iterdir()) == []
    assert len(list(cache.glob("*.npy"))) == 1


def test_a_bad_cache_limit_in_the_environment_is_exit_2_naming_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ACP_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("ACP_CACHE_LIMIT_GB", "-3")
    assert main(["cache", "info"]) == 2
    assert "$ACP_CACHE_LIMIT_GB = '-3' is not allowed" in capsys.readouterr().err
