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

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::request::Language;

/// The most findings a verdict lists (the first, in the order of the code); its risk still
/// counts every match.
pub const MAX_FINDINGS: usize = 100;

/// How risky a finding is, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Risk {
    /// Nothing found (a verdict's risk only; not a level a rule or threshold may name).
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

impl Risk {
    /// The risk's name, as in JSON and the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            Risk::None => "none",
            Risk::Low => "low",
            Risk::Medium => "medium",
            Risk::High => "high",
            Risk::Critical => "critical",
        }
    }
}

impl std::fmt::Display for Risk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
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

impl Decision {
    /// The decision's name, as in JSON and the audit log.
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Warn => "warn",
            Decision::Deny => "deny",
        }
    }
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
    /// An attribute read: the whole dotted read (`os.environ`) or its last part(s)
    /// (`__globals__`).
    Attribute,
    /// A shell command in command position, by name; words after the name must be among its
    /// arguments (`rm -rf`).
    Command,
    /// A regular expression over the code's text (this one does match comments and strings).
    Pattern,
}

impl Kind {
    /// The kind's name, as in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Import => "import",
            Kind::Call => "call",
            Kind::Attribute => "attribute",
            Kind::Command => "command",
            Kind::Pattern => "pattern",
        }
    }
}

/// A level a config gives (`low` to `critical`): `none` is what a verdict says when nothing
/// was found, not a level a rule or threshold may name.
fn level<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Risk, D::Error> {
    match String::deserialize(deserializer)?.as_str() {
        "low" => Ok(Risk::Low),
        "medium" => Ok(Risk::Medium),
        "high" => Ok(Risk::High),
        "critical" => Ok(Risk::Critical),
        other => Err(serde::de::Error::custom(format!("{other:?} is not a risk: a risk is low, medium, high or critical"))),
    }
}

/// An optional [`level`].
pub(crate) fn optional_level<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<Risk>, D::Error> {
    #[derive(Deserialize)]
    struct Level(#[serde(deserialize_with = "level")] Risk);
    Ok(Option::<Level>::deserialize(deserializer)?.map(|Level(risk)| risk))
}

/// A rule as the config file writes it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSpec {
    id: String,
    kind: Kind,
    #[serde(rename = "match")]
    patterns: OneOrMany,
    #[serde(deserialize_with = "level")]
    risk: Risk,
    #[serde(default)]
    why: Option<String>,
}

/// `match = "x"` or `match = ["x", "y"]`.
#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// One rule of a language's policy (`[[policy.<language>.rules]]`), checked where it is read:
/// a regular expression that does not compile is an error naming its line.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "RuleSpec")]
pub struct Rule {
    /// Named in findings.
    pub id: String,
    /// What it matches.
    pub kind: Kind,
    /// The modules, dotted names, attributes, commands (with arguments) or regular expressions
    /// (`match` in the file: one, or a list); any of them makes a match.
    pub patterns: Vec<String>,
    /// The risk of a match.
    pub risk: Risk,
    /// Why it matters, shown in findings.
    pub why: Option<String>,
    /// For [`Kind::Pattern`], the compiled expressions.
    regexes: Vec<regex::Regex>,
}

impl PartialEq for Rule {
    fn eq(&self, other: &Rule) -> bool {
        (&self.id, self.kind, &self.patterns, self.risk, &self.why) == (&other.id, other.kind, &other.patterns, other.risk, &other.why)
    }
}

impl Eq for Rule {}

impl TryFrom<RuleSpec> for Rule {
    type Error = String;

    fn try_from(spec: RuleSpec) -> Result<Rule, String> {
        let patterns = match spec.patterns {
            OneOrMany::One(pattern) => vec![pattern],
            OneOrMany::Many(patterns) => patterns,
        };
        let mut rule = Rule::new(&spec.id, spec.kind, &patterns, spec.risk)?;
        rule.why = spec.why;
        Ok(rule)
    }
}

impl Rule {
    /// A rule, checked: an id of 1 to 64 letters, digits, `-`, `_`, `.` or `:`; at least one
    /// pattern, none empty; for [`Kind::Pattern`], regular expressions (linear time: the
    /// `regex` crate has no backtracking).
    ///
    /// ```
    /// use wsbx::policy::{Kind, Risk, Rule};
    /// let rule = Rule::new("no-subprocess", Kind::Import, &["subprocess", "pty"], Risk::High).unwrap();
    /// assert!(Rule::new("bad", Kind::Pattern, &["("], Risk::Low).is_err());
    /// # let _ = rule;
    /// ```
    pub fn new(id: &str, kind: Kind, patterns: &[impl AsRef<str>], risk: Risk) -> Result<Rule, String> {
        let id_ok = !id.is_empty() && id.len() <= 64 && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
        if !id_ok {
            return Err(format!("rule id {id:?}: an id is 1 to 64 letters, digits, '-', '_', '.' or ':'"));
        }
        if id.eq_ignore_ascii_case(UNPARSABLE) || id.eq_ignore_ascii_case(UNCHECKED) {
            return Err(format!("rule id {id:?} is the name of wsbx's own finding: choose another"));
        }
        let patterns: Vec<String> = patterns.iter().map(|p| p.as_ref().to_owned()).collect();
        if patterns.is_empty() || patterns.iter().any(|p| p.trim().is_empty()) {
            return Err(format!("rule {id}: match is empty"));
        }
        for pattern in &patterns {
            let name_ok = |name: &str| {
                let body = name.strip_suffix('*').unwrap_or(name);
                !body.is_empty()
                    && !body.contains('*')
                    && body.chars().all(|c| !c.is_whitespace() && !c.is_control())
                    && !body.starts_with('.')
                    && !body.ends_with('.')
                    && !body.contains("..")
            };
            let fits = match kind {
                Kind::Import | Kind::Attribute => name_ok(pattern) && !pattern.ends_with('*'),
                Kind::Call => name_ok(pattern),
                Kind::Command => {
                    let command = |name: &str| {
                        let body = name.strip_suffix('*').unwrap_or(name);
                        !body.is_empty() && body.chars().all(|c| !c.is_control()) && !body.contains('*')
                    };
                    pattern.split_whitespace().next().is_some_and(command) && pattern.trim() == pattern
                }
                Kind::Pattern => true,
            };
            if !fits {
                return Err(format!(
                    "rule {id}: match {pattern:?} can never match: a module, attribute or call is a dotted name without spaces (a call may end in `*`), a command is a name and then words"
                ));
            }
        }
        if risk == Risk::None {
            return Err(format!("rule {id}: a risk is low, medium, high or critical"));
        }
        let regexes = match kind {
            Kind::Pattern => patterns
                .iter()
                .map(|p| regex::RegexBuilder::new(p).size_limit(1 << 20).build())
                .collect::<Result<_, _>>()
                .map_err(|e| format!("rule {id}: match is not a regular expression: {e}"))?,
            _ => Vec::new(),
        };
        Ok(Rule { id: id.to_owned(), kind, patterns, risk, why: None, regexes })
    }

    /// This rule with a reason.
    pub fn why(mut self, why: impl Into<String>) -> Rule {
        self.why = Some(why.into());
        self
    }

    /// Whether this rule matches `site` (pattern rules are matched on the text elsewhere). A
    /// call rule also matches a reference to the function that does not call it (`f =
    /// os.system`, `map(os.system, …)`, `from os import system`).
    fn matches(&self, site: &Site) -> bool {
        let kind_fits = self.kind == site.kind || (self.kind == Kind::Call && site.kind == Kind::Attribute);
        kind_fits && self.patterns.iter().any(|pattern| matches(self.kind, pattern, site))
    }
}

/// Whether `pattern`, of a rule of `kind`, matches `site`.
fn matches(kind: Kind, pattern: &str, site: &Site) -> bool {
    let name = site.name.as_str();
    match kind {
        // A module or any module inside it.
        Kind::Import => name == pattern || name.strip_prefix(pattern).is_some_and(|rest| rest.starts_with('.') || rest.starts_with('/')),
        // `os.exec*` matches every name it begins.
        Kind::Call => called(pattern, name),
        // The whole dotted read, or its last part(s).
        Kind::Attribute => name == pattern || name.strip_suffix(pattern).is_some_and(|rest| rest.ends_with('.')),
        Kind::Command => {
            let mut words = pattern.split_whitespace();
            words.next().is_some_and(|command| could_name(name, command)) && words.all(|word| among(word, &site.args))
        }
        Kind::Pattern => false,
    }
}

/// Whether `name` is `pattern`, or begins with it when it ends in `*`.
fn named(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => name == pattern,
    }
}

/// Whether a command `name` as written may run the command `pattern` names. bash expands
/// globs (`cur?`, `/usr/bin/cur[l]`) before it runs a name, against file names the check
/// cannot see: a name that could become the pattern's matches it. (Braces, `cu{r,}l`, are
/// expanded where the sites are made, see `shell.rs`.)
fn could_name(name: &str, pattern: &str) -> bool {
    if named(pattern, name) {
        return true;
    }
    if !is_glob(name) {
        return false;
    }
    // A glob this long names nothing real; it could name anything.
    if name.len() > MAX_GLOB_BYTES {
        return true;
    }
    let (glob, text): (Vec<char>, Vec<char>) = (name.chars().collect(), pattern.trim_end_matches('*').chars().collect());
    glob_matches(&glob, &text, pattern.ends_with('*'))
}

/// The longest glob matched character by character (its cost is its length times the
/// pattern's).
const MAX_GLOB_BYTES: usize = 1024;

/// Whether `word` has a glob bash would expand: `*`, `?` or a `[...]` class.
fn is_glob(word: &str) -> bool {
    word.contains(['*', '?']) || word.find('[').is_some_and(|open| word[open + 1..].contains(']'))
}

/// Whether the shell glob `glob` (`*`, `?`, `[...]`) matches `text` — or, with `prefix`, some
/// text that begins with `text`. One pass per part of the glob over the positions of `text`:
/// time is their product, never exponential.
fn glob_matches(glob: &[char], text: &[char], prefix: bool) -> bool {
    // Which positions of `text` the glob read so far can end at.
    let mut reach = vec![false; text.len() + 1];
    reach[0] = true;
    let mut at = 0;
    while at < glob.len() {
        if prefix && reach[text.len()] {
            return true;
        }
        let mut next = vec![false; text.len() + 1];
        if glob[at] == '*' {
            let mut on = false;
            for (end, reached) in reach.iter().enumerate() {
                on |= reached;
                next[end] = on;
            }
            at += 1;
        } else {
            let (width, fits) = one_char(&glob[at..]);
            for end in 0..text.len() {
                if reach[end] && fits(text[end]) {
                    next[end + 1] = true;
                }
            }
            at += width;
        }
        reach = next;
        if !reach.contains(&true) {
            return false;
        }
    }
    reach[text.len()]
}

