//! [`ProcessSandbox`]: the subprocess adapter of the kernel's
//! [`ServerSandbox`] port. Discovery starts a server once in its jail and
//! lists its tools as plugin functions; a start checks the server's files
//! against the tree hash recorded at install, starts it warm, and compares
//! what it offers now with what the operator approved: a new tool, or one
//! whose description or schemas changed, is not callable until approved.

use std::collections::{BTreeMap, HashMap};
use std::sync::OnceLock;

use agentic_core::plugin::{
    Discovered, Discovery, FunctionSpec, PROCESS_KIND, SandboxError, ServerLaunch, ServerSandbox,
    Started,
};
use async_trait::async_trait;
use rmcp::model::Tool;

use crate::forward::CallIds;
use crate::launch::Running;
use crate::names::{NameTable, candidate};
use crate::output::function_schemas;
use crate::registry::{MANIFEST_FILE, tree_hash, verify};
use crate::warm::{Callable, WarmServer};

/// Files of a server's root left out of its tree hash: the per-file
/// digests of a registry install (its own digest is the tree hash).
const TREE_EXCLUDE: &[&str] = &[MANIFEST_FILE];

/// Runs server plugins as jailed subprocesses speaking MCP over stdio.
/// Refuses to start any where the jail cannot be built (fail closed: the
/// error names what the OS lacks).
#[derive(Debug, Default)]
pub struct ProcessSandbox {
    /// Whether this OS can jail a process (user namespaces, Landlock,
    /// seccomp), probed on first use; the one-line reason if not.
    support: OnceLock<Result<(), String>>,
}

impl ProcessSandbox {
    /// The sandbox. Nothing is probed until a server is to be started.
    pub fn new() -> Self {
        Self::default()
    }

    /// Refuses, naming what is missing, where the OS cannot jail a server.
    fn ready(&self) -> Result<(), SandboxError> {
        self.support
            .get_or_init(|| {
                // The probe the jail's spawn relies on: one per process.
                agentic_jail::support_once()
                    .map(|_| ())
                    .map_err(|missing| missing.to_string())
            })
            .clone()
            .map_err(|missing| {
                SandboxError::Host(format!("cannot sandbox a server here: {missing}"))
            })
    }
}

#[async_trait]
impl ServerSandbox for ProcessSandbox {
    fn kind(&self) -> &'static str {
        PROCESS_KIND
    }

    async fn discover(&self, launch: &ServerLaunch) -> Result<Discovery, SandboxError> {
        self.ready()?;
        // An installed server (its tree recorded) runs only as installed.
        if launch.spec.tree_sha256.is_some() {
            check_tree(launch).await?;
        }
        let tree_sha256 = hash_root(launch).await?;
        let running = Running::start(launch, CallIds::default()).await?;
        let tools = running.session.list_tools().await;
        running.stop().await;
        let tools = tools.map_err(|e| SandboxError::Server(e.to_string()))?;
        let names = function_names(&tools)?;
        let functions = tools
            .iter()
            .map(|tool| {
                let function = names[tool.name.as_ref()].clone();
                Discovered {
                    spec: spec_of(tool, &function),
                    function,
                }
            })
            .collect();
        Ok(Discovery {
            functions,
            tree_sha256,
        })
    }

    async fn start(&self, launch: &ServerLaunch) -> Result<Started, SandboxError> {
        self.ready()?;
        check_tree(launch).await?;
        let calls = CallIds::default();
        let running = Running::start(launch, calls.clone()).await?;
        let tools = match running.session.list_tools().await {
            Ok(tools) => tools,
            Err(e) => {
                running.stop().await;
                return Err(SandboxError::Server(e.to_string()));
            }
        };
        let Compared {
            callable,
            unapproved,
        } = match compare(&launch.approved, &tools) {
            Ok(compared) => compared,
            Err(e) => {
                running.stop().await;
                return Err(e);
            }
        };
        Ok(Started {
            plugin: WarmServer::new(launch.clone(), callable, running, calls),
            unapproved,
        })
    }
}

