//! Python's sites: imports (`import x`, `from x import y`, aliases, `__import__("x")`,
//! `importlib.import_module("x")` with a literal), calls by dotted name with aliases resolved
//! (also through `from x import *`), and attribute reads (`from x import y` reads `x.y`).

use std::borrow::Cow;
use std::time::Instant;

use tree_sitter::{Node, Tree};
use unicode_normalization::UnicodeNormalization;

use super::{field, inner, site, walk, Bindings, Found, Kind, Step};

/// The ids of the fields read on every node.
struct Fields {
    object: u16,
    attribute: u16,
    function: u16,
    arguments: u16,
}

/// The functions that import the module their first argument names.
const IMPORTERS: &[&str] = &["__import__", "importlib.import_module", "importlib.__import__", "runpy.run_module"];

/// The functions that run their first argument as Python code: a literal there is read as code.
const RUNNERS: &[&str] = &["exec", "eval", "compile", "timeit.timeit", "timeit.repeat", "timeit.Timer", "pdb.run", "pdb.runeval", "cProfile.run", "profile.run"];

/// The longest callee whose text is read to see whether it stands for a module or a member
/// (`importlib.import_module`, `getattr`).
const MAX_CALLEE_BYTES: usize = 256;

/// How deep `exec("exec('...')")` is followed.
const MAX_DEPTH: usize = 3;

