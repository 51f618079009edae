//! The GPU backend: pane state resident on the device, WGSL kernels through wgpu.
//!
//! Per pane the state is key-major: one row of 32-bit words per key, one group of words
//! per state op (see `shaders/common.wgsl`). An update uploads only the new events (key
//! ids, panes, times, input columns); the device sorts them by (key, arrival), and one
//! invocation per key folds its events into the pane's row in arrival order. A combine
//! merges the window's panes into an accumulator on the device, compacts it to the keys
//! that saw events, and reads back only those rows.
//!
//! Floats are folded in the same order and with the same operations as the CPU backend:
//! with the device's own f64 where it has `SHADER_F64` and `SHADER_INT64`
//! (`shaders/f64_native.wgsl`), else
//! with software IEEE-754 binary64 arithmetic built from 32-bit integer operations
//! (`shaders/f64.wgsl`), which needs no optional GPU feature. The software path equals the
//! CPU to the bit; the native one does too for counts, sums, min, max, first and last, and
//! its moments may differ in the last bits (a driver may fuse a product into a sum).
//!
//! `approx_count_distinct` keeps the CPU's sketch in the row (`shaders/distinct.wgsl`):
//! 4 KiB an op, room for either of its forms; kernels for jobs without it are compiled
//! without the sketch.
//!
//! State larger than one storage binding is split into chunks of keys, each its own buffer;
//! batches are split so that no binding and no dispatch exceeds the device's limits.

mod device;
mod portable;

use arrow::record_batch::RecordBatch;
use std::collections::BTreeMap;
use std::ops::Range;
use std::time::Instant;

use device::{Commands, Gpu, Kernel, Params, Timer};
pub use device::{LIBRARIES, NATIVE_F64, SHADERS, hardware_adapter, shader_source};

use crate::agg::{AggFn, AggSpec, Domain, Moments};
use crate::error::{Error, Result};
use crate::events::{Events, OutColumn, Values, WindowRows};
use crate::{Backend, Keys, fold_plan};

/// Knobs of the GPU backend. The defaults suit real use; tests shrink the limits to force
/// the paths that split batches, state and dispatches.
#[derive(Clone, Debug)]
pub struct GpuOptions {
    /// Optional features to ask for when the adapter has them: [`NATIVE_F64`] (floats on
    /// the device's own f64) and `TIMESTAMP_QUERY` (used by `panes bench`).
    /// `Features::empty()` runs the baseline path, software f64.
    pub features: wgpu::Features,
    /// Most events sorted and folded in one pass.
    pub max_batch_events: usize,
    /// Largest storage binding to use (the device's limit when smaller).
    pub max_binding_bytes: u64,
    /// Most workgroups per dispatch dimension (the device's limit when smaller).
    pub max_groups: u32,
    /// Refuse software adapters (llvmpipe): what `--backend auto` wants.
    pub hardware_only: bool,
    /// Fill every new scratch buffer with a sentinel pattern, so that a kernel reading
    /// what it did not write shows up in tests.
    pub poison: bool,
    /// Time each stage ([`GpuBackend::profile`]); with `TIMESTAMP_QUERY`, every update and
    /// combine is also timed on the device, which waits for each one (slower overall).
    pub profile: bool,
    /// Events of the sorted batch that one invocation folds: a hot key's run is shared
    /// among invocations piece by piece, and the pieces merged in order. `Some(0)` walks
    /// each key's run in one invocation instead (in rounds on a software adapter): float
    /// sums then add in the CPU's order. `None`: pieces of [`PIECE_EVENTS`] on hardware
    /// GPUs, whole runs on software adapters (whose loops are capped, see `fold_round`).
    pub piece_events: Option<u32>,
}

/// Events a piece by default: enough to hide the cost of merging a piece, few enough to
/// keep thousands of invocations busy on a batch of 64Ki events.
pub const PIECE_EVENTS: u32 = 64;

impl Default for GpuOptions {
    fn default() -> Self {
        GpuOptions {
            features: wgpu::Features::TIMESTAMP_QUERY.union(NATIVE_F64),
            max_batch_events: 1 << 20,
            max_binding_bytes: u64::MAX,
            max_groups: u32::MAX,
            hardware_only: false,
            poison: false,
            profile: false,
            piece_events: None,
        }
    }
}

/// Op kinds, as in `shaders/common.wgsl`.
const OP_ROWS: u32 = 0;
const OP_COUNT: u32 = 1;
const OP_SUM_F: u32 = 2;
const OP_SUM_I: u32 = 3;
const OP_MIN_F: u32 = 4;
const OP_MAX_F: u32 = 5;
const OP_MIN_I: u32 = 6;
const OP_MAX_I: u32 = 7;
const OP_MOMENTS: u32 = 8;
const OP_FIRST: u32 = 9;
const OP_LAST: u32 = 10;
const OP_DISTINCT_I: u32 = 11;
const OP_DISTINCT_F: u32 = 12;
/// The op kinds of `approx_count_distinct`.
const DISTINCT: [u32; 2] = [OP_DISTINCT_I, OP_DISTINCT_F];

