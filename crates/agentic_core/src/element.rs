//! `ElementData`: the identity every lion object shares — an id, a creation
//! time, free-form JSON metadata and optional content.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
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
    #[serde(deserialize_with = "rfc3339_utc")]
    pub created_at: DateTime<Utc>,
    /// Free-form JSON object describing the element.
    #[serde(default)]
    pub metadata: Metadata,
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
            metadata: Metadata::from(&metadata),
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

/// Reads an RFC 3339 time with chrono's strict RFC 3339 parser, several
/// times cheaper than the general one its `Deserialize` uses (replay reads
/// one per element). What the strict parser refuses goes to the general one,
/// so the times accepted, and the errors, are unchanged.
fn rfc3339_utc<'de, D: serde::Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
    struct Rfc3339;
    impl serde::de::Visitor<'_> for Rfc3339 {
        type Value = DateTime<Utc>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an RFC 3339 date and time")
        }

        fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Self::Value, E> {
            DateTime::parse_from_rfc3339(s)
                .or_else(|_| s.parse::<DateTime<chrono::FixedOffset>>())
                .map(|t| t.with_timezone(&Utc))
                .map_err(E::custom)
        }
    }
    d.deserialize_str(Rfc3339)
}

/// An element's metadata: a JSON object kept as its compact, canonical text
/// (keys sorted, no whitespace).
///
/// Kept as text rather than a parsed map because most metadata is written once
/// and read rarely, while replay decodes every element in the log: text costs
/// one allocation and a fraction of the memory of a parsed map. Canonical text
/// makes equality exact. Use [`Metadata::to_map`] or [`Metadata::get`] to read it.
#[derive(Clone)]
pub struct Metadata(Box<RawValue>);

impl Metadata {
    /// The metadata as compact JSON text.
    pub fn as_str(&self) -> &str {
        self.0.get()
    }

    /// The metadata as a JSON map.
    pub fn to_map(&self) -> Map<String, Value> {
        // Valid by construction: built from a map, or checked when deserialised.
        serde_json::from_str(self.as_str()).unwrap_or_default()
    }

    /// The value under `key`, if any.
    pub fn get(&self, key: &str) -> Option<Value> {
        self.to_map().remove(key)
    }

    /// Whether the object has no keys.
    pub fn is_empty(&self) -> bool {
        self.as_str() == "{}"
    }
}

impl From<&Map<String, Value>> for Metadata {
    fn from(map: &Map<String, Value>) -> Self {
        // A map of JSON values always serialises, and `Map` keeps keys sorted,
        // so the text is canonical.
        Metadata(serde_json::value::to_raw_value(map).unwrap_or_else(|_| empty_object()))
    }
}

impl From<Map<String, Value>> for Metadata {
    fn from(map: Map<String, Value>) -> Self {
        Metadata::from(&map)
    }
}

fn empty_object() -> Box<RawValue> {
    // "{}" is valid JSON; `from_string` only fails on invalid JSON.
    RawValue::from_string("{}".to_owned()).unwrap_or_else(|_| unreachable!("{{}} is valid JSON"))
}

impl Default for Metadata {
    fn default() -> Self {
        Metadata(empty_object())
    }
}

impl PartialEq for Metadata {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Metadata {}

impl std::fmt::Debug for Metadata {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Metadata {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Metadata {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = Box::<RawValue>::deserialize(d)?;
        if !raw.get().trim_start().starts_with('{') {
            return Err(serde::de::Error::custom("metadata must be a JSON object"));
        }
        Ok(Metadata(raw))
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
        b.metadata = meta(json!({"k": 2})).into();
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
    fn metadata_is_canonical_and_must_be_an_object() {
        let a = Metadata::from(meta(json!({"b": 1, "a": {"d": 2, "c": 3}})));
        assert_eq!(a.as_str(), r#"{"a":{"c":3,"d":2},"b":1}"#);
        assert_eq!(a.get("b"), Some(json!(1)));
        assert!(Metadata::default().is_empty());
        let text = r#"{"id":"0190f5c2-0000-7000-8000-000000000000","created_at":"2026-01-01T00:00:00Z","metadata":[1]}"#;
        assert!(serde_json::from_str::<ElementData>(text).is_err());
    }

    #[test]
    fn missing_optional_fields_default() {
        let text =
            r#"{"id":"0190f5c2-0000-7000-8000-000000000000","created_at":"2026-01-01T00:00:00Z"}"#;
        let e: ElementData = serde_json::from_str(text).expect("deserialize");
        assert!(e.metadata.is_empty());
        assert!(e.content.is_none());
    }

    #[test]
    fn creation_times_read_as_chrono_reads_them() {
        let element = |time: &str| {
            format!(r#"{{"id":"0190f5c2-0000-7000-8000-000000000000","created_at":"{time}"}}"#)
        };
        for time in [
            "2026-01-01T00:00:00Z",
            "2026-12-02T01:27:04.123456789Z",
            "2026-12-02T01:27:04.5+02:00",
            "2026-12-02t01:27:04z",
            "2026-12-02 01:27:04+00:00", // refused by the strict parser
            "2026-12-02T01:27:04 +00:00",
        ] {
            let ours = serde_json::from_str::<ElementData>(&element(time)).map(|e| e.created_at);
            let chrono = serde_json::from_str::<DateTime<Utc>>(&format!("\"{time}\""));
            assert_eq!(ours.ok(), chrono.ok(), "{time}");
        }
        for bad in ["yesterday", "2026-13-01T00:00:00Z", ""] {
            assert!(
                serde_json::from_str::<ElementData>(&element(bad)).is_err(),
                "{bad}"
            );
        }
        let from_value: ElementData =
            serde_json::from_value(json!({"id": "0190f5c2-0000-7000-8000-000000000000",
                "created_at": "2026-01-01T00:00:00Z"}))
            .expect("from a Value");
        assert_eq!(from_value.created_at.timestamp(), 1_767_225_600);
    }
}
