//! The device side of the GPU backend: opening an adapter, compiling the kernels, recording
//! dispatches with their parameters, and reading buffers back, with every wgpu error turned
//! into an [`Error`] that names what panes was doing.
//!
//! The device, its queue and the compiled kernels are opened once per process (per set of
//! optional features) and shared by every backend: a service that runs job after job does
//! not open a device each time (drivers run out of them). A device that is lost is
//! replaced by a fresh one for the next backend opened.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, mpsc};

use wgpu::util::DeviceExt;

use crate::error::{Error, Result};

/// Threads per workgroup of every kernel (`WG` in `shaders/common.wgsl`).
pub const WORKGROUP: u32 = 256;

/// Bytes between two parameter records (the uniform offset alignment on every adapter).
const PARAMS_STRIDE: u64 = 256;

/// The per-dispatch parameters; the same layout as `Params` in `shaders/common.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Params {
    pub n: u32,
    pub m: u32,
    pub j: u32,
    pub k: u32,
    pub pane: u32,
    pub key_base: u32,
    pub key_count: u32,
    pub n_ops: u32,
    pub stride: u32,
    pub mode: u32,
    pub groups_x: u32,
    pub pane_hi: u32,
}

/// The kernels, by entry point.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    RadixInit,
    RadixCount,
    ScanBlocks,
    ScanSums,
    ScanAdd,
    RadixScatter,
    Fold,
    FoldPieces,
    Fill,
    Merge,
    MergePieces,
    EmitCount,
    EmitScan,
    EmitScatter,
}

const KERNELS: [Kernel; 14] = [
    Kernel::RadixInit,
    Kernel::RadixCount,
    Kernel::ScanBlocks,
    Kernel::ScanSums,
    Kernel::ScanAdd,
    Kernel::RadixScatter,
    Kernel::Fold,
    Kernel::FoldPieces,
    Kernel::Fill,
    Kernel::Merge,
    Kernel::MergePieces,
    Kernel::EmitCount,
    Kernel::EmitScan,
    Kernel::EmitScatter,
];

/// The WGSL sources: every kernel file is compiled after `common.wgsl`, `u64.wgsl` and
/// one of the two f64 libraries, `f64.wgsl` (software) or `f64_native.wgsl`.
pub const SHADERS: [(&str, &str); 9] = [
    ("common.wgsl", include_str!("../../../shaders/common.wgsl")),
    ("u64.wgsl", include_str!("../../../shaders/u64.wgsl")),
    ("f64.wgsl", include_str!("../../../shaders/f64.wgsl")),
    (
        "f64_native.wgsl",
        include_str!("../../../shaders/f64_native.wgsl"),
    ),
    ("sort.wgsl", include_str!("../../../shaders/sort.wgsl")),
    ("update.wgsl", include_str!("../../../shaders/update.wgsl")),
    (
        "combine.wgsl",
        include_str!("../../../shaders/combine.wgsl"),
    ),
    ("emit.wgsl", include_str!("../../../shaders/emit.wgsl")),
    (
        "distinct.wgsl",
        include_str!("../../../shaders/distinct.wgsl"),
    ),
];

/// The features the native f64 library needs: f64, and 64-bit integers to move its bits.
pub const NATIVE_F64: wgpu::Features =
    wgpu::Features::SHADER_F64.union(wgpu::Features::SHADER_INT64);

/// The kernel files that keep state rows: `distinct.wgsl` is compiled after them, and
/// their pipelines set its `SKETCH` constant.
const SKETCH_FILES: [&str; 2] = ["update.wgsl", "combine.wgsl"];

/// The files that are libraries, compiled in front of the kernel files (and
/// `distinct.wgsl` after the files that keep state rows).
pub const LIBRARIES: [&str; 5] = [
    "common.wgsl",
    "u64.wgsl",
    "f64.wgsl",
    "f64_native.wgsl",
    "distinct.wgsl",
];

/// The full source of a kernel file: the shared prelude (with the device's own f64 when
/// `native`, else the software one), then the file, then the distinct-count sketch for
/// the files whose `state` binding it works on.
pub fn shader_source(file: &str, native: bool) -> Option<String> {
    let text = |name: &str| SHADERS.iter().find(|(f, _)| *f == name).map(|s| s.1);
    let f64 = if native {
        "f64_native.wgsl"
    } else {
        "f64.wgsl"
    };
    let prelude = ["common.wgsl", "u64.wgsl", f64].map(|f| text(f).unwrap_or_default());
    let sketch = match SKETCH_FILES.contains(&file) {
        true => text("distinct.wgsl").unwrap_or_default(),
        false => "",
    };
    Some(format!("{}\n{}\n{sketch}", prelude.join("\n"), text(file)?))
}

