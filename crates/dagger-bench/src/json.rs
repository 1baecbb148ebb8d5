//! One-line JSON objects, written by hand (the values are numbers and plain strings).

use std::fmt::Write;

/// A JSON object being built field by field.
#[derive(Default)]
pub struct Line(Vec<(String, String)>);

impl Line {
    /// A line of `scenario` run by `system`, with this build's global allocator.
    pub fn new(scenario: &str, system: &str) -> Self {
        Line::default()
            .str("scenario", scenario)
            .str("system", system)
            .str("allocator", crate::ALLOCATOR)
    }

    pub fn str(mut self, key: &str, v: &str) -> Self {
        let escaped = v.replace('\\', "\\\\").replace('"', "\\\"");
        self.0.push((key.to_string(), format!("\"{escaped}\"")));
        self
    }

    pub fn num(mut self, key: &str, v: f64) -> Self {
        let text = if v.is_finite() {
            if v == v.trunc() && v.abs() < 1e15 {
                format!("{}", v as i64)
            } else {
                format!("{v:.6e}")
            }
        } else {
            "null".to_string()
        };
        self.0.push((key.to_string(), text));
        self
    }

    pub fn int(self, key: &str, v: u64) -> Self {
        self.num(key, v as f64)
    }

    pub fn bool(mut self, key: &str, v: bool) -> Self {
        self.0.push((key.to_string(), v.to_string()));
        self
    }

    pub fn nums(mut self, key: &str, vs: &[f64]) -> Self {
        let inner: Vec<String> = vs.iter().map(|v| format!("{v:.6e}")).collect();
        self.0
            .push((key.to_string(), format!("[{}]", inner.join(","))));
        self
    }

    pub fn print(self) {
        let mut out = String::from("{");
        for (i, (k, v)) in self.0.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "\"{k}\":{v}");
        }
        out.push('}');
        println!("{out}");
    }
}
