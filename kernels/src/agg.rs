//! Aggregate functions: what a job asks for, the value domains they run on, and the
//! scalar update/merge rules that every backend shares (so panes combine exactly).

use std::fmt;

/// An aggregate function as a job names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AggFn {
    /// `count`: rows in the group (no input column).
    CountRows,
    /// `count(col)`: non-null values of the column.
    Count,
    /// `sum(col)`.
    Sum,
    /// `min(col)`; for floats NaN is larger than every number (as in PostgreSQL).
    Min,
    /// `max(col)`; for floats NaN is larger than every number (as in PostgreSQL).
    Max,
    /// `avg(col)` as a float.
    Avg,
    /// Sample variance (n - 1 in the denominator).
    VarSamp,
    /// Population variance.
    VarPop,
    /// Sample standard deviation.
    StddevSamp,
    /// Population standard deviation.
    StddevPop,
    /// First non-null value by event time (ties: the earlier arrival).
    First,
    /// Last non-null value by event time (ties: the later arrival).
    Last,
    /// Approximate number of distinct non-null values: a HyperLogLog sketch (see
    /// [`Distinct`]), merged across panes.
    ApproxCountDistinct,
}

impl AggFn {
    /// Every function with the name a job file uses for it.
    pub const ALL: [(&'static str, AggFn); 13] = [
        ("count", AggFn::CountRows),
        ("count_col", AggFn::Count),
        ("sum", AggFn::Sum),
        ("min", AggFn::Min),
        ("max", AggFn::Max),
        ("avg", AggFn::Avg),
        ("var_samp", AggFn::VarSamp),
        ("var_pop", AggFn::VarPop),
        ("stddev_samp", AggFn::StddevSamp),
        ("stddev_pop", AggFn::StddevPop),
        ("first", AggFn::First),
        ("last", AggFn::Last),
        ("approx_count_distinct", AggFn::ApproxCountDistinct),
    ];

    /// Looks a function up by its job-file name (`count` with a column means `count(col)`).
    pub fn parse(name: &str, has_column: bool) -> Option<AggFn> {
        match (name, has_column) {
            ("count", true) => Some(AggFn::Count),
            ("count_col", _) => None,
            _ => Self::ALL.iter().find(|(n, _)| *n == name).map(|(_, f)| *f),
        }
    }

    /// Whether the function reads an input column.
    pub fn needs_column(self) -> bool {
        self != AggFn::CountRows
    }

    /// The domain of the result, given the domain of the input column.
    pub fn output(self, input: Domain) -> OutType {
        match self {
            AggFn::CountRows | AggFn::Count | AggFn::ApproxCountDistinct => OutType::Count,
            AggFn::Sum | AggFn::Min | AggFn::Max | AggFn::First | AggFn::Last => match input {
                Domain::I64 => OutType::I64,
                Domain::F64 => OutType::F64,
            },
            _ => OutType::F64,
        }
    }
}

impl fmt::Display for AggFn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = Self::ALL
            .iter()
            .find(|(_, g)| g == self)
            .map_or("?", |(n, _)| n);
        f.write_str(if *self == AggFn::Count { "count" } else { name })
    }
}

/// The value domain a numeric input column is read in: integers exactly as `i64`
/// (sums wrap on overflow, as Java's and Flink's BIGINT do), everything else as `f64`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Domain {
    /// Signed 64-bit integers.
    I64,
    /// 64-bit floats.
    F64,
}

/// The type of a result column.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutType {
    /// A count: `i64`, never null.
    Count,
    /// An `i64`, null when the group had no non-null input.
    I64,
    /// An `f64`, null when undefined (no input, or a sample statistic of one value).
    F64,
}

/// One aggregate of a job: the function, the index of its input column in
/// [`crate::Events::columns`] and that column's domain (both ignored for `count`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AggSpec {
    /// The function.
    pub func: AggFn,
    /// Index of the input column, if the function reads one.
    pub column: usize,
    /// Domain of the input column.
    pub domain: Domain,
}

impl AggSpec {
    /// The type of this aggregate's result column.
    pub fn output(&self) -> OutType {
        self.func.output(self.domain)
    }
}

/// A number the kernels aggregate: `i64` or `f64`.
pub trait Value: Copy + Send + Sync + PartialEq + fmt::Debug + 'static {
    /// The domain this type belongs to.
    const DOMAIN: Domain;
    /// Identity of `min`: not less than any value.
    const MIN_IDENTITY: Self;
    /// Identity of `max`: not greater than any value.
    const MAX_IDENTITY: Self;
    /// Identity of `sum`.
    const ZERO: Self;
    /// Addition (wrapping for integers).
    fn add(self, other: Self) -> Self;
    /// The total order of min/max: for floats NaN is the largest value.
    fn less(self, other: Self) -> bool;
    /// The value as a float (for averages and moments).
    fn to_f64(self) -> f64;
    /// Adds the value to a distinct-count sketch.
    fn add_to(self, sketch: &mut Distinct);
    /// The smaller of two values under [`Value::less`].
    #[inline(always)]
    fn min_of(self, other: Self) -> Self {
        if other.less(self) { other } else { self }
    }
    /// The larger of two values under [`Value::less`].
    #[inline(always)]
    fn max_of(self, other: Self) -> Self {
        if self.less(other) { other } else { self }
    }
}

