//! Shell's sites: every command in command position — through pipes, `&&`/`||`, subshells,
//! `$(...)` and backquotes — by name (its last path component), with its arguments.

use super::{site, walk, Kind, Site};

pub(super) fn sites(code: &str) -> (Vec<Site>, bool) {
    let Some(tree) = super::parse(&tree_sitter_bash::LANGUAGE.into(), code) else {
        return (Vec::new(), false);
    };
    let src = code.as_bytes();
    let mut sites = Vec::new();
    walk(&tree, |node| {
        if node.kind() != "command" {
            return;
        }
        let Some(name) = node.child_by_field_name("name").and_then(|n| n.utf8_text(src).ok()) else { return };
        // `/usr/bin/curl` and `curl` are the same command; quotes around a name do not hide it.
        let name = name.trim_matches(|c| c == '"' || c == '\'');
        let name = name.rsplit('/').next().unwrap_or(name).to_owned();
        let mut cursor = node.walk();
        let args = node
            .children_by_field_name("argument", &mut cursor)
            .filter_map(|a| a.utf8_text(src).ok())
            .map(|a| a.trim_matches(|c| c == '"' || c == '\'').to_owned())
            .collect();
        let mut found = site(Kind::Command, name, node, code);
        found.args = args;
        sites.push(found);
    });
    (sites, !tree.root_node().has_error())
}
