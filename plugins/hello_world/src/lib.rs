//! lion's example plugin: `greet` answers `{"name":"Ada"}` with
//! `{"greeting":"Hello, Ada!"}`.

wit_bindgen::generate!({ world: "plugin", path: "../../wit" });

use lion::plugin::host_log;
use serde_json::{Value, json};

struct HelloWorld;

impl Guest for HelloWorld {
    fn describe() -> String {
        json!({"name": "hello_world", "functions": ["greet"]}).to_string()
    }

    fn invoke(function: String, input: String) -> Result<String, String> {
        match function.as_str() {
            "greet" => {
                let input: Value = serde_json::from_str(&input).map_err(|e| e.to_string())?;
                let name = input
                    .get("name")
                    .and_then(Value::as_str)
                    .ok_or("greet needs {\"name\": <string>}")?;
                host_log::log(2, &format!("greeting {name}"));
                Ok(json!({"greeting": format!("Hello, {name}!")}).to_string())
            }
            other => Err(format!("unknown function {other:?}")),
        }
    }
}

export!(HelloWorld);
