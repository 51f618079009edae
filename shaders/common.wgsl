// Shared by every panes kernel: the per-dispatch parameters, the state-op kinds, 64-bit
// integers as vec2<u32> (x = low word, y = high word; u64_* helpers are in f64.wgsl) and the large-dispatch index.
// Nothing here needs an optional GPU feature.

struct Params {
    // Events in the batch (update), keys or listed keys to visit (combine, emit).
    n: u32,
    // The sort: histogram length (256 per tile), the digit's shift, tiles.
    // The fold: m events of each key's run from its j-th; fold_pieces: m events a piece.
    m: u32,
    j: u32,
    k: u32,
    // The pane that a fold dispatch applies: low word (high word in pane_hi).
    pane: u32,
    // First key and number of keys of the state chunk bound to this dispatch.
    key_base: u32,
    key_count: u32,
    // Number of state ops and words of state per key.
    n_ops: u32,
    stride: u32,
    // emit: 0 = every key of the chunk, 1 = the keys in `list`; fold_pieces: 0 = into
    // the keys' rows, 1 = into the pieces' rows.
    mode: u32,
    // Workgroups per row of a 2-D dispatch.
    groups_x: u32,
    pane_hi: u32,
}

@group(0) @binding(0) var<uniform> params: Params;

const WG: u32 = 256u;

// State ops: each op owns words at its offset in a key's state row; all but ROWS start
// with a 64-bit count of the non-null values they saw.
const OP_ROWS: u32 = 0u;
const OP_COUNT: u32 = 1u;
const OP_SUM_F: u32 = 2u;
const OP_SUM_I: u32 = 3u;
const OP_MIN_F: u32 = 4u;
const OP_MAX_F: u32 = 5u;
const OP_MIN_I: u32 = 6u;
const OP_MAX_I: u32 = 7u;
const OP_MOMENTS: u32 = 8u;
const OP_FIRST: u32 = 9u;
const OP_LAST: u32 = 10u;
// approx_count_distinct of an integer or a float column (distinct.wgsl).
const OP_DISTINCT_I: u32 = 11u;
const OP_DISTINCT_F: u32 = 12u;

// The invocation's index across a dispatch of up to 65535 x 65535 workgroups.
fn global_index(wid: vec3<u32>, lid: u32) -> u32 {
    return (wid.y * params.groups_x + wid.x) * WG + lid;
}

// Signed 64-bit comparison: flip the sign bits, compare unsigned.
fn i64_less(a: vec2<u32>, b: vec2<u32>) -> bool {
    return u64_lt(a ^ vec2<u32>(0u, 0x80000000u), b ^ vec2<u32>(0u, 0x80000000u));
}

// An unsigned key whose order is the float order with NaN above everything (as min/max
// rank floats): negative floats flip all bits, the others set the sign bit.
fn f64_order(a: vec2<u32>) -> vec2<u32> {
    if (f64_is_nan(a)) {
        return vec2<u32>(0xffffffffu, 0xffffffffu);
    }
    if ((a.y & 0x80000000u) != 0u) {
        return ~a;
    }
    return vec2<u32>(a.x, a.y | 0x80000000u);
}

fn f64_less(a: vec2<u32>, b: vec2<u32>) -> bool {
    return u64_lt(f64_order(a), f64_order(b));
}

// Whether `x` replaces `cur` as the min (OP_MIN_*) or max (OP_MAX_*) of its domain.
fn extreme_replaces(kind: u32, x: vec2<u32>, cur: vec2<u32>) -> bool {
    switch kind {
        case OP_MIN_F: { return f64_less(x, cur); }
        case OP_MAX_F: { return f64_less(cur, x); }
        case OP_MIN_I: { return i64_less(x, cur); }
        default: { return i64_less(cur, x); }
    }
}
