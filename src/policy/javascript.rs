//! JavaScript's sites: imports (`import ... from "x"`, `import("x")`, `require("x")` with a
//! literal), calls by dotted name (`eval`, `os.exec`, `std.popen`), and member reads.

use tree_sitter::Node;

use super::{site, walk, Kind, Site};

pub(super) fn sites(code: &str) -> (Vec<Site>, bool) {
    let Some(tree) = super::parse(&tree_sitter_javascript::LANGUAGE.into(), code) else {
        return (Vec::new(), false);
    };
    let src = code.as_bytes();
    let mut sites = Vec::new();
    walk(&tree, |node| match node.kind() {
        "import_statement" | "export_statement" => {
            if let Some(module) = node.child_by_field_name("source").and_then(|s| literal(s, src)) {
                sites.push(site(Kind::Import, module, node, code));
            }
        }
        "call_expression" => {
            let Some(function) = node.child_by_field_name("function") else { return };
            let first_literal = || node.child_by_field_name("arguments").and_then(|a| a.named_child(0)).and_then(|a| literal(a, src));
            if function.kind() == "import" {
                if let Some(module) = first_literal() {
                    sites.push(site(Kind::Import, module, node, code));
                }
                return;
            }
            let Some(name) = dotted(function, src) else { return };
            if name == "require" {
                if let Some(module) = first_literal() {
                    sites.push(site(Kind::Import, module, node, code));
                }
            }
            sites.push(site(Kind::Call, name, node, code));
        }
        "new_expression" => {
            if let Some(name) = node.child_by_field_name("constructor").and_then(|c| dotted(c, src)) {
                sites.push(site(Kind::Call, name, node, code));
            }
        }
        "member_expression" => {
            if let Some(name) = dotted(node, src) {
                sites.push(site(Kind::Attribute, name, node, code));
            } else if let Some(property) = node.child_by_field_name("property").and_then(|p| p.utf8_text(src).ok()) {
                sites.push(site(Kind::Attribute, format!(".{property}"), node, code));
            }
        }
        _ => {}
    });
    (sites, !tree.root_node().has_error())
}

/// The dotted name an expression spells (`std.popen`), when it is one.
fn dotted(node: Node<'_>, src: &[u8]) -> Option<String> {
    match node.kind() {
        "identifier" | "property_identifier" => node.utf8_text(src).ok().map(str::to_owned),
        "member_expression" => {
            let object = dotted(node.child_by_field_name("object")?, src)?;
            let property = node.child_by_field_name("property")?;
            if property.kind() == "private_property_identifier" {
                return None;
            }
            Some(format!("{object}.{}", property.utf8_text(src).ok()?))
        }
        _ => None,
    }
}

/// The value of a plain string literal.
fn literal(node: Node<'_>, src: &[u8]) -> Option<String> {
    match node.kind() {
        "string" => {
            let text = node.utf8_text(src).ok()?;
            let inner = text.get(1..text.len().checked_sub(1)?)?;
            (!inner.contains('\\')).then(|| inner.to_owned())
        }
        // A template without substitutions is a literal too.
        "template_string" if node.named_child_count() == 0 => {
            let text = node.utf8_text(src).ok()?;
            text.get(1..text.len().checked_sub(1)?).map(str::to_owned)
        }
        _ => None,
    }
}
