//! The Flink SQL front end: window table-valued functions (`TUMBLE`, `HOP`, `CUMULATE`,
//! `SESSION`), aggregates, `WHERE`/`HAVING` and window Top-N, compiled into the job model
//! that job files deserialize into ([`JobFile`]), so both front ends run the same engine.
//!
//! A script is `CREATE TABLE` statements (sources with a `WATERMARK`, sinks), `SET`
//! statements and one `INSERT INTO … SELECT` (or a bare `SELECT`, printed as JSON lines),
//! optionally behind `EXPLAIN`. [`sqlparser`] parses it; two constructs of Flink's that its
//! dialects lack (`WATERMARK FOR` in a column list, and `TABLE t [PARTITION BY k]` as a
//! function argument) are read from the tokens first and blanked out, keeping every other
//! token at its line and column, so that errors point into the text as written.
//!
//! Anything outside the subset is an error naming the construct and its line:column.

use std::collections::BTreeMap;

use serde::Deserialize;
use sqlparser::ast::{
    self, BinaryOperator, DateTimeField, Expr, FunctionArg, FunctionArgExpr, FunctionArguments,
    GroupByExpr, Ident, ObjectName, Query, Select, SelectItem, SetExpr, Spanned, Statement,
    TableFactor, Value,
};
use sqlparser::dialect::GenericDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Location, Token, Tokenizer, Word};

use crate::error::{Error, Result};
use crate::job::JobFile;

/// A compiled script: the job, and whether it asked only to be explained.
#[derive(Debug)]
pub struct Compiled {
    /// The job the `INSERT` (or `SELECT`) became.
    pub job: JobFile,
    /// The script was `EXPLAIN …`: print the job, do not run it.
    pub explain: bool,
}

/// Compiles an SQL script; `file` names it in errors.
pub fn compile(text: &str, file: &str) -> Result<Compiled> {
    let err = |at: Location, message: String| Error::Sql {
        file: file.to_string(),
        line: at.line,
        column: at.column,
        message,
    };
    let pre = prepass(text).map_err(|(at, m)| err(at, m))?;
    let statements = Parser::parse_sql(&GenericDialect {}, &pre.text).map_err(|e| {
        let message = e.to_string();
        let message = message.trim_start_matches("sql parser error: ");
        err(location_in(message), message.to_string())
    })?;
    let mut script = Script {
        pre,
        ..Script::default()
    };
    for s in statements {
        script.statement(s, false).map_err(|(at, m)| err(at, m))?;
    }
    let (query, sink, at, explain) = script.insert.take().ok_or_else(|| {
        err(
            start(),
            "the script has no INSERT INTO … SELECT or SELECT".into(),
        )
    })?;
    let table = script
        .job(&query, sink.as_deref())
        .map_err(|(at, m)| err(at, m))?;
    let job = JobFile::deserialize(toml::Value::Table(table))
        .map_err(|e| err(at, format!("the job this query became: {e}")))?;
    Ok(Compiled { job, explain })
}

type Fail = (Location, String);
type Compile<T> = std::result::Result<T, Fail>;

fn start() -> Location {
    Location { line: 1, column: 1 }
}

/// The `Line: L, Column: C` sqlparser puts in its messages.
fn location_in(message: &str) -> Location {
    let number = |key: &str| -> Option<u64> {
        let rest = &message[message.find(key)? + key.len()..];
        let end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        rest[..end].parse().ok()
    };
    match (number("Line: "), number("Column: ")) {
        (Some(line), Some(column)) => Location { line, column },
        _ => start(),
    }
}

fn fail<T>(at: Location, message: impl Into<String>) -> Compile<T> {
    Err((at, message.into()))
}

fn at(node: &impl Spanned) -> Location {
    match node.span().start {
        Location { line: 0, .. } => start(),
        l => l,
    }
}

/// `WATERMARK FOR column AS expression` of a `CREATE TABLE`.
#[derive(Clone, Debug)]
struct Watermark {
    column: String,
    expr: String,
    at: Location,
}

/// What the pre-pass took out of the text.
#[derive(Default, Debug)]
struct Pre {
    text: String,
    /// By table name (lower case).
    watermarks: BTreeMap<String, Watermark>,
    /// `TABLE t PARTITION BY k…` of a `SESSION` call: the key columns.
    partition_by: Vec<String>,
}

fn word(t: &Token) -> Option<String> {
    match t {
        Token::Word(Word { value, .. }) => Some(value.to_ascii_uppercase()),
        _ => None,
    }
}

fn name(t: &Token) -> Option<String> {
    match t {
        Token::Word(Word { value, .. }) => Some(value.clone()),
        _ => None,
    }
}

/// Reads `WATERMARK FOR` clauses and `TABLE t [PARTITION BY …]` arguments out of the
/// tokens, and blanks them in the text (spaces, newlines kept).
fn prepass(text: &str) -> Compile<Pre> {
    let tokens = Tokenizer::new(&GenericDialect {}, text)
        .tokenize_with_location()
        .map_err(|e| (e.location, e.message))?;
    let sig: Vec<usize> = (0..tokens.len())
        .filter(|&i| !matches!(tokens[i].token, Token::Whitespace(_)))
        .collect();
    let loc = |k: usize| match sig.get(k) {
        Some(&i) => tokens[i].span.start,
        None => Location {
            line: u64::MAX,
            column: u64::MAX,
        },
    };
    let tok = |k: usize| sig.get(k).map(|&i| &tokens[i].token);
    let is = |k: usize, w: &str| tok(k).and_then(word).as_deref() == Some(w);
    let mut pre = Pre::default();
    // Token ranges [from, to) of `sig` to blank.
    let mut blank: Vec<(usize, usize)> = Vec::new();
    let mut table = String::new();
    let mut k = 0;
    while k < sig.len() {
        if is(k, "CREATE") && is(k + 1, "TABLE") {
            let mut n = k + 2;
            if is(n, "IF") {
                n += 3;
            }
            table = tok(n)
                .and_then(name)
                .unwrap_or_default()
                .to_ascii_lowercase();
        } else if is(k, "WATERMARK") && is(k + 1, "FOR") {
            let Some(column) = tok(k + 2).and_then(name) else {
                return fail(loc(k + 2), "WATERMARK FOR needs a column name");
            };
            if !is(k + 3, "AS") {
                return fail(loc(k + 3), "expected AS after WATERMARK FOR column");
            }
            // The expression runs to the `,` or `)` that ends the clause.
            let mut depth = 0usize;
            let mut end = k + 4;
            while let Some(t) = tok(end) {
                match t {
                    Token::LParen => depth += 1,
                    Token::RParen if depth == 0 => break,
                    Token::RParen => depth -= 1,
                    Token::Comma if depth == 0 => break,
                    _ => {}
                }
                end += 1;
            }
            let (from, to) = (offset(text, loc(k + 4)), offset(text, loc(end)));
            let expr = text[from..to.min(text.len())].trim().to_string();
            if expr.is_empty() {
                return fail(loc(k + 4), "WATERMARK FOR … AS needs an expression");
            }
            let watermark = Watermark {
                column,
                expr,
                at: loc(k),
            };
            if pre.watermarks.insert(table.clone(), watermark).is_some() {
                return fail(loc(k), format!("table {table} has two WATERMARK clauses"));
            }
            // With the comma before it, so that the column list stays well formed.
            let first = if k > 0 && tok(k - 1) == Some(&Token::Comma) {
                k - 1
            } else {
                k
            };
            blank.push((first, end));
            k = end;
            continue;
        } else if is(k, "TABLE")
            && k > 0
            && matches!(
                tok(k - 1),
                Some(Token::LParen | Token::Comma | Token::RArrow)
            )
        {
            blank.push((k, k + 1));
            if is(k + 2, "PARTITION") && is(k + 3, "BY") {
                let mut end = k + 4;
                let parens = tok(end) == Some(&Token::LParen);
                if parens {
                    end += 1;
                }
                loop {
                    let Some(key) = tok(end).and_then(name) else {
                        return fail(loc(end), "PARTITION BY needs column names");
                    };
                    pre.partition_by.push(key);
                    end += 1;
                    if parens && tok(end) == Some(&Token::Comma) {
                        end += 1;
                        continue;
                    }
                    break;
                }
                if parens {
                    if tok(end) != Some(&Token::RParen) {
                        return fail(loc(end), "expected ) after PARTITION BY (columns");
                    }
                    end += 1;
                }
                blank.push((k + 2, end));
            }
        }
        k += 1;
    }
    let mut chars: Vec<char> = text.chars().collect();
    let starts = line_starts(text);
    let n = chars.len();
    for (from, to) in blank {
        let a = char_index(&starts, loc(from)).min(n);
        let b = char_index(&starts, loc(to)).min(n);
        for c in chars[a..b.max(a)].iter_mut().filter(|c| **c != '\n') {
            *c = ' ';
        }
    }
    pre.text = chars.into_iter().collect();
    Ok(pre)
}

