//! Header drift checks: `include/mecha.h` is written by hand, so these tests
//! hold it to the library. Every exported `extern "C"` function must be
//! declared with the same return type, parameter types and parameter names
//! (and every declaration must be exported); the status and unlock enums
//! must carry the ABI's values; and the header, the example and the C test
//! must compile cleanly with the system C (and C++) compiler.

mod common;

use std::path::Path;
use std::process::Command;

use common::{crate_dir, exported_functions, header_text, parse_header, show};
use mecha::status::Code;
use mecha_abi::msg::UnlockStatus;
use mecha_abi::Status;

#[test]
fn exported_functions_and_header_prototypes_match() {
    let header = parse_header(&header_text());
    let exported = exported_functions(&crate_dir().join("src"));
    assert!(!exported.is_empty(), "found no extern \"C\" functions");
    let mut problems = Vec::new();
    for (name, f) in &exported {
        if !f.no_mangle {
            problems.push(format!("{name} is extern \"C\" but not #[no_mangle]"));
        }
        let Some(declared) = header.functions.get(name) else {
            problems.push(format!("{name} is exported but not declared in mecha.h"));
            continue;
        };
        if declared.params.len() != f.signature.params.len() {
            problems.push(format!(
                "{name}: {} parameters in mecha.h, {} in the library",
                declared.params.len(),
                f.signature.params.len()
            ));
        }
        if declared.ret != f.signature.ret {
            problems.push(format!(
                "{name}: returns {} in mecha.h, {} in the library",
                show(&declared.ret),
                show(&f.signature.ret)
            ));
        }
        for (i, (h, r)) in declared.params.iter().zip(&f.signature.params).enumerate() {
            if h != r {
                problems.push(format!(
                    "{name}: parameter {i} is `{} {}` in mecha.h, `{} {}` in the library",
                    show(&h.0),
                    h.1,
                    show(&r.0),
                    r.1
                ));
            }
        }
    }
    for name in header.functions.keys() {
        if !exported.contains_key(name) {
            problems.push(format!("{name} is declared in mecha.h but not exported"));
        }
    }
    assert!(
        problems.is_empty(),
        "header drift:\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn status_enum_mirrors_the_abi_and_the_library() {
    let header = parse_header(&header_text());
    let declared = header.enums.get("mecha_status").expect("enum mecha_status");
    // The ABI's statuses, by the ABI's own names and codes.
    for status in Status::ALL {
        let name = format!("MECHA_{}", status.name());
        let value = declared.iter().find(|(n, _)| *n == name).map(|(_, v)| *v);
        assert_eq!(
            value,
            Some(i64::from(status.code())),
            "{name} must equal the ABI code of {status}"
        );
    }
    // Exactly the library's codes, in the library's order.
    let library: Vec<(String, i64)> = Code::ALL
        .iter()
        .map(|c| (format!("MECHA_{}", c.name()), i64::from(*c as i32)))
        .collect();
    assert_eq!(declared, &library);
    // Client-side codes are negative, never colliding with future ABI codes.
    for (name, value) in declared {
        let abi = Status::ALL
            .iter()
            .any(|s| format!("MECHA_{}", s.name()) == *name);
        assert!(abi || *value < 0, "{name} = {value} is not an ABI status");
    }
}

#[test]
fn unlock_enum_mirrors_the_abi_variants() {
    let header = parse_header(&header_text());
    let declared = header
        .enums
        .get("mecha_unlock_status")
        .expect("enum mecha_unlock_status");
    let variants = [
        UnlockStatus::Success,
        UnlockStatus::LockDoesNotExist,
        UnlockStatus::LockBelongsToOthers,
    ];
    let expected: Vec<(String, i64)> = variants
        .iter()
        .enumerate()
        .map(|(index, v)| {
            // The header spells the variant in SCREAMING_SNAKE_CASE.
            let mut name = String::from("MECHA_UNLOCK");
            for ch in format!("{v:?}").chars() {
                if ch.is_ascii_uppercase() {
                    name.push('_');
                }
                name.push(ch.to_ascii_uppercase());
            }
            // The value is the ABI's variant index (its wire encoding).
            let wire = mecha_abi::encode(v).expect("encodes");
            assert_eq!(wire, u32::try_from(index).expect("small").to_le_bytes());
            assert_eq!(i64::from(mecha::unlock_code(*v)), index as i64);
            (name, index as i64)
        })
        .collect();
    assert_eq!(declared, &expected);
}

#[test]
fn version_macros_match_the_crate_version() {
    let header = parse_header(&header_text());
    let version: Vec<&str> = env!("CARGO_PKG_VERSION").split('.').collect();
    for (part, value) in ["MAJOR", "MINOR", "PATCH"].iter().zip(version) {
        let name = format!("MECHA_VERSION_{part}");
        assert_eq!(
            header.defines.get(&name).map(String::as_str),
            Some(value),
            "{name}"
        );
    }
}

/// Runs a compiler command; fails the test with its output if it fails.
fn compile(cmd: &mut Command, what: &str) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running the compiler for {what}: {e}"));
    assert!(
        out.status.success(),
        "{what} does not compile cleanly:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn c_compiler(std: &str, include: &Path) -> Command {
    let mut cmd = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()));
    cmd.arg(format!("-std={std}"))
        .args(["-Wall", "-Wextra", "-Wpedantic", "-Werror", "-fsyntax-only"])
        .arg("-I")
        .arg(include);
    cmd
}

