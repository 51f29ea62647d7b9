//! JavaScript's sites: imports (`import ... from "x"`, `import("x")`, `require("x")` with a
//! literal), calls by dotted name with the names imports bind resolved (`import * as os from
//! "qjs:os"; os.exec()` calls `qjs:os.exec`; `obj["name"]` is `obj.name`), `new` by constructor
//! name, and member reads.

use std::borrow::Cow;
use std::time::Instant;

use tree_sitter::{Node, Tree};

use super::{field, inner, site, walk, Bindings, Found, Kind, Step};

/// The ids of the fields read on every node.
struct Fields {
    object: u16,
    property: u16,
    index: u16,
    function: u16,
    arguments: u16,
}

/// How deep `eval("eval('...')")` is followed.
const MAX_DEPTH: usize = 3;

/// The sites of `tree`, its imports added to `bindings`; `None` if `deadline` passed first.
/// `depth` counts the strings of code (`eval("...")`) it was found in.
pub(super) fn sites(tree: &Tree, code: &str, deadline: Instant, bindings: &mut Bindings, depth: usize) -> Option<Found> {
    let src = code.as_bytes();
    let fields = Fields {
        object: field(tree, "object"),
        property: field(tree, "property"),
        index: field(tree, "index"),
        function: field(tree, "function"),
        arguments: field(tree, "arguments"),
    };
    let fields = &fields;
    let text = |n: Node<'_>| unescape(n.utf8_text(src).unwrap_or("")).into_owned();
    // First what the imports and declarations bind.
    // The assignments inside a chain (`a = b = o`), read with its first.
    let mut chained = std::collections::HashSet::new();
    let complete = walk(tree, deadline, |node| match node.kind() {
        // Past the bound the check gives up: nothing more needs reading.
        _ if bindings.overflowed => {}
        "import_statement" => {
            let Some(module) = node.child_by_field_name("source").and_then(|s| literal(s, src)) else { return };
            let mut cursor = node.walk();
            let Some(clause) = node.named_children(&mut cursor).find(|c| c.kind() == "import_clause") else { return };
            let mut cursor = clause.walk();
            for part in clause.named_children(&mut cursor) {
                match part.kind() {
                    // `import os from "m"` and `import * as os from "m"`.
                    "identifier" => bindings.bind(text(part), module.to_string()),
                    "namespace_import" => {
                        if let Some(local) = inner(part, false) {
                            bindings.bind(text(local), module.to_string());
                        }
                    }
                    "named_imports" => {
                        let mut cursor = part.walk();
                        for specifier in part.named_children(&mut cursor).filter(|s| s.kind() == "import_specifier") {
                            if bindings.overflowed {
                                return;
                            }
                            let Some(name) = specifier.child_by_field_name("name") else { continue };
                            let name = literal(name, src).map(Cow::into_owned).unwrap_or_else(|| text(name));
                            let local = specifier.child_by_field_name("alias").map(text).unwrap_or_else(|| name.clone());
                            // `import { default as o }` is `import o`.
                            let full = if name == "default" { module.to_string() } else { format!("{module}.{name}") };
                            bindings.bind(local, full);
                        }
                    }
                    _ => {}
                }
            }
        }
        // `const os = require("m")`, `const { exec } = await import("m")`, `const e = eval`,
        // `p = os`.
        "variable_declarator" | "assignment_expression" => {
            let (name, value) = match node.kind() {
                "variable_declarator" => (node.child_by_field_name("name"), node.child_by_field_name("value")),
                _ => (node.child_by_field_name("left"), node.child_by_field_name("right")),
            };
            let (Some(name), Some(mut value)) = (name, value) else { return };
            // `const a = b = o`: every target of the chain stands for its last value; `(o)` is
            // `o`. The chain is read once, from its first assignment (following it from each
            // would take time quadratic in its length).
            if chained.contains(&node.id()) {
                return;
            }
            let mut names = vec![name];
            loop {
                let next = match value.kind() {
                    "assignment_expression" => {
                        chained.insert(value.id());
                        names.extend(value.child_by_field_name("left"));
                        value.child_by_field_name("right")
                    }
                    "parenthesized_expression" => inner(value, false),
                    _ => break,
                };
                let Some(next) = next else { return };
                value = next;
            }
            if value.kind() == "await_expression" {
                let Some(awaited) = inner(value, false) else { return };
                value = awaited;
            }
            let source = match value.kind() {
                "call_expression" => {
                    let Some(function) = value.child_by_field_id(fields.function) else { return };
                    let loads = function.kind() == "import" || dotted(function, src, fields, bindings).as_deref() == Some("require");
                    match loads {
                        true => first_literal(value, src, fields),
                        false => None,
                    }
                }
                "identifier" | "this" | "member_expression" | "subscript_expression" => dotted(value, src, fields, bindings),
                _ => None,
            };
            // What each name stands for: a member of `source`, or its default when that is a
            // name (`const { e = eval } = {}`).
            let member = |key: &str| source.as_ref().map(|source| format!("{source}.{key}"));
            let default = |pattern: Node<'_>| pattern.child_by_field_name("right").and_then(|d| dotted(d, src, fields, bindings));
            let mut found: Vec<(String, String)> = Vec::new();
            for name in names {
                // Past the bound the check gives up: no more names need making.
                if found.len() > MAX_BINDS_PER_STATEMENT {
                    break;
                }
                match name.kind() {
                    "identifier" => found.extend(source.clone().map(|s| (text(name), s))),
                    "object_pattern" => {
                        let mut cursor = name.walk();
                        for property in name.named_children(&mut cursor) {
                            match property.kind() {
                                "shorthand_property_identifier_pattern" => found.extend(member(&text(property)).map(|m| (text(property), m))),
                                // `{ exec = f }`: `exec` is still `source.exec` when it has one.
                                "object_assignment_pattern" => {
                                    if let Some(local) = property.child_by_field_name("left").filter(|l| l.kind() == "shorthand_property_identifier_pattern") {
                                        found.extend(member(&text(local)).or_else(|| default(property)).map(|m| (text(local), m)));
                                    }
                                }
                                // `{ ...rest }`: the rest of `source`, its members included.
                                "rest_pattern" => {
                                    if let Some(local) = inner(property, false).filter(|l| l.kind() == "identifier") {
                                        found.extend(source.clone().map(|s| (text(local), s)));
                                    }
                                }
                                // `{ exec: e }`, `{ ["exec"]: e }`, `{ exec: e = f }`.
                                "pair_pattern" => {
                                    let (Some(key), Some(mut local)) = (property.child_by_field_name("key"), property.child_by_field_name("value")) else { continue };
                                    let mut fallback = None;
                                    if local.kind() == "assignment_pattern" {
                                        fallback = default(local);
                                        let Some(left) = local.child_by_field_name("left") else { continue };
                                        local = left;
                                    }
                                    let key = match key.kind() {
                                        "computed_property_name" => inner(key, false).and_then(|k| literal(k, src)).map(Cow::into_owned),
                                        _ => Some(literal(key, src).map(Cow::into_owned).unwrap_or_else(|| text(key))),
                                    };
                                    if local.kind() == "identifier" {
                                        found.extend(key.and_then(|key| member(&key)).or(fallback).map(|m| (text(local), m)));
                                    }
                                }
                                _ => {}
                            }
                        }
                    }
                    // `const [e = eval] = []`: a default that is a name.
                    "array_pattern" => {
                        let mut cursor = name.walk();
                        for element in name.named_children(&mut cursor).filter(|e| e.kind() == "assignment_pattern") {
                            if let Some(local) = element.child_by_field_name("left").filter(|l| l.kind() == "identifier") {
                                found.extend(default(element).map(|d| (text(local), d)));
                            }
                        }
                    }
                    _ => {}
                }
            }
            for (local, full) in found {
                if bindings.overflowed {
                    return;
                }
                bindings.bind(local, full);
            }
        }
        _ => {}
    });
    let bindings = &*bindings;
    let mut sites = Found::default();
    let mut late = false;
    let complete = complete
        && walk(tree, deadline, |node| match node.kind() {
            _ if sites.overflowed => {}
            "import_statement" | "export_statement" => {
                if let Some(module) = node.child_by_field_name("source").and_then(|s| literal(s, src)) {
                    sites.push(site(Kind::Import, module.into_owned(), node));
                }
            }
            "call_expression" => {
                let Some(function) = node.child_by_field_id(fields.function) else { return };
                if function.kind() == "import" {
                    if let Some(module) = first_literal(node, src, fields) {
                        sites.push(site(Kind::Import, module, node));
                    }
                    return;
                }
                let Some(name) = dotted(function, src, fields, bindings) else { return };
                // `eval.call(null, s)`, `eval.apply(...)` and `Reflect.apply(eval, ...)` call `eval`.
                if let Some(called) = name.strip_suffix(".call").or_else(|| name.strip_suffix(".apply")) {
                    sites.push(site(Kind::Call, called.to_owned(), node));
                }
                if name == "Reflect.apply" || name == "Reflect.construct" {
                    let target = node.child_by_field_id(fields.arguments).and_then(|a| inner(a, false)).and_then(|t| dotted(t, src, fields, bindings));
                    if let Some(target) = target {
                        sites.push(site(Kind::Call, target, node));
                    }
                }
                if name == "require" {
                    if let Some(module) = first_literal(node, src, fields) {
                        sites.push(site(Kind::Import, module, node));
                    }
                }
                if matches!(name.as_str(), "eval" | "Function") {
                    late |= !nested(node, src, fields, deadline, bindings, depth, &mut sites);
                }
                sites.push(site(Kind::Call, name, node));
            }
            "new_expression" => {
                if let Some(name) = node.child_by_field_name("constructor").and_then(|c| dotted(c, src, fields, bindings)) {
                    if name == "Function" {
                        late |= !nested(node, src, fields, deadline, bindings, depth, &mut sites);
                    }
                    sites.push(site(Kind::Call, name, node));
                }
            }
            "member_expression" | "subscript_expression" => match dotted(node, src, fields, bindings) {
                Some(name) => sites.push(site(Kind::Attribute, name, node)),
                None => {
                    if let Some(property) = member(node, src, fields).and_then(|(_, name)| name) {
                        sites.push(site(Kind::Attribute, format!(".{property}"), node));
                    }
                }
            },
            _ => {}
        });
    (complete && !late).then_some(sites)
}

