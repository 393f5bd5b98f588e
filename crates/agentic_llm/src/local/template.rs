//! The chat template: a model's own Jinja template
//! (`tokenizer.chat_template` in its GGUF metadata), rendered with
//! `minijinja` as Hugging Face and llama.cpp render it — `trim_blocks` and
//! `lstrip_blocks` on, the conversation as `messages`, `bos_token` and
//! `eos_token` passed in, `add_generation_prompt` to open the assistant's
//! turn — and `raise_exception` for templates that validate their input.

use agentic_core::llm::{ChatMessage, Role};
use minijinja::syntax::SyntaxConfig;
use minijinja::{Environment, Error, ErrorKind, Value, context};

use super::LocalError;

/// The template's name inside its environment.
const NAME: &str = "chat";

/// A compiled chat template with the special tokens it is given.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// Compiles `source`; `bos_token` and `eos_token` are the texts of the
    /// model's BOS and EOS tokens (empty if it has none).
    pub fn new(
        source: &str,
        bos_token: impl Into<String>,
        eos_token: impl Into<String>,
    ) -> Result<Self, LocalError> {
        let mut env = Environment::new();
        env.set_syntax(
            SyntaxConfig::builder()
                .trim_blocks(true)
                .lstrip_blocks(true)
                .build()
                .map_err(|e| LocalError::Template(e.to_string()))?,
        );
        env.add_function(
            "raise_exception",
            |message: String| -> Result<Value, Error> {
                Err(Error::new(ErrorKind::InvalidOperation, message))
            },
        );
        env.add_template_owned(NAME, source.to_owned())
            .map_err(|e| LocalError::Template(format!("cannot compile: {e}")))?;
        Ok(Self {
            env,
            bos_token: bos_token.into(),
            eos_token: eos_token.into(),
        })
    }

    /// The prompt for `messages`; with `add_generation_prompt`, ending
    /// where the assistant's answer begins.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, LocalError> {
        // Each message as templates see it: a map with `role` and `content`.
        let messages: Value = messages
            .iter()
            .map(|m| {
                let role = match m.role {
                    Role::System => "system",
                    Role::User => "user",
                    Role::Assistant => "assistant",
                    Role::Tool => "tool",
                };
                Value::from_pairs([("role", role), ("content", m.content.as_str())])
            })
            .collect();
        let template = self
            .env
            .get_template(NAME)
            .map_err(|e| LocalError::Template(e.to_string()))?;
        template
            .render(context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => &self.bos_token,
                eos_token => &self.eos_token,
            })
            .map_err(|e| LocalError::Template(format!("cannot render: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_messages_and_the_generation_prompt() {
        let t = ChatTemplate::new(
            "{{ bos_token }}{% for m in messages %}\n[{{ m.role }}] {{ m.content }}{{ eos_token }}\n{% endfor %}\n{% if add_generation_prompt %}[assistant] {% endif %}",
            "<s>",
            "</s>",
        )
        .unwrap();
        let messages = [
            ChatMessage::new(Role::System, "be brief"),
            ChatMessage::new(Role::User, "hi"),
        ];
        assert_eq!(
            t.render(&messages, true).unwrap(),
            "<s>[system] be brief</s>\n[user] hi</s>\n[assistant] "
        );
        assert_eq!(
            t.render(&messages, false).unwrap(),
            "<s>[system] be brief</s>\n[user] hi</s>\n"
        );
    }

    #[test]
    fn raise_exception_and_bad_syntax_are_errors() {
        let t = ChatTemplate::new("{{ raise_exception('no tools here') }}", "", "").unwrap();
        let e = t.render(&[], true).unwrap_err().to_string();
        assert!(e.contains("no tools here"), "{e}");
        assert!(matches!(
            ChatTemplate::new("{% for %}", "", ""),
            Err(LocalError::Template(_))
        ));
    }
}