/// The first part of a glob that matches one character (`?`, a `[...]` class, a character):
/// its width and its test.
fn one_char(glob: &[char]) -> (usize, Box<dyn Fn(char) -> bool + '_>) {
    match glob[0] {
        '?' => (1, Box::new(|_| true)),
        '[' => {
            let negated = matches!(glob.get(1), Some('!' | '^'));
            let first = if negated { 2 } else { 1 };
            // A `]` first in the class is one of its characters.
            let Some(close) = glob.iter().skip(first + 1).position(|&c| c == ']').map(|p| p + first + 1) else {
                return (1, Box::new(|c| c == '['));
            };
            let class = &glob[first..close];
            let test = move |c: char| {
                let mut i = 0;
                let mut found = false;
                while i < class.len() {
                    if i + 2 < class.len() && class[i + 1] == '-' {
                        found |= (class[i]..=class[i + 2]).contains(&c);
                        i += 3;
                    } else {
                        found |= class[i] == c;
                        i += 1;
                    }
                }
                found != negated
            };
            (close + 1, Box::new(test))
        }
        literal => (1, Box::new(move |c| c == literal)),
    }
}

/// Whether a call `name` is a call rule's `pattern`: also through a module that re-exports
/// the pattern's module (`platform.os.system` is `os.system`) when the pattern names one.
fn called(pattern: &str, name: &str) -> bool {
    if named(pattern, name) {
        return true;
    }
    // Also under a private name (`random._os.system`, `tempfile._os`).
    pattern.contains('.') && name.match_indices('.').any(|(at, _)| named(pattern, &name[at + 1..]) || named(pattern, name[at + 1..].trim_start_matches('_')))
}

/// Whether a command rule's `word` is among `args`: as written, or, for short options (`-rf`),
/// each letter given in any cluster (`-r -f`, `-fr`).
fn among(word: &str, args: &[String]) -> bool {
    if args.iter().any(|a| a == word) {
        return true;
    }
    // An absolute path as the kernel reads it: `//`, `/./` and `/bin/..` are `/`.
    let path = |p: &str| {
        let mut parts: Vec<&str> = Vec::new();
        for part in p.split('/') {
            match part {
                "" | "." => {}
                ".." => drop(parts.pop()),
                part => parts.push(part),
            }
        }
        parts.iter().fold(String::new(), |path, part| path + "/" + part)
    };
    if word.starts_with('/') && args.iter().any(|a| a.starts_with('/') && path(a) == path(word)) {
        return true;
    }
    // GNU tools take any unambiguous start of a long option: `--forc` is `--force`.
    if word.starts_with("--") && args.iter().any(|a| a.len() > 2 && a.starts_with("--") && !a.contains('=') && word.starts_with(a.as_str())) {
        return true;
    }
    let short = |w: &str| w.len() > 1 && w.starts_with('-') && !w.starts_with("--") && w[1..].chars().all(|c| c.is_ascii_alphanumeric());
    short(word) && word[1..].chars().all(|letter| args.iter().any(|a| short(a) && a[1..].contains(letter)))
}

/// One language's policy (`[policy.<language>]`): its thresholds and rules.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LanguagePolicy {
    /// From this risk up, the run is denied: status `rejected` (default: never).
    #[serde(default, deserialize_with = "optional_level")]
    pub deny_at: Option<Risk>,
    /// From this risk up, the run goes ahead with a warning (default: never).
    #[serde(default, deserialize_with = "optional_level")]
    pub warn_at: Option<Risk>,
    /// The risk of code that does not parse (default `medium`).
    #[serde(default, deserialize_with = "optional_level")]
    pub unparsable: Option<Risk>,
    /// The rules.
    #[serde(default)]
    pub rules: Vec<Rule>,
}

/// `[policy]`: a policy per language; a language left out is not checked.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySection {
    /// `[policy.python]`.
    pub python: Option<LanguagePolicy>,
    /// `[policy.javascript]`.
    pub javascript: Option<LanguagePolicy>,
    /// `[policy.shell]`.
    pub shell: Option<LanguagePolicy>,
}

impl PolicySection {
    /// The section of `language`, if it has one.
    pub fn language(&self, language: Language) -> Option<&LanguagePolicy> {
        match language {
            Language::Python => self.python.as_ref(),
            Language::Javascript => self.javascript.as_ref(),
            Language::Shell => self.shell.as_ref(),
        }
    }

    /// What serde cannot check: a rule's id is unique in its language.
    pub(crate) fn check(&self) -> Result<(), String> {
        for language in Language::ALL {
            let Some(section) = self.language(language) else { continue };
            if let (Some(deny_at), Some(warn_at)) = (section.deny_at, section.warn_at) {
                if warn_at > deny_at {
                    return Err(format!("policy.{language}: warn_at ({warn_at}) is above deny_at ({deny_at}), so it would never warn"));
                }
            }
            let mut seen = std::collections::BTreeSet::new();
            for rule in &section.rules {
                if !seen.insert(rule.id.as_str()) {
                    return Err(format!("policy.{language}.rules: the id {:?} is given twice", rule.id));
                }
                let fits = match rule.kind {
                    Kind::Command => language == Language::Shell,
                    Kind::Import | Kind::Call | Kind::Attribute => language != Language::Shell,
                    Kind::Pattern => true,
                };
                if !fits {
                    return Err(format!("policy.{language}.rules: rule {} is of kind {}, which {language} code never has", rule.id, rule.kind.as_str()));
                }
            }
        }
        Ok(())
    }
}

/// The policy a run is checked against: the rules and thresholds of each language, and an
/// agent's own thresholds over them. Cheap to clone (the rules are shared).
///
/// ```
/// use wsbx::policy::{Decision, Policy, Risk};
/// use wsbx::Language;
/// let config = wsbx::config::Config::parse(r#"
///     [policy.python]
///     deny_at = "high"
///     [[policy.python.rules]]
///     id = "no-subprocess"
///     kind = "import"
///     match = "subprocess"
///     risk = "high"
/// "#).unwrap();
/// let policy = config.policy().unwrap();
/// let verdict = policy.check(Language::Python, "import subprocess as sp\n# eval(1)\n");
/// assert_eq!((verdict.risk, verdict.decision), (Risk::High, Decision::Deny));
/// assert_eq!((verdict.findings[0].line, verdict.findings[0].column), (1, 1));
/// // A trusted agent's own threshold: it runs, with the finding.
/// let trusted = policy.with_thresholds(Some(Risk::Critical), Some(Risk::Low));
/// assert_eq!(trusted.check(Language::Python, "import subprocess").decision, Decision::Warn);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    languages: [Option<Arc<LanguagePolicy>>; 3],
    deny_at: Option<Risk>,
    warn_at: Option<Risk>,
}

impl Policy {
    /// The policy `section` describes.
    pub fn new(section: &PolicySection) -> Policy {
        let of = |language| section.language(language).cloned().map(Arc::new);
        Policy { languages: Language::ALL.map(of), deny_at: None, warn_at: None }
    }

    /// This policy with `deny_at` and `warn_at`, where given, in place of every language's
    /// own (an agent's `policy_deny_at` and `policy_warn_at`).
    pub fn with_thresholds(&self, deny_at: Option<Risk>, warn_at: Option<Risk>) -> Policy {
        Policy { languages: self.languages.clone(), deny_at: deny_at.or(self.deny_at), warn_at: warn_at.or(self.warn_at) }
    }

    /// Checks `code` of `language`: parses it, matches every rule, decides. A language without
    /// a policy is not parsed: its verdict is `allow` with nothing found.
    pub fn check(&self, language: Language, code: &str) -> Verdict {
        self.check_in(language, code, &mut Bindings::default())
    }

