//! `lion element create|list|show` (and the seed's `create-element`, `list-elements`).

use std::sync::Arc;

use agentic_core::{ElementData, EventStore, ExpectedVersion, NewEvent, SystemEvent};
use anyhow::{Context, Result, bail};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::Ctx;
use crate::cli::{CreateElement, Paging};
use crate::output;

/// Creates an element from the command's metadata and content; prints its id.
/// The arguments are checked before the store is opened (and perhaps created).
pub async fn create(
    open: impl AsyncFnOnce() -> Result<Arc<dyn EventStore>>,
    ctx: Ctx,
    args: &CreateElement,
) -> Result<()> {
    let metadata = parse_metadata(&args.metadata)?;
    let store = open().await?;
    let element = ElementData::new(metadata, args.content.clone());
    let id = element.id;
    let event = NewEvent::new(SystemEvent::ElementCreated { element }, ctx.correlation_id);
    let receipt = store.append(vec![event], ExpectedVersion::NoStream).await?;
    tracing::info!(%id, seq = receipt.first_seq, "element created");
    if ctx.json {
        output::json(&serde_json::json!({ "id": id, "seq": receipt.first_seq }))
    } else {
        outln!("{id}");
        Ok(())
    }
}

/// Parses `--metadata`: it must be a JSON object.
fn parse_metadata(text: &str) -> Result<Map<String, Value>> {
    let value: Value = serde_json::from_str(text).context("--metadata is not valid JSON")?;
    match value {
        Value::Object(map) => Ok(map),
        other => bail!(
            "--metadata must be a JSON object, got {}",
            match other {
                Value::Null => "null",
                Value::Bool(_) => "a boolean",
                Value::Number(_) => "a number",
                Value::String(_) => "a string",
                Value::Array(_) => "an array",
                Value::Object(_) => "an object",
            }
        ),
    }
}

/// Lists the elements (all, or the page `paging` asks for), in creation order.
pub async fn list(store: &dyn EventStore, ctx: Ctx, paging: Paging) -> Result<()> {
    let listed = output::listed(paging, |after, limit| store.elements(after, limit)).await?;
    if ctx.json {
        return listed.json();
    }
    let mut t = output::table(["id", "created", "metadata", "content"]);
    for e in &listed.items {
        t.add_row([
            e.id.to_string(),
            e.created_at.format("%Y-%m-%d %H:%M:%S").to_string(),
            output::clip(e.metadata.as_str(), 48),
            output::clip(e.content.as_deref().unwrap_or(""), 32),
        ]);
    }
    outln!("{t}");
    outln!("{} element(s)", listed.items.len());
    listed.more("lion element list");
    Ok(())
}

/// Shows one element in full.
pub async fn show(store: &dyn EventStore, ctx: Ctx, id: &str) -> Result<()> {
    let id: Uuid = id
        .parse()
        .with_context(|| format!("{id:?} is not an element id (a UUID)"))?;
    let Some(e) = store.element(id).await? else {
        bail!("no element {id} in this home");
    };
    if ctx.json {
        return output::json(&e);
    }
    outln!("id:         {}", e.id);
    outln!("created_at: {}", e.created_at.to_rfc3339());
    outln!(
        "metadata:   {}",
        serde_json::to_string_pretty(&e.metadata.to_map())?
    );
    if let Some(content) = &e.content {
        outln!("content:    {content}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_must_be_an_object() {
        assert!(parse_metadata(r#"{"a":1}"#).is_ok());
        let err = parse_metadata("[1]").unwrap_err().to_string();
        assert!(err.contains("an array"), "{err}");
        let err = format!("{:#}", parse_metadata("{nope").unwrap_err());
        assert!(err.starts_with("--metadata is not valid JSON"), "{err}");
    }
}
