//! Scale-out (`[source] scale_out = true`): the processes that run one Kafka job in one
//! consumer group share the topics' partitions as the group's assignment says.
//!
//! Each partition a process owns runs as a job of its own, on a thread: its own state and
//! watermark, its checkpoints under `<checkpoint dir>/<topic>-<partition>`, and its output
//! under `<sink path>/<topic>-<partition>` (a Kafka sink: staged in its checkpoint
//! directory and sent by a transactional producer whose id names the partition, so that a
//! partition's new owner fences the old one). The process is a member of the group that
//! consumes nothing (its partitions are paused): it only learns what it owns.
//!
//! When it gains a partition it starts that partition's job, which resumes the newest
//! complete checkpoint under the partition's directory (written by whichever process ran
//! it before) at its offsets. When it loses one, the partition's job stops at a batch
//! boundary and takes a last checkpoint, and its offsets are committed, before the
//! rebalance goes on. With `stop = "end"`, a process ends once every partition of the
//! topics has a finished checkpoint, whoever ran it, so that partitions of a process that
//! died are still finished by the others.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, channel};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::connect::Commits;
use crate::connect::sink::parts_identity;
use crate::error::{Error, Result};
use crate::job::{Job, Sink, Source};
use crate::run::{BackendKind, Connectors, Progress, RunOptions, StartFrom, Summary};
use crate::state::checkpoint::{self, Restore, Stats};

/// How long a process that died keeps its partitions before the group gives them to the
/// others.
const SESSION: Duration = Duration::from_secs(10);

/// How long a rebalance waits for the group's members to rejoin: a member that died is
/// waited for this long (the test broker waits the whole of it), and a member's partitions'
/// jobs must take their last checkpoints within it.
const REBALANCE: Duration = Duration::from_secs(30);

/// How long a partition whose job another process fenced waits before it starts again.
const RETRY: Duration = Duration::from_secs(3);

/// How often the member polls the group (and collects its partitions' progress).
const POLL: Duration = Duration::from_millis(100);

/// A partition: (topic, partition).
type Part = (String, i32);

/// The directory name of a partition's checkpoints and output parts.
fn part_name((topic, p): &Part) -> String {
    format!("{topic}-{p}")
}

/// The job of one partition: the source reads only it, and checkpoints and file sinks go
/// one level down, into the partition's own directory.
fn partition_job(job: &Job, part: &Part) -> Job {
    let mut job = job.clone();
    let name = part_name(part);
    if let Source::Kafka(k) = &mut job.source {
        k.scale_out = false;
        k.partition = Some(part.clone());
    }
    if let Some(c) = &mut job.checkpoint {
        c.dir = c.dir.join(&name);
    }
    for sink in job.all_sinks_mut() {
        if let Sink::Parquet(p) | Sink::Csv(p) | Sink::JsonLines(Some(p)) = sink {
            *p = p.join(&name);
        }
    }
    job
}

/// What each partition's job runs with.
#[derive(Clone, Copy)]
struct TaskOptions {
    backend: BackendKind,
    batch_rows: usize,
    threads: usize,
    memory_budget: Option<u64>,
}

/// A partition's job, running on a thread.
struct Task {
    stop: Arc<AtomicBool>,
    progress: Arc<Mutex<Option<Progress>>>,
    thread: JoinHandle<Result<Summary>>,
}