    /// Like [`Policy::check`], for code that runs after other code in the same interpreter (a
    /// session's turns): the names earlier code imported (`bindings`) resolve in this code, and
    /// this code's imports are added to them unless it is denied (then it does not run).
    pub fn check_in(&self, language: Language, code: &str, bindings: &mut Bindings) -> Verdict {
        let Some(own) = &self.languages[language as usize] else {
            return Verdict { risk: Risk::None, decision: Decision::Allow, findings: Vec::new(), findings_truncated: false };
        };
        let before = bindings.clone();
        let code = &*lines_as_read(language, code);
        let deadline = Instant::now() + CHECK_BUDGET;
        let (found, mut error) = sites(language, code, bindings, deadline);
        // Every match as (byte range, rule): cheap to hold, positions computed for the kept
        // ones only.
        let mut hits: Vec<(usize, usize, Hit<'_>)> = Vec::new();
        let mut risk = Risk::None;
        let unparsable = own.unparsable.unwrap_or(Risk::Medium);
        // Code that could not be read in full might hold anything a rule looks for.
        let unchecked = own.rules.iter().map(|r| r.risk).chain([unparsable]).max().unwrap_or(unparsable);
        let mut since = 0;
        for site in &found {
            // Matching is bounded too: what was found may be many sites with long names (its
            // cost grows with their length).
            since += 64 + site.name.len();
            if since > 64 << 10 {
                since = 0;
                if Instant::now() > deadline {
                    error = Some(LATE);
                    break;
                }
            }
            for rule in own.rules.iter().filter(|r| r.matches(site)) {
                hits.push((site.start, site.end, Hit::Rule(rule)));
                risk = risk.max(rule.risk);
            }
        }
        match error {
            Some(Unread::Unparsable(start, end)) => {
                hits.push((start, end, Hit::Unparsable));
                risk = risk.max(unparsable);
            }
            Some(Unread::Unchecked(why)) => {
                hits.push((0, 0, Hit::Unchecked(why)));
                risk = risk.max(unchecked);
            }
            None => {}
        }
        for rule in &own.rules {
            // A rule's first matches are all that can be among the first findings.
            for hit in rule.regexes.iter().flat_map(|regex| regex.find_iter(code).take(MAX_FINDINGS + 1)) {
                hits.push((hit.start(), hit.end(), Hit::Rule(rule)));
                risk = risk.max(rule.risk);
            }
        }
        hits.sort_by(|a, b| (a.0, a.2.id(), a.1).cmp(&(b.0, b.2.id(), b.1)));
        // One finding per rule and place: `os.system(...)` is both a call and a reference.
        hits.dedup_by(|b, a| (a.0, a.2.id()) == (b.0, b.2.id()));
        let findings_truncated = hits.len() > MAX_FINDINGS;
        hits.truncate(MAX_FINDINGS);
        let mut place = Placer::new(code);
        let findings = hits
            .into_iter()
            .map(|(start, end, hit)| {
                let (line, column) = place.at(start);
                let text = code.get(start..end).unwrap_or("").chars().take(200).collect();
                let (risk, why) = match hit {
                    Hit::Rule(rule) => (rule.risk, rule.why.clone()),
                    Hit::Unparsable => (unparsable, Some("the code does not parse".to_owned())),
                    Hit::Unchecked(why) => (unchecked, Some(why.to_owned())),
                };
                Finding { rule: hit.id().to_owned(), risk, line, column, text, why }
            })
            .collect();
        let reached = |threshold: Option<Risk>| threshold.is_some_and(|t| risk != Risk::None && risk >= t);
        let decision = if reached(self.deny_at.or(own.deny_at)) {
            Decision::Deny
        } else if reached(self.warn_at.or(own.warn_at)) {
            Decision::Warn
        } else {
            Decision::Allow
        };
        if decision == Decision::Deny {
            *bindings = before;
        }
        Verdict { risk, decision, findings, findings_truncated }
    }
}

/// What made a finding.
#[derive(Debug, Clone, Copy)]
enum Hit<'r> {
    Rule(&'r Rule),
    Unparsable,
    Unchecked(&'static str),
}

impl Hit<'_> {
    /// The finding's `rule`.
    fn id(&self) -> &str {
        match self {
            Hit::Rule(rule) => &rule.id,
            Hit::Unparsable => UNPARSABLE,
            Hit::Unchecked(_) => UNCHECKED,
        }
    }
}

/// The rule id of a finding for code that does not parse.
pub const UNPARSABLE: &str = "unparsable";
/// The rule id of a finding for code too large or too tangled to check within its bounds.
pub const UNCHECKED: &str = "unchecked";

/// Turns byte offsets, given in order, into 1-based lines and columns (in characters) in one
/// pass over the code, however long its lines.
struct Placer<'c> {
    code: &'c str,
    at: usize,
    line: usize,
    column: usize,
}

impl<'c> Placer<'c> {
    fn new(code: &'c str) -> Placer<'c> {
        // A byte-order mark is not a character of the first line.
        let at = if code.starts_with('\u{feff}') { '\u{feff}'.len_utf8() } else { 0 };
        Placer { code, at, line: 1, column: 1 }
    }

    fn at(&mut self, offset: usize) -> (usize, usize) {
        let between = self.code.get(self.at..offset).unwrap_or("");
        match between.rfind('\n') {
            Some(last) => {
                self.line += between.matches('\n').count();
                self.column = between[last + 1..].chars().count() + 1;
            }
            None => self.column += between.chars().count(),
        }
        self.at = self.at.max(offset);
        (self.line, self.column)
    }
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
    /// 1-based column, in characters.
    pub column: usize,
    /// The code it matched (at most 200 characters).
    pub text: String,
    /// The rule's reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
}

/// The policy's verdict on one program: the result's `policy` field, and what `wsbx check`
/// and `POST /v1/check` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    /// The highest risk found (`none` when nothing was).
    pub risk: Risk,
    /// What the thresholds make of it.
    pub decision: Decision,
    /// The matches, in the order of the code: the first [`MAX_FINDINGS`].
    pub findings: Vec<Finding>,
    /// Whether there were more matches than `findings` lists.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub findings_truncated: bool,
}

impl Verdict {
    /// The `detail` of a run this verdict denied: the findings at its risk, up to three.
    pub fn refusal(&self) -> String {
        format!("denied by policy {}", self.worst())
    }

    /// One line on what a verdict that warns found.
    pub fn warning(&self) -> String {
        format!("policy warning {}", self.worst())
    }

    /// The risk and the findings at it, up to three.
    fn worst(&self) -> String {
        let worst: Vec<String> = self
            .findings
            .iter()
            .filter(|f| f.risk == self.risk)
            .take(3)
            .map(|f| match &f.why {
                Some(why) => format!("{} at line {}, column {} ({why})", f.rule, f.line, f.column),
                None => format!("{} at line {}, column {}", f.rule, f.line, f.column),
            })
            .collect();
        format!("(risk {}): {}", self.risk, worst.join("; "))
    }
}

/// Something the code does, found in its syntax tree.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Site {
    /// Import, call, attribute or command.
    kind: Kind,
    /// The module, dotted call name (aliases resolved), attribute or command name.
    name: String,
    /// For commands: the arguments, each as written, quotes removed.
    args: Vec<String>,
    /// Where it is in the code, in bytes.
    start: usize,
    end: usize,
}

impl Site {
    /// The memory it holds.
    fn weight(&self) -> usize {
        std::mem::size_of::<Site>() + self.name.len() + self.args.iter().map(|a| std::mem::size_of::<String>() + a.len()).sum::<usize>()
    }
}

/// The most memory the sites of one check may hold (code that names more is `unchecked`):
/// aliases make a short call stand for a long name (`a=x; a(); a(); ...`), so what is found can
/// outgrow the code by far.
pub const MAX_FOUND_BYTES: usize = 16 << 20;

/// The sites found in a check so far, within [`MAX_FOUND_BYTES`].
#[derive(Debug, Default)]
struct Found {
    sites: Vec<Site>,
    bytes: usize,
    /// A site was left out: there were more than the bound holds.
    overflowed: bool,
    /// Code in a string nested deeper than a check reads was left unread.
    too_deep: bool,
}

impl Found {
    fn push(&mut self, site: Site) {
        let weight = site.weight();
        match self.bytes + weight <= MAX_FOUND_BYTES {
            true => {
                self.bytes += weight;
                self.sites.push(site);
            }
            false => self.overflowed = true,
        }
    }

    /// The sites of code inside `at` (`exec("...")`), placed at `at`.
    fn nest(&mut self, found: Found, at: tree_sitter::Node<'_>) {
        self.overflowed |= found.overflowed;
        self.too_deep |= found.too_deep;
        for site in found.sites {
            self.push(Site { start: at.start_byte(), end: at.end_byte(), ..site });
        }
    }
}

/// The sites of `node`.
fn site(kind: Kind, name: String, node: tree_sitter::Node<'_>) -> Site {
    Site { kind, name, args: Vec::new(), start: node.start_byte(), end: node.end_byte() }
}

/// `code` with its lines ended as `language` ends them: Python and JavaScript end a line at a
/// lone carriage return as at a newline, the grammars only at a newline. A byte for a byte, so
/// every offset stays.
fn lines_as_read(language: Language, code: &str) -> std::borrow::Cow<'_, str> {
    if language == Language::Shell || !code.contains('\r') {
        return std::borrow::Cow::Borrowed(code);
    }
    let mut bytes = code.as_bytes().to_vec();
    for at in 0..bytes.len() {
        if bytes[at] == b'\r' && bytes.get(at + 1) != Some(&b'\n') {
            bytes[at] = b'\n';
        }
    }
    // One ASCII byte for another keeps the text UTF-8.
    std::borrow::Cow::Owned(String::from_utf8(bytes).unwrap_or_else(|_| code.to_owned()))
}

/// Why a check that ran out of time gives.
const LATE: Unread = Unread::Unchecked("the code takes longer to check than a check may (500 ms)");

/// Why a check that found or bound more than it holds gives.
const FULL: Unread = Unread::Unchecked("the code names more than a check holds (16 MiB of sites, 64 KiB of bound names)");

/// Why code could not be read in full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unread {
    /// It does not parse: where the first error is (a byte range).
    Unparsable(usize, usize),
    /// It is too large or too tangled to check within the bounds: why.
    Unchecked(&'static str),
}

/// The most code a check parses (bigger code is `unchecked`): what agents send is kilobytes, and
/// parsing's memory grows with the code (a deep chain of operators costs hundreds of bytes of
/// parser state per character).
pub const MAX_CHECKED_BYTES: usize = 256 << 10;

/// The deepest nesting of brackets a check parses (deeper code is `unchecked`): real code nests
/// tens deep, and the parser's stack grows with depth.
pub const MAX_NESTING: usize = 1000;

/// The sites of `code`, resolved with and added to `bindings`, and why it could not be read in
/// full, if it could not.
fn sites(language: Language, code: &str, bindings: &mut Bindings, deadline: Instant) -> (Vec<Site>, Option<Unread>) {
    if code.len() > MAX_CHECKED_BYTES {
        return (Vec::new(), Some(Unread::Unchecked("the code is larger than a check reads (256 KiB)")));
    }
    // The shell grammar reads NUL bytes in time quadratic in their number, beyond the reach of
    // the budget; no shell script has them.
    if language == Language::Shell && code.contains('\0') {
        return (Vec::new(), Some(Unread::Unchecked("the code holds NUL bytes")));
    }
    if nesting(code) > MAX_NESTING {
        return (Vec::new(), Some(Unread::Unchecked("the code nests brackets deeper than a check reads (1000)")));
    }
    let grammar: tree_sitter::Language = match language {
        Language::Python => tree_sitter_python::LANGUAGE.into(),
        Language::Javascript => tree_sitter_javascript::LANGUAGE.into(),
        Language::Shell => tree_sitter_bash::LANGUAGE.into(),
    };
    // bash joins the lines a backslash continues before it reads words (`cu\⏎rl` is `curl`);
    // the grammar does not.
    let (code, joins) = match language == Language::Shell && code.contains("\\\n") {
        true => {
            // The comments and single-quoted strings, from a parse of the code as given.
            let Some(tree) = parse(&grammar, code, deadline) else {
                return (Vec::new(), Some(LATE));
            };
            let mut literal = Vec::new();
            if !walk(&tree, deadline, |node| {
                let quoted_here = || {
                    let start = node.parent().and_then(|r| r.named_children(&mut r.walk()).find(|c| c.kind() == "heredoc_start"));
                    start.and_then(|s| s.utf8_text(code.as_bytes()).ok()).is_some_and(|s| s.contains(['\'', '"', '\\']))
                };
                // (A quoted here-document's body is read as written too.)
                if matches!(node.kind(), "comment" | "raw_string") || (node.kind() == "heredoc_body" && quoted_here()) {
                    literal.push((node.start_byte(), node.end_byte()));
                }
            }) {
                return (Vec::new(), Some(LATE));
            }
            joined(code, &literal)
        }
        false => (std::borrow::Cow::Borrowed(code), Vec::new()),
    };
    let Some(tree) = parse(&grammar, &code, deadline) else {
        return (Vec::new(), Some(LATE));
    };
    let found = match language {
        Language::Python => python::sites(&tree, &code, deadline, bindings, 0),
        Language::Javascript => javascript::sites(&tree, &code, deadline, bindings, 0),
        Language::Shell => shell::sites(&tree, &code, deadline, 0),
    };
    // Offsets in the joined code back to the code as given.
    let back = |at: usize| at + 2 * joins.partition_point(|&join| join <= at);
    match found {
        Some(found) if found.overflowed || bindings.overflowed => (Vec::new(), Some(FULL)),
        Some(found) if found.too_deep => (Vec::new(), Some(Unread::Unchecked("the code nests code in strings deeper than a check reads (3 levels)"))),
        Some(Found { sites: mut found, .. }) => {
            for site in &mut found {
                (site.start, site.end) = (back(site.start), back(site.end));
            }
            (found, first_error(&tree).map(|(start, end)| Unread::Unparsable(back(start), back(end))))
        }
        None => (Vec::new(), Some(LATE)),
    }
}

