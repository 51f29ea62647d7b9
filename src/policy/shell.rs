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
    ("ionice", &["-c", "-n", "-p", "-P", "-u", "--class", "--classdata", "--pid", "--pgid", "--uid"]),
    ("time", &["-f", "-o", "--format", "--output"]),
    ("timeout", &["-s", "-k", "--signal", "--kill-after"]),
    ("xargs", &["-I", "-i", "-n", "-P", "-L", "-l", "-s", "-d", "-a", "-E", "-e", "--arg-file", "--delimiter", "--max-args", "--max-procs"]),
    ("stdbuf", &["-i", "-o", "-e", "--input", "--output", "--error"]),
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
    /// Other names the command word may run as (its glob, its other brace expansions).
    also: Vec<String>,
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
        let mut names = command_names(node.child_by_field_name("name")?.utf8_text(src).ok()?);
        let name = names.remove(0);
        let mut cursor = node.walk();
        // Arguments as bash passes them: braces expanded (`rm -rf /{,}` is `rm -rf / /`),
        // within a bound for the whole command.
        let mut room = 16 * MAX_BRACE_WORDS;
        let mut args: Vec<String> = Vec::new();
        // (`$"..."` is a `$` token, not an argument, then the string.)
        for arg in node.children_by_field_name("argument", &mut cursor).filter(|a| a.is_named()).filter_map(|a| a.utf8_text(src).ok()).map(word) {
            match braces(&arg).filter(|words| words.len() > 1 && words.len() <= room) {
                Some(words) => {
                    room -= words.len();
                    args.extend(words);
                }
                None => args.push(arg),
            }
        }
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
        Some(Command { name, also: names, args, runs, code, reads_code })
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
        "flock" | "script" => (valued_option(args, "-c", "--command"), false),
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
    let letter = short.strip_prefix('-').and_then(|l| l.chars().next());
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match option_value(arg, letter, long) {
            Some(Some(value)) => return Some(value.to_owned()),
            Some(None) => return args.next().cloned(),
            None => {}
        }
    }
    None
}

/// Whether `arg` gives the option with short `letter` (`-S`, also in a cluster `-vS`) or
/// `long` name (`--split-string`, also any start of it GNU tools accept, `--split-str`):
/// `Some(Some(value))` with the value attached (`-Sx`, `-vSx`, `--long=x`), `Some(None)` when
/// the value is the next argument; `None` when it does not.
fn option_value<'a>(arg: &'a str, letter: Option<char>, long: &str) -> Option<Option<&'a str>> {
    if let Some(given) = arg.strip_prefix("--") {
        let (name, value) = match given.split_once('=') {
            Some((name, value)) => (name, Some(value)),
            None => (given, None),
        };
        let long = long.strip_prefix("--")?;
        return (!name.is_empty() && long.starts_with(name)).then_some(value);
    }
    let cluster = arg.strip_prefix('-')?;
    let letter = letter?;
    // Flags before the letter (`-v`), then the letter, then its value if attached.
    let at = cluster.char_indices().find(|&(_, c)| c == letter || !c.is_ascii_alphanumeric())?;
    if at.1 != letter {
        return None;
    }
    let rest = &cluster[at.0 + letter.len_utf8()..];
    Some((!rest.is_empty()).then_some(rest))
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
        // bash drops NUL bytes from code it reads; the grammar reads them very slowly.
        let text = &*match text.contains('\0') {
            true => std::borrow::Cow::Owned(text.replace('\0', "")),
            false => std::borrow::Cow::Borrowed(text),
        };
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
            for name in &command.also {
                sites.push(place(name.clone(), command.args.clone()));
            }
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
            // that does not pass its input on (`echo 'curl x' | cat | bash`), or what such a
            // stage reads from a here-string or here-document (`cat <<< 'curl x' | bash`).
            let mut written: Option<String> = None;
            let mut read = false;
            for stage in node.named_children(&mut cursor).filter(|c| c.kind() != "comment") {
                // A here-string is a redirect of the command itself, or of a statement around it.
                let (body, redirected) = match stage.kind() {
                    "redirected_statement" => (stage.child_by_field_name("body"), Some(stage)),
                    _ => (Some(stage), Some(stage)),
                };
                let Some(command) = body.and_then(|body| Command::of(body, src)) else {
                    (written, read) = (None, false);
                    continue;
                };
                if command.reads_code && !read {
                    read = true;
                    if let Some(text) = &written {
                        // `echo -e 'cu\x72l x'` and `printf` write what their escapes say.
                        let mut texts = vec![text.clone()];
                        for echo in [false, true] {
                            let decoded = escapes(text, echo);
                            if !texts.contains(&decoded) {
                                texts.push(decoded);
                            }
                        }
                        for text in texts {
                            nested(&text, node, &mut sites);
                        }
                    }
                }
                let passes_on = matches!(command.name.as_str(), "cat" | "tee" | "head" | "tail" | "dd" | "stdbuf");
                if matches!(command.name.as_str(), "echo" | "printf") {
                    (written, read) = (Some(command.args.iter().filter(|a| !a.starts_with('-')).cloned().collect::<Vec<_>>().join("\n")), false);
                } else if let (true, Some(text)) = (passes_on, redirected.and_then(|r| here_text(r, src))) {
                    (written, read) = (Some(text), false);
                } else if !passes_on {
                    (written, read) = (None, false);
                }
            }
        }
        _ => {}
    });
    (complete && !late).then_some(sites)
}