/// Words of a distinct-count sketch after its count and header (see `shaders/distinct.wgsl`).
const DISTINCT_BODY: usize = 1024;
/// The header word of a sketch that holds registers.
const DISTINCT_DENSE: u32 = u32::MAX;
/// Slots of a sparse sketch's index over its hashes.
const DISTINCT_SLOTS: u32 = 512;

/// Words of state an op kind owns per key.
fn op_words(kind: u32) -> u32 {
    match kind {
        OP_ROWS | OP_COUNT => 2,
        OP_MOMENTS => 8,
        OP_FIRST | OP_LAST => 6,
        OP_DISTINCT_I | OP_DISTINCT_F => 4 + DISTINCT_BODY as u32,
        _ => 4,
    }
}

/// An input column as the device reads it: the job's column, converted to f64 or not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Input {
    column: usize,
    as_f64: bool,
}

/// How the aggregates map onto state ops and input columns.
#[derive(Clone, Debug)]
struct Layout {
    /// Per op: kind, input, word offset (and a validity flag the batch fills in).
    ops: Vec<[u32; 4]>,
    inputs: Vec<Input>,
    /// The op of each aggregate.
    agg_op: Vec<usize>,
    stride: u32,
    uses_ts: bool,
}

impl Layout {
    fn new(aggs: &[AggSpec]) -> Result<Layout> {
        let mut layout = Layout {
            ops: vec![[OP_ROWS, 0, 0, 0]],
            inputs: Vec::new(),
            agg_op: Vec::new(),
            stride: 2,
            uses_ts: false,
        };
        for a in aggs {
            let int = a.domain == Domain::I64;
            let kind = match a.func {
                AggFn::CountRows => {
                    layout.agg_op.push(0);
                    continue;
                }
                AggFn::Count => OP_COUNT,
                AggFn::Sum | AggFn::Avg if int => OP_SUM_I,
                AggFn::Sum | AggFn::Avg => OP_SUM_F,
                AggFn::Min if int => OP_MIN_I,
                AggFn::Min => OP_MIN_F,
                AggFn::Max if int => OP_MAX_I,
                AggFn::Max => OP_MAX_F,
                AggFn::VarSamp | AggFn::VarPop | AggFn::StddevSamp | AggFn::StddevPop => OP_MOMENTS,
                AggFn::First => OP_FIRST,
                AggFn::Last => OP_LAST,
                AggFn::ApproxCountDistinct if int => OP_DISTINCT_I,
                AggFn::ApproxCountDistinct => OP_DISTINCT_F,
            };
            let input = Input {
                column: a.column,
                as_f64: int && kind == OP_MOMENTS,
            };
            let slot = match layout.inputs.iter().position(|i| *i == input) {
                Some(s) => s,
                None => {
                    layout.inputs.push(input);
                    layout.inputs.len() - 1
                }
            };
            layout.uses_ts |= matches!(kind, OP_FIRST | OP_LAST);
            layout.agg_op.push(layout.ops.len());
            layout.ops.push([kind, slot as u32, layout.stride, 0]);
            layout.stride += op_words(kind);
        }
        Ok(layout)
    }

    /// Most events of one key's run that a fold invocation walks in one dispatch on a
    /// software adapter. There long runs (hot keys) are folded in rounds, one dispatch each,
    /// in arrival order: Mesa's lavapipe ends the loops of an invocation after 65 535
    /// iterations in all, which silently dropped the rest of a hot key's events. An event
    /// costs 3 + 2 per op of them there, and 55 more per moments op when the soft-f64
    /// division's loop is not unrolled (it is in small shaders, not in large ones:
    /// measured); this allows half the limit, at 4 + 3 per op + 60 per moments op. A
    /// distinct-count op probes its index (8 an event, with room to spare) and may switch
    /// to registers once a round (about 1,600), which is set aside first.
    /// Hardware GPUs have no such limit and fold each run in one dispatch.
    fn fold_round(&self) -> u32 {
        let count = |kinds: &[u32]| self.ops.iter().filter(|o| kinds.contains(&o[0])).count();
        let moments = count(&[OP_MOMENTS]) as u32;
        let distinct = count(&DISTINCT) as u32;
        let per_event = 4 + 3 * self.ops.len() as u32 + 60 * moments + 8 * distinct;
        (32_768u32.saturating_sub(2_048 * distinct) / per_event).max(1)
    }
}

/// The most events of one key among `keys` (whose largest is `max_key`), counted in
/// `counts`, which is all zero before and after.
fn longest_run(counts: &mut Vec<u32>, keys: &[u32], max_key: u32) -> u32 {
    if counts.len() <= max_key as usize {
        counts.resize(max_key as usize + 1, 0);
    }
    let mut longest = 0;
    for &k in keys {
        let c = &mut counts[k as usize];
        *c += 1;
        longest = longest.max(*c);
    }
    keys.iter().for_each(|&k| counts[k as usize] = 0);
    longest
}

/// The state of one pane: chunks of key rows, chunk `c` holding keys from `c * chunk_keys`.
struct PaneState {
    chunks: Vec<wgpu::Buffer>,
}

/// Buffers reused from batch to batch, grown when a batch needs more.
#[derive(Default)]
struct Scratch {
    buffers: BTreeMap<&'static str, wgpu::Buffer>,
    poison: bool,
    /// Events per key id in the batch being uploaded; all zero between batches.
    runs: Vec<u32>,
}

