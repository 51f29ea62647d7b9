//! Shell's sites: every command in command position — through pipes, `&&`/`||`, subshells,
//! `$(...)` and backquotes — by name (its last path component), with its arguments. A command
//! run through another (`sudo curl`, `env X=1 curl`, `xargs rm`) is a site too, and so is the
//! code of `bash -c '...'` and `eval '...'` when it is a literal.

use std::time::Instant;

use tree_sitter::Tree;

use super::{walk, Kind, Site};

/// Commands that run the command named by their first argument that is not an option, with the
/// options of each that take a value (skipped with it: `sudo -u root curl` runs curl).
const WRAPPERS: &[(&str, &[&str])] = &[
    ("sudo", &["-u", "-g", "-h", "-p", "-C", "-D", "-r", "-t", "-U", "-T", "--user", "--group"]),
    ("doas", &["-u", "-C"]),
    ("env", &["-u", "-C", "-S", "--unset", "--chdir"]),
    ("command", &[]),
    ("exec", &["-a"]),
    ("builtin", &[]),
    ("nohup", &[]),
    ("nice", &["-n", "--adjustment"]),
    ("ionice", &["-c", "-n", "-p", "-P", "-u"]),
    ("time", &["-f", "-o", "--format", "--output"]),
    ("timeout", &["-s", "-k", "--signal", "--kill-after"]),
    ("xargs", &["-I", "-i", "-n", "-P", "-L", "-l", "-s", "-d", "-a", "-E", "-e", "--arg-file", "--delimiter", "--max-args", "--max-procs"]),
    ("stdbuf", &["-i", "-o", "-e"]),
    ("setsid", &[]),
    ("chroot", &["--userspec", "--groups"]),
    ("busybox", &[]),
    ("unshare", &["-S", "-G", "--setuid", "--setgid"]),
    ("firejail", &[]),
    ("strace", &["-o", "-e", "-p", "-s", "-u", "-E"]),
    ("watch", &["-n", "-d", "--interval"]),
    ("flock", &["-w", "-E", "--timeout", "--conflict-exit-code"]),
    ("taskset", &[]),
    ("chrt", &[]),
    ("runuser", &["-u", "-g", "-G", "--user", "--group"]),
];

/// Shells whose `-c` argument is code.
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
        let args: Vec<String> = node.children_by_field_name("argument", &mut cursor).filter_map(|a| a.utf8_text(src).ok()).map(word).collect();
        let name = command_name(name);
        let place = |name: String, args: Vec<String>| Site { kind: Kind::Command, name, args, start: node.start_byte(), end: node.end_byte() };
        // What runs through a wrapper: `sudo -u x env A=1 curl ...` runs env, then curl.
        let mut inner = (name.clone(), args.as_slice());
        for _ in 0..4 {
            let Some(run) = wrapped(&inner.0, inner.1) else { break };
            inner = (command_name(&inner.1[run]), &inner.1[run + 1..]);
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

/// Where in `args` the command that wrapper `name` runs is, if `name` is a wrapper that runs one.
fn wrapped(name: &str, args: &[String]) -> Option<usize> {
    let (_, valued) = WRAPPERS.iter().find(|(wrapper, _)| *wrapper == name)?;
    // `command -v curl` only asks where curl is.
    if name == "command" && args.iter().any(|a| a == "-v" || a == "-V") {
        return None;
    }
    let mut at = 0;
    while let Some(arg) = args.get(at) {
        if valued.contains(&arg.as_str()) {
            at += 2;
        } else if arg == "--" {
            return (at + 1 < args.len()).then_some(at + 1);
        } else if arg.starts_with('-') || arg.contains('=') || (name == "timeout" && arg.chars().all(|c| c.is_ascii_digit() || ".smhd".contains(c))) {
            at += 1;
        } else {
            return Some(at);
        }
    }
    None
}

/// A command's name as it runs: quotes and escapes removed (`'cu'rl`, `c\url`), and
/// `/usr/bin/curl` is `curl`.
fn command_name(name: &str) -> String {
    let name = word(name);
    name.rsplit('/').next().unwrap_or(&name).to_owned()
}

/// A word as bash hands it to the command, when it is written plainly: quotes removed,
/// escapes decoded (also `$'\x63url'`). A word with an expansion (`$x`, `$(...)`, a backquote)
/// cannot be known before it runs: it is kept as written.
fn word(text: &str) -> String {
    unquote(text).unwrap_or_else(|| text.to_owned())
}

/// [`word`]'s quote removal; `None` when the word expands.
fn unquote(text: &str) -> Option<String> {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                // A backslash before a newline joins lines; before anything else it quotes it.
                match chars.next() {
                    Some('\n') | None => {}
                    Some(next) => out.push(next),
                }
            }
            '\'' => loop {
                match chars.next()? {
                    '\'' => break,
                    c => out.push(c),
                }
            },
            '"' => loop {
                match chars.next()? {
                    '"' => break,
                    '\\' => match chars.next()? {
                        c @ ('"' | '\\' | '$' | '`') => out.push(c),
                        '\n' => {}
                        c => {
                            out.push('\\');
                            out.push(c);
                        }
                    },
                    '$' | '`' => return None,
                    c => out.push(c),
                }
            },
            '$' if chars.peek() == Some(&'\'') => {
                chars.next();
                ansi_c(&mut chars, &mut out)?;
            }
            '$' | '`' => return None,
            c => out.push(c),
        }
    }
    Some(out)
}

/// The rest of a `$'...'` string, its escapes decoded, into `out`.
fn ansi_c(chars: &mut std::iter::Peekable<std::str::Chars<'_>>, out: &mut String) -> Option<()> {
    loop {
        match chars.next()? {
            '\'' => return Some(()),
            '\\' => {
                let escape = chars.next()?;
                let digits = |chars: &mut std::iter::Peekable<std::str::Chars<'_>>, radix: u32, most: usize, first: Option<char>| {
                    let mut value: u32 = first.and_then(|c| c.to_digit(radix)).unwrap_or(0);
                    for _ in first.map_or(0, |_| 1)..most {
                        match chars.peek().and_then(|c| c.to_digit(radix)) {
                            Some(d) => {
                                value = value * radix + d;
                                chars.next();
                            }
                            None => break,
                        }
                    }
                    char::from_u32(value)
                };
                let decoded = match escape {
                    'n' => Some('\n'),
                    't' => Some('\t'),
                    'r' => Some('\r'),
                    'a' => Some('\u{7}'),
                    'b' => Some('\u{8}'),
                    'e' | 'E' => Some('\u{1b}'),
                    'f' => Some('\u{c}'),
                    'v' => Some('\u{b}'),
                    'x' => digits(chars, 16, 2, None),
                    'u' => digits(chars, 16, 4, None),
                    'U' => digits(chars, 16, 8, None),
                    '0'..='7' => digits(chars, 8, 3, Some(escape)),
                    other => Some(other),
                };
                out.push(decoded?);
            }
            c => out.push(c),
        }
    }
}