impl Kernel {
    /// The file, the entry point, and which storage bindings are read-only.
    fn shape(self) -> (&'static str, &'static str, &'static [bool]) {
        const UPDATE: &[bool] = &[true, true, true, true, true, true, false];
        const COMBINE: &[bool] = &[false, true, true];
        const MERGE_PIECES: &[bool] = &[false, true, true, true];
        const EMIT: &[bool] = &[true, true, false, false, false];
        const SORT: &[bool] = &[true, false, false, false, true];
        match self {
            Kernel::RadixInit => ("sort.wgsl", "radix_init", SORT),
            Kernel::RadixCount => ("sort.wgsl", "radix_count", SORT),
            Kernel::ScanBlocks => ("sort.wgsl", "scan_blocks", SORT),
            Kernel::ScanSums => ("sort.wgsl", "scan_sums", SORT),
            Kernel::ScanAdd => ("sort.wgsl", "scan_add", SORT),
            Kernel::RadixScatter => ("sort.wgsl", "radix_scatter", SORT),
            Kernel::Fold => ("update.wgsl", "fold", UPDATE),
            Kernel::FoldPieces => ("update.wgsl", "fold_pieces", UPDATE),
            Kernel::Fill => ("combine.wgsl", "fill", COMBINE),
            Kernel::Merge => ("combine.wgsl", "merge", COMBINE),
            Kernel::MergePieces => ("combine.wgsl", "merge_pieces", MERGE_PIECES),
            Kernel::EmitCount => ("emit.wgsl", "emit_count", EMIT),
            Kernel::EmitScan => ("emit.wgsl", "emit_scan", EMIT),
            Kernel::EmitScatter => ("emit.wgsl", "emit_scatter", EMIT),
        }
    }
}

struct Pipeline {
    pipeline: wgpu::ComputePipeline,
    storage: wgpu::BindGroupLayout,
}

/// What the backends of a process share: the device and queue, the compiled kernels, and
/// an error slot that wgpu's callbacks fill instead of panicking.
struct Context {
    /// The optional features asked for when it was opened.
    wanted: wgpu::Features,
    device: wgpu::Device,
    queue: wgpu::Queue,
    adapter: String,
    software: bool,
    /// Floats run on the device's own f64 (`SHADER_F64`), not the software library.
    native: bool,
    /// The kernels without the distinct-count sketch, and (compiled when a backend first
    /// needs them) with it.
    pipelines: Vec<Pipeline>,
    sketch_pipelines: OnceLock<Vec<Pipeline>>,
    params_layout: wgpu::BindGroupLayout,
    errors: Arc<Mutex<Vec<String>>>,
    /// Set by the device-lost callback: the next backend opens a fresh context.
    lost: Arc<AtomicBool>,
}

/// The contexts opened so far in this process.
static CONTEXTS: Mutex<Vec<Arc<Context>>> = Mutex::new(Vec::new());

/// The process's context for `wanted` features: the open one, or a new one (in place of
/// one whose device was lost). `hardware_only` refuses to open a software adapter.
fn context(wanted: wgpu::Features, hardware_only: bool) -> Result<Arc<Context>> {
    let mut contexts = CONTEXTS.lock().unwrap_or_else(|e| e.into_inner());
    contexts.retain(|c| !c.lost.load(Ordering::Acquire));
    if let Some(c) = contexts.iter().find(|c| c.wanted == wanted) {
        return Ok(c.clone());
    }
    let c = Arc::new(Context::open(wanted, hardware_only)?);
    contexts.push(c.clone());
    Ok(c)
}

/// A GPU as one backend uses it: the shared context, plus the buffer of dispatch
/// parameters that this backend's submissions write.
pub struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    /// "name (backend, driver)".
    pub adapter: String,
    /// Largest storage binding and workgroups per dimension the device allows.
    pub max_binding: u64,
    pub max_groups: u32,
    context: Arc<Context>,
    sketch: bool,
    params: wgpu::Buffer,
    params_group: wgpu::BindGroup,
}