/// Char index of each line's start.
fn line_starts(text: &str) -> Vec<usize> {
    let mut starts = vec![0];
    for (i, c) in text.chars().enumerate() {
        if c == '\n' {
            starts.push(i + 1);
        }
    }
    starts
}

fn char_index(starts: &[usize], l: Location) -> usize {
    match starts.get((l.line as usize).wrapping_sub(1)) {
        Some(s) => s.saturating_add((l.column as usize).saturating_sub(1)),
        None => usize::MAX,
    }
}

/// Byte offset of a location in `text` (its length past the end).
fn offset(text: &str, l: Location) -> usize {
    let i = char_index(&line_starts(text), l);
    text.char_indices().nth(i).map_or(text.len(), |(b, _)| b)
}

/// A `CREATE TABLE`.
#[derive(Debug)]
struct Table {
    columns: Vec<(String, ast::DataType)>,
    options: BTreeMap<String, (String, Location)>,
    at: Location,
}

#[derive(Default)]
struct Script {
    pre: Pre,
    tables: BTreeMap<String, Table>,
    settings: Vec<(String, String, Location)>,
    /// The query, its sink table (none: print), where it is, and EXPLAIN.
    insert: Option<(Query, Option<String>, Location, bool)>,
}

fn lower(n: &ObjectName) -> String {
    n.0.last()
        .and_then(|p| p.as_ident())
        .map_or_else(|| n.to_string(), |i| i.value.clone())
        .to_ascii_lowercase()
}

fn literal_text(e: &Expr) -> Option<String> {
    match e {
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => Some(s.clone()),
            Value::Number(n, _) => Some(n.clone()),
            Value::Boolean(b) => Some(b.to_string()),
            _ => None,
        },
        Expr::Identifier(i) => Some(i.value.clone()),
        _ => None,
    }
}

impl Script {
    fn statement(&mut self, s: Statement, explain: bool) -> Compile<()> {
        let here = at(&s);
        match s {
            Statement::CreateTable(ct) => {
                let name = lower(&ct.name);
                let mut options = BTreeMap::new();
                if let ast::CreateTableOptions::With(opts) = &ct.table_options {
                    for o in opts {
                        let ast::SqlOption::KeyValue { key, value } = o else {
                            return fail(at(o), format!("table option {o} is not key = 'value'"));
                        };
                        let key = key.to_string().trim_matches('\'').to_ascii_lowercase();
                        let Some(v) = literal_text(value) else {
                            return fail(
                                at(value),
                                format!("option {key}: {value} is not a literal"),
                            );
                        };
                        options.insert(key, (v, at(value)));
                    }
                }
                let columns = ct
                    .columns
                    .iter()
                    .map(|c| (c.name.value.clone(), c.data_type.clone()))
                    .collect();
                let table = Table {
                    columns,
                    options,
                    at: here,
                };
                if self.tables.insert(name.clone(), table).is_some() {
                    return fail(here, format!("table {name} is created twice"));
                }
            }
            Statement::Set(ast::Set::SingleAssignment {
                variable, values, ..
            }) => {
                let key = variable.to_string().trim_matches('\'').to_string();
                let value = match &values[..] {
                    [v] => literal_text(v),
                    _ => None,
                };
                let Some(value) = value else {
                    return fail(here, format!("SET {key} needs one literal value"));
                };
                self.settings.push((key, value, here));
            }
            Statement::Insert(ins) => {
                let ast::TableObject::TableName(table) = &ins.table else {
                    return fail(here, "INSERT INTO needs a table name");
                };
                let Some(query) = ins.source else {
                    return fail(here, "INSERT INTO … needs a SELECT");
                };
                self.query(*query, Some(lower(table)), here, explain)?;
            }
            Statement::Query(q) => self.query(*q, None, here, explain)?,
            Statement::Explain { statement, .. } => self.statement(*statement, true)?,
            other => {
                let text = other.to_string();
                let what: String = text
                    .split_whitespace()
                    .take(2)
                    .collect::<Vec<_>>()
                    .join(" ");
                return fail(
                    here,
                    format!(
                        "{what} … is not supported: a script has CREATE TABLE, SET and one \
                         INSERT INTO … SELECT (or SELECT), optionally behind EXPLAIN"
                    ),
                );
            }
        }
        Ok(())
    }

    fn query(
        &mut self,
        q: Query,
        sink: Option<String>,
        here: Location,
        explain: bool,
    ) -> Compile<()> {
        if self.insert.is_some() {
            return fail(
                here,
                "a second INSERT or SELECT: a script runs one query (statement sets are not \
                 supported)",
            );
        }
        self.insert = Some((q, sink, here, explain));
        Ok(())
    }

    /// The job (as a job file's table) of `query` writing to table `sink`.
    fn job(&self, query: &Query, sink: Option<&str>) -> Compile<toml::Table> {
        let plan = Shape::of(query, &self.pre.partition_by)?;
        let mut job = toml::Table::new();
        let (source, time) = self.source(&plan)?;
        job.insert("source".into(), source.into());
        job.insert("time".into(), time.into());
        job.insert("window".into(), plan.window.clone().into());
        let keys: Vec<toml::Value> = plan.keys.iter().map(|k| k.clone().into()).collect();
        job.insert(
            "key".into(),
            toml::Table::from_iter([("columns".into(), keys.into())]).into(),
        );
        let aggs: Vec<toml::Value> = plan.aggregates.iter().map(|a| a.clone().into()).collect();
        job.insert("aggregate".into(), aggs.into());
        if let Some((by, k)) = &plan.top_k {
            let mut t = toml::Table::new();
            t.insert("by".into(), by.clone().into());
            t.insert("k".into(), (*k as i64).into());
            job.insert("top_k".into(), t.into());
        }
        let mut filter = toml::Table::new();
        if let Some(w) = &plan.where_ {
            filter.insert("events".into(), w.clone().into());
        }
        if let Some(h) = &plan.having {
            filter.insert("windows".into(), h.clone().into());
        }
        if !filter.is_empty() {
            job.insert("filter".into(), filter.into());
        }
        if let Some(columns) = plan.output() {
            let columns: Vec<toml::Value> = columns.into_iter().map(Into::into).collect();
            let output = toml::Table::from_iter([("columns".to_string(), columns.into())]);
            job.insert("output".into(), output.into());
        }
        job.insert("sink".into(), self.sink(sink)?.into());
        for (key, value, here) in &self.settings {
            set(&mut job, key, value).map_err(|m| (*here, m))?;
        }
        Ok(job)
    }

