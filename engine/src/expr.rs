//! SQL expressions over a batch's columns, evaluated with Arrow's compute kernels a batch
//! at a time (never row by row): filters (boolean) and computed output columns.
//!
//! A job keeps a filter as its SQL text (`[filter] events` on input events, `[filter]
//! windows` on window rows, as SQL's `WHERE` and `HAVING`); [`Filter::parse`] checks the
//! text when the job is read, [`Filter::bind`] resolves its columns against a schema once,
//! and [`Bound::keep`] selects the rows of a batch for which it is true (false and null drop
//! the row, as in SQL). `[output]` columns computed over window rows (`SUM(v) / COUNT(*)`
//! in SQL) use the same type, through [`Bound::eval`].
//!
//! The subset: column names, numbers, strings, `TRUE`/`FALSE`/`NULL`, `+ - * / %`,
//! comparisons, `AND`/`OR`/`NOT`, `IS [NOT] NULL`, `[NOT] LIKE`, `[NOT] BETWEEN`,
//! `[NOT] IN (…)`, `CASE`, and `CAST(x AS type)`. Mixed integer and float operands compare
//! and compute as floats.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanArray, Datum, Float64Array, Int64Array, RecordBatch, Scalar,
    StringArray, new_null_array,
};
use arrow::compute::kernels::{boolean, cmp, comparison, numeric, zip};
use arrow::datatypes::{DataType, Schema};
use sqlparser::ast::{self, BinaryOperator, Expr as Sql, UnaryOperator, Value};
use sqlparser::dialect::GenericDialect;
use sqlparser::parser::Parser;

use crate::error::{Error, Result};

/// A parsed filter: SQL text that is a boolean expression.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Filter {
    text: String,
    expr: Sql,
}

impl Filter {
    /// Parses `text` as one SQL expression; the error says where it stops making sense.
    pub fn parse(text: &str) -> Result<Filter, String> {
        let dialect = GenericDialect {};
        let expr = Parser::new(&dialect)
            .try_with_sql(text)
            .and_then(|mut p| {
                let e = p.parse_expr()?;
                p.expect_token(&sqlparser::tokenizer::Token::EOF)?;
                Ok(e)
            })
            .map_err(|e| format!("{text:?} is not an SQL expression: {e}"))?;
        Ok(Filter::from_sql(expr))
    }

    /// A filter of an expression parsed elsewhere (the SQL front end).
    pub(crate) fn from_sql(expr: Sql) -> Filter {
        Filter {
            text: expr.to_string(),
            expr,
        }
    }

    /// Whether `expr` is in the subset a filter evaluates, whatever its columns are.
    pub(crate) fn check(expr: &Sql) -> Result<(), String> {
        Node::of(expr, &|_| Ok(0)).map(|_| ()).map_err(|Fail(m)| m)
    }

    /// The columns the expression reads, each once, in the order it names them.
    pub fn columns(&self) -> Vec<String> {
        let names = std::cell::RefCell::new(Vec::<String>::new());
        let _ = Node::of(&self.expr, &|name| {
            let mut names = names.borrow_mut();
            if !names.iter().any(|n| n == name) {
                names.push(name.to_string());
            }
            Ok(0)
        });
        names.into_inner()
    }

    /// The expression as SQL text.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Resolves the filter's columns in `schema`; `what` names the filter in errors.
    pub fn bind(&self, schema: &Schema, what: &str) -> Result<Bound> {
        let expr =
            Node::of(&self.expr, &|name| column(schema, name)).map_err(|Fail(message)| {
                Error::Job {
                    file: "<job>".into(),
                    message: format!("{what} = {:?}: {message}", self.text),
                }
            })?;
        Ok(Bound {
            expr,
            what: format!("{what} = {:?}", self.text),
        })
    }
}

/// A filter resolved against one schema.
#[derive(Debug)]
pub struct Bound {
    expr: Node,
    what: String,
}

impl Bound {
    /// The expression's value for every row of `batch`.
    pub fn eval(&self, batch: &RecordBatch) -> Result<ArrayRef> {
        let value = (self.expr.eval(batch)).map_err(|Fail(e)| Error::input(&self.what, e))?;
        Ok(value.into_array(batch.num_rows()))
    }

    /// The rows of `batch` for which the filter is true.
    pub fn keep(&self, batch: &RecordBatch) -> Result<BooleanArray> {
        let fail = |e: String| Error::input(&self.what, e);
        let array = self.eval(batch)?;
        let mask = array
            .as_any()
            .downcast_ref::<BooleanArray>()
            .ok_or_else(|| fail(format!("is of type {}, not a boolean", array.data_type())))?;
        Ok(mask.clone())
    }