impl Context {
    /// Opens the first adapter wgpu finds (honouring `WGPU_BACKEND`) with those of `wanted`
    /// features it offers, and compiles the kernels. `hardware_only` refuses a software
    /// adapter before anything is compiled on it.
    fn open(wanted: wgpu::Features, hardware_only: bool) -> Result<Context> {
        let (adapter, name) = find_adapter(hardware_only)?;
        let info = adapter.get_info();
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("panes"),
            required_features: wanted & adapter.features(),
            required_limits: adapter.limits(),
            ..Default::default()
        }))
        .map_err(|e| Error::NoAdapter(format!("{name}: {e}")))?;
        let errors = Arc::new(Mutex::new(Vec::new()));
        let sink = errors.clone();
        device.on_uncaptured_error(Arc::new(move |e| push(&sink, e.to_string())));
        let (sink, lost) = (errors.clone(), Arc::new(AtomicBool::new(false)));
        let flag = lost.clone();
        device.set_device_lost_callback(move |reason, message| {
            flag.store(true, Ordering::Release);
            push(&sink, format!("device lost ({reason:?}): {message}"))
        });
        let params_layout = layout(&device, "params", &[], true);
        let mut context = Context {
            wanted,
            adapter: name,
            software: info.device_type == wgpu::DeviceType::Cpu,
            native: device.features().contains(NATIVE_F64),
            pipelines: Vec::new(),
            sketch_pipelines: OnceLock::new(),
            params_layout,
            errors,
            lost,
            device,
            queue,
        };
        context.pipelines = KERNELS
            .iter()
            .map(|&k| context.pipeline(k, false))
            .collect();
        let errors = std::mem::take(&mut *context.errors.lock().unwrap_or_else(|e| e.into_inner()));
        if let Some(message) = errors.into_iter().next() {
            return Err(Error::Gpu {
                context: "compiling the kernels".into(),
                adapter: context.adapter,
                message,
            });
        }
        Ok(context)
    }

    /// The compiled kernels, with the distinct-count sketch or without (`SKETCH` in
    /// `shaders/distinct.wgsl`).
    fn pipelines(&self, sketch: bool) -> &[Pipeline] {
        match sketch {
            false => &self.pipelines,
            true => self
                .sketch_pipelines
                .get_or_init(|| KERNELS.iter().map(|&k| self.pipeline(k, true)).collect()),
        }
    }

    fn pipeline(&self, kernel: Kernel, sketch: bool) -> Pipeline {
        let (file, entry, read_only) = kernel.shape();
        let constants: &[(&str, f64)] = match SKETCH_FILES.contains(&file) {
            true => &[("SKETCH", sketch as u8 as f64)],
            false => &[],
        };
        let source = shader_source(file, self.native).unwrap_or_default();
        let module = self
            .device
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(file),
                source: wgpu::ShaderSource::Wgsl(source.into()),
            });
        let storage = layout(&self.device, entry, read_only, false);
        let pipeline_layout = self
            .device
            .create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some(entry),
                bind_group_layouts: &[Some(&self.params_layout), Some(&storage)],
                immediate_size: 0,
            });
        let pipeline = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(entry),
                layout: Some(&pipeline_layout),
                module: &module,
                entry_point: Some(entry),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants,
                    ..Default::default()
                },
                cache: None,
            });
        Pipeline { pipeline, storage }
    }
}

impl Gpu {
    /// The process's GPU (opened on first use, see the module docs) with those of `wanted`
    /// features it offers. `hardware_only` refuses a software adapter; `sketch` runs the
    /// kernels that keep distinct-count sketches.
    pub fn open(wanted: wgpu::Features, hardware_only: bool, sketch: bool) -> Result<Gpu> {
        let context = context(wanted, hardware_only)?;
        if hardware_only && context.software {
            return Err(software_only(&context.adapter));
        }
        let limits = context.device.limits();
        let (params, params_group) = params_buffer(&context.device, &context.params_layout, 64);
        Ok(Gpu {
            device: context.device.clone(),
            queue: context.queue.clone(),
            adapter: context.adapter.clone(),
            max_binding: limits
                .max_storage_buffer_binding_size
                .min(limits.max_buffer_size),
            max_groups: limits.max_compute_workgroups_per_dimension,
            context,
            sketch,
            params,
            params_group,
        })
    }

    /// The kernels this GPU runs: with the sketch or without.
    fn kernels(&self) -> &[Pipeline] {
        self.context.pipelines(self.sketch)
    }