    /// `[source]` and `[time]` of the table the window function reads.
    fn source(&self, plan: &Shape) -> Compile<(toml::Table, toml::Table)> {
        let Some(table) = self.tables.get(&plan.table) else {
            return fail(
                plan.table_at.0,
                format!("table {} is not created in the script", plan.table),
            );
        };
        let Some(w) = self.pre.watermarks.get(&plan.table) else {
            return fail(
                plan.time_at.0,
                format!(
                    "table {} has no WATERMARK: add e.g. WATERMARK FOR {} AS {} - INTERVAL '5' \
                     SECOND to its columns",
                    plan.table, plan.time, plan.time
                ),
            );
        };
        if !w.column.eq_ignore_ascii_case(&plan.time) {
            return fail(
                plan.time_at.0,
                format!(
                    "DESCRIPTOR({}) is not the time attribute of {}: its WATERMARK is on {}",
                    plan.time, plan.table, w.column
                ),
            );
        }
        let mut time = toml::Table::new();
        time.insert("column".into(), w.column.clone().into());
        time.insert("max_out_of_orderness".into(), watermark_bound(w)?.into());
        let mut source = toml::Table::new();
        let opt = |k: &str| table.options.get(k).map(|(v, _)| v.clone());
        let connector = opt("connector").unwrap_or_default();
        match connector.as_str() {
            "filesystem" => {
                let format = file_format(table, "a source")?;
                source.insert("kind".into(), format.into());
                let Some(path) = opt("path") else {
                    return fail(table.at, "a filesystem table needs 'path'");
                };
                source.insert("path".into(), path.into());
                if format != "parquet" {
                    source.insert("schema".into(), declared_schema(table)?.into());
                }
            }
            "kafka" => {
                source.insert("kind".into(), "kafka".into());
                for (flink, ours) in [
                    ("properties.bootstrap.servers", "bootstrap"),
                    ("properties.group.id", "group"),
                    ("format", "format"),
                ] {
                    if let Some(v) = opt(flink) {
                        source.insert(ours.into(), v.into());
                    }
                }
                // Flink's list of topics: 'topic-1;topic-2'.
                match opt("topic") {
                    Some(v) if v.contains(';') => {
                        let list: Vec<toml::Value> = v.split(';').map(|t| t.into()).collect();
                        source.insert("topics".into(), list.into());
                    }
                    Some(v) => {
                        source.insert("topic".into(), v.into());
                    }
                    None => {}
                }
                if let Some(mode) = opt("scan.startup.mode") {
                    let here = table.options["scan.startup.mode"].1;
                    let start = match mode.as_str() {
                        "earliest-offset" => "earliest".to_string(),
                        "latest-offset" => "latest".to_string(),
                        "timestamp" => {
                            let ms = opt("scan.startup.timestamp-millis")
                                .and_then(|v| v.parse::<u64>().ok());
                            let Some(ms) = ms else {
                                return fail(
                                    here,
                                    "scan.startup.mode 'timestamp' needs \
                                     'scan.startup.timestamp-millis' (ms since the epoch)",
                                );
                            };
                            let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
                            humantime::format_rfc3339_millis(at).to_string()
                        }
                        _ => {
                            return fail(
                                here,
                                "scan.startup.mode: use 'earliest-offset', 'latest-offset' or \
                                 'timestamp'",
                            );
                        }
                    };
                    source.insert("start".into(), start.into());
                }
                source.insert("schema".into(), declared_schema(table)?.into());
            }
            "panes-generator" => {
                source.insert("kind".into(), "generator".into());
                for (key, (value, here)) in &table.options {
                    let key = key.replace('-', "_");
                    let value: toml::Value = match key.as_str() {
                        "connector" => continue,
                        "dataset" => value.clone().into(),
                        "late_share" => value
                            .parse::<f64>()
                            .map_err(|_| (*here, format!("{key} = {value:?} is not a number")))?
                            .into(),
                        _ => value
                            .replace('_', "")
                            .parse::<i64>()
                            .map_err(|_| {
                                (*here, format!("{key} = {value:?} is not a whole number"))
                            })?
                            .into(),
                    };
                    source.insert(key, value);
                }
            }
            other => {
                return fail(
                    table.at,
                    format!(
                        "table {}: connector {other:?} is not supported as a source; use \
                         'filesystem', 'kafka' or 'panes-generator'",
                        plan.table
                    ),
                );
            }
        }
        Ok((source, time))
    }

    /// `[sink]` for table `name` (none: JSON lines on stdout).
    fn sink(&self, name: Option<&str>) -> Compile<toml::Table> {
        let mut sink = toml::Table::new();
        let Some(name) = name else {
            sink.insert("kind".into(), "jsonl".into());
            return Ok(sink);
        };
        let Some(table) = self.tables.get(name) else {
            return fail(
                start(),
                format!("INSERT INTO {name}: the table is not created in the script"),
            );
        };
        let opt = |k: &str| table.options.get(k).map(|(v, _)| v.clone());
        match opt("connector").unwrap_or_default().as_str() {
            "filesystem" => {
                sink.insert("kind".into(), file_format(table, "a sink")?.into());
                let Some(path) = opt("path") else {
                    return fail(table.at, "a filesystem table needs 'path'");
                };
                sink.insert("path".into(), path.into());
            }
            "print" => {
                sink.insert("kind".into(), "jsonl".into());
            }
            "kafka" => {
                sink.insert("kind".into(), "kafka".into());
                if let Some(t) = opt("topic") {
                    sink.insert("topic".into(), t.into());
                }
                if let Some(b) = opt("properties.bootstrap.servers") {
                    sink.insert("bootstrap".into(), b.into());
                }
            }
            other => {
                return fail(
                    table.at,
                    format!(
                        "table {name}: connector {other:?} is not supported as a sink; use \
                         'filesystem', 'print' or 'kafka'"
                    ),
                );
            }
        }
        Ok(sink)
    }
}

/// `'format'` of a filesystem table as a source or sink kind.
fn file_format(table: &Table, what: &str) -> Compile<&'static str> {
    let format = table.options.get("format");
    match format.map(|(f, _)| f.as_str()) {
        Some("parquet") | None => Ok("parquet"),
        Some("csv") => Ok("csv"),
        Some("json") => Ok("jsonl"),
        Some(other) => fail(
            format.map_or(table.at, |f| f.1),
            format!("format {other:?} is not supported for {what}; use parquet, csv or json"),
        ),
    }
}

/// The job file's name for a column type.
fn column_type(t: &ast::DataType) -> Option<&'static str> {
    use ast::DataType as T;
    Some(match t {
        T::BigInt(_) | T::Int(_) | T::Integer(_) | T::SmallInt(_) | T::TinyInt(_) => "int64",
        T::Double(_) | T::DoublePrecision | T::Float(_) | T::Real | T::Decimal(_) => "float64",
        T::Varchar(_) | T::String(_) | T::Text | T::Char(_) => "string",
        T::Boolean | T::Bool => "bool",
        T::Timestamp(p, _) => match p {
            Some(0) => "timestamp_s",
            Some(6) => "timestamp_us",
            Some(9) => "timestamp_ns",
            _ => "timestamp_ms",
        },
        _ => return None,
    })
}

