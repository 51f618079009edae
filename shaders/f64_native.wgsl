// Binary64 ("f64") arithmetic on adapters with SHADER_F64 and SHADER_INT64: the functions of f64.wgsl,
// computed with the device's own f64. An f64 is still carried as a vec2<u32> holding its
// bit pattern (.x = low word), so state, buffers and kernels are the same on both paths.
//
// This file is a library: no entry points, no bindings. It takes f64.wgsl's place after
// u64.wgsl when the device was opened with SHADER_F64 and SHADER_INT64 (naga's FLOAT64
// and SHADER_INT64 capabilities).
//
// Exactness: add and sub are single IEEE operations, correctly rounded, so sums equal
// the software path's bit for bit. A product that feeds a sum (the moments' updates) may
// be fused into one FMA by the driver, and a division may not be correctly rounded: the
// moments (variance, standard deviation) can then differ from the CPU's in the last bits.

fn f64_is_nan(a: vec2<u32>) -> bool {
    return (a.y & 0x7FF00000u) == 0x7FF00000u && ((a.y & 0x000FFFFFu) | a.x) != 0u;
}

// The f64 of a bit pattern, and back, through a u64 (a bitcast straight from a
// vec2<u32> to an f64 is not translated correctly by every compiler).
fn to_f64(a: vec2<u32>) -> f64 {
    return bitcast<f64>((u64(a.y) << 32u) | u64(a.x));
}

fn from_f64(x: f64) -> vec2<u32> {
    let bits = bitcast<u64>(x);
    return vec2<u32>(u32(bits & 0xFFFFFFFFlu), u32(bits >> 32u));
}

fn f64_add(a: vec2<u32>, b: vec2<u32>) -> vec2<u32> {
    return from_f64(to_f64(a) + to_f64(b));
}

fn f64_sub(a: vec2<u32>, b: vec2<u32>) -> vec2<u32> {
    return from_f64(to_f64(a) - to_f64(b));
}

fn f64_mul(a: vec2<u32>, b: vec2<u32>) -> vec2<u32> {
    return from_f64(to_f64(a) * to_f64(b));
}

fn f64_div(a: vec2<u32>, b: vec2<u32>) -> vec2<u32> {
    return from_f64(to_f64(a) / to_f64(b));
}
