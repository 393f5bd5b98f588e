//! Values that flow between a workflow's steps: JSON trees whose strings may
//! be `minijinja` templates over the run's `input`, earlier steps' outputs
//! (`steps.ID.output`) and, inside a map, the `item` and its `index`.
//!
//! A string that is one expression, `"{{ steps.search.output.results }}"`,
//! stands for the expression's value (a list stays a list); any other string
//! with `{{ … }}` or `{% … %}` is rendered to a string. Templates are a
//! sandboxed expression language — no code runs — and they are parsed when
//! the definition is read, so a syntax error or a name that is not there is
//! reported before a run starts. Evaluation is strict: a missing key is an
//! error naming it, never an empty string.

use std::collections::BTreeSet;
use std::sync::OnceLock;

use minijinja::{Environment, UndefinedBehavior};
use serde_json::Value;

/// The names a template may start from, outside a map's step.
const ROOTS: [&str; 2] = ["input", "steps"];

/// The names a map's step may also use: the item and its position.
const MAP_ROOTS: [&str; 2] = ["item", "index"];

/// The name a work step's templates may use for the step's idempotency
/// key (the same each time the step runs again), so a plugin can make its
/// side effect exactly-once.
pub const KEY_ROOT: &str = "key";

/// The most work one evaluation may do (minijinja's fuel: about one unit
/// per instruction), so a template cannot loop a kernel's thread away.
const FUEL: u64 = 1_000_000;

/// Why a template is refused when read, or fails when evaluated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TemplateError(pub String);

/// A JSON value whose strings may be templates, checked when read.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    /// The value as written (TOML turned into JSON).
    value: Value,
}

/// Where a template is evaluated: a map's step may use `item` and `index`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// A wait, a condition, a map's list, or the output.
    Step,
    /// What a work step (a plugin call, an agent turn, a sub-workflow)
    /// asks: it may also use `key`, the step's idempotency key.
    Work,
    /// The work a map runs for each item: also `key`, `item` and `index`.
    MapItem,
}

impl Template {
    /// Checks every template in `value`: its syntax, and that it starts only
    /// from names it may use in `scope`. Returns it with the ids of the steps
    /// it reads (`steps.ID…`).
    pub fn parse(value: Value, scope: Scope) -> Result<(Self, BTreeSet<String>), TemplateError> {
        let mut reads = BTreeSet::new();
        check_value(&value, scope, &mut reads)?;
        Ok((Self { value }, reads))
    }

    /// The value with every template evaluated against `context` (a JSON
    /// object with `input`, `steps` and, in a map, `item` and `index`).
    pub fn evaluate(&self, context: &Value) -> Result<Value, TemplateError> {
        evaluate_value(&self.value, context)
    }

    /// The value as written.
    pub fn as_written(&self) -> &Value {
        &self.value
    }
}

/// The environment every workflow template is compiled in: strict about
/// undefined names, with the `json` filters.
fn environment() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_fuel(Some(FUEL));
        env
    })
}

/// How a string is read: as it is, one expression, or a template.
enum Form<'a> {
    /// No `{{` or `{%`: the string itself.
    Plain,
    /// `{{ expr }}` and nothing else: the expression's value.
    Expression(&'a str),
    /// Anything else with a tag: rendered to a string.
    Rendered,
}

fn form(text: &str) -> Form<'_> {
    if !text.contains("{{") && !text.contains("{%") && !text.contains("{#") {
        return Form::Plain;
    }
    let trimmed = text.trim();
    // `{{-` and `-}}` (or `+`) only control whitespace around the tag.
    let markers: &[char] = &['-', '+'];
    if let Some(inner) = trimmed
        .strip_prefix("{{")
        .map(|rest| rest.strip_prefix(markers).unwrap_or(rest))
        .and_then(|rest| rest.strip_suffix("}}"))
        .map(|rest| rest.strip_suffix(markers).unwrap_or(rest))
        && !inner.contains("{{")
        && !inner.contains("}}")
        && !inner.contains("{%")
    {
        return Form::Expression(inner.trim());
    }
    Form::Rendered
}

