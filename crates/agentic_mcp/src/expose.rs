//! The other direction: lion's plugins offered as MCP tools, to IDEs and
//! other agents (`lion mcp serve` over stdio, `/mcp` over streamable HTTP).
//!
//! **What is offered** is what the operator exposes, nothing else
//! ([`Exposure`]): a whole plugin (`PLUGIN`) or one function
//! (`PLUGIN.FUNCTION`), WebAssembly or subprocess alike. Plugins installed
//! or removed while serving appear or disappear at the next `tools/list`.
//!
//! **Names.** A tool is named `PLUGIN.FUNCTION`, so two plugins never
//! clash; with bare names ([`Naming::Bare`]) it is the function's own name,
//! and a name two exposed functions share is offered by neither (a client
//! must never reach one function by a name meaning another).
//!
//! **Schemas and results.** A tool's input schema is the function's; a
//! function whose output schema is an object schema declares it as the
//! tool's `outputSchema` and answers with `structuredContent` (and the same
//! JSON as text). A function whose output is lion's content shape (what an
//! MCP server without an output schema gives, see [`crate::output`]) is
//! answered as those content blocks again. A failed call — refused input,
//! a denial, a trap, the server's own `isError` — is a tool result with
//! `isError: true` and the reason as text.
//!
//! **Every call** goes through the [`PluginManager`]: it runs in lion's
//! sandbox under the plugin's grant and limits, and is recorded like any
//! other call.

use std::collections::HashMap;
use std::sync::Arc;

use agentic_core::EventStore;
use agentic_core::plugin::{CallOptions, FunctionSpec, PluginError, PluginManager};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::output::content_schema;

/// How tools are named.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Naming {
    /// `PLUGIN.FUNCTION`.
    #[default]
    Qualified,
    /// `FUNCTION`; a name two exposed functions share is left out.
    Bare,
}

/// Which plugin functions are offered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Exposure {
    /// (plugin, `None` for all its functions or `Some(function)`).
    entries: Vec<(String, Option<String>)>,
    naming: Naming,
}

/// An exposure that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot expose {given:?}: {reason}")]
pub struct ExposureError {
    given: String,
    reason: &'static str,
}

impl Exposure {
    /// Reads `PLUGIN` and `PLUGIN.FUNCTION` entries.
    pub fn parse(entries: &[String], naming: Naming) -> Result<Self, ExposureError> {
        let mut parsed = Vec::new();
        for given in entries {
            let (plugin, function) = match given.split_once('.') {
                Some((p, f)) => (p, Some(f)),
                None => (given.as_str(), None),
            };
            let bad = |reason| ExposureError {
                given: given.clone(),
                reason,
            };
            if plugin.is_empty() || function.is_some_and(str::is_empty) {
                return Err(bad("name a plugin, or a plugin and one of its functions"));
            }
            parsed.push((plugin.to_owned(), function.map(str::to_owned)));
        }
        Ok(Self {
            entries: parsed,
            naming,
        })
    }

    /// Whether nothing is exposed.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether `plugin.function` is exposed.
    fn allows(&self, plugin: &str, function: &str) -> bool {
        self.entries
            .iter()
            .any(|(p, f)| p == plugin && f.as_deref().is_none_or(|f| f == function))
    }

    /// The plugins named, each once.
    fn plugins(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.entries.iter().map(|(p, _)| p.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        names
    }
}

/// One offered tool: the function it calls.
struct Offered {
    plugin: String,
    function: String,
    spec: FunctionSpec,
}

/// lion's exposed plugin functions, as an MCP server ([`ServerHandler`]).
#[derive(Clone)]
pub struct PluginTools {
    store: Arc<dyn EventStore>,
    plugins: PluginManager,
    exposure: Arc<Exposure>,
}

impl PluginTools {
    /// Offers what `exposure` names, read from `store`, called through
    /// `plugins`.
    pub fn new(store: Arc<dyn EventStore>, plugins: PluginManager, exposure: Exposure) -> Self {
        Self {
            store,
            plugins,
            exposure: Arc::new(exposure),
        }
    }