impl Scratch {
    fn get(&mut self, gpu: &Gpu, name: &'static str, bytes: u64) -> wgpu::Buffer {
        match self.buffers.get(name) {
            Some(b) if b.size() >= bytes => b.clone(),
            _ => {
                let b = gpu.storage(name, bytes.next_power_of_two());
                if self.poison {
                    gpu.queue
                        .write_buffer(&b, 0, &vec![0xA5; b.size() as usize]);
                }
                self.buffers.insert(name, b.clone());
                b
            }
        }
    }
}

/// A batch on the device: its buffers, and the panes it touches.
struct Batch {
    n: usize,
    panes: Vec<i64>,
    keys: wgpu::Buffer,
    panes_buf: wgpu::Buffer,
    ts: wgpu::Buffer,
    vals: wgpu::Buffer,
    valid: wgpu::Buffer,
    /// The radix sort's (key, arrival) pairs, ping and pong, its histogram and block sums.
    pairs: [wgpu::Buffer; 2],
    hist: wgpu::Buffer,
    sums: wgpu::Buffer,
    /// The largest key id: how many 8-bit digits the sort needs.
    max_key: u32,
    /// The most events of any one key (at most): how many rounds the fold needs.
    max_run: u32,
    /// Rows for the pieces of long runs, when folding in pieces.
    pieces: Option<wgpu::Buffer>,
}

/// The GPU backend. See the module documentation.
pub struct GpuBackend {
    gpu: Gpu,
    opts: GpuOptions,
    aggs: Vec<AggSpec>,
    layout: Layout,
    /// Keys per state chunk, and keys every pane has room for.
    chunk_keys: u32,
    capacity: u32,
    /// One more than the largest key id seen.
    n_keys: u32,
    panes: BTreeMap<i64, PaneState>,
    ops: wgpu::Buffer,
    scratch: Scratch,
    /// The block length of [`fold_plan`].
    fold_block: i64,
    profile: Option<Profile>,
}

/// Seconds a GPU backend spent per stage: host stages by the host's clock, `device:`
/// stages by GPU timestamps (with `TIMESTAMP_QUERY`).
#[derive(Clone, Debug, Default)]
pub struct Profile {
    stages: Vec<(&'static str, f64)>,
}

impl Profile {
    fn add(&mut self, stage: &'static str, seconds: f64) {
        match self.stages.iter_mut().find(|s| s.0 == stage) {
            Some(s) => s.1 += seconds,
            None => self.stages.push((stage, seconds)),
        }
    }

    /// The stages in the order they first ran, with their seconds.
    pub fn stages(&self) -> &[(&'static str, f64)] {
        &self.stages
    }
}

impl GpuBackend {
    /// Opens a GPU and prepares state for these aggregates.
    pub fn new(aggs: &[AggSpec], opts: GpuOptions) -> Result<GpuBackend> {
        let layout = Layout::new(aggs)?;
        let sketch = layout.ops.iter().any(|o| DISTINCT.contains(&o[0]));
        let gpu = Gpu::open(opts.features, opts.hardware_only, sketch)?;
        let binding = opts.max_binding_bytes.min(gpu.max_binding);
        let chunk_keys = (binding / (layout.stride as u64 * 4)).clamp(1, u32::MAX as u64) as u32;
        let ops = gpu.storage_init("ops", bytemuck::cast_slice(&layout.ops));
        Ok(GpuBackend {
            gpu,
            opts: opts.clone(),
            aggs: aggs.to_vec(),
            layout,
            chunk_keys,
            capacity: 0,
            n_keys: 0,
            panes: BTreeMap::new(),
            ops,
            scratch: Scratch {
                poison: opts.poison,
                ..Scratch::default()
            },
            fold_block: 1,
            profile: opts.profile.then(Profile::default),
        })
    }

    /// Adds the time since `since` to `stage` of the profile, if one is kept.
    fn time(&mut self, stage: &'static str, since: Instant) {
        if let Some(p) = self.profile.as_mut() {
            p.add(stage, since.elapsed().as_secs_f64());
        }
    }

    /// Runs `commands`; when profiling with timestamps, waits for them and adds their
    /// device time to `stage`.
    fn submit(&mut self, context: &str, commands: Commands, stage: &'static str) -> Result<()> {
        let timer = self.profile.as_ref().and_then(|_| self.gpu.timer());
        self.gpu.run(context, commands, timer.as_ref(), false)?;
        if let (Some(t), Some(p)) = (timer, self.profile.as_mut()) {
            p.add(stage, self.gpu.elapsed(&t)?);
        }
        Ok(())
    }

    /// The adapter: "name (backend, driver)".
    pub fn adapter(&self) -> &str {
        &self.gpu.adapter
    }

    /// Events a fold invocation takes from the sorted batch (0: a key's whole run).
    fn piece_events(&self) -> u32 {
        match self.opts.piece_events {
            Some(p) => p,
            None if self.gpu.software() => 0,
            None => PIECE_EVENTS,
        }
    }

    /// Keys of chunk `c` at the current capacity.
    fn chunk_len(&self, c: usize) -> u32 {
        let base = c as u64 * self.chunk_keys as u64;
        (self.capacity as u64 - base).min(self.chunk_keys as u64) as u32
    }

