//! `wsbx repl`: a session driven from the terminal. Each entered block runs as one turn.
//!
//! Blocks: a line runs at once when it is complete. Python: a line ending in `:` opens a block
//! that ends with an empty line (as in Python's own prompt); open brackets, strings or a
//! trailing `\` continue a statement until they close. JavaScript and shell: open brackets,
//! strings or a trailing `\` continue. End of input ends the session (exit 0); a turn that
//! ends the session ends the command with `wsbx exec`'s exit code for it.

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use wsbx::{Language, Limits, Sandbox, SandboxConfig, SessionOptions, Status, TurnRequest};

use super::{environment, exit_code, limits, print_result, refuse, stop_cleanly_on_signals, ReplArgs};

/// How long an interactive session may sit and live: a person at a prompt pauses.
const REPL_DURATION: Duration = Duration::from_secs(24 * 3600);

pub(super) fn run(args: ReplArgs) -> ExitCode {
    stop_cleanly_on_signals();
    let json = args.json;
    let language = match args.language.parse::<Language>() {
        Ok(l) => l,
        Err(e) => return refuse(json, None, &e.to_string()),
    };
    let options = match (limits(&args.limits, &Limits::DEFAULT), environment(&args.env)) {
        (Ok(limits), Ok(env)) => {
            SessionOptions { limits, env, idle_timeout: REPL_DURATION, max_lifetime: REPL_DURATION, ..SessionOptions::default() }
        }
        (Err(e), _) | (_, Err(e)) => return refuse(json, Some(language), &e),
    };
    let sandbox = Sandbox::new(SandboxConfig { warm_instances: 0, ..SandboxConfig::default() });
    let mut session = match sandbox.session(language, &options) {
        Ok(session) => session,
        Err(e) if e.status == Status::Rejected => return refuse(json, Some(language), &e.detail),
        Err(e) => {
            wsbx::errln!("wsbx: {}: the session could not start: {}", e.status, e.detail);
            return ExitCode::from(super::EXIT_INTERNAL);
        }
    };
    let interactive = std::io::stdin().is_terminal();
    if interactive && !json {
        wsbx::errln!("wsbx {language} session {} (end with Ctrl-D)", session.id());
    }
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    let mut block = Block::new(language);
    loop {
        if interactive {
            eprint!("{}", if block.is_empty() { ">>> " } else { "... " });
            let _ = std::io::stderr().flush();
        }
        let line = match lines.next() {
            Some(Ok(line)) => line,
            Some(Err(e)) => {
                wsbx::errln!("wsbx: reading the input: {e}");
                return ExitCode::from(super::EXIT_INTERNAL);
            }
            None => match block.finish() {
                // End of input runs what is left, then ends the session.
                Some(code) => code,
                None => return ExitCode::SUCCESS,
            },
        };
        let Some(code) = block.push(&line) else { continue };
        let result = session.run(&TurnRequest::new(code));
        print_result(&result, json);
        if session.ended().is_some() {
            if !json && result.status != Status::Rejected {
                wsbx::errln!("wsbx: the session has ended");
            }
            return exit_code(&result);
        }
    }
}

/// Lines gathered into one turn.
struct Block {
    language: Language,
    text: String,
    /// Python: the block opened with a `:` line and ends with an empty line.
    compound: bool,
}

impl Block {
    fn new(language: Language) -> Block {
        Block { language, text: String::new(), compound: false }
    }

    fn is_empty(&self) -> bool {
        self.text.is_empty()
    }

    /// Adds `line`; the block's code when it is complete.
    fn push(&mut self, line: &str) -> Option<String> {
        if self.text.is_empty() && line.trim().is_empty() {
            return None;
        }
        if self.compound && line.trim().is_empty() {
            return self.finish();
        }
        self.text.push_str(line);
        self.text.push('\n');
        let open = Scan::of(&self.text, self.language);
        if self.language == Language::Python && !open.any() && line.trim_end().ends_with(':') && !open.comment_at_end {
            self.compound = true;
        }
        if open.any() || self.compound {
            return None;
        }
        self.finish()
    }

    /// The code gathered so far, if any, and a fresh block.
    fn finish(&mut self) -> Option<String> {
        self.compound = false;
        let text = std::mem::take(&mut self.text);
        (!text.trim().is_empty()).then_some(text)
    }
}

/// What a piece of code leaves open at its end.
#[derive(Debug, Default, PartialEq)]
struct Scan {
    brackets: i64,
    in_string: bool,
    backslash: bool,
    comment_at_end: bool,
}

