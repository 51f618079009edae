//! The `panes` binary end to end: bad inputs fail with a message naming the problem and
//! leave no output behind; good inputs give the same rows on every backend.

use std::ffi::OsStr;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use arrow::compute::{SortColumn, concat_batches, lexsort_to_indices, take_record_batch};
use arrow::record_batch::{RecordBatch, RecordBatchReader};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use tempfile::TempDir;

/// A job over clickstream data: tumbling minutes per article, a Parquet sink and a
/// Parquet late sink. Tests edit it with `str::replace`; `INPUT` and `DIR` are filled in
/// by [`Case::job`]. Paths are TOML literal strings, so backslashes need no escaping.
const JOB: &str = r#"
[source]
kind = "parquet"
path = 'INPUT'

[time]
column = "ts"
max_out_of_orderness = "5s"
idle_timeout = "30s"

[window]
kind = "tumble"
size = "1m"

[key]
columns = ["article_id"]

[[aggregate]]
name = "views"
fn = "count"

[[aggregate]]
name = "scroll_sum"
fn = "sum"
column = "scroll_depth"

[[aggregate]]
name = "scroll_avg"
fn = "avg"
column = "scroll_depth"

[[aggregate]]
name = "first_user"
fn = "min"
column = "user_id"

[[aggregate]]
name = "last_user"
fn = "max"
column = "user_id"

[sink]
kind = "parquet"
path = 'DIR/out.parquet'

[late]
kind = "parquet"
path = 'DIR/late.parquet'
"#;

/// Runs the binary.
fn run<S: AsRef<OsStr>>(args: &[S]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_panes"))
        .args(args)
        .output()
        .expect("the panes binary runs")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A temporary directory holding one test's inputs, job file and outputs.
struct Case {
    dir: TempDir,
}

impl Case {
    fn new() -> Case {
        Case {
            dir: tempfile::tempdir().expect("a temporary directory"),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes `text` to `name` and returns its path.
    fn file(&self, name: &str, text: impl AsRef<[u8]>) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, text).expect("writing a test file");
        path
    }

    /// Generates `events` clickstream events into `name`.
    fn generate(&self, name: &str, events: u64) -> PathBuf {
        let path = self.path(name);
        let events = events.to_string();
        let out = run(&[
            "gen".as_ref(),
            "clickstream".as_ref(),
            "--events".as_ref(),
            OsStr::new(&events),
            "--keys".as_ref(),
            "50".as_ref(),
            "--seed".as_ref(),
            "7".as_ref(),
            "--out".as_ref(),
            path.as_os_str(),
        ]);
        assert!(out.status.success(), "gen failed: {}", stderr(&out));
        path
    }

    /// Writes [`JOB`] over `input`, with each `(from, to)` edit applied, to `job.toml`.
    fn job(&self, input: &Path, edits: &[(&str, &str)]) -> PathBuf {
        let mut text = JOB.to_string();
        for (from, to) in edits {
            assert!(text.contains(from), "the job template has no {from:?}");
            text = text.replace(from, to);
        }
        let text = text
            .replace("INPUT", &input.display().to_string())
            .replace("DIR", &self.dir.path().display().to_string());
        self.file("job.toml", text)
    }

    /// Runs `panes run job` with extra flags.
    fn run_job(&self, job: &Path, flags: &[&str]) -> Output {
        let mut args = vec![OsStr::new("run"), job.as_os_str()];
        args.extend(flags.iter().map(OsStr::new));
        run(&args)
    }

    /// Asserts that `out` failed cleanly with a message containing every one of `needles`,
    /// and that no sink file, finished or temporary, was left behind.
    fn assert_fails(&self, out: &Output, needles: &[&str]) -> String {
        let err = stderr(out);
        assert!(!out.status.success(), "expected a failure; stderr:\n{err}");
        assert_eq!(out.status.code(), Some(1), "stderr:\n{err}");
        assert!(err.contains("error: "), "stderr:\n{err}");
        assert!(!err.contains("panicked"), "stderr:\n{err}");
        for needle in needles {
            assert!(err.contains(needle), "stderr lacks {needle:?}:\n{err}");
        }
        for sink in ["out.parquet", "late.parquet", "out.csv", "out.jsonl"] {
            assert!(!self.path(sink).exists(), "{sink} was left behind");
        }
        let tmp: Vec<_> = std::fs::read_dir(self.dir.path())
            .expect("listing the test directory")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "tmp"))
            .collect();
        assert!(tmp.is_empty(), "temporary files were left behind: {tmp:?}");
        err
    }
}

