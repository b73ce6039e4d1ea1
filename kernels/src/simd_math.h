// Vector math written once over a traits type V (x86/vec_avx2.h, x86/vec_avx512.h, arm/vec_neon.h, the scalar
// traits of elementwise_simd.h): T, W, load, store, zero, set1, add, sub, mul, div, fma(a, b, c) = a * b + c,
// max, min, round (to nearest even) and pow2 (2^n for integral n in [-126, 127]).
#pragma once

namespace spinquant::detail {

// e^x, x clamped to [-87, 88] (the normal float range): x = n ln2 + r, |r| <= ln2 / 2, Cephes' degree-5
// polynomial; ~2 ulp. The same operations in every lane, so the scalar traits give the vector paths' bits.
template <class V>
typename V::T vexp(typename V::T x) {
  using T = typename V::T;
  x = V::min(V::max(x, V::set1(-87.0f)), V::set1(88.0f));
  const T n = V::round(V::mul(x, V::set1(1.44269504088896341f)));
  T r = V::fma(n, V::set1(-0.693359375f), x);
  r = V::fma(n, V::set1(2.12194440e-4f), r);
  T p = V::set1(1.9875691500e-4f);
  p = V::fma(p, r, V::set1(1.3981999507e-3f));
  p = V::fma(p, r, V::set1(8.3334519073e-3f));
  p = V::fma(p, r, V::set1(4.1665795894e-2f));
  p = V::fma(p, r, V::set1(1.6666665459e-1f));
  p = V::fma(p, r, V::set1(5.0000001201e-1f));
  p = V::fma(p, V::mul(r, r), V::add(r, V::set1(1.0f)));
  return V::mul(p, V::pow2(n));
}

}  // namespace spinquant::detail