    /// The tools on offer now, by name.
    async fn offered(&self) -> Result<HashMap<String, Offered>, ErrorData> {
        let mut all: Vec<(String, Offered)> = Vec::new();
        for plugin in self.exposure.plugins() {
            let Some(snapshot) = self
                .store
                .plugin(plugin)
                .await
                .map_err(|e| ErrorData::internal_error(e.to_string(), None))?
            else {
                continue;
            };
            for (function, spec) in &snapshot.record.installed.manifest.functions {
                if !self.exposure.allows(plugin, function) {
                    continue;
                }
                let name = match self.exposure.naming {
                    Naming::Qualified => format!("{plugin}.{function}"),
                    Naming::Bare => function.clone(),
                };
                all.push((
                    name,
                    Offered {
                        plugin: plugin.to_owned(),
                        function: function.clone(),
                        spec: spec.clone(),
                    },
                ));
            }
        }
        let mut counts: HashMap<String, usize> = HashMap::new();
        for (name, _) in &all {
            *counts.entry(name.clone()).or_default() += 1;
        }
        Ok(all
            .into_iter()
            .filter(|(name, offered)| {
                let unique = counts[name] == 1;
                if !unique {
                    tracing::warn!(
                        tool = name,
                        plugin = offered.plugin,
                        "two exposed functions share this bare name: neither is offered"
                    );
                }
                unique
            })
            .collect())
    }