/// Reads the code `eval("…")` or `Function("a", "…")` runs from a literal (its last argument),
/// placing what it finds at the call; `false` if `deadline` passed first.
fn nested(call: Node<'_>, src: &[u8], fields: &Fields, deadline: Instant, bindings: &Bindings, depth: usize, sites: &mut Found) -> bool {
    // `Function("a", "…")`, and the tagged template `` Function`…` ``.
    let code = call.child_by_field_id(fields.arguments).and_then(|a| match a.kind() {
        "template_string" => literal(a, src),
        _ => inner(a, true).and_then(|a| literal(a, src)),
    });
    let Some(code) = code else { return true };
    if depth >= MAX_DEPTH {
        // Code this deep is not read: the verdict says so rather than pass it.
        sites.too_deep = true;
        return true;
    }
    let found = super::parse(&tree_sitter_javascript::LANGUAGE.into(), &code, deadline)
        .and_then(|tree| {
            let mut bindings = bindings.clone();
            let found = self::sites(&tree, &code, deadline, &mut bindings, depth + 1);
            found.map(|found| Found { overflowed: found.overflowed || bindings.overflowed, ..found })
        });
    match found {
        Some(found) => {
            sites.nest(found, call);
            true
        }
        None => false,
    }
}

/// The literal module name a call's first argument gives (`require("m")`, `import("m")`).
fn first_literal(call: Node<'_>, src: &[u8], fields: &Fields) -> Option<String> {
    let arguments = call.child_by_field_id(fields.arguments)?;
    literal(inner(arguments, false)?, src).map(Cow::into_owned)
}

