//! Figures, their baselines and goals; the summary table in Markdown and JSON.

use std::fmt::Write as _;
use std::time::Duration;

/// One figure of the summary.
#[derive(Debug, Clone)]
pub struct Row {
    pub case: String,
    pub figure: String,
    pub value: f64,
    pub unit: &'static str,
    /// The baseline measured in the same run, with what it is.
    pub baseline: Option<(String, f64)>,
    /// A goal from the issues, and whether the figure meets it.
    pub goal: Option<Goal>,
}

#[derive(Debug, Clone)]
pub struct Goal {
    pub text: String,
    pub met: bool,
}

impl Row {
    pub fn new(case: &str, figure: impl Into<String>, value: f64, unit: &'static str) -> Row {
        Row {
            case: case.to_string(),
            figure: figure.into(),
            value,
            unit,
            baseline: None,
            goal: None,
        }
    }

    pub fn baseline(mut self, what: impl Into<String>, value: f64) -> Row {
        self.baseline = Some((what.into(), value));
        self
    }

    pub fn ratio(&self) -> Option<f64> {
        self.baseline
            .as_ref()
            .filter(|(_, b)| *b > 0.0)
            .map(|(_, b)| self.value / b)
    }

    /// Goal: ratio to the baseline at most `max`.
    pub fn goal_ratio(mut self, max: f64) -> Row {
        let met = self.ratio().is_some_and(|r| r <= max);
        self.goal = Some(Goal {
            text: format!("<= {max}x"),
            met,
        });
        self
    }

    /// Goal: ratio to the baseline at least `min` (higher is better).
    pub fn goal_ratio_min(mut self, min: f64) -> Row {
        let met = self.ratio().is_some_and(|r| r >= min);
        self.goal = Some(Goal {
            text: format!(">= {min}x"),
            met,
        });
        self
    }

    /// Goal: the value itself at most `max` (in the row's unit).
    pub fn goal_max(mut self, max: f64) -> Row {
        self.goal = Some(Goal {
            text: format!("<= {max} {}", self.unit),
            met: self.value <= max,
        });
        self
    }

    /// Goal: the value itself under `max`.
    pub fn goal_under(mut self, max: f64) -> Row {
        self.goal = Some(Goal {
            text: format!("< {max} {}", self.unit),
            met: self.value < max,
        });
        self
    }
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The `q` quantile (0..=1) of `xs`, nearest rank. NaN when empty.
pub fn quantile(xs: &[f64], q: f64) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    let mut v = xs.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = (q * v.len() as f64).ceil().max(1.0) as usize;
    v[rank.min(v.len()) - 1]
}

pub fn median(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    let mut v = xs.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn num(x: f64) -> String {
    if x.is_nan() {
        "-".into()
    } else if x.abs() >= 100.0 {
        format!("{x:.0}")
    } else if x.abs() >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

/// The summary as a Markdown table.
pub fn markdown(rows: &[Row]) -> String {
    let mut s = String::new();
    s.push_str("| case | figure | value | baseline | ratio | goal | met |\n");
    s.push_str("|---|---|---:|---|---:|---|---|\n");
    for r in rows {
        let baseline = r
            .baseline
            .as_ref()
            .map(|(what, b)| format!("{} {} ({what})", num(*b), r.unit))
            .unwrap_or_default();
        let ratio = r.ratio().map(|x| format!("{x:.2}x")).unwrap_or_default();
        let (goal, met) = match &r.goal {
            Some(g) => (
                g.text.clone(),
                if g.met { "yes" } else { "**NO**" }.to_string(),
            ),
            None => (String::new(), String::new()),
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} {} | {baseline} | {ratio} | {goal} | {met} |",
            r.case,
            r.figure,
            num(r.value),
            r.unit
        );
    }
    s
}

pub fn json(rows: &[Row]) -> serde_json::Value {
    serde_json::Value::Array(
        rows.iter()
            .map(|r| {
                serde_json::json!({
                    "case": r.case,
                    "figure": r.figure,
                    "value": r.value,
                    "unit": r.unit,
                    "baseline": r.baseline.as_ref().map(|(w, b)| serde_json::json!({"what": w, "value": b})),
                    "ratio": r.ratio(),
                    "goal": r.goal.as_ref().map(|g| serde_json::json!({"text": g.text, "met": g.met})),
                })
            })
            .collect(),
    )
}

/// Replaces the text between `<!-- bench:results:begin -->` and
/// `<!-- bench:results:end -->` in `doc` with `section`.
pub fn splice(doc: &str, section: &str) -> Option<String> {
    const BEGIN: &str = "<!-- bench:results:begin -->";
    const END: &str = "<!-- bench:results:end -->";
    let b = doc.find(BEGIN)? + BEGIN.len();
    let e = doc[b..].find(END)? + b;
    Some(format!("{}\n{}{}", &doc[..b], section, &doc[e..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles() {
        let xs: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&xs, 0.5), 50.0);
        assert_eq!(quantile(&xs, 0.99), 99.0);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }

    #[test]
    fn goals() {
        let r = Row::new("1", "x", 8.0, "ms")
            .baseline("runc", 10.0)
            .goal_ratio(0.8);
        assert!(r.goal.unwrap().met);
        let r = Row::new("1", "x", 9.0, "ms")
            .baseline("runc", 10.0)
            .goal_ratio(0.8);
        assert!(!r.goal.unwrap().met);
        let r = Row::new("7", "x", 4.0, "req/s")
            .baseline("native", 10.0)
            .goal_ratio_min(0.4);
        assert!(r.goal.unwrap().met);
        let r = Row::new("7", "x", 3.9, "req/s")
            .baseline("native", 10.0)
            .goal_ratio_min(0.4);
        assert!(!r.goal.unwrap().met);
    }

    #[test]
    fn splicing() {
        let doc = "a\n<!-- bench:results:begin -->\nold\n<!-- bench:results:end -->\nb\n";
        assert_eq!(
            splice(doc, "new\n").unwrap(),
            "a\n<!-- bench:results:begin -->\nnew\n<!-- bench:results:end -->\nb\n"
        );
    }
}