impl Scan {
    fn any(&self) -> bool {
        self.brackets > 0 || self.in_string || self.backslash
    }

    /// Scans `text` for brackets, strings and comments the way `language` reads them, roughly:
    /// enough to tell a finished line from one that goes on.
    fn of(text: &str, language: Language) -> Scan {
        let chars: Vec<char> = text.chars().collect();
        let mut scan = Scan::default();
        let mut quote: Option<(char, bool)> = None; // (quote, triple)
        let mut i = 0;
        let hash_comments = matches!(language, Language::Python | Language::Shell);
        while i < chars.len() {
            let c = chars[i];
            let triple = |at: usize| at + 2 < chars.len() && chars[at + 1] == chars[at] && chars[at + 2] == chars[at];
            if let Some((q, is_triple)) = quote {
                if c == '\\' && !(language == Language::Shell && q == '\'') {
                    i += 2;
                    continue;
                }
                if c == q && (!is_triple || triple(i)) {
                    quote = None;
                    i += if is_triple { 3 } else { 1 };
                    continue;
                }
                // A single-quoted Python or JavaScript string ends at the line's end.
                if c == '\n' && !is_triple && q != '`' && language != Language::Shell {
                    quote = None;
                }
                i += 1;
                continue;
            }
            match c {
                '#' if hash_comments => {
                    while i < chars.len() && chars[i] != '\n' {
                        i += 1;
                    }
                    scan.comment_at_end = i >= chars.len() - 1;
                    continue;
                }
                '/' if language == Language::Javascript && chars.get(i + 1) == Some(&'/') => {
                    while i < chars.len() && chars[i] != '\n' {
                        i += 1;
                    }
                    continue;
                }
                '/' if language == Language::Javascript && chars.get(i + 1) == Some(&'*') => {
                    let rest: String = chars[i + 2..].iter().collect();
                    match rest.find("*/") {
                        Some(end) => i += 2 + rest[..end].chars().count() + 2,
                        None => {
                            scan.in_string = true;
                            return scan;
                        }
                    }
                    continue;
                }
                '"' | '\'' => {
                    let is_triple = language == Language::Python && triple(i);
                    quote = Some((c, is_triple));
                    i += if is_triple { 3 } else { 1 };
                    continue;
                }
                '`' if language != Language::Python => quote = Some(('`', false)),
                '(' | '[' | '{' => scan.brackets += 1,
                ')' | ']' | '}' => scan.brackets -= 1,
                '\\' if chars.get(i + 1) == Some(&'\n') && i + 2 >= chars.len() => scan.backslash = true,
                _ => {}
            }
            i += 1;
        }
        scan.in_string = quote.is_some();
        scan
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocks(language: Language, input: &str) -> Vec<String> {
        let mut block = Block::new(language);
        let mut out: Vec<String> = input.lines().filter_map(|l| block.push(l)).collect();
        out.extend(block.finish());
        out
    }

    #[test]
    fn python_blocks_end_with_an_empty_line() {
        let got = blocks(Language::Python, "x = 1\ndef f(v):\n    return v + x\n\nprint(f(1))\n");
        assert_eq!(got, ["x = 1\n", "def f(v):\n    return v + x\n", "print(f(1))\n"]);
    }

    #[test]
    fn open_brackets_strings_and_backslashes_continue() {
        let got = blocks(Language::Python, "d = {\n 'a': 1,\n}\ns = '''one\ntwo'''\ny = 1 + \\\n  2\nprint('a:')\n");
        assert_eq!(got, ["d = {\n 'a': 1,\n}\n", "s = '''one\ntwo'''\n", "y = 1 + \\\n  2\n", "print('a:')\n"]);
        let got = blocks(Language::Javascript, "function f() {\n  return '}'; // }\n}\nconsole.log(`a\nb`)\n");
        assert_eq!(got, ["function f() {\n  return '}'; // }\n}\n", "console.log(`a\nb`)\n"]);
        let got = blocks(Language::Shell, "for i in 1 2; do \\\n echo $i; done\necho '('\n");
        assert_eq!(got, ["for i in 1 2; do \\\n echo $i; done\n", "echo '('\n"]);
    }

    #[test]
    fn a_colon_in_a_comment_or_string_opens_no_block() {
        assert_eq!(blocks(Language::Python, "x = 1  # note:\nprint(x)\n"), ["x = 1  # note:\n", "print(x)\n"]);
    }

    #[test]
    fn end_of_input_runs_what_is_left() {
        assert_eq!(blocks(Language::Python, "for i in range(2):\n    print(i)"), ["for i in range(2):\n    print(i)\n"]);
    }
}