/// A member read's object and the name it reads, when it names one: `a.b`, `a["b"]`.
fn member<'t, 's>(node: Node<'t>, src: &'s [u8], fields: &Fields) -> Option<(Node<'t>, Option<Cow<'s, str>>)> {
    let object = node.child_by_field_id(fields.object)?;
    let name = match node.kind() {
        "member_expression" => {
            let property = node.child_by_field_id(fields.property)?;
            (property.kind() != "private_property_identifier").then(|| property.utf8_text(src).ok().map(unescape)).flatten()
        }
        "subscript_expression" => node.child_by_field_id(fields.index).and_then(|i| literal(i, src)),
        _ => return None,
    };
    Some((object, name))
}

/// The most names one declaration's patterns are read for (more would overflow the bindings'
/// bound anyway: each is at least a few bytes).
const MAX_BINDS_PER_STATEMENT: usize = super::MAX_BINDINGS_BYTES / 4;

/// The dotted name an expression spells (`std.popen`, `globalThis["eval"]`, `(0, eval)`), as
/// the engine reads it — escapes decoded (`\u0065val` is `eval`), the names imports bind
/// resolved, and without the global object in front (`globalThis.eval` is `eval`) — when it
/// is one.
fn dotted(node: Node<'_>, src: &[u8], fields: &Fields, bindings: &Bindings) -> Option<String> {
    let name = super::dotted(node, |node| match node.kind() {
        "identifier" | "this" => Some(Step::Name(unescape(node.utf8_text(src).ok()?))),
        "parenthesized_expression" => Some(Step::Member(inner(node, false)?, Cow::Borrowed(""))),
        // `(0, eval)` is `eval`, called without a `this`.
        "sequence_expression" => Some(Step::Member(inner(node, true)?, Cow::Borrowed(""))),
        // `(await import("m")).f` and `require("m").f` read `m.f`.
        "await_expression" => Some(Step::Member(inner(node, false)?, Cow::Borrowed(""))),
        "call_expression" => {
            let function = node.child_by_field_id(fields.function)?;
            let loads = function.kind() == "import" || (function.kind() == "identifier" && bindings.resolve(unescape(function.utf8_text(src).ok()?).into_owned()) == "require");
            loads.then(|| first_literal(node, src, fields)).flatten().map(|module| Step::Name(Cow::Owned(module)))
        }
        "member_expression" | "subscript_expression" => {
            let (object, name) = member(node, src, fields)?;
            Some(Step::Member(object, name?))
        }
        _ => None,
    })?;
    // `this` at a script's top level is the global object too; a name may stand for one of
    // its members (`const { eval: e } = globalThis`).
    let global = |name: String| -> String {
        for object in ["globalThis.", "window.", "self.", "global.", "this."] {
            if let Some(rest) = name.strip_prefix(object) {
                return rest.to_owned();
            }
        }
        name
    };
    Some(global(bindings.resolve(global(name))))
}

