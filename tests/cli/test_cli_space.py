"""acp info / prune / export / eval on architectures, through the CLI entry point."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from acp.cli import main
from acp.core.architecture import Architecture, ModelIdentity
from acp.models import create_model
from acp.prune import build_space, load_pruned
from acp.testing import random_architecture


def run(capsys, *args):
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def base_and_arch(tmp_path):
    identity = ModelIdentity("resnet8_cifar", 10, (3, 16, 16), {})
    base, space = build_space(identity)
    torch.manual_seed(0)
    for module in base.modules():  # non-trivial BN statistics so slicing errors would show
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
    weights = tmp_path / "base.pt"
    torch.save(base.state_dict(), weights)
    arch = random_architecture(space, identity, np.random.default_rng(3))
    arch_path = arch.save(tmp_path / "arch_in.json")
    return base, arch, arch_path, weights


def test_info_lists_groups_and_cost(capsys):
    code, out, _ = run(capsys, "info", "resnet20_cifar")
    assert code == 0
    assert "base: 41,407,114 MACs" in out and "272,474 params" in out
    assert "12 searchable channel groups" in out
    assert "layer3.0.conv1" in out


def test_prune_writes_a_model_that_loads_and_matches(capsys, tmp_path, base_and_arch):
    base, arch, arch_path, weights = base_and_arch
    code, out, err = run(
        capsys, "prune", str(arch_path), "--weights", str(weights), "--out", str(tmp_path / "p")
    )
    assert code == 0, err
    assert f"MACs {arch.base_macs:,} -> {arch.macs:,}" in out
    loaded = load_pruned(tmp_path / "p")
    from acp.prune import materialize

    expected = materialize(base, arch).eval()
    example = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(example), expected(example))
    assert Architecture.load(tmp_path / "p" / "arch.json").content_equal(arch)


def test_prune_refuses_a_non_empty_out_dir_and_tampered_costs(capsys, tmp_path, base_and_arch):
    _, arch, arch_path, weights = base_and_arch
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    code, _, err = run(
        capsys, "prune", str(arch_path), "--weights", str(weights), "--out", str(tmp_path / "full")
    )
    assert code == 2 and "not empty" in err
    document = arch.to_dict()
    document["macs"] += 1
    tampered = tmp_path / "tampered.json"
    tampered.write_text(__import__("json").dumps(document))
    code, _, err = run(
        capsys, "prune", str(tampered), "--weights", str(weights), "--out", str(tmp_path / "q")
    )
    assert code == 2 and "macs" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "q").exists()


def test_prune_refuses_weights_of_another_model(capsys, tmp_path, base_and_arch):
    _, _, arch_path, _ = base_and_arch
    other = tmp_path / "other.pt"
    torch.save(create_model("resnet14_cifar").state_dict(), other)
    code, _, err = run(capsys, "prune", str(arch_path), "--weights", str(other), "--out", str(tmp_path / "p"))
    assert code == 2 and "does not fit the model" in err


def test_export_onnx_runs_in_onnxruntime(capsys, tmp_path, base_and_arch):
    pytest.importorskip("onnxruntime")
    _, _, arch_path, weights = base_and_arch
    assert (
        run(capsys, "prune", str(arch_path), "--weights", str(weights), "--out", str(tmp_path / "p"))[0] == 0
    )
    code, out, err = run(capsys, "export", str(tmp_path / "p"), "--onnx", str(tmp_path / "m.onnx"))
    assert code == 0, err
    assert "onnxruntime output matches PyTorch" in out and (tmp_path / "m.onnx").is_file()


def test_eval_on_an_architecture(capsys, tmp_path, base_and_arch):
    _, arch, arch_path, weights = base_and_arch
    assert (
        run(capsys, "prune", str(arch_path), "--weights", str(weights), "--out", str(tmp_path / "p"))[0] == 0
    )
    code, out, err = run(capsys, "eval", str(tmp_path / "p" / "arch.json"), "--data", "digits:16")
    assert code == 0, err
    assert f"MACs {arch.macs:,}" in out and f"params {arch.params:,}" in out


def test_cluster_proposes_widths_within_the_budget_and_writes_an_architecture(
    capsys, tmp_path, base_and_arch
):
    _, _, _, weights = base_and_arch
    config = tmp_path / "digits.toml"
    config.write_text(
        f'[model]\nname = "resnet8_cifar"\nnum_classes = 10\nweights = "{weights}"\n'
        "input_size = [3, 16, 16]\n"
        '[data]\nspec = "digits:16"\n[budget]\nflops = 0.5\n'
    )
    out = tmp_path / "proposal.json"
    code, stdout, err = run(capsys, "cluster", str(config), "--images", "64", "--out", str(out))
    assert code == 0, err
    assert "full -> width" in stdout and "mode budget" in stdout
    _, space = build_space(ModelIdentity("resnet8_cifar", 10, (3, 16, 16), {}))
    arch = Architecture.load(out, space)
    assert arch.macs <= 0.5 * arch.base_macs
    assert arch.provenance["source"] == "cluster"
    code, _, err = run(capsys, "cluster", str(config), "--mode", "dbscan", "--out", str(tmp_path / "d.json"))
    assert code == 2 and "--eps" in err