/// The group member: it starts and stops the partitions' jobs as the group assigns and
/// revokes their partitions.
struct Member {
    job: Job,
    group: String,
    options: TaskOptions,
    tasks: Mutex<BTreeMap<Part, Task>>,
    /// Summaries of the partitions' jobs that ended, or the first error.
    ended: Mutex<Vec<(Part, Result<Summary>)>>,
    /// Partitions whose jobs another process fenced, and when: started again after
    /// [`RETRY`] if the group still says they are this process's.
    fenced: Mutex<BTreeMap<Part, Instant>>,
    commits_tx: Commits,
    commits: Mutex<Receiver<Vec<(String, i32, i64)>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Member {
    fn start(&self, part: Part) {
        let mut tasks = lock(&self.tasks);
        if tasks.contains_key(&part) {
            return;
        }
        let job = partition_job(&self.job, &part);
        let options = self.options;
        let stop = Arc::new(AtomicBool::new(false));
        let progress = Arc::new(Mutex::new(None));
        let commits = self.commits_tx.clone();
        let (stopping, progressed) = (stop.clone(), progress.clone());
        let name = part_name(&part);
        tracing::info!("partition {name}: assigned; its job starts");
        let thread = std::thread::Builder::new()
            .name(format!("panes-{name}"))
            .spawn(move || run_partition(&job, options, stopping, progressed, commits));
        match thread {
            Ok(thread) => {
                tasks.insert(
                    part,
                    Task {
                        stop,
                        progress,
                        thread,
                    },
                );
            }
            Err(e) => lock(&self.ended).push((
                part,
                Err(Error::Internal(format!(
                    "starting a thread for {name}: {e}"
                ))),
            )),
        }
    }

    /// Stops the jobs of `parts` (each takes a last checkpoint) and waits for them.
    fn stop(&self, parts: &[Part]) {
        let stopped: Vec<(Part, Task)> = {
            let mut tasks = lock(&self.tasks);
            parts
                .iter()
                .filter_map(|p| Some((p.clone(), tasks.remove(p)?)))
                .collect()
        };
        for (_, task) in &stopped {
            task.stop.store(true, Ordering::Relaxed);
        }
        for (part, task) in stopped {
            self.join(part, task);
        }
    }

    fn join(&self, part: Part, task: Task) {
        let result = task.thread.join().unwrap_or_else(|_| {
            Err(Error::Internal(format!(
                "the job of partition {} panicked",
                part_name(&part)
            )))
        });
        if let Err(Error::Fenced { sink }) = &result {
            // Two processes ran the partition at once (a rebalance that one of them has
            // not heard of yet): the other took over its output.
            tracing::warn!(
                "partition {}: another process took over {sink}; this process stops its job, \
                 and starts it again in {RETRY:?} if the group still gives it the partition",
                part_name(&part)
            );
            lock(&self.fenced).insert(part, Instant::now());
            return;
        }
        lock(&self.ended).push((part, result));
    }

    /// Starts again the fenced partitions whose wait is over, if they are still this
    /// process's.
    fn retry(&self, consumer: &BaseConsumer<Member>) {
        let due: Vec<Part> = (lock(&self.fenced).extract_if(.., |_, at| at.elapsed() >= RETRY))
            .map(|(p, _)| p)
            .collect();
        if due.is_empty() {
            return;
        }
        let owned = consumer
            .assignment()
            .map(|l| parts_of(&l))
            .unwrap_or_default();
        for part in due.into_iter().filter(|p| owned.contains(p)) {
            self.start(part);
        }
    }

    /// Joins the jobs that ended on their own (a bounded run, or an error).
    fn reap(&self) {
        let done: Vec<(Part, Task)> = (lock(&self.tasks))
            .extract_if(.., |_, t| t.thread.is_finished())
            .collect();
        for (part, task) in done {
            tracing::info!("partition {}: its job ended", part_name(&part));
            self.join(part, task);
        }
    }

    /// Commits the offsets that the partitions' completed checkpoints reached.
    fn commit(&self, consumer: &BaseConsumer<Member>, mode: CommitMode) {
        let mut newest: BTreeMap<Part, i64> = BTreeMap::new();
        for offsets in lock(&self.commits).try_iter() {
            for (t, p, o) in offsets {
                newest.insert((t, p), o);
            }
        }
        if newest.is_empty() {
            return;
        }
        let mut list = TopicPartitionList::new();
        for ((t, p), o) in &newest {
            if list
                .add_partition_offset(t, *p, Offset::Offset(*o))
                .is_err()
            {
                return;
            }
        }
        if let Err(e) = consumer.commit(&list, mode) {
            // The checkpoints hold the offsets; the group's copy is for lag monitoring, and
            // a rebalance under way refuses it.
            tracing::info!(
                "offsets not committed to group {:?} (the checkpoints have them): {e}",
                self.group
            );
        }
    }

    /// The sum of the running partitions' progress.
    fn progress(&self) -> Option<Progress> {
        let tasks = lock(&self.tasks);
        let mut all = (tasks.values()).filter_map(|t| *lock(&t.progress));
        let first = all.next()?;
        Some(all.fold(first, |a, b| Progress {
            events: a.events + b.events,
            total: None,
            watermark: a.watermark.min(b.watermark),
            late: a.late + b.late,
            rows_out: a.rows_out + b.rows_out,
            alerts: a.alerts + b.alerts,
            checkpoints: a.checkpoints + b.checkpoints,
        }))
    }
}

impl ClientContext for Member {}

impl ConsumerContext for Member {
    /// Partitions that go elsewhere: their jobs stop and checkpoint, and their offsets are
    /// committed, before the group hands them on.
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            let parts = parts_of(list);
            if !parts.is_empty() {
                tracing::info!(
                    "revoked: {}; their jobs stop at a checkpoint",
                    names(&parts)
                );
            }
            self.stop(&parts);
            self.commit(consumer, CommitMode::Sync);
        }
    }

    /// Partitions gained: paused (the member reads nothing), and their jobs start.
    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(list) = rebalance {
            if let Err(e) = consumer.pause(list) {
                tracing::warn!("pausing the member's partitions: {e}");
            }
            for part in parts_of(list) {
                self.start(part);
            }
        }
    }
}

