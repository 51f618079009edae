//! Bit-exact tests of the software binary64 WGSL library `shaders/f64.wgsl`.
//!
//! `gpu_matches_native_f64` runs `f64_add/sub/mul/div` on a wgpu device
//! created with `Features::empty()` (Mesa lavapipe on CI machines) over about
//! 1.3M deterministic input pairs and compares every result bit-for-bit with
//! Rust's native `f64` arithmetic (NaN results only need to be NaN).
//! `naga_validates_library` checks that the library validates with naga and
//! no optional capabilities, without needing a GPU.

use std::time::Instant;

use wgpu::util::DeviceExt;

/// The library under test.
const LIB: &str = concat!(
    include_str!("../../shaders/u64.wgsl"),
    include_str!("../../shaders/f64.wgsl")
);

/// The library that takes its place on adapters with `SHADER_F64`.
const NATIVE: &str = concat!(
    include_str!("../../shaders/u64.wgsl"),
    include_str!("../../shaders/f64_native.wgsl")
);

/// Test kernel appended to the library: one invocation per input pair
/// `(a.lo, a.hi, b.lo, b.hi)`, writing `(add, sub)` and `(mul, div)`.
const KERNEL: &str = r#"
@group(0) @binding(0) var<storage, read> test_inputs: array<vec4<u32>>;
@group(0) @binding(1) var<storage, read_write> test_outputs: array<vec4<u32>>;

@compute @workgroup_size(64)
fn test_main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if (i >= arrayLength(&test_inputs)) {
        return;
    }
    let p = test_inputs[i];
    let a = p.xy;
    let b = p.zw;
    test_outputs[2u * i] = vec4<u32>(f64_add(a, b), f64_sub(a, b));
    test_outputs[2u * i + 1u] = vec4<u32>(f64_mul(a, b), f64_div(a, b));
}
"#;

/// Workgroup size of `KERNEL`.
const WORKGROUP: u32 = 64;
/// Pairs per dispatch: 4096 workgroups, 4 MiB of input, 8 MiB of output.
const CHUNK: usize = 1 << 18;

const SIGN: u64 = 0x8000_0000_0000_0000;
const FRAC: u64 = 0x000F_FFFF_FFFF_FFFF;

// ---------------------------------------------------------------------------
// Deterministic input generation
// ---------------------------------------------------------------------------

/// SplitMix64 pseudo random generator (deterministic, no extra crates).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0; the modulo bias is irrelevant here).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + self.below((hi - lo + 1) as u64) as i64
    }

    /// Random sign bit (as the f64 bit).
    fn sign(&mut self) -> u64 {
        self.next() & SIGN
    }

    /// A 52-bit fraction, mostly uniform but often with structured bit
    /// patterns (all ones, all zeros, short runs) that stress carries.
    fn frac(&mut self) -> u64 {
        let r = self.next();
        match self.below(10) {
            0 => FRAC,
            1 => 0,
            2 => r & 0xFF,                        // low bits only
            3 => r & 0x000F_F000_0000_0000,       // high bits only
            4 => FRAC ^ (1 << self.below(52)),    // all ones but one
            5 => 1 << self.below(52),             // single bit
            6 => FRAC >> self.below(53),          // run of low ones
            7 => (FRAC << self.below(53)) & FRAC, // run of high ones
            _ => r & FRAC,
        }
    }

    /// A finite f64 with the given biased exponent (0..=2046).
    fn with_exp(&mut self, exp: i64) -> f64 {
        let exp = exp.clamp(0, 2046) as u64;
        f64::from_bits(self.sign() | (exp << 52) | self.frac())
    }

    /// A finite f64 with a uniformly random biased exponent.
    fn finite(&mut self) -> f64 {
        let e = self.range(0, 2046);
        self.with_exp(e)
    }
}

/// Biased exponent field of `x`.
fn exp_of(x: f64) -> i64 {
    ((x.to_bits() >> 52) & 0x7FF) as i64
}

/// `2^k` for k in -1074..=1023, built from bits.
fn pow2(k: i64) -> f64 {
    if k >= -1022 {
        f64::from_bits(((k + 1023) as u64) << 52)
    } else {
        f64::from_bits(1u64 << (k + 1074))
    }
}

