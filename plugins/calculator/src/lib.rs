//! lion's example plugin: `eval` computes `{"expression":"2 * (3 + 4)"}` as
//! `{"value":14}`, `add` adds `{"a":2,"b":3}` as `{"value":5}`.
//!
//! Expressions have numbers (`3`, `0.5`, `.5`), `+ - * /`, unary minus and
//! parentheses, with the usual precedence. Division by zero, and any result
//! that is not a finite number, is an error.

use serde::{Deserialize, Serialize};
use serde_json::Number;

/// How deeply parentheses and unary minus may nest.
const MAX_DEPTH: usize = 64;

/// The input of `eval`.
#[derive(Deserialize)]
struct Expression {
    expression: String,
}

/// The input of `add`.
#[derive(Deserialize)]
struct Operands {
    a: f64,
    b: f64,
}

/// The output of both functions.
#[derive(Serialize)]
struct Value {
    /// An integer when the result is one, so `14` rather than `14.0`.
    value: Number,
}

/// Evaluates an arithmetic expression.
fn eval(input: Expression) -> Result<Value, String> {
    let mut parser = Parser {
        text: &input.expression,
        pos: 0,
        depth: 0,
    };
    let value = parser.expression()?;
    parser.skip_spaces();
    if let Some(c) = parser.peek() {
        return Err(parser.unexpected(c));
    }
    number(value)
}

/// Adds two numbers.
fn add(input: Operands) -> Result<Value, String> {
    number(input.a + input.b)
}

/// `x` as a JSON number: an integer when it is one exactly.
fn number(x: f64) -> Result<Value, String> {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
    let value = if x.fract() == 0.0 && x.abs() <= EXACT {
        // Exact: `x` is a whole number within i64's exact f64 range.
        Number::from(x as i64)
    } else {
        Number::from_f64(x).ok_or_else(|| format!("the result is not a finite number ({x})"))?
    };
    Ok(Value { value })
}

/// A recursive-descent parser over one expression.
///
/// ```text
/// expression = term (("+" | "-") term)*
/// term       = factor (("*" | "/") factor)*
/// factor     = ("-" | "+") factor | number | "(" expression ")"
/// ```
struct Parser<'a> {
    text: &'a str,
    /// Byte offset of the next character.
    pos: usize,
    /// Current nesting of parentheses and unary signs.
    depth: usize,
}

impl Parser<'_> {
    fn expression(&mut self) -> Result<f64, String> {
        let mut value = self.term()?;
        while let Some(op) = self.next_op("+-") {
            let rhs = self.term()?;
            value = if op == '+' { value + rhs } else { value - rhs };
        }
        Ok(value)
    }

    fn term(&mut self) -> Result<f64, String> {
        let mut value = self.factor()?;
        while let Some(op) = self.next_op("*/") {
            let rhs = self.factor()?;
            if op == '*' {
                value *= rhs;
            } else if rhs == 0.0 {
                return Err("division by zero".into());
            } else {
                value /= rhs;
            }
        }
        Ok(value)
    }

    fn factor(&mut self) -> Result<f64, String> {
        self.skip_spaces();
        let Some(c) = self.peek() else {
            return Err("unexpected end of expression".into());
        };
        match c {
            '-' | '+' | '(' => {
                self.depth += 1;
                if self.depth > MAX_DEPTH {
                    return Err(format!("expression nested deeper than {MAX_DEPTH}"));
                }
                self.pos += 1;
                let value = match c {
                    '-' => -self.factor()?,
                    '+' => self.factor()?,
                    _ => {
                        let value = self.expression()?;
                        self.skip_spaces();
                        match self.peek() {
                            Some(')') => self.pos += 1,
                            Some(c) => return Err(self.unexpected(c)),
                            None => return Err("missing \")\"".into()),
                        }
                        value
                    }
                };
                self.depth -= 1;
                Ok(value)
            }
            '0'..='9' | '.' => self.number(),
            c => Err(self.unexpected(c)),
        }
    }

    fn number(&mut self) -> Result<f64, String> {
        let start = self.pos;
        let rest = &self.text[start..];
        let len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        self.pos += len;
        let literal = &rest[..len];
        literal
            .parse()
            .map_err(|_| format!("invalid number {literal:?} at {start}"))
    }

    /// Consumes and returns the next non-space character if it is one of
    /// `ops`.
    fn next_op(&mut self, ops: &str) -> Option<char> {
        self.skip_spaces();
        let c = self.peek().filter(|c| ops.contains(*c))?;
        self.pos += 1;
        Some(c)
    }

    fn skip_spaces(&mut self) {
        let rest = &self.text[self.pos..];
        self.pos += rest.len() - rest.trim_start().len();
    }

    fn peek(&self) -> Option<char> {
        self.text[self.pos..].chars().next()
    }

    fn unexpected(&self, c: char) -> String {
        format!("unexpected {c:?} at {}", self.pos)
    }
}

agentic_pdk::plugin!(eval, add);

#[cfg(test)]
mod tests {
    use super::*;

    fn calc(expression: &str) -> Result<String, String> {
        let value = eval(Expression {
            expression: expression.into(),
        })?;
        Ok(value.value.to_string())
    }

    #[test]
    fn precedence_associativity_and_signs() {
        for (expression, value) in [
            ("2 * (3 + 4)", "14"),
            ("2 + 3 * 4", "14"),
            ("8 - 2 - 1", "5"),
            ("8 / 2 / 2", "2"),
            ("-(1 + 2) * -2", "6"),
            ("--3", "3"),
            ("10 / 4", "2.5"),
            (" .5 + 0.25 ", "0.75"),
        ] {
            assert_eq!(calc(expression).as_deref(), Ok(value), "{expression}");
        }
    }

    #[test]
    fn errors_say_what_is_wrong() {
        for (expression, error) in [
            ("1 / 0", "division by zero"),
            ("1 / (2 - 2)", "division by zero"),
            ("2 * (3 + 4", "missing \")\""),
            ("2 3", "unexpected '3' at 2"),
            ("", "unexpected end of expression"),
            ("1.2.3", "invalid number \"1.2.3\" at 0"),
            ("x", "unexpected 'x' at 0"),
        ] {
            assert_eq!(calc(expression), Err(error.into()), "{expression}");
        }
        let deep = format!("{}1{}", "(".repeat(100), ")".repeat(100));
        assert_eq!(calc(&deep), Err("expression nested deeper than 64".into()));
    }

    #[test]
    fn add_keeps_integers_integral() {
        let sum = add(Operands { a: 2.0, b: 3.0 }).map(|v| v.value.to_string());
        assert_eq!(sum, Ok("5".into()));
    }
}