    /// `batch` without the rows for which the filter is not true.
    pub fn apply(&self, batch: &RecordBatch) -> Result<RecordBatch> {
        let mask = self.keep(batch)?;
        arrow::compute::filter_record_batch(batch, &mask)
            .map_err(|e| Error::arrow(format!("filtering by {}", self.what), e))
    }
}

/// Why an expression does not bind or evaluate.
#[derive(Debug)]
struct Fail(String);

fn fail<T>(message: String) -> Result<T, Fail> {
    Err(Fail(message))
}

impl From<String> for Fail {
    fn from(s: String) -> Fail {
        Fail(s)
    }
}

impl From<&str> for Fail {
    fn from(s: &str) -> Fail {
        Fail(s.to_string())
    }
}

impl From<arrow::error::ArrowError> for Fail {
    fn from(e: arrow::error::ArrowError) -> Fail {
        Fail(e.to_string())
    }
}

/// An expression with its columns resolved to indices.
#[derive(Debug)]
enum Node {
    Column(usize),
    Literal(ArrayRef),
    Binary(Box<Node>, BinaryOperator, Box<Node>),
    Not(Box<Node>),
    Neg(Box<Node>),
    IsNull(Box<Node>, bool),
    Like(Box<Node>, bool, Box<Node>),
    Case(Vec<(Node, Node)>, Option<Box<Node>>),
    Cast(Box<Node>, DataType),
}

/// A value of a batch: a column, or one value for every row.
enum Val {
    Array(ArrayRef),
    Scalar(ArrayRef),
}

impl Val {
    fn array(&self) -> &ArrayRef {
        match self {
            Val::Array(a) | Val::Scalar(a) => a,
        }
    }

    fn datum(&self) -> Box<dyn Datum + '_> {
        match self {
            Val::Array(a) => Box::new(a),
            Val::Scalar(a) => Box::new(Scalar::new(a)),
        }
    }

    fn map(self, f: impl FnOnce(&ArrayRef) -> Result<ArrayRef, Fail>) -> Result<Val, Fail> {
        Ok(match self {
            Val::Array(a) => Val::Array(f(&a)?),
            Val::Scalar(a) => Val::Scalar(f(&a)?),
        })
    }

    fn into_array(self, rows: usize) -> ArrayRef {
        match self {
            Val::Array(a) => a,
            Val::Scalar(a) if a.is_null(0) => new_null_array(a.data_type(), rows),
            Val::Scalar(a) => {
                let indices = arrow::array::UInt32Array::from(vec![0u32; rows]);
                arrow::compute::take(&a, &indices, None).unwrap_or(a)
            }
        }
    }
}

fn scalar(a: ArrayRef) -> Node {
    Node::Literal(a)
}

fn parse_type(t: &ast::DataType) -> Result<DataType, Fail> {
    use ast::DataType as T;
    Ok(match t {
        T::BigInt(_) | T::Int(_) | T::Integer(_) | T::SmallInt(_) | T::TinyInt(_) => {
            DataType::Int64
        }
        T::Double(_) | T::DoublePrecision | T::Float(_) | T::Real | T::Decimal(_) => {
            DataType::Float64
        }
        T::Varchar(_) | T::String(_) | T::Text | T::Char(_) => DataType::Utf8,
        T::Boolean | T::Bool => DataType::Boolean,
        other => return fail(format!("CAST to {other} is not supported")),
    })
}