    /// Whether floats run on the device's own f64, not the software library.
    pub fn native_f64(&self) -> bool {
        self.context.native
    }

    /// Whether the adapter is a software one (Mesa's lavapipe): its invocations loop a
    /// limited number of times.
    pub fn software(&self) -> bool {
        self.context.software
    }

    /// Fails with the first error wgpu reported since the last check (on this device: with
    /// backends on several threads, another's error may show here).
    pub fn check(&self, context: &str) -> Result<()> {
        let mut errors = self
            .context
            .errors
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match errors.drain(..).next() {
            None => Ok(()),
            Some(message) => Err(self.error(context, message)),
        }
    }

    /// An error on this adapter.
    pub fn error(&self, context: &str, message: impl ToString) -> Error {
        Error::Gpu {
            context: context.into(),
            adapter: self.adapter.clone(),
            message: message.to_string(),
        }
    }

    /// A storage buffer of `bytes` (at least 4) that kernels read and write.
    pub fn storage(&self, label: &str, bytes: u64) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            // At least one `vec2<u32>`: the smallest element a kernel binds (a job that only
            // counts rows has no input values, and its empty value buffer is bound still).
            size: bytes.max(8).next_multiple_of(4),
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_DST
                | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        })
    }

    /// A storage buffer holding `data`.
    pub fn storage_init(&self, label: &str, data: &[u8]) -> wgpu::Buffer {
        let mut padded = data.to_vec();
        padded.resize(data.len().max(8).next_multiple_of(4), 0);
        self.device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents: &padded,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_DST
                    | wgpu::BufferUsages::COPY_SRC,
            })
    }

    /// Runs `commands` in one submission, timestamps around them if `timer` is given, and
    /// waits for the GPU to finish when `wait` is set.
    pub fn run(
        &mut self,
        context: &str,
        commands: Commands,
        timer: Option<&Timer>,
        wait: bool,
    ) -> Result<()> {
        let Commands { steps, params } = commands;
        let need = params.len().max(1) as u64 * PARAMS_STRIDE;
        if need > self.params.size() {
            let (b, g) = params_buffer(&self.device, &self.context.params_layout, params.len() * 2);
            (self.params, self.params_group) = (b, g);
        }
        let mut bytes = vec![0u8; need as usize];
        for (i, p) in params.iter().enumerate() {
            let at = i * PARAMS_STRIDE as usize;
            bytes[at..at + size_of::<Params>()].copy_from_slice(bytemuck::bytes_of(p));
        }
        self.queue.write_buffer(&self.params, 0, &bytes);
        let mut encoder = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some(context),
            });
        // The compute pass of the last dispatch (passes are split by copies) takes the end
        // timestamp.
        let last_dispatch = steps
            .iter()
            .rposition(|s| matches!(s, Step::Dispatch { .. }));
        let last_pass = last_dispatch.map_or(0, |d| {
            steps[..d]
                .iter()
                .filter(|s| matches!(s, Step::Copy { .. }))
                .count()
        });
        let mut pass_index = 0;
        let mut pass: Option<wgpu::ComputePass<'static>> = None;
        for step in steps {
            match step {
                Step::Dispatch {
                    kernel,
                    group,
                    param,
                    groups,
                } => {
                    let pass = pass.get_or_insert_with(|| {
                        let (first, last) = (pass_index == 0, pass_index == last_pass);
                        let timestamp_writes = timer.filter(|_| first || last).map(|t| {
                            wgpu::ComputePassTimestampWrites {
                                query_set: &t.queries,
                                beginning_of_pass_write_index: first.then_some(0),
                                end_of_pass_write_index: last.then_some(1),
                            }
                        });
                        encoder
                            .begin_compute_pass(&wgpu::ComputePassDescriptor {
                                label: Some(context),
                                timestamp_writes,
                            })
                            .forget_lifetime()
                    });
                    pass.set_pipeline(&self.kernels()[kernel as usize].pipeline);
                    pass.set_bind_group(
                        0,
                        &self.params_group,
                        &[(param as u64 * PARAMS_STRIDE) as u32],
                    );
                    pass.set_bind_group(1, &group, &[]);
                    pass.dispatch_workgroups(groups.0, groups.1, 1);
                }
                Step::Copy {
                    src,
                    offset,
                    dst,
                    bytes,
                } => {
                    drop(pass.take());
                    pass_index += 1;
                    encoder.copy_buffer_to_buffer(&src, offset, &dst, 0, bytes);
                }
            }
        }
        drop(pass);
        if let Some(t) = timer {
            encoder.resolve_query_set(&t.queries, 0..2, &t.resolve, 0);
            encoder.copy_buffer_to_buffer(&t.resolve, 0, &t.read, 0, 16);
        }
        self.queue.submit([encoder.finish()]);
        if wait {
            self.wait(context)?;
        }
        self.check(context)
    }

    /// Waits until the GPU has finished all submitted work.
    pub fn wait(&self, context: &str) -> Result<()> {
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| self.error(context, e))?;
        self.check(context)
    }

    /// Copies the first `bytes` of `src` back to host memory.
    pub fn read(&mut self, context: &str, src: &wgpu::Buffer, bytes: u64) -> Result<Vec<u8>> {
        if bytes == 0 {
            return Ok(Vec::new());
        }
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size: bytes.next_multiple_of(4),
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut commands = Commands::default();
        commands.copy(src, &staging, bytes.next_multiple_of(4));
        self.run(context, commands, None, false)?;
        self.map(context, &staging, bytes)
    }

    /// Maps a `MAP_READ` buffer (after the work that fills it was submitted) and copies
    /// out its first `bytes`.
    pub fn map(&self, context: &str, staging: &wgpu::Buffer, bytes: u64) -> Result<Vec<u8>> {
        let (tx, rx) = mpsc::channel();
        staging.map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = tx.send(r);
        });
        self.wait(context)?;
        rx.recv()
            .map_err(|e| self.error(context, e))?
            .map_err(|e| self.error(context, e))?;
        let data = staging
            .get_mapped_range(..)
            .map_err(|e| self.error(context, e))?[..bytes as usize]
            .to_vec();
        staging.unmap();
        Ok(data)
    }

    /// Workgroups for `threads` invocations: 1-D up to the device's limit, 2-D beyond.
    pub fn groups(&self, threads: u64, max_groups: u32) -> (u32, u32) {
        let max = max_groups.min(self.max_groups).max(1) as u64;
        let groups = threads.div_ceil(WORKGROUP as u64).max(1);
        if groups <= max {
            (groups as u32, 1)
        } else {
            (max as u32, groups.div_ceil(max) as u32)
        }
    }

    /// A bind group for `kernel`'s storage bindings, in binding order.
    pub fn bind(&self, kernel: Kernel, buffers: &[&wgpu::Buffer]) -> wgpu::BindGroup {
        let entries: Vec<_> = buffers
            .iter()
            .enumerate()
            .map(|(i, b)| wgpu::BindGroupEntry {
                binding: i as u32,
                resource: b.as_entire_binding(),
            })
            .collect();
        self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(kernel.shape().1),
            layout: &self.kernels()[kernel as usize].storage,
            entries: &entries,
        })
    }

    /// Timestamp queries around a submission, if the device has them.
    pub fn timer(&self) -> Option<Timer> {
        if !self
            .device
            .features()
            .contains(wgpu::Features::TIMESTAMP_QUERY)
        {
            return None;
        }
        let buffer = |usage| {
            self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("timestamps"),
                size: 16,
                usage,
                mapped_at_creation: false,
            })
        };
        Some(Timer {
            queries: self.device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("timestamps"),
                ty: wgpu::QueryType::Timestamp,
                count: 2,
            }),
            resolve: buffer(wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC),
            read: buffer(wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST),
        })
    }

    /// Seconds between the two timestamps of the last submission `timer` was given to.
    pub fn elapsed(&self, timer: &Timer) -> Result<f64> {
        let bytes = self.map("reading timestamps", &timer.read, 16)?;
        let t: [u64; 2] = bytemuck::pod_read_unaligned(&bytes);
        let ns = t[1].saturating_sub(t[0]) as f64 * self.queue.get_timestamp_period() as f64;
        Ok(ns * 1e-9)
    }
}