fn parts_of(list: &TopicPartitionList) -> Vec<Part> {
    (list.elements().iter())
        .map(|e| (e.topic().to_string(), e.partition()))
        .collect()
}

fn names(parts: &[Part]) -> String {
    parts.iter().map(part_name).collect::<Vec<_>>().join(", ")
}

/// Runs a partition's job until it ends or `stop` is set.
fn run_partition(
    job: &Job,
    options: TaskOptions,
    stop: Arc<AtomicBool>,
    progress: Arc<Mutex<Option<Progress>>>,
    commits: Commits,
) -> Result<Summary> {
    let Source::Kafka(spec) = &job.source else {
        unreachable!("scale-out runs only Kafka jobs")
    };
    // First take the partition's output over, so that a process that still runs it
    // (it has not heard of the rebalance yet) commits nothing after the checkpoint that
    // this job resumes.
    if let Some(c) = &job.checkpoint {
        for sink in job.all_sinks() {
            if let Sink::Kafka { bootstrap, topic } = sink {
                crate::connect::fence(bootstrap, topic, &parts_identity(topic, &c.dir))?;
            }
        }
    }
    let source =
        crate::connect::kafka_partition(spec, &job.time_column, options.batch_rows, commits)?;
    crate::run::run_one(
        job,
        RunOptions {
            backend: options.backend,
            batch_rows: options.batch_rows,
            threads: options.threads,
            start: StartFrom::Newest,
            memory_budget: options.memory_budget,
            progress: Some(Box::new(move |p: &Progress| *lock(&progress) = Some(*p))),
            stop: Some(stop),
            connectors: Connectors {
                source: Some(source),
                ..Connectors::default()
            },
            member: None,
        },
    )
}

/// Whether every one of `parts` has a finished checkpoint (a bounded run is over);
/// `finished` keeps those found so far.
fn all_finished(job: &Job, parts: &[Part], finished: &mut BTreeSet<Part>) -> Result<bool> {
    for part in parts {
        if finished.contains(part) {
            continue;
        }
        let Some(c) = &partition_job(job, part).checkpoint else {
            return Ok(false);
        };
        match Restore::newest(&c.dir)? {
            Some(r) if r.manifest.finished => {
                finished.insert(part.clone());
            }
            _ => return Ok(false),
        }
    }
    Ok(true)
}