impl Node {
    fn of(e: &Sql, columns: &dyn Fn(&str) -> Result<usize, Fail>) -> Result<Node, Fail> {
        let of = |e: &Sql| Node::of(e, columns).map(Box::new);
        Ok(match e {
            Sql::Identifier(id) => Node::Column(columns(&id.value)?),
            Sql::CompoundIdentifier(parts) => match parts.last() {
                Some(id) => Node::Column(columns(&id.value)?),
                None => return Err("an empty name".into()),
            },
            Sql::Nested(e) => Node::of(e, columns)?,
            Sql::Value(v) => literal(&v.value)?,
            Sql::BinaryOp { left, op, right } => match op {
                BinaryOperator::Plus
                | BinaryOperator::Minus
                | BinaryOperator::Multiply
                | BinaryOperator::Divide
                | BinaryOperator::Modulo
                | BinaryOperator::Eq
                | BinaryOperator::NotEq
                | BinaryOperator::Lt
                | BinaryOperator::LtEq
                | BinaryOperator::Gt
                | BinaryOperator::GtEq
                | BinaryOperator::And
                | BinaryOperator::Or => Node::Binary(of(left)?, op.clone(), of(right)?),
                other => return fail(format!("the operator {other} is not supported")),
            },
            Sql::UnaryOp { op, expr } => match op {
                UnaryOperator::Not => Node::Not(of(expr)?),
                UnaryOperator::Minus => Node::Neg(of(expr)?),
                UnaryOperator::Plus => Node::of(expr, columns)?,
                other => return fail(format!("the operator {other} is not supported")),
            },
            Sql::IsNull(e) => Node::IsNull(of(e)?, true),
            Sql::IsNotNull(e) => Node::IsNull(of(e)?, false),
            Sql::IsTrue(e) => Node::Binary(of(e)?, BinaryOperator::Eq, Box::new(boolean(true))),
            Sql::IsFalse(e) => Node::Binary(of(e)?, BinaryOperator::Eq, Box::new(boolean(false))),
            Sql::Like {
                negated,
                expr,
                pattern,
                escape_char: None,
                any: false,
            } => Node::Like(of(expr)?, *negated, of(pattern)?),
            Sql::Between {
                expr,
                negated,
                low,
                high,
            } => {
                let inside = Node::Binary(
                    Box::new(Node::Binary(of(expr)?, BinaryOperator::GtEq, of(low)?)),
                    BinaryOperator::And,
                    Box::new(Node::Binary(of(expr)?, BinaryOperator::LtEq, of(high)?)),
                );
                negate(inside, *negated)
            }
            Sql::In {
                expr,
                target: ast::InTarget::List(list),
                negated,
                global: false,
            } => {
                let mut any: Option<Node> = None;
                for item in list {
                    let eq = Node::Binary(of(expr)?, BinaryOperator::Eq, of(item)?);
                    any = Some(match any {
                        Some(a) => Node::Binary(Box::new(a), BinaryOperator::Or, Box::new(eq)),
                        None => eq,
                    });
                }
                negate(any.ok_or("IN () with no values")?, *negated)
            }
            Sql::Case {
                operand,
                conditions,
                else_result,
                ..
            } => {
                let mut arms = Vec::new();
                for w in conditions {
                    let when = match operand {
                        Some(op) => Node::Binary(of(op)?, BinaryOperator::Eq, of(&w.condition)?),
                        None => Node::of(&w.condition, columns)?,
                    };
                    arms.push((when, Node::of(&w.result, columns)?));
                }
                let otherwise = else_result.as_deref().map(of).transpose()?;
                Node::Case(arms, otherwise)
            }
            Sql::Cast {
                expr, data_type, ..
            } => Node::Cast(of(expr)?, parse_type(data_type)?),
            other => return fail(format!("{other} is not supported in a filter")),
        })
    }

    fn eval(&self, batch: &RecordBatch) -> Result<Val, Fail> {
        Ok(match self {
            Node::Column(i) => Val::Array(batch.column(*i).clone()),
            Node::Literal(a) => Val::Scalar(a.clone()),
            Node::Binary(l, op, r) => {
                let (l, r) = coerce(l.eval(batch)?, r.eval(batch)?)?;
                binary(&l, op, &r)?
            }
            Node::Not(e) => e
                .eval(batch)?
                .map(|a| Ok(Arc::new(boolean::not(bools(a)?)?)))?,
            Node::Neg(e) => e.eval(batch)?.map(|a| Ok(numeric::neg(a)?))?,
            Node::IsNull(e, null) => e.eval(batch)?.map(|a| {
                Ok(Arc::new(match null {
                    true => boolean::is_null(a)?,
                    false => boolean::is_not_null(a)?,
                }))
            })?,
            Node::Like(e, negated, pattern) => {
                let (e, p) = (text(e.eval(batch)?)?, text(pattern.eval(batch)?)?);
                let out = match negated {
                    false => comparison::like(&*e.datum(), &*p.datum())?,
                    true => comparison::nlike(&*e.datum(), &*p.datum())?,
                };
                both_scalar(&e, &p, Arc::new(out))
            }
            Node::Case(arms, otherwise) => {
                let n = batch.num_rows();
                let mut result = match otherwise {
                    Some(o) => o.eval(batch)?,
                    None => Val::Scalar(new_null_array(&DataType::Null, 1)),
                };
                for (when, then) in arms.iter().rev() {
                    let mask = when.eval(batch)?.into_array(n);
                    let then = then.eval(batch)?;
                    let (then, rest) = coerce(then, result)?;
                    let out = zip::zip(bools(&mask)?, &*then.datum(), &*rest.datum())?;
                    result = Val::Array(out);
                }
                result
            }
            Node::Cast(e, to) => e.eval(batch)?.map(|a| Ok(arrow::compute::cast(a, to)?))?,
        })
    }
}

