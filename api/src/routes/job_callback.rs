//! The body of a job-result callback: the QueryExecutor (counts, cohorts, feasibility studies)
//! and the Solr ETL (large cohorts) `PATCH` the object with upstream's fields. They are read
//! leniently, as upstream's serializers do: numbers may come as strings, the group as
//! `group.id`/`group.count` or `group_id`/`count`.

use domain::job::JobReport;
use serde::Deserialize;
use serde_json::Value;

/// What a callback reports.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
pub(crate) struct JobCallback {
    /// The job's status (`finished`, `failed`, `long_pending`, …; any case).
    #[schema(value_type = Option<String>)]
    request_job_status: Option<Value>,
    /// Alternative name of the status.
    #[schema(value_type = Option<String>)]
    status: Option<Value>,
    /// Number of patients (an integer, or its decimal text).
    #[schema(value_type = Option<i64>)]
    count: Option<Value>,
    #[serde(rename = "group.count")]
    #[schema(value_type = Option<i64>)]
    group_count: Option<Value>,
    /// Lower bound of a global estimate.
    #[schema(value_type = Option<i64>)]
    minimum: Option<Value>,
    /// Upper bound of a global estimate.
    #[schema(value_type = Option<i64>)]
    maximum: Option<Value>,
    /// Per-criterion details and ratios, kept as sent.
    #[schema(value_type = Option<Object>)]
    extra: Option<Value>,
    #[serde(rename = "group.id")]
    #[schema(value_type = Option<String>)]
    group_dot_id: Option<Value>,
    /// The patient group of a created cohort.
    #[schema(value_type = Option<String>)]
    group_id: Option<Value>,
    /// Why the job failed.
    #[schema(value_type = Option<String>)]
    message: Option<Value>,
    #[schema(value_type = Option<String>)]
    request_job_fail_msg: Option<Value>,
}

fn text(v: &Option<Value>) -> Option<String> {
    match v.as_ref()? {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

fn number(v: &Option<Value>) -> Option<i64> {
    match v.as_ref()? {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

impl JobCallback {
    /// Reads a callback body; anything but an object reports nothing (and is refused as an
    /// invalid status).
    pub(crate) fn read(body: &Value) -> Self {
        serde_json::from_value(body.clone()).unwrap_or_default()
    }

    /// The report the services settle the job with.
    pub(crate) fn report(&self) -> JobReport {
        let extra = match &self.extra {
            Some(Value::Object(map)) => map.clone().into_iter().collect(),
            _ => Default::default(),
        };
        JobReport {
            status: text(&self.request_job_status)
                .or_else(|| text(&self.status))
                .unwrap_or_default(),
            count: number(&self.count).or_else(|| number(&self.group_count)),
            minimum: number(&self.minimum),
            maximum: number(&self.maximum),
            extra,
            group_id: text(&self.group_dot_id).or_else(|| text(&self.group_id)),
            message: text(&self.message).or_else(|| text(&self.request_job_fail_msg)),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn callbacks_accept_numbers_as_strings_and_both_group_spellings() {
        let r = JobCallback::read(&json!({
            "request_job_status": "FINISHED", "group.id": "123", "group.count": "456",
            "extra": {"criteria_count_1": "10"}
        }))
        .report();
        assert_eq!(r.status, "FINISHED");
        assert_eq!(r.group_id.as_deref(), Some("123"));
        assert_eq!(r.count, Some(456));
        assert_eq!(r.extra["criteria_count_1"], json!("10"));
        let r = JobCallback::read(&json!({"status": "failed", "group_id": 9, "count": 7,
                                          "minimum": "1", "request_job_fail_msg": "boom"}))
        .report();
        assert_eq!((r.count, r.minimum), (Some(7), Some(1)));
        assert_eq!(r.group_id.as_deref(), Some("9"));
        assert_eq!(r.message.as_deref(), Some("boom"));
        assert_eq!(JobCallback::read(&json!([1, 2])).report().status, "");
    }
}
