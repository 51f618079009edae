// Update: folds a batch of events into the state of one pane, for the keys of one state
// chunk. The batch is sorted by (key, arrival) first (sort.wgsl), so one invocation owns a
// key: it walks that key's events in arrival order, exactly as the CPU backend does, and
// no atomics are needed; a long run is walked in rounds, one dispatch each. Every number
// is folded with the same IEEE operations as on the CPU (soft f64 from f64.wgsl), so
// results do not depend on the order threads run in.
//
// `fold_pieces` shares a hot key's run among invocations instead (hardware GPUs): each
// folds one fixed-length piece of the sorted batch, and combine.wgsl's `merge_pieces` adds
// a run's later pieces to its row in order. Counts, integer sums, min, max, first and last
// are the same either way; float sums and moments are added in another grouping.

@group(1) @binding(0) var<storage, read> sorted: array<vec2<u32>>;
// The events' panes (i64), event times (i64) and input columns one after another (64-bit
// values; validity as one byte an event, each column's bytes padded to a multiple of 4), as
// the engine hands them over: the host repacks nothing.
@group(1) @binding(1) var<storage, read> pane_of: array<vec2<u32>>;
@group(1) @binding(2) var<storage, read> ts: array<vec2<u32>>;
@group(1) @binding(3) var<storage, read> vals: array<vec2<u32>>;
@group(1) @binding(4) var<storage, read> valid: array<u32>;
// Per op: kind, input column, state offset, 1 when the input has a validity column.
@group(1) @binding(5) var<storage, read> ops: array<vec4<u32>>;
@group(1) @binding(6) var<storage, read_write> state: array<u32>;

fn load2(i: u32) -> vec2<u32> {
    return vec2<u32>(state[i], state[i + 1u]);
}

fn store2(i: u32, v: vec2<u32>) {
    state[i] = v.x;
    state[i + 1u] = v.y;
}

fn count_up(i: u32) {
    store2(i, u64_add(load2(i), vec2<u32>(1u, 0u)));
}

const F64_ONE: vec2<u32> = vec2<u32>(0u, 0x3ff00000u);

// Whether event `e` is in the pane this dispatch folds.
fn in_pane(e: u32) -> bool {
    let p = pane_of[e];
    return p.x == params.pane && p.y == params.pane_hi;
}

// Whether value `e` of input column `column` is not null (for columns with validity).
fn is_valid(column: u32, e: u32) -> bool {
    let at = column * ((params.n + 3u) & ~3u) + e;
    return ((valid[at / 4u] >> ((at % 4u) * 8u)) & 0xffu) != 0u;
}

fn fold_event(row: u32, e: u32) {
    for (var o = 0u; o < params.n_ops; o++) {
        let op = ops[o];
        let at = row + op.z;
        if (op.x == OP_ROWS) {
            count_up(at);
            continue;
        }
        if (op.w != 0u && !is_valid(op.y, e)) {
            continue;
        }
        let x = vals[op.y * params.n + e];
        count_up(at);
        let v = at + 2u;
        switch op.x {
            case OP_SUM_F: {
                store2(v, f64_add(load2(v), x));
            }
            case OP_SUM_I: {
                store2(v, u64_add(load2(v), x));
            }
            case OP_MIN_F, OP_MAX_F, OP_MIN_I, OP_MAX_I: {
                if (extreme_replaces(op.x, x, load2(v))) {
                    store2(v, x);
                }
            }
            case OP_MOMENTS: {
                // Welford, operation for operation as agg::Moments::push.
                let n = f64_add(load2(v), F64_ONE);
                let mean = load2(v + 2u);
                let d = f64_sub(x, mean);
                let new_mean = f64_add(mean, f64_div(d, n));
                store2(v, n);
                store2(v + 2u, new_mean);
                store2(v + 4u, f64_add(load2(v + 4u), f64_mul(d, f64_sub(x, new_mean))));
            }
            case OP_FIRST: {
                // Ties keep the earlier arrival.
                if (i64_less(ts[e], load2(v))) {
                    store2(v, ts[e]);
                    store2(v + 2u, x);
                }
            }
            case OP_LAST: {
                // Ties take the later arrival.
                if (!i64_less(ts[e], load2(v))) {
                    store2(v, ts[e]);
                    store2(v + 2u, x);
                }
            }
            case OP_DISTINCT_I, OP_DISTINCT_F: {
                if (SKETCH) {
                    distinct_insert(v, distinct_hash(op.x, x));
                }
            }
            default: {}
        }
    }
}

@compute @workgroup_size(256)
fn fold(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = global_index(wid, lid);
    if (i >= params.n) {
        return;
    }
    let key = sorted[i].x;
    // Only the first event of each key's run works; it walks the whole run.
    if ((i > 0u && sorted[i - 1u].x == key) || key < params.key_base
        || key - params.key_base >= params.key_count) {
        return;
    }
    // This dispatch folds events `params.j .. params.j + params.m` of the run (a hot key's
    // run is folded in rounds, so that no invocation loops for too long).
    let start = i + params.j;
    if (start >= params.n || sorted[start].x != key) {
        return;
    }
    let row = (key - params.key_base) * params.stride;
    let end = min(start + params.m, params.n);
    for (var j = start; j < end && sorted[j].x == key; j++) {
        let e = sorted[j].y;
        if (in_pane(e)) {
            fold_event(row, e);
        }
    }
}

fn fold_in_pane(row: u32, j: u32) {
    let e = sorted[j].y;
    if (in_pane(e)) {
        fold_event(row, e);
    }
}

// Invocation t folds the sorted events t·m .. (t+1)·m (params.m: events per piece). The
// piece's first key continues a run when the piece before ends with it. params.mode = 0:
// every other event folds into its key's row of `state`, which no other invocation
// touches (a long run's first piece included). params.mode = 1, with `state` bound to the
// pieces buffer (rows empty): the continuing run's events fold into row t of it.
@compute @workgroup_size(256)
fn fold_pieces(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = global_index(wid, lid);
    let lo = t * params.m;
    if (lo >= params.n) {
        return;
    }
    let hi = min(lo + params.m, params.n);
    let first = sorted[lo].x;
    let continues = lo > 0u && sorted[lo - 1u].x == first;
    if (params.mode == 1u) {
        if (continues && first >= params.key_base && first - params.key_base < params.key_count) {
            for (var j = lo; j < hi && sorted[j].x == first; j++) {
                fold_in_pane(t * params.stride, j);
            }
        }
        return;
    }
    for (var j = lo; j < hi; j++) {
        let key = sorted[j].x;
        if ((continues && key == first) || key < params.key_base
            || key - params.key_base >= params.key_count) {
            continue;
        }
        fold_in_pane((key - params.key_base) * params.stride, j);
    }
}