/// The bound of `WATERMARK FOR ts AS ts - INTERVAL …` as a duration.
fn watermark_bound(w: &Watermark) -> Compile<String> {
    let bad = || {
        (
            w.at,
            format!(
                "WATERMARK FOR {} AS {}: panes takes {} or {} - INTERVAL '…' unit (bounded \
                 out-of-orderness)",
                w.column, w.expr, w.column, w.column
            ),
        )
    };
    let expr = Parser::new(&GenericDialect {})
        .try_with_sql(&w.expr)
        .and_then(|mut p| p.parse_expr())
        .map_err(|_| bad())?;
    let is_column =
        |e: &Expr| matches!(e, Expr::Identifier(i) if i.value.eq_ignore_ascii_case(&w.column));
    match &expr {
        e if is_column(e) => Ok(duration(0)),
        Expr::BinaryOp {
            left,
            op: BinaryOperator::Minus,
            right,
        } if is_column(left) => Ok(duration(interval_ms(right).map_err(|_| bad())?)),
        _ => Err(bad()),
    }
}

/// A duration as the job file writes it: `15m`, `5s`, `100ms`.
fn duration(ms: i64) -> String {
    match ms {
        0 => "0s".into(),
        ms if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        ms if ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        ms if ms % 1000 == 0 => format!("{}s", ms / 1000),
        ms => format!("{ms}ms"),
    }
}

/// Milliseconds of `INTERVAL 'n' UNIT`.
fn interval_ms(e: &Expr) -> Compile<i64> {
    let bad = || {
        (
            at(e),
            format!("{e} is not an interval such as INTERVAL '5' SECOND"),
        )
    };
    let Expr::Interval(i) = e else {
        return Err(bad());
    };
    let value = literal_text(&i.value).ok_or_else(bad)?;
    let (number, unit) = match (&i.leading_field, value.split_once(' ')) {
        (Some(f), None) => (value.as_str(), f.clone()),
        (None, Some((n, u))) => (
            n,
            match u.trim().to_ascii_uppercase().trim_end_matches('S') {
                "MILLISECOND" => DateTimeField::Millisecond,
                "SECOND" => DateTimeField::Second,
                "MINUTE" => DateTimeField::Minute,
                "HOUR" => DateTimeField::Hour,
                "DAY" => DateTimeField::Day,
                _ => return Err(bad()),
            },
        ),
        _ => return Err(bad()),
    };
    let scale = match unit {
        DateTimeField::Millisecond | DateTimeField::Milliseconds => 1,
        DateTimeField::Second | DateTimeField::Seconds => 1000,
        DateTimeField::Minute | DateTimeField::Minutes => 60_000,
        DateTimeField::Hour | DateTimeField::Hours => 3_600_000,
        DateTimeField::Day | DateTimeField::Days => 86_400_000,
        _ => return Err(bad()),
    };
    let n: i64 = number.trim().parse().map_err(|_| bad())?;
    n.checked_mul(scale).filter(|ms| *ms >= 0).ok_or_else(bad)
}

/// `SET 'panes.section.key' = 'value'`: sets `section.key` of the job (dashes read as
/// underscores). Other keys (Flink's own) are ignored with a warning.
fn set(job: &mut toml::Table, key: &str, value: &str) -> std::result::Result<(), String> {
    let Some(path) = key.strip_prefix("panes.") else {
        tracing::warn!("SET {key:?} is not a panes option (panes.…); ignored");
        return Ok(());
    };
    let parts: Vec<String> = path.split('.').map(|p| p.replace('-', "_")).collect();
    let (last, sections) = parts.split_last().ok_or("SET 'panes.' names no option")?;
    let mut table = job;
    for s in sections {
        let entry = table
            .entry(s.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = entry
            .as_table_mut()
            .ok_or_else(|| format!("SET {key:?}: {s} is not a section"))?;
    }
    let value = if let Ok(i) = value.replace('_', "").parse::<i64>() {
        toml::Value::Integer(i)
    } else if let Ok(f) = value.parse::<f64>() {
        toml::Value::Float(f)
    } else if let Ok(b) = value.parse::<bool>() {
        toml::Value::Boolean(b)
    } else {
        toml::Value::String(value.to_string())
    };
    table.insert(last.clone(), value);
    Ok(())
}

/// A location that defaults to the script's start.
#[derive(Clone, Copy, Debug)]
struct At(Location);

impl Default for At {
    fn default() -> At {
        At(start())
    }
}

/// What the query asks for, read off its shape.
#[derive(Debug, Default)]
struct Shape {
    table: String,
    table_at: At,
    time: String,
    time_at: At,
    window: toml::Table,
    keys: Vec<String>,
    aggregates: Vec<toml::Table>,
    /// Aggregate calls (as SQL text) by output name, to rewrite `HAVING` and `ORDER BY`.
    calls: Vec<(String, String)>,
    where_: Option<String>,
    having: Option<String>,
    top_k: Option<(String, usize)>,
    /// The output columns in `SELECT` order: (column of window rows, name).
    columns: Vec<(String, String)>,
}

fn select_of(q: &Query) -> Compile<&Select> {
    if q.with.is_some() || q.order_by.is_some() || q.limit_clause.is_some() || q.fetch.is_some() {
        return fail(
            at(q),
            "WITH, ORDER BY, LIMIT and FETCH are not supported on a query",
        );
    }
    match q.body.as_ref() {
        SetExpr::Select(s) => Ok(s),
        other => fail(
            at(other),
            format!("{} is not supported: use one SELECT", kind_of(other)),
        ),
    }
}

fn kind_of(s: &SetExpr) -> &'static str {
    match s {
        SetExpr::SetOperation { .. } => "UNION, INTERSECT or EXCEPT",
        SetExpr::Values(_) => "VALUES",
        _ => "this query form",
    }
}

fn only_from(s: &Select) -> Compile<&TableFactor> {
    match &s.from[..] {
        [t] if t.joins.is_empty() => Ok(&t.relation),
        [t] => fail(
            at(&t.joins[0]),
            "a join is not supported (window joins and interval joins are not in panes yet)",
        ),
        [] => fail(at(s), "the SELECT has no FROM"),
        [_, t, ..] => fail(at(t), "a join is not supported (one table in FROM)"),
    }
}

impl Shape {
    fn of(q: &Query, partition_by: &[String]) -> Compile<Shape> {
        let s = select_of(q)?;
        match only_from(s)? {
            TableFactor::TableFunction { .. } => {
                let mut shape = Shape::default();
                shape.aggregate_select(s, partition_by)?;
                Ok(shape)
            }
            TableFactor::Derived { subquery, .. } => Shape::top_n(s, subquery, partition_by),
            other => fail(
                at(other),
                "FROM must be a window function, e.g. TABLE(TUMBLE(TABLE t, DESCRIPTOR(ts), \
                 INTERVAL '1' MINUTE)), or a window Top-N over one",
            ),
        }
    }

