// Combine: `fill` puts `key_count` key rows from row `key_base` of a chunk in the empty
// state (new panes, a window's accumulator, a session's key when it closes); `merge` folds one pane's rows into the accumulator, one invocation per key.
// The engine merges a window's panes in pane order with the same rules as the CPU backend.

@group(1) @binding(0) var<storage, read_write> state: array<u32>;
@group(1) @binding(1) var<storage, read> pane: array<u32>;
@group(1) @binding(2) var<storage, read> ops: array<vec4<u32>>;

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

fn merge_op(kind: u32, a: u32) {
    let v = a + 2u;
    switch kind {
        case OP_SUM_F: {
            store2(v, f64_add(load2(v), pane2(v)));
        }
        case OP_SUM_I: {
            store2(v, u64_add(load2(v), pane2(v)));
        }
        case OP_MIN_F, OP_MAX_F, OP_MIN_I, OP_MAX_I: {
            if (extreme_replaces(kind, pane2(v), load2(v))) {
                store2(v, pane2(v));
            }
        }
        case OP_MOMENTS: {
            // Chan et al., operation for operation as agg::Moments::merge.
            let on = pane2(v);
            let sn = load2(v);
            if (u64_is_zero(pane2(a))) {
                return;
            }
            if (u64_is_zero(load2(a))) {
                store2(v, on);
                store2(v + 2u, pane2(v + 2u));
                store2(v + 4u, pane2(v + 4u));
                return;
            }
            let n = f64_add(sn, on);
            let d = f64_sub(pane2(v + 2u), load2(v + 2u));
            store2(v + 2u, f64_add(load2(v + 2u), f64_mul(d, f64_div(on, n))));
            let spread = f64_mul(f64_mul(d, d), f64_div(f64_mul(sn, on), n));
            store2(v + 4u, f64_add(load2(v + 4u), f64_add(pane2(v + 4u), spread)));
            store2(v, n);
        }
        case OP_FIRST: {
            if (i64_less(pane2(v), load2(v))) {
                store2(v, pane2(v));
                store2(v + 2u, pane2(v + 2u));
            }
        }
        case OP_LAST: {
            let t = pane2(v);
            if (!(t.x == I64_MIN.x && t.y == I64_MIN.y) && !i64_less(t, load2(v))) {
                store2(v, t);
                store2(v + 2u, pane2(v + 2u));
            }
        }
        default: {}
    }
}

@compute @workgroup_size(256)
fn merge(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = global_index(wid, lid);
    if (i >= params.key_count) {
        return;
    }
    let row = i * params.stride;
    for (var o = 0u; o < params.n_ops; o++) {
        let op = ops[o];
        let a = row + op.z;
        // Moments read both counts before they are added.
        merge_op(op.x, a);
        store2(a, u64_add(load2(a), pane2(a)));
    }
}
