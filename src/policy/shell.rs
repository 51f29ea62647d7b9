//! Shell's sites: every command in command position — through pipes, `&&`/`||`, subshells,
//! `$(...)` and backquotes — by name (its last path component), with its arguments. A command
//! run through another (`sudo curl`, `env X=1 curl`, `xargs rm`) is a site too, and so is the
//! code of `bash -c '...'` and `eval '...'` when it is a literal.

use std::time::Instant;

use tree_sitter::{Node, Tree};

use super::{inner, walk, Found, Kind, Site};

/// Commands that run the command named by their first argument that is not an option, with the
/// options of each that take a value (skipped with it: `sudo -u root curl` runs curl).
const WRAPPERS: &[(&str, &[&str])] = &[
    ("sudo", &["-u", "-g", "-h", "-p", "-C", "-D", "-r", "-t", "-U", "-T", "--user", "--group"]),
    ("doas", &["-u", "-C"]),
    ("env", &["-u", "-C", "-S", "--unset", "--chdir"]),
    ("command", &[]),
    ("exec", &["-a"]),
    ("builtin", &[]),
    ("coproc", &[]),
    ("!", &[]),
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
    ("setpriv", &["--reuid", "--regid", "--ruid", "--rgid", "--euid", "--egid", "--groups", "--inh-caps", "--ambient-caps", "--bounding-set", "--securebits", "--pdeathsig", "--selinux-label", "--apparmor-profile", "--landlock-access", "--landlock-rule"]),
    ("prlimit", &["-p", "--pid"]),
    ("unbuffer", &[]),
];

/// Shells whose `-c` argument (or, without one, whose standard input) is code.
const SHELLS: &[&str] = &["bash", "sh", "dash", "zsh", "ksh", "ash", "busybox", "rbash"];

/// How deep `bash -c 'bash -c ...'` is followed.
const MAX_DEPTH: usize = 3;

/// One command as it runs: its name and arguments, what it runs in turn (wrappers, `find
/// -exec`), and the code it hands to a shell (`bash -c`, `eval`, `trap`), if any.
struct Command {
    name: String,
    args: Vec<String>,
    /// Commands it runs: `sudo -u x curl` runs curl.
    runs: Vec<(String, Vec<String>)>,
    /// Code it runs from a string.
    code: Option<String>,
    /// Whether it is a shell that reads its code from standard input.
    reads_code: bool,
}

impl Command {
    fn of(node: Node<'_>, src: &[u8]) -> Option<Command> {
        let name = command_name(node.child_by_field_name("name")?.utf8_text(src).ok()?);
        let mut cursor = node.walk();
        let args: Vec<String> = node.children_by_field_name("argument", &mut cursor).filter_map(|a| a.utf8_text(src).ok()).map(word).collect();
        let mut runs = Vec::new();
        let mut inner = (name.clone(), args.as_slice());
        for _ in 0..4 {
            let Some(run) = wrapped(&inner.0, inner.1) else { break };
            inner = (command_name(&inner.1[run]), &inner.1[run + 1..]);
            runs.push((inner.0.clone(), inner.1.to_vec()));
        }
        // `find . -exec curl {} \;` runs curl.
        if inner.0 == "find" {
            let mut rest = inner.1;
            while let Some(at) = rest.iter().position(|a| matches!(a.as_str(), "-exec" | "-execdir" | "-ok" | "-okdir")) {
                let Some(run) = rest.get(at + 1) else { break };
                // The command's words end at `;` or `+` (the command itself never does).
                let end = rest[at + 2..].iter().position(|a| a == ";" || a == "+").map_or(rest.len(), |e| at + 2 + e);
                runs.push((command_name(run), rest[at + 2..end].to_vec()));
                rest = &rest[end..];
            }
        }
        let (mut code, reads_code) = code_of(&inner.0, inner.1);
        // `find . -exec sh -c 'curl x' \;`.
        for (run, args) in &runs {
            if code.is_none() {
                code = code_of(run, args).0;
            }
        }
        // `env -S 'curl x'` (also `-S'curl x'`, `--split-string=…`) splits its string into a
        // command.
        if name == "env" {
            code = code.or_else(|| valued_option(&args, "-S", "--split-string"));
        }
        // `hash -p /usr/bin/curl c` makes `c` run curl.
        if name == "hash" {
            if let Some(path) = valued_option(&args, "-p", "") {
                runs.push((command_name(&path), Vec::new()));
            }
        }
        Some(Command { name, args, runs, code, reads_code })
    }
}

