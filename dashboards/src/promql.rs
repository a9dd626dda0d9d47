//! Just enough PromQL to know which metrics an expression reads, and through
//! which function each is read (`rate`, `histogram_quantile`, ...).
//!
//! A small lexer, not a full parser: string literals, label matchers
//! (`{...}`), range and subquery brackets (`[5m]`) and grouping label lists
//! (`by (...)`, `on (...)`, ...) are skipped; identifiers followed by `(` are
//! function calls, which must be PromQL's; keywords are dropped; every other
//! identifier is a metric name. Selecting metrics by `__name__` is refused,
//! since no check could then say what the expression reads.

use std::collections::BTreeSet;

/// A metric an expression reads.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct MetricRef {
    /// The series name as written (`..._bucket` included).
    pub name: String,
    /// The innermost function or aggregation it is an argument of.
    pub function: Option<String>,
}

/// Why an expression could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PromqlError {
    /// A call to something that is not a PromQL function or aggregation.
    #[error("{0:?} is not a PromQL function")]
    UnknownFunction(String),
    /// A selector that names its metric through `__name__` (or not at all).
    #[error("a selector without a literal metric name ({0}); name the metric")]
    UnnamedSelector(String),
    /// Brackets, braces, parentheses or quotes that do not close.
    #[error("unbalanced {0}")]
    Unbalanced(&'static str),
}

/// PromQL's aggregation operators (may take `by`/`without` before the
/// parenthesis).
pub const AGGREGATIONS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];

/// PromQL's functions.
pub const FUNCTIONS: &[&str] = &[
    "abs",
    "absent",
    "absent_over_time",
    "ceil",
    "changes",
    "clamp",
    "clamp_max",
    "clamp_min",
    "day_of_month",
    "day_of_week",
    "day_of_year",
    "days_in_month",
    "delta",
    "deriv",
    "exp",
    "floor",
    "histogram_avg",
    "histogram_count",
    "histogram_fraction",
    "histogram_quantile",
    "histogram_stddev",
    "histogram_stdvar",
    "histogram_sum",
    "hour",
    "idelta",
    "increase",
    "irate",
    "label_join",
    "label_replace",
    "ln",
    "log2",
    "log10",
    "minute",
    "month",
    "predict_linear",
    "rate",
    "resets",
    "round",
    "scalar",
    "sgn",
    "sort",
    "sort_desc",
    "sort_by_label",
    "sort_by_label_desc",
    "sqrt",
    "time",
    "timestamp",
    "vector",
    "year",
    "avg_over_time",
    "min_over_time",
    "max_over_time",
    "sum_over_time",
    "count_over_time",
    "quantile_over_time",
    "stddev_over_time",
    "stdvar_over_time",
    "last_over_time",
    "present_over_time",
    "acos",
    "acosh",
    "asin",
    "asinh",
    "atan",
    "atanh",
    "cos",
    "cosh",
    "sin",
    "sinh",
    "tan",
    "tanh",
    "deg",
    "pi",
    "rad",
];

/// Keywords followed by a parenthesised label list.
const LABEL_LIST_KEYWORDS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// Keywords and constants that are not metric names.
const KEYWORDS: &[&str] = &[
    "and", "or", "unless", "bool", "offset", "atan2", "inf", "nan", "start", "end",
];

/// The metrics `expr` reads, each with the function it is read through, in
/// order of appearance.
pub fn metric_refs(expr: &str) -> Result<Vec<MetricRef>, PromqlError> {
    let tokens = lex(expr)?;
    let mut out = Vec::new();
    // One entry per open parenthesis: the call it opened, if any.
    let mut stack: Vec<Option<String>> = Vec::new();
    let mut pending: Option<String> = None;
    let mut i = 0;
    while i < tokens.len() {
        match &tokens[i] {
            Token::Ident(word) => {
                let next = tokens.get(i + 1);
                let lower = word.to_ascii_lowercase();
                if LABEL_LIST_KEYWORDS.contains(&lower.as_str()) {
                    if next == Some(&Token::Open) {
                        i = closing(&tokens, i + 1)?;
                    }
                } else if KEYWORDS.contains(&lower.as_str()) {
                } else if AGGREGATIONS.contains(&word.as_str())
                    && matches!(next, Some(Token::Open | Token::Ident(_)))
                {
                    pending = Some(word.clone());
                } else if next == Some(&Token::Open) {
                    if !FUNCTIONS.contains(&word.as_str()) {
                        return Err(PromqlError::UnknownFunction(word.clone()));
                    }
                    pending = Some(word.clone());
                } else {
                    if let Some(Token::Matchers(m)) = next {
                        if m.contains("__name__") {
                            return Err(PromqlError::UnnamedSelector(format!("{word}{{{m}}}")));
                        }
                    }
                    out.push(MetricRef {
                        name: word.clone(),
                        function: stack.iter().rev().find_map(Clone::clone),
                    });
                }
            }
            Token::Matchers(m) => {
                let after_name = i > 0 && matches!(tokens[i - 1], Token::Ident(_));
                if !after_name {
                    return Err(PromqlError::UnnamedSelector(format!("{{{m}}}")));
                }
            }
            Token::Open => stack.push(pending.take()),
            Token::Close => {
                stack.pop().ok_or(PromqlError::Unbalanced("parentheses"))?;
            }
            Token::Other => {}
        }
        i += 1;
    }
    if !stack.is_empty() {
        return Err(PromqlError::Unbalanced("parentheses"));
    }
    Ok(out)
}

/// The metric names `expr` reads.
pub fn metric_names(expr: &str) -> Result<BTreeSet<String>, PromqlError> {
    Ok(metric_refs(expr)?.into_iter().map(|r| r.name).collect())
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Ident(String),
    /// The text between `{` and `}`.
    Matchers(String),
    Open,
    Close,
    /// Numbers, durations, strings, operators, brackets' content, variables.
    Other,
}