fn negate(node: Node, negated: bool) -> Node {
    match negated {
        true => Node::Not(Box::new(node)),
        false => node,
    }
}

fn boolean(b: bool) -> Node {
    scalar(Arc::new(BooleanArray::from(vec![b])))
}

fn column(schema: &Schema, name: &str) -> Result<usize, Fail> {
    schema
        .index_of(name)
        .or_else(|_| {
            // Unquoted SQL names match case-insensitively where that is unambiguous.
            let found: Vec<usize> = (0..schema.fields().len())
                .filter(|&i| schema.field(i).name().eq_ignore_ascii_case(name))
                .collect();
            match found[..] {
                [i] => Ok(i),
                _ => Err(()),
            }
        })
        .map_err(|_| {
            let have: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
            Fail(format!(
                "column {name:?} does not exist; there are {}",
                have.join(", ")
            ))
        })
}

fn literal(v: &Value) -> Result<Node, Fail> {
    Ok(scalar(match v {
        Value::Number(n, _) => match n.parse::<i64>() {
            Ok(i) => Arc::new(Int64Array::from(vec![i])),
            Err(_) => Arc::new(Float64Array::from(vec![
                n.parse::<f64>()
                    .map_err(|_| format!("{n} is not a number"))?,
            ])),
        },
        Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => {
            Arc::new(StringArray::from(vec![s.as_str()]))
        }
        Value::Boolean(b) => Arc::new(BooleanArray::from(vec![*b])),
        Value::Null => new_null_array(&DataType::Null, 1),
        other => return fail(format!("the value {other} is not supported")),
    }))
}

fn bools(a: &ArrayRef) -> Result<&BooleanArray, Fail> {
    a.as_any()
        .downcast_ref::<BooleanArray>()
        .ok_or_else(|| Fail(format!("a {} where a boolean was expected", a.data_type())))
}

/// Strings of any Arrow string type as `Utf8`.
fn text(v: Val) -> Result<Val, Fail> {
    match v.array().data_type() {
        DataType::Utf8 => Ok(v),
        DataType::LargeUtf8 | DataType::Utf8View | DataType::Null => {
            v.map(|a| Ok(arrow::compute::cast(a, &DataType::Utf8)?))
        }
        t => fail(format!("LIKE needs strings, not {t}")),
    }
}

/// The common type of two operands: numbers of mixed types as floats (integers alone as
/// 64-bit), strings as `Utf8`, a NULL as the other side's type.
fn coerce(l: Val, r: Val) -> Result<(Val, Val), Fail> {
    let (lt, rt) = (l.array().data_type().clone(), r.array().data_type().clone());
    if lt == rt {
        return Ok((l, r));
    }
    let stringy =
        |t: &DataType| matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View);
    let to = match (&lt, &rt) {
        (DataType::Null, t) | (t, DataType::Null) => t.clone(),
        (a, b) if a.is_integer() && b.is_integer() => DataType::Int64,
        (a, b) if a.is_numeric() && b.is_numeric() => DataType::Float64,
        (a, b) if stringy(a) && stringy(b) => DataType::Utf8,
        (DataType::Timestamp(unit, tz), b) | (b, DataType::Timestamp(unit, tz))
            if b.is_integer() || stringy(b) =>
        {
            DataType::Timestamp(*unit, tz.clone())
        }
        _ => return fail(format!("cannot compare or combine {lt} with {rt}")),
    };
    let cast = |v: Val| v.map(|a| Ok(arrow::compute::cast(a, &to)?));
    Ok((cast(l)?, cast(r)?))
}

fn both_scalar(l: &Val, r: &Val, out: ArrayRef) -> Val {
    match (l, r) {
        (Val::Scalar(_), Val::Scalar(_)) => Val::Scalar(out),
        _ => Val::Array(out),
    }
}