    fn n_chunks(&self) -> usize {
        (self.capacity as u64).div_ceil(self.chunk_keys as u64) as usize
    }

    fn params(&self) -> Params {
        Params {
            n_ops: self.layout.ops.len() as u32,
            stride: self.layout.stride,
            ..Params::default()
        }
    }

    /// Records a fill of rows `rows` of `buffer` with the empty state.
    fn fill(&self, commands: &mut Commands, buffer: &wgpu::Buffer, rows: Range<u32>) {
        // `fill` does not read the pane binding: the ops stand in for it.
        let group = self.gpu.bind(Kernel::Fill, &[buffer, &self.ops, &self.ops]);
        let groups = self.gpu.groups(rows.len() as u64, self.opts.max_groups);
        commands.dispatch(
            Kernel::Fill,
            &group,
            groups,
            Params {
                key_base: rows.start,
                key_count: rows.len() as u32,
                ..self.params()
            },
        );
    }

    /// A new buffer of `keys` empty rows.
    fn empty_chunk(&self, commands: &mut Commands, keys: u32) -> wgpu::Buffer {
        let b = self
            .gpu
            .storage("pane state", keys as u64 * self.layout.stride as u64 * 4);
        self.fill(commands, &b, 0..keys);
        b
    }

    /// Grows every pane to room for keys below `n_keys`.
    fn reserve_keys(&mut self, n_keys: u32, commands: &mut Commands) {
        self.n_keys = self.n_keys.max(n_keys);
        if n_keys <= self.capacity {
            return;
        }
        let old: Vec<u32> = (0..self.n_chunks()).map(|c| self.chunk_len(c)).collect();
        self.capacity = n_keys.next_power_of_two().max(1024);
        let lens: Vec<u32> = (0..self.n_chunks()).map(|c| self.chunk_len(c)).collect();
        let mut panes = std::mem::take(&mut self.panes);
        for pane in panes.values_mut() {
            for (c, &len) in lens.iter().enumerate() {
                if old.get(c) == Some(&len) {
                    continue;
                }
                let grown = self.empty_chunk(commands, len);
                if let Some(prev) = pane.chunks.get(c) {
                    commands.copy(prev, &grown, prev.size());
                    pane.chunks[c] = grown;
                } else {
                    pane.chunks.push(grown);
                }
            }
        }
        self.panes = panes;
    }

    /// Makes sure `pane` has state.
    fn open_pane(&mut self, pane: i64, commands: &mut Commands) {
        if self.panes.contains_key(&pane) {
            return;
        }
        let chunks = (0..self.n_chunks())
            .map(|c| self.empty_chunk(commands, self.chunk_len(c)))
            .collect();
        self.panes.insert(pane, PaneState { chunks });
    }

    /// Most events per sort-and-fold pass.
    fn max_batch(&self) -> usize {
        let binding = self.opts.max_binding_bytes.min(self.gpu.max_binding);
        let per_event = 8 * self.layout.inputs.len().max(1) as u64;
        let n = (self.opts.max_batch_events as u64)
            .min(binding / per_event)
            .min(binding / 8)
            .max(1);
        1 << n.ilog2()
    }

    /// Uploads one batch and records its sort and its fold into its panes.
    fn update_batch(&mut self, ev: &Events<'_>, commands: &mut Commands) {
        let t = Instant::now();
        let batch = self.upload(ev, commands);
        self.time("host: prepare and upload", t);
        let t = Instant::now();
        self.record_fold(&batch, commands);
        self.time("host: record sort and fold", t);
    }

