// Software IEEE-754 binary64 ("f64") arithmetic for WGSL, using only 32-bit
// integer operations (no shader-f64, no 64-bit integers, no optional features).
//
// This file is a library: no entry points, no bindings. Prepend it (after u64.wgsl)
// to a shader.
//
// Representation: an f64 is a vec2<u32> holding its bit pattern,
//   .x = low 32 bits, .y = high 32 bits (sign, 11-bit exponent, top 20 fraction bits).
// This matches bytemuck::cast::<f64, [u32; 2]>(x) on little-endian hosts.
//
// Public functions:
//   f64_add(a, b), f64_sub(a, b), f64_mul(a, b), f64_div(a, b), f64_is_nan(a)
// Semantics: IEEE-754 round to nearest, ties to even, with subnormals (no
// flush to zero), signed zeros, overflow to +-inf. Every NaN result is the
// quiet NaN 0x7FF8000000000000 (input NaN payloads are not propagated).
//
// The rounding core follows the structure of Berkeley SoftFloat 3
// (roundPackToF64): significands are carried as 64-bit integers with the
// integer (hidden) bit at bit 62 and 10 extra bits below the 52-bit fraction
// for rounding; bits shifted out are "jammed" into bit 0 (sticky bit).
//
// Helpers are prefixed f64_; the u64_ ones (unsigned 64-bit integers as
// vec2<u32>(lo, hi)) are in u64.wgsl, which must come first. WGSL note:
// shifting a u32 by >= 32 is not allowed, so every variable shift is guarded.
//
// On adapters with SHADER_F64, f64_native.wgsl takes this file's place.

// ---------------------------------------------------------------------------
// f64 field access and special values
// ---------------------------------------------------------------------------

// Sign bit (0 or 1).
fn f64_sign(a: vec2<u32>) -> u32 {
    return a.y >> 31u;
}

// Biased exponent field (0..2047).
fn f64_exp(a: vec2<u32>) -> u32 {
    return (a.y >> 20u) & 0x7FFu;
}

// 52-bit fraction field.
fn f64_frac(a: vec2<u32>) -> vec2<u32> {
    return vec2<u32>(a.x, a.y & 0x000FFFFFu);
}

fn f64_is_nan(a: vec2<u32>) -> bool {
    return (a.y & 0x7FF00000u) == 0x7FF00000u && ((a.y & 0x000FFFFFu) | a.x) != 0u;
}

fn f64_is_inf(a: vec2<u32>) -> bool {
    return (a.y & 0x7FFFFFFFu) == 0x7FF00000u && a.x == 0u;
}

// +0 or -0.
fn f64_is_zero(a: vec2<u32>) -> bool {
    return ((a.y & 0x7FFFFFFFu) | a.x) == 0u;
}

// The canonical quiet NaN 0x7FF8000000000000.
fn f64_nan() -> vec2<u32> {
    return vec2<u32>(0u, 0x7FF80000u);
}

// Infinity with the given sign (0 or 1).
fn f64_inf(sign: u32) -> vec2<u32> {
    return vec2<u32>(0u, (sign << 31u) | 0x7FF00000u);
}

// Zero with the given sign (0 or 1).
fn f64_zero(sign: u32) -> vec2<u32> {
    return vec2<u32>(0u, sign << 31u);
}

// A finite nonzero value split into a 53-bit significand m (hidden bit at
// bit 52) and an exponent e, with value = m * 2^(e - 1075). For subnormal
// inputs m is normalized and e may be < 1.
struct f64_parts {
    m: vec2<u32>,
    e: i32,
}

// Unpack a finite, nonzero f64, normalizing subnormals.
fn f64_unpack(a: vec2<u32>) -> f64_parts {
    let e = f64_exp(a);
    let f = f64_frac(a);
    if (e == 0u) {
        // Subnormal: move the leading 1 up to bit 52 (bit 52 = 11 leading zeros).
        let s = u64_clz(f) - 11u;
        return f64_parts(u64_shl(f, s), 1 - i32(s));
    }
    return f64_parts(vec2<u32>(f.x, f.y | 0x00100000u), i32(e));
}

// ---------------------------------------------------------------------------
// Rounding and packing
// ---------------------------------------------------------------------------