/// Special and boundary values, crossed with each other and with random values.
fn specials() -> Vec<f64> {
    let mut v = vec![
        0.0,
        -0.0,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::NAN,
        -f64::NAN,
        f64::from_bits(0x7FF0_0000_0000_0001), // signalling NaN
        f64::from_bits(0xFFF8_0000_0000_1234), // negative NaN with payload
        1.0,
        -1.0,
        2.0,
        0.5,
        3.0,
        -3.0,
        0.1,
        1.0 / 3.0,
        f64::MIN_POSITIVE,
        -f64::MIN_POSITIVE,
        f64::EPSILON,
        f64::EPSILON / 2.0,
        f64::MAX,
        f64::MIN,
        f64::from_bits(1),                     // smallest subnormal
        f64::from_bits(0x8000_0000_0000_0001), // its negative
        f64::from_bits(2),
        f64::from_bits(3),
        f64::from_bits(FRAC),                  // largest subnormal
        f64::from_bits(0x0008_0000_0000_0000), // MIN_POSITIVE / 2
        f64::MIN_POSITIVE + f64::from_bits(1),
        f64::from_bits(f64::MAX.to_bits() - 1),
        1.0 + f64::EPSILON,
        1.0 - f64::EPSILON / 2.0,
        pow2(1023),
        pow2(-1022),
        pow2(-1074),
        pow2(512),
        pow2(-512),
        pow2(-537),
        pow2(53),
        pow2(-53),
        9_007_199_254_740_993.0, // 2^53 + 1 (rounds to 2^53)
        123_456_789.0,
    ];
    let negs: Vec<f64> = v.iter().map(|x| -x).collect();
    v.extend(negs);
    v
}