    /// Uploads one batch (and makes room for its keys and panes).
    fn upload(&mut self, ev: &Events<'_>, commands: &mut Commands) -> Batch {
        let n = ev.len();
        let mut panes: Vec<i64> = Vec::new();
        for &p in ev.panes {
            if panes.last() != Some(&p) && !panes.contains(&p) {
                panes.push(p);
            }
        }
        let max_key = ev.keys.iter().copied().max().unwrap_or(0);
        let piece = self.piece_events();
        // Only a software adapter walking whole runs folds them in rounds, and needs the
        // longest.
        let max_run = match piece == 0 && self.gpu.software() {
            true => longest_run(&mut self.scratch.runs, ev.keys, max_key),
            false => n as u32,
        };
        self.reserve_keys(max_key + 1, commands);
        for &p in &panes {
            self.open_pane(p, commands);
        }
        let gpu = &self.gpu;
        let tiles = (n as u64).div_ceil(device::WORKGROUP as u64);
        let s = &mut self.scratch;
        let keys = s.get(gpu, "keys", n as u64 * 4);
        let panes_buf = s.get(gpu, "panes", n as u64 * 8);
        let ts = s.get(
            gpu,
            "ts",
            if self.layout.uses_ts { n as u64 * 8 } else { 8 },
        );
        let n_inputs = self.layout.inputs.len() as u64;
        let vals = s.get(gpu, "values", n as u64 * 8 * n_inputs);
        // A byte a value, each column's padded to whole words.
        let valid_stride = n.next_multiple_of(4) as u64;
        let valid = s.get(gpu, "validity", valid_stride * n_inputs);
        let pairs = [
            s.get(gpu, "pairs a", n as u64 * 8),
            s.get(gpu, "pairs b", n as u64 * 8),
        ];
        let hist = s.get(gpu, "histogram", 256 * tiles * 4);
        let sums = s.get(gpu, "block sums", tiles * 4);
        let stride = self.layout.stride as u64;
        let pieces = (piece > 0).then(|| {
            s.get(
                gpu,
                "pieces",
                (n as u64).div_ceil(piece as u64) * stride * 4,
            )
        });
        let q = &gpu.queue;
        q.write_buffer(&keys, 0, bytemuck::cast_slice(ev.keys));
        q.write_buffer(&panes_buf, 0, bytemuck::cast_slice(ev.panes));
        if self.layout.uses_ts {
            q.write_buffer(&ts, 0, bytemuck::cast_slice(ev.ts));
        }
        let mut ops = self.layout.ops.clone();
        for (i, input) in self.layout.inputs.iter().enumerate() {
            let col = &ev.columns[input.column];
            let at = i as u64 * n as u64;
            match (col.values, input.as_f64) {
                (Values::F64(x), _) => q.write_buffer(&vals, at * 8, bytemuck::cast_slice(x)),
                (Values::I64(x), false) => q.write_buffer(&vals, at * 8, bytemuck::cast_slice(x)),
                (Values::I64(x), true) => {
                    let f: Vec<f64> = x.iter().map(|&v| v as f64).collect();
                    q.write_buffer(&vals, at * 8, bytemuck::cast_slice(&f));
                }
            }
            if let Some(v) = col.valid {
                // Buffer writes are in whole words: the last few flags go padded.
                let bytes: &[u8] = bytemuck::cast_slice(v);
                let whole = bytes.len() & !3;
                let at = i as u64 * valid_stride;
                q.write_buffer(&valid, at, &bytes[..whole]);
                if whole < bytes.len() {
                    let mut tail = [0u8; 4];
                    tail[..bytes.len() - whole].copy_from_slice(&bytes[whole..]);
                    q.write_buffer(&valid, at + whole as u64, &tail);
                }
                ops.iter_mut()
                    .filter(|o| o[0] != OP_ROWS && o[1] == i as u32)
                    .for_each(|o| o[3] = 1);
            }
        }
        q.write_buffer(&self.ops, 0, bytemuck::cast_slice(&ops));
        Batch {
            n,
            panes,
            keys,
            panes_buf,
            ts,
            vals,
            valid,
            pairs,
            hist,
            sums,
            max_key,
            max_run,
            pieces,
        }
    }

    /// Records the sort of an uploaded batch and its fold into its panes.
    fn record_fold(&self, batch: &Batch, commands: &mut Commands) {
        let gpu = &self.gpu;
        let Batch {
            n,
            ref panes,
            ref keys,
            ref panes_buf,
            ref ts,
            ref vals,
            ref valid,
            ref pairs,
            ref hist,
            ref sums,
            max_key,
            max_run,
            ref pieces,
        } = *batch;
        let max_groups = self.opts.max_groups;
        let tiles = (n as u64).div_ceil(device::WORKGROUP as u64);
        let base = Params {
            n: n as u32,
            m: (256 * tiles) as u32,
            k: tiles as u32,
            ..self.params()
        };
        // Bind groups reading one pair buffer and writing the other.
        let [a, b] = pairs;
        let ab = gpu.bind(Kernel::RadixCount, &[a, b, hist, sums, keys]);
        let ba = gpu.bind(Kernel::RadixCount, &[b, a, hist, sums, keys]);
        let over_pairs = gpu.groups(n as u64, max_groups);
        let over_hist = gpu.groups(256 * tiles, max_groups);
        commands.dispatch(Kernel::RadixInit, &ba, over_pairs, base);
        let passes = (u32::BITS - max_key.leading_zeros()).div_ceil(8);
        for pass in 0..passes {
            let group = if pass % 2 == 0 { &ab } else { &ba };
            let p = Params {
                j: pass * 8,
                ..base
            };
            commands.dispatch(Kernel::RadixCount, group, over_pairs, p);
            commands.dispatch(Kernel::ScanBlocks, group, over_hist, p);
            commands.dispatch(Kernel::ScanSums, group, (1, 1), p);
            commands.dispatch(Kernel::ScanAdd, group, over_hist, p);
            commands.dispatch(Kernel::RadixScatter, group, over_pairs, p);
        }
        let sorted = &pairs[passes as usize % 2];
        if let Some(pieces) = pieces {
            self.record_fold_pieces(batch, sorted, pieces, commands);
            return;
        }
        let round = match self.gpu.software() {
            true => self.layout.fold_round(),
            false => max_run.max(1),
        };
        for &p in panes {
            for (c, chunk) in self.panes[&p].chunks.iter().enumerate() {
                let group = gpu.bind(
                    Kernel::Fold,
                    &[sorted, panes_buf, ts, vals, valid, &self.ops, chunk],
                );
                // Round r folds events r·round .. (r+1)·round of each key's run.
                for from in (0..max_run).step_by(round as usize) {
                    let params = Params {
                        pane: p as u32,
                        pane_hi: (p >> 32) as u32,
                        key_base: c as u32 * self.chunk_keys,
                        key_count: self.chunk_len(c),
                        j: from,
                        m: round,
                        ..base
                    };
                    // Only runs that start before n - from have events left to fold.
                    let starts = gpu.groups(n as u64 - from as u64, max_groups);
                    commands.dispatch(Kernel::Fold, &group, starts, params);
                }
            }
        }
    }