/// Checks the server's files against the tree hash recorded at install;
/// a change is refused, naming the first changed path where the install
/// kept per-file digests.
pub(crate) async fn check_tree(launch: &ServerLaunch) -> Result<(), SandboxError> {
    let actual = hash_root(launch).await?;
    let recorded = launch.spec.tree_sha256.as_deref().unwrap_or_default();
    if actual != recorded {
        let root = &launch.spec.root;
        if root.join(MANIFEST_FILE).is_file()
            && let Err(e) = verify(root, recorded)
        {
            return Err(SandboxError::Server(format!(
                "refusing to start a server whose files changed since install: {e}"
            )));
        }
        return Err(SandboxError::Server(format!(
            "the server's files in {} changed since install (tree sha256 {actual}, \
                 recorded {recorded}); reinstall it to run it",
            launch.spec.root.display()
        )));
    }
    Ok(())
}

/// The tree hash of the server's root folder (on a blocking thread: it
/// reads every file).
async fn hash_root(launch: &ServerLaunch) -> Result<String, SandboxError> {
    let root = launch.spec.root.clone();
    tokio::task::spawn_blocking(move || tree_hash(&root, TREE_EXCLUDE))
        .await
        .map_err(|e| SandboxError::Host(format!("hashing the server's files failed: {e}")))?
        .map_err(|e| SandboxError::Server(e.to_string()))
}

/// The function lion makes of `tool`, named `function`.
fn spec_of(tool: &Tool, function: &str) -> FunctionSpec {
    let schemas = function_schemas(tool);
    FunctionSpec {
        description: tool.description.as_deref().unwrap_or_default().to_owned(),
        input_schema: schemas.input,
        output_schema: schemas.output,
        tool: (tool.name != function).then(|| tool.name.to_string()),
    }
}

/// What the server offers now against what was approved: the approved
/// functions it still offers unchanged (callable), and the others it
/// offers, each with why it is not callable.
pub(crate) fn compare(
    approved: &BTreeMap<String, FunctionSpec>,
    tools: &[Tool],
) -> Result<Compared, SandboxError> {
    let names = function_names(tools)?;
    let by_tool: HashMap<&str, (&String, &FunctionSpec)> = approved
        .iter()
        .map(|(function, spec)| (spec.tool.as_deref().unwrap_or(function), (function, spec)))
        .collect();
    let mut callable = HashMap::new();
    let mut unapproved = Vec::new();
    for tool in tools {
        match by_tool.get(tool.name.as_ref()) {
            Some((function, spec)) if spec_of(tool, function) == **spec => {
                callable.insert(
                    (*function).clone(),
                    Callable {
                        tool: tool.name.to_string(),
                        structured: tool.output_schema.is_some(),
                    },
                );
            }
            Some((function, _)) => unapproved.push((
                (*function).clone(),
                "its description or schemas changed since it was approved".to_owned(),
            )),
            None => unapproved.push((
                names[tool.name.as_ref()].clone(),
                format!("the server offers a new tool {:?}", tool.name.as_ref()),
            )),
        }
    }
    Ok(Compared {
        callable,
        unapproved,
    })
}

/// What a server offers, against what was approved.
pub(crate) struct Compared {
    /// The approved functions it offers unchanged, by lion's name.
    pub callable: HashMap<String, Callable>,
    /// The others it offers, each with why it is not callable.
    pub unapproved: Vec<(String, String)>,
}

/// lion's function name for each tool, by the tool's MCP name: decided for
/// the whole list at once, as at install, so a tool awaiting approval is
/// named as `lion plugin approve` will name it.
fn function_names(tools: &[Tool]) -> Result<HashMap<String, String>, SandboxError> {
    let table = NameTable::build(tools.iter().map(|t| t.name.as_ref()))
        .map_err(|e| SandboxError::Server(e.to_string()))?;
    Ok(tools
        .iter()
        .map(|tool| {
            let function = table
                .function_name(&tool.name)
                .map_or_else(|| candidate(&tool.name), str::to_owned);
            (tool.name.to_string(), function)
        })
        .collect())
}