/// All test pairs. Deterministic for a fixed seed.
fn inputs() -> Vec<(f64, f64)> {
    let mut rng = Rng(0x5EED_F64D_0C0F_FEE5);
    let mut v: Vec<(f64, f64)> = Vec::with_capacity(1_300_000);

    // 1. Specials crossed with specials, and with random values.
    let sp = specials();
    for &a in &sp {
        for &b in &sp {
            v.push((a, b));
        }
    }
    for _ in 0..40_000 {
        let s = sp[rng.below(sp.len() as u64) as usize];
        let x = rng.finite();
        v.push((s, x));
        v.push((x, s));
    }

    // 2. Uniformly random bit patterns (includes NaNs, infinities, subnormals).
    for _ in 0..150_000 {
        v.push((f64::from_bits(rng.next()), f64::from_bits(rng.next())));
    }

    // 3. Random finite values with exponents spread over the full range.
    for _ in 0..150_000 {
        v.push((rng.finite(), rng.finite()));
    }

    // 4. Close exponents (difference 0..=70): alignment, sticky bits, carries.
    for _ in 0..150_000 {
        let ea = rng.range(0, 2046);
        let eb = ea - rng.range(0, 70);
        let (a, b) = (rng.with_exp(ea), rng.with_exp(eb));
        if rng.below(2) == 0 {
            v.push((a, b));
        } else {
            v.push((b, a));
        }
    }

    // 5. Cancellation: opposite signs, equal or nearly equal magnitudes.
    for _ in 0..120_000 {
        let a = rng.finite();
        let bits = a.to_bits();
        let b = match rng.below(5) {
            // Exactly -a.
            0 => -a,
            // -a plus or minus a few ulps (may cross exponent boundaries).
            1 | 2 => {
                let d = rng.range(-8, 8);
                -f64::from_bits((bits as i64).wrapping_add(d) as u64 & !SIGN | (bits & SIGN))
            }
            // Same exponent, random low fraction bits.
            3 => {
                let keep = rng.below(53);
                let mask = (1u64 << keep) - 1;
                -f64::from_bits((bits & !mask) | (rng.next() & mask))
            }
            // Exponent one lower or higher.
            _ => {
                let e = exp_of(a) + if rng.below(2) == 0 { 1 } else { -1 };
                let x = rng.with_exp(e);
                f64::from_bits(x.to_bits() & !SIGN | (!bits & SIGN))
            }
        };
        v.push((a, b));
    }

    // 6. Subnormals and values near the subnormal boundary / near f64::MAX.
    let low = |rng: &mut Rng| {
        let e = rng.range(0, 3);
        rng.with_exp(e)
    };
    let high = |rng: &mut Rng| {
        let e = rng.range(2043, 2046);
        rng.with_exp(e)
    };
    for _ in 0..40_000 {
        v.push((low(&mut rng), low(&mut rng)));
        v.push((high(&mut rng), high(&mut rng)));
        let (l, h) = (low(&mut rng), high(&mut rng));
        v.push((l, h));
        v.push((h, l));
    }
    // Products and quotients landing near the underflow and overflow edges.
    for _ in 0..120_000 {
        let ea = rng.range(1, 2046);
        let target = if rng.below(2) == 0 {
            rng.range(-60, 3) // result exponent in the subnormal range
        } else {
            rng.range(2042, 2050) // result exponent near or past the top
        };
        // mul: e_result ~ ea + eb - 1023; div: e_result ~ ea - eb + 1023.
        let eb = if rng.below(2) == 0 {
            target + 1023 - ea
        } else {
            ea + 1023 - target
        };
        if !(0..=2046).contains(&eb) {
            continue;
        }
        v.push((rng.with_exp(ea), rng.with_exp(eb)));
    }

    // 7. Exact rounding ties.
    for _ in 0..30_000 {
        // a + b where b is exactly half an ulp of a (times an odd factor).
        let ea = rng.range(54, 2046);
        let a = rng.with_exp(ea);
        let half_ulp = pow2(ea - 1023 - 53) * [1.0, 3.0, 5.0][rng.below(3) as usize];
        let b = if rng.below(2) == 0 {
            half_ulp
        } else {
            -half_ulp
        };
        v.push((a, b));
        v.push((b, a));
    }
    for i in 0..1000 {
        v.push((1.0, pow2(-53)));
        v.push((1.0 + f64::EPSILON * i as f64, pow2(-53)));
        v.push((-(1.0 + f64::EPSILON * i as f64), -pow2(-53)));
        v.push((pow2(53) + (i * 2) as f64, 1.0));
        v.push((pow2(53) + (i * 2) as f64, -1.0));
    }
    for _ in 0..60_000 {
        // Products of two 27-bit significands have at most 54 bits: when they
        // have 54, the last bit decides between exact and an exact tie.
        let ma = (1u64 << 26) | rng.below(1 << 26);
        let mb = (1u64 << 26) | rng.below(1 << 26);
        // a = ma * 2^ka and b = mb * 2^kb are exact normal values.
        let ka = rng.range(-1000, 960);
        let kb = if rng.below(2) == 0 {
            rng.range(-1000, 960)
        } else {
            // Steer the product into the subnormal range (ties while denormalizing).
            (rng.range(-1130, -1070) - ka).clamp(-1000, 960)
        };
        let a = ma as f64 * pow2(ka) * if rng.below(2) == 0 { 1.0 } else { -1.0 };
        let b = mb as f64 * pow2(kb);
        v.push((a, b));
        // Dividing by a power of two into the subnormal range: exact ties.
        let k = rng.range(1, 60);
        let e = rng.range(1, 60);
        let x = rng.with_exp(e);
        v.push((x, pow2(k)));
        // Exact quotients (product of 26-bit values divided by one factor).
        let (pa, pb) = (ma >> 1, mb >> 1);
        v.push(((pa * pb) as f64, pb as f64));
    }

    // 8. Small integers as f64 (Welford / counting patterns).
    let mut mean = 0.0f64;
    for n in 1..=30_000u32 {
        let nf = f64::from(n);
        let x = rng.finite().abs().min(1e6) * if rng.below(2) == 0 { 1.0 } else { -1.0 };
        let delta = x - mean;
        v.push((nf - 1.0, 1.0)); // n += 1.0
        v.push((delta, nf)); // delta / n
        v.push((mean, delta / nf));
        v.push((delta, x - (mean + delta / nf)));
        v.push((nf, nf)); // n * n, n / n, n - n
        v.push((x, nf));
        mean += delta / nf;
    }

    v
}

