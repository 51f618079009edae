//! Every WGSL kernel file, with the prelude it is compiled with, parses and validates with
//! naga, on the CPU alone. With the software f64 it needs no optional capability (no f64,
//! no 64-bit integers, no 64-bit atomics): the GPU backend runs on any adapter. With the
//! native f64 it needs FLOAT64 and SHADER_INT64 and nothing more.

use naga::valid::Capabilities;
use panes_kernels::gpu::{LIBRARIES, SHADERS, shader_source};

#[test]
fn every_kernel_validates_with_each_f64_library() {
    let kernels: Vec<&str> = SHADERS
        .iter()
        .map(|(file, _)| *file)
        .filter(|f| !LIBRARIES.contains(f))
        .collect();
    assert_eq!(kernels.len(), 4, "sort, update, combine and emit");
    for (native, capabilities) in [
        (false, Capabilities::empty()),
        (true, Capabilities::FLOAT64 | Capabilities::SHADER_INT64),
    ] {
        for &file in &kernels {
            let source = shader_source(file, native).expect("listed");
            let module = naga::front::wgsl::parse_str(&source)
                .unwrap_or_else(|e| panic!("{file}: {}", e.emit_to_string(&source)));
            let mut validator =
                naga::valid::Validator::new(naga::valid::ValidationFlags::all(), capabilities);
            if let Err(e) = validator.validate(&module) {
                panic!(
                    "{file} (native f64: {native}): {}",
                    e.emit_to_string(&source)
                );
            }
            assert!(!module.entry_points.is_empty(), "{file} has no entry point");
        }
    }
}

#[test]
fn the_shader_directory_holds_exactly_the_compiled_files() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../shaders");
    let mut on_disk: Vec<String> = std::fs::read_dir(dir)
        .expect("shaders/ exists")
        .map(|e| {
            e.expect("readable")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|f| f.ends_with(".wgsl"))
        .collect();
    on_disk.sort();
    let mut compiled: Vec<String> = SHADERS.iter().map(|(f, _)| f.to_string()).collect();
    compiled.sort();
    assert_eq!(
        on_disk, compiled,
        "a .wgsl file is not compiled into the backend"
    );
}
