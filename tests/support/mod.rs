//! What several test binaries share: the S3-protocol object store on loopback.

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

/// The endpoint of the S3-protocol object store the tests start on loopback.
pub static S3: OnceLock<String> = OnceLock::new();

/// Starts the object store (moto's server, by `tests/s3/server.sh`, with bucket `panes`)
/// once, and returns its endpoint.
pub fn s3_endpoint() -> &'static str {
    S3.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let out = Command::new("bash")
            .arg(root.join("tests/s3/server.sh"))
            .arg(root.join("target/s3"))
            .output()
            .expect("running tests/s3/server.sh");
        assert!(
            out.status.success(),
            "tests/s3/server.sh: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    })
}

/// Points `cmd` at the object store, once a test started it.
pub fn with_s3(cmd: &mut Command) -> &mut Command {
    if let Some(endpoint) = S3.get() {
        cmd.env("AWS_ENDPOINT_URL", endpoint)
            .env("AWS_ALLOW_HTTP", "true")
            .env("AWS_ACCESS_KEY_ID", "panes")
            .env("AWS_SECRET_ACCESS_KEY", "panes")
            .env("AWS_REGION", "us-east-1");
    }
    cmd
}
