//! Pane state in the format of state batches that the CPU backend writes and reads (see
//! `cpu::codec`), so that a checkpoint taken on one backend restores on the other. The
//! GPU's key rows are converted word by word: every op of the GPU's row layout has its
//! state column in the CPU's layout.

use super::*;
use crate::agg::Distinct;
use crate::cpu::{Gather, StateColumn as Col, StateOp, layout, read_state_batch, state_batch};
use crate::distinct::{REGISTERS, SPARSE_MAX, estimate_registers};

/// How many hashes the distinct-count sketch in an op's words (from its count on) holds,
/// or `None` when it holds registers.
fn sketch_hashes(op: &[u32]) -> Result<Option<usize>> {
    match op[2] {
        DISTINCT_DENSE => Ok(None),
        n if n as usize <= SPARSE_MAX => Ok(Some(n as usize)),
        n => Err(Error::BadState(format!(
            "a distinct-count sketch on the GPU says it holds {n} hashes"
        ))),
    }
}

/// The registers of a dense sketch's words, 4 a word.
fn sketch_registers(op: &[u32]) -> [u8; REGISTERS] {
    let mut registers = [0; REGISTERS];
    for (r, w) in registers.chunks_exact_mut(4).zip(&op[4..4 + DISTINCT_BODY]) {
        r.copy_from_slice(&w.to_le_bytes());
    }
    registers
}

/// The estimate of the sketch in an op's words, as the CPU computes it.
pub(super) fn sketch_estimate(op: &[u32]) -> Result<i64> {
    Ok(match sketch_hashes(op)? {
        Some(n) => n as i64,
        None => estimate_registers(&sketch_registers(op)),
    })
}

/// The sketch in an op's words in [`Distinct::to_bytes`]' form: its hashes, sorted, or
/// its registers.
fn sketch_bytes(op: &[u32]) -> Result<Vec<u8>> {
    let Some(n) = sketch_hashes(op)? else {
        return Ok([&[1], &sketch_registers(op)[..]].concat());
    };
    let mut hashes: Vec<u64> = (op[4..].chunks_exact(2).take(n))
        .map(|w| w[0] as u64 | (w[1] as u64) << 32)
        .collect();
    hashes.sort_unstable();
    let mut bytes = vec![0];
    hashes.iter().for_each(|h| bytes.extend(h.to_le_bytes()));
    Ok(bytes)
}

/// Writes the sketch `bytes` ([`Distinct::to_bytes`]) into the words of a distinct-count
/// op after its count, as `shaders/distinct.wgsl` keeps it.
fn set_sketch(bytes: &[u8], op: &mut [u32]) -> Result<()> {
    if Distinct::from_bytes(bytes).is_none() {
        return Err(Error::BadState(
            "a distinct-count sketch is malformed".into(),
        ));
    }
    op[2..].fill(0);
    let body = &mut op[4..4 + DISTINCT_BODY];
    let words = bytes[1..]
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]));
    if bytes[0] == 1 {
        body.iter_mut().zip(words).for_each(|(b, w)| *b = w);
        op[2] = DISTINCT_DENSE;
        return Ok(());
    }
    let hashes: Vec<u32> = words.collect();
    body[..hashes.len()].copy_from_slice(&hashes);
    let n = hashes.len() / 2;
    // The index: each hash's position + 1 in the first free slot from its own.
    let index = 2 * SPARSE_MAX;
    for k in 0..n {
        let mut s = hashes[2 * k] % DISTINCT_SLOTS;
        let slot = |s: u32| (body[index + s as usize / 2] >> (s % 2 * 16)) & 0xffff;
        while slot(s) != 0 {
            s = (s + 1) % DISTINCT_SLOTS;
        }
        body[index + s as usize / 2] |= (k as u32 + 1) << (s % 2 * 16);
    }
    op[2] = n as u32;
    Ok(())
}

/// Op kinds that count the non-null values of their column.
const NON_NULL: [u32; 10] = [
    OP_COUNT, OP_SUM_F, OP_SUM_I, OP_MIN_F, OP_MAX_F, OP_MIN_I, OP_MAX_I, OP_MOMENTS, OP_FIRST,
    OP_LAST,
];