fn check_value(
    value: &Value,
    scope: Scope,
    reads: &mut BTreeSet<String>,
) -> Result<(), TemplateError> {
    match value {
        Value::String(text) => check_string(text, scope, reads),
        Value::Array(items) => items
            .iter()
            .try_for_each(|item| check_value(item, scope, reads)),
        Value::Object(map) => map
            .values()
            .try_for_each(|item| check_value(item, scope, reads)),
        _ => Ok(()),
    }
}

fn check_string(
    text: &str,
    scope: Scope,
    reads: &mut BTreeSet<String>,
) -> Result<(), TemplateError> {
    let names = match form(text) {
        Form::Plain => return Ok(()),
        Form::Expression(expr) => environment()
            .compile_expression(expr)
            .map_err(|e| syntax(text, &e))?
            .undeclared_variables(true),
        Form::Rendered => environment()
            .template_from_str(text)
            .map_err(|e| syntax(text, &e))?
            .undeclared_variables(true),
    };
    for name in names {
        let mut parts = name.split('.');
        let root = parts.next().unwrap_or_default();
        let allowed = ROOTS.contains(&root)
            || (scope != Scope::Step && root == KEY_ROOT)
            || (scope == Scope::MapItem && MAP_ROOTS.contains(&root))
            || environment().globals().any(|(global, _)| global == root);
        if !allowed {
            let known = match scope {
                Scope::Step => "input, steps",
                Scope::Work => "input, steps, key",
                Scope::MapItem => "input, steps, key, item, index",
            };
            return Err(TemplateError(format!(
                "`{}` uses `{root}`, which is not there (a template may use {known})",
                shown(text)
            )));
        }
        if root == "steps" {
            match (parts.next(), parts.next()) {
                (Some(id), Some("output")) => {
                    reads.insert(id.to_owned());
                }
                _ => {
                    return Err(TemplateError(format!(
                        "`{}` uses `{name}`: read a step's output as steps.ID.output",
                        shown(text)
                    )));
                }
            }
        }
    }
    Ok(())
}

/// Most characters of a template a message quotes.
const QUOTED: usize = 60;

/// A template's text as a message quotes it: on one line, clipped.
pub(crate) fn shown(text: &str) -> String {
    let mut out: String = one_line(text).chars().take(QUOTED).collect();
    if text.chars().count() > QUOTED {
        out.push('…');
    }
    out
}

/// `text` with its line breaks and other control characters escaped.
pub(crate) fn one_line(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect()
}

fn syntax(text: &str, e: &minijinja::Error) -> TemplateError {
    let detail = e
        .detail()
        .map_or_else(|| e.kind().to_string(), str::to_owned);
    TemplateError(format!(
        "`{}` is not a valid template: {}",
        shown(text),
        one_line(&detail)
    ))
}

fn evaluate_value(value: &Value, context: &Value) -> Result<Value, TemplateError> {
    Ok(match value {
        Value::String(text) => evaluate_string(text, context)?,
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|item| evaluate_value(item, context))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), evaluate_value(v, context)?)))
                .collect::<Result<_, TemplateError>>()?,
        ),
        other => other.clone(),
    })
}