    /// Records the fold of a sorted batch in pieces (see `shaders/update.wgsl`): per pane
    /// and chunk, the pieces' own keys into their rows, the runs that continue from the
    /// piece before into the piece rows, then those merged into their keys' rows in order.
    fn record_fold_pieces(
        &self,
        b: &Batch,
        sorted: &wgpu::Buffer,
        pieces: &wgpu::Buffer,
        commands: &mut Commands,
    ) {
        let gpu = &self.gpu;
        let piece = self.piece_events();
        let n_pieces = (b.n as u32).div_ceil(piece);
        let over_pieces = gpu.groups(n_pieces as u64, self.opts.max_groups);
        let inputs = [sorted, &b.panes_buf, &b.ts, &b.vals, &b.valid, &self.ops];
        let into_pieces = gpu.bind(Kernel::FoldPieces, &[&inputs[..], &[pieces]].concat());
        for &p in &b.panes {
            for (c, chunk) in self.panes[&p].chunks.iter().enumerate() {
                let params = Params {
                    n: b.n as u32,
                    m: piece,
                    pane: p as u32,
                    pane_hi: (p >> 32) as u32,
                    key_base: c as u32 * self.chunk_keys,
                    key_count: self.chunk_len(c),
                    ..self.params()
                };
                let into_keys = gpu.bind(Kernel::FoldPieces, &[&inputs[..], &[chunk]].concat());
                commands.dispatch(Kernel::FoldPieces, &into_keys, over_pieces, params);
                self.fill(commands, pieces, 0..n_pieces);
                let params_pieces = Params { mode: 1, ..params };
                commands.dispatch(Kernel::FoldPieces, &into_pieces, over_pieces, params_pieces);
                let merge = gpu.bind(Kernel::MergePieces, &[chunk, pieces, &self.ops, sorted]);
                commands.dispatch(Kernel::MergePieces, &merge, over_pieces, params);
            }
        }
    }

    /// Merges the panes of `panes` into one accumulator per chunk and reads back the rows
    /// of the keys that saw events: (key ids, rows of `stride` words).
    fn combine_rows(&mut self, panes: Range<i64>, keys: Keys<'_>) -> Result<(Vec<u32>, Vec<u32>)> {
        let stride = self.layout.stride as u64;
        let (mut out_keys, mut out_rows) = (Vec::new(), Vec::new());
        if self.panes.range(panes.clone()).next().is_none() {
            return Ok((out_keys, out_rows));
        }
        let ctx = "combining a window";
        for c in 0..self.n_chunks() {
            let key_base = c as u32 * self.chunk_keys;
            let len = self.chunk_len(c);
            let (mode, list, n) = match keys {
                Keys::All => (0, vec![0u32], len.min(self.n_keys.saturating_sub(key_base))),
                Keys::Only(ks) => {
                    let l: Vec<u32> = ks
                        .iter()
                        .copied()
                        .filter(|&k| k >= key_base && k - key_base < len)
                        .collect();
                    let n = l.len() as u32;
                    (1, l, n)
                }
                Keys::Range { start, end } => {
                    let l: Vec<u32> = (start.max(key_base)..end.min(key_base + len)).collect();
                    let n = l.len() as u32;
                    (1, l, n)
                }
            };
            if n == 0 {
                continue;
            }
            let gpu = &self.gpu;
            let mut commands = Commands::default();
            let s = &mut self.scratch;
            let acc = s.get(gpu, "accumulator", len as u64 * stride * 4);
            // Only jobs whose windows fold blocks of panes need a second accumulator.
            let block = (self.fold_block > 1)
                .then(|| s.get(gpu, "block accumulator", len as u64 * stride * 4));
            let groups = gpu.groups(n as u64, self.opts.max_groups);
            let blocks = s.get(gpu, "blocks", (groups.0 as u64 * groups.1 as u64 + 1) * 4);
            let list_buf = s.get(gpu, "key list", list.len() as u64 * 4);
            let out_k = s.get(gpu, "emitted keys", n as u64 * 4);
            let out_r = s.get(gpu, "emitted rows", n as u64 * stride * 4);
            let total_read = gpu.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("row count"),
                size: 4,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            gpu.queue
                .write_buffer(&list_buf, 0, bytemuck::cast_slice(&list));
            let base = Params {
                key_base,
                key_count: len,
                ..self.params()
            };
            self.fill(&mut commands, &acc, 0..len);
            let g = gpu.groups(len as u64, self.opts.max_groups);
            let merge = |commands: &mut Commands, into: &wgpu::Buffer, from: &wgpu::Buffer| {
                let group = gpu.bind(Kernel::Merge, &[into, from, &self.ops]);
                commands.dispatch(Kernel::Merge, &group, g, base);
            };
            // Panes fold in the plan's order; a block with panes is folded on its own first.
            for seg in fold_plan(panes.clone(), self.fold_block) {
                let held: Vec<&wgpu::Buffer> =
                    self.panes.range(seg).map(|(_, s)| &s.chunks[c]).collect();
                if let [one] = held[..] {
                    merge(&mut commands, &acc, one);
                } else if !held.is_empty() {
                    // Segments of several panes exist only when blocks are folded.
                    let Some(block) = &block else {
                        unreachable!("bug in panes: a block of panes with fold_block 1")
                    };
                    self.fill(&mut commands, block, 0..len);
                    held.iter().for_each(|h| merge(&mut commands, block, h));
                    merge(&mut commands, &acc, block);
                }
            }
            let emit = gpu.bind(
                Kernel::EmitCount,
                &[&acc, &list_buf, &blocks, &out_k, &out_r],
            );
            let p = Params { n, mode, ..base };
            commands.dispatch(Kernel::EmitCount, &emit, groups, p);
            let n_blocks = (n as u64).div_ceil(device::WORKGROUP as u64) as u32;
            let scan = Params {
                key_count: n_blocks,
                ..p
            };
            commands.dispatch(Kernel::EmitScan, &emit, (1, 1), scan);
            commands.dispatch(Kernel::EmitScatter, &emit, groups, p);
            // The total sits after the block offsets.
            commands.copy_from(&blocks, n_blocks as u64 * 4, &total_read, 4);
            self.submit(ctx, commands, "device: merge and emit")?;
            let total = self.gpu.map(ctx, &total_read, 4)?;
            let total = u32::from_le_bytes([total[0], total[1], total[2], total[3]]) as u64;
            let k = self.gpu.read(ctx, &out_k, total * 4)?;
            let r = self.gpu.read(ctx, &out_r, total * stride * 4)?;
            out_keys.extend(bytemuck::pod_collect_to_vec::<u8, u32>(&k));
            out_rows.extend(bytemuck::pod_collect_to_vec::<u8, u32>(&r));
        }
        Ok((out_keys, out_rows))
    }