// Round and pack (SoftFloat's roundPackToF64, round to nearest even).
// sig: significand with its leading 1 at bit 62 (or lower, for results
//      that will be subnormal) and 10 rounding bits at 9..0 (bit 0 sticky).
// exp: biased exponent minus 1, so the value is sig * 2^(exp - 1022 - 62).
// exp may be negative (subnormal / underflow) or too big (overflow).
fn f64_round_pack(sign: u32, exp_in: i32, sig_in: vec2<u32>) -> vec2<u32> {
    var exp = exp_in;
    var sig = sig_in;
    if (exp < 0) {
        // Subnormal or underflow: denormalize (with sticky) to exponent 0.
        sig = u64_shr_jam(sig, u32(-exp));
        exp = 0;
    } else if (exp >= 0x7FD) {
        // Overflow if too big even before rounding, or if rounding carries
        // the significand up to 2^63 (i.e. past the largest finite value).
        let rounded = u64_add(sig, vec2<u32>(0x200u, 0u));
        if (exp > 0x7FD || rounded.y >= 0x80000000u) {
            return f64_inf(sign);
        }
    }
    let round_bits = sig.x & 0x3FFu;
    // Add half an ulp and truncate the 10 rounding bits.
    sig = u64_shr(u64_add(sig, vec2<u32>(0x200u, 0u)), 10u);
    // Exactly halfway: round to even by clearing the lowest bit.
    if (round_bits == 0x200u) {
        sig.x = sig.x & 0xFFFFFFFEu;
    }
    if (u64_is_zero(sig)) {
        exp = 0;
    }
    // The hidden bit (bit 52) is *added* into the exponent field, so a
    // subnormal that rounds up to 2^52 becomes the smallest normal, and a
    // carry to 2^53 bumps the exponent by one.
    return vec2<u32>(sig.x, (sign << 31u) + (u32(exp) << 20u) + sig.y);
}

// Normalize sig (any nonzero 64-bit value) so its leading 1 is at bit 62,
// adjusting exp to keep the value, then round and pack. sig == 0 gives a zero
// of the given sign.
fn f64_norm_round_pack(sign: u32, exp: i32, sig: vec2<u32>) -> vec2<u32> {
    if (u64_is_zero(sig)) {
        return f64_zero(sign);
    }
    if ((sig.y & 0x80000000u) != 0u) {
        // Leading 1 at bit 63: shift right by one (keeping the sticky bit).
        return f64_round_pack(sign, exp + 1, u64_shr_jam(sig, 1u));
    }
    let s = u64_clz(sig) - 1u;
    return f64_round_pack(sign, exp - i32(s), u64_shl(sig, s));
}

// ---------------------------------------------------------------------------
// Arithmetic
// ---------------------------------------------------------------------------

fn f64_add(a: vec2<u32>, b: vec2<u32>) -> vec2<u32> {
    // NaN and infinity operands.
    if (f64_is_nan(a) || f64_is_nan(b)) {
        return f64_nan();
    }
    let a_inf = f64_is_inf(a);
    let b_inf = f64_is_inf(b);
    if (a_inf && b_inf) {
        // inf + inf = inf, inf + (-inf) = NaN.
        return select(f64_nan(), a, f64_sign(a) == f64_sign(b));
    }
    if (a_inf) {
        return a;
    }
    if (b_inf) {
        return b;
    }

    // Order operands so that |big| >= |small|; compare magnitudes as integers.
    let mag_a = vec2<u32>(a.x, a.y & 0x7FFFFFFFu);
    let mag_b = vec2<u32>(b.x, b.y & 0x7FFFFFFFu);
    var big = a;
    var small = b;
    if (u64_lt(mag_a, mag_b)) {
        big = b;
        small = a;
    }
    // The result takes the sign of the larger magnitude.
    let sign = f64_sign(big);

    // Significands with the hidden bit at bit 62 (10 rounding bits below the
    // fraction). Subnormals have no hidden bit and use exponent 1.
    let e_big = f64_exp(big);
    let e_small = f64_exp(small);
    var sig_big = u64_shl(f64_frac(big), 10u);
    var sig_small = u64_shl(f64_frac(small), 10u);
    if (e_big != 0u) {
        sig_big.y = sig_big.y | 0x40000000u;
    }
    if (e_small != 0u) {
        sig_small.y = sig_small.y | 0x40000000u;
    }
    let exp_big = i32(max(e_big, 1u));
    let exp_small = i32(max(e_small, 1u));

    // Align the smaller operand (exp_big >= exp_small since |big| >= |small|).
    sig_small = u64_shr_jam(sig_small, u32(exp_big - exp_small));

    var sig: vec2<u32>;
    if (f64_sign(a) == f64_sign(b)) {
        // Both < 2^63, so the sum fits in 64 bits. (-0) + (-0) = -0 falls out
        // of f64_norm_round_pack's zero case with sign = 1.
        sig = u64_add(sig_big, sig_small);
    } else {
        sig = u64_sub(sig_big, sig_small);
        // Exact cancellation gives +0 in round-to-nearest (also +0 + -0).
        if (u64_is_zero(sig)) {
            return f64_zero(0u);
        }
    }
    return f64_norm_round_pack(sign, exp_big - 1, sig);
}