/// The op kind that holds a typed state column of the CPU.
fn kind_of(op: StateOp, domain: Domain) -> u32 {
    let int = domain == Domain::I64;
    match op {
        StateOp::Sum if int => OP_SUM_I,
        StateOp::Sum => OP_SUM_F,
        StateOp::Min if int => OP_MIN_I,
        StateOp::Min => OP_MIN_F,
        StateOp::Max if int => OP_MAX_I,
        StateOp::Max => OP_MAX_F,
        StateOp::First => OP_FIRST,
        StateOp::Last => OP_LAST,
    }
}

impl GpuBackend {
    /// Word offsets of the ops of one of `kinds` on input column `column`.
    fn ops_on(&self, kinds: &[u32], column: usize) -> Vec<usize> {
        let layout = &self.layout;
        (layout.ops.iter())
            .filter(|o| o[0] != OP_ROWS && kinds.contains(&o[0]))
            .filter(|o| layout.inputs[o[1] as usize].column == column)
            .map(|o| o[2] as usize)
            .collect()
    }

    /// Word offsets of the ops of one of `kinds` on `column`: at least one.
    fn ops_of(&self, kinds: &[u32], column: usize) -> Result<Vec<usize>> {
        let ops = self.ops_on(kinds, column);
        if ops.is_empty() {
            return Err(Error::BadState(format!(
                "no op of kind {kinds:?} on column {column} in the row layout"
            )));
        }
        Ok(ops)
    }

    fn op_on(&self, kind: u32, column: usize) -> Result<usize> {
        Ok(self.ops_of(&[kind], column)?[0])
    }

    /// The state batch of key rows `rows` (`stride` words each) of keys `keys`.
    pub(super) fn to_state_batch(&self, keys: Vec<u32>, rows: &[u32]) -> Result<RecordBatch> {
        let stride = self.layout.stride as usize;
        let n = keys.len();
        // Word pair `w` of the op at `at`, per row; `empty` where the op is missing.
        let words = |at: Option<usize>, w: usize, empty: u64| -> Vec<u64> {
            (0..n)
                .map(|r| match at {
                    Some(at) => {
                        let i = r * stride + at + w;
                        rows[i] as u64 | (rows[i + 1] as u64) << 32
                    }
                    None => empty,
                })
                .collect()
        };
        let floats = |v: Vec<u64>| v.into_iter().map(f64::from_bits).collect::<Vec<_>>();
        let ints = |v: Vec<u64>| v.into_iter().map(|x| x as i64).collect::<Vec<_>>();
        let first = |kind, c| self.ops_on(&[kind], c).first().copied();
        let columns = layout(&self.aggs)
            .into_iter()
            .map(|col| {
                Ok(match col {
                    Col::Rows => Gather::Count(words(Some(0), 0, 0)),
                    Col::RowStats(c) => Gather::Rows(
                        words(Some(0), 0, 0),
                        [
                            floats(words(first(OP_SUM_F, c), 2, 0f64.to_bits())),
                            floats(words(first(OP_MIN_F, c), 2, f64::NAN.to_bits())),
                            floats(words(first(OP_MAX_F, c), 2, f64::NEG_INFINITY.to_bits())),
                        ],
                    ),
                    Col::NonNull(c) => {
                        Gather::Count(words(self.ops_on(&NON_NULL, c).first().copied(), 0, 0))
                    }
                    Col::Typed(op, c, domain) => {
                        let at = Some(self.op_on(kind_of(op, domain), c)?);
                        let (v, ts) = match op {
                            StateOp::First | StateOp::Last => {
                                (words(at, 4, 0), Some(ints(words(at, 2, 0))))
                            }
                            _ => (words(at, 2, 0), None),
                        };
                        match domain {
                            Domain::I64 => Gather::Int(ints(v), ts),
                            Domain::F64 => Gather::Float(floats(v), ts),
                        }
                    }
                    Col::Moments(c) => {
                        let at = Some(self.op_on(OP_MOMENTS, c)?);
                        Gather::Triple([2, 4, 6].map(|w| floats(words(at, w, 0))))
                    }
                    Col::Distinct(c) => {
                        let at = self.ops_of(&DISTINCT, c)?[0];
                        let op = |r: usize| &rows[r * stride + at..(r + 1) * stride];
                        Gather::Distinct(
                            (0..n).map(|r| sketch_bytes(op(r))).collect::<Result<_>>()?,
                        )
                    }
                })
            })
            .collect::<Result<Vec<_>>>()?;
        state_batch(keys, columns)
    }

