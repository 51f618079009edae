//! panes embedded in a service: the service pushes its own Arrow batches (generated
//! clicks here) into a pipeline built in code, ticks processing time, and polls window rows and late events. Halfway it
//! takes a snapshot in memory, restores it into a new pipeline (as a restarted service
//! would), and checks that the new one continues exactly where an uninterrupted one goes.
//!
//! Run: `cargo run --release --example embed`

use std::time::{Duration, Instant};

use panes::datasets::{Dataset, GenConfig, generate, schema};
use panes::engine::pipeline::{Output, Pipeline, PipelineBuilder};
use panes::kernels::AggFn;

/// Views and mean scroll depth per article and minute; events up to 30 s after a minute
/// closed still count (the minute fires again, with a higher revision).
fn trending() -> PipelineBuilder {
    Pipeline::builder()
        .event_time("ts", Duration::from_secs(5))
        .allowed_lateness(Duration::from_secs(30))
        .tumble(Duration::from_secs(60))
        .key(&["article_id"])
        .aggregate("views", AggFn::CountRows, None)
        .aggregate("depth", AggFn::Avg, Some("scroll_depth"))
}

/// The rows and late events among `outputs`, as text.
fn lines(outputs: &[Output]) -> (Vec<String>, usize) {
    let (mut rows, mut late) = (Vec::new(), 0);
    for output in outputs {
        match output {
            Output::Rows(batch) => {
                for r in 0..batch.num_rows() {
                    let cells: Vec<String> = batch
                        .columns()
                        .iter()
                        .map(|c| arrow::util::display::array_value_to_string(c, r).unwrap())
                        .collect();
                    rows.push(cells.join(" | "));
                }
            }
            Output::Late(batch) => late += batch.num_rows(),
            Output::Alerts(_) => {}
        }
    }
    rows.sort();
    (rows, late)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let config = GenConfig {
        events: 400_000,
        keys: 2_000,
        batch_rows: 20_000,
        late_share: 0.01,
        events_per_sec: 500.0,
        ..GenConfig::default()
    };
    let batches: Vec<_> = generate(Dataset::Clickstream, &config)?.collect();
    let schema = schema(Dataset::Clickstream);

    // Straight through.
    let mut whole = trending().build(schema.clone())?;
    let mut want = Vec::new();
    for batch in &batches {
        whole.push(0, batch)?;
        want.extend(whole.poll()?);
    }
    want.extend(whole.finish()?);

    // Stopped halfway: a snapshot, a new pipeline restored from it, the rest pushed there.
    let mut first = trending().build(schema.clone())?;
    let mut got = Vec::new();
    let half = batches.len() / 2;
    for batch in &batches[..half] {
        first.push(0, batch)?;
        // Time passes between batches; a tick notices partitions gone quiet.
        first.tick(Instant::now())?;
        got.extend(first.poll()?);
    }
    let snapshot = first.snapshot()?;
    drop(first);
    let mut second = trending().threads(1).build(schema)?;
    second.restore(&snapshot)?;
    for batch in &batches[half..] {
        second.push(0, batch)?;
        got.extend(second.poll()?);
    }
    got.extend(second.finish()?);

    let (want_rows, want_late) = lines(&want);
    let (got_rows, got_late) = lines(&got);
    println!("article_id | window_start | window_end | views | depth | revision");
    for line in want_rows.iter().take(5) {
        println!("{line}");
    }
    println!(
        "... {} rows and {want_late} late events straight through; {} rows and {got_late} late \
         events with a snapshot and restore halfway ({} state files)",
        want_rows.len(),
        got_rows.len(),
        snapshot.files.len()
    );
    if (&got_rows, got_late) != (&want_rows, want_late) {
        return Err("the restored pipeline did not continue exactly".into());
    }
    println!("the restored pipeline continued exactly");
    Ok(())
}