/// The code command `name` runs from a string among `args`, and whether it reads code from
/// its standard input instead.
fn code_of(name: &str, args: &[String]) -> (Option<String>, bool) {
    match name {
        "eval" => (Some(args.join(" ")), false),
        // `trap 'curl x' EXIT`, `watch 'curl x'`: code run later.
        "trap" => (args.iter().find(|a| !a.starts_with('-')).cloned(), false),
        // `alias c=curl`: the alias's text runs where `c` is written.
        "alias" => (Some(args.iter().filter_map(|a| a.split_once('=').map(|(_, v)| v)).collect::<Vec<_>>().join("\n")), false),
        // `source /dev/stdin <<< '...'`, `. /dev/stdin`: code from standard input.
        "source" | "." => (None, args.first().is_none_or(|f| matches!(f.as_str(), "/dev/stdin" | "/proc/self/fd/0" | "/dev/fd/0" | "-"))),
        // A name that is code once quotes are gone (`'curl x'` through a wrapper); not one
        // that expands (`$(printf cu)rl`), whose text is the command itself.
        _ if name.contains(char::is_whitespace) && !name.contains(['$', '`']) => (Some(name.to_owned()), false),
        // `flock FILE -c 'curl x'`, `script -qc 'curl x'`: a shell runs the option's value.
        "flock" | "script" => (command_option(args), false),
        // `mapfile -C 'curl x' < f` runs its callback as a command.
        "mapfile" | "readarray" => (valued_option(args, "-C", ""), false),
        shell if SHELLS.contains(&shell) => {
            let options = shell_options(args);
            match (options.code, options.operands.first()) {
                (true, operand) => (operand.cloned(), false),
                // No script, `-s`, or a script that is standard input (`bash /dev/stdin`).
                (false, None) => (None, true),
                (false, Some(script)) => (None, options.stdin || matches!(script.as_str(), "/dev/stdin" | "/proc/self/fd/0" | "/dev/fd/0" | "-")),
            }
        }
        _ => (None, false),
    }
}

/// The value of option `short` (`-S x`, `-Sx`) or `long` (`--long x`, `--long=x`) in `args`.
fn valued_option(args: &[String], short: &str, long: &str) -> Option<String> {
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        if arg == short || (!long.is_empty() && arg == long) {
            return args.next().cloned();
        }
        if let Some(value) = arg.strip_prefix(short).filter(|v| !v.is_empty() && !short.starts_with("--")) {
            return Some(value.to_owned());
        }
        if let Some(value) = arg.strip_prefix(long).and_then(|v| v.strip_prefix('=')).filter(|_| !long.is_empty()) {
            return Some(value.to_owned());
        }
    }
    None
}

/// The value of option `-c` (also last in a cluster, `-qc`) or `--command` among `args`.
fn command_option(args: &[String]) -> Option<String> {
    if let Some(code) = args.iter().find_map(|a| a.strip_prefix("--command=")) {
        return Some(code.to_owned());
    }
    let at = args.iter().position(|a| a == "--command" || (a.starts_with('-') && !a.starts_with("--") && a.ends_with('c')))?;
    args.get(at + 1).cloned()
}

/// What a shell's arguments say about where its code comes from.
struct ShellOptions<'a> {
    /// `-c` (also `-lc`, `-ec`): the first operand is the code.
    code: bool,
    /// `-s`: the code is standard input, whatever the operands.
    stdin: bool,
    /// What follows the options: the code (with `-c`) or the script, then its arguments.
    operands: &'a [String],
}

/// Reads a shell's options (`-c`, clusters, `-o pipefail`, `--rcfile FILE`, `--`).
fn shell_options(args: &[String]) -> ShellOptions<'_> {
    let (mut code, mut stdin) = (false, false);
    let mut at = 0;
    while let Some(arg) = args.get(at) {
        if arg == "--" || arg == "-" {
            at += 1;
            break;
        }
        let short = arg.strip_prefix('-').or_else(|| arg.strip_prefix('+'));
        match short {
            Some(flags) if !flags.is_empty() && !flags.starts_with('-') => {
                code |= arg.starts_with('-') && flags.contains('c');
                stdin |= arg.starts_with('-') && flags.contains('s');
                // `-o pipefail`, `-O extglob` take a value.
                at += if flags.ends_with('o') || flags.ends_with('O') { 2 } else { 1 };
            }
            // `--rcfile FILE`, `--init-file FILE` take a value; other long options do not.
            Some(_) if matches!(arg.as_str(), "--rcfile" | "--init-file") => at += 2,
            Some(_) => at += 1,
            None => break,
        }
    }
    ShellOptions { code, stdin, operands: args.get(at..).unwrap_or(&[]) }
}

