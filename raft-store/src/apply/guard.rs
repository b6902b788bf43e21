//! The guard language of machine transitions: a boolean test of the
//! instance's ctx (as it was before the event), parsed once when a machine
//! is stored and evaluated in apply.
//!
//! ```text
//! guard   = or ;
//! or      = and { "||" and } ;
//! and     = unary { "&&" unary } ;
//! unary   = "!" unary | "(" or ")" | test ;
//! test    = path [ ( "==" | "!=" ) literal | ( "<" | "<=" | ">" | ">=" ) number ] ;
//! path    = "ctx." name { "." name } ;            (* no whitespace inside *)
//! name    = ( alphanumeric | "_" ) { alphanumeric | "_" } ;   (* Unicode *)
//! literal = "true" | "false" | "null" | string | number ;
//! string  = '"' { char - ( '"' | "\" ) | "\" char } '"' ;
//! number  = [ "-" ] ( digit { digit } [ "." { digit } ] | "." digit { digit } ) ;
//! ```
//!
//! Whitespace (Unicode) may stand between tokens. The meaning follows
//! rstmdb 0.3.0 (`rstmdb-core` `guard.rs`), so a definition written for it
//! decides the same here:
//!
//! - A path walks objects only; a missing key, or a step into anything but
//!   an object (arrays too: there are no indexes), is `null`.
//! - A bare path is a truthiness test: `null`, `false`, `0`, `""`, `[]`, `{}`
//!   are false. `!` negates whatever follows and binds looser than a
//!   comparison: `!ctx.a == 1` is `!(ctx.a == 1)`.
//! - Numbers are f64 on both sides (`1 == 1.0`; integers beyond 2^53 lose
//!   precision), equal when they differ by less than `f64::EPSILON`.
//!   Equality is false between different JSON types and for arrays and
//!   objects; `!=` is its negation.
//! - Ordering compares numbers only: a ctx value that is not a number makes
//!   it false, and a right-hand side that is not a number literal is a parse
//!   error. (The original does the same, so strings never order.)
//! - A string literal's value is the source text between the quotes: a
//!   backslash only keeps the next character from ending the string and
//!   stays in the value (`"a\"b"` is the four characters `a\"b`).
//! - `&&` and `||` short-circuit; evaluation has no effects, so order only
//!   saves work.
//!
//! Where the original accepts garbage, parsing fails with the byte
//! position: anything after a complete guard (the original ignores it, so
//! there `ctx.a = 1` is a truthiness test and `ctx.a > 1e5` compares with
//! 1; hence no exponents here), empty path segments (`ctx.a..b`, `ctx.a.`),
//! and `true`/`false`/`null` run into a longer word (`trueish`). Where it
//! panics, we decide: a backslash before a multi-byte character is kept
//! like any other, one at the end of the source leaves the string
//! unterminated, and a number too large for an f64 (a panic in `==`) is
//! out of range. Length and nesting are bounded so a hostile definition
//! cannot exhaust the stack.

use std::fmt::{self, Write as _};
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Longest source, and longest canonical text, accepted: a guard is a
/// line of a definition, not a program.
pub const MAX_SOURCE_BYTES: usize = 4096;

/// Deepest nesting of `(` and `!` accepted. Each level adds at most four
/// JSON nestings to the serialized AST, so 24 keeps a stored guard well
/// inside serde_json's default recursion limit of 128.
pub const MAX_DEPTH: usize = 24;

