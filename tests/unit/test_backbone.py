"""The backbone written here against transformers' `ConvNextV2Backbone`, the module upstream
PeakNet checkpoints were saved from: the same state-dict keys and shapes, a strict load of its
weights, and the same four feature maps for the same input. transformers is imported only here
(a dev dependency); the pipeline does not import it."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import transformers

from peaknet_pipeline.model.backbone import STAGES, ConvNeXtV2Backbone, build_backbone


def reference(hidden_sizes, depths) -> torch.nn.Module:
    config = transformers.ConvNextV2Config(
        num_channels=1,
        hidden_sizes=list(hidden_sizes),
        depths=list(depths),
        out_features=list(STAGES),
        drop_path_rate=0.0,
    )
    return transformers.ConvNextV2Backbone(config).eval()


def shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def test_the_default_presets_keys_and_shapes_are_transformers_own():
    sizes, depths = (96, 192, 384, 768), (3, 3, 9, 3)
    with torch.device("meta"):
        ours, theirs = ConvNeXtV2Backbone(sizes, depths), reference(sizes, depths)
    assert shapes(ours) == shapes(theirs)


def test_transformers_weights_load_strictly_and_give_the_same_feature_maps():
    sizes, depths = (16, 32, 64, 128), (1, 2, 2, 1)
    torch.manual_seed(0)
    theirs = reference(sizes, depths)
    with torch.no_grad():  # every parameter away from its initial value, norms and GRN too
        for p in theirs.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    ours = ConvNeXtV2Backbone(sizes, depths).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, 1, 64, 96)
    with torch.inference_mode():
        expected, got = theirs(x).feature_maps, ours(x)
    assert [tuple(f.shape) for f in got] == [
        (2, s, 64 // r, 96 // r) for s, r in zip(sizes, (4, 8, 16, 32))
    ]
    for e, g in zip(expected, got, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)


def test_a_seed_gives_the_random_weights_transformers_gives():
    # The demo weights were trained from a seed with transformers' module: retraining them from
    # their sidecar (test_demo_weights.py) needs the same draws in the same order.
    sizes, depths = (16, 32, 64, 128), (1, 1, 2, 1)
    torch.manual_seed(3)
    theirs = reference(sizes, depths).state_dict()
    next_theirs = torch.rand(1)
    torch.manual_seed(3)
    ours = build_backbone(sizes, depths).state_dict()
    assert torch.equal(torch.rand(1), next_theirs)
    assert not [k for k in theirs if not torch.equal(theirs[k], ours[k])]
    assert float(ours["encoder.stages.0.layers.0.grn.weight"].abs().max()) == 0.0
    assert float(ours["hidden_states_norms.stage1.weight"].min()) == 1.0


def test_a_backbone_needs_four_stages():
    with pytest.raises(ValueError, match="hidden_sizes \\[8, 16, 32\\] and depths"):
        ConvNeXtV2Backbone((8, 16, 32), (1, 1, 1))


def test_building_a_peaknet_imports_neither_transformers_nor_torchs_compiler():
    """transformers cost 1.9 s of CPU per process; a random draw on the meta device (the
    driver's weights check) loaded torch._dynamo and sympy, 0.8 s per driver."""
    code = (
        "import sys\n"
        "from peaknet_pipeline.config import ModelConfig\n"
        "from peaknet_pipeline.model import build_model, meta_model\n"
        "cfg = ModelConfig(weights_path=None, hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1],"
        " bifpn_num_blocks=1, bifpn_num_features=32, seg_out_channels=32)\n"
        "build_model(cfg, warn_random=False); meta_model(cfg)\n"
        "print(sorted({'transformers', 'torch._dynamo', 'sympy'} & set(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_meta_model_has_the_shapes_of_a_built_one():
    cfg = dict(hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1])
    with torch.device("meta"):
        meta = build_backbone(**cfg)
    built = build_backbone(**cfg)
    assert {k: v.shape for k, v in meta.state_dict().items()} == {
        k: v.shape for k, v in built.state_dict().items()
    }
    assert all(p.is_meta for p in meta.parameters())