/// The sites of `tree`, `None` if `deadline` passed first; `depth` counts the strings of code
/// it was found in. The sites of code found inside a string (`bash -c '...'`, a here-document
/// fed to a shell) are placed at the statement that runs it.
pub(super) fn sites(tree: &Tree, code: &str, deadline: Instant, depth: usize) -> Option<Found> {
    let src = code.as_bytes();
    let mut sites = Found::default();
    let mut late = false;
    let mut nested = |text: &str, node: Node<'_>, sites: &mut Found| {
        // Code that is the code being read adds nothing.
        if text == code {
            return;
        }
        if depth >= MAX_DEPTH {
            // Code this deep is not read: the verdict says so rather than pass it.
            sites.too_deep |= !text.trim().is_empty();
            return;
        }
        let found = super::parse(&tree_sitter_bash::LANGUAGE.into(), text, deadline).and_then(|tree| self::sites(&tree, text, deadline, depth + 1));
        match found {
            Some(found) => sites.nest(found, node),
            None => late = true,
        }
    };
    let complete = walk(tree, deadline, |node| match node.kind() {
        "command" => {
            let Some(command) = Command::of(node, src) else { return };
            let place = |name: String, args: Vec<String>| Site { kind: Kind::Command, name, args, start: node.start_byte(), end: node.end_byte() };
            for (name, args) in &command.runs {
                sites.push(place(name.clone(), args.clone()));
            }
            sites.push(place(command.name.clone(), command.args.clone()));
            if let Some(code) = &command.code {
                nested(code, node, &mut sites);
            }
            // `bash <<< 'curl x'`.
            if command.reads_code {
                let mut cursor = node.walk();
                for redirect in node.children_by_field_name("redirect", &mut cursor).filter(|r| r.kind() == "herestring_redirect") {
                    if let Some(text) = inner(redirect, false).and_then(|t| t.utf8_text(src).ok()) {
                        nested(&word(text), node, &mut sites);
                    }
                }
            }
        }
        // A here-document or here-string a shell reads as its code: `bash <<EOF`, `cat <<EOF | sh`.
        "redirected_statement" => {
            let mut cursor = node.walk();
            let mut shell_reads = node.child_by_field_name("body").is_some_and(|body| feeds_a_shell(body, src));
            let redirects: Vec<Node<'_>> = node.children_by_field_name("redirect", &mut cursor).collect();
            for redirect in &redirects {
                let mut cursor = redirect.walk();
                shell_reads |= redirect.named_children(&mut cursor).any(|c| c.kind() == "pipeline" && feeds_a_shell(c, src));
            }
            if !shell_reads {
                return;
            }
            for redirect in redirects {
                let mut cursor = redirect.walk();
                for part in redirect.named_children(&mut cursor) {
                    let text = match part.kind() {
                        "heredoc_body" => part.utf8_text(src).ok().map(str::to_owned),
                        "raw_string" | "string" | "word" | "concatenation" if redirect.kind() == "herestring_redirect" => part.utf8_text(src).ok().map(word),
                        _ => None,
                    };
                    if let Some(text) = text {
                        nested(&text, node, &mut sites);
                    }
                }
            }
        }
        // Backquotes in an unquoted here-document run as `$(...)` does there; the grammar
        // reads them as text.
        "heredoc_body" => {
            let quoted = node.parent().and_then(|r| r.named_children(&mut r.walk()).find(|c| c.kind() == "heredoc_start")).and_then(|s| s.utf8_text(src).ok()).is_none_or(|s| s.contains(['\'', '"', '\\']));
            if !quoted {
                for code in backquoted(node.utf8_text(src).unwrap_or("")) {
                    nested(&code, node, &mut sites);
                }
            }
        }
        // `echo 'curl x' | bash`, `printf '%s' 'curl x' | sh`.
        "pipeline" => {
            let mut cursor = node.walk();
            // Each stage read once; what writes a stage's input is the last stage before it
            // that does not pass its input on (`echo 'curl x' | cat | bash`).
            let mut writer: Option<Command> = None;
            let mut read = false;
            for stage in node.named_children(&mut cursor).filter(|c| c.kind() != "comment") {
                let Some(command) = Command::of(stage, src) else {
                    (writer, read) = (None, false);
                    continue;
                };
                if command.reads_code && !read {
                    read = true;
                    if let Some(writer) = writer.as_ref().filter(|c| matches!(c.name.as_str(), "echo" | "printf")) {
                        let text = writer.args.iter().filter(|a| !a.starts_with('-')).cloned().collect::<Vec<_>>().join("\n");
                        // `echo -e 'cu\x72l x'` and `printf` write what their escapes say.
                        let decoded = escapes(&text);
                        if decoded != text {
                            nested(&decoded, node, &mut sites);
                        }
                        nested(&text, node, &mut sites);
                    }
                }
                if !matches!(command.name.as_str(), "cat" | "tee" | "head" | "tail" | "dd" | "stdbuf") {
                    (writer, read) = (Some(command), false);
                }
            }
        }
        _ => {}
    });
    (complete && !late).then_some(sites)
}