fn binary(l: &Val, op: &BinaryOperator, r: &Val) -> Result<Val, Fail> {
    let (a, b) = (l.datum(), r.datum());
    let (a, b) = (&*a, &*b);
    let out: ArrayRef = match op {
        BinaryOperator::Plus => numeric::add(a, b)?,
        BinaryOperator::Minus => numeric::sub(a, b)?,
        BinaryOperator::Multiply => numeric::mul(a, b)?,
        BinaryOperator::Divide => numeric::div(a, b)?,
        BinaryOperator::Modulo => numeric::rem(a, b)?,
        BinaryOperator::Eq => Arc::new(cmp::eq(a, b)?),
        BinaryOperator::NotEq => Arc::new(cmp::neq(a, b)?),
        BinaryOperator::Lt => Arc::new(cmp::lt(a, b)?),
        BinaryOperator::LtEq => Arc::new(cmp::lt_eq(a, b)?),
        BinaryOperator::Gt => Arc::new(cmp::gt(a, b)?),
        BinaryOperator::GtEq => Arc::new(cmp::gt_eq(a, b)?),
        BinaryOperator::And | BinaryOperator::Or => {
            let n = match (l, r) {
                (Val::Array(a), _) | (_, Val::Array(a)) => a.len(),
                _ => 1,
            };
            let (x, y) = (l.clone_array(n), r.clone_array(n));
            let (x, y) = (bools(&x)?, bools(&y)?);
            let out = match op {
                BinaryOperator::And => boolean::and_kleene(x, y)?,
                _ => boolean::or_kleene(x, y)?,
            };
            return Ok(both_scalar(l, r, Arc::new(out)));
        }
        other => return fail(format!("the operator {other} is not supported")),
    };
    Ok(both_scalar(l, r, out))
}

impl Val {
    /// The value as an array of `n` rows (a NULL literal as booleans).
    fn clone_array(&self, n: usize) -> ArrayRef {
        let v = match self {
            Val::Array(a) => Val::Array(a.clone()),
            Val::Scalar(a) if *a.data_type() == DataType::Null => {
                Val::Scalar(new_null_array(&DataType::Boolean, 1))
            }
            Val::Scalar(a) => Val::Scalar(a.clone()),
        };
        v.into_array(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::Field;

    fn batch() -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("amount", DataType::Float64, true),
            Field::new("n", DataType::Int64, true),
            Field::new("status", DataType::Utf8, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Float64Array::from(vec![
                    Some(10.0),
                    Some(250.0),
                    None,
                    Some(99.5),
                ])),
                Arc::new(Int64Array::from(vec![Some(1), Some(7), Some(3), None])),
                Arc::new(StringArray::from(vec![
                    Some("ok"),
                    Some("declined"),
                    Some("ok"),
                    None,
                ])),
            ],
        )
        .unwrap()
    }

    fn kept(text: &str) -> Vec<bool> {
        let b = batch();
        let f = Filter::parse(text)
            .unwrap()
            .bind(&b.schema(), "filter")
            .unwrap();
        let mask = f.keep(&b).unwrap();
        (0..mask.len())
            .map(|i| mask.is_valid(i) && mask.value(i))
            .collect()
    }

    #[test]
    fn filters_select_the_rows_sql_would() {
        assert_eq!(kept("amount > 50"), [false, true, false, true]);
        assert_eq!(
            kept("n >= 3 AND status = 'ok'"),
            [false, false, true, false]
        );
        assert_eq!(
            kept("n * 2 > amount OR status IS NULL"),
            [false, false, false, true]
        );
        assert_eq!(kept("NOT (status LIKE 'dec%')"), [true, false, true, false]);
        assert_eq!(
            kept("amount BETWEEN 10 AND 100"),
            [true, false, false, true]
        );
        assert_eq!(kept("n IN (1, 3)"), [true, false, true, false]);
        assert_eq!(
            kept("CASE WHEN status = 'ok' THEN n ELSE 0 END > 2"),
            [false, false, true, false]
        );
        assert_eq!(
            kept("CAST(amount AS BIGINT) = 250"),
            [false, true, false, false]
        );
        assert_eq!(
            kept("amount IS NULL OR n % 2 = 0"),
            [false, false, true, false]
        );
    }

    #[test]
    fn a_bad_filter_is_an_error_that_names_it() {
        assert!(Filter::parse("amount >").unwrap_err().contains("amount >"));
        assert!(Filter::parse("a b c").is_err());
        let b = batch();
        let err = Filter::parse("price > 1")
            .unwrap()
            .bind(&b.schema(), "[filter] events")
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"price\" does not exist"), "{err}");
        let err = Filter::parse("status > 1")
            .unwrap()
            .bind(&b.schema(), "f")
            .unwrap()
            .keep(&b)
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot compare"), "{err}");
        let err = Filter::parse("amount + 1")
            .unwrap()
            .bind(&b.schema(), "f")
            .unwrap()
            .keep(&b)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a boolean"), "{err}");
    }
}
