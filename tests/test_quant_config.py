"""QuantConfig: validation messages, presets, dict round trip, names."""

import dataclasses
import json

import pytest

from spinquant.quant import FP, PRESETS, W4A4KV4, W4A8KV8, W4A16, QuantConfig


def test_defaults_quantize_nothing():
    cfg = QuantConfig()
    assert cfg == FP
    assert not (cfg.quantizes_weights or cfg.quantizes_acts or cfg.quantizes_kv)
    assert cfg.name == "W16A16"


@pytest.mark.parametrize("field", ["w_bits", "a_bits", "kv_bits"])
@pytest.mark.parametrize("value", [3.5, 1, 9, 0, 32, True, "4"])
def test_bad_bits_raise_clear_error(field, value):
    with pytest.raises(ValueError, match=rf"{field}=.*use an integer from 2 to 8, or 16 for no quantization"):
        QuantConfig(**{field: value})


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 7, 8, 16])
def test_valid_bits(bits):
    assert QuantConfig(w_bits=bits, a_bits=bits, kv_bits=bits).w_bits == bits


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"w_group": -2}, "w_group=-2"),
        ({"w_group": 32.0}, "w_group=32.0"),
        ({"kv_group": -5}, "kv_group=-5"),
        ({"w_method": "awq"}, "w_method='awq'.*rtn, gptq"),
        ({"a_clip": 0.0}, r"a_clip=0.0.*\(0, 1\]"),
        ({"a_clip": 1.5}, "a_clip=1.5"),
        ({"gptq_damp": -0.1}, "gptq_damp"),
        ({"gptq_block": 0}, "gptq_block"),
        ({"w_sym": 1}, "w_sym=1"),
    ],
)
def test_bad_fields_raise(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        QuantConfig(**kwargs)


def test_minus_one_group_means_per_channel():
    assert QuantConfig(w_bits=4, w_group=-1) == QuantConfig(w_bits=4, w_group=0)
    assert QuantConfig(kv_bits=4, kv_group=-1).kv_group == 0


def test_act_clip_resolution():
    assert QuantConfig(a_bits=4).act_clip == 0.9
    assert QuantConfig(a_bits=3).act_clip == 0.9
    assert QuantConfig(a_bits=8).act_clip == 1.0
    assert QuantConfig(a_bits=4, a_clip=0.8).act_clip == 0.8


def test_presets():
    assert set(PRESETS) == {"FP", "W4A16", "W4A8KV8", "W4A4KV4"}
    assert (W4A16.w_bits, W4A16.a_bits, W4A16.kv_bits, W4A16.w_group) == (4, 16, 16, 32)
    assert (W4A8KV8.a_bits, W4A8KV8.kv_bits) == (8, 8)
    assert (W4A4KV4.a_bits, W4A4KV4.kv_bits, W4A4KV4.a_sym, W4A4KV4.kv_sym) == (4, 4, False, False)
    assert (W4A4KV4.lm_head_bits, W4A4KV4.embed_bits) == (16, 16)
    assert QuantConfig.preset("w4a4kv4") is not None and QuantConfig.preset(" W4A4KV4 ") == W4A4KV4
    assert QuantConfig.preset("W4A16", w_method="gptq").w_method == "gptq"
    with pytest.raises(ValueError, match="unknown preset 'W3A3'.*W4A4KV4"):
        QuantConfig.preset("W3A3")


def test_str():
    assert str(QuantConfig.preset("W4A4KV4", w_method="gptq", w_clip_search=False)) == (
        "W4A4KV4 g32 gptq sym a-clip 0.9"
    )
    assert str(QuantConfig(w_bits=4, a_bits=8)) == "W4A8 per-channel rtn+clip sym a-clip 1"
    assert str(FP) == "W16A16"


@pytest.mark.parametrize("cfg", [*PRESETS.values(), QuantConfig(w_bits=3, w_group=64, a_clip=0.95, kv_group=32)])
def test_dict_round_trip_through_json(cfg):
    data = json.loads(json.dumps(cfg.to_dict()))
    assert QuantConfig.from_dict(data) == cfg


def test_from_dict_rejects_unknown_keys_and_bad_values():
    with pytest.raises(ValueError, match=r"unknown QuantConfig keys \['wbits'\]"):
        QuantConfig.from_dict({"wbits": 4})
    with pytest.raises(ValueError, match="w_bits=5.5"):
        QuantConfig.from_dict({"w_bits": 5.5})


def test_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        W4A16.w_bits = 3


@pytest.mark.parametrize(("field", "value"), [("embed_bits", 4), ("embed_bits", True), ("lm_head_bits", 2)])
def test_bad_end_bits_raise_clear_error(field, value):
    with pytest.raises(ValueError, match=rf"{field}=.*use one of"):
        QuantConfig(**{field: value})


def test_device_recipe_and_old_metadata():
    cfg = QuantConfig(w_bits=4, w_group=32, a_bits=8, kv_bits=8, embed_bits=8, lm_head_bits=8)
    assert QuantConfig.from_dict(cfg.to_dict()) == cfg
    assert str(cfg).endswith("embed8 lm_head8")
    old = {k: v for k, v in W4A4KV4.to_dict().items() if k not in ("embed_bits", "lm_head_bits")}
    assert QuantConfig.from_dict({**old, "quantize_lm_head": True}).lm_head_bits == 4
    assert QuantConfig.from_dict({**old, "quantize_lm_head": False}) == W4A4KV4
