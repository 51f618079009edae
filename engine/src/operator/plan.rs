//! What a job resolves to over an input schema, once, before any batch: where the time,
//! key and value columns are, the aggregate specs the kernels run, and the schemas of the
//! three outputs (window rows, late events, anomaly alerts). Shards share one plan.

use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit, TimestampMillisecondType};
use panes_kernels::{AggSpec, Domain, OutType};

use crate::error::{Error, Result};
use crate::expr::Bound;
use crate::job::Job;
use crate::state::key::value_type;

/// An input column that aggregates read: where it is and how it is read.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Input {
    pub index: usize,
    /// `None`: only its validity is read (`count(col)` of a non-numeric column).
    pub domain: Option<Domain>,
}

/// A job resolved against its input schema. See the module docs.
///
/// Shards see only the columns they read: `columns` are their indices in the input, and
/// `key_indices` and the inputs' `index` are positions in that projection.
#[derive(Debug)]
pub(crate) struct Plan {
    pub time_index: usize,
    pub time_name: String,
    /// The input columns that shards read: key columns, then aggregate inputs. An index
    /// past the input's columns is an aggregate's expression, `computed[index - width]`.
    pub columns: Vec<usize>,
    /// Aggregates' expressions over the input.
    computed: Vec<Bound>,
    /// Schema of what shards read ([`Plan::read`]).
    read_schema: SchemaRef,
    pub key_indices: Vec<usize>,
    /// Names and types of the key columns (a dictionary-encoded one: its values' type).
    pub key_fields: Vec<(String, DataType)>,
    pub inputs: Vec<Input>,
    pub specs: Vec<AggSpec>,
    pub out_schema: SchemaRef,
    pub late_schema: SchemaRef,
    pub alert_schema: SchemaRef,
    /// Where errors say the input came from.
    pub origin: String,
    /// `[filter] events`, over the input schema.
    pub events: Option<Bound>,
    /// `[filter] windows`, over `out_schema`.
    pub windows: Option<Bound>,
    /// `[output]`: window rows as they leave the operator.
    pub projection: Option<Arc<Projection>>,
}

/// The columns of window rows that `[output]` picks, in its order.
#[derive(Debug)]
pub(crate) struct Projection {
    picks: Vec<Pick>,
    end: usize,
    pub schema: SchemaRef,
}

/// One column of a [`Projection`].
#[derive(Debug)]
enum Pick {
    /// A column of `out_schema`.
    Column(usize),
    /// `window_end` - 1 ms.
    WindowTime,
    /// An expression over `out_schema`.
    Computed(Bound),
}

impl Projection {
    fn new(columns: &[crate::job::OutputColumn], from: &SchemaRef) -> Result<Projection> {
        let end = from
            .index_of("window_end")
            .map_err(|e| Error::Internal(e.to_string()))?;
        let empty = RecordBatch::new_empty(from.clone());
        let mut picks = Vec::new();
        let mut fields = Vec::new();
        for c in columns {
            let (pick, field) = match (&c.computed, c.from.as_str()) {
                (Some(f), _) => {
                    let bound = f.bind(from, "[output] columns")?;
                    // The type is the expression's over no rows.
                    let ty = bound.eval(&empty)?.data_type().clone();
                    (Pick::Computed(bound), Field::new(&c.name, ty, true))
                }
                (None, "window_time") => {
                    (Pick::WindowTime, Field::new(&c.name, timestamp_ms(), false))
                }
                (None, name) => {
                    let i = from.index_of(name).map_err(|_| Error::Job {
                        file: "<job>".into(),
                        message: format!("[output] names {name:?}, which window rows do not have"),
                    })?;
                    (Pick::Column(i), from.field(i).clone().with_name(&c.name))
                }
            };
            picks.push(pick);
            fields.push(field);
        }
        Ok(Projection {
            picks,
            end,
            schema: Arc::new(Schema::new(fields)),
        })
    }