    /// `SELECT * FROM (… ROW_NUMBER() OVER (PARTITION BY window_start, window_end ORDER
    /// BY x DESC) AS rn …) WHERE rn <= k`.
    fn top_n(outer: &Select, inner: &Query, partition_by: &[String]) -> Compile<Shape> {
        for item in &outer.projection {
            if !matches!(item, SelectItem::Wildcard(_)) {
                return fail(
                    at(item),
                    "a window Top-N keeps every column: SELECT * FROM (…)",
                );
            }
        }
        let Some(filter) = &outer.selection else {
            return fail(
                at(outer),
                "a query over a subquery must be a window Top-N: WHERE rn <= k",
            );
        };
        if outer.group_by != GroupByExpr::Expressions(vec![], vec![]) || outer.having.is_some() {
            return fail(
                at(outer),
                "a window Top-N has no GROUP BY or HAVING of its own",
            );
        }
        let s = select_of(inner)?;
        // The row number is in `s`, over either the aggregation itself or a subquery.
        let mut shape = Shape::default();
        let mut items = Vec::new();
        let mut rank = None;
        for item in &s.projection {
            match item {
                SelectItem::ExprWithAlias {
                    expr: Expr::Function(f),
                    alias,
                } if f.over.is_some() => {
                    rank = Some((f, alias.value.clone(), at(item), items.len()))
                }
                other => items.push(other.clone()),
            }
        }
        let Some((f, rn, rn_at, before)) = rank else {
            return fail(
                at(s),
                "a window Top-N needs ROW_NUMBER() OVER (…) AS rn in the subquery",
            );
        };
        match only_from(s)? {
            TableFactor::TableFunction { .. } => {
                let mut agg = s.clone();
                agg.projection = items.clone();
                shape.aggregate_select(&agg, partition_by)?;
            }
            TableFactor::Derived { subquery, .. } => {
                if !items.iter().all(|i| matches!(i, SelectItem::Wildcard(_))) || items.is_empty() {
                    return fail(
                        at(s),
                        "around an aggregation, the row number goes with SELECT *, ROW_NUMBER() OVER (…)",
                    );
                }
                let agg = select_of(subquery)?;
                if !matches!(only_from(agg)?, TableFactor::TableFunction { .. }) {
                    return fail(
                        at(agg),
                        "a window Top-N ranks the rows of a window aggregation",
                    );
                }
                shape.aggregate_select(agg, partition_by)?;
            }
            other => {
                return fail(
                    at(other),
                    "a window Top-N ranks the rows of a window aggregation",
                );
            }
        }
        let by = shape.row_number(f, rn_at)?;
        let k = rank_limit(filter, &rn)?;
        shape.top_k = Some((by, k));
        // The row number sits where it was selected: among the aggregation's own columns,
        // or before or after its `*`.
        let at = match before {
            0 => 0,
            _ if items.iter().all(|i| matches!(i, SelectItem::Wildcard(_))) => shape.columns.len(),
            n => n.min(shape.columns.len()),
        };
        shape.columns.insert(at, ("rank".into(), rn));
        Ok(shape)
    }

    /// `[output] columns` when the `SELECT` list is not panes' own order and names (keys,
    /// window bounds, aggregates, rank).
    fn output(&self) -> Option<Vec<String>> {
        let mut native: Vec<(String, String)> =
            self.keys.iter().map(|k| (k.clone(), k.clone())).collect();
        for bound in ["window_start", "window_end"] {
            native.push((bound.into(), bound.into()));
        }
        for (name, _) in &self.calls {
            native.push((name.clone(), name.clone()));
        }
        if self.top_k.is_some() {
            native.push(("rank".into(), "rank".into()));
        }
        (self.columns != native).then(|| {
            self.columns
                .iter()
                .map(|(from, name)| match from == name {
                    true => from.clone(),
                    false => format!("{from} AS {name}"),
                })
                .collect()
        })
    }

    /// `ROW_NUMBER() OVER (PARTITION BY window_start, window_end ORDER BY agg DESC)`: the
    /// aggregate it ranks by.
    fn row_number(&self, f: &ast::Function, here: Location) -> Compile<String> {
        if !f.name.to_string().eq_ignore_ascii_case("ROW_NUMBER") {
            return fail(
                here,
                format!(
                    "{} OVER (…) is not supported: window Top-N uses ROW_NUMBER()",
                    f.name
                ),
            );
        }
        let Some(ast::WindowType::WindowSpec(w)) = &f.over else {
            return fail(
                here,
                "ROW_NUMBER() needs OVER (PARTITION BY window_start, window_end ORDER BY …)",
            );
        };
        let mut parts: Vec<String> = w
            .partition_by
            .iter()
            .map(|e| e.to_string().to_ascii_lowercase())
            .collect();
        parts.sort();
        if parts != ["window_end", "window_start"] {
            return fail(
                here,
                "ROW_NUMBER() OVER (PARTITION BY window_start, window_end …): ranking within \
                 other partitions is not supported",
            );
        }
        let [o] = &w.order_by[..] else {
            return fail(here, "ROW_NUMBER() OVER (… ORDER BY one aggregate DESC)");
        };
        if o.options.sort != Some(ast::OrderBySort::Desc) {
            return fail(
                at(&o.expr),
                "window Top-N ranks largest first: ORDER BY … DESC",
            );
        }
        self.aggregate_named(&o.expr).ok_or_else(|| {
            (
                at(&o.expr),
                format!(
                    "ORDER BY {}: rank by an aggregate of the SELECT list",
                    o.expr
                ),
            )
        })
    }

    /// The output name of the aggregate that `e` names or repeats.
    fn aggregate_named(&self, e: &Expr) -> Option<String> {
        let text = e.to_string().to_ascii_lowercase();
        self.calls
            .iter()
            .find(|(name, call)| {
                name.to_ascii_lowercase() == text || call.to_ascii_lowercase() == text
            })
            .map(|(name, _)| name.clone())
    }

    /// `SELECT window_start, window_end, keys…, aggregates… FROM TABLE(F(…)) [WHERE]
    /// GROUP BY window_start, window_end, keys… [HAVING]`.
    fn aggregate_select(&mut self, s: &Select, partition_by: &[String]) -> Compile<()> {
        if let Some(d) = &s.distinct {
            return fail(at(s), format!("SELECT {d} is not supported"));
        }
        let TableFactor::TableFunction { expr, .. } = only_from(s)? else {
            return fail(at(s), "FROM must be TABLE(TUMBLE|HOP|CUMULATE|SESSION(…))");
        };
        self.window_function(expr, partition_by)?;
        let GroupByExpr::Expressions(groups, modifiers) = &s.group_by else {
            return fail(
                at(s),
                "GROUP BY ALL is not supported: name window_start, window_end and the keys",
            );
        };
        if !modifiers.is_empty() {
            return fail(at(s), "GROUP BY modifiers (ROLLUP, CUBE) are not supported");
        }
        let mut bounds = 0;
        for g in groups {
            let Expr::Identifier(Ident { value, .. }) = g else {
                return fail(at(g), format!("GROUP BY {g}: group by column names"));
            };
            match value.to_ascii_lowercase().as_str() {
                "window_start" | "window_end" => bounds += 1,
                "window_time" => {
                    return fail(
                        at(g),
                        "GROUP BY window_time: panes groups by window_start and window_end",
                    );
                }
                _ => self.keys.push(value.clone()),
            }
        }
        if bounds != 2 {
            return fail(
                at(s),
                "a window aggregation groups by window_start and window_end (and the keys): \
                 GROUP BY window_start, window_end, …",
            );
        }
        if !partition_by.is_empty() {
            let mut a: Vec<String> = partition_by
                .iter()
                .map(|k| k.to_ascii_lowercase())
                .collect();
            let mut b: Vec<String> = self.keys.iter().map(|k| k.to_ascii_lowercase()).collect();
            a.sort();
            b.sort();
            if a != b {
                return fail(
                    at(s),
                    "SESSION(TABLE t PARTITION BY k…): GROUP BY the same keys",
                );
            }
        }
        for item in &s.projection {
            let (e, alias) = match item {
                SelectItem::UnnamedExpr(e) => (e, None),
                SelectItem::ExprWithAlias { expr, alias } => (expr, Some(alias.value.clone())),
                other => {
                    return fail(
                        at(other),
                        format!("{other}: list window_start, window_end, the keys and aggregates"),
                    );
                }
            };
            match e {
                Expr::Identifier(Ident { value, .. }) => {
                    let v = value.to_ascii_lowercase();
                    let column = match v.as_str() {
                        "window_start" | "window_end" | "window_time" => Some(v.clone()),
                        _ => self
                            .keys
                            .iter()
                            .find(|k| k.eq_ignore_ascii_case(&v))
                            .cloned(),
                    };
                    let Some(column) = column else {
                        return fail(
                            at(e),
                            format!("{value} is neither grouped by nor aggregated"),
                        );
                    };
                    let name = alias.unwrap_or_else(|| column.clone());
                    self.columns.push((column, name));
                }
                Expr::Function(f) => self.aggregate(f, alias, true)?,
                // A computed column: over keys, window bounds and aggregates.
                other => {
                    let computed = self.rewrite(other)?;
                    let name = alias.unwrap_or_else(|| format!("expr{}", self.columns.len()));
                    self.columns.push((computed.to_string(), name));
                }
            }
        }
        if self.aggregates.is_empty() {
            return fail(at(s), "the SELECT has no aggregate, e.g. COUNT(*)");
        }
        if let Some(w) = &s.selection {
            check_plain(w)?;
            self.where_ = Some(w.to_string());
        }
        if let Some(h) = &s.having {
            self.having = Some(self.rewrite(h)?.to_string());
        }
        Ok(())
    }