/// What a command reads from its here-strings and here-documents (`cat <<< 'x'`).
fn here_text(redirected: Node<'_>, src: &[u8]) -> Option<String> {
    let mut cursor = redirected.walk();
    let mut texts = Vec::new();
    for redirect in redirected.children_by_field_name("redirect", &mut cursor) {
        let mut parts = redirect.walk();
        for part in redirect.named_children(&mut parts) {
            match part.kind() {
                "heredoc_body" => texts.extend(part.utf8_text(src).ok().map(str::to_owned)),
                "raw_string" | "string" | "word" | "concatenation" if redirect.kind() == "herestring_redirect" => texts.extend(part.utf8_text(src).ok().map(word)),
                _ => {}
            }
        }
    }
    (!texts.is_empty()).then(|| texts.join("\n"))
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
    // `taskset MASK cmd`, `chrt PRIORITY cmd`, `flock FILE cmd`, `timeout 5 cmd` (`inf`,
    // `1e3`, `0x10`, …): a value before the command.
    let mut values = usize::from(matches!(name, "taskset" | "chrt" | "flock" | "timeout"));
    // `coproc NAME { ...; }` names the coprocess first.
    if name == "coproc" && args.get(1).is_some_and(|a| a == "{" || a == "(") {
        at = 1;
    }
    while let Some(arg) = args.get(at) {
        if matches!(arg.as_str(), "{" | "(" | "!") {
            // The grammar reads `time { curl x; }` as arguments of `time`.
            at += 1;
        } else if arg == "--" {
            return (at + 1 < args.len()).then_some(at + 1);
        } else if arg.starts_with('-') && arg.len() > 1 {
            // An option whose value is the next argument: `-u root`, `-vu root` (a cluster
            // ending in it), `--user root`, `--us root` (any start of a long name).
            let takes_next = valued.iter().any(|option| match option.strip_prefix("--") {
                Some(_) => matches!(option_value(arg, None, option), Some(None)),
                None => matches!(option_value(arg, option.strip_prefix('-').and_then(|l| l.chars().next()), ""), Some(None)),
            });
            at += if takes_next { 2 } else { 1 };
        } else if arg.contains('=') {
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
    command_names(name).swap_remove(0)
}

/// The names a command word may run as, the first being the name: quotes and escapes
/// removed, braces expanded (`cu{r,}l` runs `curl`; the others are kept as names too, which
/// only ever adds findings), each by its last path component. A glob that could be a command
/// this check reads for what it runs (a wrapper, a shell: `/usr/bin/en?`, `/bin/[s]h`) is read
/// as that command; rules still see the glob itself (see `could_name`).
fn command_names(raw: &str) -> Vec<String> {
    let words = match braces(&word(raw)) {
        Some(words) => words,
        // Too long to work out: it could be any command.
        None => vec!["*".to_owned()],
    };
    let mut names: Vec<String> = words.iter().map(|w| w.rsplit('/').next().unwrap_or(w).to_owned()).collect();
    if super::is_glob(&names[0]) && names[0].len() <= super::MAX_GLOB_BYTES {
        let glob: Vec<char> = names[0].chars().collect();
        let special = WRAPPERS.iter().map(|(name, _)| *name).chain(SHELLS.iter().copied()).chain(READERS.iter().copied());
        if let Some(known) = special.into_iter().find(|known| super::glob_matches(&glob, &known.chars().collect::<Vec<_>>(), false)) {
            names.insert(0, known.to_owned());
        }
    }
    names
}

/// Commands read for what they run or write besides the wrappers and shells.
const READERS: &[&str] = &["find", "eval", "source", ".", "trap", "alias", "flock", "script", "mapfile", "readarray", "hash", "echo", "printf", "cat", "tee", "head", "tail", "dd"];

/// The most words one brace expansion is read into (bash makes as many as it is told).
const MAX_BRACE_WORDS: usize = 64;

/// The longest word with braces that is expanded.
const MAX_BRACE_BYTES: usize = 1024;

/// `word`'s brace expansion (`a{b,c}d` is `abd acd`, `{a..c}` is `a b c`), at most
/// [`MAX_BRACE_WORDS`] words, the first as bash makes it first; `None` for a word with braces
/// longer than [`MAX_BRACE_BYTES`]. In bounded steps, each one pass over the word.
fn braces(word: &str) -> Option<Vec<String>> {
    if !word.contains('{') {
        return Some(vec![word.to_owned()]);
    }
    if word.len() > MAX_BRACE_BYTES {
        return None;
    }
    let (mut done, mut todo) = (Vec::new(), vec![word.to_owned()]);
    for _ in 0..4 * MAX_BRACE_WORDS {
        let Some(word) = todo.pop() else { break };
        match brace_group(&word) {
            Some((open, parts, close)) => {
                // Last pushed is next expanded: the first part's words come first (and are
                // the ones kept when there are too many).
                let kept = &parts[..parts.len().min(2 * MAX_BRACE_WORDS - todo.len().min(2 * MAX_BRACE_WORDS))];
                for part in kept.iter().rev() {
                    todo.push(format!("{}{part}{}", &word[..open], &word[close + 1..]));
                }
            }
            None => done.push(word),
        }
        if done.len() == MAX_BRACE_WORDS {
            break;
        }
    }
    if done.is_empty() {
        done.push(word.to_owned());
    }
    Some(done)
}

/// An expandable `{...}` group of `word` (a comma at its own depth, or `x..y`), innermost
/// first: where it opens, its parts, where it closes.
fn brace_group(word: &str) -> Option<(usize, Vec<String>, usize)> {
    // The open groups: where each opens, its commas, and whether it is `${...}`.
    let mut open: Vec<(usize, Vec<usize>, bool)> = Vec::new();
    let bytes = word.as_bytes();
    for (at, &byte) in bytes.iter().enumerate() {
        match byte {
            b'{' => open.push((at, Vec::new(), at > 0 && bytes[at - 1] == b'$')),
            b',' => {
                if let Some((_, commas, _)) = open.last_mut() {
                    commas.push(at);
                }
            }
            b'}' => {
                let Some((start, commas, parameter)) = open.pop() else { continue };
                if parameter {
                    continue;
                }
                let body = &word[start + 1..at];
                if !commas.is_empty() {
                    let mut parts = Vec::with_capacity(commas.len() + 1);
                    let mut from = start + 1;
                    for comma in commas {
                        parts.push(word[from..comma].to_owned());
                        from = comma + 1;
                    }
                    parts.push(word[from..at].to_owned());
                    return Some((start, parts, at));
                }
                let Some((from, to)) = body.split_once("..") else { continue };
                let parts: Vec<String> = match (from.parse::<i64>(), to.parse::<i64>(), from.chars().count(), to.chars().count()) {
                    (Ok(a), Ok(b), _, _) => (a.min(b)..=a.max(b)).take(MAX_BRACE_WORDS).map(|n| n.to_string()).collect(),
                    (_, _, 1, 1) => {
                        let (a, b) = (from.chars().next().unwrap_or('a'), to.chars().next().unwrap_or('a'));
                        (a.min(b)..=a.max(b)).take(MAX_BRACE_WORDS).map(String::from).collect()
                    }
                    _ => continue,
                };
                return Some((start, parts, at));
            }
            _ => {}
        }
    }
    None
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
            // `$"..."` (translated) is `"..."` where there is no translation.
            '$' if chars.peek() == Some(&'"') => {}
            '$' | '`' => return None,
            c => out.push(c),
        }
    }
    Some(out)
}

