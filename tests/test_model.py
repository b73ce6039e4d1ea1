"""Our forward pass equals Hugging Face's on random Llama-, Mistral-, Qwen2- and tied-embedding models."""

import pytest
import torch
import transformers

from spinquant.model import UnsupportedModelError, load_transformer, tiny_model

SHAPE = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    rms_norm_eps=1e-5,
)
CONFIGS = {
    "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM, {}),
    "llama-tied": (transformers.LlamaConfig, transformers.LlamaForCausalLM, {"tie_word_embeddings": True}),
    "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM, {"sliding_window": 16}),
    "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM, {}),
}


def hf_folder(tmp_path, kind: str):
    config_cls, model_cls, extra = CONFIGS[kind]
    torch.manual_seed(0)
    hf = model_cls(config_cls(**SHAPE, **extra)).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.3 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
    hf.save_pretrained(tmp_path)
    return hf


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_forward_matches_hf(tmp_path, kind):
    hf = hf_folder(tmp_path, kind)
    ours = load_transformer(tmp_path)
    tokens = torch.randint(0, SHAPE["vocab_size"], (2, 40))  # 40 > Mistral's window of 16
    with torch.no_grad():
        expected = hf(input_ids=tokens).logits
        got = ours(tokens)
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-4), (got - expected).abs().max()
    assert ours.args.tie_word_embeddings == (kind == "llama-tied")
    assert ours.args.qkv_bias == (kind == "qwen2")


def test_unsupported_architecture(tmp_path):
    cfg = transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(tmp_path)
    with pytest.raises(UnsupportedModelError, match="GPT2LMHeadModel.*not supported"):
        load_transformer(tmp_path)


def test_not_a_model_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_transformer(tmp_path)


def test_weights_override_is_per_call():
    model = tiny_model()
    tokens = torch.randint(0, 256, (1, 8))
    with torch.no_grad():
        base = model(tokens)
        zeroed = model(tokens, weights={"lm_head.weight": torch.zeros_like(model.lm_head.weight)})
        again = model(tokens)
    assert torch.count_nonzero(zeroed) == 0
    assert torch.equal(base, again)


def test_converted_folder_names_its_architecture(tmp_path):
    """A GGUF-loaded config has no `architectures`; the fp32 cache we write from it must name the class."""
    from spinquant import assets

    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**SHAPE, tie_word_embeddings=True)).eval()
    hf.config.architectures = None
    assets._save_fp32_folder(hf, tmp_path)
    assert assets._is_converted(tmp_path)
    tokens = torch.randint(0, SHAPE["vocab_size"], (1, 12))
    with torch.no_grad():
        assert torch.allclose(load_transformer(tmp_path)(tokens), hf(input_ids=tokens).logits, atol=1e-5)


def test_linears_reading_one_input_prepare_it_once(monkeypatch):
    """q/k/v and gate/up quantize their shared input once, with the same logits as each on its own; a linear
    whose quantizer differs prepares its own."""
    from spinquant import model as model_module
    from spinquant.quant.apply import attach_quantizers
    from spinquant.quant.config import W4A4KV4
    from spinquant.quant.quantizer import ActQuantizer

    model = attach_quantizers(tiny_model(seed=3), W4A4KV4)
    model.layers[1].self_attn.k_proj.act_quant = ActQuantizer(8)  # not shared in layer 1's attention
    tokens = torch.randint(0, model.args.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    calls = []
    monkeypatch.setattr(ActQuantizer, "__call__", lambda self, x: calls.append(self) or self.forward(x))
    shared = model(tokens)
    assert len(calls) == 2 * 4 + 2 * 2 + 2  # per layer: qkv, o, gate/up, down; k and v; layer 1's k_proj alone
    monkeypatch.setattr(model_module, "shared_input", lambda x, linears: None)
    calls.clear()
    assert torch.equal(model(tokens), shared) and len(calls) == 2 * 7 + 2 * 2
