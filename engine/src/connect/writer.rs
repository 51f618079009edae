//! Sinks on a thread of their own: result rows are encoded (Parquet, CSV, JSON lines)
//! while the operator goes on with the next batches. Batches are written in the order
//! they are sent. A bounded queue of slices of at most [`SLICE`] rows keeps what waits
//! small: a window of millions of rows is copied out slice by slice and freed once sent,
//! so memory holds one window's rows at a time, as when the sinks wrote in place.

use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use arrow::compute::concat_batches;
use arrow::record_batch::RecordBatch;

use super::Sink;
use crate::error::{Error, Result};

/// Slices that may wait to be written; more block the sender (backpressure).
const QUEUE: usize = 2;

/// Rows of the largest slice sent at once.
pub const SLICE: usize = 64 * 1024;

type Call = Box<dyn FnOnce(&mut [Box<dyn Sink>]) + Send>;

enum Msg {
    /// Write a batch to sink `.0`.
    Write(usize, RecordBatch),
    /// Run a function on the sinks (after every batch before it is written).
    Call(Call),
}

/// Calls `send` with `batch` in slices of at most [`SLICE`] rows.
fn for_each_slice(
    batch: RecordBatch,
    mut send: impl FnMut(RecordBatch) -> Result<()>,
) -> Result<()> {
    if batch.num_rows() <= SLICE {
        return send(batch);
    }
    for from in (0..batch.num_rows()).step_by(SLICE) {
        let slice = batch.slice(from, SLICE.min(batch.num_rows() - from));
        // A copy, so that the whole batch is not kept alive by its slices.
        let copy = concat_batches(&batch.schema(), [&slice])
            .map_err(|e| Error::arrow("copying result rows for the sink thread", e))?;
        send(copy)?;
    }
    Ok(())
}

/// Queues batches for one sink of a [`SinkThread`] from any thread.
pub struct RowSender {
    /// The thread's queue, until the thread is stopped.
    tx: Arc<Mutex<Option<SyncSender<Msg>>>>,
    sink: usize,
}

impl RowSender {
    /// Queues `batch` (waits while the queue is full). A write that failed stopped the
    /// thread: the error is then the [`SinkThread`]'s to return.
    pub fn send(&self, batch: RecordBatch) -> Result<()> {
        let stopped = || Error::Internal("the sink thread has stopped".into());
        for_each_slice(batch, |slice| {
            let tx = self.tx.lock().map_err(|_| stopped())?;
            let tx = tx.as_ref().ok_or_else(stopped)?;
            tx.send(Msg::Write(self.sink, slice)).map_err(|_| stopped())
        })
    }
}

/// The job's sinks, written on a thread of their own. See the module docs.
pub struct SinkThread {
    /// The thread's queue, shared with [`RowSender`]s: emptied when the thread stops, so
    /// that the queue closes whoever still holds one.
    tx: Arc<Mutex<Option<SyncSender<Msg>>>>,
    thread: Option<JoinHandle<Result<Sinks>>>,
}

/// The job's sinks, which the thread hands back when it stops.
type Sinks = Vec<Box<dyn Sink>>;

fn serve(mut sinks: Sinks, rx: Receiver<Msg>) -> Result<Sinks> {
    for msg in rx {
        match msg {
            Msg::Write(i, batch) => sinks[i].write(&batch)?,
            Msg::Call(f) => f(&mut sinks),
        }
    }
    Ok(sinks)
}

impl SinkThread {
    /// Starts the thread that writes to `sinks`.
    pub fn spawn(sinks: Vec<Box<dyn Sink>>) -> Result<SinkThread> {
        let (tx, rx) = sync_channel(QUEUE);
        let thread = std::thread::Builder::new()
            .name("panes-sink".into())
            .spawn(move || serve(sinks, rx))
            .map_err(|e| Error::Internal(format!("starting the sink thread: {e}")))?;
        Ok(SinkThread {
            tx: Arc::new(Mutex::new(Some(tx))),
            thread: Some(thread),
        })
    }

    fn send(&mut self, msg: Msg) -> Result<()> {
        let sent = match self.tx.lock() {
            Ok(tx) => tx.as_ref().map(|tx| tx.send(msg)),
            Err(_) => None,
        };
        match sent {
            Some(Ok(())) => Ok(()),
            // The thread stopped: at a write that failed, whose error it returns.
            _ => Err(self.stop().err().unwrap_or_else(|| {
                Error::Internal("the sink thread stopped without an error".into())
            })),
        }
    }

    /// Queues `batch` for sink `sink`.
    pub fn write(&mut self, sink: usize, batch: RecordBatch) -> Result<()> {
        for_each_slice(batch, |slice| self.send(Msg::Write(sink, slice)))
    }

    /// A handle that queues batches for sink `sink` from another thread (the operator's
    /// shards, as windows fire), in order with what is queued here after it returns. `None`
    /// once the thread has stopped.
    pub fn sender(&self, sink: usize) -> Option<RowSender> {
        let open = self.tx.lock().is_ok_and(|tx| tx.is_some());
        open.then(|| RowSender {
            tx: self.tx.clone(),
            sink,
        })
    }

    /// Runs `f` on the sinks once every batch queued before has been written, and returns
    /// what it returns.
    pub fn call<T: Send + 'static>(
        &mut self,
        f: impl FnOnce(&mut [Box<dyn Sink>]) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (reply, answer) = sync_channel(1);
        self.send(Msg::Call(Box::new(move |sinks| {
            let _ = reply.send(f(sinks));
        })))?;
        match answer.recv() {
            Ok(result) => result,
            Err(_) => Err(self.stop().err().unwrap_or_else(|| {
                Error::Internal("the sink thread stopped without an answer".into())
            })),
        }
    }

    /// Writes what is queued, stops the thread and returns the sinks (or the first error
    /// of a write).
    pub fn stop(&mut self) -> Result<Vec<Box<dyn Sink>>> {
        if let Ok(mut tx) = self.tx.lock() {
            *tx = None;
        }
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(Error::Internal("the sink thread panicked".into())),
            None => Err(Error::Internal(
                "the sink thread was already stopped".into(),
            )),
        }
    }
}

impl Drop for SinkThread {
    /// A job that stops early (an error) still waits for its sinks, which remove their
    /// unfinished files when dropped.
    fn drop(&mut self) {
        if self.thread.is_some() {
            let _ = self.stop();
        }
    }
}
