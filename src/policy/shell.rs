//! Shell's sites: every command in command position — through pipes, `&&`/`||`, subshells,
//! `$(...)` and backquotes — by name (its last path component), with its arguments. A command
//! run through another (`sudo curl`, `env X=1 curl`, `xargs rm`) is a site too, and so is the
//! code of `bash -c '...'` and `eval '...'` when it is a literal.

use std::time::Instant;

use tree_sitter::{Node, Tree};

use super::{walk, Kind, Site};

/// Commands that run the command named by their first argument that is not an option.
const WRAPPERS: &[&str] = &["sudo", "doas", "env", "command", "exec", "nohup", "nice", "ionice", "time", "timeout", "xargs", "stdbuf", "setsid", "chroot", "busybox", "unshare", "firejail", "strace", "watch", "builtin"];

/// Shells whose `-c` argument is code, and `eval`, whose arguments are.
const SHELLS: &[&str] = &["bash", "sh", "dash", "zsh", "ksh", "ash", "busybox"];

/// How deep `bash -c 'bash -c ...'` is followed.
const MAX_DEPTH: usize = 3;

/// The sites of `tree`, `None` if `deadline` passed first; `depth` counts the `-c` strings it
/// was found in. The sites of code found inside a string are placed at the command that runs
/// it.
pub(super) fn sites(tree: &Tree, code: &str, deadline: Instant, depth: usize) -> Option<Vec<Site>> {
    let src = code.as_bytes();
    let mut sites = Vec::new();
    let mut late = false;
    let mut complete = walk(tree, deadline, |node| {
        if node.kind() != "command" {
            return;
        }
        let Some(name) = node.child_by_field_name("name").and_then(|n| n.utf8_text(src).ok()) else { return };
        let mut cursor = node.walk();
        let args: Vec<String> = node.children_by_field_name("argument", &mut cursor).filter_map(|a| word(a, src)).collect();
        let name = command_name(name);
        let place = |name: String, args: Vec<String>| Site { kind: Kind::Command, name, args, start: node.start_byte(), end: node.end_byte() };
        // What runs through a wrapper: `sudo -u x curl ...` runs curl.
        let mut inner = (name.clone(), args.as_slice());
        for _ in 0..4 {
            if !WRAPPERS.contains(&inner.0.as_str()) {
                break;
            }
            let Some(at) = inner.1.iter().position(|a| !a.starts_with('-') && !a.contains('=') && !a.chars().all(|c| c.is_ascii_digit() || c == '.' || c == 's' || c == 'm')) else { break };
            inner = (command_name(&inner.1[at]), &inner.1[at + 1..]);
            sites.push(place(inner.0.clone(), inner.1.to_vec()));
        }
        // Code in a string: `bash -c '...'`, `eval '...'`.
        let nested = match inner.0.as_str() {
            "eval" => Some(inner.1.join(" ")),
            shell if SHELLS.contains(&shell) => inner.1.iter().position(|a| a == "-c").and_then(|c| inner.1.get(c + 1)).cloned(),
            _ => None,
        };
        sites.push(place(name, args));
        if let Some(nested) = nested.filter(|_| depth < MAX_DEPTH) {
            let found = super::parse(&tree_sitter_bash::LANGUAGE.into(), &nested, deadline).and_then(|tree| self::sites(&tree, &nested, deadline, depth + 1));
            match found {
                Some(found) => sites.extend(found.into_iter().map(|s| place(s.name, s.args))),
                None => late = true,
            }
        }
    });
    complete &= !late;
    complete.then_some(sites)
}

/// A command's name as it runs: quotes do not hide it, and `/usr/bin/curl` is `curl`.
fn command_name(name: &str) -> String {
    let name = name.trim_matches(|c| c == '"' || c == '\'');
    name.rsplit('/').next().unwrap_or(name).to_owned()
}

/// An argument as the command sees it, when it is written plainly (quoted or not, without
/// expansions); other words as written.
fn word(node: Node<'_>, src: &[u8]) -> Option<String> {
    let text = node.utf8_text(src).ok()?;
    Some(match node.kind() {
        "raw_string" => text.get(1..text.len().saturating_sub(1)).unwrap_or("").to_owned(),
        "string" if node.named_child_count() == 0 || (0..node.named_child_count()).all(|i| node.named_child(i as u32).is_some_and(|c| c.kind() == "string_content")) => {
            text.get(1..text.len().saturating_sub(1)).unwrap_or("").to_owned()
        }
        _ => text.trim_matches(|c| c == '"' || c == '\'').to_owned(),
    })
}
