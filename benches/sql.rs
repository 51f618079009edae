//! Criterion benchmark of the SQL front end: parsing and planning each example's `.sql`
//! script into a validated job (`Job::from_sql`), which must take under a millisecond.

use criterion::{Criterion, criterion_group, criterion_main};
use panes::engine::Job;

fn compile(c: &mut Criterion) {
    let mut group = c.benchmark_group("sql");
    for name in [
        "trending",
        "iot_anomaly",
        "nexmark_q5",
        "nexmark_q7",
        "nexmark_q11",
        "fraud_velocity",
    ] {
        let path = format!("{}/examples/{name}.sql", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).expect("the example script");
        group.bench_function(name, |b| {
            b.iter(|| Job::from_sql(std::hint::black_box(&text), name).expect("compiles"))
        });
    }
    group.finish();
}

criterion_group!(benches, compile);
criterion_main!(benches);
