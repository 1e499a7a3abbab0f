//! Shared by the tests: a small parser for `include/mecha.h` (prototypes and
//! enums) and for the exported functions of this crate's sources, so the
//! header drift checks need no C parser or code generator.
#![allow(dead_code)] // each test file uses a different part

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A C function signature: return type, then each parameter's type and
/// name, as tokens (`const char *` is `["const", "char", "*"]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signature {
    /// The return type.
    pub ret: Vec<String>,
    /// (type, name) of each parameter.
    pub params: Vec<(Vec<String>, String)>,
}

/// The crate's directory (clients/c).
pub fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The text of `include/mecha.h`.
pub fn header_text() -> String {
    let path = crate_dir().join("include/mecha.h");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Removes `/* */` and `//` comments. The header has no string literal
/// holding comment markers (`extern "C"` has none), so no lexer is needed.
fn strip_c_comments(src: &str) -> String {
    let mut out = String::with_capacity(src.len());
    let mut rest = src;
    loop {
        let block = rest.find("/*");
        let line = rest.find("//");
        match (block, line) {
            // A `//` comment that starts first.
            (Some(b), Some(l)) if l < b => {
                out.push_str(&rest[..l]);
                rest = rest[l..].find('\n').map_or("", |n| &rest[l + n..]);
            }
            (Some(b), _) => {
                out.push_str(&rest[..b]);
                let end = rest[b + 2..]
                    .find("*/")
                    .expect("unterminated comment in the header");
                out.push(' ');
                rest = &rest[b + 2 + end + 2..];
            }
            (None, Some(l)) => {
                out.push_str(&rest[..l]);
                rest = rest[l..].find('\n').map_or("", |n| &rest[l + n..]);
            }
            (None, None) => {
                out.push_str(rest);
                return out;
            }
        }
    }
}

/// Drops preprocessor lines, and the `#ifdef __cplusplus` blocks whole (they
/// hold the `extern "C" {` wrapper, which is not a declaration).
fn strip_preprocessor(src: &str) -> String {
    let mut out = String::new();
    let mut in_cplusplus = false;
    for line in src.lines() {
        let t = line.trim_start();
        if t.starts_with("#ifdef __cplusplus") {
            in_cplusplus = true;
        } else if in_cplusplus {
            in_cplusplus = !t.starts_with("#endif");
        } else if !t.starts_with('#') {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// C tokens: identifiers/numbers, and every other non-space character alone.
fn c_tokens(src: &str) -> Vec<String> {
    let mut tokens = Vec::new();
    let mut word = String::new();
    for ch in src.chars() {
        if ch.is_ascii_alphanumeric() || ch == '_' {
            word.push(ch);
            continue;
        }
        if !word.is_empty() {
            tokens.push(std::mem::take(&mut word));
        }
        if !ch.is_whitespace() {
            tokens.push(ch.to_string());
        }
    }
    if !word.is_empty() {
        tokens.push(word);
    }
    tokens
}

/// Everything the header declares.
#[derive(Debug, Default)]
pub struct Header {
    /// Function prototypes by name.
    pub functions: BTreeMap<String, Signature>,
    /// `typedef enum NAME { ... } NAME;` entries by enum name, in order.
    pub enums: BTreeMap<String, Vec<(String, i64)>>,
    /// `#define NAME VALUE` object macros.
    pub defines: BTreeMap<String, String>,
}

/// Parses the header's declarations.
pub fn parse_header(src: &str) -> Header {
    let no_comments = strip_c_comments(src);
    let mut header = Header::default();
    for line in no_comments.lines() {
        let mut words = line.split_whitespace();
        if words.next() == Some("#define") {
            if let (Some(name), Some(value)) = (words.next(), words.next()) {
                header.defines.insert(name.to_owned(), value.to_owned());
            }
        }
    }
    let tokens = c_tokens(&strip_preprocessor(&no_comments));
    // Statements end at `;` outside braces.
    let mut statement: Vec<String> = Vec::new();
    let mut depth = 0;
    for tok in tokens {
        match tok.as_str() {
            "{" => depth += 1,
            "}" => depth -= 1,
            _ => {}
        }
        if tok == ";" && depth == 0 {
            parse_statement(&std::mem::take(&mut statement), &mut header);
        } else {
            statement.push(tok);
        }
    }
    assert!(
        statement.is_empty(),
        "header ends inside a declaration: {statement:?}"
    );
    header
}

fn parse_statement(st: &[String], header: &mut Header) {
    if st.first().map(String::as_str) == Some("typedef") {
        if st.get(1).map(String::as_str) == Some("enum") {
            let name = st[2].clone();
            let open = st.iter().position(|t| t == "{").expect("enum body");
            let close = st.iter().position(|t| t == "}").expect("enum body end");
            let mut entries = Vec::new();
            for entry in st[open + 1..close].split(|t| t == ",") {
                if entry.is_empty() {
                    continue; // a trailing comma
                }
                let (ident, value) = match entry {
                    [ident, eq, value @ ..] if eq == "=" => (ident.clone(), value.concat()),
                    _ => panic!("enum {name}: entry {entry:?} has no explicit value"),
                };
                let value: i64 = value
                    .parse()
                    .unwrap_or_else(|_| panic!("enum {name}: {ident} = {value:?}"));
                entries.push((ident, value));
            }
            assert_eq!(
                st[close + 1..],
                [name.as_str()],
                "typedef name of enum {name}"
            );
            header.enums.insert(name, entries);
        }
        // Other typedefs (the opaque struct) declare no function.
        return;
    }
    let open = st
        .iter()
        .position(|t| t == "(")
        .unwrap_or_else(|| panic!("not a function prototype: {st:?}"));
    let name = st[open - 1].clone();
    let ret = st[..open - 1].to_vec();
    assert_eq!(st.last().map(String::as_str), Some(")"), "prototype {name}");
    let inner = &st[open + 1..st.len() - 1];
    let params = if inner == ["void"] {
        Vec::new()
    } else {
        inner
            .split(|t| t == ",")
            .map(|p| {
                let (pname, ty) = p
                    .split_last()
                    .unwrap_or_else(|| panic!("{name}: empty parameter"));
                assert!(
                    !ty.is_empty() && pname != "*",
                    "{name}: every parameter needs a type and a name: {p:?}"
                );
                (ty.to_vec(), pname.clone())
            })
            .collect()
    };
    let previous = header
        .functions
        .insert(name.clone(), Signature { ret, params });
    assert!(previous.is_none(), "{name} is declared twice");
}

/// An `extern "C"` function found in the crate's sources.
#[derive(Debug)]
pub struct Exported {
    /// Whether `#[no_mangle]` precedes it (only then is it a C symbol).
    pub no_mangle: bool,
    /// Its signature, translated to C types.
    pub signature: Signature,
}

/// Every `extern "C" fn` in the `.rs` files under `src`, by name.
pub fn exported_functions(src_dir: &Path) -> BTreeMap<String, Exported> {
    let mut found = BTreeMap::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(src_dir)
        .expect("reading src/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .collect();
    files.sort();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("reading a source file");
        let mut from = 0;
        while let Some(at) = text[from..].find("extern \"C\" fn ") {
            let at = from + at;
            let (name, signature, end) = parse_rust_fn(&text[at + "extern \"C\" fn ".len()..]);
            // The attributes sit on the lines just above the `pub ... fn`.
            let before = &text[..at];
            let item_start = before.rfind("\n\n").map_or(0, |i| i + 2);
            let no_mangle = before[item_start..].lines().any(|l| {
                let l = l.trim();
                l == "#[no_mangle]" || l == "#[unsafe(no_mangle)]"
            });
            let previous = found.insert(
                name.clone(),
                Exported {
                    no_mangle,
                    signature,
                },
            );
            assert!(previous.is_none(), "{name} is defined twice");
            from = at + "extern \"C\" fn ".len() + end;
        }
    }
    found
}

/// Parses `name(params) -> Ret {` into the name, its C signature and the
/// length consumed.
fn parse_rust_fn(src: &str) -> (String, Signature, usize) {
    let open = src.find('(').expect("fn parameters");
    let name = src[..open].trim().to_owned();
    let mut depth = 0;
    let mut close = None;
    for (i, ch) in src.char_indices().skip(open) {
        match ch {
            '(' | '<' | '[' => depth += 1,
            ')' | '>' | ']' => {
                depth -= 1;
                if depth == 0 {
                    close = Some(i);
                    break;
                }
            }
            _ => {}
        }
    }
    let close = close.expect("end of parameters");
    let inner = &src[open + 1..close];
    let params = split_top_level(inner)
        .into_iter()
        .map(|p| {
            let (pname, ty) = p
                .split_once(':')
                .unwrap_or_else(|| panic!("{name}: parameter {p:?}"));
            (c_type(ty.trim(), &name), pname.trim().to_owned())
        })
        .collect();
    let body = src[close + 1..].find('{').expect("fn body") + close + 1;
    let ret = src[close + 1..body].trim();
    let ret = match ret.strip_prefix("->") {
        Some(ty) => c_type(ty.trim(), &name),
        None => vec!["void".to_owned()],
    };
    (name, Signature { ret, params }, body)
}

/// Splits on commas outside brackets, dropping a trailing empty part.
fn split_top_level(s: &str) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut depth = 0;
    for ch in s.chars() {
        match ch {
            '(' | '<' | '[' => depth += 1,
            ')' | '>' | ']' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(String::new());
                continue;
            }
            _ => {}
        }
        parts.last_mut().expect("never empty").push(ch);
    }
    parts
        .into_iter()
        .map(|p| p.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|p| !p.is_empty())
        .collect()
}

/// The C spelling of a Rust FFI type, as tokens. Panics on a type the C API
/// does not use, so a new one is added here deliberately.
pub fn c_type(rust: &str, func: &str) -> Vec<String> {
    if let Some(inner) = rust.strip_prefix("*mut ") {
        let mut t = c_type(inner.trim(), func);
        t.push("*".into());
        return t;
    }
    if let Some(inner) = rust.strip_prefix("*const ") {
        let mut t = c_type(inner.trim(), func);
        // `const char *` for a pointer to a plain type, `T * const *` else.
        if t.len() == 1 {
            t.insert(0, "const".into());
        } else {
            t.push("const".into());
        }
        t.push("*".into());
        return t;
    }
    let base = match rust {
        "c_char" => "char",
        "c_int" => "int",
        "c_void" => "void",
        "u8" => "uint8_t",
        "u32" => "uint32_t",
        "u64" => "uint64_t",
        "usize" => "size_t",
        "MechaClient" => "mecha_client",
        "MechaSubscription" => "mecha_subscription",
        "MechaMessage" => "mecha_message",
        "MechaRegistration" => "mecha_registration",
        "MechaCall" => "mecha_call",
        "MechaBindingSubscription" => "mecha_binding_subscription",
        "MechaBindingEvent" => "mecha_binding_event",
        "Code" => "mecha_status",
        other => panic!("{func}: no C spelling for the Rust type {other:?}; add it to c_type"),
    };
    vec![base.to_owned()]
}

/// Shows a token list as C source.
pub fn show(tokens: &[String]) -> String {
    tokens.join(" ").replace(" *", "*")
}