    /// Turns state rows into the job's result columns, evaluated as the CPU backend does.
    fn evaluate(&self, keys: Vec<u32>, rows: &[u32]) -> Result<WindowRows> {
        let stride = self.layout.stride as usize;
        let word2 = |r: usize, w: usize| {
            let at = r * stride + w;
            (rows[at] as u64) | ((rows[at + 1] as u64) << 32)
        };
        let columns = self
            .aggs
            .iter()
            .zip(&self.layout.agg_op)
            .map(|(a, &op)| {
                let at = self.layout.ops[op][2] as usize;
                let mut out = OutColumn::with_capacity(a.output(), keys.len());
                for r in 0..keys.len() {
                    let count = word2(r, at);
                    let has = count > 0;
                    let v = |w: usize| word2(r, at + w);
                    let int = a.domain == Domain::I64;
                    match a.func {
                        AggFn::CountRows | AggFn::Count => out.push_i64(Some(count as i64)),
                        AggFn::ApproxCountDistinct => {
                            let op = &rows[r * stride + at..(r + 1) * stride];
                            out.push_i64(Some(portable::sketch_estimate(op)?))
                        }
                        AggFn::Sum | AggFn::Min | AggFn::Max if int => {
                            out.push_i64(has.then(|| v(2) as i64))
                        }
                        AggFn::First | AggFn::Last if int => out.push_i64(has.then(|| v(4) as i64)),
                        AggFn::Sum | AggFn::Min | AggFn::Max => {
                            out.push_f64(has.then(|| f64::from_bits(v(2))))
                        }
                        AggFn::First | AggFn::Last => {
                            out.push_f64(has.then(|| f64::from_bits(v(4))))
                        }
                        AggFn::Avg => out.push_f64(has.then(|| {
                            let sum = if int {
                                v(2) as i64 as f64
                            } else {
                                f64::from_bits(v(2))
                            };
                            sum / count as f64
                        })),
                        _ => {
                            let m = Moments {
                                n: f64::from_bits(v(2)),
                                mean: f64::from_bits(v(4)),
                                m2: f64::from_bits(v(6)),
                            };
                            out.push_f64(m.finish(a.func))
                        }
                    }
                }
                Ok(out)
            })
            .collect::<Result<_>>()?;
        Ok(WindowRows { keys, columns })
    }

    /// Times the sort and fold of `events` alone, with the input already on the device:
    /// `reps` repetitions into a scratch pane, timed by GPU timestamps where the adapter
    /// has them (else by the wall clock around a wait). Returns seconds per repetition and
    /// whether timestamps were used.
    pub fn time_resident(&mut self, events: &Events<'_>, reps: usize) -> Result<(f64, bool)> {
        let n = events.len().min(self.max_batch());
        let columns = events.columns_in(0..n);
        let ev = events.slice(0..n, &columns);
        let mut commands = Commands::default();
        let batch = self.upload(&ev, &mut commands);
        self.gpu
            .run("uploading the timed batch", commands, None, true)?;
        let timer: Option<Timer> = self.gpu.timer();
        let mut total = 0.0;
        for _ in 0..reps.max(1) {
            let mut commands = Commands::default();
            self.record_fold(&batch, &mut commands);
            let start = std::time::Instant::now();
            self.gpu
                .run("timing the kernels", commands, timer.as_ref(), true)?;
            total += match &timer {
                Some(t) => self.gpu.elapsed(t)?,
                None => start.elapsed().as_secs_f64(),
            };
        }
        Ok((total / reps.max(1) as f64, timer.is_some()))
    }
}

impl Backend for GpuBackend {
    fn name(&self) -> &'static str {
        "gpu"
    }