fn f64_sub(a: vec2<u32>, b: vec2<u32>) -> vec2<u32> {
    // a - b = a + (-b); flipping a NaN's sign keeps it a NaN.
    return f64_add(a, vec2<u32>(b.x, b.y ^ 0x80000000u));
}

fn f64_mul(a: vec2<u32>, b: vec2<u32>) -> vec2<u32> {
    let sign = f64_sign(a) ^ f64_sign(b);
    if (f64_is_nan(a) || f64_is_nan(b)) {
        return f64_nan();
    }
    let a_zero = f64_is_zero(a);
    let b_zero = f64_is_zero(b);
    if (f64_is_inf(a) || f64_is_inf(b)) {
        // 0 * inf = NaN, otherwise signed infinity.
        return select(f64_inf(sign), f64_nan(), a_zero || b_zero);
    }
    if (a_zero || b_zero) {
        return f64_zero(sign);
    }

    let pa = f64_unpack(a);
    let pb = f64_unpack(b);
    // Product exponent in f64_round_pack's convention (for a product in [2, 4)).
    var exp = pa.e + pb.e - 0x3FF;
    // Hidden bits at 62 and 63, so the 128-bit product has its leading 1 at
    // bit 125 or 126: the high word then has it at bit 61 or 62.
    let p = u64_mul_wide(u64_shl(pa.m, 10u), u64_shl(pb.m, 11u));
    var sig = vec2<u32>(p.z | select(0u, 1u, (p.x | p.y) != 0u), p.w);
    if (sig.y < 0x40000000u) {
        // Product in [1, 2): normalize (the sticky bit moves to bit 1, still
        // below the rounding position).
        sig = u64_shl(sig, 1u);
        exp = exp - 1;
    }
    return f64_round_pack(sign, exp, sig);
}

fn f64_div(a: vec2<u32>, b: vec2<u32>) -> vec2<u32> {
    let sign = f64_sign(a) ^ f64_sign(b);
    if (f64_is_nan(a) || f64_is_nan(b)) {
        return f64_nan();
    }
    let a_inf = f64_is_inf(a);
    let b_inf = f64_is_inf(b);
    let a_zero = f64_is_zero(a);
    let b_zero = f64_is_zero(b);
    if (a_inf) {
        // inf / inf = NaN, inf / finite = signed infinity.
        return select(f64_inf(sign), f64_nan(), b_inf);
    }
    if (b_inf) {
        return f64_zero(sign);
    }
    if (b_zero) {
        // 0 / 0 = NaN, x / 0 = signed infinity.
        return select(f64_inf(sign), f64_nan(), a_zero);
    }
    if (a_zero) {
        return f64_zero(sign);
    }

    let pa = f64_unpack(a);
    let pb = f64_unpack(b);
    // Quotient exponent in f64_round_pack's convention (for a quotient in [1, 2)).
    var exp = pa.e - pb.e + 0x3FE;
    var rem = pa.m;
    let den = pb.m;
    if (u64_lt(rem, den)) {
        // Make the significand quotient lie in [1, 2).
        rem = u64_shl(rem, 1u);
        exp = exp - 1;
    }

    // Restoring long division: 55 quotient bits, q = floor(rem * 2^54 / den),
    // leading 1 at bit 54. rem < 2 * den < 2^54 throughout.
    var q = vec2<u32>(0u, 0u);
    for (var i = 0u; i < 55u; i = i + 1u) {
        q = vec2<u32>(q.x << 1u, (q.y << 1u) | (q.x >> 31u));
        if (!u64_lt(rem, den)) {
            rem = u64_sub(rem, den);
            q.x = q.x | 1u;
        }
        rem = vec2<u32>(rem.x << 1u, (rem.y << 1u) | (rem.x >> 31u));
    }
    // Leading 1 to bit 62; a nonzero remainder is the sticky bit.
    var sig = u64_shl(q, 8u);
    if (!u64_is_zero(rem)) {
        sig.x = sig.x | 1u;
    }
    return f64_round_pack(sign, exp, sig);
}
