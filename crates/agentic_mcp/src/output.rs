//! What an MCP tool result becomes for lion, and a tool's schemas as a
//! plugin function's.
//!
//! **Output.** A tool that declares an `outputSchema` promises
//! `structuredContent` matching it (MCP 2025-06-18 on), so its output is
//! that value, exactly; a result without it is refused
//! ([`ToolError::MissingStructured`]). Any other tool's output is the
//! *content shape*, described by [`content_schema`]:
//!
//! ```json
//! {"content": [
//!   {"type": "text", "text": "..."},
//!   {"type": "image", "mimeType": "image/png", "bytes": 1234, "data": "<base64, only when small>"},
//!   {"type": "audio", "mimeType": "audio/wav", "bytes": 99999},
//!   {"type": "resource", "uri": "...", "mimeType": "...", "text": "..."},
//!   {"type": "resource", "uri": "...", "mimeType": "...", "bytes": 4096},
//!   {"type": "resource_link", "uri": "...", "name": "...", "mimeType": "..."}
//! ],
//!  "structuredContent": <the server's, when it sent one anyway>}
//! ```
//!
//! Binary blocks (images, audio, blob resources) keep their MIME type and
//! decoded size; their base64 is kept only up to [`INLINE_BINARY_MAX`]
//! characters. The reason: lion's output goes into the event log and into
//! a model's text context, where megabytes of base64 cost tokens and log
//! space and tell a text model nothing; a small icon still travels whole.
//! Annotations and `_meta` are dropped (hints for a UI, not output).
//!
//! The whole output is capped ([`tool_output`]'s `max_output_bytes`, as
//! serialized JSON) and a larger one is refused, not cut, so no agent acts
//! on half a result.
//!
//! **Errors.** `isError: true` becomes [`ToolError::Reported`] carrying the
//! text blocks joined by newlines, cut at [`MAX_ERROR_TEXT_BYTES`].
//!
//! **Schemas.** The input schema is the tool's `inputSchema`; the output
//! schema its `outputSchema`, or [`content_schema`] when it has none.

use rmcp::model::{CallToolResult, ContentBlock, ResourceContents, Tool};
use serde_json::{Map, Value, json};

/// The default cap on one call's output, as serialized JSON: lion's WASM
/// plugins default to the same 1 MiB (`Limits::max_output_bytes`).
pub const DEFAULT_MAX_OUTPUT_BYTES: usize = 1 << 20;

/// The most base64 characters of one binary block kept in the output
/// (3 KiB decoded): a small icon or a short sound travels whole, anything
/// bigger is described by MIME type and size.
pub const INLINE_BINARY_MAX: usize = 4096;

/// The most bytes of a tool's error text kept in [`ToolError::Reported`]:
/// enough for a message and a short trace, not for a log dump in an event.
pub const MAX_ERROR_TEXT_BYTES: usize = 8 << 10;

/// A tool call that did not give lion an output.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ToolError {
    /// The tool answered with `isError: true`.
    #[error("the tool reported an error: {text}")]
    Reported {
        /// Its text content, joined by newlines, cut at
        /// [`MAX_ERROR_TEXT_BYTES`].
        text: String,
        /// Whether the text was cut.
        truncated: bool,
    },
    /// The output is larger than the call may return.
    #[error("the tool's output is {bytes} bytes, over the {limit}-byte limit")]
    TooLarge {
        /// Its size as serialized JSON.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// The tool declares an `outputSchema` but sent no `structuredContent`.
    #[error("the tool declares an outputSchema but returned no structuredContent")]
    MissingStructured,
}

/// A tool's schemas as a lion plugin function's.
#[derive(Debug, Clone, PartialEq)]
pub struct FunctionSchemas {
    /// The tool's `inputSchema`.
    pub input: Value,
    /// Its `outputSchema`, else [`content_schema`].
    pub output: Value,
}

/// The schemas of the function lion makes of `tool`.
pub fn function_schemas(tool: &Tool) -> FunctionSchemas {
    FunctionSchemas {
        input: Value::Object((*tool.input_schema).clone()),
        output: match &tool.output_schema {
            Some(schema) => Value::Object((**schema).clone()),
            None => content_schema(),
        },
    }
}

/// The JSON Schema of the content shape (see the module docs): permissive
/// about which fields a block has, strict about their types.
pub fn content_schema() -> Value {
    json!({
        "type": "object",
        "required": ["content"],
        "properties": {
            "content": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["type"],
                    "properties": {
                        "type": {"type": "string"},
                        "text": {"type": "string"},
                        "mimeType": {"type": "string"},
                        "bytes": {"type": "integer", "minimum": 0},
                        "data": {"type": "string"},
                        "blob": {"type": "string"},
                        "uri": {"type": "string"},
                        "name": {"type": "string"},
                        "description": {"type": "string"}
                    }
                }
            },
            "structuredContent": true
        }
    })
}