    /// The keys and key rows of a state batch.
    pub(super) fn rows_from_state_batch(
        &self,
        batch: &RecordBatch,
    ) -> Result<(Vec<u32>, Vec<u32>)> {
        let (keys, columns) = read_state_batch(&layout(&self.aggs), batch)?;
        let stride = self.layout.stride as usize;
        let mut rows = vec![0u32; keys.len() * stride];
        let mut set = |at: usize, w: usize, values: &mut dyn Iterator<Item = u64>| {
            for (r, v) in values.enumerate() {
                let i = r * stride + at + w;
                rows[i] = v as u32;
                rows[i + 1] = (v >> 32) as u32;
            }
        };
        // Non-null counts last: where the CPU keeps none for a column, first/last and
        // moments count their own.
        let mut non_null = Vec::new();
        let mut distinct = Vec::new();
        for (col, g) in layout(&self.aggs).into_iter().zip(&columns) {
            match (col, g) {
                (Col::Rows, Gather::Count(n)) => set(0, 0, &mut n.iter().copied()),
                (Col::RowStats(c), Gather::Rows(n, s)) => {
                    set(0, 0, &mut n.iter().copied());
                    for (kind, v) in [OP_SUM_F, OP_MIN_F, OP_MAX_F].into_iter().zip(s) {
                        for at in self.ops_on(&[kind], c) {
                            set(at, 2, &mut v.iter().map(|x| x.to_bits()));
                        }
                    }
                }
                (Col::NonNull(c), Gather::Count(n)) => non_null.push((c, n)),
                (Col::Typed(op, c, domain), Gather::Int(..) | Gather::Float(..)) => {
                    let (v, ts): (Vec<u64>, &Option<Vec<i64>>) = match g {
                        Gather::Int(v, ts) => (v.iter().map(|&x| x as u64).collect(), ts),
                        Gather::Float(v, ts) => (v.iter().map(|x| x.to_bits()).collect(), ts),
                        _ => unreachable!("matched above"),
                    };
                    // Aggregates do not share ops on the GPU: `sum` and `avg` of a column
                    // each have one.
                    for at in self.ops_of(&[kind_of(op, domain)], c)? {
                        match ts {
                            Some(ts) => {
                                set(at, 2, &mut ts.iter().map(|&t| t as u64));
                                set(at, 4, &mut v.iter().copied());
                                let seen = ts.iter().map(|&t| (t != op.ts_identity()) as u64);
                                set(at, 0, &mut seen.into_iter());
                            }
                            None => set(at, 2, &mut v.iter().copied()),
                        }
                    }
                }
                (Col::Moments(c), Gather::Triple(t)) => {
                    for at in self.ops_of(&[OP_MOMENTS], c)? {
                        set(at, 0, &mut t[0].iter().map(|&n| n as u64));
                        for (w, v) in [2, 4, 6].into_iter().zip(t) {
                            set(at, w, &mut v.iter().map(|x| x.to_bits()));
                        }
                    }
                }
                (Col::Distinct(c), Gather::Distinct(s)) => distinct.push((c, s)),
                (col, _) => {
                    return Err(Error::BadState(format!(
                        "state column {col:?} cannot be restored on the GPU"
                    )));
                }
            }
        }
        for (c, n) in non_null {
            for at in self.ops_on(&NON_NULL, c) {
                set(at, 0, &mut n.iter().copied());
            }
        }
        let words = op_words(OP_DISTINCT_I) as usize;
        for (c, sketches) in distinct {
            for at in self.ops_of(&DISTINCT, c)? {
                for (r, bytes) in sketches.iter().enumerate() {
                    let from = r * stride + at;
                    set_sketch(bytes, &mut rows[from..from + words])?;
                }
            }
        }
        Ok((keys, rows))
    }
}
