// Combine: `fill` puts `key_count` key rows from row `key_base` of a chunk in the empty
// state (new panes, a window's accumulator, a session's key when it closes); `merge` folds
// one pane's rows into the accumulator, one invocation per key; `merge_pieces` adds the
// pieces of a hot key's run that update.wgsl's `fold_pieces` folded apart to its row.
// The engine merges a window's panes in pane order with the same rules as the CPU backend.

@group(1) @binding(0) var<storage, read_write> state: array<u32>;
@group(1) @binding(1) var<storage, read> pane: array<u32>;
@group(1) @binding(2) var<storage, read> ops: array<vec4<u32>>;
// merge_pieces only: the batch's sorted (key, arrival) pairs.
@group(1) @binding(3) var<storage, read> sorted: array<vec2<u32>>;

fn load2(i: u32) -> vec2<u32> {
    return vec2<u32>(state[i], state[i + 1u]);
}

fn store2(i: u32, v: vec2<u32>) {
    state[i] = v.x;
    state[i + 1u] = v.y;
}

fn pane2(i: u32) -> vec2<u32> {
    return vec2<u32>(pane[i], pane[i + 1u]);
}

const I64_MAX: vec2<u32> = vec2<u32>(0xffffffffu, 0x7fffffffu);
const I64_MIN: vec2<u32> = vec2<u32>(0u, 0x80000000u);
const F64_NAN: vec2<u32> = vec2<u32>(0u, 0x7ff80000u);
const F64_NEG_INF: vec2<u32> = vec2<u32>(0u, 0xfff00000u);

// Words 2.. of an op's empty state (words 0-1, the count, are zero).
fn identity(kind: u32) -> vec2<u32> {
    switch kind {
        case OP_MIN_F: { return F64_NAN; }
        case OP_MAX_F: { return F64_NEG_INF; }
        case OP_MIN_I, OP_FIRST: { return I64_MAX; }
        case OP_MAX_I, OP_LAST: { return I64_MIN; }
        default: { return vec2<u32>(0u, 0u); }
    }
}

fn op_words(kind: u32) -> u32 {
    switch kind {
        case OP_ROWS, OP_COUNT: { return 2u; }
        case OP_MOMENTS: { return 8u; }
        case OP_FIRST, OP_LAST: { return 6u; }
        case OP_DISTINCT_I, OP_DISTINCT_F: { return 4u + DISTINCT_BODY; }
        default: { return 4u; }
    }
}

@compute @workgroup_size(256)
fn fill(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = global_index(wid, lid);
    if (i >= params.key_count) {
        return;
    }
    let row = (params.key_base + i) * params.stride;
    for (var o = 0u; o < params.n_ops; o++) {
        let op = ops[o];
        for (var w = 0u; w < op_words(op.x); w += 2u) {
            store2(row + op.z + w, select(vec2<u32>(0u, 0u), identity(op.x), w == 2u));
        }
    }
}