/// The code of each backquoted command substitution in `text` (a backslash escapes the next
/// character, a backquote too).
pub(super) fn backquoted(text: &str) -> Vec<String> {
    let (mut found, mut current, mut inside) = (Vec::new(), String::new(), false);
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                let next = chars.next();
                if inside {
                    // `\`` inside backquotes is a backquote of the inner command.
                    match next {
                        Some(n @ ('`' | '\\' | '$')) => current.push(n),
                        Some(n) => current.extend(['\\', n]),
                        None => {}
                    }
                }
            }
            '`' if inside => {
                found.push(std::mem::take(&mut current));
                inside = false;
            }
            '`' => inside = true,
            c if inside => current.push(c),
            _ => {}
        }
    }
    found
}

/// Whether `node` (a command, or a pipeline ending in one) is a shell reading its code from
/// standard input.
fn feeds_a_shell(node: Node<'_>, src: &[u8]) -> bool {
    match node.kind() {
        "command" => Command::of(node, src).is_some_and(|c| c.reads_code),
        "pipeline" => {
            let mut cursor = node.walk();
            let last = node.named_children(&mut cursor).filter(|c| c.kind() != "comment").last();
            last.is_some_and(|last| feeds_a_shell(last, src))
        }
        _ => false,
    }
}

/// Where in `args` the command that wrapper `name` runs is, if `name` is a wrapper that runs one.
fn wrapped(name: &str, args: &[String]) -> Option<usize> {
    let (_, valued) = WRAPPERS.iter().find(|(wrapper, _)| *wrapper == name)?;
    // `command -v curl` only asks where curl is.
    if name == "command" && args.iter().any(|a| a == "-v" || a == "-V") {
        return None;
    }
    let mut at = 0;
    // `taskset MASK cmd`, `chrt PRIORITY cmd`, `flock FILE cmd`: a value before the command.
    let mut values = usize::from(matches!(name, "taskset" | "chrt" | "flock"));
    // `coproc NAME { ...; }` names the coprocess first.
    if name == "coproc" && args.get(1).is_some_and(|a| a == "{" || a == "(") {
        at = 1;
    }
    while let Some(arg) = args.get(at) {
        if matches!(arg.as_str(), "{" | "(" | "!") {
            // The grammar reads `time { curl x; }` as arguments of `time`.
            at += 1;
        } else if valued.contains(&arg.as_str()) {
            at += 2;
        } else if arg == "--" {
            return (at + 1 < args.len()).then_some(at + 1);
        } else if arg.starts_with('-') || arg.contains('=') || (name == "timeout" && arg.chars().all(|c| c.is_ascii_digit() || ".smhd".contains(c))) {
            at += 1;
        } else if values > 0 {
            values -= 1;
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

/// `text` with its backslash escapes decoded as `$'...'`, `echo -e` and `printf` decode them.
fn escapes(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    // Without a closing quote the decoding runs to the end; an escape that names no
    // character ends it where it is.
    let _ = decode(&mut chars, &mut out, None);
    out
}

/// The rest of a `$'...'` string, its escapes decoded, into `out`.
fn ansi_c(chars: &mut std::iter::Peekable<std::str::Chars<'_>>, out: &mut String) -> Option<()> {
    decode(chars, out, Some('\''))
}

/// Decodes backslash escapes from `chars` into `out` up to `end` (the end is consumed;
/// `None` if it never comes), or to the end of `chars` when `end` is `None`.
fn decode(chars: &mut std::iter::Peekable<std::str::Chars<'_>>, out: &mut String, end: Option<char>) -> Option<()> {
    loop {
        let Some(c) = chars.next() else { return end.is_none().then_some(()) };
        match c {
            c if Some(c) == end => return Some(()),
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