// ---------------------------------------------------------------------------
// GPU plumbing
// ---------------------------------------------------------------------------

fn create_device(features: wgpu::Features) -> (wgpu::Device, wgpu::Queue) {
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter =
        match pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions::default()))
        {
            Ok(a) => a,
            Err(e) => panic!(
                "no wgpu adapter found ({e}); install a Vulkan driver, e.g. Mesa lavapipe: \
             `apt-get install mesa-vulkan-drivers`"
            ),
        };
    let info = adapter.get_info();
    eprintln!(
        "adapter: {} ({:?}, {:?})",
        info.name, info.device_type, info.backend
    );
    let desc = wgpu::DeviceDescriptor {
        label: Some("soft_f64"),
        required_features: features,
        required_limits: adapter.limits(),
        ..Default::default()
    };
    match pollster::block_on(adapter.request_device(&desc)) {
        Ok(dq) => dq,
        Err(e) => panic!("request_device failed: {e}"),
    }
}

fn create_pipeline(device: &wgpu::Device, lib: &str) -> wgpu::ComputePipeline {
    let source = format!("{lib}\n{KERNEL}");
    let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("soft_f64 test"),
        source: wgpu::ShaderSource::Wgsl(source.into()),
    });
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some("soft_f64 test"),
        layout: None,
        module: &module,
        entry_point: Some("test_main"),
        compilation_options: Default::default(),
        cache: None,
    });
    if let Some(err) = pollster::block_on(scope.pop()) {
        panic!("shader / pipeline validation failed:\n{err}");
    }
    pipeline
}

/// Runs the kernel over `pairs`; returns 8 u32 per pair:
/// add (lo, hi), sub (lo, hi), mul (lo, hi), div (lo, hi).
fn run_chunk(
    device: &wgpu::Device,
    queue: &wgpu::Queue,
    pipeline: &wgpu::ComputePipeline,
    pairs: &[(f64, f64)],
) -> Vec<u32> {
    let n = pairs.len();
    let input: Vec<u32> = pairs
        .iter()
        .flat_map(|&(a, b)| {
            let a: [u32; 2] = bytemuck::cast(a);
            let b: [u32; 2] = bytemuck::cast(b);
            [a[0], a[1], b[0], b[1]]
        })
        .collect();
    let out_size = (n * 8 * 4) as u64;
    let input_buf = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some("inputs"),
        contents: bytemuck::cast_slice(&input),
        usage: wgpu::BufferUsages::STORAGE,
    });
    let output_buf = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("outputs"),
        size: out_size,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    });
    let staging = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("staging"),
        size: out_size,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: None,
        layout: &pipeline.get_bind_group_layout(0),
        entries: &[
            wgpu::BindGroupEntry {
                binding: 0,
                resource: input_buf.as_entire_binding(),
            },
            wgpu::BindGroupEntry {
                binding: 1,
                resource: output_buf.as_entire_binding(),
            },
        ],
    });
    let mut encoder =
        device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
    {
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: None,
            timestamp_writes: None,
        });
        pass.set_pipeline(pipeline);
        pass.set_bind_group(0, &bind_group, &[]);
        let groups = (n as u32).div_ceil(WORKGROUP);
        assert!(groups <= 65_535, "too many workgroups in one dispatch");
        pass.dispatch_workgroups(groups, 1, 1);
    }
    encoder.copy_buffer_to_buffer(&output_buf, 0, &staging, 0, out_size);
    queue.submit([encoder.finish()]);

    let (tx, rx) = std::sync::mpsc::channel();
    staging.map_async(wgpu::MapMode::Read, .., move |r| {
        let _ = tx.send(r);
    });
    device
        .poll(wgpu::PollType::wait_indefinitely())
        .expect("device poll failed");
    rx.recv()
        .expect("map callback dropped")
        .expect("buffer mapping failed");
    let data = staging
        .get_mapped_range(..)
        .expect("get_mapped_range failed");
    let out: Vec<u32> = bytemuck::cast_slice(&data).to_vec();
    drop(data);
    staging.unmap();
    out
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