    /// An expression over window rows (`HAVING`, or a computed column of the `SELECT`
    /// list) with its aggregate calls replaced by their output names; a call the `SELECT`
    /// list does not have becomes an aggregate of its own that the output leaves out.
    fn rewrite(&mut self, e: &Expr) -> Compile<Expr> {
        if let Expr::Function(f) = e {
            let name = match self.aggregate_named(e) {
                Some(name) => name,
                None => {
                    let name = format!("__agg{}", self.calls.len() + 1);
                    self.aggregate(f, Some(name.clone()), false)?;
                    name
                }
            };
            return Ok(Expr::Identifier(Ident::new(name)));
        }
        let mut r = |x: &Expr| self.rewrite(x).map(Box::new);
        Ok(match e {
            Expr::BinaryOp { left, op, right } => Expr::BinaryOp {
                left: r(left)?,
                op: op.clone(),
                right: r(right)?,
            },
            Expr::UnaryOp { op, expr } => Expr::UnaryOp {
                op: *op,
                expr: r(expr)?,
            },
            Expr::Nested(x) => Expr::Nested(r(x)?),
            Expr::IsNull(x) => Expr::IsNull(r(x)?),
            Expr::IsNotNull(x) => Expr::IsNotNull(r(x)?),
            Expr::Cast {
                kind,
                expr,
                data_type,
                format,
            } => Expr::Cast {
                kind: kind.clone(),
                expr: r(expr)?,
                data_type: data_type.clone(),
                format: format.clone(),
            },
            other => {
                check_plain(other)?;
                other.clone()
            }
        })
    }

    /// Adds the aggregate `f` named `alias`; `visible`: it is a column of the output.
    fn aggregate(
        &mut self,
        f: &ast::Function,
        alias: Option<String>,
        visible: bool,
    ) -> Compile<()> {
        let here = at(f);
        if f.over.is_some() {
            return fail(
                here,
                format!(
                    "{} OVER (…) belongs in a window Top-N: SELECT * FROM (… ) WHERE rn <= k",
                    f.name
                ),
            );
        }
        let FunctionArguments::List(list) = &f.args else {
            return fail(here, format!("{}: an aggregate takes one column", f.name));
        };
        if list.duplicate_treatment.is_some() || !list.clauses.is_empty() || f.filter.is_some() {
            return fail(
                here,
                format!(
                    "{f}: DISTINCT, FILTER and ordered aggregates are not supported (APPROX_COUNT_DISTINCT(x) counts distinct values)"
                ),
            );
        }
        let upper = f.name.to_string().to_ascii_uppercase();
        // `Ok(column)` or `Err(expression)`, or nothing for COUNT(*).
        let input = match &list.args[..] {
            [FunctionArg::Unnamed(FunctionArgExpr::Wildcard)] if upper == "COUNT" => None,
            [FunctionArg::Unnamed(FunctionArgExpr::Expr(Expr::Identifier(c)))] => {
                Some(Ok(c.value.clone()))
            }
            [FunctionArg::Unnamed(FunctionArgExpr::Expr(e))] => {
                check_plain(e)?;
                Some(Err(e.to_string()))
            }
            _ => {
                return fail(
                    here,
                    format!("{f}: an aggregate of one column or expression (COUNT(*) counts rows)"),
                );
            }
        };
        let func = match upper.as_str() {
            "COUNT" => "count",
            "SUM" => "sum",
            "MIN" => "min",
            "MAX" => "max",
            "AVG" => "avg",
            "VAR_SAMP" | "VARIANCE" => "var_samp",
            "VAR_POP" => "var_pop",
            "STDDEV_SAMP" | "STDDEV" => "stddev_samp",
            "STDDEV_POP" => "stddev_pop",
            "FIRST_VALUE" => "first",
            "LAST_VALUE" => "last",
            "APPROX_COUNT_DISTINCT" => "approx_count_distinct",
            _ => return fail(here, format!("the aggregate {} is not supported", f.name)),
        };
        let name = alias.unwrap_or_else(|| match &input {
            Some(Ok(c)) => format!("{func}_{c}"),
            Some(Err(_)) => format!("{func}_expr{}", self.aggregates.len() + 1),
            None => "count".to_string(),
        });
        let mut t = toml::Table::new();
        t.insert("name".into(), name.clone().into());
        t.insert("fn".into(), func.into());
        match input {
            Some(Ok(c)) => t.insert("column".into(), c.into()),
            Some(Err(e)) => t.insert("expr".into(), e.into()),
            None => None,
        };
        self.aggregates.push(t);
        if visible {
            self.columns.push((name.clone(), name.clone()));
        }
        self.calls.push((name, f.to_string()));
        Ok(())
    }

