// Emit: compacts a window accumulator to the rows of keys that saw events, keys ascending,
// so that only fired rows travel back to the host. Three passes: `emit_count` counts rows
// per workgroup, `emit_scan` turns the counts into offsets (and the total, last), and
// `emit_scatter` writes each row's key and state at its offset.

@group(1) @binding(0) var<storage, read> state: array<u32>;
@group(1) @binding(1) var<storage, read> list: array<u32>;
@group(1) @binding(2) var<storage, read_write> blocks: array<u32>;
@group(1) @binding(3) var<storage, read_write> out_keys: array<u32>;
@group(1) @binding(4) var<storage, read_write> out_rows: array<u32>;

var<workgroup> flags: array<u32, WG>;

// The key the i-th candidate stands for, and whether it has a row to emit.
fn candidate(i: u32) -> vec2<u32> {
    if (i >= params.n) {
        return vec2<u32>(0u, 0u);
    }
    let key = select(params.key_base + i, list[i], params.mode == 1u);
    let row = (key - params.key_base) * params.stride;
    // Word 0-1 of a row is its row count (op ROWS comes first).
    return vec2<u32>(key, select(0u, 1u, (state[row] | state[row + 1u]) != 0u));
}

fn block_index(wid: vec3<u32>) -> u32 {
    return wid.y * params.groups_x + wid.x;
}

@compute @workgroup_size(256)
fn emit_count(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    flags[lid] = candidate(global_index(wid, lid)).y;
    workgroupBarrier();
    if (lid == 0u) {
        var total = 0u;
        for (var t = 0u; t < WG; t++) {
            total += flags[t];
        }
        blocks[block_index(wid)] = total;
    }
}

// One invocation: exclusive prefix sums over `params.key_count` blocks; the total goes
// after them.
@compute @workgroup_size(1)
fn emit_scan() {
    var sum = 0u;
    for (var b = 0u; b < params.key_count; b++) {
        let c = blocks[b];
        blocks[b] = sum;
        sum += c;
    }
    blocks[params.key_count] = sum;
}

@compute @workgroup_size(256)
fn emit_scatter(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let c = candidate(global_index(wid, lid));
    flags[lid] = c.y;
    workgroupBarrier();
    if (lid == 0u) {
        // Exclusive ranks within the workgroup, in place.
        var sum = 0u;
        for (var t = 0u; t < WG; t++) {
            let f = flags[t];
            flags[t] = sum;
            sum += f;
        }
    }
    workgroupBarrier();
    if (c.y == 0u) {
        return;
    }
    let at = blocks[block_index(wid)] + flags[lid];
    out_keys[at] = c.x;
    let row = (c.x - params.key_base) * params.stride;
    for (var w = 0u; w < params.stride; w++) {
        out_rows[at * params.stride + w] = state[row + w];
    }
}
