//! Python's sites: imports (`import x`, `from x import y`, aliases, `__import__("x")`,
//! `importlib.import_module("x")` with a literal), calls by dotted name with aliases resolved,
//! and attribute reads.

use std::collections::HashMap;

use std::time::Instant;

use tree_sitter::{Node, Tree};
use unicode_normalization::UnicodeNormalization;

use super::{field, inner, site, walk, Kind, Site};

/// The ids of the fields read on every node.
struct Fields {
    object: u16,
    attribute: u16,
    function: u16,
}

/// The sites of `tree`; `None` if `deadline` passed first.
pub(super) fn sites(tree: &Tree, code: &str, deadline: Instant) -> Option<Vec<Site>> {
    let src = code.as_bytes();
    let fields = Fields { object: field(tree, "object"), attribute: field(tree, "attribute"), function: field(tree, "function") };
    // Python reads identifiers in NFKC form: `ｅｖａｌ` is `eval`.
    let text = |n: Node<'_>| nfkc(n.utf8_text(src).unwrap_or(""));
    let mut sites = Vec::new();
    // First the imports, which also say what each local name stands for.
    let mut aliases: HashMap<String, String> = HashMap::new();
    let complete = walk(tree, deadline, |node| match node.kind() {
        "import_statement" => {
            let mut cursor = node.walk();
            for name in node.children_by_field_name("name", &mut cursor) {
                let (module, local) = match name.kind() {
                    "aliased_import" => {
                        let module = name.child_by_field_name("name").map(text).unwrap_or_default();
                        (module.clone(), name.child_by_field_name("alias").map(text).unwrap_or(module))
                    }
                    // `import os.path` binds `os`.
                    _ => {
                        let module = text(name);
                        let first = module.split('.').next().unwrap_or("").to_owned();
                        (module, first)
                    }
                };
                if local != module {
                    aliases.insert(local, module.clone());
                }
                sites.push(site(Kind::Import, module, node));
            }
        }
        "import_from_statement" => {
            let module = node.child_by_field_name("module_name").map(text).unwrap_or_default();
            sites.push(site(Kind::Import, module.clone(), node));
            let mut cursor = node.walk();
            for name in node.children_by_field_name("name", &mut cursor) {
                let (imported, local) = match name.kind() {
                    "aliased_import" => {
                        let imported = name.child_by_field_name("name").map(text).unwrap_or_default();
                        (imported.clone(), name.child_by_field_name("alias").map(text).unwrap_or(imported))
                    }
                    _ => (text(name), text(name)),
                };
                // `from os import path` imports the module os.path when there is one.
                let full = format!("{module}.{imported}");
                sites.push(site(Kind::Import, full.clone(), name));
                aliases.insert(local, full);
            }
        }
        _ => {}
    });
    let resolve = |dotted: String| match dotted.split_once('.') {
        Some((first, rest)) => match aliases.get(first) {
            Some(full) => format!("{full}.{rest}"),
            None => dotted,
        },
        None => aliases.get(&dotted).cloned().unwrap_or(dotted),
    };
    let complete = complete && walk(tree, deadline, |node| match node.kind() {
        "call" => {
            let Some(function) = node.child_by_field_id(fields.function) else { return };
            let Some(name) = dotted(function, src, &fields) else { return };
            let name = resolve(name);
            // `eval.__call__(...)` calls `eval`.
            let name = name.strip_suffix(".__call__").map(str::to_owned).unwrap_or(name);
            // `builtins.eval` is `eval`.
            let name = match name.strip_prefix("builtins.").or_else(|| name.strip_prefix("__builtins__.")) {
                Some(builtin) => builtin.to_owned(),
                None => name,
            };
            if matches!(name.as_str(), "__import__" | "importlib.import_module") {
                if let Some(module) = node.child_by_field_name("arguments").and_then(|a| a.named_child(0)).and_then(|a| literal(a, src)) {
                    sites.push(site(Kind::Import, module, node));
                }
            }
            sites.push(site(Kind::Call, name, node));
        }
        "attribute" => match dotted(node, src, &fields) {
            Some(name) => sites.push(site(Kind::Attribute, resolve(name), node)),
            // `f().__globals__`, `x[0].environ`: the attribute alone.
            None => {
                if let Some(attribute) = node.child_by_field_id(fields.attribute) {
                    sites.push(site(Kind::Attribute, format!(".{}", text(attribute)), node));
                }
            }
        },
        _ => {}
    });
    complete.then_some(sites)
}

/// `name` as Python reads an identifier: in NFKC form.
fn nfkc(name: &str) -> String {
    match name.is_ascii() {
        true => name.to_owned(),
        false => name.nfkc().collect(),
    }
}

/// The dotted name an expression spells (`os.path.join`), when it is one; `(eval)` is `eval`.
fn dotted(node: Node<'_>, src: &[u8], fields: &Fields) -> Option<String> {
    let name = super::dotted(node, src, |node| match node.kind() {
        "identifier" => Some(None),
        "parenthesized_expression" => Some(Some((inner(node, false)?, ""))),
        "attribute" => {
            let object = node.child_by_field_id(fields.object)?;
            let attribute = node.child_by_field_id(fields.attribute)?.utf8_text(src).ok()?;
            Some(Some((object, attribute)))
        }
        _ => None,
    })?;
    Some(nfkc(&name))
}

/// The value of a plain string literal (no interpolation, no concatenation).
fn literal(node: Node<'_>, src: &[u8]) -> Option<String> {
    if node.kind() != "string" {
        return None;
    }
    let mut cursor = node.walk();
    let mut value = String::new();
    for part in node.named_children(&mut cursor) {
        match part.kind() {
            "string_start" | "string_end" => {}
            "string_content" => value.push_str(part.utf8_text(src).ok()?),
            _ => return None,
        }
    }
    Some(value)
}
