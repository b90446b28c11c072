//! The layout the README promises a new maintainer: no function over 80 lines in `src/` outside
//! tests, no file over 400, the top-level modules depending on each other one way only, and
//! the README's layout table naming what is in `src/`, and nothing that is not.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The longest function outside tests, in lines.
const MAX_FUNCTION: usize = 80;
/// The longest file, in lines.
const MAX_FILE: usize = 400;

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// Whether `path` holds only tests (`tests.rs`, or a file under a `tests` folder).
fn is_test_file(path: &Path) -> bool {
    path.file_name().is_some_and(|n| n == "tests.rs")
        || path.components().any(|c| c.as_os_str() == "tests")
}

/// `text` with comments, string and character literals blanked out (lines kept), so that the
/// braces and names left are the code's.
fn code_only(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    let blank = |out: &mut Vec<u8>, bytes: &[u8]| {
        out.extend(bytes.iter().map(|&c| if c == b'\n' { b'\n' } else { b' ' }))
    };
    while i < b.len() {
        let rest = &b[i..];
        let end = if rest.starts_with(b"//") {
            rest.iter().position(|&c| c == b'\n').unwrap_or(rest.len())
        } else if rest.starts_with(b"/*") {
            rest.windows(2)
                .position(|w| w == b"*/")
                .map_or(rest.len(), |p| p + 2)
        } else if rest.starts_with(b"r\"") || rest.starts_with(b"r#") {
            let hashes = rest[1..].iter().take_while(|&&c| c == b'#').count();
            let close: Vec<u8> = std::iter::once(b'"')
                .chain(std::iter::repeat_n(b'#', hashes))
                .collect();
            let open = 1 + hashes + 1;
            rest[open..]
                .windows(close.len())
                .position(|w| w == close.as_slice())
                .map_or(rest.len(), |p| open + p + close.len())
        } else if rest[0] == b'"' {
            let mut j = 1;
            while j < rest.len() && rest[j] != b'"' {
                j += if rest[j] == b'\\' { 2 } else { 1 };
            }
            j + 1
        } else if rest[0] == b'\'' {
            // A character literal ('x', '\n', '\u{7f}'), not a lifetime ('a).
            match (rest.get(1), rest.get(2)) {
                (Some(b'\\'), _) => rest[2..]
                    .iter()
                    .position(|&c| c == b'\'')
                    .map_or(1, |p| p + 3),
                (Some(_), Some(b'\'')) => 3,
                _ => 1,
            }
        } else {
            out.push(rest[0]);
            i += 1;
            continue;
        };
        let end = end.min(rest.len());
        blank(&mut out, &rest[..end]);
        i += end;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The line where the file's `#[cfg(test)] mod tests` begins (its end when it has none).
fn tests_start(code: &str) -> usize {
    let lines: Vec<&str> = code.lines().collect();
    (0..lines.len())
        .find(|&i| {
            lines[i].trim() == "#[cfg(test)]"
                && lines
                    .get(i + 1)
                    .is_some_and(|l| l.trim_start().starts_with("mod tests"))
        })
        .unwrap_or(lines.len())
}

/// The functions of `code` before line `end`, with their first line and length in lines.
fn functions(code: &str, end: usize) -> Vec<(String, usize, usize)> {
    let lines: Vec<&str> = code.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < end.min(lines.len()) {
        let words: Vec<&str> = lines[i].split_whitespace().collect();
        let at = words.iter().position(|w| *w == "fn");
        let Some(name) = at.and_then(|a| words.get(a + 1)) else {
            i += 1;
            continue;
        };
        let (mut depth, mut opened, mut j) = (0i64, false, i);
        while j < lines.len() {
            for c in lines[j].chars() {
                match c {
                    '{' => (depth, opened) = (depth + 1, true),
                    '}' => depth -= 1,
                    _ => {}
                }
            }
            if (opened && depth == 0) || (!opened && lines[j].trim_end().ends_with(';')) {
                break;
            }
            j += 1;
        }
        let name = name.split(['(', '<']).next().unwrap_or(name).to_string();
        out.push((name, i + 1, j - i + 1));
        i = if opened { j + 1 } else { i + 1 };
    }
    out
}

#[test]
fn no_function_over_80_lines_and_no_file_over_400() {
    let mut long = Vec::new();
    for file in rust_files(&src()) {
        let text = std::fs::read_to_string(&file).unwrap();
        let shown = file
            .strip_prefix(src().parent().unwrap())
            .unwrap()
            .display();
        if text.lines().count() > MAX_FILE {
            long.push(format!("{shown}: {} lines", text.lines().count()));
        }
        if is_test_file(&file) {
            continue;
        }
        let code = code_only(&text);
        for (name, line, length) in functions(&code, tests_start(&code)) {
            if length > MAX_FUNCTION {
                long.push(format!("{shown}:{line}: fn {name}: {length} lines"));
            }
        }
    }
    assert!(long.is_empty(), "too long:\n{}", long.join("\n"));
}

#[test]
fn the_checker_sees_long_functions_and_not_strings() {
    let long = format!(
        "fn long() {{\n{}}}\nfn short() {{ \"}}\"; }}\n",
        "    x();\n".repeat(90)
    );
    let found = functions(&code_only(&long), usize::MAX);
    assert_eq!(found[0], ("long".to_string(), 1, 92));
    assert_eq!(
        found[1].2, 1,
        "a brace in a string is not the function's end"
    );
}

/// The top-level module a file of `src/` belongs to (`None` for `main.rs` and `lib.rs`).
fn module_of(file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src()).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.trim_end_matches(".rs");
    (name != "main" && name != "lib").then(|| name.to_string())
}

/// The top-level modules each module's code (not its tests, not its comments) names.
fn module_uses() -> BTreeMap<String, BTreeSet<String>> {
    let mut uses: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in rust_files(&src()).into_iter().filter(|f| !is_test_file(f)) {
        let Some(module) = module_of(&file) else {
            continue;
        };
        let code = code_only(&std::fs::read_to_string(&file).unwrap());
        let code: String = code
            .lines()
            .take(tests_start(&code))
            .collect::<Vec<_>>()
            .join("\n");
        let used = uses.entry(module.clone()).or_default();
        for part in code.split("crate::").skip(1) {
            let name: String = part
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if name != module && !name.is_empty() {
                used.insert(name);
            }
        }
    }
    uses
}

#[test]
fn top_level_modules_depend_on_each_other_one_way() {
    let uses = module_uses();
    // A cycle is a module that reaches itself.
    for start in uses.keys() {
        let mut stack: Vec<Vec<String>> = vec![vec![start.clone()]];
        let mut seen = BTreeSet::new();
        while let Some(path) = stack.pop() {
            let last = path.last().unwrap();
            for next in uses.get(last).into_iter().flatten() {
                if next == start {
                    panic!("a module cycle: {} -> {start}", path.join(" -> "));
                }
                if seen.insert(next.clone()) {
                    let mut longer = path.clone();
                    longer.push(next.clone());
                    stack.push(longer);
                }
            }
        }
    }
}

/// The `src/` entries the README's layout table names, in its order.
fn layout_table() -> Vec<String> {
    let readme = std::fs::read_to_string(src().parent().unwrap().join("README.md")).unwrap();
    let table = readme
        .split("## Layout")
        .nth(1)
        .expect("a Layout section")
        .split("\n## ")
        .next()
        .unwrap()
        .to_string();
    table
        .lines()
        .filter(|l| l.starts_with("| `src/"))
        .filter_map(|l| l.split('`').nth(1))
        .map(|p| p.trim_end_matches('/').to_string())
        .collect()
}

#[test]
fn a_module_uses_only_those_above_it_in_the_readme_table() {
    let order: Vec<String> = layout_table()
        .iter()
        .map(|p| {
            p.trim_start_matches("src/")
                .trim_end_matches(".rs")
                .to_string()
        })
        .collect();
    let at = |m: &str| order.iter().position(|o| o == m);
    for (module, used) in module_uses() {
        let here = at(&module).unwrap_or_else(|| panic!("{module} is not in the table"));
        for other in used {
            let there = at(&other).unwrap_or_else(|| panic!("{other} is not in the table"));
            assert!(
                there < here,
                "{module} uses {other}, which is below it in the table"
            );
        }
    }
}

#[test]
fn the_readme_layout_table_names_what_is_in_src() {
    let named: BTreeSet<String> = layout_table().into_iter().collect();
    let present: BTreeSet<String> = std::fs::read_dir(src())
        .unwrap()
        .map(|e| format!("src/{}", e.unwrap().file_name().to_string_lossy()))
        .filter(|p| p != "src/lib.rs")
        .collect();
    assert_eq!(named, present, "the README's layout table and src/ differ");
}