impl Value for i64 {
    const DOMAIN: Domain = Domain::I64;
    const MIN_IDENTITY: Self = i64::MAX;
    const MAX_IDENTITY: Self = i64::MIN;
    const ZERO: Self = 0;
    #[inline(always)]
    fn add(self, other: Self) -> Self {
        self.wrapping_add(other)
    }
    #[inline(always)]
    fn less(self, other: Self) -> bool {
        self < other
    }
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self as f64
    }
    #[inline(always)]
    fn add_to(self, sketch: &mut Distinct) {
        sketch.push_i64(self)
    }
}

impl Value for f64 {
    const DOMAIN: Domain = Domain::F64;
    const MIN_IDENTITY: Self = f64::NAN;
    const MAX_IDENTITY: Self = f64::NEG_INFINITY;
    const ZERO: Self = 0.0;
    #[inline(always)]
    fn add(self, other: Self) -> Self {
        self + other
    }
    #[inline(always)]
    fn less(self, other: Self) -> bool {
        self < other || (other.is_nan() && !self.is_nan())
    }
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self
    }
    #[inline(always)]
    fn add_to(self, sketch: &mut Distinct) {
        sketch.push_f64(self)
    }
    /// Branch-free: `f64::min` already returns the number when one side is NaN.
    #[inline(always)]
    fn min_of(self, other: Self) -> Self {
        self.min(other)
    }
    /// Branch-free: NaN wins, otherwise `f64::max`.
    #[inline(always)]
    fn max_of(self, other: Self) -> Self {
        let m = self.max(other);
        if self.is_nan() | other.is_nan() {
            f64::NAN
        } else {
            m
        }
    }
}

/// `min` under [`Value::less`].
#[inline(always)]
pub fn min<T: Value>(a: T, b: T) -> T {
    a.min_of(b)
}

/// `max` under [`Value::less`].
#[inline(always)]
pub fn max<T: Value>(a: T, b: T) -> T {
    a.max_of(b)
}

pub use crate::distinct::Distinct;

/// Running count, mean and sum of squared deviations (Welford), merged with Chan's formula.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Moments {
    /// Number of values.
    pub n: f64,
    /// Their mean.
    pub mean: f64,
    /// Sum of squared deviations from the mean.
    pub m2: f64,
}

impl Moments {
    /// Adds one value (Welford's update).
    #[inline(always)]
    pub fn push(&mut self, x: f64) {
        self.n += 1.0;
        let d = x - self.mean;
        self.mean += d / self.n;
        self.m2 += d * (x - self.mean);
    }

    /// Merges another partial state into this one (Chan et al.).
    #[inline(always)]
    pub fn merge(&mut self, o: &Moments) {
        if o.n == 0.0 {
            return;
        }
        if self.n == 0.0 {
            *self = *o;
            return;
        }
        let n = self.n + o.n;
        let d = o.mean - self.mean;
        self.mean += d * (o.n / n);
        self.m2 += o.m2 + d * d * (self.n * o.n / n);
        self.n = n;
    }

    /// Evaluates a variance or standard deviation; `None` where undefined.
    pub fn finish(&self, func: AggFn) -> Option<f64> {
        let var = match func {
            AggFn::VarSamp | AggFn::StddevSamp if self.n > 1.0 => self.m2 / (self.n - 1.0),
            AggFn::VarPop | AggFn::StddevPop if self.n > 0.0 => self.m2 / self.n,
            _ => return None,
        };
        // Rounding can leave m2 a hair below zero; a variance never is.
        let var = if var < 0.0 { 0.0 } else { var };
        Some(match func {
            AggFn::StddevSamp | AggFn::StddevPop => var.sqrt(),
            _ => var,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nan_is_the_largest_float() {
        assert!(max(1.0, f64::NAN).is_nan());
        assert_eq!(min(f64::NAN, 1.0), 1.0);
        assert_eq!(min(f64::MIN_IDENTITY, -3.0), -3.0);
        assert_eq!(max(f64::MAX_IDENTITY, -3.0), -3.0);
        assert_eq!(min(i64::MIN_IDENTITY, 5), 5);
    }

    #[test]
    fn chan_merge_matches_one_pass_and_two_pass_variance() {
        let xs: Vec<f64> = (0..1000)
            .map(|i| ((i * 7919) % 1000) as f64 * 0.37 - 50.0)
            .collect();
        let mut whole = Moments::default();
        xs.iter().for_each(|&x| whole.push(x));
        let (mut a, mut b) = (Moments::default(), Moments::default());
        xs[..333].iter().for_each(|&x| a.push(x));
        xs[333..].iter().for_each(|&x| b.push(x));
        a.merge(&b);
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (xs.len() - 1) as f64;
        for m in [whole, a] {
            let got = m.finish(AggFn::VarSamp).unwrap();
            assert!((got - var).abs() <= 1e-12 * var, "{got} vs {var}");
        }
        assert_eq!(Moments::default().finish(AggFn::VarPop), None);
        let mut one = Moments::default();
        one.push(4.0);
        assert_eq!(one.finish(AggFn::VarSamp), None);
        assert_eq!(one.finish(AggFn::StddevPop), Some(0.0));
    }

    #[test]
    fn parses_job_names() {
        assert_eq!(AggFn::parse("count", false), Some(AggFn::CountRows));
        assert_eq!(AggFn::parse("count", true), Some(AggFn::Count));
        assert_eq!(AggFn::parse("stddev_pop", true), Some(AggFn::StddevPop));
        assert_eq!(AggFn::parse("median", true), None);
        assert_eq!(AggFn::Count.to_string(), "count");
    }
}