    /// `TABLE(TUMBLE|HOP|CUMULATE|SESSION(data, DESCRIPTOR(ts), …))`.
    fn window_function(&mut self, e: &Expr, partition_by: &[String]) -> Compile<()> {
        let Expr::Function(f) = e else {
            return fail(at(e), "TABLE(…) must call a window function");
        };
        let kind = f.name.to_string().to_ascii_uppercase();
        let names: &[&str] = match kind.as_str() {
            "TUMBLE" => &["DATA", "TIMECOL", "SIZE", "OFFSET"],
            "HOP" => &["DATA", "TIMECOL", "SLIDE", "SIZE", "OFFSET"],
            "CUMULATE" => &["DATA", "TIMECOL", "STEP", "SIZE", "OFFSET"],
            "SESSION" => &["DATA", "TIMECOL", "GAP"],
            _ => {
                return fail(
                    at(f),
                    format!(
                        "{} is not a window function: use TUMBLE, HOP, CUMULATE or SESSION",
                        f.name
                    ),
                );
            }
        };
        if kind != "SESSION" && !partition_by.is_empty() {
            return fail(
                at(f),
                "PARTITION BY in a window function is only for SESSION",
            );
        }
        let FunctionArguments::List(list) = &f.args else {
            return fail(at(f), format!("{kind} needs arguments"));
        };
        let mut args: BTreeMap<&str, &Expr> = BTreeMap::new();
        for (i, a) in list.args.iter().enumerate() {
            let (name, value) = match a {
                FunctionArg::Unnamed(FunctionArgExpr::Expr(v)) => match names.get(i) {
                    Some(n) => (*n, v),
                    None => {
                        return fail(
                            at(v),
                            format!("{kind} takes at most {} arguments", names.len()),
                        );
                    }
                },
                FunctionArg::Named {
                    name,
                    arg: FunctionArgExpr::Expr(v),
                    ..
                } => {
                    let upper = name.value.to_ascii_uppercase();
                    match names.iter().find(|n| **n == upper) {
                        Some(n) => (*n, v),
                        None => {
                            return fail(
                                name.span.start,
                                format!(
                                    "{kind} has no argument {}; it has {}",
                                    name.value,
                                    names.join(", ")
                                ),
                            );
                        }
                    }
                }
                other => return fail(at(f), format!("{kind}: argument {other} is not supported")),
            };
            if args.insert(name, value).is_some() {
                return fail(at(value), format!("{kind}: {name} is given twice"));
            }
        }
        let need = |n: &str| {
            args.get(n)
                .copied()
                .ok_or_else(|| (at(f), format!("{kind} needs its {n} argument")))
        };
        let data = need("DATA")?;
        let Expr::Identifier(table) = data else {
            return fail(at(data), "the window function's DATA is TABLE name");
        };
        self.table = table.value.to_ascii_lowercase();
        self.table_at = At(at(data));
        let timecol = need("TIMECOL")?;
        self.time = descriptor(timecol)?;
        self.time_at = At(at(timecol));
        let mut w = toml::Table::new();
        let ms = |n: &str| -> Compile<toml::Value> { Ok(duration(interval_ms(need(n)?)?).into()) };
        w.insert("kind".into(), kind.to_ascii_lowercase().into());
        match kind.as_str() {
            "TUMBLE" => {
                w.insert("size".into(), ms("SIZE")?);
            }
            "HOP" => {
                w.insert("size".into(), ms("SIZE")?);
                w.insert("slide".into(), ms("SLIDE")?);
            }
            "CUMULATE" => {
                w.insert("size".into(), ms("SIZE")?);
                w.insert("step".into(), ms("STEP")?);
            }
            _ => {
                w.insert("gap".into(), ms("GAP")?);
            }
        }
        if args.contains_key("OFFSET") {
            w.insert("offset".into(), ms("OFFSET")?);
        }
        self.window = w;
        Ok(())
    }
}

/// `DESCRIPTOR(column)`.
fn descriptor(e: &Expr) -> Compile<String> {
    if let Expr::Function(f) = e
        && f.name.to_string().eq_ignore_ascii_case("DESCRIPTOR")
        && let FunctionArguments::List(l) = &f.args
        && let [FunctionArg::Unnamed(FunctionArgExpr::Expr(Expr::Identifier(c)))] = &l.args[..]
    {
        return Ok(c.value.clone());
    }
    fail(at(e), format!("{e}: the time column is DESCRIPTOR(column)"))
}

/// `rn <= k` or `rn < k`: k.
fn rank_limit(e: &Expr, rn: &str) -> Compile<usize> {
    let bad = || {
        (
            at(e),
            format!("a window Top-N is filtered by {rn} <= k (a number), not by {e}"),
        )
    };
    let Expr::BinaryOp { left, op, right } = e else {
        return Err(bad());
    };
    let is_rn = matches!(left.as_ref(), Expr::Identifier(i) if i.value.eq_ignore_ascii_case(rn));
    let k: usize = literal_text(right)
        .and_then(|t| t.parse().ok())
        .ok_or_else(bad)?;
    match op {
        BinaryOperator::LtEq if is_rn && k >= 1 => Ok(k),
        BinaryOperator::Lt if is_rn && k >= 2 => Ok(k - 1),
        BinaryOperator::Eq if is_rn && k == 1 => Ok(1),
        _ => Err(bad()),
    }
}

/// A table's columns as a source's declared `schema`, in their order.
fn declared_schema(table: &Table) -> Compile<toml::Table> {
    let mut schema = toml::Table::new();
    for (name, ty) in &table.columns {
        let ty = column_type(ty).ok_or_else(|| {
            (
                table.at,
                format!("column {name}: type {ty} is not supported"),
            )
        })?;
        schema.insert(name.clone(), ty.into());
    }
    Ok(schema)
}

