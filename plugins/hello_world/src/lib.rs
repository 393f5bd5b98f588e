//! lion's example plugin: `greet` answers `{"name":"Ada"}` with
//! `{"greeting":"Hello, Ada!"}` and logs `greeting Ada`.

use agentic_pdk::log;
use serde::{Deserialize, Serialize};

/// The input of `greet`.
#[derive(Deserialize)]
struct Person {
    name: String,
}

/// The output of `greet`.
#[derive(Serialize)]
struct Greeting {
    greeting: String,
}

/// Greets `person` by name.
fn greet(person: Person) -> Result<Greeting, String> {
    log::info(&format!("greeting {}", person.name));
    Ok(Greeting {
        greeting: format!("Hello, {}!", person.name),
    })
}

agentic_pdk::plugin!(greet);
