"""PeakNet model: upstream-compatible state-dict layout, sizes of both presets, strict weight
loading with clear errors, output shapes, and the threshold oracle. No Ray, no downloads: the
large preset lives on the meta device and weights are random, saved and reloaded."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import pytest
import torch

from helpers import SMALL_MODEL
from peaknet_pipeline.config import ModelConfig, load_config
from peaknet_pipeline.model import (
    ThresholdModel,
    WeightsError,
    build_model,
    count_parameters,
    meta_model,
    read_state_dict,
    save_weights,
)

CONFIGS = Path(__file__).resolve().parents[2] / "examples" / "configs"


def small(**kw) -> ModelConfig:
    return ModelConfig(**{**SMALL_MODEL, **kw})


@pytest.fixture(scope="module")
def default_meta():
    return meta_model(load_config(CONFIGS / "default.yaml").model)


@pytest.fixture(scope="module")
def large_meta():
    return meta_model(load_config(CONFIGS / "673m.yaml").model)


# -- presets: layout and size ------------------------------------------------------------------
def test_default_preset_is_the_model_config_default():
    assert load_config(CONFIGS / "default.yaml").model == ModelConfig()


def test_default_preset_state_dict_layout(default_meta):
    sd = default_meta.state_dict()
    assert len(sd) == 296
    expected = {
        "backbone.embeddings.patch_embeddings.weight": (96, 1, 4, 4),
        "backbone.embeddings.layernorm.weight": (96,),
        "backbone.encoder.stages.0.layers.0.dwconv.weight": (96, 1, 7, 7),
        "backbone.encoder.stages.0.layers.0.grn.weight": (1, 1, 1, 384),
        "backbone.encoder.stages.1.downsampling_layer.1.weight": (192, 96, 2, 2),
        "backbone.encoder.stages.2.layers.8.pwconv2.weight": (384, 1536),
        "backbone.hidden_states_norms.stage4.bias": (768,),
        "backbone_to_bifpn.3.weight": (256, 768, 1, 1),
        "bifpn.blocks.0.w_m": (3, 2),
        "bifpn.blocks.1.w_q": (3, 3),
        "bifpn.blocks.1.w_q_mask": (3, 3),
        "bifpn.blocks.0.conv.m4.0.depthwise_conv.weight": (256, 1, 1, 1),
        "bifpn.blocks.1.conv.q7.0.pointwise_conv.weight": (256, 256, 1, 1),
        "bifpn.blocks.1.conv.q7.1.bias": (256,),
        "seg_lateral_layers.0.layers.0.0.weight": (256, 256, 3, 3),
        "seg_lateral_layers.3.layers.2.1.weight": (256,),
        "head_segmask.weight": (2, 256, 1, 1),
        "head_segmask.bias": (2,),
    }
    assert {k: tuple(sd[k].shape) for k in expected} == expected
    # Branch i of the head has max(i, 1) conv blocks; no learned upsampling in this preset.
    for i, n in enumerate([1, 1, 2, 3]):
        assert f"seg_lateral_layers.{i}.layers.{n - 1}.0.bias" in sd
        assert f"seg_lateral_layers.{i}.layers.{n}.0.bias" not in sd
    assert not any(k.startswith("head_upsample_layer") for k in sd)
    assert {k for k in sd if "depthwise" in k and k.startswith("bifpn.blocks.0.")} == {
        f"bifpn.blocks.0.conv.{c}.0.depthwise_conv.weight"
        for c in ("m4", "m5", "m6", "q5", "q6", "q7")
    }


def test_default_preset_parameter_count(default_meta):
    assert count_parameters(default_meta) == 33_164_768  # 33.16 M


def test_673m_preset_layout_and_count_without_allocating(large_meta):
    sd = large_meta.state_dict()
    assert len(sd) == 532
    assert all(t.is_meta for t in sd.values())
    assert round(count_parameters(large_meta) / 1e6, 2) == 673.01
    assert tuple(sd["head_upsample_layer.0.weight"].shape) == (256, 2, 6, 6)
    assert tuple(sd["backbone.encoder.stages.2.layers.26.pwconv1.weight"].shape) == (5632, 1408)
    assert tuple(sd["bifpn.blocks.3.conv.m4.0.pointwise_conv.weight"].shape) == (512, 512, 1, 1)
    assert "bifpn.blocks.4.w_m" not in sd


def test_bottom_up_fusion_mask_switches_off_one_weight():
    model = build_model(small())
    mask = model.bifpn.blocks[0].w_q_mask
    assert mask.dtype == torch.bool
    assert mask.tolist() == [[True, True, True], [True, True, True], [False, True, True]]


# -- forward --------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(2, 1, 64, 96), (1, 1, 32, 64), (3, 1, 96, 64)])
def test_output_is_logits_per_pixel(shape):
    model = build_model(small())
    with torch.inference_mode():
        out = model(torch.randn(shape))
    assert out.shape == (shape[0], 2, *shape[2:])
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("hw", [(48, 80), (64, 70), (33, 64)])
def test_sizes_not_multiple_of_32_are_a_clear_error(hw):
    model = build_model(small())
    with pytest.raises(ValueError, match=r"multiples of 32.*pad_mode"):
        model(torch.zeros(1, 1, *hw))


def test_learned_upsample_adds_to_the_bilinear_output():
    model = build_model(small(uses_learned_upsample=True))
    assert tuple(model.head_upsample_layer[0].weight.shape) == (32, 2, 6, 6)
    x = torch.randn(1, 1, 64, 64)
    with torch.inference_mode():
        with_learned = model(x)
        torch.nn.init.zeros_(model.head_upsample_layer[0].weight)
        torch.nn.init.zeros_(model.head_upsample_layer[0].bias)
        without = model(x)
    assert with_learned.shape == (1, 2, 64, 64)
    assert not torch.allclose(with_learned, without)


# -- weights --------------------------------------------------------------------------------
def test_save_and_strict_reload_gives_the_same_logits(tmp_path):
    path = tmp_path / "peaknet.pt"
    saved = build_model(small(seed=1))
    save_weights(saved, path)
    loaded = build_model(small(seed=2, weights_path=str(path)))
    other = build_model(small(seed=2))
    x = torch.randn(2, 1, 64, 64)
    with torch.inference_mode():
        assert torch.equal(loaded(x), saved(x))
        assert not torch.allclose(other(x), saved(x))  # so the equality above is the load


def test_same_seed_same_random_weights():
    a, b = build_model(small(seed=5)).state_dict(), build_model(small(seed=5)).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_random_weights_are_announced(caplog):
    with caplog.at_level(logging.WARNING, logger="peaknet_pipeline.model"):
        build_model(small(seed=3))
    assert any("RANDOM weights (seed 3)" in r.getMessage() for r in caplog.records)


def test_missing_weights_file_is_an_error_naming_the_path(tmp_path):
    path = tmp_path / "nope" / "peaknet.pt"
    with pytest.raises(WeightsError, match=rf"{path}.*does not exist"):
        build_model(small(weights_path=str(path)))
    with pytest.raises(WeightsError, match=r"is not a file"):
        build_model(small(weights_path=str(tmp_path)))


def test_unreadable_weights_file_is_an_error(tmp_path):
    path = tmp_path / "garbage.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match=rf"{path}.*not a readable state dict"):
        build_model(small(weights_path=str(path)))


# A damaged file whose first bytes read as a pickle of an unknown protocol (0x80 0xa5): torch
# warns about the protocol before it fails (random test bytes began so about once in 260 runs).
UNKNOWN_PICKLE_PROTOCOL = b"\x80\xa5" + bytes(range(254))


def test_a_damaged_file_torch_warns_about_is_one_error_and_no_warning(tmp_path):
    path = tmp_path / "damaged.pt"
    path.write_bytes(UNKNOWN_PICKLE_PROTOCOL)
    with warnings.catch_warnings(record=True) as heard:
        warnings.simplefilter("always")
        with pytest.raises(WeightsError, match=r"is not a file written by torch.save"):
            read_state_dict(path)
    assert [str(w.message) for w in heard] == []


def test_mismatched_keys_are_named(tmp_path):
    state = build_model(small()).state_dict()
    del state["head_segmask.bias"]
    state["module.extra.weight"] = torch.zeros(1)
    path = tmp_path / "edited.pt"
    torch.save(state, path)
    with pytest.raises(WeightsError) as err:
        build_model(small(weights_path=str(path)))
    msg = str(err.value)
    assert str(path) in msg
    assert "missing keys (1): head_segmask.bias" in msg
    assert "unexpected keys (1): module.extra.weight" in msg


def test_weights_of_another_architecture_are_refused(tmp_path):
    path = tmp_path / "other.pt"
    save_weights(build_model(small(hidden_sizes=[16, 32, 64, 128])), path)
    with pytest.raises(WeightsError) as err:
        build_model(small(weights_path=str(path)))
    msg = str(err.value)
    assert "shape mismatches" in msg
    assert (
        "backbone.embeddings.patch_embeddings.weight: file (16, 1, 4, 4) vs model (8, 1, 4, 4)"
        in msg
    )
    assert "hidden_sizes=[8, 16, 32, 64]" in msg


def test_learned_upsample_checkpoint_does_not_load_without_it(tmp_path):
    path = tmp_path / "learned.pt"
    save_weights(build_model(small(uses_learned_upsample=True)), path)
    with pytest.raises(WeightsError, match=r"unexpected keys \(2\): head_upsample_layer.0.weight"):
        build_model(small(weights_path=str(path)))


# -- threshold oracle -------------------------------------------------------------------------
def test_threshold_model_marks_pixels_strictly_above_the_threshold():
    model = build_model(ModelConfig(kind="threshold", threshold=50.0))
    assert isinstance(model, ThresholdModel)
    x = torch.tensor([[[[49.0, 50.0, 50.5, 1e4]]]])
    logits = model(x)
    assert logits.shape == (1, 2, 1, 4)
    assert logits.argmax(1).tolist() == [[[0, 0, 1, 1]]]