/// lion's output for `result` of a tool that does (`has_output_schema`) or
/// does not declare an `outputSchema`, at most `max_output_bytes` as
/// serialized JSON.
pub fn tool_output(
    result: CallToolResult,
    has_output_schema: bool,
    max_output_bytes: usize,
) -> Result<Value, ToolError> {
    if result.is_error == Some(true) {
        return Err(reported(&result.content));
    }
    let output = if has_output_schema {
        result
            .structured_content
            .ok_or(ToolError::MissingStructured)?
    } else {
        let mut shape = Map::new();
        shape.insert(
            "content".to_owned(),
            Value::Array(result.content.iter().map(block).collect()),
        );
        if let Some(structured) = result.structured_content {
            shape.insert("structuredContent".to_owned(), structured);
        }
        Value::Object(shape)
    };
    let bytes = json_len(&output);
    if bytes > max_output_bytes {
        return Err(ToolError::TooLarge {
            bytes,
            limit: max_output_bytes,
        });
    }
    Ok(output)
}

fn reported(content: &[ContentBlock]) -> ToolError {
    let mut text = String::new();
    for b in content {
        if let ContentBlock::Text(t) = b {
            if !text.is_empty() {
                text.push('\n');
            }
            text.push_str(&t.text);
            if text.len() > MAX_ERROR_TEXT_BYTES {
                break;
            }
        }
    }
    if text.is_empty() {
        text.push_str("(no text)");
    }
    let truncated = text.len() > MAX_ERROR_TEXT_BYTES;
    if truncated {
        let mut cut = MAX_ERROR_TEXT_BYTES;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    ToolError::Reported { text, truncated }
}

/// One content block in the content shape.
fn block(b: &ContentBlock) -> Value {
    let mut o = Map::new();
    let mut put = |k: &str, v: Value| {
        o.insert(k.to_owned(), v);
    };
    match b {
        ContentBlock::Text(t) => {
            put("type", json!("text"));
            put("text", json!(t.text));
        }
        ContentBlock::Image(i) => {
            put("type", json!("image"));
            binary(&mut put, "data", &i.mime_type, &i.data);
        }
        ContentBlock::Audio(a) => {
            put("type", json!("audio"));
            binary(&mut put, "data", &a.mime_type, &a.data);
        }
        ContentBlock::Resource(r) => {
            put("type", json!("resource"));
            match &r.resource {
                ResourceContents::TextResourceContents {
                    uri,
                    mime_type,
                    text,
                    ..
                } => {
                    put("uri", json!(uri));
                    if let Some(m) = mime_type {
                        put("mimeType", json!(m));
                    }
                    put("text", json!(text));
                }
                ResourceContents::BlobResourceContents {
                    uri,
                    mime_type,
                    blob,
                    ..
                } => {
                    put("uri", json!(uri));
                    binary(
                        &mut put,
                        "blob",
                        mime_type.as_deref().unwrap_or("application/octet-stream"),
                        blob,
                    );
                }
                // A kind of resource contents this rmcp does not know yet.
                _ => {}
            }
        }
        ContentBlock::ResourceLink(l) => {
            put("type", json!("resource_link"));
            put("uri", json!(l.uri));
            put("name", json!(l.name));
            if let Some(m) = &l.mime_type {
                put("mimeType", json!(m));
            }
            if let Some(d) = &l.description {
                put("description", json!(d));
            }
            if let Some(s) = l.size {
                put("bytes", json!(s));
            }
        }
        // A block type newer than this rmcp: keep its type name only.
        other => {
            let kind = serde_json::to_value(other)
                .ok()
                .and_then(|v| v.get("type").cloned())
                .unwrap_or_else(|| json!("unknown"));
            put("type", kind);
        }
    }
    Value::Object(o)
}

fn binary(put: &mut impl FnMut(&str, Value), field: &str, mime: &str, base64: &str) {
    put("mimeType", json!(mime));
    put("bytes", json!(base64_decoded_len(base64)));
    if base64.len() <= INLINE_BINARY_MAX {
        put(field, json!(base64));
    }
}

/// The decoded size of standard base64 text (padding and whitespace not
/// counted); an estimate for malformed input, which is all a size needs.
fn base64_decoded_len(s: &str) -> usize {
    let chars = s
        .bytes()
        .filter(|b| !b.is_ascii_whitespace() && *b != b'=')
        .count();
    chars * 3 / 4
}

/// The length of `v` serialized, without building the string.
fn json_len(v: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    // Writing a Value to an infallible writer cannot fail.
    let _ = serde_json::to_writer(&mut c, v);
    c.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(v: Value) -> CallToolResult {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn content_blocks_become_the_content_shape() {
        let big = "A".repeat(INLINE_BINARY_MAX + 4);
        let r = result(json!({"content": [
            {"type": "text", "text": "hi", "annotations": {"priority": 1.0}},
            {"type": "image", "mimeType": "image/png", "data": "iVBORw=="},
            {"type": "audio", "mimeType": "audio/wav", "data": big},
            {"type": "resource", "resource": {"uri": "file:///a", "mimeType": "text/plain", "text": "t"}},
            {"type": "resource_link", "uri": "file:///b", "name": "b"}
        ]}));
        let out = tool_output(r, false, DEFAULT_MAX_OUTPUT_BYTES).unwrap();
        assert_eq!(
            out,
            json!({"content": [
                {"type": "text", "text": "hi"},
                {"type": "image", "mimeType": "image/png", "bytes": 4, "data": "iVBORw=="},
                {"type": "audio", "mimeType": "audio/wav", "bytes": (INLINE_BINARY_MAX + 4) * 3 / 4},
                {"type": "resource", "uri": "file:///a", "mimeType": "text/plain", "text": "t"},
                {"type": "resource_link", "uri": "file:///b", "name": "b"}
            ]})
        );
        let validator = jsonschema::validator_for(&content_schema()).unwrap();
        assert!(validator.is_valid(&out));
    }

    #[test]
    fn structured_content_is_the_output_when_the_tool_declares_a_schema() {
        let r = || {
            result(json!({
                "content": [{"type": "text", "text": "{\"sum\":3}"}],
                "structuredContent": {"sum": 3}
            }))
        };
        assert_eq!(tool_output(r(), true, 1024).unwrap(), json!({"sum": 3}));
        // Without a declared schema it rides along in the content shape.
        let out = tool_output(r(), false, 1024).unwrap();
        assert_eq!(out["structuredContent"], json!({"sum": 3}));
        let bare = result(json!({"content": [{"type": "text", "text": "x"}]}));
        assert_eq!(
            tool_output(bare, true, 1024),
            Err(ToolError::MissingStructured)
        );
    }

    #[test]
    fn is_error_carries_the_text_capped() {
        let r = result(json!({"isError": true, "content": [
            {"type": "text", "text": "bad input"},
            {"type": "image", "mimeType": "image/png", "data": "AAAA"},
            {"type": "text", "text": "line 2"}
        ]}));
        assert_eq!(
            tool_output(r, false, 1024),
            Err(ToolError::Reported {
                text: "bad input\nline 2".into(),
                truncated: false
            })
        );
        let long = "é".repeat(MAX_ERROR_TEXT_BYTES);
        let r = result(json!({"isError": true, "content": [{"type": "text", "text": long}]}));
        let Err(ToolError::Reported { text, truncated }) = tool_output(r, true, 1 << 30) else {
            panic!("not a reported error");
        };
        assert!(truncated);
        assert!(text.len() <= MAX_ERROR_TEXT_BYTES && text.len() > MAX_ERROR_TEXT_BYTES - 2);
    }

    #[test]
    fn output_over_the_cap_is_refused_not_cut() {
        let r = result(json!({"content": [{"type": "text", "text": "x".repeat(100)}]}));
        let Err(ToolError::TooLarge { bytes, limit }) = tool_output(r.clone(), false, 100) else {
            panic!("not refused");
        };
        assert_eq!(limit, 100);
        assert_eq!(
            bytes,
            serde_json::to_vec(&tool_output(r, false, 1000).unwrap())
                .unwrap()
                .len()
        );
    }

    #[test]
    fn schemas_come_from_the_tool_or_the_content_shape() {
        let tool: Tool = serde_json::from_value(json!({
            "name": "t", "inputSchema": {"type": "object", "properties": {"a": {"type": "string"}}}
        }))
        .unwrap();
        let s = function_schemas(&tool);
        assert_eq!(s.input["properties"]["a"]["type"], "string");
        assert_eq!(s.output, content_schema());
        let tool: Tool = serde_json::from_value(json!({
            "name": "t", "inputSchema": {"type": "object"},
            "outputSchema": {"type": "object", "required": ["sum"]}
        }))
        .unwrap();
        assert_eq!(
            function_schemas(&tool).output,
            json!({"type": "object", "required": ["sum"]})
        );
    }
}