/// `text` with its backslash escapes decoded as `$'...'`, `echo -e` and `printf` decode them.
/// `echo -e` and `printf '%b'` read `\0NNN` (octal after a zero) where `$'...'` and a
/// `printf` format read `\NNN`: `echo` says which.
fn escapes(text: &str, echo: bool) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    // Without a closing quote the decoding runs to the end; an escape that names no
    // character ends it where it is.
    let _ = decode(&mut chars, &mut out, None, echo);
    out
}

/// The rest of a `$'...'` string, its escapes decoded, into `out`.
fn ansi_c(chars: &mut std::iter::Peekable<std::str::Chars<'_>>, out: &mut String) -> Option<()> {
    decode(chars, out, Some('\''), false)
}

/// Decodes backslash escapes from `chars` into `out` up to `end` (the end is consumed;
/// `None` if it never comes), or to the end of `chars` when `end` is `None`; `echo` reads
/// `\0NNN` as `echo -e` does.
fn decode(chars: &mut std::iter::Peekable<std::str::Chars<'_>>, out: &mut String, end: Option<char>, echo: bool) -> Option<()> {
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
                    '0' if echo => digits(chars, 8, 3, None),
                    '0'..='7' => digits(chars, 8, 3, Some(escape)),
                    other => Some(other),
                };
                out.push(decoded?);
            }
            c => out.push(c),
        }
    }
}