/// An expression the filter evaluator takes: no aggregates, subqueries or functions.
fn check_plain(e: &Expr) -> Compile<()> {
    crate::expr::Filter::check(e).map_err(|m| (at(e), format!("{e}: {m}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(sql: &str) -> JobFile {
        compile(sql, "test.sql")
            .unwrap_or_else(|e| panic!("{e}"))
            .job
    }

    const CLICKS: &str = "CREATE TABLE clicks (
  ts TIMESTAMP(3), article_id BIGINT, user_id BIGINT, scroll_depth DOUBLE,
  WATERMARK FOR ts AS ts - INTERVAL '5' SECOND
) WITH ('connector' = 'filesystem', 'path' = 'data/clicks.parquet', 'format' = 'parquet');
CREATE TABLE trending WITH ('connector' = 'filesystem', 'path' = 'out/trending.parquet', 'format' = 'parquet');
";

    #[test]
    fn kafka_startup_modes_become_the_sources_start() {
        let table = |options: &str| {
            format!(
                "CREATE TABLE clicks (ts TIMESTAMP(3), article_id BIGINT,
  WATERMARK FOR ts AS ts - INTERVAL '5' SECOND
) WITH ('connector' = 'kafka', 'topic' = 'clicks',
  'properties.bootstrap.servers' = 'h:9092'{options});
CREATE TABLE out WITH ('connector' = 'print');
INSERT INTO out SELECT window_start, article_id, COUNT(*) AS n
FROM TABLE(TUMBLE(TABLE clicks, DESCRIPTOR(ts), INTERVAL '1' MINUTE))
GROUP BY window_start, window_end, article_id;"
            )
        };
        for (options, want) in [
            ("", None),
            (", 'scan.startup.mode' = 'latest-offset'", Some("latest")),
            (
                ", 'scan.startup.mode' = 'timestamp', \
                 'scan.startup.timestamp-millis' = '1700000000500'",
                Some("2023-11-14T22:13:20.500Z"),
            ),
        ] {
            let j = job(&table(options));
            assert_eq!(j.source.start.as_deref(), want, "{options}");
            assert_eq!(j.source.topic.as_deref(), Some("clicks"));
            crate::job::Job::from_config(j, "test.sql")
                .unwrap_or_else(|e| panic!("{options}: {e}"));
        }
        let j = job(&table("").replace("'clicks'", "'clicks;views'"));
        assert_eq!(j.source.topics, Some(vec!["clicks".into(), "views".into()]));
        let e = compile(&table(", 'scan.startup.mode' = 'timestamp'"), "t.sql")
            .err()
            .expect("an error");
        assert!(
            e.to_string().contains("'scan.startup.timestamp-millis'"),
            "{e}"
        );
    }

    #[test]
    fn the_issues_top_n_query_becomes_a_hop_job_with_top_k() {
        let j = job(&format!(
            "{CLICKS}
INSERT INTO trending
SELECT * FROM (
  SELECT window_start, window_end, article_id, COUNT(*) AS views,
         APPROX_COUNT_DISTINCT(user_id) AS readers,
         ROW_NUMBER() OVER (PARTITION BY window_start, window_end ORDER BY COUNT(*) DESC) AS rn
  FROM TABLE(HOP(TABLE clicks, DESCRIPTOR(ts), INTERVAL '1' MINUTE, INTERVAL '15' MINUTE))
  GROUP BY window_start, window_end, article_id
) WHERE rn <= 10;"
        ));
        assert_eq!(j.source.kind, "parquet");
        assert_eq!(j.time.column, "ts");
        assert_eq!(j.time.max_out_of_orderness, "5s");
        assert_eq!(j.window.kind, "hop");
        assert_eq!(j.window.size, "15m");
        assert_eq!(j.window.slide.as_deref(), Some("1m"));
        assert_eq!(j.key.columns, ["article_id"]);
        let aggs: Vec<(&str, &str)> = j
            .aggregate
            .iter()
            .map(|a| (a.name.as_str(), a.func.as_str()))
            .collect();
        assert_eq!(
            aggs,
            [("views", "count"), ("readers", "approx_count_distinct")]
        );
        let t = j.top_k.unwrap();
        assert_eq!((t.by.as_str(), t.k), ("views", 10));
        // Flink's column order and names: the row number where it was selected, as rn.
        let columns = j.output.expect("an [output] section").columns;
        assert_eq!(
            columns,
            [
                "window_start",
                "window_end",
                "article_id",
                "views",
                "readers",
                "rank AS rn"
            ]
        );
        assert_eq!(j.sink.path.as_deref(), Some("out/trending.parquet"));
    }

    #[test]
    fn named_arguments_sessions_filters_and_settings() {
        let j = job(&format!(
            "{CLICKS}
SET 'panes.time.allowed-lateness' = '30s';
SET 'execution.runtime-mode' = 'streaming';
INSERT INTO trending
SELECT window_start, window_end, article_id, COUNT(*) AS n, MAX(scroll_depth) AS deepest
FROM TABLE(SESSION(TABLE clicks PARTITION BY article_id, DESCRIPTOR(ts), INTERVAL '10' MINUTES))
WHERE scroll_depth > 0.5 AND user_id <> 7
GROUP BY window_start, window_end, article_id
HAVING COUNT(*) >= 3 OR MAX(scroll_depth) > 0.9"
        ));
        assert_eq!(j.window.kind, "session");
        assert_eq!(j.window.gap.as_deref(), Some("10m"));
        assert_eq!(j.time.allowed_lateness, "30s");
        assert_eq!(
            j.filter.events.as_deref(),
            Some("scroll_depth > 0.5 AND user_id <> 7")
        );
        assert_eq!(j.filter.windows.as_deref(), Some("n >= 3 OR deepest > 0.9"));
        let j = job(&format!(
            "{CLICKS} INSERT INTO trending SELECT window_start, window_end, SUM(scroll_depth) AS s
             FROM TABLE(CUMULATE(DATA => TABLE clicks, TIMECOL => DESCRIPTOR(ts), STEP => INTERVAL '1' MINUTE, SIZE => INTERVAL '1' HOUR))
             GROUP BY window_start, window_end"
        ));
        assert_eq!(
            (j.window.kind.as_str(), j.window.step.as_deref()),
            ("cumulate", Some("1m"))
        );
        assert!(j.key.columns.is_empty());
    }

    fn error(sql: &str) -> String {
        compile(sql, "q.sql").unwrap_err().to_string()
    }

    #[test]
    fn what_is_outside_the_subset_is_an_error_with_its_position() {
        let e = error(&format!(
            "{CLICKS}INSERT INTO trending SELECT window_start, window_end, COUNT(*) AS c
FROM TABLE(TUMBLE(TABLE clicks, DESCRIPTOR(ts), INTERVAL '1' MINUTE)) a
  JOIN clicks b ON a.article_id = b.article_id
GROUP BY window_start, window_end"
        ));
        assert!(
            e.contains("q.sql:8:") && e.contains("join is not supported"),
            "{e}"
        );
        let e = error(&format!(
            "{CLICKS}INSERT INTO trending SELECT window_start, window_end, MEDIAN(user_id) AS m
FROM TABLE(TUMBLE(TABLE clicks, DESCRIPTOR(ts), INTERVAL '1' MINUTE)) GROUP BY window_start, window_end"
        ));
        assert!(
            e.contains("q.sql:6:") && e.contains("MEDIAN is not supported"),
            "{e}"
        );
        let e = error("SELECT FROM WHERE");
        assert!(e.contains("q.sql:1:"), "{e}");
        let e = error(&format!(
            "{}INSERT INTO trending SELECT window_start, window_end, COUNT(*) AS c
FROM TABLE(TUMBLE(TABLE clicks, DESCRIPTOR(ts), INTERVAL '1' MINUTE)) GROUP BY window_start, window_end",
            CLICKS.replace(",\n  WATERMARK FOR ts AS ts - INTERVAL '5' SECOND", "")
        ));
        assert!(e.contains("has no WATERMARK"), "{e}");
        let e = error("DELETE FROM clicks");
        assert!(
            e.contains("DELETE FROM … is not supported") && e.contains("q.sql:1:1"),
            "{e}"
        );
    }

    /// Tokens of valid scripts, to build random and mutated ones from.
    const VOCABULARY: &[&str] = &[
        "SELECT",
        "FROM",
        "WHERE",
        "GROUP",
        "BY",
        "HAVING",
        "TABLE",
        "(",
        ")",
        ",",
        "*",
        "=",
        "<=",
        "AND",
        "OR",
        "NOT",
        "TUMBLE",
        "HOP",
        "SESSION",
        "CUMULATE",
        "DESCRIPTOR",
        "ts",
        "INTERVAL",
        "'1'",
        "MINUTE",
        "COUNT",
        "ROW_NUMBER",
        "OVER",
        "PARTITION",
        "WATERMARK",
        "FOR",
        "AS",
        "-",
        "CREATE",
        "WITH",
        "INSERT",
        "INTO",
        "SET",
        "EXPLAIN",
        "window_start",
        "window_end",
        "clicks",
        "trending",
        "rn",
        "10",
        "=>",
        ";",
        "'x'",
        "CASE",
        "WHEN",
        "END",
        "\n",
        "é",
        "DESC",
    ];

    fn check_never_panics(sql: &str) {
        match compile(sql, "fuzz.sql") {
            Ok(c) => {
                // A compiled job validates or is refused; it never panics either.
                let _ = Job::from_config(c.job, "fuzz.sql");
            }
            Err(Error::Sql { line, column, .. }) => assert!(line >= 1 && column >= 1),
            Err(other) => panic!("not an SQL error with a position: {other}"),
        }
    }

    use crate::job::Job;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        #[test]
        fn random_token_streams_compile_or_fail_with_a_position(
            picks in proptest::collection::vec(0..VOCABULARY.len(), 0..60),
        ) {
            let sql: Vec<&str> = picks.iter().map(|&i| VOCABULARY[i]).collect();
            check_never_panics(&sql.join(" ").replace("\\n", "\n"));
        }

        #[test]
        fn mutated_valid_scripts_compile_or_fail_with_a_position(
            cuts in proptest::collection::vec((0usize..2000, 0usize..40, 0..VOCABULARY.len()), 1..4),
        ) {
            let mut sql: Vec<char> = format!(
                "{CLICKS} INSERT INTO trending SELECT * FROM (SELECT window_start, window_end, \
                 article_id, COUNT(*) AS views, ROW_NUMBER() OVER (PARTITION BY window_start, \
                 window_end ORDER BY COUNT(*) DESC) AS rn FROM TABLE(HOP(TABLE clicks, \
                 DESCRIPTOR(ts), INTERVAL '1' MINUTE, INTERVAL '15' MINUTE)) WHERE user_id > 3 \
                 GROUP BY window_start, window_end, article_id HAVING COUNT(*) > 2) WHERE rn <= 10"
            )
            .chars()
            .collect();
            for (at, len, token) in cuts {
                let at = at % sql.len();
                let end = (at + len).min(sql.len());
                sql.splice(at..end, VOCABULARY[token].chars());
            }
            check_never_panics(&sql.into_iter().collect::<String>());
        }
    }
}