/// The sites of `tree`, its imports added to `bindings`; `None` if `deadline` passed first.
/// `depth` counts the strings of code (`exec("...")`) it was found in.
pub(super) fn sites(tree: &Tree, code: &str, deadline: Instant, bindings: &mut Bindings, depth: usize) -> Option<Found> {
    let src = code.as_bytes();
    let fields = Fields { object: field(tree, "object"), attribute: field(tree, "attribute"), function: field(tree, "function"), arguments: field(tree, "arguments") };
    // Python reads identifiers in NFKC form: `ｅｖａｌ` is `eval`.
    let text = |n: Node<'_>| nfkc(n.utf8_text(src).unwrap_or(""));
    let mut sites = Found::default();
    // The assignments inside a chain (`o = p = os`), read with its first.
    let mut chained = std::collections::HashSet::new();
    // First the imports, which also say what each local name stands for.
    let complete = walk(tree, deadline, |node| match node.kind() {
        // Past a bound the check gives up: nothing more needs reading.
        _ if sites.overflowed || bindings.overflowed => {}
        "import_statement" => {
            let mut cursor = node.walk();
            for name in node.children_by_field_name("name", &mut cursor) {
                if sites.overflowed || bindings.overflowed {
                    return;
                }
                match name.kind() {
                    "aliased_import" => {
                        let module = name.child_by_field_name("name").map(text).unwrap_or_default();
                        if let Some(alias) = name.child_by_field_name("alias").map(text) {
                            bindings.bind(alias, module.clone());
                        }
                        sites.push(site(Kind::Import, module, node));
                    }
                    // `import os.path` binds `os`, to the module `os`.
                    _ => {
                        let module = text(name);
                        bindings.bind(module.split('.').next().unwrap_or("").to_owned(), module.split('.').next().unwrap_or("").to_owned());
                        sites.push(site(Kind::Import, module, node));
                    }
                }
            }
        }
        "import_from_statement" => {
            let module = node.child_by_field_name("module_name").map(text).unwrap_or_default();
            sites.push(site(Kind::Import, module.clone(), node));
            let mut cursor = node.walk();
            if node.children(&mut cursor).any(|c| c.kind() == "wildcard_import") {
                bindings.star(module);
                return;
            }
            for name in node.children_by_field_name("name", &mut cursor) {
                if sites.overflowed || bindings.overflowed {
                    return;
                }
                let (imported, local) = match name.kind() {
                    "aliased_import" => {
                        let imported = name.child_by_field_name("name").map(text).unwrap_or_default();
                        (imported.clone(), name.child_by_field_name("alias").map(text).unwrap_or(imported))
                    }
                    _ => (text(name), text(name)),
                };
                // `from os import path` imports the module os.path when there is one, and
                // reads the name `path` of `os` otherwise.
                let full = format!("{module}.{imported}");
                sites.push(site(Kind::Import, full.clone(), name));
                sites.push(site(Kind::Attribute, full.clone(), name));
                bindings.bind(local, full);
            }
        }
        // `f = os.system` makes `f` stand for `os.system`.
        // `o = __import__("os")`, `(o := os)`, `a, b = os, 1`.
        "assignment" | "named_expression" => {
            let (left, right) = match node.kind() {
                "assignment" => (node.child_by_field_name("left"), node.child_by_field_name("right")),
                _ => (node.child_by_field_name("name"), node.child_by_field_name("value")),
            };
            let (Some(left), Some(mut right)) = (left, right) else { return };
            // `o = p = os`: every target of the chain stands for its last value. The chain is
            // read once, from its first assignment (following it from each would take time
            // quadratic in its length).
            if chained.contains(&node.id()) {
                return;
            }
            let mut targets = vec![left];
            while right.kind() == "assignment" {
                chained.insert(right.id());
                let (Some(target), Some(next)) = (right.child_by_field_name("left"), right.child_by_field_name("right")) else { return };
                targets.push(target);
                right = next;
            }
            for left in targets {
                let mut pairs = Vec::new();
                captures(left, right, &mut pairs);
                for (left, right) in pairs {
                    // Past the bound the check gives up: no more names need making.
                    if bindings.overflowed {
                        return;
                    }
                    if left.kind() == "identifier" && matches!(right.kind(), "identifier" | "attribute" | "call" | "subscript" | "parenthesized_expression") {
                        if let Some(source) = dotted(right, src, &fields, bindings) {
                            bindings.bind(text(left), source);
                        }
                    }
                }
            }
        }
        // `match os:` / `case o:` binds `o` to `os` (a capture pattern: one plain name).
        "match_statement" => {
            let Some(subject) = node.child_by_field_name("subject") else { return };
            let source = dotted(subject, src, &fields, bindings);
            let Some(body) = node.child_by_field_name("body") else { return };
            let mut cursor = body.walk();
            for case in body.named_children(&mut cursor).filter(|c| c.kind() == "case_clause") {
                let Some(pattern) = inner(case, false).filter(|p| p.kind() == "case_pattern") else { continue };
                let mut pairs = Vec::new();
                captures(pattern, subject, &mut pairs);
                for (name, value) in pairs {
                    if bindings.overflowed {
                        return;
                    }
                    // The subject itself, or what an element of it spells.
                    let full = match value == subject {
                        true => source.clone(),
                        false => dotted(value, src, &fields, bindings),
                    };
                    if let Some(full) = full {
                        bindings.bind(text(name), full);
                    }
                }
            }
        }
        _ => {}
    });
    let bindings = &*bindings;
    let mut late = false;
    let complete = complete
        && walk(tree, deadline, |node| match node.kind() {
            _ if sites.overflowed => {}
            "call" => {
                let Some(function) = node.child_by_field_id(fields.function) else { return };
                let Some(name) = dotted(function, src, &fields, bindings) else { return };
                // `builtins.eval` and `eval.__call__` are `eval`.
                let name = name.strip_prefix("builtins.").or_else(|| name.strip_prefix("__builtins__.")).map(str::to_owned).unwrap_or(name);
                let name = name.strip_suffix(".__call__").map(str::to_owned).unwrap_or(name);
                if IMPORTERS.contains(&name.as_str()) {
                    if let Some(module) = imported(node, src, &fields) {
                        sites.push(site(Kind::Import, module, node));
                    }
                }
                // `exec("import os; os.system('x')")`: the literal is code, read here.
                if RUNNERS.contains(&name.as_str()) {
                    if let Some(nested) = imported(node, src, &fields).filter(|_| {
                        // Code this deep is not read: the verdict says so rather than pass it.
                        sites.too_deep |= depth >= MAX_DEPTH;
                        depth < MAX_DEPTH
                    }) {
                        let found = super::parse(&tree_sitter_python::LANGUAGE.into(), &nested, deadline)
                            .and_then(|tree| {
                                let mut bindings = bindings.clone();
                                let found = self::sites(&tree, &nested, deadline, &mut bindings, depth + 1);
                                found.map(|found| Found { overflowed: found.overflowed || bindings.overflowed, ..found })
                            });
                        match found {
                            Some(found) => sites.nest(found, node),
                            None => late = true,
                        }
                    }
                }
                // After `from os import *`, `system()` may be `os.system()`.
                if !name.contains('.') {
                    for module in &bindings.star {
                        if sites.overflowed {
                            break;
                        }
                        sites.push(site(Kind::Call, format!("{module}.{name}"), node));
                    }
                }
                sites.push(site(Kind::Call, name, node));
            }
            "attribute" => match dotted(node, src, &fields, bindings) {
                Some(name) => sites.push(site(Kind::Attribute, name, node)),
                // `f().__globals__`, `x[0].environ`: the attribute alone.
                None => {
                    if let Some(attribute) = node.child_by_field_id(fields.attribute) {
                        sites.push(site(Kind::Attribute, format!(".{}", text(attribute)), node));
                    }
                }
            },
            _ => {}
        });
    (complete && !late).then_some(sites)
}

