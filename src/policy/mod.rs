//! Policy: the code is parsed (tree-sitter), what it does is matched against the rules of its
//! language, and the highest risk found decides: allow, warn, or deny (the run is `rejected`
//! and never starts).
//!
//! Defence in depth only: the sandbox is the security boundary. A static check sees what the
//! code says, not what it computes (`getattr(__builtins__, "ev" + "al")` names no `eval`), so a
//! policy is a way to say "this agent may not do that" and to see who tried, not a wall.
//!
//! One module per language turns code into [`Site`]s (imports, calls, attribute reads,
//! commands), from the syntax tree: comments and the contents of strings never make a site.

mod javascript;
mod python;
mod shell;

use serde::{Deserialize, Serialize};

use crate::request::Language;

/// How risky a finding is, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Risk {
    /// Nothing found.
    #[default]
    None,
    /// Worth knowing.
    Low,
    /// Worth a look.
    Medium,
    /// Usually not what an agent should do.
    High,
    /// Never.
    Critical,
}

/// What a policy decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    /// Run it.
    Allow,
    /// Run it, and say what was found.
    Warn,
    /// Do not run it: status `rejected`.
    Deny,
}

/// What a rule matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A module imported (`import x`, `from x import y`, `__import__("x")`, `require("x")`,
    /// `import ... from "x"`): the module or one inside it (`os` matches `os.path`).
    Import,
    /// A call by its dotted name, aliases resolved (`os.system`, `eval`).
    Call,
    /// An attribute read (`__globals__`, or a dotted `os.environ`).
    Attribute,
    /// A shell command in command position, by name; words after the name must be among its
    /// arguments (`rm -rf`).
    Command,
    /// A regular expression over the code's text (this one does match comments and strings).
    Pattern,
}

/// One rule of a language's policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Named in findings.
    pub id: String,
    /// What it matches.
    pub kind: Kind,
    /// The module, dotted name, attribute, command or regular expression.
    #[serde(rename = "match")]
    pub pattern: String,
    /// The risk of a match.
    pub risk: Risk,
    /// Why it matters, shown in findings.
    #[serde(default)]
    pub why: Option<String>,
}

/// Something the code does, found in its syntax tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Site {
    /// Import, call, attribute or command.
    pub kind: Kind,
    /// The module, dotted call name (aliases resolved), attribute or command name.
    pub name: String,
    /// For commands: the arguments, each as written.
    pub args: Vec<String>,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// The source it was found in (at most 200 characters).
    pub text: String,
}

/// The sites of `code`, and whether it parsed.
pub fn sites(language: Language, code: &str) -> (Vec<Site>, bool) {
    match language {
        Language::Python => python::sites(code),
        Language::Javascript => javascript::sites(code),
        Language::Shell => shell::sites(code),
    }
}

/// The site of `node`: kind, name, position and text.
fn site(kind: Kind, name: String, node: tree_sitter::Node<'_>, code: &str) -> Site {
    let start = node.start_position();
    let line_start = code[..node.start_byte().min(code.len())].rfind('\n').map_or(0, |i| i + 1);
    let column = code.get(line_start..node.start_byte()).map_or(start.column, |s| s.chars().count()) + 1;
    let text: String = node.utf8_text(code.as_bytes()).unwrap_or("").chars().take(200).collect();
    Site { kind, name, args: Vec::new(), line: start.row + 1, column, text }
}

/// Every node of `tree`, in document order, without recursion (random input may nest deeply).
fn walk<'t>(tree: &'t tree_sitter::Tree, mut visit: impl FnMut(tree_sitter::Node<'t>)) {
    let mut cursor = tree.walk();
    loop {
        visit(cursor.node());
        if cursor.goto_first_child() {
            continue;
        }
        loop {
            if cursor.goto_next_sibling() {
                break;
            }
            if !cursor.goto_parent() {
                return;
            }
        }
    }
}

/// Parses `code` with `language`'s grammar; `None` only if the parser refuses to start.
fn parse(language: &tree_sitter::Language, code: &str) -> Option<tree_sitter::Tree> {
    let mut parser = tree_sitter::Parser::new();
    parser.set_language(language).ok()?;
    parser.parse(code, None)
}

/// One rule's match in the code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// The rule's id (`unparsable` when the code does not parse).
    pub rule: String,
    /// The rule's risk.
    pub risk: Risk,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// The code it matched (at most 200 characters).
    pub text: String,
    /// The rule's reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
}

/// The policy's verdict on one program: the result's `policy` field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    /// The highest risk found (`none` when nothing was).
    pub risk: Risk,
    /// What the thresholds make of it.
    pub decision: Decision,
    /// Every match, in the order of the code.
    pub findings: Vec<Finding>,
}