fn hexf(x: f64) -> String {
    format!("0x{:016X} ({x:e})", x.to_bits())
}

#[test]
fn gpu_matches_native_f64() {
    matches_rust_f64(LIB, wgpu::Features::empty());
}

/// The device's own f64 (lavapipe has `SHADER_F64`) through the same functions: add, sub
/// and mul are correctly rounded there too. (Division is only checked as the driver does
/// it: Vulkan allows it to be less than correctly rounded; lavapipe's is.)
#[test]
fn the_native_library_matches_rust_f64() {
    matches_rust_f64(
        NATIVE,
        wgpu::Features::SHADER_F64 | wgpu::Features::SHADER_INT64,
    );
}

fn matches_rust_f64(lib: &str, features: wgpu::Features) {
    let t0 = Instant::now();
    let pairs = inputs();
    let t_gen = t0.elapsed();
    let (device, queue) = create_device(features);
    let pipeline = create_pipeline(&device, lib);

    type Op = (&'static str, fn(f64, f64) -> f64);
    let ops: [Op; 4] = [
        ("add", |a, b| a + b),
        ("sub", |a, b| a - b),
        ("mul", |a, b| a * b),
        ("div", |a, b| a / b),
    ];
    let mut mismatches = [0usize; 4];
    let mut first: [Option<String>; 4] = Default::default();

    let t1 = Instant::now();
    for chunk in pairs.chunks(CHUNK) {
        let out = run_chunk(&device, &queue, &pipeline, chunk);
        for (i, &(a, b)) in chunk.iter().enumerate() {
            for (k, (name, op)) in ops.iter().enumerate() {
                let expected = op(a, b);
                let got_bits =
                    u64::from(out[8 * i + 2 * k]) | (u64::from(out[8 * i + 2 * k + 1]) << 32);
                let got = f64::from_bits(got_bits);
                let ok = if expected.is_nan() {
                    got.is_nan()
                } else {
                    got_bits == expected.to_bits()
                };
                if !ok {
                    mismatches[k] += 1;
                    if first[k].is_none() {
                        first[k] = Some(format!(
                            "{name}: a = {}, b = {}\n    expected {}\n    got      {}",
                            hexf(a),
                            hexf(b),
                            hexf(expected),
                            hexf(got)
                        ));
                    }
                }
            }
        }
    }
    eprintln!(
        "{} pairs x 4 ops: generated in {:.2?}, GPU run + compare in {:.2?}",
        pairs.len(),
        t_gen,
        t1.elapsed()
    );
    if mismatches.iter().any(|&m| m > 0) {
        let mut msg = String::from("soft f64 results differ from native f64:\n");
        for (k, (name, _)) in ops.iter().enumerate() {
            msg += &format!("  {name}: {} mismatches\n", mismatches[k]);
            if let Some(f) = &first[k] {
                msg += &format!("  first: {f}\n");
            }
        }
        panic!("{msg}");
    }
}

#[test]
fn naga_validates_library() {
    let source = format!(
        "{LIB}\n{}",
        r#"
@group(0) @binding(0) var<storage, read_write> naga_out: array<vec2<u32>, 5>;

@compute @workgroup_size(1)
fn naga_main() {
    let a = vec2<u32>(0u, 0x3FF00000u); // 1.0
    let b = vec2<u32>(0u, 0x40000000u); // 2.0
    naga_out[0] = f64_add(a, b);
    naga_out[1] = f64_sub(a, b);
    naga_out[2] = f64_mul(a, b);
    naga_out[3] = f64_div(a, b);
    naga_out[4] = vec2<u32>(select(0u, 1u, f64_is_nan(a)), 0u);
}
"#
    );
    let module = match naga::front::wgsl::parse_str(&source) {
        Ok(m) => m,
        Err(e) => panic!("WGSL parse error:\n{}", e.emit_to_string(&source)),
    };
    let mut validator = naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::empty(),
    );
    if let Err(e) = validator.validate(&module) {
        panic!("naga validation error:\n{}", e.emit_to_string(&source));
    }
}
