//! JavaScript's sites: imports (`import ... from "x"`, `import("x")`, `require("x")` with a
//! literal), calls by dotted name (`eval`, `os.exec`, `std.popen`; `obj["name"]` counts as
//! `obj.name`), `new` by constructor name, and member reads.

use std::time::Instant;

use tree_sitter::{Node, Tree};

use super::{field, inner, site, walk, Kind, Site};

/// The ids of the fields read on every node.
struct Fields {
    object: u16,
    property: u16,
    index: u16,
    function: u16,
}

/// The sites of `tree`; `None` if `deadline` passed first.
pub(super) fn sites(tree: &Tree, code: &str, deadline: Instant) -> Option<Vec<Site>> {
    let src = code.as_bytes();
    let fields = Fields { object: field(tree, "object"), property: field(tree, "property"), index: field(tree, "index"), function: field(tree, "function") };
    let fields = &fields;
    let mut sites = Vec::new();
    let complete = walk(tree, deadline, |node| match node.kind() {
        "import_statement" | "export_statement" => {
            if let Some(module) = node.child_by_field_name("source").and_then(|s| literal(s, src)) {
                sites.push(site(Kind::Import, module, node));
            }
        }
        "call_expression" => {
            let Some(function) = node.child_by_field_id(fields.function) else { return };
            let first_literal = || node.child_by_field_name("arguments").and_then(|a| a.named_child(0)).and_then(|a| literal(a, src));
            if function.kind() == "import" {
                if let Some(module) = first_literal() {
                    sites.push(site(Kind::Import, module, node));
                }
                return;
            }
            let Some(name) = dotted(function, src, fields).map(global) else { return };
            // `eval.call(null, s)` and `eval.apply(...)` call `eval`.
            if let Some(called) = name.strip_suffix(".call").or_else(|| name.strip_suffix(".apply")) {
                sites.push(site(Kind::Call, called.to_owned(), node));
            }
            if name == "require" {
                if let Some(module) = first_literal() {
                    sites.push(site(Kind::Import, module, node));
                }
            }
            sites.push(site(Kind::Call, name, node));
        }
        "new_expression" => {
            if let Some(name) = node.child_by_field_name("constructor").and_then(|c| dotted(c, src, fields)).map(global) {
                sites.push(site(Kind::Call, name, node));
            }
        }
        "member_expression" | "subscript_expression" => match dotted(node, src, fields) {
            Some(name) => sites.push(site(Kind::Attribute, if name.contains('\\') { unescape(&name) } else { name }, node)),
            None => {
                if let Some(property) = member(node, src, fields).and_then(|(_, name)| name) {
                    sites.push(site(Kind::Attribute, format!(".{property}"), node));
                }
            }
        },
        _ => {}
    });
    complete.then_some(sites)
}

/// `name` as the engine reads it: escapes decoded (`\u0065val` is `eval`), and without the
/// global object in front (`globalThis.eval` is `eval`).
fn global(name: String) -> String {
    let name = if name.contains('\\') { unescape(&name) } else { name };
    for object in ["globalThis.", "window.", "self.", "global."] {
        if let Some(rest) = name.strip_prefix(object) {
            return rest.to_owned();
        }
    }
    name
}

/// A member read's object and the name it reads, when it names one: `a.b`, `a["b"]`.
fn member<'t, 's>(node: Node<'t>, src: &'s [u8], fields: &Fields) -> Option<(Node<'t>, Option<&'s str>)> {
    let object = node.child_by_field_id(fields.object)?;
    let name = match node.kind() {
        "member_expression" => {
            let property = node.child_by_field_id(fields.property)?;
            (property.kind() != "private_property_identifier").then(|| property.utf8_text(src).ok()).flatten()
        }
        "subscript_expression" => node.child_by_field_id(fields.index).and_then(|i| literal_str(i, src)),
        _ => return None,
    };
    Some((object, name))
}

/// Decodes the escapes an identifier may hold: `\uXXXX` and `\u{X…}`; others are kept.
fn unescape(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while let Some(at) = rest.find("\\u") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 2..];
        let (hex, tail) = match after.strip_prefix('{') {
            Some(braced) => match braced.find('}') {
                Some(end) => (&braced[..end], &braced[end + 1..]),
                None => ("", after),
            },
            None => (after.get(..4).unwrap_or(""), after.get(4..).unwrap_or("")),
        };
        match u32::from_str_radix(hex, 16).ok().and_then(char::from_u32) {
            Some(c) if !hex.is_empty() => {
                out.push(c);
                rest = tail;
            }
            _ => {
                out.push_str("\\u");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// The dotted name an expression spells (`std.popen`, `globalThis["eval"]`, `(0, eval)`), when
/// it is one.
fn dotted(node: Node<'_>, src: &[u8], fields: &Fields) -> Option<String> {
    super::dotted(node, src, |node| match node.kind() {
        "identifier" | "this" => Some(None),
        "parenthesized_expression" => Some(Some((inner(node, false)?, ""))),
        // `(0, eval)` is `eval`, called without a `this`.
        "sequence_expression" => Some(Some((inner(node, true)?, ""))),
        "member_expression" | "subscript_expression" => {
            let (object, name) = member(node, src, fields)?;
            Some(Some((object, name?)))
        }
        _ => None,
    })
}

/// The value of a plain string literal.
fn literal(node: Node<'_>, src: &[u8]) -> Option<String> {
    literal_str(node, src).map(str::to_owned)
}

/// The value of a plain string literal, as it is in the code (no escapes).
fn literal_str<'s>(node: Node<'_>, src: &'s [u8]) -> Option<&'s str> {
    let text = node.utf8_text(src).ok()?;
    let inner = text.get(1..text.len().checked_sub(1)?)?;
    match node.kind() {
        "string" => (!inner.contains('\\')).then_some(inner),
        // A template without substitutions is a literal too.
        "template_string" if node.named_child_count() == 0 => Some(inner),
        _ => None,
    }
}
