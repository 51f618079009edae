// Sort: orders a batch's events by (key id, arrival index) with a bitonic network, so the
// fold can give each key's run to one invocation. The pairs are unique, so the result is
// the same whatever order threads run in. Padding sorts last.

@group(1) @binding(0) var<storage, read_write> sorted: array<vec2<u32>>;
@group(1) @binding(1) var<storage, read> keys: array<u32>;

const PAD: vec2<u32> = vec2<u32>(0xffffffffu, 0xffffffffu);

@compute @workgroup_size(256)
fn sort_init(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = global_index(wid, lid);
    if (i >= params.m) {
        return;
    }
    if (i < params.n) {
        sorted[i] = vec2<u32>(keys[i], i);
    } else {
        sorted[i] = PAD;
    }
}

@compute @workgroup_size(256)
fn sort_step(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = global_index(wid, lid);
    let l = i ^ params.j;
    if (i >= params.m || l <= i) {
        return;
    }
    let a = sorted[i];
    let b = sorted[l];
    let ascending = (i & params.k) == 0u;
    if (u64_lt(b.yx, a.yx) == ascending) {
        sorted[i] = b;
        sorted[l] = a;
    }
}
