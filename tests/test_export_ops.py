"""The spinquant custom ops: eager references against independent ones, and the ExecuTorch kernels
(libspinquant_et_ops.so, calling kernels/) against the eager references, through exported programs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

pytest.importorskip("executorch")

from spinquant.export import ops  # noqa: E402
from spinquant.export.exporter import write_atomic  # noqa: E402
from spinquant.hadamard import base_hadamard, hadamard_transform  # noqa: E402
from spinquant.model import rms_norm  # noqa: E402
from spinquant.quant.packing import pack_weight  # noqa: E402
from spinquant.quant.quantizer import fake_quant, quantize_weight_rtn  # noqa: E402

sq = torch.ops.spinquant
GEN = torch.Generator().manual_seed(0)

# (N, K, group, sym, bias, act_bits, act_clip): odd K, a short last group, per-channel, asymmetric, W4A16/A8/A4.
LINEARS = [
    (40, 70, 32, True, False, 8, 1.0),
    (33, 64, 16, False, True, 4, 0.9),
    (48, 96, 96, True, True, 16, 1.0),
]
HADAMARD_SIZES = [64, 96]  # 2^6 and 12 * 2^3


def _storage(n: int, k: int, group: int, sym: bool) -> dict:
    qw = quantize_weight_rtn(torch.randn(n, k, generator=GEN), 4, group, sym, clip_search=False)
    return {"packed": pack_weight(qw), "dequant": qw.dequantize()}


class OpsProgram(nn.Module):
    """Every hadamard size and linear case in one program (one export)."""

    def __init__(self):
        super().__init__()
        for i, n in enumerate(HADAMARD_SIZES):
            self.register_buffer(f"hk{i}", base_hadamard(n)[1])
        self.cases = []
        for i, (n, k, group, sym, bias, act_bits, clip) in enumerate(LINEARS):
            st = _storage(n, k, group, sym)
            for name, t in st["packed"].items():
                self.register_buffer(f"l{i}_{name}", t)
            self.register_buffer(f"l{i}_bias", torch.randn(n, generator=GEN) if bias else None)
            self.cases.append((st["dequant"], group, act_bits, clip, sym))
        self.register_buffer("norm_w", 1 + 0.3 * torch.randn(16, generator=GEN))
        self.register_buffer("norm_k", 1 + 0.3 * torch.randn(LINEARS[1][1], generator=GEN))

    def forward(self, *xs: torch.Tensor) -> tuple:
        outs = [sq.hadamard(xs[i], getattr(self, f"hk{i}")) for i in range(len(HADAMARD_SIZES))]
        for i, (_, group, act_bits, clip, sym) in enumerate(self.cases):
            zeros = None if sym else getattr(self, f"l{i}_zeros")
            outs.append(
                sq.int4_linear(
                    xs[len(HADAMARD_SIZES) + i],
                    getattr(self, f"l{i}_qweight"),
                    getattr(self, f"l{i}_scales"),
                    zeros,
                    getattr(self, f"l{i}_bias"),
                    group,
                    act_bits,
                    clip,
                )
            )
        n0 = LINEARS[0][0]  # the first linear again, adding a residual (as o_proj / down_proj do)
        outs.append(sq.int4_linear(xs[len(HADAMARD_SIZES)], self.l0_qweight, self.l0_scales, None, None,
                                   LINEARS[0][2], LINEARS[0][5], LINEARS[0][6], xs[-2].view(-1, n0)))  # fmt: skip
        i = 1  # the second linear again, with the RMSNorm before it fused in (as q/k/v and gate/up do)
        outs.append(sq.int4_linear(xs[len(HADAMARD_SIZES) + i], self.l1_qweight, self.l1_scales, self.l1_zeros,
                                   self.l1_bias, LINEARS[i][2], LINEARS[i][5], LINEARS[i][6], None, self.norm_k,
                                   1e-5))  # fmt: skip
        # silu(gate) * up and R4 before the linear (as down_proj does for had), and the Hadamard alone (K = 12 * 8)
        outs.append(sq.int4_linear(xs[-3], self.l1_qweight, self.l1_scales, self.l1_zeros, self.l1_bias,
                                   LINEARS[1][2], LINEARS[1][5], LINEARS[1][6], None, None, 0.0, True,
                                   self.hk0))  # fmt: skip
        outs.append(sq.int4_linear(xs[len(HADAMARD_SIZES) + 2], self.l2_qweight, self.l2_scales, None, self.l2_bias,
                                   LINEARS[2][2], LINEARS[2][5], LINEARS[2][6], had=self.hk1))  # fmt: skip
        x = xs[-1]
        outs.append(sq.rms_norm(x.view(-1, 16), self.norm_w, 1e-5))
        outs.append(sq.silu_mul(x))
        return tuple(outs)


def _inputs() -> list[torch.Tensor]:
    xs = [torch.randn(3, n, generator=GEN) for n in HADAMARD_SIZES]
    x = torch.randn(3, 4, 16, generator=GEN)  # for rms_norm and silu_mul
    residual = torch.randn(5, LINEARS[0][0], generator=GEN)
    linears = [torch.randn(5, k, generator=GEN) for _, k, *_ in LINEARS]
    gate_up = torch.randn(5, 2 * LINEARS[1][1], generator=GEN)
    return xs + linears + [gate_up, residual, x]


def _run_program(module: nn.Module, inputs: tuple, tmp_path) -> list:
    from executorch.exir import EdgeCompileConfig, to_edge

    from spinquant.export.runtime import _runtime, load_library

    ep = torch.export.export(module, inputs, strict=False)
    program = to_edge(ep, compile_config=EdgeCompileConfig(_check_ir_validity=False)).to_executorch()
    load_library()
    path = tmp_path / "ops.pte"
    write_atomic(path, program.buffer)
    return _runtime().load_program(path).load_method("forward")


def test_eager_hadamard_matches_reference():
    for n in HADAMARD_SIZES + [1536]:
        x = torch.randn(4, n, generator=GEN)
        torch.testing.assert_close(sq.hadamard(x, base_hadamard(n)[1]), hadamard_transform(x), atol=1e-5, rtol=0)


def test_eager_int4_linear_matches_dequantized_weight():
    for n, k, group, sym, _, act_bits, clip in LINEARS:
        st = _storage(n, k, group, sym)
        x = torch.randn(5, k, generator=GEN)
        p = st["packed"]
        y = sq.int4_linear(x, p["qweight"], p["scales"], p.get("zeros"), None, min(group, k), act_bits, clip)
        xq = fake_quant(x, act_bits, sym=False, clip=clip) if act_bits < 16 else x
        torch.testing.assert_close(y, F.linear(xq, st["dequant"]), atol=1e-4, rtol=1e-5)
        r = torch.randn(5, n, generator=GEN)
        y2 = sq.int4_linear(x, p["qweight"], p["scales"], p.get("zeros"), None, min(group, k), act_bits, clip, r)
        torch.testing.assert_close(y2, y + r)
        w = torch.rand(k, generator=GEN) + 0.5
        y3 = sq.int4_linear(x, p["qweight"], p["scales"], p.get("zeros"), None, min(group, k), act_bits, clip, None, w,
                            1e-5)  # fmt: skip
        xn = rms_norm(x, w, 1e-5)
        xq = fake_quant(xn, act_bits, sym=False, clip=clip) if act_bits < 16 else xn
        torch.testing.assert_close(y3, F.linear(xq, st["dequant"]), atol=1e-4, rtol=1e-5)
        if k & (k - 1) == 0 or k % 12 == 0:  # silu(gate) * up, then the Hadamard transform, before the linear
            gate_up = torch.randn(5, 2 * k, generator=GEN)
            y4 = sq.int4_linear(gate_up, p["qweight"], p["scales"], p.get("zeros"), None, min(group, k), act_bits, clip,
                                glu=True, had=base_hadamard(k)[1])  # fmt: skip
            xh = hadamard_transform(F.silu(gate_up[:, :k]) * gate_up[:, k:])
            xq = fake_quant(xh, act_bits, sym=False, clip=clip) if act_bits < 16 else xh
            torch.testing.assert_close(y4, F.linear(xq, st["dequant"]), atol=1e-4, rtol=1e-5)


def test_eager_fused_elementwise_match_model():
    from spinquant.model import RMSNorm

    x = torch.randn(3, 4, 16, generator=GEN)
    norm = RMSNorm(16, 1e-5)
    norm.weight.data = torch.rand(16, generator=GEN) + 0.5
    torch.testing.assert_close(sq.rms_norm(x, norm.weight.detach(), 1e-5), norm(x).detach())
    torch.testing.assert_close(sq.silu_mul(x), F.silu(x[..., :8]) * x[..., 8:])


def _rope_angles(t: int, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    angles = torch.rand(t, d // 2, generator=GEN).repeat(1, 2) * 6
    return angles.cos(), angles.sin()


def _reference_attention(qkv, cos, sin, h: int, hkv: int, r3: bool = False, kv_quant=None) -> torch.Tensor:
    """Independent causal GQA attention of a packed qkv [T, (H + 2 Hkv) D]: the model's RoPE, R3 on q and k when
    asked, K and V through kv_quant when given, then SDPA."""
    from spinquant.model import apply_rope

    t, d = qkv.shape[0], qkv.shape[1] // (h + 2 * hkv)
    q, k, v = (x.reshape(t, -1, d).transpose(0, 1) for x in qkv.split([h * d, hkv * d, hkv * d], dim=-1))
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    if r3:
        q, k = hadamard_transform(q), hadamard_transform(k)
    if kv_quant is not None:
        k, v = kv_quant(k), kv_quant(v)
    out = F.scaled_dot_product_attention(q[None], k[None], v[None], is_causal=True, enable_gqa=True)
    return out[0].transpose(0, 1).reshape(t, h * d)


def test_eager_attention_does_rope_and_r3():
    h, hkv, d, seq = 6, 2, 16, 8
    qkv = torch.randn(5, (h + 2 * hkv) * d, generator=GEN)
    cos, sin = _rope_angles(5, d)
    caches = [torch.zeros(hkv, seq, d) for _ in range(4)]
    out = sq.attention(qkv, cos, sin, None, caches[0], caches[1], torch.arange(5), h)
    torch.testing.assert_close(out, _reference_attention(qkv, cos, sin, h, hkv), atol=1e-5, rtol=1e-5)
    # R3 rotates q and k alike, so the scores and the output stay; the K cache holds the rotated keys.
    out_r3 = sq.attention(qkv, cos, sin, base_hadamard(d)[1], caches[2], caches[3], torch.arange(5), h)
    torch.testing.assert_close(out_r3, out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(caches[2], hadamard_transform(caches[0]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(caches[3], caches[1])


def test_runtime_kernels_match_eager(tmp_path):
    module = OpsProgram()
    xs = _inputs()
    method = _run_program(module, tuple(xs), tmp_path)
    got = method.execute(xs)
    want = module(*xs)
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, atol=2e-5, rtol=1e-5)


def _kv_method(program: nn.Module, inputs: list[torch.Tensor], seq: int, path):
    """`program(qkv, cos, sin, pos)` exported with a dynamic token count, written to `path`, loaded in the runtime."""
    from executorch.exir import EdgeCompileConfig, ExecutorchBackendConfig, to_edge
    from torch.export import Dim

    from spinquant.export.runtime import _runtime, load_library

    t = Dim("t", min=1, max=seq)
    ep = torch.export.export(
        program,
        (*[x[:4] for x in inputs], torch.arange(4)),
        dynamic_shapes=({0: t}, {0: t}, {0: t}, {0: t}),
        strict=False,
    )
    prog = to_edge(ep, compile_config=EdgeCompileConfig(_check_ir_validity=False))
    prog = prog.to_executorch(ExecutorchBackendConfig(run_reinplace_pass=True))
    load_library()
    write_atomic(path, prog.buffer)
    return _runtime().load_program(path).load_method("forward")


class KVProgram(nn.Module):
    """One quantized-KV attention layer (R3 on q/k) with its cache as a mutable buffer."""

    def __init__(self, h: int, hkv: int, d: int, seq: int, bits: int, group: int):
        super().__init__()
        self.h, self.hkv, self.bits, self.group = h, hkv, bits, group
        self.register_buffer("hk", base_hadamard(d)[1])
        self.register_buffer(
            "cache", torch.zeros(ops.kv_cache_layout(hkv, seq, d, bits, group).nbytes, dtype=torch.uint8)
        )

    def forward(self, qkv, cos, sin, pos):
        return sq.kv_attention(qkv, cos, sin, self.hk, self.cache, pos, self.h, self.hkv, self.bits, self.group)


# (bits, group, h, hkv, d, n): small, decode steps big enough for the op to use every core, and a long context
# whose decode steps split each KV head's rows into chunks (n - 2 positions of prefill, then two decode steps)
@pytest.mark.parametrize(
    "bits,group,h,hkv,d,n",
    [(4, 0, 4, 2, 16, 7), (8, 8, 4, 2, 16, 7), (4, 32, 9, 3, 64, 40), (4, 32, 9, 3, 64, 300)],
)
def test_kv_attention_prefill_then_decode(tmp_path, bits, group, h, hkv, d, n):
    seq = n + 9 - (n + 9) % 4
    inputs = [torch.randn(n, (h + 2 * hkv) * d, generator=GEN), *_rope_angles(n, d)]
    eager = KVProgram(h, hkv, d, seq, bits, group)
    method = _kv_method(KVProgram(h, hkv, d, seq, bits, group), inputs, seq, tmp_path / "kv.pte")
    for a, b in [(0, n - 2), (n - 2, n - 1), (n - 1, n)]:
        args = [x[a:b] for x in inputs] + [torch.arange(a, b)]
        torch.testing.assert_close(method.execute(args)[0], eager(*args), atol=2e-5, rtol=1e-5)
    # independent check of the last step: RoPE, R3, fake-quantized K/V of all n positions, causal GQA attention
    ref = _reference_attention(
        *inputs, h, hkv, r3=True, kv_quant=lambda x: fake_quant(x, bits, sym=False, group=group or d)
    )
    last = [x[n - 1 : n] for x in inputs]
    # Over 300 positions a K value or two can sit on a rounding tie of its 4-bit code: the two RoPE + R3
    # computations differ by ~1e-6 and may round it apart (one code in 57,600 for this seed), moving the output ~5e-4.
    tol = 1e-5 if n < 100 else 2e-3
    torch.testing.assert_close(eager(*last, torch.tensor([n - 1])), ref[n - 1 : n], atol=tol, rtol=1e-5)


class FloatKVProgram(nn.Module):
    """One float-cache attention layer: the op writes k, v into the caches (mutable buffers) and attends."""

    def __init__(self, h: int, hkv: int, d: int, seq: int):
        super().__init__()
        self.h = h
        self.register_buffer("k_cache", torch.zeros(hkv, seq, d))
        self.register_buffer("v_cache", torch.zeros(hkv, seq, d))

    def forward(self, qkv, cos, sin, pos):
        return sq.attention(qkv, cos, sin, None, self.k_cache, self.v_cache, pos, self.h)


# head_dim 20: the SIMD paths fall back to the reference; the second case's decode steps run on every core, the
# third's in row chunks
@pytest.mark.parametrize("h,hkv,d,n", [(6, 2, 20, 7), (9, 3, 64, 40), (9, 3, 64, 300)])
def test_float_attention_prefill_then_decode(tmp_path, h, hkv, d, n):
    seq = n + 5
    inputs = [torch.randn(n, (h + 2 * hkv) * d, generator=GEN), *_rope_angles(n, d)]
    eager = FloatKVProgram(h, hkv, d, seq)
    method = _kv_method(FloatKVProgram(h, hkv, d, seq), inputs, seq, tmp_path / "attn.pte")
    for a, b in [(0, n - 2), (n - 2, n - 1), (n - 1, n)]:  # prefill, then two decode steps
        args = [x[a:b] for x in inputs] + [torch.arange(a, b)]
        torch.testing.assert_close(method.execute(args)[0], eager(*args), atol=2e-5, rtol=1e-5)
    ref = _reference_attention(*inputs, h, hkv)
    last = [x[n - 1 : n] for x in inputs]
    torch.testing.assert_close(eager(*last, torch.tensor([n - 1])), ref[n - 1 : n], atol=1e-5, rtol=1e-5)


def test_kv_cache_layout_rejects_bad_sizes():
    with pytest.raises(ValueError, match="kv_bits 4 or 8"):
        ops.kv_cache_layout(2, 16, 16, 3, 0)
    with pytest.raises(ValueError, match="must divide head_dim"):
        ops.kv_cache_layout(2, 16, 16, 4, 5)
    with pytest.raises(ValueError, match="multiple of 4"):
        ops.kv_cache_layout(2, 18, 16, 4, 0)