/// A parsed guard. `And` and `Or` hold two or more operands, one chain of
/// the source each (a parenthesized chain inside is its own node).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Guard {
    Truthy(Path),
    Eq(Path, Literal),
    Ne(Path, Literal),
    Lt(Path, #[serde(with = "exact_f64")] f64),
    Le(Path, #[serde(with = "exact_f64")] f64),
    Gt(Path, #[serde(with = "exact_f64")] f64),
    Ge(Path, #[serde(with = "exact_f64")] f64),
    Not(Box<Guard>),
    And(Vec<Guard>),
    Or(Vec<Guard>),
}

/// `ctx.a.b` as its segments `["a", "b"]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Path(pub Vec<String>);

/// The right-hand side of `==` / `!=`. `Str` holds the text between the
/// quotes as written (see the module doc on backslashes).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Literal {
    Null,
    Bool(bool),
    Num(#[serde(with = "exact_f64")] f64),
    Str(String),
}

/// f64 in a stored guard: serde_json's default float parsing can be off by
/// an ulp, which would change a guard between the node that parsed it and
/// one that reads it back. So text formats get the shortest exact decimal
/// as a string (Rust's formatting and parsing round-trip exactly); binary
/// formats get the f64 itself.
mod exact_f64 {
    use serde::{de, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(n: &f64, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(n)
        } else {
            s.serialize_f64(*n)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        let n = if d.is_human_readable() {
            let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
            text.parse::<f64>().map_err(de::Error::custom)?
        } else {
            f64::deserialize(d)?
        };
        if n.is_finite() {
            Ok(n)
        } else {
            Err(de::Error::custom("guard number is not finite"))
        }
    }
}

/// Why a guard does not parse, with the byte offset into the source.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GuardError {
    #[error("guard: expected {expected} at {pos}")]
    Expected { pos: usize, expected: &'static str },
    #[error("guard: unterminated string starting at {pos}")]
    UnterminatedString { pos: usize },
    #[error("guard: number out of range at {pos}")]
    NumberOutOfRange { pos: usize },
    #[error("guard: nested deeper than {max} at {pos}")]
    TooDeep { pos: usize, max: usize },
    #[error("guard: {len} bytes, longer than {max}")]
    TooLong { len: usize, max: usize },
    #[error("guard: canonical form is {len} bytes, longer than {max}")]
    CanonicalTooLong { len: usize, max: usize },
}

impl GuardError {
    /// The byte offset the error refers to (for a length error, the limit).
    pub fn pos(&self) -> usize {
        match *self {
            GuardError::Expected { pos, .. }
            | GuardError::UnterminatedString { pos }
            | GuardError::NumberOutOfRange { pos }
            | GuardError::TooDeep { pos, .. } => pos,
            GuardError::TooLong { max, .. } | GuardError::CanonicalTooLong { max, .. } => max,
        }
    }
}

/// Parses a guard; see the module doc for the grammar.
///
/// The canonical text ([`Guard`]'s `Display`) is bounded like the source,
/// so whatever parses here can be stored as text and parsed back.
pub fn parse(src: &str) -> Result<Guard, GuardError> {
    if src.len() > MAX_SOURCE_BYTES {
        return Err(GuardError::TooLong {
            len: src.len(),
            max: MAX_SOURCE_BYTES,
        });
    }
    let mut p = Parser {
        src,
        pos: 0,
        depth: 0,
    };
    let guard = p.or()?;
    p.skip_ws();
    if p.pos < src.len() {
        return Err(p.expected("'&&', '||' or the end"));
    }
    let mut counter = Counter(0);
    // Counting never fails: `Counter` accepts every write.
    let _ = write!(counter, "{guard}");
    if counter.0 > MAX_SOURCE_BYTES {
        return Err(GuardError::CanonicalTooLong {
            len: counter.0,
            max: MAX_SOURCE_BYTES,
        });
    }
    Ok(guard)
}

impl FromStr for Guard {
    type Err = GuardError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse(s)
    }
}

impl Guard {
    /// Whether the guard holds for `ctx`. Reads only `ctx`, allocates
    /// nothing, never panics.
    pub fn eval(&self, ctx: &Value) -> bool {
        match self {
            Guard::Truthy(p) => truthy(p.resolve(ctx)),
            Guard::Eq(p, lit) => equals(p.resolve(ctx), lit),
            Guard::Ne(p, lit) => !equals(p.resolve(ctx), lit),
            Guard::Lt(p, n) => number(p.resolve(ctx)).is_some_and(|v| v < *n),
            Guard::Le(p, n) => number(p.resolve(ctx)).is_some_and(|v| v <= *n),
            Guard::Gt(p, n) => number(p.resolve(ctx)).is_some_and(|v| v > *n),
            Guard::Ge(p, n) => number(p.resolve(ctx)).is_some_and(|v| v >= *n),
            Guard::Not(g) => !g.eval(ctx),
            Guard::And(gs) => gs.iter().all(|g| g.eval(ctx)),
            Guard::Or(gs) => gs.iter().any(|g| g.eval(ctx)),
        }
    }
}

impl Path {
    /// The value at this path, `None` for missing (which tests as `null`).
    fn resolve<'v>(&self, ctx: &'v Value) -> Option<&'v Value> {
        let mut cur = ctx;
        for seg in &self.0 {
            cur = cur.as_object()?.get(seg.as_str())?;
        }
        Some(cur)
    }
}

fn truthy(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(Value::Number(n)) => n.as_f64().is_some_and(|f| f != 0.0),
        Some(Value::String(s)) => !s.is_empty(),
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::Object(o)) => !o.is_empty(),
    }
}

fn equals(v: Option<&Value>, lit: &Literal) -> bool {
    match (v.unwrap_or(&Value::Null), lit) {
        (Value::Null, Literal::Null) => true,
        (Value::Bool(a), Literal::Bool(b)) => a == b,
        (Value::Number(a), Literal::Num(b)) => {
            a.as_f64().is_some_and(|a| (a - b).abs() < f64::EPSILON)
        }
        (Value::String(a), Literal::Str(b)) => a == b,
        _ => false,
    }
}

fn number(v: Option<&Value>) -> Option<f64> {
    v?.as_f64()
}

type MakeOrdering = fn(Path, f64) -> Guard;

/// The ordering operators and their nodes; two-character tokens first, so
/// `<=` is not read as `<`.
const ORDERINGS: [(&str, MakeOrdering); 4] = [
    (">=", Guard::Ge),
    ("<=", Guard::Le),
    (">", Guard::Gt),
    ("<", Guard::Lt),
];

struct Parser<'a> {
    src: &'a str,
    pos: usize,
    depth: usize,
}

