//! Small-cell protection: counts under a deployment's threshold are shown as `"< N"` to callers
//! who do not read the count's perimeters nominatively, so that a count cannot single out a
//! handful of patients. Zero is shown as is (it singles out nobody); so are the ratios of stage
//! details and the data version.

use serde_json::Value;

/// The protection of one deployment; a threshold of 0 or 1 turns it off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SmallCells {
    pub threshold: i64,
}

/// Count fields of count and cohort views and of their websocket messages.
const COUNT_FIELDS: [&str; 6] = [
    "measure",
    "measure_min",
    "measure_max",
    "result_size",
    "group.count",
    "patients_count",
];

impl SmallCells {
    pub fn new(threshold: i64) -> Self {
        Self { threshold }
    }

    pub fn is_on(&self) -> bool {
        self.threshold > 1
    }

    /// What a count is shown as: itself, or `"< N"` when it is small.
    pub fn shown(&self, n: i64) -> Value {
        if self.is_on() && n > 0 && n < self.threshold {
            Value::String(format!("< {}", self.threshold))
        } else {
            Value::from(n)
        }
    }

    fn mask_number(&self, v: &mut Value) {
        let n = match v {
            Value::Number(n) => n.as_i64(),
            Value::String(s) => s.trim().parse::<i64>().ok(),
            _ => None,
        };
        if let Some(n) = n
            && self.is_on()
            && n > 0
            && n < self.threshold
        {
            *v = self.shown(n);
        }
    }

    /// Whether `v` holds a count that [`Self::mask`] would hide.
    pub fn has_small(&self, v: &Value) -> bool {
        if !self.is_on() {
            return false;
        }
        let mut masked = v.clone();
        self.mask(&mut masked);
        masked != *v
    }

    /// Masks the counts of a view or message, wherever they sit: the count fields, and in
    /// `extra` the stage counts (`criteria_count_<id>`) and per-perimeter counts.
    pub fn mask(&self, v: &mut Value) {
        if !self.is_on() {
            return;
        }
        match v {
            Value::Object(map) => {
                for (key, value) in map.iter_mut() {
                    if COUNT_FIELDS.contains(&key.as_str()) {
                        self.mask_number(value);
                    } else if key == "extra" {
                        if let Value::Object(extra) = value {
                            for (k, x) in extra.iter_mut() {
                                let is_count = k.starts_with("criteria_count_")
                                    || k.chars().all(|c| c.is_ascii_digit());
                                if is_count {
                                    self.mask_number(x);
                                }
                            }
                        }
                    } else {
                        self.mask(value);
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|i| self.mask(i)),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn small_counts_become_a_bound_and_the_rest_stays() {
        let cells = SmallCells::new(10);
        let mut v = json!({"measure": 7, "measure_min": 0, "measure_max": 12, "extra": {
            "criteria_count_1": "3", "criteria_ratio_1": "0.5", "data_version": "2", "4": "9", "5": "10"},
            "nested": [{"result_size": 1}]});
        cells.mask(&mut v);
        assert_eq!(
            v,
            json!({"measure": "< 10", "measure_min": 0, "measure_max": 12, "extra": {
                "criteria_count_1": "< 10", "criteria_ratio_1": "0.5", "data_version": "2", "4": "< 10", "5": "10"},
                "nested": [{"result_size": "< 10"}]})
        );
        let mut off = json!({"measure": 3});
        SmallCells::new(0).mask(&mut off);
        assert_eq!(off, json!({"measure": 3}));
    }
}