    /// Runs one offered tool.
    async fn call(&self, offered: &Offered, arguments: Map<String, Value>) -> CallToolResult {
        let options = CallOptions {
            correlation_id: Some(Uuid::now_v7()),
            causation_id: None,
        };
        let input = Value::Object(arguments).to_string();
        match self
            .plugins
            .call(&offered.plugin, &offered.function, &input, options)
            .await
        {
            Ok(output) => result_of(&offered.spec, output),
            Err(e) => CallToolResult::error(vec![ContentBlock::text(failure_text(&e))]),
        }
    }
}

/// A failed call's text for the client.
fn failure_text(e: &PluginError) -> String {
    e.to_string()
}

/// Whether `schema` describes a JSON object.
fn is_object_schema(schema: &Value) -> bool {
    schema.get("type").and_then(Value::as_str) == Some("object")
}

/// A function's output as a tool result (see the module docs).
fn result_of(spec: &FunctionSpec, output: Value) -> CallToolResult {
    if spec.output_schema == content_schema()
        && let Some(blocks) = output.get("content").and_then(Value::as_array)
    {
        let content = blocks.iter().map(content_block).collect();
        let mut result = CallToolResult::success(content);
        result.structured_content = output.get("structuredContent").cloned();
        return result;
    }
    if is_object_schema(&spec.output_schema) && output.is_object() {
        return CallToolResult::structured(output);
    }
    CallToolResult::success(vec![ContentBlock::text(output.to_string())])
}

/// One block of lion's content shape as an MCP content block. What lion
/// kept only as a description (a large image's MIME type and size) is
/// described in text.
fn content_block(block: &Value) -> ContentBlock {
    let text = |key: &str| block.get(key).and_then(Value::as_str);
    let kind = text("type").unwrap_or("");
    let mime = text("mimeType").unwrap_or("application/octet-stream");
    match (kind, text("data"), text("text"), text("uri")) {
        ("text", _, Some(t), _) => ContentBlock::text(t),
        ("image", Some(data), _, _) => ContentBlock::image(data, mime),
        ("audio", Some(data), _, _) => ContentBlock::audio(data, mime),
        ("resource", _, Some(t), Some(uri)) => {
            ContentBlock::resource(rmcp::model::ResourceContents::TextResourceContents {
                uri: uri.to_owned(),
                mime_type: block
                    .get("mimeType")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                text: t.to_owned(),
                meta: None,
            })
        }
        _ => ContentBlock::text(format!("[{block}]")),
    }
}

impl ServerHandler for PluginTools {
    fn get_info(&self) -> ServerConfig {
        let mut info = ServerConfig::new(ServerCapabilities::builder().enable_tools().build());
        info.server_info = Implementation::new("lion", env!("CARGO_PKG_VERSION"));
        info.instructions = Some(
            "lion's plugin functions: each call runs in lion's sandbox under the plugin's grant and is recorded in lion's event log."
                .into(),
        );
        info
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let mut tools: Vec<Tool> = self
            .offered()
            .await?
            .into_iter()
            .map(|(name, offered)| tool(name, &offered))
            .collect();
        tools.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(ListToolsResult::with_all_items(tools))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let offered = self.offered().await?;
        let Some(tool) = offered.get(request.name.as_ref()) else {
            return Err(ErrorData::invalid_params(
                format!("no tool {} is offered", request.name),
                None,
            ));
        };
        let arguments = request.arguments.unwrap_or_default();
        Ok(self.call(tool, arguments).await.into())
    }
}

/// The MCP description of an offered function.
fn tool(name: String, offered: &Offered) -> Tool {
    let spec = &offered.spec;
    let description = if spec.description.trim().is_empty() {
        format!(
            "{}.{} (a lion plugin function)",
            offered.plugin, offered.function
        )
    } else {
        spec.description.clone()
    };
    let input = match &spec.input_schema {
        Value::Object(map) if is_object_schema(&spec.input_schema) => map.clone(),
        // MCP arguments are an object: a function taking anything else is
        // described as taking an object, and refuses what it cannot read.
        _ => Map::from_iter([("type".to_owned(), Value::from("object"))]),
    };
    let mut tool = Tool::new(name, description, Arc::new(input));
    if spec.output_schema != content_schema()
        && is_object_schema(&spec.output_schema)
        && let Value::Object(map) = &spec.output_schema
    {
        tool.output_schema = Some(Arc::new(map.clone()));
    }
    tool
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn exposure_names_plugins_or_functions() {
        let e = Exposure::parse(&["calc".into(), "hello.greet".into()], Naming::Qualified).unwrap();
        assert!(e.allows("calc", "add"));
        assert!(e.allows("hello", "greet"));
        assert!(!e.allows("hello", "wave"));
        assert!(!e.allows("other", "greet"));
        assert!(Exposure::parse(&["x.".into()], Naming::Bare).is_err());
        assert!(Exposure::parse(&[".f".into()], Naming::Bare).is_err());
    }

    fn spec(output_schema: Value) -> FunctionSpec {
        serde_json::from_value(json!({
            "description": "d",
            "input_schema": {"type": "object"},
            "output_schema": output_schema,
        }))
        .unwrap()
    }

    #[test]
    fn object_outputs_are_structured() {
        let result = result_of(&spec(json!({"type": "object"})), json!({"a": 1}));
        assert_eq!(result.structured_content, Some(json!({"a": 1})));
        assert_eq!(result.is_error, Some(false));
    }

    #[test]
    fn content_outputs_become_blocks_again() {
        let output = json!({"content": [
            {"type": "text", "text": "hi"},
            {"type": "image", "mimeType": "image/png", "bytes": 3, "data": "AAAA"},
            {"type": "resource", "uri": "test://r", "mimeType": "application/json", "text": "{}"},
            {"type": "image", "mimeType": "image/png", "bytes": 99999},
        ]});
        let result = result_of(&spec(content_schema()), output);
        let kinds: Vec<Value> = result
            .content
            .iter()
            .map(|b| serde_json::to_value(b).unwrap()["type"].clone())
            .collect();
        assert_eq!(
            kinds,
            [
                json!("text"),
                json!("image"),
                json!("resource"),
                json!("text")
            ]
        );
        assert_eq!(result.structured_content, None);
    }
}