#[test]
fn header_example_and_c_test_compile_with_the_system_compiler() {
    let include = crate_dir().join("include");
    let dir = tempfile::tempdir().expect("temp dir");
    // The header alone, in the oldest dialect it supports (C99: stdint.h),
    // with every declaration used so nothing is only syntax-checked.
    let plain = dir.path().join("plain.c");
    std::fs::write(
        &plain,
        "#include <mecha.h>\n#include <mecha.h> /* include guard */\n\
         int main(void) {\n\
         \x20   mecha_client *c = 0;\n\
         \x20   mecha_status st = mecha_connect(0, &c);\n\
         \x20   int unlock = MECHA_UNLOCK_SUCCESS;\n\
         \x20   (void)unlock;\n\
         \x20   return st == MECHA_OK ? 0 : (int)sizeof(mecha_status);\n\
         }\n",
    )
    .expect("writing a C file");
    compile(c_compiler("c99", &include).arg(&plain), "mecha.h as C99");
    // The status is returned as an `int`-sized enum (Rust's `#[repr(C)]`).
    let size = dir.path().join("size.c");
    std::fs::write(
        &size,
        "#include <mecha.h>\n\
         _Static_assert(sizeof(mecha_status) == sizeof(int), \"int-sized\");\n\
         _Static_assert(MECHA_INTERNAL == 10 && MECHA_ERR_CONNECT == -1, \"values\");\n",
    )
    .expect("writing a C file");
    compile(
        c_compiler("c11", &include).arg(&size),
        "the enum size check",
    );
    compile(
        c_compiler("c11", &include).arg(crate_dir().join("examples/hello.c")),
        "examples/hello.c",
    );
    compile(
        c_compiler("c11", &include).arg(crate_dir().join("tests/c_api.c")),
        "tests/c_api.c",
    );
    // The README's example is code too.
    let readme = std::fs::read_to_string(crate_dir().join("README.md")).expect("README.md");
    let example = readme
        .split("## Example")
        .nth(1)
        .and_then(|s| s.split("```c\n").nth(1))
        .and_then(|s| s.split("```").next())
        .expect("README.md has a C example under ## Example");
    let example_file = dir.path().join("readme_example.c");
    std::fs::write(&example_file, example).expect("writing a C file");
    compile(
        c_compiler("c11", &include).arg(&example_file),
        "the README example",
    );
    // C++ users include it too: the extern "C" block must be right.
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    if Command::new(&cxx).arg("--version").output().is_ok() {
        let cpp = dir.path().join("use.cpp");
        std::fs::write(
            &cpp,
            "#include <mecha.h>\nint main() { return mecha_status_name(MECHA_OK)[0] == 'O' ? 0 : 1; }\n",
        )
        .expect("writing a C++ file");
        compile(
            Command::new(&cxx)
                .args(["-std=c++11", "-Wall", "-Wextra", "-Werror", "-fsyntax-only"])
                .arg("-I")
                .arg(&include)
                .arg(&cpp),
            "mecha.h as C++",
        );
    } else {
        eprintln!("no C++ compiler ({cxx}); the C++ check is skipped");
    }
}