fn merge_op(kind: u32, a: u32, b: u32) {
    let v = a + 2u;
    let w = b + 2u;
    switch kind {
        case OP_SUM_F: {
            store2(v, f64_add(load2(v), pane2(w)));
        }
        case OP_SUM_I: {
            store2(v, u64_add(load2(v), pane2(w)));
        }
        case OP_MIN_F, OP_MAX_F, OP_MIN_I, OP_MAX_I: {
            if (extreme_replaces(kind, pane2(w), load2(v))) {
                store2(v, pane2(w));
            }
        }
        case OP_MOMENTS: {
            // Chan et al., operation for operation as agg::Moments::merge.
            let on = pane2(w);
            let sn = load2(v);
            if (u64_is_zero(pane2(b))) {
                return;
            }
            if (u64_is_zero(load2(a))) {
                store2(v, on);
                store2(v + 2u, pane2(w + 2u));
                store2(v + 4u, pane2(w + 4u));
                return;
            }
            let n = f64_add(sn, on);
            let d = f64_sub(pane2(w + 2u), load2(v + 2u));
            store2(v + 2u, f64_add(load2(v + 2u), f64_mul(d, f64_div(on, n))));
            let spread = f64_mul(f64_mul(d, d), f64_div(f64_mul(sn, on), n));
            store2(v + 4u, f64_add(load2(v + 4u), f64_add(pane2(w + 4u), spread)));
            store2(v, n);
        }
        case OP_FIRST: {
            if (i64_less(pane2(w), load2(v))) {
                store2(v, pane2(w));
                store2(v + 2u, pane2(w + 2u));
            }
        }
        case OP_DISTINCT_I, OP_DISTINCT_F: {
            // As agg::Distinct::merge: the pane's hashes one by one, or its registers.
            if (!SKETCH) {
                return;
            }
            let n = pane[w];
            if (n != DISTINCT_DENSE) {
                for (var k = 0u; k < n; k++) {
                    distinct_insert(v, pane2(w + 2u + 2u * k));
                }
                return;
            }
            if (state[v] != DISTINCT_DENSE) {
                distinct_densify(v);
            }
            for (var i = 2u; i < 2u + DISTINCT_BODY; i++) {
                state[v + i] = bytes_max(state[v + i], pane[w + i]);
            }
        }
        case OP_LAST: {
            let t = pane2(w);
            if (!(t.x == I64_MIN.x && t.y == I64_MIN.y) && !i64_less(t, load2(v))) {
                store2(v, t);
                store2(v + 2u, pane2(w + 2u));
            }
        }
        default: {}
    }
}

// The larger of each of the four bytes of a and b.
fn bytes_max(a: u32, b: u32) -> u32 {
    let b0 = max(extractBits(a, 0u, 8u), extractBits(b, 0u, 8u));
    let b1 = max(extractBits(a, 8u, 8u), extractBits(b, 8u, 8u));
    let b2 = max(extractBits(a, 16u, 8u), extractBits(b, 16u, 8u));
    let b3 = max(extractBits(a, 24u, 8u), extractBits(b, 24u, 8u));
    return b0 | (b1 << 8u) | (b2 << 16u) | (b3 << 24u);
}

// Merges row `b` of `pane` into row `a` of `state`.
fn merge_row(a: u32, b: u32) {
    for (var o = 0u; o < params.n_ops; o++) {
        let op = ops[o];
        // Moments read both counts before they are added.
        merge_op(op.x, a + op.z, b + op.z);
        store2(a + op.z, u64_add(load2(a + op.z), pane2(b + op.z)));
    }
}

@compute @workgroup_size(256)
fn merge(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = global_index(wid, lid);
    if (i >= params.key_count) {
        return;
    }
    merge_row(i * params.stride, i * params.stride);
}

// After update.wgsl's fold_pieces, with `pane` bound to its pieces and `state` to the
// pane's chunk: invocation t, when a key's run starts in piece t and goes on past it, adds
// the rows of the run's later pieces (rows t+1, t+2, ... of `pane`) to the key's row, in
// order. params.n: events in the batch; params.m: events per piece.
@compute @workgroup_size(256)
fn merge_pieces(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = global_index(wid, lid);
    let lo = t * params.m;
    let hi = lo + params.m;
    if (hi >= params.n) {
        return;
    }
    let key = sorted[hi - 1u].x;
    if (sorted[hi].x != key || key < params.key_base || key - params.key_base >= params.key_count) {
        return;
    }
    // The run started in an earlier piece when this one is all its key, as is the event before.
    if (lo > 0u && sorted[lo].x == key && sorted[lo - 1u].x == key) {
        return;
    }
    let row = (key - params.key_base) * params.stride;
    for (var s = t + 1u; s * params.m < params.n && sorted[s * params.m].x == key; s++) {
        merge_row(row, s * params.stride);
    }
}