/// The index of the parenthesis closing the one at `open`.
fn closing(tokens: &[Token], open: usize) -> Result<usize, PromqlError> {
    let mut depth = 0usize;
    for (j, t) in tokens.iter().enumerate().skip(open) {
        match t {
            Token::Open => depth += 1,
            Token::Close => {
                depth -= 1;
                if depth == 0 {
                    return Ok(j);
                }
            }
            _ => {}
        }
    }
    Err(PromqlError::Unbalanced("parentheses"))
}

fn lex(expr: &str) -> Result<Vec<Token>, PromqlError> {
    let chars: Vec<char> = expr.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    let ident_start = |c: char| c.is_ascii_alphabetic() || c == '_' || c == ':';
    let ident_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '#' {
            // A comment runs to the end of the line.
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if matches!(c, '"' | '\'' | '`') {
            i = skip_string(&chars, i)?;
            tokens.push(Token::Other);
        } else if c == '{' {
            let start = i + 1;
            i = start;
            loop {
                match chars.get(i) {
                    None => return Err(PromqlError::Unbalanced("braces")),
                    Some('}') => break,
                    Some('"' | '\'' | '`') => i = skip_string(&chars, i)?,
                    Some(_) => i += 1,
                }
            }
            tokens.push(Token::Matchers(chars[start..i].iter().collect()));
            i += 1;
        } else if c == '[' {
            while chars.get(i) != Some(&']') {
                if i >= chars.len() {
                    return Err(PromqlError::Unbalanced("brackets"));
                }
                i += 1;
            }
            i += 1;
            tokens.push(Token::Other);
        } else if c == '(' {
            tokens.push(Token::Open);
            i += 1;
        } else if c == ')' {
            tokens.push(Token::Close);
            i += 1;
        } else if c == '$' {
            // A Grafana variable: `$name` or `${...}`.
            i += 1;
            if chars.get(i) == Some(&'{') {
                while i < chars.len() && chars[i] != '}' {
                    i += 1;
                }
                i += 1;
            } else {
                while i < chars.len() && ident_char(chars[i]) {
                    i += 1;
                }
            }
            tokens.push(Token::Other);
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            // Numbers and durations: 0.99, 1e-3, 5m, 1h30m, 0x1f.
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                let exponent =
                    matches!(chars[i], 'e' | 'E') && matches!(chars.get(i + 1), Some('+' | '-'));
                i += if exponent { 2 } else { 1 };
            }
            tokens.push(Token::Other);
        } else if ident_start(c) {
            let start = i;
            while i < chars.len() && ident_char(chars[i]) {
                i += 1;
            }
            tokens.push(Token::Ident(chars[start..i].iter().collect()));
        } else {
            tokens.push(Token::Other);
            i += 1;
        }
    }
    Ok(tokens)
}

/// The index after the string literal starting at `start`.
fn skip_string(chars: &[char], start: usize) -> Result<usize, PromqlError> {
    let quote = chars[start];
    let mut i = start + 1;
    while i < chars.len() {
        match chars[i] {
            '\\' if quote != '`' => i += 2,
            c if c == quote => return Ok(i + 1),
            _ => i += 1,
        }
    }
    Err(PromqlError::Unbalanced("quotes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs(expr: &str) -> Vec<(String, Option<String>)> {
        metric_refs(expr)
            .unwrap_or_else(|e| panic!("{expr}: {e}"))
            .into_iter()
            .map(|r| (r.name, r.function))
            .collect()
    }

    fn r(name: &str, function: Option<&str>) -> (String, Option<String>) {
        (name.to_string(), function.map(String::from))
    }

    #[test]
    fn a_histogram_quantile_reads_the_bucket_series_through_rate() {
        let expr = r#"histogram_quantile(0.99, sum by (le, kind) (rate(portico_node_agent_sync_duration_seconds_bucket{instance=~"$instance"}[$__rate_interval])))"#;
        assert_eq!(
            refs(expr),
            [r(
                "portico_node_agent_sync_duration_seconds_bucket",
                Some("rate")
            )]
        );
    }

    #[test]
    fn labels_strings_durations_keywords_and_functions_are_not_metrics() {
        let expr = r#"sum without (port) (increase(a_total{service=~"x{1}|y", le="0.5"}[5m:1m] offset 1h)) / on (service) group_left (reason) b > bool 0.5
            or vector(0) and time() - c_seconds unless count(d == 1e-3) # trailing comment e_total"#;
        assert_eq!(
            refs(expr),
            [
                r("a_total", Some("increase")),
                r("b", None),
                r("c_seconds", None),
                r("d", Some("count")),
            ]
        );
    }

    #[test]
    fn an_aggregation_with_its_grouping_after_the_parenthesis() {
        assert_eq!(
            refs("max(portico_edge_listeners) by (instance)"),
            [r("portico_edge_listeners", Some("max"))]
        );
    }

    #[test]
    fn unnamed_selectors_and_unknown_functions_are_refused() {
        assert_eq!(
            metric_refs(r#"{__name__=~"portico_.*"}"#),
            Err(PromqlError::UnnamedSelector(
                r#"{__name__=~"portico_.*"}"#.into()
            ))
        );
        assert_eq!(
            metric_refs("rat(x_total[5m])"),
            Err(PromqlError::UnknownFunction("rat".into()))
        );
        assert_eq!(
            metric_refs("sum(rate(x[5m])"),
            Err(PromqlError::Unbalanced("parentheses"))
        );
        assert_eq!(
            metric_refs(r#"x{a="b}"#),
            Err(PromqlError::Unbalanced("quotes"))
        );
    }
}
