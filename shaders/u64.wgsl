// Unsigned 64-bit integers for WGSL as vec2<u32>(lo, hi), using only 32-bit integer
// operations (no 64-bit integers, no optional features): the counts and integer sums of
// every kernel, and the significands of the software f64 in f64.wgsl.
//
// This file is a library: no entry points, no bindings. WGSL note: shifting a u32 by
// >= 32 is not allowed, so every variable shift below is guarded.

// ---------------------------------------------------------------------------
// 64-bit unsigned integer helpers: vec2<u32>(lo, hi)
// ---------------------------------------------------------------------------

// a + b (mod 2^64).
fn u64_add(a: vec2<u32>, b: vec2<u32>) -> vec2<u32> {
    let lo = a.x + b.x;
    let carry = select(0u, 1u, lo < a.x);
    return vec2<u32>(lo, a.y + b.y + carry);
}

// a - b (mod 2^64).
fn u64_sub(a: vec2<u32>, b: vec2<u32>) -> vec2<u32> {
    let lo = a.x - b.x;
    let borrow = select(0u, 1u, a.x < b.x);
    return vec2<u32>(lo, a.y - b.y - borrow);
}

// a < b.
fn u64_lt(a: vec2<u32>, b: vec2<u32>) -> bool {
    return a.y < b.y || (a.y == b.y && a.x < b.x);
}

// a == 0.
fn u64_is_zero(a: vec2<u32>) -> bool {
    return (a.x | a.y) == 0u;
}

// a << n for any n (n >= 64 gives 0).
fn u64_shl(a: vec2<u32>, n: u32) -> vec2<u32> {
    if (n == 0u) {
        return a;
    }
    if (n < 32u) {
        return vec2<u32>(a.x << n, (a.y << n) | (a.x >> (32u - n)));
    }
    if (n < 64u) {
        return vec2<u32>(0u, a.x << (n - 32u));
    }
    return vec2<u32>(0u, 0u);
}

// a >> n (logical) for any n (n >= 64 gives 0).
fn u64_shr(a: vec2<u32>, n: u32) -> vec2<u32> {
    if (n == 0u) {
        return a;
    }
    if (n < 32u) {
        return vec2<u32>((a.x >> n) | (a.y << (32u - n)), a.y >> n);
    }
    if (n < 64u) {
        return vec2<u32>(a.y >> (n - 32u), 0u);
    }
    return vec2<u32>(0u, 0u);
}

// a >> n for any n, with the sticky bit: if any 1 bit was shifted out,
// bit 0 of the result is set ("shift right and jam").
fn u64_shr_jam(a: vec2<u32>, n: u32) -> vec2<u32> {
    if (n == 0u) {
        return a;
    }
    if (n >= 64u) {
        return vec2<u32>(select(0u, 1u, !u64_is_zero(a)), 0u);
    }
    let r = u64_shr(a, n);
    // The shift lost bits iff shifting back does not restore a.
    let back = u64_shl(r, n);
    let lost = back.x != a.x || back.y != a.y;
    return vec2<u32>(r.x | select(0u, 1u, lost), r.y);
}

// Number of leading zero bits (64 for a == 0).
fn u64_clz(a: vec2<u32>) -> u32 {
    if (a.y != 0u) {
        return countLeadingZeros(a.y);
    }
    return 32u + countLeadingZeros(a.x);
}

// Full 32 x 32 -> 64 bit product, computed from 16-bit halves.
fn u64_mul32(a: u32, b: u32) -> vec2<u32> {
    let al = a & 0xFFFFu;
    let ah = a >> 16u;
    let bl = b & 0xFFFFu;
    let bh = b >> 16u;
    let ll = al * bl; // weight 2^0
    let lh = al * bh; // weight 2^16
    let hl = ah * bl; // weight 2^16
    let hh = ah * bh; // weight 2^32
    let mid = lh + hl;
    // A carry out of mid is worth 2^48 = 2^16 in the high word.
    let mid_carry = select(0u, 0x10000u, mid < lh);
    let lo = ll + (mid << 16u);
    let lo_carry = select(0u, 1u, lo < ll);
    let hi = hh + (mid >> 16u) + mid_carry + lo_carry;
    return vec2<u32>(lo, hi);
}

// Full 64 x 64 -> 128 bit product as four 32-bit words, least significant first.
fn u64_mul_wide(a: vec2<u32>, b: vec2<u32>) -> vec4<u32> {
    let p00 = u64_mul32(a.x, b.x); // weight 2^0
    let p01 = u64_mul32(a.x, b.y); // weight 2^32
    let p10 = u64_mul32(a.y, b.x); // weight 2^32
    let p11 = u64_mul32(a.y, b.y); // weight 2^64
    // Word 1: sum of three 32-bit values; .y of the u64 sum is the carry.
    let w1 = u64_add(u64_add(vec2<u32>(p00.y, 0u), vec2<u32>(p01.x, 0u)), vec2<u32>(p10.x, 0u));
    // Word 2: three 32-bit values plus the carry from word 1.
    let w2 = u64_add(
        u64_add(vec2<u32>(p01.y, 0u), vec2<u32>(p10.y, 0u)),
        u64_add(vec2<u32>(p11.x, 0u), vec2<u32>(w1.y, 0u)),
    );
    // Word 3 cannot overflow: the full product fits in 128 bits.
    return vec4<u32>(p00.x, w1.x, w2.x, p11.y + w2.y);
}
