//! panes embedded in a tokio service: a producer task sends generated clicks through a
//! bounded channel, the pipeline runs on a blocking thread of the runtime
//! (`Pipeline::spawn`), and the service reads window rows and late events as they come.
//! A second pipeline takes the first half of the input by hand, is snapshotted, and a new
//! one restored from the snapshot takes the rest through tokio: together they must give
//! the rows of the pipeline that saw everything.
//!
//! Run: `cargo run --release --example embed_async`

use std::time::Duration;

use panes::datasets::{Dataset, GenConfig, generate, schema};
use panes::engine::pipeline::{Driver, Output, Pipeline, PipelineBuilder};
use panes::kernels::AggFn;
use tokio::sync::mpsc;

/// Views per article and minute, with 30 s of allowed lateness.
fn views() -> PipelineBuilder {
    Pipeline::builder()
        .event_time("ts", Duration::from_secs(5))
        .allowed_lateness(Duration::from_secs(30))
        .tumble(Duration::from_secs(60))
        .key(&["article_id"])
        .aggregate("views", AggFn::CountRows, None)
}

/// The rows of an output (window rows, late events or alerts) as text.
fn text(output: Output) -> Result<Vec<String>, arrow::error::ArrowError> {
    let (Output::Rows(batch) | Output::Late(batch) | Output::Alerts(batch)) = output;
    (0..batch.num_rows())
        .map(|r| {
            let cells = batch
                .columns()
                .iter()
                .map(|c| arrow::util::display::array_value_to_string(c, r))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(cells.join(" | "))
        })
        .collect()
}

/// Runs `pipeline` over `batches` through channels; returns its outputs as text and the
/// pipeline, given back when its input ended.
async fn drive(
    pipeline: Pipeline,
    batches: Vec<arrow::array::RecordBatch>,
) -> Result<(Vec<String>, Pipeline), Box<dyn std::error::Error>> {
    let (tx, input) = mpsc::channel(4);
    let driver = Driver {
        input,
        tick: Duration::from_millis(50),
        capacity: 16,
    };
    let (mut outputs, task) = pipeline.spawn(driver);
    let producer = tokio::spawn(async move {
        for batch in batches {
            if tx.send((0, batch)).await.is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    while let Some(output) = outputs.recv().await {
        lines.extend(text(output?)?);
    }
    producer.await?;
    Ok((lines, task.await?))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let config = GenConfig {
        events: 200_000,
        keys: 1_000,
        batch_rows: 10_000,
        late_share: 0.01,
        events_per_sec: 500.0,
        ..GenConfig::default()
    };
    let batches: Vec<_> = generate(Dataset::Clickstream, &config)?.collect();
    let schema = schema(Dataset::Clickstream);

    let (mut want, _) = drive(views().build(schema.clone())?, batches.clone()).await?;

    // The first half, then a snapshot of the pipeline the task gave back, and the second
    // half in a new pipeline restored from it.
    let half = batches.len() / 2;
    let mut first = views().build(schema.clone())?;
    let mut got = Vec::new();
    for batch in &batches[..half] {
        first.push(0, batch)?;
    }
    for output in first.poll()? {
        got.extend(text(output)?);
    }
    let snapshot = first.snapshot()?;
    let mut second = views().threads(1).build(schema)?;
    second.restore(&snapshot)?;
    let (rest, _) = drive(second, batches[half..].to_vec()).await?;
    got.extend(rest);

    want.sort();
    got.sort();
    println!(
        "{} rows and late events through tokio; {} with a snapshot and a new pipeline halfway",
        want.len(),
        got.len()
    );
    if want != got {
        return Err("the restored pipeline did not continue exactly".into());
    }
    println!("the restored pipeline continued exactly");
    Ok(())
}