/// The names a target (of an assignment, or a `case` pattern) binds, each with the expression
/// it takes, into `out`: `o = os`, `(o) = os`, `a, (b, c) = 1, (2, os)`, `[o] = [os]`, and in
/// `case` patterns captures `o`, `_ as o`, `o | p`, `[o]`. Sequences pair element by element
/// when their lengths agree. Iterative: targets may nest deeply.
fn captures<'t>(target: Node<'t>, value: Node<'t>, out: &mut Vec<(Node<'t>, Node<'t>)>) {
    let mut todo = vec![(target, value)];
    while let Some((target, mut value)) = todo.pop() {
        while value.kind() == "parenthesized_expression" {
            let Some(inside) = inner(value, false) else { break };
            value = inside;
        }
        let mut cursor = target.walk();
        let parts: Vec<Node<'t>> = target.named_children(&mut cursor).filter(|c| c.kind() != "comment").collect();
        match target.kind() {
            "identifier" => out.push((target, value)),
            // A capture is a plain name; `os.path` in a pattern is a value to compare with.
            "dotted_name" if parts.len() == 1 => out.push((parts[0], value)),
            "case_pattern" | "union_pattern" => todo.extend(parts.iter().map(|&p| (p, value))),
            "as_pattern" => {
                if let (Some(&pattern), Some(&alias)) = (parts.first(), parts.last().filter(|a| a.kind() == "identifier")) {
                    out.push((alias, value));
                    todo.push((pattern, value));
                }
            }
            "pattern_list" | "tuple_pattern" | "list_pattern" => {
                // `(o)` is `o`: parentheses without a comma make no tuple.
                let comma = target.children(&mut target.walk()).any(|c| c.kind() == ",");
                if target.kind() == "tuple_pattern" && parts.len() == 1 && !comma {
                    todo.push((parts[0], value));
                    continue;
                }
                if !matches!(value.kind(), "expression_list" | "tuple" | "list" | "pattern_list") {
                    continue;
                }
                let mut cursor = value.walk();
                let values: Vec<Node<'t>> = value.named_children(&mut cursor).filter(|c| c.kind() != "comment").collect();
                if values.len() == parts.len() {
                    todo.extend(parts.into_iter().zip(values));
                }
            }
            _ => {}
        }
    }
}

/// `name` as Python reads an identifier: in NFKC form.
fn nfkc(name: &str) -> String {
    match name.is_ascii() {
        true => name.to_owned(),
        false => name.nfkc().collect(),
    }
}

/// The dotted name an expression spells (`os.path.join`), aliases resolved, when it is one;
/// `(eval)` is `eval`, and `__import__("os").system` is `os.system`.
fn dotted(node: Node<'_>, src: &[u8], fields: &Fields, bindings: &Bindings) -> Option<String> {
    let name = super::dotted(node, |node| match node.kind() {
        "identifier" => Some(Step::Name(Cow::Borrowed(node.utf8_text(src).ok()?))),
        "parenthesized_expression" => Some(Step::Member(inner(node, false)?, Cow::Borrowed(""))),
        // `(o := os)` is `os`.
        "named_expression" => Some(Step::Member(node.child_by_field_name("value")?, Cow::Borrowed(""))),
        "attribute" => {
            let object = node.child_by_field_id(fields.object)?;
            let attribute = node.child_by_field_id(fields.attribute)?.utf8_text(src).ok()?;
            // `os.__dict__["system"]` is `os.system`.
            Some(Step::Member(object, Cow::Borrowed(if attribute == "__dict__" { "" } else { attribute })))
        }
        // `x["name"]` with a literal: `vars(os)["system"]` is `os.system`, and
        // `sys.modules["os"]` is `os` (below, once the whole chain is read: looking at the
        // value here would read it again at every level).
        "subscript" => {
            let value = node.child_by_field_name("value")?;
            let key = literal(node.child_by_field_name("subscript")?, src)?;
            Some(Step::Member(value, Cow::Owned(key)))
        }
        "call" => {
            let function = node.child_by_field_id(fields.function)?;
            // The functions that stand for a module or a member are called by a short name;
            // the text of anything else (`f()()()...`) is not copied at every call of a chain.
            if !matches!(function.kind(), "identifier" | "attribute") || function.byte_range().len() > MAX_CALLEE_BYTES {
                return None;
            }
            let name = bindings.resolve(nfkc(function.utf8_text(src).ok()?));
            let arguments = node.child_by_field_id(fields.arguments)?;
            let mut cursor = arguments.walk();
            let given: Vec<Node<'_>> = arguments.named_children(&mut cursor).filter(|a| a.kind() != "comment").collect();
            match (name.as_str(), given.as_slice()) {
                // `getattr(os, "system")` is `os.system`; `vars(os)` is `os`.
                ("getattr" | "builtins.getattr", [object, key, ..]) => Some(Step::Member(*object, Cow::Owned(literal(*key, src)?))),
                ("vars" | "builtins.vars", [object]) => Some(Step::Member(*object, Cow::Borrowed(""))),
                // `__import__("os.path")` is the package `os` (without a `fromlist`);
                // `importlib.import_module("os.path")` is `os.path`.
                (_, [_]) if name.ends_with("__import__") && IMPORTERS.contains(&name.as_str()) => {
                    imported(node, src, fields).map(|m| Step::Name(Cow::Owned(m.split('.').next().unwrap_or_default().to_owned())))
                }
                _ => IMPORTERS.contains(&name.as_str()).then(|| imported(node, src, fields)).flatten().map(|m| Step::Name(Cow::Owned(m))),
            }
        }
        _ => None,
    })?;
    let name = bindings.resolve(nfkc(&name));
    // The modules by their real names, whatever the code's own names stand for.
    match name.strip_prefix("sys.modules.") {
        Some(module) => Some(module.to_owned()),
        None => Some(name),
    }
}

