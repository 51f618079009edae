//! Files as partitions (`partition_by = "file"`): one source per file, read side by side,
//! a batch of each in turn, each file a source partition with its own watermark.

use arrow::datatypes::SchemaRef;

use super::{Position, Source, SourceBatch};
use crate::error::{Error, Result};

pub(super) struct PerFile {
    /// One source per file, each over that file alone, and its name.
    files: Vec<(Box<dyn Source>, String)>,
    /// Where each file's source is.
    positions: Vec<Position>,
    /// The files not yet exhausted.
    open: Vec<bool>,
    /// The file whose turn it is.
    turn: usize,
}

impl PerFile {
    /// The files' sources, which must all have the first one's schema.
    pub(super) fn new(files: Vec<(Box<dyn Source>, String)>) -> Result<PerFile> {
        let schema = files[0].0.schema();
        if let Some((_, name)) = files.iter().find(|(s, _)| s.schema() != schema) {
            return Err(Error::input(
                name,
                format!(
                    "with partition_by = \"file\" every file needs the schema of {}; declare \
                     the column types with [source] schema where they are inferred",
                    files[0].1
                ),
            ));
        }
        Ok(PerFile {
            positions: vec![Position::Start; files.len()],
            open: vec![true; files.len()],
            files,
            turn: 0,
        })
    }
}

impl Source for PerFile {
    fn schema(&self) -> SchemaRef {
        self.files[0].0.schema()
    }

    fn partitions(&self) -> usize {
        self.files.len()
    }

    fn total_rows(&self) -> Option<u64> {
        self.files.iter().map(|(s, _)| s.total_rows()).sum()
    }

    fn next_batch(&mut self) -> Result<Option<SourceBatch>> {
        for _ in 0..self.files.len() {
            let p = self.turn;
            self.turn = (self.turn + 1) % self.files.len();
            if !self.open[p] {
                continue;
            }
            match self.files[p].0.next_batch()? {
                Some(mut b) => {
                    self.positions[p] = b.after;
                    b.partition = p;
                    b.after = Position::PerFile {
                        files: self.positions.clone(),
                    };
                    return Ok(Some(b));
                }
                None => self.open[p] = false,
            }
        }
        Ok(None)
    }

    fn seek(&mut self, to: &Position) -> Result<()> {
        match to {
            Position::Start => Ok(()),
            Position::PerFile { files } if files.len() == self.files.len() => {
                for ((source, _), at) in self.files.iter_mut().zip(files) {
                    source.seek(at)?;
                }
                self.positions = files.clone();
                Ok(())
            }
            Position::PerFile { files } => Err(Error::input(
                &self.files[0].1,
                format!(
                    "the checkpoint resumes {} files, one partition each, but the source now \
                     has {}: the input changed; run with --fresh",
                    files.len(),
                    self.files.len()
                ),
            )),
            other => Err(Error::input(
                &self.files[0].1,
                format!(
                    "the checkpoint resumes at {other}, not at one position per file: \
                     partition_by changed; run with --fresh"
                ),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{OnMalformed, TextFormat, TextSource};
    use arrow::array::{Array, Int64Array};

    /// The rows of each file read from here on, in order.
    fn read_rest(source: &mut dyn Source) -> (Vec<Vec<i64>>, Vec<Position>) {
        let (mut rows, mut after) = (vec![Vec::new(); source.partitions()], Vec::new());
        while let Some(b) = source.next_batch().expect("a batch") {
            let ts = b.batch.column(0);
            let ts = ts.as_any().downcast_ref::<Int64Array>().expect("Int64 ts");
            rows[b.partition].extend(ts.values().iter());
            after.push(b.after);
        }
        (rows, after)
    }

    /// Files of 10, 4 and 7 rows, read 3 rows a batch, a batch of each in turn; resumed at
    /// any position they gave, they read exactly the rest of each file.
    #[test]
    fn files_resume_each_at_its_own_position() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        for (f, n) in [10, 4, 7].into_iter().enumerate() {
            let text: String = (0..n).map(|i| format!("{}\n", 100 * f + i)).collect();
            std::fs::write(dir.path().join(format!("{f}.csv")), format!("ts\n{text}"))
                .expect("writing a file");
        }
        let spec = crate::job::Source::Text(TextSource {
            format: TextFormat::Csv,
            path: dir.path().display().to_string(),
            schema: Vec::new(),
            on_malformed: OnMalformed::Fail,
            per_file: true,
        });
        let open = || super::super::open_source(&spec, "ts", None, &[], 3, 1).expect("the source");
        let (rows, after) = read_rest(open().as_mut());
        assert_eq!(rows.iter().map(Vec::len).collect::<Vec<_>>(), [10, 4, 7]);
        assert_eq!(rows[2], (200..207).collect::<Vec<_>>());
        for at in &after {
            let mut resumed = open();
            resumed.seek(at).expect("seek");
            let (rest, _) = read_rest(resumed.as_mut());
            let Position::PerFile { files } = at else {
                panic!("a position per file: {at:?}")
            };
            for (f, (all, rest)) in rows.iter().zip(&rest).enumerate() {
                let read = match &files[f] {
                    Position::File { rows, .. } => *rows as usize,
                    _ => 0,
                };
                assert_eq!(rest[..], all[read..], "file {f} after {at}");
            }
        }
    }
}