/// One language's policy: its rules and thresholds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LanguagePolicy {
    /// From this risk up, the run is denied (default: never).
    #[serde(default)]
    pub deny_at: Option<Risk>,
    /// From this risk up, the run is allowed with a warning (default: never).
    #[serde(default)]
    pub warn_at: Option<Risk>,
    /// The risk of code that does not parse (default medium).
    #[serde(default)]
    pub unparsable: Option<Risk>,
    /// The rules.
    #[serde(default)]
    pub rules: Vec<Rule>,
}

impl Rule {
    /// Whether this rule matches `site` (pattern rules are matched on the text elsewhere).
    fn matches(&self, site: &Site) -> bool {
        if self.kind != site.kind {
            return false;
        }
        let pattern = self.pattern.as_str();
        match self.kind {
            // A module or any module inside it.
            Kind::Import => site.name == pattern || site.name.strip_prefix(pattern).is_some_and(|rest| rest.starts_with('.') || rest.starts_with('/')),
            Kind::Call => site.name == pattern,
            // The whole dotted read, or its last part(s).
            Kind::Attribute => site.name == pattern || site.name.strip_suffix(pattern).is_some_and(|rest| rest.ends_with('.')),
            Kind::Command => {
                let mut words = pattern.split_whitespace();
                words.next() == Some(site.name.as_str()) && words.all(|w| site.args.iter().any(|a| a == w))
            }
            Kind::Pattern => false,
        }
    }
}

