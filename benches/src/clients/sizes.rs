//! How big each client library is: its source lines (code, not comments,
//! blank lines or tests) and its stripped binary size.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;

use super::{check, BinarySize, SourceSize};

/// The size of `path` after `strip --strip-all` (of a copy).
pub(super) fn stripped_size(what: &str, path: &Path, work: &Path) -> BinarySize {
    let what = format!("{what}, stripped");
    if !path.is_file() {
        return BinarySize {
            what,
            bytes: Err(format!("{} not found", path.display())),
        };
    }
    let copy = work.join(format!(
        "stripped-{}",
        path.file_name().and_then(OsStr::to_str).unwrap_or("binary")
    ));
    let bytes = Command::new("strip")
        .arg("--strip-all")
        .arg("-o")
        .arg(&copy)
        .arg(path)
        .output()
        .map_err(|e| format!("running strip: {e}"))
        .and_then(|output| {
            check("strip", "strip", &output).map_err(|e| format!("{e:#}"))?;
            std::fs::metadata(&copy)
                .map(|m| m.len())
                .map_err(|e| format!("{e}"))
        });
    BinarySize { what, bytes }
}

/// Languages, for the comment rule of [`count_code`].
#[derive(Clone, Copy, PartialEq, Eq)]
enum Lang {
    /// Rust, Go and C: `//` lines and `/* ... */` blocks.
    CLike,
    /// Python: `#` lines and docstrings.
    Python,
}

/// A library to measure: name, description, roots, which files count, and
/// their comment syntax.
type LibrarySpec<'a> = (
    &'static str,
    &'static str,
    Vec<PathBuf>,
    &'a dyn Fn(&Path) -> bool,
    Lang,
);

/// The library source of each client, tests excluded.
pub(super) fn source_sizes(repo: &Path) -> anyhow::Result<Vec<SourceSize>> {
    let is = |ext: &'static str| move |p: &Path| p.extension() == Some(OsStr::new(ext));
    let rust = |p: &Path| is("rs")(p) && !p.to_string_lossy().ends_with("tests.rs");
    let go = |p: &Path| is("go")(p) && !p.to_string_lossy().ends_with("_test.go");
    let c = |p: &Path| rust(p) || is("h")(p);
    let specs: [LibrarySpec; 5] = [
        (
            "Rust (mecha-client)",
            "clients/rust/src",
            vec![repo.join("clients/rust/src")],
            &rust,
            Lang::CLike,
        ),
        (
            "C (libmecha)",
            "clients/c/src + include/mecha.h; on top of mecha-client",
            vec![repo.join("clients/c/src"), repo.join("clients/c/include")],
            &c,
            Lang::CLike,
        ),
        (
            "Go",
            "clients/go/*.go",
            vec![repo.join("clients/go")],
            &go,
            Lang::CLike,
        ),
        (
            "Python",
            "clients/python/src/mecha (sync and asyncio)",
            vec![repo.join("clients/python/src/mecha")],
            &is("py"),
            Lang::Python,
        ),
        (
            "ABI crates under the Rust and C clients",
            "abi/src + abi/wire/src (shared with mechad)",
            vec![repo.join("abi/src"), repo.join("abi/wire/src")],
            &rust,
            Lang::CLike,
        ),
    ];
    let mut out = Vec::new();
    for (name, what, roots, keep, lang) in specs {
        let mut files = Vec::new();
        for root in &roots {
            collect(root, keep, &mut files)?;
        }
        let (mut lines, mut code) = (0, 0);
        for file in &files {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("reading {}", file.display()))?;
            let (l, c) = count_code(&text, lang);
            lines += l;
            code += c;
        }
        out.push(SourceSize {
            name,
            what,
            files: files.len(),
            lines,
            code,
        });
    }
    Ok(out)
}

/// Every file under `dir` (recursively) that `keep` accepts.
fn collect(dir: &Path, keep: &dyn Fn(&Path) -> bool, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let entries = std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))?;
    for entry in entries {
        let path = entry
            .with_context(|| format!("listing {}", dir.display()))?
            .path();
        if path.is_dir() {
            collect(&path, keep, out)?;
        } else if keep(&path) {
            out.push(path);
        }
    }
    Ok(())
}

/// (all lines, code lines) of one file. Code lines are the non-blank lines
/// that are not only a comment: `//` lines and `/* ... */` blocks in Rust,
/// Go and C; `#` lines and docstrings (a line starting with `"""` up to the
/// closing `"""`) in Python. In Rust, everything from a `#[cfg(test)]`
/// followed by `mod ... {` to the end of the file is a test module and not
/// counted (in these crates test modules come last).
fn count_code(text: &str, lang: Lang) -> (usize, usize) {
    let lines: Vec<&str> = text.lines().collect();
    let mut code = 0;
    let mut in_block = false;
    for (i, raw) in lines.iter().enumerate() {
        let line = raw.trim();
        if lang == Lang::CLike
            && line == "#[cfg(test)]"
            && lines.get(i + 1).is_some_and(|next| {
                next.trim_start().starts_with("mod ") && next.trim_end().ends_with('{')
            })
        {
            break;
        }
        if in_block {
            let end = if lang == Lang::Python { "\"\"\"" } else { "*/" };
            if line.contains(end) {
                in_block = false;
            }
            continue;
        }
        if line.is_empty() {
            continue;
        }
        match lang {
            Lang::CLike => {
                if line.starts_with("//") {
                    continue;
                }
                if line.starts_with("/*") {
                    in_block = !line.contains("*/");
                    continue;
                }
            }
            Lang::Python => {
                if line.starts_with('#') {
                    continue;
                }
                if let Some(rest) = line
                    .strip_prefix("\"\"\"")
                    .or_else(|| line.strip_prefix("r\"\"\""))
                {
                    in_block = !rest.contains("\"\"\"");
                    continue;
                }
            }
        }
        code += 1;
    }
    (lines.len(), code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_lines_skip_blanks_comments_docstrings_and_rust_tests() {
        let rust = "//! doc\nuse x;\n\n/* a\n * b\n */\nfn f() {} /* c */\n\
                    #[cfg(test)]\nmod tests {\n    fn t() {}\n}\n";
        assert_eq!(count_code(rust, Lang::CLike), (11, 2));
        let python = "\"\"\"Module\ndoc.\n\"\"\"\n# comment\nimport x\n\n\
                      def f():\n    \"\"\"One line.\"\"\"\n    return 1\n";
        assert_eq!(count_code(python, Lang::Python), (9, 3));
    }
}
