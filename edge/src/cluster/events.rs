//! The Events the edge records on its Services (`events.k8s.io/v1`), as
//! plain data: what one looks like, how long its note may be, which
//! refusals of the API server are final, and which Events an earlier run
//! already recorded. Pure; [`super::watch`] posts them.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;

use super::reconcile::Condition;

/// The longest `note` the API server accepts, in bytes (events.k8s.io/v1
/// validation's `NoteLengthLimit`).
pub const NOTE_LIMIT: usize = 1024;

/// What ends a note that had to be cut.
pub const TRUNCATED: &str = " ... (truncated)";

/// The longest `reportingInstance` the API server accepts, in bytes.
pub const INSTANCE_LIMIT: usize = 128;

/// What the edge does (`action`) when it records an Event.
pub const ACTION: &str = "EnsureLoadBalancer";

/// `note` cut to [`NOTE_LIMIT`] bytes (on a character boundary) with the
/// [`TRUNCATED`] marker when it is longer: a longer note would have the
/// whole Event refused.
pub fn truncate_note(note: &str) -> String {
    if note.len() <= NOTE_LIMIT {
        return note.to_string();
    }
    format!("{}{TRUNCATED}", cut(note, NOTE_LIMIT - TRUNCATED.len()))
}

/// The longest prefix of `s` of at most `limit` bytes.
fn cut(s: &str, limit: usize) -> &str {
    let mut end = s.len().min(limit);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The Event telling condition `c` of the Service `regarding`, reported by
/// `controller` on `instance`, at `now`.
pub fn event(
    c: &Condition,
    regarding: ObjectReference,
    controller: &str,
    instance: &str,
    now: Timestamp,
) -> Event {
    let name = regarding.name.clone().unwrap_or_default();
    Event {
        metadata: ObjectMeta {
            // Unique per Service and moment, as kube's recorders name them.
            name: Some(format!("{name}.{:x}", now.as_nanosecond())),
            namespace: regarding.namespace.clone(),
            ..ObjectMeta::default()
        },
        action: Some(ACTION.to_string()),
        reason: Some(c.reason.to_string()),
        note: Some(truncate_note(&c.message)),
        type_: Some(if c.warning { "Warning" } else { "Normal" }.to_string()),
        event_time: Some(MicroTime(now)),
        reporting_controller: Some(controller.to_string()),
        reporting_instance: Some(cut(instance, INSTANCE_LIMIT).to_string()),
        regarding: Some(regarding),
        ..Event::default()
    }
}

/// Whether an API server's refusal of an Event is final, so that posting
/// it again cannot help: a namespace being deleted or not allowing it
/// (403), a namespace that is gone (404), an Event it finds invalid (400,
/// 422), one that already exists (409). Anything else (429, 5xx, no
/// answer) is worth another try.
pub fn refusal_is_final(code: u16) -> bool {
    matches!(code, 400 | 403 | 404 | 409 | 422)
}

/// One Event as already recorded: the object's UID, the reason and the
/// note. A condition whose Event is already there is not told again.
pub type Told = (String, String, String);

/// The Events of `events` that `controller` recorded, as [`Told`] keys.
pub fn told_by(events: &[Event], controller: &str) -> BTreeSet<Told> {
    events
        .iter()
        .filter(|e| e.reporting_controller.as_deref() == Some(controller))
        .filter_map(|e| {
            Some((
                e.regarding.as_ref()?.uid.clone()?,
                e.reason.clone()?,
                e.note.clone().unwrap_or_default(),
            ))
        })
        .collect()
}

/// The [`Told`] key of condition `c` on the object with `uid`.
pub fn told_key(uid: &str, c: &Condition) -> Told {
    (
        uid.to_string(),
        c.reason.to_string(),
        truncate_note(&c.message),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn condition(message: &str) -> Condition {
        Condition {
            warning: true,
            reason: "InvalidSetting",
            message: message.to_string(),
        }
    }

    #[test]
    fn a_long_note_is_cut_to_the_limit_with_a_marker() {
        assert_eq!(truncate_note("short"), "short");
        let exact = "x".repeat(NOTE_LIMIT);
        assert_eq!(truncate_note(&exact), exact);
        let long = "é".repeat(NOTE_LIMIT);
        let cut = truncate_note(&long);
        assert!(cut.len() <= NOTE_LIMIT, "{}", cut.len());
        assert!(cut.ends_with(TRUNCATED));
        assert!(cut.starts_with("éé"));
    }

    #[test]
    fn an_event_names_its_object_reporter_and_moment() {
        let regarding = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Service".into()),
            namespace: Some("shop".into()),
            name: Some("web".into()),
            uid: Some("u-1".into()),
            ..ObjectReference::default()
        };
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let e = event(
            &condition(&"y".repeat(5000)),
            regarding,
            "portico-edge",
            "lb-1",
            now,
        );
        assert_eq!(e.metadata.namespace.as_deref(), Some("shop"));
        assert!(e.metadata.name.as_deref().unwrap().starts_with("web."));
        assert_eq!(e.type_.as_deref(), Some("Warning"));
        assert_eq!(e.note.as_deref().unwrap().len(), NOTE_LIMIT);
        assert_eq!(e.reporting_controller.as_deref(), Some("portico-edge"));
        assert_eq!(e.reporting_instance.as_deref(), Some("lb-1"));
        // Recognised as told, by the same (truncated) key.
        let told = told_by(&[e], "portico-edge");
        assert!(told.contains(&told_key("u-1", &condition(&"y".repeat(5000)))));
        assert!(!told.contains(&told_key("u-2", &condition(&"y".repeat(5000)))));
    }

    #[test]
    fn permanent_refusals_are_final() {
        for code in [400, 403, 404, 409, 422] {
            assert!(refusal_is_final(code), "{code}");
        }
        for code in [401, 408, 429, 500, 503, 504] {
            assert!(!refusal_is_final(code), "{code}");
        }
    }
}