/// Reads a Parquet file into one batch.
fn read_parquet(path: &Path) -> RecordBatch {
    let file = File::open(path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .expect("a Parquet file")
        .build()
        .expect("a Parquet reader");
    let schema = reader.schema();
    let batches: Vec<RecordBatch> = reader.map(|b| b.expect("a readable batch")).collect();
    concat_batches(&schema, &batches).expect("batches of one schema")
}

/// Sorts window rows by (article_id, window_start).
fn sorted(batch: &RecordBatch) -> RecordBatch {
    let by = |name: &str| SortColumn {
        values: batch.column_by_name(name).expect("the column").clone(),
        options: None,
    };
    let indices = lexsort_to_indices(&[by("article_id"), by("window_start")], None)
        .expect("sortable columns");
    take_record_batch(batch, &indices).expect("taking rows")
}

#[test]
fn a_missing_column_is_named_with_the_available_ones() {
    let case = Case::new();
    let input = case.generate("in.parquet", 1000);
    // With a [late] sink every column is read and the operator checks the schema.
    let job = case.job(&input, &[("column = \"ts\"", "column = \"event_time\"")]);
    let err = case.assert_fails(
        &case.run_job(&job, &[]),
        &["\"event_time\"", "does not exist"],
    );
    assert!(
        err.contains("article_id") && err.contains("referrer"),
        "{err}"
    );
    // Without one only the needed columns are read, and the Parquet reader checks them.
    let job = case.job(
        &input,
        &[
            ("column = \"scroll_depth\"", "column = \"scroll\""),
            (
                "[late]\nkind = \"parquet\"\npath = 'DIR/late.parquet'\n",
                "",
            ),
        ],
    );
    let err = case.assert_fails(&case.run_job(&job, &[]), &["\"scroll\"", "does not exist"]);
    assert!(err.contains("in.parquet"), "{err}");
    assert!(
        err.contains("scroll_depth") && err.contains("session_id"),
        "{err}"
    );
}

/// Without a [late] sink the source reads only the columns the job needs: those an event
/// filter reads are among them, and the filter keeps what it says.
#[test]
fn an_event_filter_on_a_column_nothing_else_reads_works_without_a_late_sink() {
    let case = Case::new();
    let input = case.generate("in.parquet", 20_000);
    let no_late = (
        "[late]\nkind = \"parquet\"\npath = 'DIR/late.parquet'\n",
        "",
    );
    let count = |job: &Path| {
        let out = case.run_job(job, &[]);
        assert!(out.status.success(), "{}", stderr(&out));
        let rows = read_parquet(&case.path("out.parquet"));
        let views = rows.column_by_name("views").expect("views");
        let views = views
            .as_any()
            .downcast_ref::<arrow::array::Int64Array>()
            .expect("counts");
        views.iter().flatten().sum::<i64>()
    };
    let all = count(&case.job(&input, &[no_late]));
    let job = case.job(&input, &[no_late]);
    let mut text = std::fs::read_to_string(&job).expect("the job");
    text.push_str("\n[filter]\nevents = \"user_id % 2 = 0\"\n");
    std::fs::write(&job, text).expect("the job");
    let even = count(&job);
    assert!(
        even > 0 && even < all,
        "{even} of {all} events have an even user_id"
    );
}

#[test]
fn a_column_of_the_wrong_type_is_named_with_its_type() {
    let case = Case::new();
    let input = case.generate("in.parquet", 1000);
    let job = case.job(
        &input,
        &[("column = \"scroll_depth\"", "column = \"referrer\"")],
    );
    case.assert_fails(
        &case.run_job(&job, &[]),
        &["\"referrer\"", "Utf8", "numeric", "scroll_sum"],
    );

    let csv = case.file(
        "in.csv",
        "ts,article_id,scroll_depth,user_id\n1.5,1,0.5,10\n2.5,2,0.25,11\n",
    );
    let job = case.job(
        &csv,
        &[("kind = \"parquet\"\npath = '", "kind = \"csv\"\npath = '")],
    );
    case.assert_fails(&case.run_job(&job, &[]), &["\"ts\"", "Float64", "in.csv"]);
}

#[test]
fn an_unparsable_duration_is_named() {
    let case = Case::new();
    let input = case.generate("in.parquet", 100);
    let job = case.job(&input, &[("\"5s\"", "\"5 parsecs\"")]);
    case.assert_fails(
        &case.run_job(&job, &[]),
        &["job.toml", "max_out_of_orderness", "5 parsecs"],
    );
}

#[test]
fn a_thread_count_of_zero_or_past_the_limit_is_named() {
    let case = Case::new();
    let input = case.generate("in.parquet", 100);
    let job = case.job(&input, &[]);
    for (threads, says) in [("0", "at least 1"), ("70000", "at most 1024")] {
        let out = case.run_job(&job, &["--threads", threads]);
        case.assert_fails(&out, &["--threads", says]);
        let list = format!("1,{threads}");
        let out = run(&[
            "bench",
            "--events",
            "1000",
            "--cases",
            "tumble",
            "--threads",
            &list,
        ]);
        case.assert_fails(&out, &["--threads", says]);
    }
}

#[test]
fn an_unknown_job_key_is_named_with_the_file() {
    let case = Case::new();
    let input = case.generate("in.parquet", 100);
    let job = case.job(&input, &[("idle_timeout", "idle_timout")]);
    case.assert_fails(&case.run_job(&job, &[]), &["idle_timout", "job.toml"]);
}

#[test]
fn corrupt_and_truncated_parquet_files_are_named() {
    let case = Case::new();
    let noise: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let corrupt = case.file("noise.parquet", noise);
    let job = case.job(&corrupt, &[]);
    let err = case.assert_fails(&case.run_job(&job, &[]), &["noise.parquet"]);
    assert_eq!(
        err.matches("Corrupt footer").count(),
        1,
        "the cause is repeated:\n{err}"
    );

    let whole = std::fs::read(case.generate("whole.parquet", 5000)).expect("reading the input");
    let truncated = case.file("half.parquet", &whole[..whole.len() / 2]);
    let job = case.job(&truncated, &[]);
    case.assert_fails(&case.run_job(&job, &[]), &["half.parquet"]);
}

#[test]
fn an_empty_input_is_an_error_naming_the_path() {
    let case = Case::new();
    let empty = case.path("empty.parquet");
    let schema = panes::datasets::schema(panes::datasets::Dataset::Clickstream);
    let file = File::create(&empty).expect("creating the empty file");
    ArrowWriter::try_new(file, schema, None)
        .expect("a Parquet writer")
        .close()
        .expect("writing the footer");
    let job = case.job(&empty, &[]);
    case.assert_fails(&case.run_job(&job, &[]), &["empty.parquet", "no events"]);

    let dir = case.path("nothing_here");
    std::fs::create_dir(&dir).expect("creating a directory");
    std::fs::write(dir.join("notes.txt"), "not Parquet").expect("writing a stray file");
    let job = case.job(&dir, &[]);
    case.assert_fails(
        &case.run_job(&job, &[]),
        &["nothing_here", "no .parquet files"],
    );
}

#[test]
fn an_event_time_out_of_range_is_named_with_its_row() {
    let case = Case::new();
    let csv = case.file(
        "in.csv",
        "ts,article_id,scroll_depth,user_id\n\
         1700000000000,1,0.5,10\n\
         1700000001000,2,0.25,11\n\
         9999999999999999,3,0.75,12\n",
    );
    let job = case.job(
        &csv,
        &[("kind = \"parquet\"\npath = '", "kind = \"csv\"\npath = '")],
    );
    // Data rows are counted from 1: the bad value is in the third data row.
    case.assert_fails(
        &case.run_job(&job, &[]),
        &["in.csv", "row 3", "out of range", "9999999999999999"],
    );
}

#[test]
fn backends_agree_and_late_events_keep_their_columns() {
    let case = Case::new();
    let input = case.generate("in.parquet", 20_000);
    let job = case.job(&input, &[]);
    let out = case.run_job(&job, &["--backend", "cpu"]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let summary = |label: &str| -> u64 {
        let line = err.lines().find(|l| l.starts_with(label));
        let value = line.and_then(|l| l[label.len()..].trim().parse().ok());
        value.unwrap_or_else(|| panic!("no {label:?} count in the summary:\n{err}"))
    };
    assert_eq!(summary("events in"), 20_000);
    let cpu = read_parquet(&case.path("out.parquet"));
    assert_eq!(summary("window rows out"), cpu.num_rows() as u64);

    let late = read_parquet(&case.path("late.parquet"));
    assert_eq!(summary("late events"), late.num_rows() as u64);
    let input_schema = panes::datasets::schema(panes::datasets::Dataset::Clickstream);
    let mut want: Vec<&str> = input_schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect();
    want.extend(["watermark", "reason"]);
    let got: Vec<&str> = late
        .schema_ref()
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect();
    assert_eq!(got, want);

    let job = case.job(&input, &[("DIR/out.parquet", "DIR/reference.parquet")]);
    let out = case.run_job(&job, &["--backend", "reference"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let reference = read_parquet(&case.path("reference.parquet"));

    let job = case.job(&input, &[("DIR/out.parquet", "DIR/gpu.parquet")]);
    let out = case.run_job(&job, &["--backend", "gpu"]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("backend          gpu on "), "{err}");
    let gpu = read_parquet(&case.path("gpu.parquet"));

    assert!(cpu.num_rows() > 0);
    assert_eq!(sorted(&cpu), sorted(&reference));
    assert_eq!(sorted(&cpu), sorted(&gpu));
}

/// Hides every GPU adapter from wgpu (Vulkan only, and no Vulkan driver).
fn without_gpu(mut cmd: Command) -> Output {
    cmd.env("WGPU_BACKEND", "vulkan")
        .env("VK_ICD_FILENAMES", "/nonexistent")
        .env("VK_DRIVER_FILES", "/nonexistent")
        .output()
        .expect("the panes binary runs")
}

#[test]
fn gpu_without_an_adapter_is_an_error_and_auto_falls_back_to_cpu() {
    let case = Case::new();
    let input = case.generate("in.parquet", 2_000);
    let job = case.job(&input, &[]);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_panes"));
    cmd.arg("run").arg(&job).args(["--backend", "gpu"]);
    let out = without_gpu(cmd);
    case.assert_fails(&out, &["no GPU adapter", "--backend cpu"]);

    let mut cmd = Command::new(env!("CARGO_BIN_EXE_panes"));
    cmd.arg("run").arg(&job).args(["--backend", "auto"]);
    let out = without_gpu(cmd);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    let why: Vec<&str> = err.lines().filter(|l| l.contains("backend auto")).collect();
    assert_eq!(why.len(), 1, "one line saying why:\n{err}");
    assert!(
        why[0].contains("using cpu: the gpu backend is slower"),
        "{err}"
    );
    assert!(err.contains("backend          cpu"), "{err}");
    assert!(case.path("out.parquet").exists());
}

#[test]
fn csv_and_json_lines_sinks_write_headers_and_objects() {
    let case = Case::new();
    let input = case.generate("in.parquet", 5000);
    let job = case.job(
        &input,
        &[(
            "kind = \"parquet\"\npath = 'DIR/out.parquet'",
            "kind = \"csv\"\npath = 'DIR/out.csv'",
        )],
    );
    let out = case.run_job(&job, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = std::fs::read_to_string(case.path("out.csv")).expect("reading out.csv");
    let mut lines = text.lines();
    let header = lines.next().expect("a header");
    assert!(
        header.contains("article_id") && header.contains("window_start"),
        "{header}"
    );
    assert!(lines.count() > 0, "no rows in\n{text}");

    let job = case.job(
        &input,
        &[(
            "kind = \"parquet\"\npath = 'DIR/out.parquet'",
            "kind = \"jsonl\"",
        )],
    );
    let out = case.run_job(&job, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8(out.stdout).expect("UTF-8 JSON");
    assert!(!stdout.is_empty(), "nothing on stdout");
    for line in stdout.lines() {
        let row: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e} in line {line:?}"));
        assert!(row.get("window_start").is_some(), "{line}");
        assert!(
            row.get("views").is_some_and(|v| v.as_i64().is_some()),
            "{line}"
        );
    }
}

/// A CSV file with a short line, a value that is not a number in a float column (which
/// must not make the whole column text), a bad time and a quoted comma: the good records
/// are aggregated, the others go to `[dead_letter]` with file, line, reason and text, and
/// are counted in the summary; with `on_malformed = "fail"` the first stops the job,
/// named by file, line and column.
#[test]
fn malformed_csv_records_go_to_the_dead_letter_output_or_stop_the_job() {
    let case = Case::new();
    let mut text = String::from("ts,article_id,scroll_depth,user_id\n");
    let mut good = 0;
    for i in 0..60u64 {
        let ts = 1_700_000_000_000 + i * 2_000;
        match i {
            7 => text.push_str(&format!("{ts},3,0.5\n")),
            20 => text.push_str(&format!("{ts},3,abc,12\n")),
            33 => text.push_str("yesterday,3,0.5,12\n"),
            _ => {
                text.push_str(&format!("{ts},{},\"0.{i}\",{}\n", i % 4, 10 + i % 3));
                good += 1;
            }
        }
    }
    let csv = case.file("in.csv", &text);
    let from_csv = (
        "kind = \"parquet\"\npath = 'INPUT'",
        "kind = \"csv\"\npath = 'INPUT'",
    );
    let late = "[late]\nkind = \"parquet\"\npath = 'DIR/late.parquet'";
    let dead_letter = "[dead_letter]\nkind = \"jsonl\"\npath = 'DIR/bad.jsonl'";
    let job = case.job(&csv, &[(late, dead_letter), from_csv]);
    let out = case.run_job(&job, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    // The summary goes to stderr, as the log does.
    let summary = stderr(&out);
    assert!(summary.contains("malformed input  3"), "{summary}");
    assert!(
        summary.contains(&format!("events in        {good}")),
        "{summary}"
    );
    let views = read_parquet(&case.path("out.parquet"));
    let views = views
        .column_by_name("views")
        .expect("a views column")
        .as_any()
        .downcast_ref::<arrow::array::Int64Array>()
        .expect("views are Int64")
        .iter()
        .map(|v| v.unwrap_or(0))
        .sum::<i64>();
    assert_eq!(views, good as i64, "every good record counted once");
    let bad = std::fs::read_to_string(case.path("bad.jsonl")).expect("reading bad.jsonl");
    let rows: Vec<serde_json::Value> = bad
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e} in {l:?}")))
        .collect();
    // Data record i is on line i + 2 (the header is line 1).
    let expected = [
        (9, "3 fields where the header has 4", "1700000014000,3,0.5"),
        (22, "column \"scroll_depth\"", "1700000040000,3,abc,12"),
        (35, "column \"ts\"", "yesterday,3,0.5,12"),
    ];
    assert_eq!(rows.len(), expected.len(), "{bad}");
    for (row, (line, reason, raw)) in rows.iter().zip(expected) {
        assert!(
            row["origin"]
                .as_str()
                .is_some_and(|f| f.ends_with("in.csv")),
            "{row}"
        );
        assert_eq!(row["position"], line, "{row}");
        assert!(
            row["reason"].as_str().is_some_and(|r| r.contains(reason)),
            "{row}"
        );
        assert_eq!(row["raw"], raw, "{row}");
    }

    std::fs::remove_file(case.path("out.parquet")).expect("removing out.parquet");
    let job = case.job(
        &csv,
        &[
            (late, ""),
            (
                "kind = \"parquet\"\npath = 'INPUT'",
                "kind = \"csv\"\non_malformed = \"fail\"\npath = 'INPUT'",
            ),
        ],
    );
    case.assert_fails(&case.run_job(&job, &[]), &["in.csv", "line 9", "3 fields"]);

    // A dead-letter output for a source that has none is a mistake in the job.
    let parquet = case.generate("in.parquet", 100);
    let job = case.job(&parquet, &[(late, dead_letter)]);
    case.assert_fails(&case.run_job(&job, &[]), &["[dead_letter]", "csv"]);
}

/// A JSON-lines source with a declared schema: a line that is not JSON and one whose
/// value has the wrong type go to `[dead_letter]`, the rest are aggregated; without a
/// schema the types are inferred. A CSV source's declared types override inference, and a
/// declared column the header lacks is named.
#[test]
fn json_lines_and_declared_schemas() {
    let case = Case::new();
    let mut text = String::new();
    let mut good = 0;
    for i in 0..50u64 {
        let ts = 1_700_000_000_000 + i * 2_000;
        match i {
            4 => text.push_str("not json at all\n"),
            9 => text.push_str(&format!(
                "{{\"ts\": {ts}, \"article_id\": 1, \"scroll_depth\": \"deep\", \"user_id\": 3}}\n"
            )),
            // Blank lines are no records.
            12 => text.push('\n'),
            _ => {
                text.push_str(&format!(
                    "{{\"ts\": {ts}, \"article_id\": {}, \"scroll_depth\": 0.{i}, \"user_id\": {}, \"extra\": \"x\"}}\n",
                    i % 3,
                    10 + i % 4
                ));
                good += 1;
            }
        }
    }
    let input = case.file("in.jsonl", &text);
    let late = "[late]\nkind = \"parquet\"\npath = 'DIR/late.parquet'";
    let dead_letter = "[dead_letter]\nkind = \"jsonl\"\npath = 'DIR/bad.jsonl'";
    let schema = "schema = { ts = \"timestamp_ms\", article_id = \"int64\", scroll_depth = \"float64\", user_id = \"int64\" }\n";
    for declared in [schema, ""] {
        let _ = std::fs::remove_file(case.path("out.parquet"));
        let job = case.job(
            &input,
            &[
                (late, dead_letter),
                (
                    "kind = \"parquet\"\npath = 'INPUT'",
                    &format!("kind = \"jsonl\"\n{declared}path = 'INPUT'"),
                ),
            ],
        );
        let out = case.run_job(&job, &[]);
        assert!(out.status.success(), "{}", stderr(&out));
        let summary = stderr(&out);
        assert!(
            summary.contains(&format!("events in        {good}")),
            "{summary}"
        );
        assert!(summary.contains("malformed input  2"), "{summary}");
        let bad = std::fs::read_to_string(case.path("bad.jsonl")).expect("reading bad.jsonl");
        let rows: Vec<serde_json::Value> = bad
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e} in {l:?}")))
            .collect();
        assert_eq!(rows.len(), 2, "{bad}");
        assert_eq!(rows[0]["position"], 5, "{bad}");
        assert_eq!(rows[0]["raw"], "not json at all", "{bad}");
        assert_eq!(rows[1]["position"], 10, "{bad}");
        assert!(
            rows[1]["reason"]
                .as_str()
                .is_some_and(|r| r.contains("scroll_depth")),
            "{bad}"
        );
        let out = read_parquet(&case.path("out.parquet"));
        let views = out.column_by_name("views").expect("views");
        let views = views.as_any().downcast_ref::<arrow::array::Int64Array>();
        let total: i64 = views.expect("Int64 views").iter().flatten().sum();
        assert_eq!(total, good as i64, "declared {declared:?}");
    }

    let csv = case.file(
        "in.csv",
        "ts,article_id,scroll_depth,user_id\n1700000000000,1,0.5,10\n1700000001000,2,0.25,11\n",
    );
    let from_csv = |schema: &str| {
        (
            "kind = \"parquet\"\npath = 'INPUT'".to_string(),
            format!("kind = \"csv\"\nschema = {schema}\npath = 'INPUT'"),
        )
    };
    let (from, to) = from_csv("{ user_id = \"float64\" }");
    let job = case.job(&csv, &[(late, ""), (&from, &to)]);
    let _ = std::fs::remove_file(case.path("out.parquet"));
    let out = case.run_job(&job, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = read_parquet(&case.path("out.parquet"));
    assert_eq!(
        out.column_by_name("first_user")
            .expect("first_user")
            .data_type(),
        &arrow::datatypes::DataType::Float64,
        "the declared type wins over the inferred Int64"
    );
    std::fs::remove_file(case.path("out.parquet")).expect("removing out.parquet");
    let (from, to) = from_csv("{ nope = \"int64\" }");
    let job = case.job(&csv, &[(late, ""), (&from, &to)]);
    case.assert_fails(&case.run_job(&job, &[]), &["\"nope\"", "scroll_depth"]);
    let (from, to) = from_csv("{ ts = \"date\" }");
    let job = case.job(&csv, &[(late, ""), (&from, &to)]);
    case.assert_fails(&case.run_job(&job, &[]), &["source.schema.ts", "\"date\""]);
}

/// Two CSV files over the same three minutes: read one after another as one partition,
/// the second file's first two minutes come after their windows fired and are late; with
/// `partition_by = "file"` each file has its own watermark, read side by side, and no
/// event is late.
#[test]
fn files_as_partitions_keep_their_own_watermarks() {
    let case = Case::new();
    let dir = case.path("in");
    std::fs::create_dir(&dir).expect("creating the input directory");
    for (name, offset) in [("a.csv", 0), ("b.csv", 500)] {
        let mut text = String::from("ts,article_id,scroll_depth,user_id\n");
        for i in 0..180u64 {
            let ts = 1_700_000_000_000 + i * 1_000 + offset;
            text.push_str(&format!("{ts},{},0.5,{}\n", i % 5, 10 + i % 3));
        }
        std::fs::write(dir.join(name), text).expect("writing an input file");
    }
    let late = "[late]\nkind = \"parquet\"\npath = 'DIR/late.parquet'";
    let run = |partition_by: &str| {
        let _ = std::fs::remove_file(case.path("out.parquet"));
        let job = case.job(
            &dir,
            &[
                (late, ""),
                (
                    "kind = \"parquet\"\npath = 'INPUT'",
                    &format!("kind = \"csv\"\n{partition_by}path = 'INPUT'"),
                ),
            ],
        );
        let out = case.run_job(&job, &[]);
        assert!(out.status.success(), "{}", stderr(&out));
        stderr(&out)
    };
    let one = run("");
    assert!(one.contains("events in        360"), "{one}");
    assert!(
        !one.contains("late events      0\n"),
        "the second file is late:\n{one}"
    );
    let per_file = run("partition_by = \"file\"\n");
    assert!(per_file.contains("events in        360"), "{per_file}");
    assert!(per_file.contains("late events      0\n"), "{per_file}");
    let out = read_parquet(&case.path("out.parquet"));
    let views = out.column_by_name("views").expect("views");
    let views = views.as_any().downcast_ref::<arrow::array::Int64Array>();
    assert_eq!(
        views.expect("Int64 views").iter().flatten().sum::<i64>(),
        360
    );

    std::fs::remove_file(case.path("out.parquet")).expect("removing out.parquet");
    let job = case.job(
        &dir,
        &[
            (late, ""),
            (
                "kind = \"parquet\"\npath = 'INPUT'",
                "kind = \"csv\"\npartition_by = \"row\"\npath = 'INPUT'",
            ),
        ],
    );
    case.assert_fails(
        &case.run_job(&job, &[]),
        &["partition_by", "\"row\"", "\"file\""],
    );
}

#[test]
fn a_missing_job_file_is_named() {
    let case = Case::new();
    let out = case.run_job(&case.path("no_such_job.toml"), &[]);
    let err = case.assert_fails(&out, &["no_such_job.toml", "reading job file"]);
    assert_eq!(
        err.matches("(os error").count(),
        1,
        "the cause is repeated:\n{err}"
    );
}

#[test]
fn top_k_keeps_the_largest_rows_of_each_window_in_rank_order() {
    let case = Case::new();
    let input = case.generate("in.parquet", 20_000);
    // 20 000 events span 2 s of event time: windows of 200 ms give ten of them.
    let short = ("size = \"1m\"", "size = \"200ms\"");
    let all = case.job(&input, &[short]);
    let out = case.run_job(&all, &["--backend", "cpu"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let full = read_parquet(&case.path("out.parquet"));

    let top = case.job(
        &input,
        &[
            short,
            ("DIR/out.parquet", "DIR/top.parquet"),
            ("[late]", "[top_k]\nby = \"views\"\nk = 3\n\n[late]"),
        ],
    );
    let out = case.run_job(&top, &["--backend", "cpu"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let got = read_parquet(&case.path("top.parquet"));

    let int = |b: &RecordBatch, name: &str| -> Vec<i64> {
        let col = b.column_by_name(name).expect("the column");
        let col = arrow::compute::cast(col, &arrow::datatypes::DataType::Int64).expect("a cast");
        col.as_any()
            .downcast_ref::<arrow::array::Int64Array>()
            .expect("Int64")
            .values()
            .to_vec()
    };
    let (windows, articles, views) = (
        int(&full, "window_start"),
        int(&full, "article_id"),
        int(&full, "views"),
    );
    // Per window: views, largest first; ties go to the smaller article id.
    let mut want: Vec<(i64, i64, i64, i64)> = Vec::new();
    let mut start = 0;
    while start < windows.len() {
        let end = (start..windows.len())
            .find(|&i| windows[i] != windows[start])
            .unwrap_or(windows.len());
        let mut rows: Vec<usize> = (start..end).collect();
        rows.sort_by_key(|&i| (std::cmp::Reverse(views[i]), articles[i]));
        for (rank, &i) in rows.iter().take(3).enumerate() {
            want.push((windows[i], articles[i], views[i], rank as i64 + 1));
        }
        start = end;
    }
    let (gw, ga, gv, gr) = (
        int(&got, "window_start"),
        int(&got, "article_id"),
        int(&got, "views"),
        int(&got, "rank"),
    );
    let have: Vec<(i64, i64, i64, i64)> = (0..got.num_rows())
        .map(|i| (gw[i], ga[i], gv[i], gr[i]))
        .collect();
    assert!(want.len() >= 6, "the test needs several windows");
    assert_eq!(have, want);

    let fresh = Case::new();
    let bad = fresh.job(
        &input,
        &[("[late]", "[top_k]\nby = \"viewz\"\nk = 3\n\n[late]")],
    );
    let out = fresh.run_job(&bad, &[]);
    fresh.assert_fails(&out, &["top_k.by", "viewz"]);
}

#[test]
fn gen_writes_every_dataset_and_the_iot_ground_truth() {
    let case = Case::new();
    for dataset in ["clickstream", "iot", "nexmark", "transactions"] {
        let out = case.path(&format!("{dataset}.parquet"));
        let result = run(&[
            "gen".as_ref(),
            OsStr::new(dataset),
            "--events".as_ref(),
            "120000".as_ref(),
            "--keys".as_ref(),
            "100".as_ref(),
            "--out".as_ref(),
            out.as_os_str(),
        ]);
        assert!(result.status.success(), "{dataset}: {}", stderr(&result));
        assert_eq!(read_parquet(&out).num_rows(), 120_000, "{dataset}");
    }
    // 12 s of event time hold no whole minute past the first: the labels may be empty,
    // but the file is there with its columns.
    let labels = read_parquet(&case.path("iot.labels.parquet"));
    let names: Vec<&str> = labels
        .schema_ref()
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect();
    assert_eq!(
        names,
        ["sensor_id", "window_start", "window_end", "shift_sd"]
    );
    assert!(!case.path("clickstream.labels.parquet").exists());
}

#[test]
fn bench_runs_the_cases_asked_for_and_prints_json() {
    let out = run(&[
        "bench",
        "--events",
        "30000",
        "--keys",
        "100",
        "--backend",
        "cpu",
        "--threads",
        "1",
        "--cases",
        "hop(15m,nexmark",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let cases = bench_cases(&out);
    let names: Vec<&str> = cases
        .iter()
        .map(|c| c["window"].as_str().expect("a window name"))
        .collect();
    assert_eq!(
        names,
        [
            "hop(15m,1m)",
            "nexmark q5",
            "nexmark q5 sql",
            "nexmark q7",
            "nexmark q7 sql",
            "nexmark q11",
            "nexmark q11 sql"
        ]
    );
    // Each SQL twin runs the same job: the same rows.
    for pair in cases[1..].chunks(2) {
        assert_eq!(pair[0]["rows_out"], pair[1]["rows_out"], "{pair:?}");
    }
    for case in &cases {
        assert_eq!(case["events"], 30000, "{case}");
        assert!(case["events_per_sec"].as_f64().unwrap() > 0.0, "{case}");
        assert!(case["rows_out"].as_u64().unwrap() > 0, "{case}");
    }
}

/// The cases of a `panes bench --json` report, after checking its schema.
fn bench_cases(out: &Output) -> Vec<serde_json::Value> {
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(report["schema"], "panes-bench/1", "{report}");
    report["cases"]
        .as_array()
        .expect("an array of cases")
        .clone()
}

fn bench_json(extra: &[&str], env: Option<(&str, &str)>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_panes"));
    cmd.args([
        "bench",
        "--events",
        "40000",
        "--reference-events",
        "20000",
        "--keys",
        "300",
    ])
    .args(["--cases", "hop(15m", "--json"])
    .args(extra);
    if let Some((k, v)) = env {
        cmd.env(k, v);
    }
    cmd.output().expect("panes runs")
}

/// `--end-to-end` times the same cases as `panes run` runs them, through files: the same
/// rows come out as in memory.
#[test]
fn bench_end_to_end_runs_the_cases_through_files_with_the_same_rows() {
    let args = ["--backend", "cpu", "--threads", "2", "--repeats", "1"];
    let in_memory = bench_json(&args, None);
    assert!(in_memory.status.success(), "{}", stderr(&in_memory));
    let end_to_end = bench_json(&[&args[..], &["--end-to-end"]].concat(), None);
    assert!(end_to_end.status.success(), "{}", stderr(&end_to_end));
    let (a, b) = (bench_cases(&in_memory), bench_cases(&end_to_end));
    assert!(!a.is_empty());
    assert_eq!(a.len(), b.len());
    for (a, b) in a.iter().zip(&b) {
        assert_eq!(a["end_to_end"], false, "{a}");
        assert_eq!(b["end_to_end"], true, "{b}");
        assert_eq!(a["rows_out"], b["rows_out"], "{a}\n{b}");
        assert!(b["rows_out"].as_u64().unwrap() > 0, "{b}");
        assert!(b["events_per_sec"].as_f64().unwrap() > 0.0, "{b}");
    }
}

#[test]
fn bench_reports_the_machine_the_spread_of_repeats_and_that_backends_agree() {
    let out = bench_json(
        &[
            "--backend",
            "reference,cpu",
            "--threads",
            "1,2",
            "--repeats",
            "3",
        ],
        None,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let machine = &report["machine"];
    assert!(machine["cores"].as_u64().unwrap() >= 1, "{machine}");
    assert!(!machine["cpu"].as_str().unwrap().is_empty(), "{machine}");
    assert!(machine["memory_bytes"].as_u64().unwrap() > 0, "{machine}");
    assert!(machine["commit"].as_str().unwrap() != "", "{machine}");
    let cases = bench_cases(&out);
    assert_eq!(cases.len(), 4, "reference and cpu, at 1 and 2 threads");
    for c in &cases {
        let s = &c["seconds"];
        assert_eq!(s["samples"].as_array().unwrap().len(), 3, "{c}");
        let f = |k: &str| s[k].as_f64().unwrap();
        assert!(
            f("min") <= f("q1") && f("q1") <= f("median") && f("median") <= f("q3"),
            "{c}"
        );
        assert_eq!(c["agrees"], true, "{c}");
        assert_eq!(c["rows_hash"], cases[0]["rows_hash"], "{c}");
        assert!(c["bytes_per_sec"].as_f64().unwrap() > c["events_per_sec"].as_f64().unwrap());
    }
    // CSV: a header and a line per case.
    let out = run(&[
        "bench",
        "--events",
        "40000",
        "--keys",
        "300",
        "--cases",
        "hop(15m",
        "--backend",
        "cpu",
        "--threads",
        "1",
        "--repeats",
        "1",
        "--csv",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("case,keys,backend,events,threads,median_seconds"),
        "{text}"
    );
    assert_eq!(lines.len(), 2, "{text}");
    assert!(
        lines[1].starts_with("hop(15m,1m),300,cpu,40000,1,"),
        "{text}"
    );
}

/// A thread count that gives more or fewer rows than the sweep's first fails its case,
/// even where the agreement check's sample agreed.
#[test]
fn a_thread_count_that_returns_other_rows_fails_its_case() {
    let out = bench_json(
        &["--backend", "cpu", "--threads", "1,2", "--repeats", "1"],
        Some(("PANES_BENCH_CORRUPT", "cpu@2")),
    );
    assert!(!out.status.success(), "a disagreement is a failure");
    assert!(stderr(&out).contains("other rows"), "{}", stderr(&out));
    let cases = bench_cases(&out);
    let at = |t: u64| {
        (cases.iter())
            .find(|c| c["threads"] == t)
            .expect("a case at each thread count")
    };
    assert_eq!(at(1)["agrees"], true, "{}", at(1));
    assert_eq!(at(2)["agrees"], false, "{}", at(2));
    assert!(
        at(2)["disagreement"]
            .as_str()
            .is_some_and(|d| d.contains("on 2 threads")),
        "{}",
        at(2)
    );
}

#[test]
fn a_backend_that_returns_other_rows_fails_its_case() {
    let out = bench_json(
        &[
            "--backend",
            "reference,cpu",
            "--threads",
            "2",
            "--repeats",
            "1",
        ],
        Some(("PANES_BENCH_CORRUPT", "cpu")),
    );
    assert!(!out.status.success(), "a disagreement is a failure");
    assert!(
        stderr(&out).contains("returned other rows"),
        "{}",
        stderr(&out)
    );
    let cases = bench_cases(&out);
    let cpu = cases
        .iter()
        .find(|c| c["backend"] == "cpu")
        .expect("a cpu case");
    let reference = cases
        .iter()
        .find(|c| c["backend"] == "reference")
        .expect("reference");
    assert_eq!(reference["agrees"], true);
    assert_eq!(cpu["agrees"], false, "{cpu}");
    assert!(
        cpu["disagreement"]
            .as_str()
            .unwrap()
            .contains("rows against"),
        "{cpu}"
    );
}

#[test]
fn bench_compare_flags_a_regression_beyond_the_noise() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let out = bench_json(
        &["--backend", "cpu", "--threads", "1", "--repeats", "2"],
        None,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let old = dir.path().join("old.json");
    std::fs::write(&old, &out.stdout).expect("write");
    // The same report, three times slower, with no spread: a regression.
    let mut slower: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    for c in slower["cases"].as_array_mut().unwrap() {
        let eps = c["events_per_sec"].as_f64().unwrap();
        c["events_per_sec"] = (eps / 3.0).into();
        let median = c["seconds"]["median"].clone();
        for k in ["q1", "q3"] {
            c["seconds"][k] = median.clone();
        }
    }
    let new = dir.path().join("new.json");
    std::fs::write(&new, serde_json::to_vec(&slower).unwrap()).expect("write");
    let out = run(&[
        "bench",
        "compare",
        old.to_str().unwrap(),
        new.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("0.33x") && text.contains("regression"),
        "{text}"
    );
    let out = run(&[
        "bench",
        "compare",
        old.to_str().unwrap(),
        old.to_str().unwrap(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("1.00x") && text.contains("0 regression(s)"),
        "{text}"
    );
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "[1, 2]").expect("write");
    let out = run(&[
        "bench",
        "compare",
        bad.to_str().unwrap(),
        old.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("not a `panes bench --json` report"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn bench_suites_sweep_panes_per_window_and_batch_sizes() {
    let out = run(&[
        "bench",
        "--suite",
        "windows",
        "--events",
        "30000",
        "--keys",
        "200",
        "--backend",
        "cpu",
        "--threads",
        "1",
        "--repeats",
        "1",
        "--batch-rows",
        "4096,16384",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let cases = bench_cases(&out);
    let names: Vec<(&str, u64)> = cases
        .iter()
        .map(|c| {
            (
                c["window"].as_str().unwrap(),
                c["batch_rows"].as_u64().unwrap(),
            )
        })
        .collect();
    let shapes = [
        "tumble(1m)",
        "hop(4m,1m)",
        "hop(15m,1m)",
        "hop(60m,1m)",
        "cumulate(15m,1m)",
    ];
    let want: Vec<(&str, u64)> = [4096, 16384]
        .into_iter()
        .flat_map(|b| shapes.iter().map(move |s| (*s, b)))
        .collect();
    assert_eq!(names, want, "the windows suite has no workloads");
    let out = run(&[
        "bench",
        "--suite",
        "iot",
        "--events",
        "30000",
        "--backend",
        "cpu",
        "--threads",
        "1",
        "--repeats",
        "1",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let names: Vec<String> = bench_cases(&out)
        .iter()
        .map(|c| c["window"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["iot anomaly", "iot anomaly sql"]);
}

/// The HTML report in a real browser: headless Chromium (Debian's `chromium`, which
/// `.ci/run` installs) loads it, its DOM has the four plots, and a screenshot is drawn.
#[test]
fn bench_report_renders_in_a_headless_browser_with_its_plots() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let report = dir.path().join("report");
    let out = run(&[
        "bench",
        "--suite",
        "windows",
        "--events",
        "30000",
        "--reference-events",
        "10000",
        "--keys",
        "100,1000",
        "--backend",
        "reference,cpu",
        "--threads",
        "1,2",
        "--batch-rows",
        "4096,16384",
        "--repeats",
        "1",
        "--report",
        report.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let page = report.join("index.html");
    let html = std::fs::read_to_string(&page).expect("the page");
    // Self-contained: nothing to fetch, nothing to run.
    for fetch in ["<script", "<link", "src=", "url("] {
        assert!(!html.contains(fetch), "{fetch} in the page");
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report.join("report.json")).unwrap())
            .unwrap();
    assert_eq!(json["schema"], "panes-bench/1");

    let browser = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| {
            Command::new(b)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .expect("a headless browser: install Debian's chromium (.ci/run does)");
    let url = format!("file://{}", page.display());
    let browse = |args: &[&str]| {
        Command::new(browser)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
            ])
            .args(args)
            .arg(&url)
            .output()
            .expect("the browser runs")
    };
    let dom = browse(&["--dump-dom"]);
    assert!(
        dom.status.success(),
        "{}",
        String::from_utf8_lossy(&dom.stderr)
    );
    let dom = String::from_utf8_lossy(&dom.stdout);
    for title in [
        "Throughput against keys",
        "Throughput against panes per window",
        "Throughput against batch size",
        "Thread scaling",
    ] {
        assert!(dom.contains(&format!("<h2>{title}")), "{title} missing");
    }
    assert_eq!(dom.matches("<svg").count(), 4, "four plots, each drawn");
    assert!(dom.matches("<polyline").count() >= 8, "lines in the plots");
    let shot = dir.path().join("shot.png");
    let out = browse(&[
        "--window-size=1200,2400",
        &format!("--screenshot={}", shot.display()),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let png = std::fs::read(&shot).expect("a screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 50_000,
        "{} bytes",
        png.len()
    );
}

#[test]
fn bench_names_a_case_it_does_not_have() {
    let out = run(&["bench", "--cases", "hop,sliding", "--json"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("\"sliding\"") && err.contains("hop(15m,1m)") && err.contains("nexmark q11"),
        "{err}"
    );
    assert!(
        out.stdout.is_empty(),
        "nothing runs: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// `--threads 1,2,3` runs each case at each thread count, with the speed-up against the
/// first; the rows do not depend on the thread count; 0 threads is an error.
#[test]
fn bench_sweeps_thread_counts() {
    let out = run(&[
        "bench",
        "--events",
        "30000",
        "--keys",
        "100",
        "--backend",
        "cpu",
        "--threads",
        "1,2,3",
        "--cases",
        "tumble",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let cases = bench_cases(&out);
    let threads: Vec<u64> = cases
        .iter()
        .map(|c| c["threads"].as_u64().unwrap())
        .collect();
    assert_eq!(threads, [1, 2, 3]);
    assert_eq!(cases[0]["speedup"].as_f64(), Some(1.0));
    for case in &cases {
        assert!(case["speedup"].as_f64().unwrap() > 0.0, "{case}");
        assert_eq!(case["rows_out"], cases[0]["rows_out"], "{case}");
    }
    let out = run(&["bench", "--threads", "2,0", "--cases", "tumble"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--threads"), "{}", stderr(&out));
}

/// `panes bench --profile` times the GPU backend's stages (lavapipe in CI has timestamp
/// queries): host and device stages, each within the case's time, in the JSON.
#[test]
fn bench_profiles_the_gpu_stages() {
    let out = run(&[
        "bench",
        "--events",
        "20000",
        "--keys",
        "500",
        "--backend",
        "cpu,gpu",
        "--cases",
        "hop(15m",
        "--profile",
        "--repeats",
        "1",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let cases = bench_cases(&out);
    let cpu = cases
        .iter()
        .find(|c| c["backend"] == "cpu")
        .expect("a cpu case");
    assert!(
        cpu["profile"].is_null(),
        "the cpu backend keeps no profile: {cpu}"
    );
    let gpu = cases
        .iter()
        .find(|c| c["backend"] == "gpu")
        .expect("a gpu case");
    assert_eq!(gpu["rows_out"], cpu["rows_out"], "{gpu}");
    let stages = gpu["profile"].as_array().expect("a profile");
    let names: Vec<&str> = stages
        .iter()
        .map(|s| s["stage"].as_str().unwrap())
        .collect();
    for stage in [
        "host: prepare and upload",
        "device: sort and fold",
        "device: merge and emit",
        "host: evaluate rows",
    ] {
        assert!(names.contains(&stage), "{stage} missing from {names:?}");
    }
    let total = gpu["seconds"]["median"].as_f64().unwrap();
    for s in stages {
        let seconds = s["seconds"].as_f64().unwrap();
        assert!(
            (0.0..=total).contains(&seconds),
            "{s} in a case of {total} s"
        );
    }
}

/// `--metrics ADDR` serves the run's counters while it runs: the events read grow, and the
/// watermark and its lag are there. Without a terminal, progress lines go to stderr.
#[test]
fn metrics_are_served_in_prometheus_format_while_a_job_runs() {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpStream;
    use std::process::Stdio;

    let dir = TempDir::new().unwrap();
    let job = dir.path().join("job.toml");
    let text = JOB
        .replace(
            "kind = \"parquet\"\npath = 'INPUT'",
            "kind = \"generator\"\ndataset = \"clickstream\"\nevents = 500_000_000\nkeys = 1000",
        )
        .replace("DIR", &dir.path().display().to_string());
    std::fs::write(&job, text).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_panes"))
        .args(["run", job.to_str().unwrap(), "--threads", "1"])
        .args(["--metrics", "127.0.0.1:0"])
        .stderr(Stdio::piped())
        .spawn()
        .expect("panes runs");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| {
            l.strip_prefix("metrics at http://")
                .map(|a| a.trim_end_matches("/metrics").to_string())
        })
        .expect("the address is printed");
    // The first progress line goes to the test; whatever else it prints must not fill
    // the pipe.
    let (tx, progress) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            if line.starts_with("progress: ") {
                let _ = tx.send(line);
            }
        }
    });
    let scrape = || {
        let mut s = TcpStream::connect(&addr).expect("the metrics address answers");
        write!(s, "GET /metrics HTTP/1.1\r\nHost: panes\r\n\r\n").unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).unwrap();
        body
    };
    let events = |body: &str| -> u64 {
        let line = body
            .lines()
            .find(|l| l.starts_with("panes_events_read_total "))
            .unwrap_or_else(|| panic!("no event counter in {body}"));
        line.split(' ').nth(1).unwrap().parse().unwrap()
    };
    let started = std::time::Instant::now();
    let mut seen = Vec::new();
    while seen.len() < 2 && started.elapsed() < std::time::Duration::from_secs(60) {
        let body = scrape();
        let n = events(&body);
        if n > 0 && seen.last() != Some(&n) {
            assert!(body.contains("panes_watermark_lag_seconds "), "{body}");
            assert!(
                body.contains("# TYPE panes_window_rows_total counter"),
                "{body}"
            );
            seen.push(n);
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // Without a terminal, a progress line comes every 5 s.
    let progress = progress.recv_timeout(std::time::Duration::from_secs(30));
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(
        seen.len(),
        2,
        "the event counter grew while the job ran: {seen:?}"
    );
    assert!(seen[0] < seen[1]);
    let progress = progress.expect("a progress line within 30 s");
    assert!(
        progress.contains(" events (") && progress.contains("watermark"),
        "{progress}"
    );
}

/// The clickstream at `from` with `article_id` as slugs (`art-7`), written in row groups
/// of 3,000 rows, dictionary-encoded or not.
fn write_slugs(from: &Path, to: &Path, dictionary: bool) {
    use arrow::array::{Array, ArrayRef, Int64Array, StringArray};
    let batch = read_parquet(from);
    let i = batch.schema().index_of("article_id").expect("article_id");
    let ids = batch
        .column(i)
        .as_any()
        .downcast_ref::<Int64Array>()
        .expect("integer ids");
    let slugs: ArrayRef = std::sync::Arc::new(StringArray::from_iter(
        ids.iter().map(|id| id.map(|id| format!("art-{id}"))),
    ));
    let mut columns = batch.columns().to_vec();
    columns[i] = slugs;
    let mut fields: Vec<_> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields[i] = arrow::datatypes::Field::new(
        "article_id",
        arrow::datatypes::DataType::Utf8,
        ids.is_nullable(),
    );
    let schema = std::sync::Arc::new(arrow::datatypes::Schema::new(fields));
    let batch = RecordBatch::try_new(schema.clone(), columns).expect("a batch of slugs");
    let props = parquet::file::properties::WriterProperties::builder()
        .set_max_row_group_row_count(Some(3_000))
        .set_dictionary_enabled(dictionary)
        .build();
    let file = File::create(to).expect("a Parquet file");
    let mut w = ArrowWriter::try_new(file, schema, Some(props)).expect("a writer");
    w.write(&batch).expect("written");
    w.close().expect("closed");
}

#[test]
fn a_dictionary_encoded_string_key_gives_the_rows_of_plain_strings() {
    let case = Case::new();
    let input = case.generate("in.parquet", 20_000);
    let (dict, plain) = (case.path("dict.parquet"), case.path("plain.parquet"));
    write_slugs(&input, &dict, true);
    write_slugs(&input, &plain, false);
    // Without [late], the key is read as a dictionary where the file stores one.
    let no_late = (
        "[late]\nkind = \"parquet\"\npath = 'DIR/late.parquet'\n",
        "",
    );
    let rows = |input: &Path, flags: &[&str], filter: Option<&str>| {
        let job = case.job(input, &[no_late, ("size = \"1m\"", "size = \"1s\"")]);
        if let Some(filter) = filter {
            let text = std::fs::read_to_string(&job).expect("the job");
            std::fs::write(&job, format!("{text}\n[filter]\nevents = \"{filter}\"\n"))
                .expect("the job");
        }
        let out = case.run_job(&job, flags);
        assert!(out.status.success(), "{}", stderr(&out));
        sorted(&read_parquet(&case.path("out.parquet")))
    };
    let want = rows(&plain, &[], None);
    assert!(want.num_rows() > 100, "{} rows", want.num_rows());
    assert_eq!(
        want.column_by_name("article_id").expect("keys").data_type(),
        &arrow::datatypes::DataType::Utf8
    );
    // Batches that do not divide the row groups, one, two and eight shards (eight decode
    // two row groups at once).
    for flags in [
        &["--batch-rows", "1700"][..],
        &["--threads", "2", "--batch-rows", "1000"],
        &["--threads", "8", "--batch-rows", "1300"],
    ] {
        assert_eq!(rows(&dict, flags, None), want, "{flags:?}");
    }
    // A filter on the key reads it as plain strings, and drops a key's rows (on two
    // shards: the filtered batch is what they split).
    let filter = Some("article_id <> 'art-3'");
    let some = rows(&dict, &["--threads", "2"], filter);
    assert!(some.num_rows() > 0 && some.num_rows() < want.num_rows());
    assert_eq!(some, rows(&plain, &["--threads", "1"], filter));

    // Files as partitions, one dictionary-encoded and one not, share one schema.
    std::fs::create_dir(case.path("both")).expect("a directory");
    std::fs::copy(&dict, case.path("both/a.parquet")).expect("a copy");
    std::fs::copy(&plain, case.path("both/b.parquet")).expect("a copy");
    let job = case.job(&case.path("both"), &[no_late]);
    let text = std::fs::read_to_string(&job).expect("the job");
    let text = text.replace("[time]", "partition_by = \"file\"\n\n[time]");
    std::fs::write(&job, text).expect("the job");
    let out = case.run_job(&job, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
}