impl LanguagePolicy {
    /// Checks `code` of `language`: parses it, matches every rule, decides.
    ///
    /// `deny_at` and `warn_at`, when given, replace the policy's (an agent's own thresholds).
    pub fn check(&self, language: Language, code: &str, deny_at: Option<Risk>, warn_at: Option<Risk>) -> Result<Verdict, String> {
        let mut findings = Vec::new();
        let (found, parsed) = sites(language, code);
        if !parsed {
            let risk = self.unparsable.unwrap_or(Risk::Medium);
            findings.push(Finding { rule: "unparsable".into(), risk, line: 1, column: 1, text: String::new(), why: Some("the code does not parse".into()) });
        }
        for site in &found {
            for rule in self.rules.iter().filter(|r| r.matches(site)) {
                findings.push(Finding { rule: rule.id.clone(), risk: rule.risk, line: site.line, column: site.column, text: site.text.clone(), why: rule.why.clone() });
            }
        }
        for rule in self.rules.iter().filter(|r| r.kind == Kind::Pattern) {
            let regex = regex::Regex::new(&rule.pattern).map_err(|e| format!("rule {}: {e}", rule.id))?;
            for hit in regex.find_iter(code) {
                let before = &code[..hit.start()];
                let line = before.matches('\n').count() + 1;
                let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
                let text = hit.as_str().chars().take(200).collect();
                findings.push(Finding { rule: rule.id.clone(), risk: rule.risk, line, column, text, why: rule.why.clone() });
            }
        }
        findings.sort_by_key(|f| (f.line, f.column));
        let risk = findings.iter().map(|f| f.risk).max().unwrap_or(Risk::None);
        let reached = |threshold: Option<Risk>| threshold.is_some_and(|t| risk != Risk::None && risk >= t);
        let decision = if reached(deny_at.or(self.deny_at)) {
            Decision::Deny
        } else if reached(warn_at.or(self.warn_at)) {
            Decision::Warn
        } else {
            Decision::Allow
        };
        Ok(Verdict { risk, decision, findings })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(language: Language, code: &str, kind: Kind) -> Vec<String> {
        let (found, _) = sites(language, code);
        found.into_iter().filter(|s| s.kind == kind).map(|s| s.name).collect()
    }

    #[test]
    fn python_imports_in_every_spelling() {
        let code = "import subprocess as sp\nfrom os import system\nimport os.path\n__import__('socket')\nimport importlib\nimportlib.import_module(\"ctypes\")\n";
        let imports = names(Language::Python, code, Kind::Import);
        for module in ["subprocess", "os", "os.system", "os.path", "socket", "ctypes"] {
            assert!(imports.iter().any(|i| i == module), "{module} not in {imports:?}");
        }
    }

    #[test]
    fn python_calls_resolve_aliases() {
        let code = "import subprocess as sp\nfrom os import system\nsp.run(['ls'])\nsystem('ls')\neval('1')\nx.y.z()\n";
        let calls = names(Language::Python, code, Kind::Call);
        assert_eq!(calls, ["subprocess.run", "os.system", "eval", "x.y.z"]);
    }

    #[test]
    fn comments_and_strings_never_match() {
        let code = "# import subprocess\ns = 'os.system(1); eval(2)'\nprint(\"\"\"import socket\"\"\")\n";
        let (found, parsed) = sites(Language::Python, code);
        assert!(parsed);
        assert!(found.iter().all(|s| s.name == "print"), "{found:?}");
        let js = "// require('child_process')\nconst s = \"eval(1)\";\n";
        assert!(names(Language::Javascript, js, Kind::Call).is_empty());
        let sh = "# curl x\necho 'rm -rf /'\n";
        assert_eq!(names(Language::Shell, sh, Kind::Command), ["echo"]);
    }

    #[test]
    fn javascript_imports_requires_and_calls() {
        let code = "import * as os from 'qjs:os';\nconst cp = require('child_process');\nconst m = await import(\"fs\");\neval('1');\nos.exec(['ls']);\nnew Function('return 1');\n";
        assert_eq!(names(Language::Javascript, code, Kind::Import), ["qjs:os", "child_process", "fs"]);
        let calls = names(Language::Javascript, code, Kind::Call);
        for call in ["require", "eval", "os.exec", "Function"] {
            assert!(calls.iter().any(|c| c == call), "{call} not in {calls:?}");
        }
    }

    #[test]
    fn shell_commands_through_pipes_lists_subshells_and_substitutions() {
        let code = "cat f | grep x && (curl http://a) ; echo $(wget -q y) `nc -l 1`\n/usr/bin/rm -rf /tmp/x\n";
        let commands = names(Language::Shell, code, Kind::Command);
        for command in ["cat", "grep", "curl", "echo", "wget", "nc", "rm"] {
            assert!(commands.iter().any(|c| c == command), "{command} not in {commands:?}");
        }
        let policy = LanguagePolicy {
            deny_at: Some(Risk::High),
            rules: vec![Rule { id: "rm-rf".into(), kind: Kind::Command, pattern: "rm -rf".into(), risk: Risk::High, why: None }],
            ..LanguagePolicy::default()
        };
        let verdict = policy.check(Language::Shell, code, None, None).unwrap();
        assert_eq!((verdict.decision, verdict.findings[0].line, verdict.findings[0].column), (Decision::Deny, 2, 1));
        assert_eq!(policy.check(Language::Shell, "rm -r x", None, None).unwrap().decision, Decision::Allow, "arguments are matched separately");
    }

    #[test]
    fn thresholds_decide_and_an_agent_may_raise_them() {
        let policy = LanguagePolicy {
            deny_at: Some(Risk::High),
            warn_at: Some(Risk::Medium),
            rules: vec![
                Rule { id: "no-subprocess".into(), kind: Kind::Import, pattern: "subprocess".into(), risk: Risk::High, why: Some("spawns processes".into()) },
                Rule { id: "dynamic-code".into(), kind: Kind::Call, pattern: "eval".into(), risk: Risk::Medium, why: None },
            ],
            ..LanguagePolicy::default()
        };
        let denied = policy.check(Language::Python, "import subprocess\nsubprocess.run(['ls'])", None, None).unwrap();
        assert_eq!((denied.risk, denied.decision), (Risk::High, Decision::Deny));
        assert_eq!((denied.findings[0].rule.as_str(), denied.findings[0].line, denied.findings[0].column), ("no-subprocess", 1, 1));
        assert_eq!(policy.check(Language::Python, "eval('1')", None, None).unwrap().decision, Decision::Warn);
        assert_eq!(policy.check(Language::Python, "print(1)", None, None).unwrap().decision, Decision::Allow);
        let trusted = policy.check(Language::Python, "import subprocess", Some(Risk::Critical), None).unwrap();
        assert_eq!(trusted.decision, Decision::Warn, "a trusted agent's higher deny threshold: it runs, with the finding");
    }

    /// What a static check cannot see: listed so that they are known limits, not surprises.
    #[test]
    fn documented_limits_of_a_static_check() {
        let policy = LanguagePolicy {
            deny_at: Some(Risk::Medium),
            rules: vec![
                Rule { id: "eval".into(), kind: Kind::Call, pattern: "eval".into(), risk: Risk::High, why: None },
                Rule { id: "subprocess".into(), kind: Kind::Import, pattern: "subprocess".into(), risk: Risk::High, why: None },
            ],
            ..LanguagePolicy::default()
        };
        for unseen in [
            "getattr(__builtins__, 'ev' + 'al')('1')",
            "m = 'sub' + 'process'\n__import__(m)",
            "f = eval\n",
            "exec(bytes.fromhex('696d706f72742073756270726f63657373').decode())",
        ] {
            assert_eq!(policy.check(Language::Python, unseen, None, None).unwrap().decision, Decision::Allow, "{unseen}");
        }
    }

    #[test]
    fn code_that_does_not_parse_is_a_finding_not_a_crash() {
        let policy = LanguagePolicy { unparsable: Some(Risk::High), deny_at: Some(Risk::High), ..LanguagePolicy::default() };
        let verdict = policy.check(Language::Python, "def (:\n", None, None).unwrap();
        assert_eq!((verdict.findings[0].rule.as_str(), verdict.decision), ("unparsable", Decision::Deny));
        // A megabyte of noise, in every language.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let noise: String = (0..1 << 20)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                char::from_u32((state % 0x3000) as u32).unwrap_or('x')
            })
            .collect();
        for language in Language::ALL {
            policy.check(language, &noise, None, None).unwrap();
        }
    }
}