/// The module a call of `__import__` (or `importlib.import_module`) imports, when its first
/// argument (or `name=`) is a literal.
fn imported(call: Node<'_>, src: &[u8], fields: &Fields) -> Option<String> {
    let arguments = call.child_by_field_id(fields.arguments)?;
    let mut cursor = arguments.walk();
    let mut given = arguments.named_children(&mut cursor).filter(|a| a.kind() != "comment");
    let first = given.next()?;
    let value = match first.kind() {
        "keyword_argument" => {
            let mut cursor = arguments.walk();
            let named = arguments.named_children(&mut cursor).find(|a| {
                a.kind() == "keyword_argument" && a.child_by_field_name("name").and_then(|n| n.utf8_text(src).ok()) == Some("name")
            })?;
            named.child_by_field_name("value")?
        }
        _ => first,
    };
    literal(value, src)
}

/// The value of a plain string literal (no interpolation; adjacent literals joined), its
/// escapes decoded as Python decodes them (`"\x73ystem"` is `system`) unless it is raw.
fn literal(mut node: Node<'_>, src: &[u8]) -> Option<String> {
    // `((("x")))`: in a loop, however deep.
    while node.kind() == "parenthesized_expression" {
        node = inner(node, false)?;
    }
    let mut cursor = node.walk();
    match node.kind() {
        "concatenated_string" => node.named_children(&mut cursor).map(|part| literal(part, src)).collect(),
        "string" => {
            let mut value = String::new();
            let mut raw = false;
            for part in node.named_children(&mut cursor) {
                match part.kind() {
                    "string_start" => raw = part.utf8_text(src).ok()?.bytes().any(|b| b.eq_ignore_ascii_case(&b'r')),
                    "string_end" => {}
                    "string_content" if raw => value.push_str(part.utf8_text(src).ok()?),
                    "string_content" => unescape(part.utf8_text(src).ok()?, &mut value)?,
                    _ => return None,
                }
            }
            Some(value)
        }
        _ => None,
    }
}

/// Decodes the escapes of a (not raw) string literal's text into `out`: `\n`, `\xHH`,
/// `\ooo`, `\uXXXX`, `\UXXXXXXXX` and the rest; an unknown escape stays as written, as in
/// Python. `None` for `\N{name}` (not decoded here) and escapes that name no character.
fn unescape(text: &str, out: &mut String) -> Option<()> {
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        let Some(escape) = chars.next() else {
            out.push('\\');
            break;
        };
        let mut hex = |digits: usize| -> Option<char> {
            let code: String = (0..digits).map_while(|_| chars.next_if(char::is_ascii_hexdigit)).collect();
            (code.len() == digits).then(|| u32::from_str_radix(&code, 16).ok().and_then(char::from_u32)).flatten()
        };
        let decoded = match escape {
            '\n' => continue, // a backslash-newline continues the line
            'n' => '\n',
            't' => '\t',
            'r' => '\r',
            'a' => '\x07',
            'b' => '\x08',
            'f' => '\x0c',
            'v' => '\x0b',
            '\\' | '\'' | '"' => escape,
            'x' => hex(2)?,
            'u' => hex(4)?,
            'U' => hex(8)?,
            '0'..='7' => {
                let mut code = escape.to_digit(8)?;
                for _ in 0..2 {
                    match chars.next_if(|d| d.is_digit(8)) {
                        Some(d) => code = code * 8 + d.to_digit(8)?,
                        None => break,
                    }
                }
                char::from_u32(code)?
            }
            'N' => return None,
            other => {
                out.push('\\');
                other
            }
        };
        out.push(decoded);
    }
    Some(())
}
