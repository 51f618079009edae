//! `panes run --metrics ADDR`: the run's counters in Prometheus' text format, served at
//! `http://ADDR/metrics` by a thread of its own while the job runs.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use panes::engine::run::Progress;

/// The counters of a run, as its last batch left them.
pub struct Metrics {
    events: AtomicU64,
    rows_out: AtomicU64,
    late: AtomicU64,
    alerts: AtomicU64,
    checkpoints: AtomicU64,
    /// `i64::MIN` before the first watermark.
    watermark: AtomicI64,
    started: Instant,
}

impl Metrics {
    fn new() -> Metrics {
        Metrics {
            events: AtomicU64::new(0),
            rows_out: AtomicU64::new(0),
            late: AtomicU64::new(0),
            alerts: AtomicU64::new(0),
            checkpoints: AtomicU64::new(0),
            watermark: AtomicI64::new(i64::MIN),
            started: Instant::now(),
        }
    }

    /// Takes the counters of a batch.
    pub fn observe(&self, p: &Progress) {
        self.events.store(p.events, Relaxed);
        self.rows_out.store(p.rows_out, Relaxed);
        self.late.store(p.late, Relaxed);
        self.alerts.store(p.alerts, Relaxed);
        self.checkpoints.store(p.checkpoints, Relaxed);
        self.watermark.store(p.watermark, Relaxed);
    }

    /// The counters in Prometheus' text exposition format; `now_ms` is the wall clock.
    fn render(&self, now_ms: i64) -> String {
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, value: String| {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
            ));
        };
        let counters = [
            (
                "panes_events_read_total",
                "Events read from the source.",
                &self.events,
            ),
            (
                "panes_window_rows_total",
                "Window result rows emitted.",
                &self.rows_out,
            ),
            (
                "panes_late_events_total",
                "Events late for every window.",
                &self.late,
            ),
            ("panes_alerts_total", "Anomaly alerts raised.", &self.alerts),
            (
                "panes_checkpoints_total",
                "Checkpoints completed by this run.",
                &self.checkpoints,
            ),
        ];
        for (name, help, value) in counters {
            metric(name, "counter", help, value.load(Relaxed).to_string());
        }
        let uptime = self.started.elapsed().as_secs_f64();
        metric(
            "panes_uptime_seconds",
            "gauge",
            "Seconds since the run started.",
            format!("{uptime:.3}"),
        );
        let w = self.watermark.load(Relaxed);
        if w != i64::MIN {
            metric(
                "panes_watermark_ms",
                "gauge",
                "The job's watermark, ms since the epoch.",
                w.to_string(),
            );
            let lag = (now_ms.saturating_sub(w)) as f64 / 1000.0;
            metric(
                "panes_watermark_lag_seconds",
                "gauge",
                "How far the watermark trails the wall clock.",
                format!("{lag:.3}"),
            );
        }
        out
    }
}

/// Listens on `addr` (`127.0.0.1:9100`; port 0 picks a free one) and serves the metrics
/// that the returned handle is given; returns the address it listens on.
pub fn serve(addr: &str) -> Result<(Arc<Metrics>, SocketAddr)> {
    let listener = TcpListener::bind(addr)
        .with_context(|| format!("--metrics {addr}: cannot listen there"))?;
    let local = listener.local_addr()?;
    let metrics = Arc::new(Metrics::new());
    let served = metrics.clone();
    std::thread::Builder::new()
        .name("panes-metrics".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                // A client that goes away mid-request is its own problem.
                let _ = answer(stream, &served);
            }
        })
        .context("starting the metrics thread")?;
    Ok((metrics, local))
}

/// Answers one HTTP request: `GET /metrics` (or `/`), else 404.
fn answer(mut stream: TcpStream, metrics: &Metrics) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header.trim().is_empty() {
            break;
        }
    }
    let mut words = request.split_whitespace();
    let (method, path) = (words.next(), words.next());
    let (status, body) = match (method, path) {
        (Some("GET"), Some("/metrics" | "/")) => {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            ("200 OK", metrics.render(now.as_millis() as i64))
        }
        _ => ("404 Not Found", "panes serves GET /metrics\n".to_string()),
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn serves_the_last_batch_counters_in_prometheus_format() {
        let (metrics, addr) = serve("127.0.0.1:0").unwrap();
        let body = get(addr, "/metrics");
        assert!(body.starts_with("HTTP/1.1 200 OK"), "{body}");
        assert!(body.contains("panes_events_read_total 0\n"), "{body}");
        assert!(
            !body.contains("panes_watermark_ms"),
            "no watermark yet: {body}"
        );
        metrics.observe(&Progress {
            events: 1234,
            total: None,
            watermark: 1_000,
            late: 5,
            rows_out: 77,
            alerts: 2,
            checkpoints: 3,
        });
        let body = get(addr, "/metrics");
        for line in [
            "# TYPE panes_events_read_total counter",
            "panes_events_read_total 1234\n",
            "panes_window_rows_total 77\n",
            "panes_late_events_total 5\n",
            "panes_alerts_total 2\n",
            "panes_checkpoints_total 3\n",
            "panes_watermark_ms 1000\n",
            "# TYPE panes_watermark_lag_seconds gauge",
        ] {
            assert!(body.contains(line), "{line:?} in {body}");
        }
        assert!(get(addr, "/other").starts_with("HTTP/1.1 404"));
    }

    #[test]
    fn an_address_in_use_is_an_error_naming_it() {
        let (_, addr) = serve("127.0.0.1:0").unwrap();
        let err = serve(&addr.to_string()).err().unwrap().to_string();
        assert!(err.contains(&addr.to_string()), "{err}");
    }
}