/// Runs a scale-out job: joins the group and runs the partitions it is given, until
/// stopped (or, with `stop = "end"`, until every partition finished).
pub(crate) fn run(job: &Job, mut opts: RunOptions) -> Result<Summary> {
    let started = Instant::now();
    let Source::Kafka(spec) = &job.source else {
        unreachable!("scale-out runs only Kafka jobs")
    };
    let at = format!("kafka {}", spec.bootstrap);
    if job.checkpoint.is_none() {
        return Err(Error::Internal("scale-out without [checkpoint]".into()));
    }
    if opts.connectors.source.is_some()
        || opts.connectors.sink.is_some()
        || opts.connectors.late.is_some()
        || opts.connectors.alerts.is_some()
        || opts.connectors.dead_letter.is_some()
    {
        return Err(Error::input(
            &at,
            "source.scale_out runs the job file's own source and sinks, one set per \
             partition; a service's own connectors cannot be split so",
        ));
    }
    // Every partition of the topics: what a bounded run waits for, and what shares the
    // process's threads and memory budget.
    let probe: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &spec.bootstrap)
        .create()
        .map_err(|e| Error::input(&at, format!("cannot create a consumer: {e}")))?;
    let parts = crate::connect::kafka_partitions(&probe, spec)?;
    match &opts.start {
        StartFrom::Newest => {}
        StartFrom::Fresh => {
            for part in &parts {
                if let Some(c) = &partition_job(job, part).checkpoint {
                    checkpoint::remove_all(&c.dir)?;
                }
            }
        }
        StartFrom::Checkpoint(p) => {
            return Err(Error::Checkpoint {
                path: p.clone(),
                message: "a scale-out job resumes each partition from its own newest \
                          checkpoint; --from-checkpoint names one"
                    .into(),
            });
        }
    }
    let share = parts.len().min(opts.threads.max(1));
    let (commits_tx, commits) = channel();
    let mut config = ClientConfig::new();
    if let Some(name) = &opts.member {
        config.set("group.instance.id", name);
    }
    let member: BaseConsumer<Member> = config
        .set("bootstrap.servers", &spec.bootstrap)
        .set("group.id", &spec.group)
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", SESSION.as_millis().to_string())
        .set(
            "heartbeat.interval.ms",
            (SESSION / 5).as_millis().to_string(),
        )
        .set("max.poll.interval.ms", REBALANCE.as_millis().to_string())
        .create_with_context(Member {
            job: job.clone(),
            group: spec.group.clone(),
            options: TaskOptions {
                backend: opts.backend,
                batch_rows: opts.batch_rows,
                threads: (opts.threads / share).max(1),
                memory_budget: (opts.memory_budget.or(job.memory_budget))
                    .map(|b| b / parts.len() as u64),
            },
            tasks: Mutex::new(BTreeMap::new()),
            ended: Mutex::new(Vec::new()),
            fenced: Mutex::new(BTreeMap::new()),
            commits_tx,
            commits: Mutex::new(commits),
        })
        .map_err(|e| Error::input(&at, format!("cannot join group {:?}: {e}", spec.group)))?;
    let topics: Vec<&str> = spec.topics.iter().map(String::as_str).collect();
    member
        .subscribe(&topics)
        .map_err(|e| Error::input(&at, format!("joining group {:?}: {e}", spec.group)))?;
    tracing::info!(
        "joined group {:?}: {} partitions of {} shared among its processes",
        spec.group,
        parts.len(),
        topics.join(", ")
    );
    let stop = opts.stop.clone().unwrap_or_default();
    let mut finished = BTreeSet::new();
    let mut checked = Instant::now();
    let outcome = loop {
        // Rebalances run inside the poll (the callbacks above); the member reads nothing.
        let _ = member.poll(POLL);
        member.context().reap();
        member.context().retry(&member);
        member.context().commit(&member, CommitMode::Async);
        if let Some(e) = first_error(&member) {
            break Err(e);
        }
        if let (Some(progress), Some(p)) = (opts.progress.as_mut(), member.context().progress()) {
            progress(&p);
        }
        if stop.load(Ordering::Relaxed) {
            break Ok(());
        }
        let idle =
            lock(&member.context().tasks).is_empty() && lock(&member.context().fenced).is_empty();
        if spec.stop_at_end && idle && checked.elapsed() >= Duration::from_secs(1) {
            checked = Instant::now();
            if all_finished(job, &parts, &mut finished)? {
                break Ok(());
            }
        }
    };
    // Leaving the group: every partition's job stops at a checkpoint and commits.
    let running: Vec<Part> = lock(&member.context().tasks).keys().cloned().collect();
    member.context().stop(&running);
    member.context().commit(&member, CommitMode::Sync);
    member.unsubscribe();
    outcome?;
    if let Some(e) = first_error(&member) {
        return Err(e);
    }
    let ended = std::mem::take(&mut *lock(&member.context().ended));
    Ok(total(ended, started))
}

/// The first partition's job that failed, named.
fn first_error(member: &BaseConsumer<Member>) -> Option<Error> {
    let mut ended = lock(&member.context().ended);
    let i = ended.iter().position(|(_, r)| r.is_err())?;
    let (part, result) = ended.remove(i);
    let e = result.err()?;
    Some(Error::input(
        format!("partition {}", part_name(&part)),
        e.to_string(),
    ))
}

/// One summary of the partitions' jobs this process ran.
fn total(ended: Vec<(Part, Result<Summary>)>, started: Instant) -> Summary {
    let mut total = Summary {
        backend: String::new(),
        stats: Stats::default(),
        elapsed: started.elapsed(),
        late_not_kept: 0,
        malformed: 0,
        checkpoints: 0,
        restored_from: None,
        spilled: (0, 0),
        keys_spilled: (0, 0),
        sessions_spilled: 0,
        peak_rss: crate::run::peak_rss(),
    };
    for s in ended.into_iter().filter_map(|(_, r)| r.ok()) {
        if total.backend.is_empty() {
            total.backend = s.backend;
        }
        total.stats = total.stats.combine(&s.stats);
        total.late_not_kept += s.late_not_kept;
        total.malformed += s.malformed;
        total.checkpoints += s.checkpoints;
        total.spilled = (total.spilled.0 + s.spilled.0, total.spilled.1 + s.spilled.1);
        total.keys_spilled = (
            total.keys_spilled.0 + s.keys_spilled.0,
            total.keys_spilled.1 + s.keys_spilled.1,
        );
        total.sessions_spilled += s.sessions_spilled;
    }
    total
}