/// `code` with each backslash-newline that continues a line removed, and where (in the result)
/// each was. Not inside `literal` byte ranges: bash does not join lines in a comment (`# c \⏎
/// curl x` runs curl) or between single quotes.
fn joined<'c>(code: &'c str, literal: &[(usize, usize)]) -> (std::borrow::Cow<'c, str>, Vec<usize>) {
    let bytes = code.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut joins = Vec::new();
    let mut backslashes = 0;
    let inside = |at: usize| {
        let after = literal.partition_point(|&(start, _)| start <= at);
        after > 0 && literal[after - 1].1 > at
    };
    for (at, &byte) in bytes.iter().enumerate() {
        // The backslash decides: a comment ends before its newline.
        if byte == b'\n' && backslashes % 2 == 1 && !inside(at - 1) {
            out.pop();
            joins.push(out.len());
            backslashes = 0;
            continue;
        }
        backslashes = if byte == b'\\' { backslashes + 1 } else { 0 };
        out.push(byte);
    }
    // Only ASCII bytes were removed: the text is still UTF-8.
    (std::borrow::Cow::Owned(String::from_utf8(out).unwrap_or_else(|_| code.to_owned())), joins)
}

/// The deepest nesting of `(`, `[` and `{` in `code`, strings and comments included (a bound,
/// not a parse).
fn nesting(code: &str) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    for byte in code.bytes() {
        match byte {
            b'(' | b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// What the names of code stand for, from its imports: `import subprocess as sp` makes `sp`
/// stand for `subprocess`. A session's turns share one (see [`Policy::check_in`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bindings {
    names: std::collections::HashMap<String, String>,
    /// Modules imported with `from m import *` (Python), whose names a bare call may be.
    star: Vec<String>,
    /// The bytes of the names held, within [`MAX_BINDINGS_BYTES`].
    bytes: usize,
    /// A binding was refused for want of room: names may stand for what no longer shows, and
    /// every check with these bindings is `unchecked`.
    overflowed: bool,
}

/// The most bytes of names [`Bindings`] hold. Real code binds tens of short names, and a
/// session's turns keep theirs; the bound keeps hostile code (`a1 = a2 = ... = <long name>`)
/// from growing a session's memory and every check's copy of it.
pub const MAX_BINDINGS_BYTES: usize = 64 << 10;

/// The most modules imported with `from m import *` that bare calls are read in (more is
/// `unchecked`).
const MAX_STAR: usize = 16;

impl Bindings {
    /// `local` stands for `full` from now on.
    fn bind(&mut self, local: String, full: String) {
        if local == full {
            if let Some(old) = self.names.remove(&local) {
                self.bytes -= local.len() + old.len();
            }
            return;
        }
        let old = self.names.get(&local).map_or(0, |old| local.len() + old.len());
        if self.bytes - old + local.len() + full.len() > MAX_BINDINGS_BYTES {
            self.overflowed = true;
            return;
        }
        self.bytes = self.bytes - old + local.len() + full.len();
        self.names.insert(local, full);
    }

    /// Calls of bare names may be calls of `module`'s names too (`from module import *`).
    fn star(&mut self, module: String) {
        if self.star.contains(&module) {
            return;
        }
        if self.star.len() == MAX_STAR || self.bytes + module.len() > MAX_BINDINGS_BYTES {
            self.overflowed = true;
            return;
        }
        self.bytes += module.len();
        self.star.push(module);
    }

    /// `dotted` with its first part replaced by what it stands for.
    fn resolve(&self, dotted: String) -> String {
        let (first, rest) = match dotted.split_once('.') {
            Some((first, rest)) => (first, Some(rest)),
            None => (dotted.as_str(), None),
        };
        match (self.names.get(first), rest) {
            (Some(full), Some(rest)) => format!("{full}.{rest}"),
            (Some(full), None) => full.clone(),
            (None, _) => dotted,
        }
    }
}

thread_local! {
    /// A parser per thread, reused: making one costs more than parsing a short program.
    static PARSER: std::cell::RefCell<tree_sitter::Parser> = std::cell::RefCell::new(tree_sitter::Parser::new());
}

/// The longest a check may take. Error recovery on noise is slow (a megabyte of random
/// characters takes seconds in the Python grammar), and so is a very long chain of reads;
/// code that takes longer is `unparsable`.
pub const CHECK_BUDGET: Duration = Duration::from_millis(500);

/// Parses `code` with `grammar` by `deadline`; `None` if it could not.
fn parse(grammar: &tree_sitter::Language, code: &str, deadline: Instant) -> Option<tree_sitter::Tree> {
    let mut in_time = |_: &tree_sitter::ParseState| match Instant::now() > deadline {
        true => std::ops::ControlFlow::Break(()),
        false => std::ops::ControlFlow::Continue(()),
    };
    let bytes = code.as_bytes();
    let mut read = |at: usize, _: tree_sitter::Point| bytes.get(at..).unwrap_or(&[]);
    PARSER.with(|parser| {
        let mut parser = parser.try_borrow_mut().ok()?;
        parser.set_language(grammar).ok()?;
        let tree = parser.parse_with_options(&mut read, None, Some(tree_sitter::ParseOptions::new().progress_callback(&mut in_time)));
        // A cut parse leaves state behind for a resumption that will not come.
        parser.reset();
        tree
    })
}

/// The byte range of the first syntax error in `tree`: an error node or a missing token.
fn first_error(tree: &tree_sitter::Tree) -> Option<(usize, usize)> {
    if !tree.root_node().has_error() {
        return None;
    }
    let mut cursor = tree.walk();
    loop {
        let node = cursor.node();
        if node.is_error() || node.is_missing() || !cursor.goto_first_child() {
            return Some((node.start_byte(), node.end_byte()));
        }
        // Down into the first child that holds the error.
        while !(cursor.node().has_error() || cursor.node().is_missing()) {
            if !cursor.goto_next_sibling() {
                cursor.goto_parent();
                return Some((cursor.node().start_byte(), cursor.node().end_byte()));
            }
        }
    }
}

/// The id of field `name` in `tree`'s grammar (0, which no field has, when it has none):
/// asking a node for a child by id spares a search by name per node.
fn field(tree: &tree_sitter::Tree, name: &str) -> u16 {
    tree.language().field_id_for_name(name).map_or(0, std::num::NonZeroU16::get)
}

/// Every node of `tree`, in document order, without recursion (random input may nest
/// deeply); `false` if `deadline` passed first.
fn walk<'t>(tree: &'t tree_sitter::Tree, deadline: Instant, mut visit: impl FnMut(tree_sitter::Node<'t>)) -> bool {
    let mut cursor = tree.walk();
    for n in 0u32.. {
        if n % 4096 == 4095 && Instant::now() > deadline {
            return false;
        }
        visit(cursor.node());
        if cursor.goto_first_child() {
            continue;
        }
        loop {
            if cursor.goto_next_sibling() {
                break;
            }
            if !cursor.goto_parent() {
                return true;
            }
        }
    }
    true
}

/// The first (or `last`) named child of `node` that is not a comment: what parentheses hold.
fn inner(node: tree_sitter::Node<'_>, last: bool) -> Option<tree_sitter::Node<'_>> {
    let mut cursor = node.walk();
    let mut children = node.named_children(&mut cursor).filter(|c| c.kind() != "comment");
    match last {
        true => children.last(),
        false => children.next(),
    }
}

/// The most parts a dotted name may have: longer chains are named by their last part only
/// (`.attr`), which keeps the work per node small and bounded.
const MAX_DOTTED: usize = 12;

/// One step down a chain of member reads, as a language's `dotted` sees it.
enum Step<'t, 's> {
    /// A read of `.name` (empty for a wrapper that adds none, such as parentheses) on a node.
    Member(tree_sitter::Node<'t>, std::borrow::Cow<'s, str>),
    /// The chain's start: a plain name, or what an expression stands for
    /// (`__import__("os")` is `os`).
    Name(std::borrow::Cow<'s, str>),
}

/// The dotted name a chain of member reads spells (`os.path.join`), when it is one: `step`
/// says what each node of the chain is. Iterative: a chain may be long.
fn dotted<'t, 's>(mut node: tree_sitter::Node<'t>, step: impl Fn(tree_sitter::Node<'t>) -> Option<Step<'t, 's>>) -> Option<String> {
    let mut parts: Vec<std::borrow::Cow<'s, str>> = Vec::new();
    for _ in 0..2 * MAX_DOTTED {
        match step(node)? {
            Step::Member(object, name) => {
                if !name.is_empty() {
                    if parts.len() == MAX_DOTTED {
                        return None;
                    }
                    parts.push(name);
                }
                node = object;
            }
            Step::Name(start) => {
                let mut name = String::with_capacity(start.len() + parts.iter().map(|p| p.len() + 1).sum::<usize>());
                name.push_str(&start);
                for part in parts.iter().rev() {
                    name.push('.');
                    name.push_str(part);
                }
                return Some(name);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(language: Language, code: &str, kind: Kind) -> Vec<String> {
        let (found, _) = sites(language, code, &mut Bindings::default(), Instant::now() + CHECK_BUDGET);
        found.into_iter().filter(|s| s.kind == kind).map(|s| s.name).collect()
    }

    fn rule(id: &str, kind: Kind, pattern: &str, risk: Risk) -> Rule {
        Rule::new(id, kind, &[pattern], risk).unwrap()
    }

    /// A policy of `rules` for `language` alone, denying from `deny_at`.
    fn policy(language: Language, deny_at: Option<Risk>, warn_at: Option<Risk>, rules: Vec<Rule>) -> Policy {
        let own = LanguagePolicy { deny_at, warn_at, unparsable: None, rules };
        let mut section = PolicySection::default();
        match language {
            Language::Python => section.python = Some(own),
            Language::Javascript => section.javascript = Some(own),
            Language::Shell => section.shell = Some(own),
        }
        Policy::new(&section)
    }

    #[test]
    fn python_imports_in_every_spelling() {
        let code = "import subprocess as sp\nfrom os import system\nimport os.path\n__import__('socket')\nimport importlib\nimportlib.import_module(\"ctypes\")\nimport builtins\nbuiltins.__import__('pty')\n";
        let imports = names(Language::Python, code, Kind::Import);
        for module in ["subprocess", "os", "os.system", "os.path", "socket", "ctypes", "pty"] {
            assert!(imports.iter().any(|i| i == module), "{module} not in {imports:?}");
        }
    }

    #[test]
    fn python_calls_resolve_aliases() {
        let code = "import subprocess as sp\nfrom os import system\nsp.run(['ls'])\nsystem('ls')\neval('1')\nx.y.z()\nimport builtins\nbuiltins.exec('1')\n";
        let calls = names(Language::Python, code, Kind::Call);
        assert_eq!(calls, ["subprocess.run", "os.system", "eval", "x.y.z", "exec"]);
        let attributes = names(Language::Python, "import os as o\no.environ['HOME']\nf().__globals__\n", Kind::Attribute);
        assert!(attributes.contains(&"os.environ".to_owned()) && attributes.contains(&".__globals__".to_owned()), "{attributes:?}");
    }

    #[test]
    fn comments_and_strings_never_match() {
        let code = "# import subprocess\ns = 'os.system(1); eval(2)'\nprint(\"\"\"import socket\"\"\")\n";
        let (found, error) = sites(Language::Python, code, &mut Bindings::default(), Instant::now() + CHECK_BUDGET);
        assert_eq!(error, None);
        assert!(found.iter().all(|s| s.name == "print"), "{found:?}");
        let js = "// require('child_process')\nconst s = \"eval(1)\"; /* new Function('x') */\n";
        assert!(names(Language::Javascript, js, Kind::Call).is_empty());
        assert!(names(Language::Javascript, js, Kind::Import).is_empty());
        let sh = "# curl x\necho 'rm -rf /' \"wget y\"\n";
        assert_eq!(names(Language::Shell, sh, Kind::Command), ["echo"]);
        // A pattern rule is the one kind that does read comments and strings.
        let secret = policy(Language::Python, None, None, vec![rule("key", Kind::Pattern, "AKIA[0-9A-Z]{16}", Risk::High)]);
        let found = secret.check(Language::Python, "x = 1\n# AKIAABCDEFGHIJKLMNOP\n");
        assert_eq!((found.risk, found.findings[0].line, found.findings[0].column), (Risk::High, 2, 3));
    }

    #[test]
    fn javascript_imports_requires_and_calls() {
        let code = "import * as os from 'qjs:os';\nconst cp = require('child_process');\nconst m = await import(\"fs\");\neval('1');\nos.exec(['ls']);\nnew Function('return 1');\nglobalThis['eval']('2');\nexport { x } from 'qjs:std';\n";
        assert_eq!(names(Language::Javascript, code, Kind::Import), ["qjs:os", "child_process", "fs", "qjs:std"]);
        let calls = names(Language::Javascript, code, Kind::Call);
        assert_eq!(calls.iter().filter(|c| *c == "eval").count(), 2, "{calls:?}");
        // `os` is the module `qjs:os`: its calls are named by the module.
        for call in ["require", "qjs:os.exec", "Function"] {
            assert!(calls.iter().any(|c| c == call), "{call} not in {calls:?}");
        }
    }

    #[test]
    fn shell_commands_through_pipes_lists_subshells_substitutions_wrappers_and_nested_code() {
        let code = "cat f | grep x && (curl http://a) ; echo $(wget -q y) `nc -l 1`\n/usr/bin/rm -rf /tmp/x\nsudo env A=1 ssh h\nbash -c 'python3 -c 1 | socat - tcp:x:1'\neval \"telnet h\"\n";
        let commands = names(Language::Shell, code, Kind::Command);
        for command in ["cat", "grep", "curl", "echo", "wget", "nc", "rm", "sudo", "env", "ssh", "bash", "python3", "socat", "eval", "telnet"] {
            assert!(commands.iter().any(|c| c == command), "{command} not in {commands:?}");
        }
        let policy = policy(Language::Shell, Some(Risk::High), None, vec![rule("rm-rf", Kind::Command, "rm -rf", Risk::High), rule("socat", Kind::Command, "socat", Risk::Critical)]);
        let verdict = policy.check(Language::Shell, code);
        assert_eq!(verdict.decision, Decision::Deny);
        assert_eq!((verdict.findings[0].rule.as_str(), verdict.findings[0].line, verdict.findings[0].column), ("rm-rf", 2, 1));
        // Found inside `bash -c`, placed at the command that runs it.
        assert_eq!((verdict.findings[1].rule.as_str(), verdict.findings[1].line, verdict.risk), ("socat", 4, Risk::Critical));
        assert_eq!(policy.check(Language::Shell, "rm -r x").decision, Decision::Allow, "arguments are matched separately");
        assert_eq!(policy.check(Language::Shell, "rm -f -r x").decision, Decision::Deny, "short options in any clusters");
    }

    #[test]
    fn thresholds_decide_and_an_agent_may_raise_them() {
        let policy = policy(
            Language::Python,
            Some(Risk::High),
            Some(Risk::Medium),
            vec![
                rule("no-subprocess", Kind::Import, "subprocess", Risk::High).why("spawns processes"),
                rule("dynamic-code", Kind::Call, "eval", Risk::Medium),
            ],
        );
        let denied = policy.check(Language::Python, "import subprocess\nsubprocess.run(['ls'])");
        assert_eq!((denied.risk, denied.decision), (Risk::High, Decision::Deny));
        assert_eq!((denied.findings[0].rule.as_str(), denied.findings[0].line, denied.findings[0].column), ("no-subprocess", 1, 1));
        assert_eq!(denied.refusal(), "denied by policy (risk high): no-subprocess at line 1, column 1 (spawns processes)");
        assert_eq!(policy.check(Language::Python, "eval('1')").decision, Decision::Warn);
        let clean = policy.check(Language::Python, "print(1)");
        assert_eq!((clean.risk, clean.decision, clean.findings.len()), (Risk::None, Decision::Allow, 0));
        let trusted = policy.with_thresholds(Some(Risk::Critical), None).check(Language::Python, "import subprocess");
        assert_eq!(trusted.decision, Decision::Warn, "a trusted agent's higher deny threshold: it runs, with the finding");
        let strict = policy.with_thresholds(Some(Risk::Low), None).check(Language::Python, "eval('1')");
        assert_eq!(strict.decision, Decision::Deny, "a stricter agent's lower one");
        // A language without a policy is not checked at all.
        assert_eq!(policy.check(Language::Shell, "curl x").findings, []);
    }

    #[test]
    fn columns_count_characters_and_findings_are_capped() {
        let policy = policy(Language::Python, None, None, vec![rule("eval", Kind::Call, "eval", Risk::Low)]);
        let verdict = policy.check(Language::Python, "x = 'ééé'; eval('1')\n");
        assert_eq!((verdict.findings[0].line, verdict.findings[0].column, verdict.findings[0].text.as_str()), (1, 12, "eval('1')"));
        let many = "eval(1); ".repeat(1_000);
        let verdict = policy.check(Language::Python, &many);
        assert_eq!((verdict.findings.len(), verdict.findings_truncated), (MAX_FINDINGS, true));
        assert_eq!(verdict.findings[99].column, 1 + 99 * 9);
    }

    #[test]
    fn config_levels_and_rules_are_checked() {
        assert!(Rule::new("x", Kind::Pattern, &["a", "("], Risk::Low).unwrap_err().contains("regular expression"));
        assert!(Rule::new("", Kind::Call, &["eval"], Risk::Low).is_err());
        assert!(Rule::new("x", Kind::Call, &[" "], Risk::Low).is_err());
        assert!(Rule::new("x", Kind::Call, &[] as &[&str], Risk::Low).is_err());
        assert!(Rule::new("x", Kind::Call, &["eval"], Risk::None).is_err());
        // Names of any script, never a panic.
        assert!(Rule::new("x", Kind::Command, &["é"], Risk::Low).is_ok());
        assert!(Rule::new("x", Kind::Command, &["é*"], Risk::Low).is_ok());
        assert!(Rule::new("x", Kind::Command, &["*"], Risk::Low).is_err());
        assert!(Rule::new("x", Kind::Call, &["ü.é"], Risk::Low).is_ok());
        // A list, and a call pattern ending in `*`.
        let exec = Rule::new("x", Kind::Call, &["os.exec*", "os.system"], Risk::High).unwrap();
        let site = |name: &str| Site { kind: Kind::Call, name: name.into(), args: Vec::new(), start: 0, end: 0 };
        assert!(exec.matches(&site("os.execvp")) && exec.matches(&site("os.system")) && !exec.matches(&site("os.exe")));
    }

    /// Spellings the language itself reads as the same name: each is found.
    #[test]
    fn the_languages_own_spellings_of_a_name_are_found() {
        let python = policy(Language::Python, Some(Risk::High), None, vec![rule("eval", Kind::Call, "eval", Risk::High)]);
        for code in ["ｅｖａｌ('1')", "(eval)('1')", "( # why\n eval)('1')", "eval.__call__('1')", "import builtins as b\nb.eval('1')", "__builtins__.eval('1')"] {
            assert_eq!(python.check(Language::Python, code).decision, Decision::Deny, "{code}");
        }
        let aliased = policy(Language::Python, Some(Risk::High), None, vec![rule("sub", Kind::Call, "subprocess.run", Risk::High)]);
        assert_eq!(aliased.check(Language::Python, "import subprocess as ｓｐ\nsp.run(['x'])").decision, Decision::Deny);
        let js = policy(Language::Javascript, Some(Risk::High), None, vec![rule("eval", Kind::Call, "eval", Risk::High)]);
        for code in ["\\u0065val('1')", "\\u{65}val('1')", "(0, eval)('1')", "eval.call(null, '1')", "window['eval']('1')", "globalThis.eval.apply(null, ['1'])"] {
            assert_eq!(js.check(Language::Javascript, code).decision, Decision::Deny, "{code}");
        }
        let shell = policy(Language::Shell, Some(Risk::High), None, vec![rule("curl", Kind::Command, "curl", Risk::High)]);
        for code in ["'cu'rl x", "c\\url x", "$'\\x63url' x", "$'\\143url' x", "\"curl\" x", "sudo -u root curl x", "timeout -s KILL 5 curl x", "env -u HOME A=1 curl x", "nice -n 5 -- curl x", "xargs -n 1 curl < urls", "bash -c 'sh -c \"curl x\"'"] {
            assert_eq!(shell.check(Language::Shell, code).decision, Decision::Deny, "{code}");
        }
        // Asking where curl is runs nothing.
        for code in ["command -v curl", "echo curl", "type curl"] {
            assert_eq!(shell.check(Language::Shell, code).decision, Decision::Allow, "{code}");
        }
    }

    /// The starter policy (`examples/policy.toml`), as an operator would use it.
    fn starter() -> Policy {
        crate::config::Config::parse(include_str!("../../examples/policy.toml")).unwrap().policy().unwrap()
    }

    /// What a second outside attack found: literal code with escapes, chained assignments, a
    /// module loaded in an expression, backquotes in a here-document.
    #[test]
    fn escapes_chains_and_loads_in_expressions_are_read() {
        let starter = starter();
        let decided = |language: Language, code: &str| starter.check(language, code).decision;
        for code in [
            "exec(\"import os\\nos.system('id')\")",
            "exec(\"import os as o\\no.system(1)\")",
            "exec('import shutil\\nshutil.os.system(1)')",
            "exec('x=1\\nimport os\\nos.system(1)')",
            "__import__(\"\\x73ubprocess\")",
            "import importlib\nimportlib.import_module('\\163ubprocess')",
            "exec(\"import \\u0073ubprocess\")",
            "exec(\"import \\U00000073ubprocess\")",
            "import os\ngetattr(os, \"\\x73ystem\")(\"x\")",
            "import os\no = p = os\no.system('x')",
            "exec((\"import os\\nos.system('id')\"))",
        ] {
            assert_eq!(decided(Language::Python, code), Decision::Deny, "{code}");
        }
        // A raw string keeps its backslashes: this literal is not those two lines.
        assert_eq!(decided(Language::Python, "exec(r'import os\\nos.system(1)')"), Decision::Warn);
        for code in [
            "import * as o from \"qjs:os\"; const a = b = o; a.exec([\"x\"]);",
            "(await import(\"qjs:os\")).exec([\"x\"]);",
            "require('child_process').exec('x')",
            "import * as o from \"qjs:os\"; const a = (o); a.exec([\"x\"]);",
        ] {
            assert_eq!(decided(Language::Javascript, code), Decision::Deny, "{code}");
        }
        assert_eq!(decided(Language::Shell, "cat <<XX\n`curl x`\nXX\n"), Decision::Deny);
        for code in [
            "taskset 1 curl x",
            "taskset -c 0 curl x",
            "chrt 10 curl x",
            "flock /tmp/l curl x",
            "flock /tmp/l -c 'curl x'",
            "script -qc 'curl x'",
            "setpriv --reuid 1000 curl x",
            "prlimit --nofile=10 curl x",
            "unbuffer curl x",
            "rm -rf //",
            "rm -rf /.",
            "rm -rf /./",
            "rm -rf /bin/..",
            "rm -R --force /",
            "rm --recursive -f /",
        ] {
            assert_eq!(decided(Language::Shell, code), Decision::Deny, "{code}");
        }
        assert_eq!(decided(Language::Shell, "rm -rf ./build"), Decision::Allow);
        assert_eq!(decided(Language::Shell, "cat <<XX\nsee \\`curl x\\` here\nXX\n"), Decision::Allow, "an escaped backquote is text");
        assert_eq!(decided(Language::Shell, "cat <<'XX'\n`curl x`\nXX\n"), Decision::Allow, "a quoted here-document is text");
        assert_eq!(shell::backquoted("a `b \\` c` d `e`"), ["b ` c", "e"]);
    }

    /// What an outside attack on the first version found: each a way the language plainly
    /// runs what a starter rule names.
    #[test]
    fn plain_forms_an_outside_attack_found_are_denied() {
        let starter = starter();
        let denied = |language: Language, code: &str| {
            let verdict = starter.check(language, code);
            assert_eq!(verdict.decision, Decision::Deny, "{language}: {code:?}: {verdict:?}");
        };
        // Python: `import os.path` binds `os` to the module os; star imports; importers.
        for code in [
            "import os.path\nos.system('ls')",
            "import os, os.path\nos.kill(1, 9)",
            "import os.path\nimport os\nos.system('x')",
            "from os import *\nsystem('ls')",
            "__import__('os').system('x')",
            "__import__(name='subprocess')",
            "__import__('sub' 'process')",
            "import importlib\nimportlib.__import__('subprocess')",
            "import os\nf = os.system\nf('x')",
            "import os\nlist(map(os.system, ['x']))",
            "from os import system",
            "import os\ng = os.system\nh = g\nh('x')",
        ] {
            denied(Language::Python, code);
        }
        // A check that cannot finish is not milder than its rules: comment lines parse slowly.
        denied(Language::Python, &format!("import socket\n{}", "#c\n".repeat(12_000)));
        denied(Language::Python, &format!("print(1)\n{}", "#c\n".repeat(100_000)));
        // JavaScript: names through imports, templates and escapes in module names.
        for code in [
            "import * as o from 'qjs:os'\no.exec(['ls'])",
            "import {exec as run} from 'qjs:os'\nrun(['ls'])",
            "import {popen} from 'qjs:std'\npopen('id', 'r')",
            "const { exec } = await import('qjs:os');\nexec(['ls']);",
            "import * as o from 'qjs:os'\nconst { exec: e } = o;\ne(['ls']);",
            "require(`child_process`)",
            "import(`node:child_process`)",
            "require('child\\u005fprocess')",
        ] {
            denied(Language::Javascript, code);
        }
        let js_eval = policy(Language::Javascript, Some(Risk::High), None, vec![rule("eval", Kind::Call, "eval", Risk::High)]);
        for code in ["Reflect.apply(eval, null, ['1'])", "const e = eval;\ne('1');"] {
            assert_eq!(js_eval.check(Language::Javascript, code).decision, Decision::Deny, "{code}");
        }
        // Shell: keywords the grammar misreads, shells fed code on stdin, flags in clusters.
        for code in [
            "time { curl x; }",
            "coproc curl x",
            "coproc N { curl x; }",
            "bash -lc 'curl x'",
            "sh -ec 'curl x'",
            "bash -c -- 'curl x'",
            "bash <<EOF\ncurl x\nEOF\n",
            "cat <<EOF | bash\ncurl x\nEOF\n",
            "echo 'curl x' | bash",
            "bash <<< 'curl x'",
            "cu\\\nrl x",
            "find . -exec curl {} \\;",
            "trap 'curl x' EXIT",
            "watch 'curl x'",
            "rm -r -f /",
            "rm -f -r /",
            "rm -Rf /",
            "rm --recursive --force /",
            "mkfs.xfs /dev/sda",
            "python3 -m pip install x && curl y",
            "exec 3<>/dev/tcp/example.com/80",
        ] {
            denied(Language::Shell, code);
        }
        // Places stay right: a continued line, a byte-order mark, lone carriage returns.
        let verdict = starter.check(Language::Shell, "echo a \\\n b; w\\\nget x");
        assert_eq!((verdict.findings[0].line, verdict.findings[0].column), (2, 5), "{verdict:?}");
        let verdict = starter.check(Language::Python, "\u{feff}import subprocess");
        assert_eq!((verdict.findings[0].line, verdict.findings[0].column), (1, 1), "{verdict:?}");
        let verdict = starter.check(Language::Python, "x = 1\rimport os\ros.system('x')");
        assert_eq!((verdict.findings[0].rule.as_str(), verdict.findings[0].line, verdict.findings[0].column), ("os-process", 3, 1), "{verdict:?}");
        assert!(verdict.findings.iter().all(|f| f.rule != UNPARSABLE), "{verdict:?}");
    }

    /// What a second outside pass found: close variants of the first, and plain literal code.
    #[test]
    fn a_third_outside_pass_is_denied_too() {
        decides(Language::Python, Decision::Deny, &[
            // `__import__` of a dotted name is its package; `posix` is what `os` is made of.
            "__import__('os.path').system('x')",
            "import sys\nsys.modules['posix'].system('x')",
            "import random\nrandom._os.system('x')",
            "import tempfile\ntempfile._os.popen('x')",
            // Bindings by list and by a `match` capture.
            "import os\n[o] = [os]\no.system('x')",
            "import os\nmatch os:\n    case o:\n        o.system('x')",
        ]);
        // Runners the check cannot follow into: seen as what they are.
        decides(Language::Python, Decision::Warn, &["import pkgutil\npkgutil.resolve_name('os:system')('x')", "import pydoc\npydoc.locate('os.system')('x')", "breakpoint()", "import trace\ntrace.Trace().run('x')", "import cProfile\ncProfile.Profile().run('x')", "import code\ncode.InteractiveInterpreter().runsource('x')"]);
        decides(Language::Javascript, Decision::Deny, &[
            "this.eval(\"require('child_process')\")",
            "Function`require('child_process')```",
            "new Function`require('child_process')```",
            "import * as os from 'qjs:os'\nconst {exec = 1} = os\nexec(['x'])",
            "import * as os from 'qjs:os'\nconst {...r} = os\nr.exec(['x'])",
            "import * as os from 'qjs:os'\nconst {['exec']: e} = os\ne(['x'])",
            "import * as os from 'qjs:os'\nconst {exec: e = 1} = os\ne(['x'])",
        ]);
        decides(Language::Shell, Decision::Deny, &[
            // Braces and globs in a command's name, expanded by bash before it runs.
            "cu{r,}l x",
            "/usr/bin/cur[l] x",
            "/usr/*/curl x",
            "r{m,} -rf /",
            "mk{fs,x}.ext4 /dev/x",
            // A shell reading its standard input as its script, after options with values.
            "bash /dev/stdin <<< 'curl x'",
            "sh /proc/self/fd/0 <<< 'curl x'",
            "bash --rcfile /dev/null -c 'curl x'",
            "echo 'curl x' | bash --init-file /dev/null",
            "env -S'curl x'",
            "env --split-string='curl x'",
            "echo -e 'cu\\x72l x' | bash",
            "printf 'cu\\162l x' | sh",
            // A comment ends at its newline: its backslash joins nothing.
            "# c \\\ncurl x",
            "rm -r --forc /",
            "hash -p /usr/bin/curl c; c x",
            "mapfile -C 'curl x' -c 1 < f",
        ]);
        // What the same words mean where they are no command: nothing.
        decides(Language::Shell, Decision::Allow, &["echo 'a \\\ncurl x'", "[ -f x ] && echo ok", "ls *.txt; echo {a,b} c?rl", "echo '# c \\'\nls"]);
    }

    /// Asserts that the starter policy decides `decision` on each of `codes`.
    fn decides(language: Language, decision: Decision, codes: &[&str]) {
        let starter = starter();
        for code in codes {
            assert_eq!(starter.check(language, code).decision, decision, "{language}: {code}");
        }
    }

    /// A fourth outside pass, on the forms the third added: what bash expands before it picks
    /// the command (globs and braces in wrappers' and shells' names too), quoting and escapes
    /// it reads, options as GNU tools accept them, here-strings through `cat`; Python targets
    /// and patterns that bind; JavaScript defaults.
    #[test]
    fn a_fourth_outside_pass_is_denied_too() {
        decides(Language::Shell, Decision::Deny, &[
            "echo -e '\\0143url x' | bash",
            "printf '%b' '\\0143url x' | bash",
            "/usr/bin/en? curl x",
            "/usr/bin/[e]nv curl x",
            "en{v,v} curl x",
            "/usr/bin/timeou[t] 5 curl x",
            "/usr/bin/fin[d] . -exec curl {} \\;",
            "/bin/[s]h -c 'curl x'",
            "echo 'curl x' | /bin/[s]h",
            "$\"curl\" x",
            "bash -c $\"curl x\"",
            "timeout inf curl x",
            "timeout 0x10 curl x",
            "env -vS'curl x'",
            "env --split-str='curl x'",
            "timeout --sig KILL 5 curl x",
            "env --unse X curl x",
            "nice --adj 5 curl x",
            "stdbuf --output L curl x",
            "xargs --max-ar 1 curl",
            "cat <<< 'curl x' | bash",
            "tee <<< 'curl x' | sh -s",
            "rm -rf /{,}",
            "rm --recursive --force /*",
        ]);
        decides(Language::Python, Decision::Deny, &[
            "import os\n(o) = os\no.system('id')",
            "import os\n[[o]] = [[os]]\no.system('id')",
            "import os\nx, (y, z) = 1, (2, os)\nz.system('id')",
            "import os\nmatch os:\n    case (o):\n        o.system('id')",
            "import os\nmatch os:\n    case _ as o:\n        o.system('id')",
            "import os\nmatch os:\n    case o | p:\n        p.system('id')",
            "import asyncio\nasyncio.subprocess.create_subprocess_shell('id')",
        ]);
        decides(Language::Javascript, Decision::Warn, &["const { e = eval } = {}\ne('1')", "const [e = eval] = []\ne('1')", "const { eval: e } = globalThis\ne('1')", "const { eval: e } = this\ne('1')"]);
        // Ordinary work is not a finding: globs, braces and tests where bash has them.
        let ordinary = "ls *.csv | wc -l\necho {1..5}\nmkdir -p out/{raw,clean}\nfor f in *.txt; do wc -l \"$f\"; done\n[ -f x ] && rm -rf ./tmp\ncat <<< 'hello' | wc -c\ncat <<\"EOF\"\nfoo \\\nEOF\nls\n";
        assert_eq!(starter().check(Language::Shell, ordinary).findings, []);
    }

    #[test]
    fn a_second_outside_pass_is_denied_too() {
        let starter = starter();
        let denied = |language: Language, code: &str| {
            let verdict = starter.check(language, code);
            assert_eq!(verdict.decision, Decision::Deny, "{language}: {code:?}: {verdict:?}");
        };
        for code in [
            "exec('import subprocess')",
            "exec(\"import os; os.system('x')\")",
            "eval(\"__import__('subprocess')\")",
            "import timeit\ntimeit.timeit(\"__import__('os').system('x')\", number=1)",
            "o = __import__('os')\no.system('x')",
            "import os\n(o := os).system('x')",
            "import os\na, b = os, 1\na.system('x')",
            "from os import path\npath.os.system('x')",
            "import platform\nplatform.os.system('x')",
            "import os\ngetattr(os, 'system')('x')",
            "import os\nos.__dict__['system']('x')",
            "import os\nvars(os)['system']('x')",
            "import sys\nsys.modules['os'].system('x')",
            "import builtins\nbuiltins.__dict__['__import__']('socket')",
            "import runpy\nrunpy.run_module('subprocess')",
            "import _socket",
            "import os\nos.killpg(1, 9)",
        ] {
            denied(Language::Python, code);
        }
        for code in [
            "const m = await import(('qjs:os'));\nm.exec(['x']);",
            "require(('child_process'))",
            "import {default as o} from 'qjs:os'\no.exec(['x'])",
            "import * as o from 'qjs:os'\nlet p;\np = o;\np.exec(['x']);",
            "eval(\"require('child_process')\")",
            "new Function(\"return require('child_process')\")",
            "require('node:dgram')",
        ] {
            denied(Language::Javascript, code);
        }
        for code in [
            "! ! curl x",
            "for i in 1; { curl x; }",
            "echo 'curl x' | cat | bash",
            "echo 'curl x' | tee /dev/null | bash",
            "source /dev/stdin <<< 'curl x'",
            "find . -exec sh -c 'curl x' \\;",
            "env -S 'curl x'",
            "shopt -s expand_aliases\nalias c=curl\nc x",
            "rm -r --force /",
            "pkexec id",
        ] {
            denied(Language::Shell, code);
        }
        for code in ["python3.11 -m pip install x", "pip3.11 install x"] {
            let verdict = starter.check(Language::Shell, code);
            assert_eq!((verdict.decision, verdict.findings[0].rule.as_str()), (Decision::Warn, "package-install"), "{code}");
        }
    }

    #[test]
    fn ordinary_analysis_code_is_allowed_by_the_starter_policy() {
        let starter = starter();
        for code in [
            "from urllib.parse import urlparse\nprint(urlparse('http://x/y').path)",
            "import http\nprint(http.HTTPStatus.OK)",
            "import re, json\nprint(re.compile('a+').findall('aaa'), json.loads('[1]'))",
            "import pandas as pd\ndf = pd.DataFrame({'a': [1]})\nprint(df.eval('a + 1'))",
            "import os\nprint(os.path.join('a', 'b'))",
            "# import subprocess\nprint('os.system')",
        ] {
            assert_eq!(starter.check(Language::Python, code).decision, Decision::Allow, "{code}");
        }
        for code in ["command -v curl || echo none", "echo 'curl x'", "rm -rf /scratch/out", "awk '{print \"curl\"}' f", "cat <<EOF\ncurl x\nEOF\n"] {
            assert_eq!(starter.check(Language::Shell, code).decision, Decision::Allow, "{code}");
        }
    }

    /// A session's turns run in one interpreter: what one turn imported, the next may call.
    #[test]
    fn names_carry_over_between_turns_but_not_from_a_denied_one() {
        let starter = starter();
        let mut bindings = Bindings::default();
        assert_eq!(starter.check_in(Language::Python, "import os as o", &mut bindings).decision, Decision::Allow);
        assert_eq!(starter.check_in(Language::Python, "o.popen('id')", &mut bindings).decision, Decision::Deny);
        let mut bindings = Bindings::default();
        assert_eq!(starter.check_in(Language::Python, "import subprocess as s\ns.run(['x'])", &mut bindings).decision, Decision::Deny);
        assert_eq!(bindings, Bindings::default(), "a denied turn did not run: its imports are not there");
        let mut bindings = Bindings::default();
        starter.check_in(Language::Javascript, "import * as o from 'qjs:os'", &mut bindings);
        assert_eq!(starter.check_in(Language::Javascript, "o.exec(['ls'])", &mut bindings).decision, Decision::Deny);
    }

    /// Random programs of each language's trickiest tokens: always a verdict, never a panic.
    #[test]
    fn random_token_soup_never_panics() {
        let starter = starter();
        let tokens: [&[&str]; 3] = [
            &["import", "from", "as", "*", "os", ".", "system", "(", ")", "'", "\"", "exec", "__import__", "=", ":=", ",", "[", "]", "getattr", "vars", "sys.modules", "\n", " ", "\\", "#", "ｅ", "lambda", "def", ":"],
            &["import", "*", "as", "o", "from", "'qjs:os'", "`", "${", "}", "{", "(", ")", "eval", "Function", "new", ".", "[", "]", "=", "const", "require", "\\u0065", "\n", ";", "await", "default", ","],
            &["find", "-exec", ";", "+", "\\;", "sudo", "-u", "env", "-S", "bash", "-c", "-lc", "--", "<<", "EOF", "<<<", "|", "&&", "'", "\"", "$'", "\\x63", "$(", ")", "`", "{", "}", "!", "coproc", "alias", "trap", "\\\n", "\n", " ", "curl", "rm", "-rf", "/"],
        ];
        let mut state = 0x243f_6a88_85a3_08d3u64;
        let mut next = |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        for (language, vocabulary) in Language::ALL.into_iter().zip(tokens) {
            for _ in 0..3000 {
                let length = 1 + next(12);
                let code: String = (0..length).map(|_| vocabulary[next(vocabulary.len())]).collect::<Vec<_>>().join(if next(2) == 0 { " " } else { "" });
                let verdict = starter.check(language, &code);
                assert!(verdict.findings.len() <= MAX_FINDINGS, "{code:?}");
            }
        }
    }

    /// What a static check cannot see: listed so that they are known limits, not surprises.
    #[test]
    fn documented_limits_of_a_static_check() {
        let python = policy(Language::Python, Some(Risk::Medium), None, vec![rule("eval", Kind::Call, "eval", Risk::High), rule("subprocess", Kind::Import, "subprocess", Risk::High)]);
        for unseen in [
            "getattr(__builtins__, 'ev' + 'al')('1')",
            "m = 'sub' + 'process'\n__import__(m)",
            "f = eval\n",
            "exec(bytes.fromhex('696d706f72742073756270726f63657373').decode())",
            // Names bound by flow the check does not follow.
            "f = [eval][0]\nf('1')",
            // Lookups through a method, and code given by keyword to a function that runs it.
            "vars(__builtins__).get('eval')('1')",
            "globals()['__builtins__'].eval('1')",
            "import timeit\ntimeit.timeit(stmt='import subprocess')",
            // Escapes by character name are not decoded; a choice is flow.
            "__import__('\\N{LATIN SMALL LETTER S}ubprocess')",
            "f = eval if 1 else print\nf('1')",
        ] {
            assert_eq!(python.check(Language::Python, unseen).decision, Decision::Allow, "{unseen}");
        }
        let shell = policy(Language::Shell, Some(Risk::Medium), None, vec![rule("curl", Kind::Command, "curl", Risk::High)]);
        for unseen in [
            "c=curl; $c http://x",
            "$(printf cu)rl http://x",
            "bash -c \"$CMD\"",
            "bash < <(echo curl x)",
            "bash script.sh",
            // Code run from strings the shell expands later.
            "x='$(curl x)'; echo \"${x@P}\"",
            "PS4='$(curl x)' bash -xc :",
            // Paths built by quoting, which a pattern on the text does not undo.
            "cat < /dev/'tcp'/h/80",
            // A name `hash -p` or an alias binds is followed only where it is bound.
            "f() { \"$@\"; }; f curl x",
        ] {
            assert_eq!(shell.check(Language::Shell, unseen).decision, Decision::Allow, "{unseen}");
        }
        let starter = starter();
        // Globs in arguments: `/[a-z]*` may expand to every directory under `/`; a rule's
        // words are matched as written.
        assert_eq!(starter.check(Language::Shell, "rm -rf /[a-z]*").decision, Decision::Allow);
        // Names bound inside a string of code do not carry out of it: the `exec` is what is seen.
        assert_eq!(starter.check(Language::Python, "exec('import os as o')\no.system('x')").decision, Decision::Warn);
    }

    /// Code built to make the check itself slow, deep or large: a verdict within bounds, on a
    /// thread with a small stack (a server's check runs on one), never an abort or a hang.
    #[test]
    fn hostile_chains_and_aliases_are_bounded() {
        let checks = std::thread::Builder::new().stack_size(256 << 10).spawn(|| {
            let starter = starter();
            let rule_of = |code: &str| {
                let started = Instant::now();
                let verdict = starter.check(Language::Python, code);
                // Not a speed target: a guard that turns an exponential walk into a failure.
                assert!(started.elapsed() < 20 * CHECK_BUDGET, "{:?} for {} bytes", started.elapsed(), code.len());
                verdict.findings.iter().map(|f| f.rule.clone()).collect::<Vec<_>>()
            };
            let unchecked = vec![UNCHECKED.to_owned()];
            // Each subscript of a chain was read twice, and once per native frame.
            // (The long ones' parse alone is near the budget on a busy machine: unchecked is
            // right for them too.)
            let bounded = |rules: Vec<String>| rules.is_empty() || rules == unchecked;
            assert!(rule_of(&format!("x{}()", "[\"a\"]".repeat(40))).is_empty());
            assert!(bounded(rule_of(&format!("x{}()", "[\"a\"]".repeat(50_000)))));
            for code in ["import sys\nsys.modules['os'].system('x')", "import sys as s\ns.modules['os'].system('x')", "__import__('sys').modules['os'].system('x')"] {
                assert!(rule_of(code).contains(&"os-process".to_owned()), "{code}");
            }
            // A call of a call of ...: each callee's text is not copied.
            assert!(bounded(rule_of(&format!("f{}", "()".repeat(100_000)))));
            // Parentheses as deep as a check reads, around a literal and inside one.
            let deep = format!("exec({}'import os; os.system(1)'{})", "(".repeat(990), ")".repeat(990));
            assert!(rule_of(&deep).contains(&"os-process".to_owned()));
            let escaped = format!("exec('{}1{}')", "\\x28".repeat(60_000), "\\x29".repeat(60_000));
            rule_of(&escaped);
            // Aliases that make each short line stand for a long name.
            let binds: String = (0..2000).map(|i| format!("a{i} = os.{}\n", "p".repeat(100))).collect();
            assert_eq!(rule_of(&format!("import os\n{binds}")), unchecked);
            let calls = format!("import os\nx = os.{}\n{}", "p".repeat(60_000), "x()\n".repeat(45_000));
            assert_eq!(rule_of(&calls), unchecked);
            let stars: String = (0..17).map(|i| format!("from m{i} import *\n")).collect();
            assert_eq!(rule_of(&format!("{stars}system('x')")), unchecked);
            // A chain of assignments was followed to its end from each of its links. (Its
            // parse alone is near the budget on a busy machine: unchecked is right too.)
            assert!(bounded(rule_of(&format!("{}x\n", "a=".repeat(120_000)))));
            // Matching stops at the budget too: a few sites with very long names.
            let long = format!("from {} import b as x\n{}", ".".repeat(60_000), "x()\n".repeat(275));
            assert!(bounded(rule_of(&long)), "allowed within the budget, or unchecked past it");
            // Code in strings deeper than a check reads is unchecked, not passed.
            let mut deep = "import subprocess".to_owned();
            for _ in 0..4 {
                deep = format!("exec({deep:?})");
            }
            assert_eq!(rule_of(&deep), unchecked);
            // A session's names are bounded too: a turn past the bound is unchecked, and so
            // is every later turn that ran after it (what its names stand for is not known).
            let warn = starter.with_thresholds(Some(Risk::Critical), None);
            let mut bindings = Bindings::default();
            for turn in 0..3 {
                let verdict = warn.check_in(Language::Python, &binds, &mut bindings);
                assert_eq!(verdict.findings[0].rule, UNCHECKED, "turn {turn}");
                assert!(bindings.bytes <= MAX_BINDINGS_BYTES);
            }
        });
        checks.unwrap().join().unwrap();
        // The same for the other languages: each link of a chain, each stage of a pipeline
        // looked at once; code four strings deep is unchecked.
        let starter = starter();
        let timed = |language: Language, code: &str| {
            let started = Instant::now();
            let verdict = starter.check(language, code);
            assert!(started.elapsed() < 20 * CHECK_BUDGET, "{language}: {:?} for {} bytes", started.elapsed(), code.len());
            verdict.findings.iter().map(|f| f.rule.clone()).collect::<Vec<_>>()
        };
        // Allowed, or unchecked when the machine is too busy to parse them within the budget.
        let bounded = |rules: Vec<String>| rules.is_empty() || rules == [UNCHECKED];
        assert!(bounded(timed(Language::Javascript, &format!("var q = {}x\n", "a=".repeat(120_000)))));
        assert!(bounded(timed(Language::Shell, &format!("{}\n", ["stdbuf sh"; 25_000].join("|")))));
        assert!(bounded(timed(Language::Shell, &format!("echo '{}' | {}\n", "a".repeat(100_000), ["sh"; 20_000].join(" | ")))));
        let mut deep = "curl x".to_owned();
        for _ in 0..4 {
            deep = format!("bash -c '{}'", deep.replace('\'', "'\\''"));
        }
        assert_eq!(timed(Language::Shell, &deep), [UNCHECKED]);
        assert_eq!(timed(Language::Shell, "eval eval eval eval curl x"), [UNCHECKED]);
        // Braces expanded once per word, in bounded steps (a recursion per group overflowed
        // the stack); NUL bytes, which the shell grammar reads in quadratic time.
        for code in [format!("e{}", "{a,b}".repeat(30_000)), format!("e{}{}{}", "{".repeat(999), "x".repeat(200_000), "}".repeat(999)), format!("e{{{}}}", ["a"; 60_000].join(",")), "\n".repeat(10) + &["sudo {a,b}"; 300].join(" ")] {
            assert!(!timed(Language::Shell, &code).is_empty());
        }
        assert_eq!(timed(Language::Shell, &"\0".repeat(64_000)), [UNCHECKED]);
        assert!(bounded(timed(Language::Shell, &format!("echo -e '{}' | bash", "\\x".repeat(100_000)))));
        let mut deep = "require('child_process')".to_owned();
        for _ in 0..4 {
            deep = format!("eval({})", serde_json::to_string(&deep).unwrap());
        }
        assert_eq!(timed(Language::Javascript, &deep), [UNCHECKED]);
    }

    #[test]
    fn code_that_does_not_parse_is_a_finding_not_a_crash() {
        let own = LanguagePolicy { unparsable: Some(Risk::High), deny_at: Some(Risk::High), ..LanguagePolicy::default() };
        let section = PolicySection { python: Some(own.clone()), javascript: Some(own.clone()), shell: Some(own) };
        let policy = Policy::new(&section);
        let verdict = policy.check(Language::Python, "print(1)\ndef (:\n");
        assert_eq!((verdict.findings[0].rule.as_str(), verdict.decision, verdict.findings[0].line), ("unparsable", Decision::Deny, 2));
        // A megabyte of noise, in every language; and nesting far deeper than any stack.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let noise: String = (0..1 << 20)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                char::from_u32((state % 0x3000) as u32).unwrap_or('x')
            })
            .collect();
        // Commands cut short where their words are counted: `find -exec` with nothing after it.
        for code in ["find . -exec \\;", "find . -exec", "find -exec ';' +", "find . -ok -exec", "sudo", "env -S", "bash -c", "xargs --", "coproc N {", "trap", "alias", "! !"] {
            policy.check(Language::Shell, code);
        }
        let chain = format!("x{}()", ".y".repeat(200_000));
        let nested = format!("{}1{}", "(".repeat(100_000), ")".repeat(100_000));
        for language in Language::ALL {
            for code in [&noise, &chain, &nested] {
                let verdict = policy.check(language, code);
                assert!(verdict.findings.len() <= MAX_FINDINGS);
            }
        }
    }
}