    /// Exact on a software adapter that walks whole runs. Pieces add a hot key's run in
    /// another grouping, and a hardware driver may fuse the moments' multiply-adds.
    fn exact_floats(&self) -> bool {
        self.gpu.software() && self.piece_events() == 0
    }

    fn describe(&self) -> String {
        let f64 = if self.gpu.native_f64() {
            "native f64"
        } else {
            "software f64"
        };
        format!("gpu on {}, {f64}", self.gpu.adapter)
    }

    fn set_fold_block(&mut self, block: i64) {
        self.fold_block = block;
    }

    fn update(&mut self, events: &Events<'_>) -> Result<()> {
        let max = self.max_batch();
        let mut start = 0;
        while start < events.len() {
            let end = (start + max).min(events.len());
            let columns = events.columns_in(start..end);
            let ev = events.slice(start..end, &columns);
            let mut commands = Commands::default();
            self.update_batch(&ev, &mut commands);
            let t = Instant::now();
            self.submit("updating pane state", commands, "device: sort and fold")?;
            self.time("host: submit update (and wait, when timed)", t);
            start = end;
        }
        Ok(())
    }

    fn combine(&mut self, panes: Range<i64>, keys: Keys<'_>) -> Result<WindowRows> {
        let t = Instant::now();
        let (k, rows) = self.combine_rows(panes, keys)?;
        self.time("host: combine, wait and read back", t);
        let t = Instant::now();
        let rows = self.evaluate(k, &rows)?;
        self.time("host: evaluate rows", t);
        Ok(rows)
    }

    fn profile(&self) -> Vec<(&'static str, f64)> {
        self.profile
            .as_ref()
            .map_or(Vec::new(), |p| p.stages.clone())
    }

    fn evict_before(&mut self, pane: i64) {
        self.panes = self.panes.split_off(&pane);
    }

    fn clear_key(&mut self, panes: Range<i64>, key: u32) -> Result<()> {
        if key >= self.capacity {
            return Ok(());
        }
        let (c, i) = (key / self.chunk_keys, key % self.chunk_keys);
        let mut commands = Commands::default();
        for state in self.panes.range(panes).map(|(_, s)| s) {
            self.fill(&mut commands, &state.chunks[c as usize], i..i + 1);
        }
        self.gpu.run("clearing a key", commands, None, false)
    }

    fn state_bytes(&self) -> usize {
        self.panes.len() * self.capacity as usize * self.layout.stride as usize * 4
    }

    fn panes(&self) -> Vec<i64> {
        self.panes.keys().copied().collect()
    }

    /// The pane's rows (keys with rows only) in the CPU backend's format of state batches,
    /// so that checkpoints move between the two backends.
    fn export_pane(&mut self, pane: i64) -> Result<Option<RecordBatch>> {
        if !self.panes.contains_key(&pane) {
            return Ok(None);
        }
        // Merging one pane into empty rows copies it (every merge has the empty row as its
        // identity), and the emit step keeps only keys with rows.
        let (keys, rows) = self.combine_rows(pane..pane + 1, Keys::All)?;
        if keys.is_empty() {
            return Ok(None);
        }
        self.to_state_batch(keys, &rows).map(Some)
    }

    fn import_pane(&mut self, pane: i64, batch: &RecordBatch) -> Result<()> {
        let stride = self.layout.stride as usize;
        let (keys, words) = self.rows_from_state_batch(batch)?;
        let mut commands = Commands::default();
        self.reserve_keys(keys.iter().max().map_or(0, |&k| k + 1), &mut commands);
        self.panes.remove(&pane);
        self.open_pane(pane, &mut commands);
        self.gpu
            .run("restoring pane state", commands, None, false)?;
        let Some(first) = self.panes[&pane].chunks.first() else {
            return Ok(());
        };
        // The empty row, as the fill kernel wrote it.
        let empty = self
            .gpu
            .read("restoring pane state", first, stride as u64 * 4)?;
        let empty: Vec<u32> = bytemuck::pod_collect_to_vec(&empty);
        for c in 0..self.n_chunks() {
            let (base, len) = (c as u32 * self.chunk_keys, self.chunk_len(c));
            let here: Vec<usize> = (0..keys.len())
                .filter(|&r| keys[r] >= base && keys[r] - base < len)
                .collect();
            if here.is_empty() {
                continue;
            }
            let mut rows = empty.repeat(len as usize);
            for r in here {
                let at = (keys[r] - base) as usize * stride;
                rows[at..at + stride].copy_from_slice(&words[r * stride..(r + 1) * stride]);
            }
            let chunk = &self.panes[&pane].chunks[c];
            self.gpu
                .queue
                .write_buffer(chunk, 0, bytemuck::cast_slice(&rows));
        }
        Ok(())
    }

    fn drop_pane(&mut self, pane: i64) {
        self.panes.remove(&pane);
    }
}