impl Parser<'_> {
    fn rest(&self) -> &str {
        &self.src[self.pos..]
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn eat(&mut self, token: &str) -> bool {
        let found = self.rest().starts_with(token);
        if found {
            self.pos += token.len();
        }
        found
    }

    fn skip_ws(&mut self) {
        while let Some(c) = self.peek().filter(|c| c.is_whitespace()) {
            self.pos += c.len_utf8();
        }
    }

    fn expected(&self, expected: &'static str) -> GuardError {
        GuardError::Expected {
            pos: self.pos,
            expected,
        }
    }

    /// Enters a `(` or `!`; the parser recurses only there.
    fn enter(&mut self) -> Result<(), GuardError> {
        if self.depth == MAX_DEPTH {
            return Err(GuardError::TooDeep {
                pos: self.pos,
                max: MAX_DEPTH,
            });
        }
        self.depth += 1;
        Ok(())
    }

    fn or(&mut self) -> Result<Guard, GuardError> {
        let first = self.and()?;
        self.skip_ws();
        if !self.eat("||") {
            return Ok(first);
        }
        let mut all = vec![first, self.and()?];
        loop {
            self.skip_ws();
            if !self.eat("||") {
                return Ok(Guard::Or(all));
            }
            all.push(self.and()?);
        }
    }

    fn and(&mut self) -> Result<Guard, GuardError> {
        let first = self.unary()?;
        self.skip_ws();
        if !self.eat("&&") {
            return Ok(first);
        }
        let mut all = vec![first, self.unary()?];
        loop {
            self.skip_ws();
            if !self.eat("&&") {
                return Ok(Guard::And(all));
            }
            all.push(self.unary()?);
        }
    }

    fn unary(&mut self) -> Result<Guard, GuardError> {
        self.skip_ws();
        match self.peek() {
            Some('!') => {
                self.enter()?;
                self.pos += 1;
                let inner = self.unary()?;
                self.depth -= 1;
                Ok(Guard::Not(Box::new(inner)))
            }
            Some('(') => {
                self.enter()?;
                self.pos += 1;
                let inner = self.or()?;
                self.skip_ws();
                if !self.eat(")") {
                    return Err(self.expected("')'"));
                }
                self.depth -= 1;
                Ok(inner)
            }
            _ => self.test(),
        }
    }

    fn test(&mut self) -> Result<Guard, GuardError> {
        let path = self.path()?;
        self.skip_ws();
        if self.eat("==") {
            self.skip_ws();
            return Ok(Guard::Eq(path, self.literal()?));
        }
        if self.eat("!=") {
            self.skip_ws();
            return Ok(Guard::Ne(path, self.literal()?));
        }
        for (token, make) in ORDERINGS {
            if self.eat(token) {
                self.skip_ws();
                return Ok(make(path, self.number()?));
            }
        }
        if self.peek() == Some('=') {
            return Err(self.expected("a comparison operator (== != < <= > >=)"));
        }
        Ok(Guard::Truthy(path))
    }

    fn path(&mut self) -> Result<Path, GuardError> {
        if !self.eat("ctx.") {
            return Err(self.expected("a path 'ctx.<name>', '!' or '('"));
        }
        let mut segments = Vec::new();
        loop {
            let start = self.pos;
            while let Some(c) = self.peek().filter(|c| is_name_char(*c)) {
                self.pos += c.len_utf8();
            }
            if self.pos == start {
                return Err(self.expected("a field name"));
            }
            segments.push(self.src[start..self.pos].to_string());
            if !self.eat(".") {
                return Ok(Path(segments));
            }
        }
    }

    fn literal(&mut self) -> Result<Literal, GuardError> {
        match self.peek() {
            Some('"') => self.string().map(Literal::Str),
            Some(c) if c == '-' || c == '.' || c.is_ascii_digit() => {
                self.number().map(Literal::Num)
            }
            _ => {
                const LITERAL: &str = "a literal (true, false, null, a string or a number)";
                let start = self.pos;
                let word_end = self
                    .rest()
                    .find(|c| !is_name_char(c))
                    .map_or(self.src.len(), |n| start + n);
                let lit = match &self.src[start..word_end] {
                    "true" => Literal::Bool(true),
                    "false" => Literal::Bool(false),
                    "null" => Literal::Null,
                    _ => return Err(self.expected(LITERAL)),
                };
                self.pos = word_end;
                Ok(lit)
            }
        }
    }

    fn string(&mut self) -> Result<String, GuardError> {
        let open = self.pos;
        self.pos += 1;
        let mut chars = self.rest().char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => {
                    let value = self.src[open + 1..self.pos + i].to_string();
                    self.pos += i + 1;
                    return Ok(value);
                }
                '\\' if chars.next().is_none() => break,
                _ => {}
            }
        }
        Err(GuardError::UnterminatedString { pos: open })
    }

    fn number(&mut self) -> Result<f64, GuardError> {
        let start = self.pos;
        self.eat("-");
        let int = self.digits();
        let frac = if self.eat(".") { self.digits() } else { 0 };
        if int == 0 && frac == 0 {
            self.pos = start;
            return Err(self.expected("a number"));
        }
        if self.peek().is_some_and(|c| is_name_char(c) || c == '.') {
            return Err(self.expected("the end of the number (no exponents)"));
        }
        let n: f64 = self.src[start..self.pos].parse().map_err(|_| {
            // Unreachable for the forms accepted above; kept as an error, not a panic.
            GuardError::Expected {
                pos: start,
                expected: "a number",
            }
        })?;
        if !n.is_finite() {
            return Err(GuardError::NumberOutOfRange { pos: start });
        }
        Ok(n)
    }

    fn digits(&mut self) -> usize {
        let n = self.rest().bytes().take_while(u8::is_ascii_digit).count();
        self.pos += n;
        n
    }
}

fn is_name_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Counts the bytes of the canonical text without building it.
struct Counter(usize);

impl fmt::Write for Counter {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0 += s.len();
        Ok(())
    }
}

/// The canonical text: single spaces around binary operators, parentheses
/// only where the tree needs them. For a tree from [`parse`] it parses back
/// to the same `Guard` and nests no deeper than the source it came from
/// (the language cannot write every tree: a string holding a bare `"`).
impl fmt::Display for Guard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Guard::Truthy(p) => write!(f, "{p}"),
            Guard::Eq(p, lit) => write!(f, "{p} == {lit}"),
            Guard::Ne(p, lit) => write!(f, "{p} != {lit}"),
            Guard::Lt(p, n) => write!(f, "{p} < {n}"),
            Guard::Le(p, n) => write!(f, "{p} <= {n}"),
            Guard::Gt(p, n) => write!(f, "{p} > {n}"),
            Guard::Ge(p, n) => write!(f, "{p} >= {n}"),
            Guard::Not(g) => match **g {
                Guard::And(_) | Guard::Or(_) => write!(f, "!({g})"),
                _ => write!(f, "!{g}"),
            },
            Guard::And(gs) => chain(f, gs, " && ", |g| matches!(g, Guard::And(_) | Guard::Or(_))),
            Guard::Or(gs) => chain(f, gs, " || ", |g| matches!(g, Guard::Or(_))),
        }
    }
}