/// Two timestamp queries and the buffers to read them back.
pub struct Timer {
    queries: wgpu::QuerySet,
    resolve: wgpu::Buffer,
    read: wgpu::Buffer,
}

enum Step {
    Dispatch {
        kernel: Kernel,
        group: wgpu::BindGroup,
        param: usize,
        groups: (u32, u32),
    },
    Copy {
        src: wgpu::Buffer,
        offset: u64,
        dst: wgpu::Buffer,
        bytes: u64,
    },
}

/// Dispatches and copies recorded in order, for one submission.
#[derive(Default)]
pub struct Commands {
    steps: Vec<Step>,
    params: Vec<Params>,
}

impl Commands {
    /// Records a dispatch of `kernel` over `groups` workgroups with `params`.
    pub fn dispatch(
        &mut self,
        kernel: Kernel,
        group: &wgpu::BindGroup,
        groups: (u32, u32),
        params: Params,
    ) {
        self.params.push(Params {
            groups_x: groups.0,
            ..params
        });
        self.steps.push(Step::Dispatch {
            kernel,
            group: group.clone(),
            param: self.params.len() - 1,
            groups,
        });
    }

    /// Records a copy of the first `bytes` of `src` into `dst`.
    pub fn copy(&mut self, src: &wgpu::Buffer, dst: &wgpu::Buffer, bytes: u64) {
        self.copy_from(src, 0, dst, bytes);
    }