    /// `batch` (of `out_schema`) with the picked columns.
    pub fn apply(&self, batch: &RecordBatch) -> Result<RecordBatch> {
        let columns = (self.picks.iter())
            .map(|p| match p {
                Pick::Column(i) => Ok(batch.column(*i).clone()),
                Pick::WindowTime => {
                    let end = batch
                        .column(self.end)
                        .as_primitive::<TimestampMillisecondType>();
                    Ok(Arc::new(end.unary::<_, TimestampMillisecondType>(|t| t - 1)) as ArrayRef)
                }
                Pick::Computed(bound) => bound.eval(batch),
            })
            .collect::<Result<Vec<_>>>()?;
        RecordBatch::try_new(self.schema.clone(), columns)
            .map_err(|e| Error::Internal(format!("picking the [output] columns: {e}")))
    }
}

pub(crate) fn timestamp_ms() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, None)
}

impl Plan {
    /// Resolves `job` over `schema`; a missing or mistyped column is an error naming the
    /// source.
    pub fn new(job: &Job, schema: &SchemaRef) -> Result<Plan> {
        let origin = job.source.to_string();
        // A job built in code skips the job file's checks of what these name.
        let n = job.aggregates.len();
        let refers = [
            job.top_k.map(|t| ("[top_k] by", t.by)),
            job.anomaly.as_ref().map(|a| ("[anomaly] value", a.value)),
        ];
        if let Some((what, i)) = refers.into_iter().flatten().find(|&(_, i)| i >= n) {
            return Err(Error::Job {
                file: "<job>".into(),
                message: format!("{what} is aggregate {i}, and the job has {n} aggregates"),
            });
        }
        let missing = |what: &str, name: &str| {
            let have: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
            Error::input(
                &origin,
                format!(
                    "{what} column {name:?} does not exist; the input has {}",
                    have.join(", ")
                ),
            )
        };
        let find = |what: &str, name: &str| schema.index_of(name).map_err(|_| missing(what, name));
        let time_index = find("time", &job.time_column)?;
        let key_indices = job
            .keys
            .iter()
            .map(|k| find("key", k))
            .collect::<Result<Vec<_>>>()?;
        let key_fields: Vec<(String, DataType)> = key_indices
            .iter()
            .map(|&i| {
                let f = schema.field(i);
                (f.name().clone(), value_type(f.data_type()).clone())
            })
            .collect();

        let mut inputs: Vec<Input> = Vec::new();
        let mut specs = Vec::new();
        let mut computed = Vec::new();
        let mut computed_fields = Vec::new();
        let empty = RecordBatch::new_empty(schema.clone());
        for a in &job.aggregates {
            let (index, name, ty) = match (&a.column, &a.expr) {
                (Some(name), _) => {
                    let index = find(&format!("aggregate {:?}: input", a.name), name)?;
                    let ty = schema.field(index).data_type().clone();
                    (index, name.clone(), ty)
                }
                (None, Some(expr)) => {
                    let bound = expr.bind(schema, &format!("aggregate {:?}: expr", a.name))?;
                    let ty = bound.eval(&empty)?.data_type().clone();
                    computed_fields.push(Field::new(format!("expr {}", a.name), ty.clone(), true));
                    computed.push(bound);
                    let index = schema.fields().len() + computed.len() - 1;
                    (index, expr.text().to_string(), ty)
                }
                (None, None) => {
                    specs.push(AggSpec {
                        func: a.func,
                        column: 0,
                        domain: Domain::I64,
                    });
                    continue;
                }
            };
            let ty = &ty;
            let domain = match ty {
                t if t.is_integer() => Some(Domain::I64),
                t if t.is_floating()
                    || matches!(t, DataType::Decimal128(..) | DataType::Decimal256(..)) =>
                {
                    Some(Domain::F64)
                }
                _ if a.func == panes_kernels::AggFn::Count => None,
                t => {
                    return Err(Error::input(
                        &origin,
                        format!(
                            "aggregate {:?}: {} needs a numeric column, but {name:?} has type {t}",
                            a.name, a.func
                        ),
                    ));
                }
            };
            let column = match inputs.iter().position(|i| i.index == index) {
                Some(c) => c,
                None => {
                    inputs.push(Input { index, domain });
                    inputs.len() - 1
                }
            };
            specs.push(AggSpec {
                func: a.func,
                column,
                domain: domain.unwrap_or(Domain::I64),
            });
        }
        let agg_types: Vec<OutType> = specs.iter().map(AggSpec::output).collect();
        // The shards' projection of the input.
        let mut columns: Vec<usize> = key_indices.clone();
        for input in &mut inputs {
            input.index = match columns.iter().position(|&c| c == input.index) {
                Some(at) => at,
                None => {
                    columns.push(input.index);
                    columns.len() - 1
                }
            };
        }
        let key_indices = (0..key_indices.len()).collect();
        let read_fields: Vec<Field> = (columns.iter())
            .map(|&c| match c.checked_sub(schema.fields().len()) {
                None => schema.field(c).clone(),
                Some(j) => computed_fields[j].clone(),
            })
            .collect();
        let read_schema = Arc::new(Schema::new(read_fields));

        let mut fields: Vec<Field> = key_fields
            .iter()
            .map(|(n, t)| Field::new(n, t.clone(), true))
            .collect();
        fields.push(Field::new("window_start", timestamp_ms(), false));
        fields.push(Field::new("window_end", timestamp_ms(), false));
        for (a, t) in job.aggregates.iter().zip(&agg_types) {
            let (ty, nullable) = match t {
                OutType::Count => (DataType::Int64, false),
                OutType::I64 => (DataType::Int64, true),
                OutType::F64 => (DataType::Float64, true),
            };
            fields.push(Field::new(&a.name, ty, nullable));
        }
        if job.top_k.is_some() {
            fields.push(Field::new("rank", DataType::Int64, false));
        }
        if job.allowed_lateness > 0 {
            fields.push(Field::new("revision", DataType::Int64, false));
        }
        let mut alert_fields: Vec<Field> = fields[..key_fields.len() + 2].to_vec();
        for name in ["value", "baseline_mean", "baseline_std", "z_score"] {
            alert_fields.push(Field::new(name, DataType::Float64, false));
        }
        let mut late_fields: Vec<Field> =
            schema.fields().iter().map(|f| f.as_ref().clone()).collect();
        late_fields.push(Field::new("watermark", timestamp_ms(), true));
        late_fields.push(Field::new("reason", DataType::Utf8, false));

        let out_schema = Arc::new(Schema::new(fields));
        let bind = |f: &Option<crate::expr::Filter>, what: &str, over: &Schema| {
            f.as_ref().map(|f| f.bind(over, what)).transpose()
        };
        let projection = match &job.output {
            Some(columns) => Some(Arc::new(Projection::new(columns, &out_schema)?)),
            None => None,
        };
        Ok(Plan {
            projection,
            events: bind(&job.filter_events, "[filter] events", schema)?,
            windows: bind(&job.filter_windows, "[filter] windows", &out_schema)?,
            time_index,
            time_name: job.time_column.clone(),
            columns,
            key_indices,
            key_fields,
            inputs,
            specs,
            out_schema,
            late_schema: Arc::new(Schema::new(late_fields)),
            alert_schema: Arc::new(Schema::new(alert_fields)),
            origin,
            computed,
            read_schema,
        })
    }

    /// The columns of `batch` that shards read: key columns and aggregate inputs, the
    /// aggregates' expressions evaluated over it.
    pub fn read(&self, batch: &RecordBatch) -> Result<RecordBatch> {
        if self.computed.is_empty() {
            return (batch.project(&self.columns))
                .map_err(|e| Error::arrow("projecting a batch", e));
        }
        let width = batch.num_columns();
        let columns = (self.columns.iter())
            .map(|&c| match c.checked_sub(width) {
                None => Ok(batch.column(c).clone()),
                Some(j) => self.computed[j].eval(batch),
            })
            .collect::<Result<Vec<_>>>()?;
        RecordBatch::try_new(self.read_schema.clone(), columns)
            .map_err(|e| Error::arrow("evaluating aggregates' expressions", e))
    }
}
