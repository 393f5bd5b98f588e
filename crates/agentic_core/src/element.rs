//! `ElementData`: the identity every lion object shares — an id, a creation
//! time, free-form JSON metadata and optional content.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

/// Anything with a stable identity that a [`crate::Pile`] can hold.
pub trait Element {
    /// The id that identifies this element for its whole life.
    fn id(&self) -> Uuid;
}

/// The basic unit of lion state: a uniquely identified, timestamped record.
///
/// Two elements are equal when their ids are equal, whatever their metadata
/// or content: an element is an identity, and its fields are what is known
/// about it. Use [`ElementData::same_content`] to compare every field.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ElementData {
    /// Unique id (UUID v7, so ids sort by creation time).
    pub id: Uuid,
    /// When the element was created, in UTC.
    pub created_at: DateTime<Utc>,
    /// Free-form JSON object describing the element.
    #[serde(default)]
    pub metadata: Map<String, Value>,
    /// Optional text content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

impl ElementData {
    /// A new element with a fresh id, created now.
    pub fn new(metadata: Map<String, Value>, content: Option<String>) -> Self {
        Self {
            id: Uuid::now_v7(),
            created_at: Utc::now(),
            metadata,
            content,
        }
    }

    /// Whether every field — not only the id — is the same in both elements.
    pub fn same_content(&self, other: &Self) -> bool {
        self.id == other.id
            && self.created_at == other.created_at
            && self.metadata == other.metadata
            && self.content == other.content
    }
}

impl PartialEq for ElementData {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

impl Eq for ElementData {}

impl std::hash::Hash for ElementData {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.id.hash(state);
    }
}

impl Element for ElementData {
    fn id(&self) -> Uuid {
        self.id
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn meta(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn new_elements_get_distinct_ids() {
        let a = ElementData::new(Map::new(), None);
        let b = ElementData::new(Map::new(), None);
        assert_ne!(a.id, b.id);
        assert_ne!(a, b);
    }

    #[test]
    fn equality_is_by_id_only() {
        let a = ElementData::new(meta(json!({"k": 1})), Some("x".into()));
        let mut b = a.clone();
        b.metadata = meta(json!({"k": 2}));
        b.content = None;
        assert_eq!(a, b);
        assert!(!a.same_content(&b));
        assert!(a.same_content(&a.clone()));
    }

    #[test]
    fn serde_round_trip_keeps_every_field() {
        let a = ElementData::new(meta(json!({"name": "ada", "n": [1, 2]})), Some("hi".into()));
        let text = serde_json::to_string(&a).expect("serialize");
        let back: ElementData = serde_json::from_str(&text).expect("deserialize");
        assert!(a.same_content(&back));
    }

    #[test]
    fn missing_optional_fields_default() {
        let text =
            r#"{"id":"0190f5c2-0000-7000-8000-000000000000","created_at":"2026-01-01T00:00:00Z"}"#;
        let e: ElementData = serde_json::from_str(text).expect("deserialize");
        assert!(e.metadata.is_empty());
        assert!(e.content.is_none());
    }
}
