// Sort: a stable LSD radix sort of a batch's (key id, arrival index) pairs by key, 8 bits a
// pass, so the fold can give each key's run, in arrival order, to one invocation. Stable
// sorting keeps arrival order within a key, so the result does not depend on the order
// threads run in. A tile is one workgroup's 256 pairs.
//
// Per pass (params.j = the digit's shift, params.k = tiles, params.m = 256 · tiles):
//   radix_count    per tile, how many pairs have each digit: hist[digit · tiles + tile]
//   scan_blocks    exclusive prefix sums of hist in blocks of 256, block totals to sums
//   scan_sums      (one invocation) exclusive prefix sums of the block totals
//   scan_add       adds each block's offset: hist is now where each (digit, tile) starts
//   radix_scatter  each pair to its place: its (digit, tile) start plus its rank in the tile

@group(1) @binding(0) var<storage, read> src: array<vec2<u32>>;
@group(1) @binding(1) var<storage, read_write> dst: array<vec2<u32>>;
@group(1) @binding(2) var<storage, read_write> hist: array<u32>;
@group(1) @binding(3) var<storage, read_write> sums: array<u32>;
@group(1) @binding(4) var<storage, read> keys: array<u32>;

var<workgroup> counts: array<atomic<u32>, WG>;
var<workgroup> tile_digits: array<u32, WG>;

fn tile_index(wid: vec3<u32>) -> u32 {
    return wid.y * params.groups_x + wid.x;
}

@compute @workgroup_size(256)
fn radix_init(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = global_index(wid, lid);
    if (i < params.n) {
        dst[i] = vec2<u32>(keys[i], i);
    }
}

@compute @workgroup_size(256)
fn radix_count(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let tile = tile_index(wid);
    let i = tile * WG + lid;
    atomicStore(&counts[lid], 0u);
    workgroupBarrier();
    if (i < params.n) {
        atomicAdd(&counts[(src[i].x >> params.j) & 255u], 1u);
    }
    workgroupBarrier();
    if (tile < params.k) {
        hist[lid * params.k + tile] = atomicLoad(&counts[lid]);
    }
}

@compute @workgroup_size(256)
fn scan_blocks(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let block = tile_index(wid);
    let i = block * WG + lid;
    tile_digits[lid] = select(0u, hist[i], i < params.m);
    workgroupBarrier();
    if (lid == 0u) {
        var sum = 0u;
        for (var t = 0u; t < WG; t++) {
            let v = tile_digits[t];
            tile_digits[t] = sum;
            sum += v;
        }
        if (block * WG < params.m) {
            sums[block] = sum;
        }
    }
    workgroupBarrier();
    if (i < params.m) {
        hist[i] = tile_digits[lid];
    }
}

@compute @workgroup_size(1)
fn scan_sums() {
    var sum = 0u;
    for (var b = 0u; b * WG < params.m; b++) {
        let v = sums[b];
        sums[b] = sum;
        sum += v;
    }
}

@compute @workgroup_size(256)
fn scan_add(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = global_index(wid, lid);
    if (i < params.m) {
        hist[i] += sums[i / WG];
    }
}

@compute @workgroup_size(256)
fn radix_scatter(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let tile = tile_index(wid);
    let i = tile * WG + lid;
    var pair = vec2<u32>(0u, 0u);
    // 256 marks "no pair": it matches no digit.
    var digit = 256u;
    if (i < params.n) {
        pair = src[i];
        digit = (pair.x >> params.j) & 255u;
    }
    tile_digits[lid] = digit;
    workgroupBarrier();
    if (i < params.n) {
        // Stable: the pairs of the same digit before this one in the tile.
        var rank = 0u;
        for (var t = 0u; t < lid; t++) {
            rank += select(0u, 1u, tile_digits[t] == digit);
        }
        dst[hist[digit * params.k + tile] + rank] = pair;
    }
}