fn evaluate_string(text: &str, context: &Value) -> Result<Value, TemplateError> {
    let context = minijinja::Value::from(minijinja::value::Serde(context));
    let failed = |e: minijinja::Error| {
        let detail = e
            .detail()
            .map_or_else(|| e.kind().to_string(), str::to_owned);
        TemplateError(format!("`{}` failed: {}", shown(text), one_line(&detail)))
    };
    match form(text) {
        Form::Plain => Ok(Value::String(text.to_owned())),
        Form::Expression(expr) => {
            let value = environment()
                .compile_expression(expr)
                .and_then(|e| e.eval(&context))
                .map_err(failed)?;
            if value.is_undefined() {
                return Err(TemplateError(format!(
                    "`{}` is undefined: a key it reads is not there",
                    shown(text)
                )));
            }
            serde_json::to_value(&value).map_err(|e| {
                TemplateError(format!(
                    "`{}` gave a value that is not JSON: {e}",
                    shown(text)
                ))
            })
        }
        Form::Rendered => environment()
            .render_str(text, &context)
            .map(Value::String)
            .map_err(failed),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn reads(value: Value, scope: Scope) -> Result<Vec<String>, String> {
        Template::parse(value, scope)
            .map(|(_, reads)| reads.into_iter().collect())
            .map_err(|e| e.0)
    }

    #[test]
    fn the_steps_a_template_reads_are_found() {
        let value = json!({
            "q": "{{ input.topic }}",
            "from": ["{{ steps.search.output.results }}", "by {{ steps.who.output }}"],
            "n": 3,
        });
        assert_eq!(reads(value, Scope::Step).unwrap(), ["search", "who"]);
    }

    #[test]
    fn names_that_are_not_there_are_refused() {
        let err = reads(json!("{{ inptu.topic }}"), Scope::Step).unwrap_err();
        assert!(err.contains("uses `inptu`"), "{err}");
        let err = reads(json!("{{ item.url }}"), Scope::Step).unwrap_err();
        assert!(err.contains("uses `item`"), "{err}");
        assert!(reads(json!("{{ item.url }}"), Scope::MapItem).is_ok());
        let err = reads(json!("{{ steps.search }}"), Scope::Step).unwrap_err();
        assert!(err.contains("steps.ID.output"), "{err}");
    }

    #[test]
    fn syntax_errors_are_one_line() {
        let err = reads(json!("{{ input.topic "), Scope::Step).unwrap_err();
        assert!(err.contains("is not a valid template"), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }

    #[test]
    fn one_expression_keeps_its_value_and_text_is_rendered() {
        let (template, _) = Template::parse(
            json!({
                "list": "{{ steps.a.output.items }}",
                "text": "got {{ steps.a.output.items | length }} for {{ input.q }}",
                "plain": "no tags",
                "flag": "{{ steps.a.output.items | length > 1 }}",
            }),
            Scope::Step,
        )
        .unwrap();
        let context = json!({"input": {"q": "x"}, "steps": {"a": {"output": {"items": [1, 2]}}}});
        assert_eq!(
            template.evaluate(&context).unwrap(),
            json!({"list": [1, 2], "text": "got 2 for x", "plain": "no tags", "flag": true})
        );
    }

    #[test]
    fn a_missing_key_fails_evaluation() {
        let (template, _) = Template::parse(json!("{{ input.nope }}"), Scope::Step).unwrap();
        let err = template.evaluate(&json!({"input": {}})).unwrap_err();
        assert!(err.0.contains("is undefined"), "{err}");
        let (template, _) = Template::parse(json!("x {{ input.nope }}"), Scope::Step).unwrap();
        let err = template.evaluate(&json!({"input": {}})).unwrap_err();
        assert!(err.0.contains("failed"), "{err}");
    }

    #[test]
    fn a_template_that_would_loop_for_ever_runs_out_of_fuel() {
        let (template, _) = Template::parse(
            json!(
                "{% for i in range(10000) %}{% for j in range(10000) %}x{% endfor %}{% endfor %}"
            ),
            Scope::Step,
        )
        .unwrap();
        let err = template.evaluate(&json!({})).unwrap_err();
        assert!(err.0.contains("fuel"), "{err}");
    }

    #[test]
    fn whitespace_markers_keep_one_expression_one_expression() {
        let context = json!({"input": {"n": 5}});
        for text in ["{{- input.n }}", "{{ input.n -}}", "{{+ input.n +}}"] {
            let (template, _) = Template::parse(json!(text), Scope::Step).expect(text);
            assert_eq!(template.evaluate(&context).unwrap(), json!(5), "{text}");
        }
    }

    #[test]
    fn errors_quote_a_long_or_multi_line_template_on_one_line() {
        let text = format!("line one\n{{{{ inptu.x }}}}\n{}", "x".repeat(200));
        let err = reads(json!(text), Scope::Step).unwrap_err();
        assert!(!err.contains('\n'), "{err}");
        assert!(err.contains("line one\\n"), "{err}");
        assert!(err.contains('…'), "{err}");
    }
}