fn chain(
    f: &mut fmt::Formatter<'_>,
    operands: &[Guard],
    op: &str,
    needs_parens: fn(&Guard) -> bool,
) -> fmt::Result {
    for (i, g) in operands.iter().enumerate() {
        if i > 0 {
            f.write_str(op)?;
        }
        if needs_parens(g) {
            write!(f, "({g})")?;
        } else {
            write!(f, "{g}")?;
        }
    }
    Ok(())
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ctx")?;
        for seg in &self.0 {
            write!(f, ".{seg}")?;
        }
        Ok(())
    }
}

impl fmt::Display for Literal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Literal::Null => f.write_str("null"),
            Literal::Bool(b) => write!(f, "{b}"),
            // Rust prints the shortest decimal that reads back to the same
            // f64, never with an exponent: both are what the grammar needs.
            Literal::Num(n) => write!(f, "{n}"),
            Literal::Str(s) => write!(f, "\"{s}\""),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn g(src: &str) -> Guard {
        parse(src).unwrap_or_else(|e| panic!("{src:?}: {e}"))
    }

    fn err(src: &str) -> String {
        match parse(src) {
            Ok(guard) => panic!("{src:?} parsed as {guard:?}"),
            Err(e) => e.to_string(),
        }
    }

    fn path(segments: &[&str]) -> Path {
        Path(segments.iter().map(|s| s.to_string()).collect())
    }

    fn t(name: &str) -> Guard {
        Guard::Truthy(path(&[name]))
    }

    #[test]
    fn precedence_and_associativity() {
        let (a, b, c) = (t("a"), t("b"), t("c"));
        // `&&` binds tighter than `||`, on either side.
        assert_eq!(
            g("ctx.a || ctx.b && ctx.c"),
            Guard::Or(vec![a.clone(), Guard::And(vec![b.clone(), c.clone()])])
        );
        assert_eq!(
            g("ctx.a && ctx.b || ctx.c"),
            Guard::Or(vec![Guard::And(vec![a.clone(), b.clone()]), c.clone()])
        );
        // A chain is one node; parentheses make their own.
        assert_eq!(
            g("ctx.a || ctx.b || ctx.c"),
            Guard::Or(vec![a.clone(), b.clone(), c.clone()])
        );
        assert_eq!(
            g("(ctx.a || ctx.b) || ctx.c"),
            Guard::Or(vec![Guard::Or(vec![a.clone(), b.clone()]), c.clone()])
        );
        assert_eq!(g("((ctx.a))"), a);
        // `!` binds tighter than `&&` but looser than a comparison.
        assert_eq!(
            g("!ctx.a && ctx.b"),
            Guard::And(vec![Guard::Not(Box::new(a.clone())), b.clone()])
        );
        assert_eq!(
            g("!ctx.a == 1"),
            Guard::Not(Box::new(Guard::Eq(path(&["a"]), Literal::Num(1.0))))
        );
        assert_eq!(g("!!ctx.a"), Guard::Not(Box::new(Guard::Not(Box::new(a)))));
        let ctx = json!({"a": false, "b": true, "c": true});
        assert!(g("ctx.a || ctx.b && ctx.c").eval(&ctx));
        assert!(!g("(ctx.a || ctx.b) && !ctx.c").eval(&ctx));
    }

    #[test]
    fn truthiness() {
        let guard = g("ctx.v");
        let not = g("!ctx.v");
        for (v, want) in [
            (json!(null), false),
            (json!(false), false),
            (json!(0), false),
            (json!(0.0), false),
            (json!(-0.0), false),
            (json!(""), false),
            (json!([]), false),
            (json!({}), false),
            (json!(true), true),
            (json!(1), true),
            (json!(-1), true),
            (json!(0.001), true),
            (json!("0"), true),
            (json!("false"), true),
            (json!([0]), true),
            (json!({"k": null}), true),
        ] {
            let ctx = json!({ "v": v });
            assert_eq!(guard.eval(&ctx), want, "{v}");
            assert_eq!(not.eval(&ctx), !want, "!{v}");
        }
        assert!(!guard.eval(&json!({})));
        assert!(not.eval(&json!({})));
    }

    #[test]
    fn comparisons() {
        let cases = [
            // numbers, ints and floats alike
            ("ctx.n == 1", json!(1), true),
            ("ctx.n == 1.0", json!(1), true),
            ("ctx.n == 1", json!(1.0), true),
            ("ctx.n == 1.", json!(1), true),
            ("ctx.n == .5", json!(0.5), true),
            ("ctx.n == -.5", json!(-0.5), true),
            ("ctx.n == 007", json!(7), true),
            ("ctx.n == 0", json!(-0.0), true),
            ("ctx.n != 1", json!(2), true),
            ("ctx.n > -10", json!(-9), true),
            ("ctx.n > -10", json!(-10), false),
            ("ctx.n >= -10", json!(-10), true),
            ("ctx.n < 2.5", json!(2), true),
            ("ctx.n <= 2", json!(2.0), true),
            ("ctx.n > 1", json!(u64::MAX), true),
            ("ctx.n < 0", json!(i64::MIN), true),
            // f64 on both sides, as the original: 2^53 + 1 reads as 2^53 ...
            (
                "ctx.n == 9007199254740992",
                json!(9007199254740993u64),
                true,
            ),
            // ... and equal means closer than f64::EPSILON.
            ("ctx.n == 0", json!(1e-20), true),
            ("ctx.n == 0.1", json!(0.1), true),
            ("ctx.n == 0.1", json!(0.1000001), false),
            // strings: equality only; ordering is false on non-numbers
            ("ctx.s == \"on\"", json!("on"), true),
            ("ctx.s == \"on\"", json!("On"), false),
            ("ctx.s != \"on\"", json!("off"), true),
            ("ctx.s == \"\"", json!(""), true),
            ("ctx.s > 1", json!("2"), false),
            ("ctx.s < 1", json!("0"), false),
            ("ctx.s <= 1", json!(true), false),
            ("ctx.s >= 0", json!(null), false),
            ("ctx.s >= 0", json!([1]), false),
            ("ctx.s == 1", json!("1"), false),
            ("ctx.s == true", json!(1), false),
            // bool and null
            ("ctx.b == true", json!(true), true),
            ("ctx.b == false", json!(false), true),
            ("ctx.b == false", json!(null), false),
            ("ctx.b == null", json!(null), true),
            ("ctx.b == null", json!(0), false),
            ("ctx.b != null", json!(false), true),
            // arrays and objects equal nothing
            ("ctx.x == null", json!([]), false),
            ("ctx.x != null", json!({}), true),
        ];
        for (src, v, want) in cases {
            let ctx = json!({ "n": v, "s": v, "b": v, "x": v });
            assert_eq!(g(src).eval(&ctx), want, "{src} with {v}");
        }
    }

    #[test]
    fn missing_paths_are_null() {
        let ctx = json!({"o": {"p": 1}, "arr": [1, 2], "s": "x", "n": null, "0": true});
        for (src, want) in [
            ("ctx.missing == null", true),
            ("ctx.missing != 1", true),
            ("ctx.missing", false),
            ("!ctx.missing", true),
            ("ctx.missing > 0 || ctx.missing <= 0", false),
            ("ctx.o.p == 1", true),
            ("ctx.o.q == null", true),
            ("ctx.o.p.deeper == null", true),
            ("ctx.s.len == null", true),
            ("ctx.n.x == null", true),
            // no array indexes: a numeric segment is an object key
            ("ctx.arr.0 == null", true),
            ("ctx.arr.0", false),
            ("ctx.0", true),
        ] {
            assert_eq!(g(src).eval(&ctx), want, "{src}");
        }
        // A ctx that is not an object has no fields.
        assert!(g("ctx.a == null").eval(&json!([1])));
        assert!(!g("ctx.a").eval(&json!("a")));
    }

    #[test]
    fn strings_keep_their_backslashes() {
        assert_eq!(
            g(r#"ctx.s == "a\"b""#),
            Guard::Eq(path(&["s"]), Literal::Str(r#"a\"b"#.into()))
        );
        assert!(g(r#"ctx.s == "a\"b""#).eval(&json!({"s": "a\\\"b"})));
        assert!(!g(r#"ctx.s == "a\"b""#).eval(&json!({"s": "a\"b"})));
        assert!(g(r#"ctx.s == "C:\\x""#).eval(&json!({"s": "C:\\\\x"})));
        assert!(g(r#"ctx.s == "\n""#).eval(&json!({"s": "\\n"})));
        // The original panics on a backslash before a multi-byte character.
        assert!(g(r#"ctx.s == "\é""#).eval(&json!({"s": "\\é"})));
        assert!(g("ctx.s == \"tab\there\"").eval(&json!({"s": "tab\there"})));
        assert!(g("ctx.größe == \"grün\"").eval(&json!({"größe": "grün"})));
        assert!(g("ctx.s == \"a && b || (c)\"").eval(&json!({"s": "a && b || (c)"})));
    }

    #[test]
    fn whitespace() {
        let want = Guard::And(vec![
            Guard::Gt(path(&["a"]), 1.0),
            Guard::Not(Box::new(t("b"))),
        ]);
        for src in [
            "ctx.a>1&&!ctx.b",
            "  ctx.a  >  1  &&  !  ctx.b  ",
            "\tctx.a\n>\r\n1\u{a0}&&\u{2003}!ctx.b\u{3000}",
            "(ctx.a > 1) && (!ctx.b)",
        ] {
            assert_eq!(g(src), want, "{src:?}");
        }
    }

    #[test]
    fn errors_name_the_position() {
        for (src, want) in [
            ("", "guard: expected a path 'ctx.<name>', '!' or '(' at 0"),
            (
                "   ",
                "guard: expected a path 'ctx.<name>', '!' or '(' at 3",
            ),
            (
                "foo.bar",
                "guard: expected a path 'ctx.<name>', '!' or '(' at 0",
            ),
            (
                "ctx",
                "guard: expected a path 'ctx.<name>', '!' or '(' at 0",
            ),
            ("ctx.", "guard: expected a field name at 4"),
            ("ctx.a.", "guard: expected a field name at 6"),
            ("ctx.a..b", "guard: expected a field name at 6"),
            ("ctx. a", "guard: expected a field name at 4"),
            ("(ctx.a && ctx.b", "guard: expected ')' at 15"),
            ("!(ctx.a && ctx.b", "guard: expected ')' at 16"),
            ("(ctx.a && ctx.b x", "guard: expected ')' at 16"),
            (
                "ctx.a &&",
                "guard: expected a path 'ctx.<name>', '!' or '(' at 8",
            ),
            (
                "ctx.a || || ctx.b",
                "guard: expected a path 'ctx.<name>', '!' or '(' at 9",
            ),
            (
                "ctx.a == ",
                "guard: expected a literal (true, false, null, a string or a number) at 9",
            ),
            (
                "ctx.a == yes",
                "guard: expected a literal (true, false, null, a string or a number) at 9",
            ),
            (
                "ctx.a == truex",
                "guard: expected a literal (true, false, null, a string or a number) at 9",
            ),
            (
                "ctx.a == ctx.b",
                "guard: expected a literal (true, false, null, a string or a number) at 9",
            ),
            ("ctx.a > abc", "guard: expected a number at 8"),
            ("ctx.a > \"x\"", "guard: expected a number at 8"),
            ("ctx.a > true", "guard: expected a number at 8"),
            ("ctx.a > -", "guard: expected a number at 8"),
            ("ctx.a > - 1", "guard: expected a number at 8"),
            ("ctx.a > .", "guard: expected a number at 8"),
            (
                "ctx.a > 1e5",
                "guard: expected the end of the number (no exponents) at 9",
            ),
            (
                "ctx.a > 1.2.3",
                "guard: expected the end of the number (no exponents) at 11",
            ),
            (
                "ctx.a = 1",
                "guard: expected a comparison operator (== != < <= > >=) at 6",
            ),
            (
                "ctx.name == \"unclosed",
                "guard: unterminated string starting at 12",
            ),
            (
                "ctx.s == \"ends in \\",
                "guard: unterminated string starting at 9",
            ),
            (
                "ctx.s == \"ends in \\\"",
                "guard: unterminated string starting at 9",
            ),
        ] {
            assert_eq!(err(src), want, "{src:?}");
        }
        let huge = format!("ctx.a == {}", "9".repeat(400));
        assert_eq!(err(&huge), "guard: number out of range at 9");
        assert_eq!(parse(&huge).unwrap_err().pos(), 9);
    }

    /// The original stops at the end of the first complete expression and
    /// ignores the rest; that silently changes what a guard means.
    #[test]
    fn trailing_garbage_is_an_error() {
        for (src, pos) in [
            ("ctx.a ctx.b", 6),
            ("ctx.a == 1 == 2", 11),
            ("ctx.a == true_x", 9),
            ("ctx.a & ctx.b", 6),
            ("ctx.a | ctx.b", 6),
            ("ctx.a)", 5),
            ("(ctx.a) == 1", 8),
            ("ctx.a !ctx.b", 6),
            ("ctx.a; drop", 5),
        ] {
            let e = parse(src).unwrap_err();
            assert_eq!(e.pos(), pos, "{src:?}: {e}");
        }
        assert_eq!(
            err("ctx.a ctx.b"),
            "guard: expected '&&', '||' or the end at 6"
        );
    }

    #[test]
    fn depth_is_bounded() {
        let nest = |n: usize, open: &str, close: &str| {
            format!("{}ctx.a{}", open.repeat(n), close.repeat(n))
        };
        g(&nest(MAX_DEPTH, "(", ")"));
        g(&nest(MAX_DEPTH, "!", ""));
        g(&nest(MAX_DEPTH / 2, "!(", ")"));
        assert_eq!(
            err(&nest(MAX_DEPTH + 1, "(", ")")),
            format!("guard: nested deeper than {MAX_DEPTH} at {MAX_DEPTH}")
        );
        assert_eq!(
            parse(&nest(MAX_DEPTH + 1, "!", "")).unwrap_err(),
            GuardError::TooDeep {
                pos: MAX_DEPTH,
                max: MAX_DEPTH
            }
        );
        // A hostile source fails fast, long before the stack would.
        let deep = "(".repeat(MAX_SOURCE_BYTES);
        assert!(matches!(parse(&deep), Err(GuardError::TooDeep { .. })));
        // Long flat chains are loops, not recursion.
        let chain = vec!["ctx.a"; 400].join("||");
        assert!(matches!(g(&chain), Guard::Or(v) if v.len() == 400));
    }

    #[test]
    fn length_is_bounded() {
        let long = format!("ctx.{}", "a".repeat(MAX_SOURCE_BYTES - 4));
        g(&long);
        assert_eq!(
            parse(&format!("{long}a")).unwrap_err(),
            GuardError::TooLong {
                len: MAX_SOURCE_BYTES + 1,
                max: MAX_SOURCE_BYTES
            }
        );
        // Spacing makes the canonical text longer than a compact source;
        // refusing that keeps every accepted guard storable as text.
        let compact = vec!["ctx.a"; 550].join("||");
        assert!(compact.len() <= MAX_SOURCE_BYTES);
        assert!(matches!(
            parse(&compact),
            Err(GuardError::CanonicalTooLong { .. })
        ));
    }

    #[test]
    fn display_is_canonical_and_parses_back() {
        for (src, canonical) in [
            ("ctx.a", "ctx.a"),
            ("ctx.a.b_c.0", "ctx.a.b_c.0"),
            ("ctx.a==\"x\"", "ctx.a == \"x\""),
            ("ctx.a!=null", "ctx.a != null"),
            ("ctx.a == true", "ctx.a == true"),
            ("ctx.a==false", "ctx.a == false"),
            ("ctx.n>=1.50", "ctx.n >= 1.5"),
            ("ctx.n<=-.5", "ctx.n <= -0.5"),
            ("ctx.n < 1.", "ctx.n < 1"),
            ("ctx.n > -0", "ctx.n > -0"),
            ("ctx.n > 0.1", "ctx.n > 0.1"),
            (
                "ctx.n == 100000000000000000000000",
                "ctx.n == 100000000000000000000000",
            ),
            ("ctx.n == 0.0000001", "ctx.n == 0.0000001"),
            ("ctx.s == \"a\\\"b\\\\\"", "ctx.s == \"a\\\"b\\\\\""),
            ("((ctx.a))", "ctx.a"),
            ("ctx.a||ctx.b&&ctx.c", "ctx.a || ctx.b && ctx.c"),
            ("(ctx.a||ctx.b)&&ctx.c", "(ctx.a || ctx.b) && ctx.c"),
            ("ctx.a||(ctx.b||ctx.c)", "ctx.a || (ctx.b || ctx.c)"),
            ("(ctx.a&&ctx.b)&&ctx.c", "(ctx.a && ctx.b) && ctx.c"),
            ("(ctx.a&&ctx.b)||ctx.c", "ctx.a && ctx.b || ctx.c"),
            ("!(ctx.a&&ctx.b)", "!(ctx.a && ctx.b)"),
            ("!(ctx.a)", "!ctx.a"),
            ("!(ctx.a == 1)", "!ctx.a == 1"),
            ("! ! ctx.a", "!!ctx.a"),
            ("!(!ctx.a || ctx.b > 2)", "!(!ctx.a || ctx.b > 2)"),
        ] {
            let guard = g(src);
            assert_eq!(guard.to_string(), canonical, "{src:?}");
            assert_eq!(g(canonical), guard, "{canonical:?}");
            assert_eq!(canonical.parse::<Guard>(), Ok(guard));
        }
    }

    /// The stored form: a guard at the nesting limit still deserializes
    /// with serde_json's default recursion limit.
    #[test]
    fn serde_roundtrip_at_the_depth_limit() {
        let mut src = String::from("ctx.x == \"s\"");
        for i in 0..MAX_DEPTH {
            src = if i % 2 == 0 {
                format!("ctx.a || ctx.b && ({src})")
            } else {
                format!("ctx.a && (ctx.b || {src})")
            };
        }
        let guard = g(&src);
        let json = serde_json::to_string(&guard).unwrap();
        fn nesting(v: &Value) -> usize {
            match v {
                Value::Array(a) => 1 + a.iter().map(nesting).max().unwrap_or(0),
                Value::Object(o) => 1 + o.values().map(nesting).max().unwrap_or(0),
                _ => 0,
            }
        }
        let levels = nesting(&serde_json::from_str(&json).unwrap());
        assert!(levels <= 4 * MAX_DEPTH + 8, "{levels}");
        let back: Guard = serde_json::from_str(&json).unwrap();
        assert_eq!(back, guard);
        let not: Guard = serde_json::from_str(
            &serde_json::to_string(&g(&format!("{}ctx.a", "!".repeat(MAX_DEPTH)))).unwrap(),
        )
        .unwrap();
        // An even number of negations.
        assert!(not.eval(&json!({"a": 1})));
    }

    /// Numbers survive a JSON roundtrip bit for bit, however many digits.
    #[test]
    fn serde_keeps_numbers_exact() {
        for n in [
            0.1,
            0.30000000000000004,
            -1.0 / 3.0,
            123456789.12345679,
            9007199254740993.0,
            f64::MAX,
            f64::MIN_POSITIVE,
            5e-324,
            1.0000000000000002,
            -0.0,
        ] {
            let guard = g(&format!("ctx.a > {n} || ctx.b == {n}"));
            let json = serde_json::to_string(&guard).unwrap();
            let back: Guard = serde_json::from_str(&json).unwrap();
            assert_eq!(back.to_string(), guard.to_string(), "{json}");
            let bin: Guard = bincode::deserialize(&bincode::serialize(&guard).unwrap()).unwrap();
            assert_eq!(bin, guard);
            match (&back, &guard) {
                (Guard::Or(a), Guard::Or(b)) => match (&a[0], &b[0]) {
                    (Guard::Gt(_, x), Guard::Gt(_, y)) => assert_eq!(x.to_bits(), y.to_bits()),
                    _ => unreachable!(),
                },
                _ => unreachable!(),
            }
        }
    }

    /// Trusted-but-odd trees (not produced by `parse`) still evaluate
    /// without panicking.
    #[test]
    fn eval_never_panics_on_any_tree() {
        let ctx = json!({"a": 1});
        assert!(Guard::And(vec![]).eval(&ctx));
        assert!(!Guard::Or(vec![]).eval(&ctx));
        assert!(!Guard::Gt(path(&["a"]), f64::NAN).eval(&ctx));
        assert!(!Guard::Eq(path(&["a"]), Literal::Num(f64::INFINITY)).eval(&ctx));
        assert!(Guard::Truthy(Path(vec![])).eval(&ctx));
    }

    /// rstmdb-core 0.3.0's own guard tests, as (guard, ctx, result).
    #[test]
    fn the_original_cases() {
        let cases = [
            ("ctx.enabled", json!({"enabled": true}), true),
            ("ctx.enabled", json!({"enabled": false}), false),
            ("ctx.enabled", json!({"enabled": null}), false),
            ("ctx.enabled", json!({}), false),
            (
                "ctx.status == \"active\"",
                json!({"status": "active"}),
                true,
            ),
            (
                "ctx.status == \"active\"",
                json!({"status": "inactive"}),
                false,
            ),
            ("ctx.amount > 100", json!({"amount": 150}), true),
            ("ctx.amount > 100", json!({"amount": 50}), false),
            ("ctx.amount > 100", json!({"amount": 100}), false),
            ("ctx.amount >= 100", json!({"amount": 100}), true),
            ("ctx.a && ctx.b", json!({"a": true, "b": true}), true),
            ("ctx.a && ctx.b", json!({"a": true, "b": false}), false),
            ("ctx.a && ctx.b", json!({"a": false, "b": true}), false),
            ("ctx.a || ctx.b", json!({"a": true, "b": false}), true),
            ("ctx.a || ctx.b", json!({"a": false, "b": true}), true),
            ("ctx.a || ctx.b", json!({"a": false, "b": false}), false),
            ("ctx.order.paid", json!({"order": {"paid": true}}), true),
            ("ctx.order.paid", json!({"order": {"paid": false}}), false),
            ("ctx.order.paid", json!({"order": {}}), false),
            (
                "ctx.enabled && ctx.amount > 0 || ctx.override",
                json!({"enabled": true, "amount": 10, "override": false}),
                true,
            ),
            (
                "ctx.enabled && ctx.amount > 0 || ctx.override",
                json!({"enabled": false, "amount": 0, "override": true}),
                true,
            ),
            (
                "ctx.enabled && ctx.amount > 0 || ctx.override",
                json!({"enabled": false, "amount": 0, "override": false}),
                false,
            ),
            ("!ctx.disabled", json!({"disabled": false}), true),
            ("!ctx.disabled", json!({"disabled": true}), false),
            (
                "ctx.status != \"inactive\"",
                json!({"status": "active"}),
                true,
            ),
            (
                "ctx.status != \"inactive\"",
                json!({"status": "inactive"}),
                false,
            ),
            ("ctx.count < 10", json!({"count": 5}), true),
            ("ctx.count < 10", json!({"count": 10}), false),
            ("ctx.count < 10", json!({"count": 15}), false),
            ("ctx.count <= 10", json!({"count": 10}), true),
            ("ctx.count <= 10", json!({"count": 15}), false),
            ("ctx.count == 42", json!({"count": 42}), true),
            ("ctx.count == 42", json!({"count": 41}), false),
            ("ctx.flag == true", json!({"flag": true}), true),
            ("ctx.flag == true", json!({"flag": false}), false),
            ("ctx.flag == false", json!({"flag": false}), true),
            ("ctx.flag == false", json!({"flag": true}), false),
            ("ctx.value == null", json!({"value": null}), true),
            ("ctx.value == null", json!({"value": 123}), false),
            ("ctx.temp > -10", json!({"temp": 5}), true),
            ("ctx.temp > -10", json!({"temp": 0}), true),
            ("ctx.temp > -10", json!({"temp": -15}), false),
            ("ctx.rate >= 0.5", json!({"rate": 0.5}), true),
            ("ctx.rate >= 0.5", json!({"rate": 1.0}), true),
            ("ctx.rate >= 0.5", json!({"rate": 0.3}), false),
            (
                "ctx.order.customer.verified",
                json!({"order": {"customer": {"verified": true}}}),
                true,
            ),
            (
                "ctx.order.customer.verified",
                json!({"order": {"customer": {"verified": false}}}),
                false,
            ),
            ("ctx.order.customer.verified", json!({"order": {}}), false),
            ("ctx.order.customer.verified", json!({}), false),
            ("!(ctx.a && ctx.b)", json!({"a": true, "b": false}), true),
            ("!(ctx.a && ctx.b)", json!({"a": false, "b": true}), true),
            ("!(ctx.a && ctx.b)", json!({"a": true, "b": true}), false),
            (
                "(ctx.a || ctx.b) && ctx.c",
                json!({"a": true, "b": false, "c": true}),
                true,
            ),
            (
                "(ctx.a || ctx.b) && ctx.c",
                json!({"a": false, "b": true, "c": true}),
                true,
            ),
            (
                "(ctx.a || ctx.b) && ctx.c",
                json!({"a": true, "b": true, "c": false}),
                false,
            ),
            (
                "(ctx.a || ctx.b) && ctx.c",
                json!({"a": false, "b": false, "c": true}),
                false,
            ),
            (
                "((ctx.a || ctx.b) && ctx.c) || ctx.d",
                json!({"a": true, "b": false, "c": true, "d": false}),
                true,
            ),
            (
                "((ctx.a || ctx.b) && ctx.c) || ctx.d",
                json!({"a": false, "b": false, "c": false, "d": true}),
                true,
            ),
            (
                "((ctx.a || ctx.b) && ctx.c) || ctx.d",
                json!({"a": false, "b": false, "c": true, "d": false}),
                false,
            ),
            (
                "(ctx.a > 10 || ctx.b < 5) && ctx.c",
                json!({"a": 15, "b": 10, "c": true}),
                true,
            ),
            (
                "(ctx.a > 10 || ctx.b < 5) && ctx.c",
                json!({"a": 5, "b": 3, "c": true}),
                true,
            ),
            (
                "(ctx.a > 10 || ctx.b < 5) && ctx.c",
                json!({"a": 15, "b": 10, "c": false}),
                false,
            ),
            ("!!ctx.a", json!({"a": true}), true),
            ("!!ctx.a", json!({"a": false}), false),
            (
                "ctx.a && ctx.b || ctx.c",
                json!({"a": true, "b": true, "c": false}),
                true,
            ),
            (
                "ctx.a && ctx.b || ctx.c",
                json!({"a": false, "b": false, "c": true}),
                true,
            ),
            (
                "ctx.a && ctx.b || ctx.c",
                json!({"a": true, "b": false, "c": false}),
                false,
            ),
            ("ctx.value > 10", json!({"value": "not a number"}), false),
            ("ctx.value > 10", json!({"value": null}), false),
            ("!(ctx.amount > 100)", json!({"amount": 50}), true),
            ("!(ctx.amount > 100)", json!({"amount": 150}), false),
        ];
        for (src, ctx, want) in cases {
            assert_eq!(g(src).eval(&ctx), want, "{src} with {ctx}");
        }
        for bad in [
            "",
            "   ",
            "foo.bar",
            "ctx.",
            "!(ctx.a && ctx.b",
            "(ctx.a && ctx.b",
            "ctx.name == \"unclosed",
            "ctx.value > abc",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