    /// Records a copy of `bytes` of `src` from `offset` to the start of `dst`.
    pub fn copy_from(&mut self, src: &wgpu::Buffer, offset: u64, dst: &wgpu::Buffer, bytes: u64) {
        self.steps.push(Step::Copy {
            src: src.clone(),
            offset,
            dst: dst.clone(),
            bytes,
        });
    }
}

/// The first adapter wgpu finds (honouring `WGPU_BACKEND`), and its name as
/// "name (backend, driver)". `hardware_only` refuses a software adapter.
fn find_adapter(hardware_only: bool) -> Result<(wgpu::Adapter, String)> {
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter =
        pollster::block_on(instance.request_adapter(&Default::default())).map_err(|e| {
            Error::NoAdapter(format!(
                "{e} (install a Vulkan driver, e.g. `apt-get install mesa-vulkan-drivers \
                 libvulkan1` for the software one, or use --backend cpu)"
            ))
        })?;
    let info = adapter.get_info();
    let name = format!("{} ({:?}, {})", info.name, info.backend, info.driver);
    if hardware_only && info.device_type == wgpu::DeviceType::Cpu {
        return Err(software_only(&name));
    }
    Ok((adapter, name))
}

/// The name of the hardware GPU that `--backend gpu` would run on, without opening it.
pub fn hardware_adapter() -> Result<String> {
    find_adapter(true).map(|(_, name)| name)
}

/// The error of `--backend auto` on a machine whose only adapter is `name`, a software one.
fn software_only(name: &str) -> Error {
    Error::NoAdapter(format!(
        "only a software adapter, {name} (--backend gpu runs on it, slowly)"
    ))
}

fn push(errors: &Mutex<Vec<String>>, message: String) {
    errors
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(message);
}

/// A bind group layout: the dynamic uniform of the parameters, or storage buffers.
fn layout(
    device: &wgpu::Device,
    label: &str,
    read_only: &[bool],
    params: bool,
) -> wgpu::BindGroupLayout {
    let ty = |read_only| wgpu::BindingType::Buffer {
        ty: wgpu::BufferBindingType::Storage { read_only },
        has_dynamic_offset: false,
        min_binding_size: None,
    };
    let entries: Vec<_> = if params {
        vec![wgpu::BindGroupLayoutEntry {
            binding: 0,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Uniform,
                has_dynamic_offset: true,
                min_binding_size: wgpu::BufferSize::new(size_of::<Params>() as u64),
            },
            count: None,
        }]
    } else {
        read_only
            .iter()
            .enumerate()
            .map(|(i, &r)| wgpu::BindGroupLayoutEntry {
                binding: i as u32,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: ty(r),
                count: None,
            })
            .collect()
    };
    device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: Some(label),
        entries: &entries,
    })
}

/// A buffer of `slots` parameter records and its bind group.
fn params_buffer(
    device: &wgpu::Device,
    layout: &wgpu::BindGroupLayout,
    slots: usize,
) -> (wgpu::Buffer, wgpu::BindGroup) {
    let buffer = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("params"),
        size: slots.max(1) as u64 * PARAMS_STRIDE,
        usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let group = device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some("params"),
        layout,
        entries: &[wgpu::BindGroupEntry {
            binding: 0,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: &buffer,
                offset: 0,
                size: wgpu::BufferSize::new(size_of::<Params>() as u64),
            }),
        }],
    });
    (buffer, group)
}
