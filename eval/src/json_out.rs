//! An ordered JSON value for the reports: keys stay in the order written (stats in
//! pycocotools' order, categories by id), which serde_json's map does not keep.

/// A JSON value whose objects keep insertion order.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Json {
    /// A number; NaN and the infinities are written as `null`.
    Num(f64),
    /// An integer.
    Int(i64),
    /// A string.
    Str(String),
    /// An array.
    Arr(Vec<Json>),
    /// An object.
    Obj(Vec<(String, Json)>),
}

impl Json {
    /// Pretty-printed with one-space indentation, like Python's `json.dump(indent=1)`.
    pub fn to_pretty(&self) -> String {
        let mut out = String::new();
        self.write(&mut out, 0);
        out.push('\n');
        out
    }

    fn write(&self, out: &mut String, depth: usize) {
        let pad = |out: &mut String, d: usize| {
            out.push('\n');
            for _ in 0..d {
                out.push(' ');
            }
        };
        match self {
            Json::Num(x) => {
                if x.is_finite() {
                    // serde_json prints the shortest representation that reads back exactly.
                    out.push_str(&serde_json::to_string(x).unwrap_or_else(|_| "null".into()));
                } else {
                    out.push_str("null");
                }
            }
            Json::Int(i) => out.push_str(&i.to_string()),
            Json::Str(s) => {
                out.push_str(&serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into()))
            }
            Json::Arr(items) => {
                if items.is_empty() {
                    out.push_str("[]");
                    return;
                }
                out.push('[');
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    pad(out, depth + 1);
                    v.write(out, depth + 1);
                }
                pad(out, depth);
                out.push(']');
            }
            Json::Obj(items) => {
                if items.is_empty() {
                    out.push_str("{}");
                    return;
                }
                out.push('{');
                for (i, (k, v)) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    pad(out, depth + 1);
                    out.push_str(&serde_json::to_string(k).unwrap_or_else(|_| "\"\"".into()));
                    out.push_str(": ");
                    v.write(out, depth + 1);
                }
                pad(out, depth);
                out.push('}');
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_order_and_writes_nan_as_null() {
        let j = Json::Obj(vec![
            ("b".into(), Json::Num(0.1)),
            (
                "a".into(),
                Json::Arr(vec![Json::Num(f64::NAN), Json::Int(3)]),
            ),
            ("s".into(), Json::Str("x\"".into())),
        ]);
        let s = j.to_pretty();
        assert_eq!(
            s,
            "{\n \"b\": 0.1,\n \"a\": [\n  null,\n  3\n ],\n \"s\": \"x\\\"\"\n}\n"
        );
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert!(v["a"][0].is_null());
    }
}