/// The value of a plain string literal (a template without substitutions too), its escapes
/// decoded.
fn literal<'s>(mut node: Node<'_>, src: &'s [u8]) -> Option<Cow<'s, str>> {
    // `((("x")))`: in a loop, however deep.
    while node.kind() == "parenthesized_expression" {
        node = inner(node, false)?;
    }
    let text = node.utf8_text(src).ok()?;
    let inner = text.get(1..text.len().checked_sub(1)?)?;
    let plain = match node.kind() {
        "string" => true,
        "template_string" => {
            let mut cursor = node.walk();
            let plain = node.named_children(&mut cursor).all(|c| matches!(c.kind(), "string_fragment" | "escape_sequence"));
            plain
        }
        _ => false,
    };
    plain.then(|| unescape(inner))
}

/// Decodes the escapes of a string or identifier: `\uXXXX`, `\u{X…}`, `\xHH`, `\n` and the
/// other single characters; a backslash before a line end is dropped.
fn unescape(text: &str) -> Cow<'_, str> {
    if !text.contains('\\') {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        let Some(escape) = chars.next() else { break };
        let hex = |chars: &mut std::iter::Peekable<std::str::Chars<'_>>, count: Option<usize>| {
            let mut digits = String::new();
            match count {
                Some(count) => digits.extend((0..count).map_while(|_| chars.next_if(char::is_ascii_hexdigit))),
                None => {
                    for c in chars.by_ref() {
                        if c == '}' {
                            break;
                        }
                        digits.push(c);
                    }
                }
            }
            u32::from_str_radix(&digits, 16).ok().and_then(char::from_u32)
        };
        let decoded = match escape {
            'n' => Some('\n'),
            't' => Some('\t'),
            'r' => Some('\r'),
            'b' => Some('\u{8}'),
            'f' => Some('\u{c}'),
            'v' => Some('\u{b}'),
            '0' => Some('\0'),
            'x' => hex(&mut chars, Some(2)),
            'u' if chars.next_if_eq(&'{').is_some() => hex(&mut chars, None),
            'u' => hex(&mut chars, Some(4)),
            '\n' | '\u{2028}' | '\u{2029}' => None,
            '\r' => {
                chars.next_if_eq(&'\n');
                None
            }
            other => Some(other),
        };
        out.extend(decoded);
    }
    Cow::Owned(out)
}
