// The sketch of approx_count_distinct in a state row, the same sketch as the CPU's
// (kernels/src/distinct.rs): exact while it holds at most 256 distinct hashes, then 2^12
// one-byte HyperLogLog registers. Merged, two sketches give exactly the sketch of the
// union, so every backend's estimate is the same number.
//
// This file is a library for the kernel files that keep state rows (update.wgsl and
// combine.wgsl): it works on their `state` binding through their load2/store2, and is
// compiled after them. One invocation owns a row, so nothing here needs atomics.
//
// Words of an op (from `at`): 0-1 the count of non-null values, as every op; 2 the number
// of hashes held, or DISTINCT_DENSE; 3 unused (0); 4.. the body, DISTINCT_BODY words:
// - while sparse: the hashes in arrival order (2 words each, words 0-511 of the body),
//   and an open-addressing index over them (512 slots of 16 bits, words 512-767 of the
//   body): a slot holds the hash's position + 1, 0 when empty;
// - once dense: the registers, 4 a word, register i in byte i % 4 of word i / 4.

// False in the pipelines of jobs without approx_count_distinct, which compiles the sketch
// out of their kernels: on Mesa's lavapipe, kernels that merely held the sketch's loops
// miscounted hot keys folded in pieces, although no sketch code ran.
override SKETCH: bool = true;

const DISTINCT_SPARSE_MAX: u32 = 256u;
const DISTINCT_SLOTS: u32 = 512u;
const DISTINCT_BODY: u32 = 1024u;
const DISTINCT_DENSE: u32 = 0xffffffffu;
const DISTINCT_PRECISION: u32 = 12u;

// Low 64 bits of a * b.
fn u64_mul_lo(a: vec2<u32>, b: vec2<u32>) -> vec2<u32> {
    return u64_mul_wide(a, b).xy;
}

// The hash of a value, as agg::Distinct::push_i64 / push_f64: floats count -0.0 as 0.0 and
// every NaN as one value; then MurmurHash3's 64-bit finalizer.
fn distinct_hash(kind: u32, value: vec2<u32>) -> vec2<u32> {
    var x = value;
    if (kind == OP_DISTINCT_F) {
        if (x.x == 0u && (x.y & 0x7fffffffu) == 0u) {
            x = vec2<u32>(0u, 0u);
        } else if (f64_is_nan(x)) {
            x = vec2<u32>(0u, 0x7ff80000u);
        }
    }
    x = x ^ u64_shr(x, 33u);
    x = u64_mul_lo(x, vec2<u32>(0xed558ccdu, 0xff51afd7u));
    x = x ^ u64_shr(x, 33u);
    x = u64_mul_lo(x, vec2<u32>(0x1a85ec53u, 0xc4ceb9feu));
    return x ^ u64_shr(x, 33u);
}

// A hash's register, (index << 8) | rank: the index is its top 12 bits, the rank the
// position of the first 1 bit after them (capped by a sentinel bit).
fn distinct_register(h: vec2<u32>) -> u32 {
    let index = h.y >> (32u - DISTINCT_PRECISION);
    let rest = u64_shl(h, DISTINCT_PRECISION) | vec2<u32>(1u << (DISTINCT_PRECISION - 1u), 0u);
    return (index << 8u) | (u64_clz(rest) + 1u);
}

// Raises register `r` (from distinct_register) of the registers at `body`.
fn distinct_raise(body: u32, r: u32) {
    let index = r >> 8u;
    let rank = r & 0xffu;
    let word = body + index / 4u;
    let shift = (index % 4u) * 8u;
    let cur = (state[word] >> shift) & 0xffu;
    if (rank > cur) {
        state[word] = (state[word] & ~(0xffu << shift)) | (rank << shift);
    }
}

// The 16-bit slot `s` of the index at `body`.
fn distinct_slot(body: u32, s: u32) -> u32 {
    return (state[body + 2u * DISTINCT_SPARSE_MAX + s / 2u] >> ((s % 2u) * 16u)) & 0xffffu;
}

fn distinct_set_slot(body: u32, s: u32, v: u32) {
    let word = body + 2u * DISTINCT_SPARSE_MAX + s / 2u;
    let shift = (s % 2u) * 16u;
    state[word] = (state[word] & ~(0xffffu << shift)) | (v << shift);
}

// Switches the sketch at `v` (word 2 of the op) from its hashes to registers.
fn distinct_densify(v: u32) {
    let body = v + 2u;
    let n = min(state[v], DISTINCT_SPARSE_MAX);
    var registers: array<u32, 256>;
    for (var k = 0u; k < n; k++) {
        registers[k] = distinct_register(load2(body + 2u * k));
    }
    for (var w = 0u; w < DISTINCT_BODY; w++) {
        state[body + w] = 0u;
    }
    for (var k = 0u; k < n; k++) {
        distinct_raise(body, registers[k]);
    }
    state[v] = DISTINCT_DENSE;
}

// Adds hash `h` to the sketch at `v` (word 2 of the op).
fn distinct_insert(v: u32, h: vec2<u32>) {
    let body = v + 2u;
    let n = state[v];
    if (n == DISTINCT_DENSE) {
        distinct_raise(body, distinct_register(h));
        return;
    }
    // At most 256 of the 512 slots are taken, so the probe ends at an empty one.
    var s = h.x % DISTINCT_SLOTS;
    for (var probe = 0u; probe < DISTINCT_SLOTS; probe++) {
        let k = distinct_slot(body, s);
        if (k == 0u) {
            break;
        }
        let held = load2(body + 2u * (k - 1u));
        if (held.x == h.x && held.y == h.y) {
            return;
        }
        s = (s + 1u) % DISTINCT_SLOTS;
    }
    if (n == DISTINCT_SPARSE_MAX) {
        // The 257th distinct hash: registers from here on.
        distinct_densify(v);
        distinct_raise(body, distinct_register(h));
        return;
    }
    store2(body + 2u * n, h);
    distinct_set_slot(body, s, n + 1u);
    state[v] = n + 1u;
}
