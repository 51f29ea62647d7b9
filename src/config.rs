//! The configuration file (`wsbx serve --config FILE`, or `$WSBX_CONFIG`): server settings,
//! limit defaults and ceilings (also per language), agents, the admin token and the audit log,
//! in one TOML file. `examples/wsbx.toml` documents every key.
//!
//! Every section and key is checked: an unknown key or a bad value is an error naming the key
//! and its line. A flag given on the command line wins over the file.
//!
//! ```
//! let config = wsbx::config::Config::parse(r#"
//!     [server]
//!     max_concurrency = 4
//!
//!     [limits.python]
//!     timeout_ms = 20000
//!
//!     [[agents]]
//!     id = "dev-1"
//!     token_sha256 = "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8"
//!     runs_per_minute = 60
//! "#).unwrap();
//! assert_eq!(config.server.max_concurrency, Some(4));
//! assert_eq!(config.agents[0].id, "dev-1");
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::request::{Language, Limits};

/// The whole file. Every section may be left out.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[server]`: what `wsbx serve`'s flags set.
    #[serde(default)]
    pub server: ServerSection,
    /// `[limits.*]`: defaults and ceilings.
    #[serde(default)]
    pub limits: LimitsSection,
    /// `[[agents]]`: who may run code, with what quotas.
    #[serde(default)]
    pub agents: Vec<AgentConfig>,
    /// `[admin]`: the operator's token.
    #[serde(default)]
    pub admin: AdminSection,
    /// `[audit]`: the SQLite audit log.
    #[serde(default)]
    pub audit: AuditSection,
    /// `[policy.<language>]`: rules checked before a run (see [`crate::policy`]).
    pub policy: Option<crate::policy::PolicySection>,
    /// `[python]`: the Python runtime's settings.
    #[serde(default)]
    pub python: PythonSection,
}

/// `[python]`: how Python's pre-initialized interpreter is built.
///
/// ```toml
/// [python]
/// # Imported into the snapshot besides numpy, pandas, matplotlib.pyplot, json, re ...
/// preinit_imports = ["scipy.stats", "sklearn.linear_model"]
/// ```
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PythonSection {
    /// Modules imported into the pre-initialized interpreter besides its own list
    /// ([`crate::SandboxConfig::preinit_imports`]).
    #[serde(default)]
    pub preinit_imports: Vec<String>,
}

/// The most modules `[python] preinit_imports` may name.
pub const MAX_PREINIT_IMPORTS: usize = 64;

/// Checks that `name` is a module name as `import` takes it: identifiers joined by dots
/// (`scipy.stats`), at most 200 bytes. The names end up in the snapshot's `import` line, so
/// nothing else may pass.
///
/// ```
/// assert!(wsbx::config::check_module_name("scipy.stats").is_ok());
/// assert!(wsbx::config::check_module_name("os; import shutil").is_err());
/// ```
pub fn check_module_name(name: &str) -> Result<(), String> {
    let identifier = |part: &str| {
        let mut chars = part.chars();
        chars.next().is_some_and(|c| c == '_' || c.is_ascii_alphabetic()) && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
    };
    match name.len() <= 200 && name.split('.').all(identifier) {
        true => Ok(()),
        false => Err(format!("{name:?} is not a module name (identifiers of ASCII letters, digits and '_', joined by dots, as in \"scipy.stats\")")),
    }
}

/// `[server]`: each key is the `wsbx serve` flag of the same name in snake_case.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    /// `--addr`.
    pub addr: Option<String>,
    /// The sha256 (hex) of `--token`: the token of the agent `default`.
    #[serde(default, deserialize_with = "sha256_hex")]
    pub token_sha256: Option<String>,
    /// `--max-concurrency`.
    pub max_concurrency: Option<usize>,
    /// `--max-queue`.
    pub max_queue: Option<usize>,
    /// `--max-body-bytes`.
    pub max_body_bytes: Option<usize>,
    /// `--max-return-bytes`.
    pub max_return_bytes: Option<u64>,
    /// `--max-connections`.
    pub max_connections: Option<usize>,
    /// `--max-sessions`.
    pub max_sessions: Option<usize>,
    /// `--session-idle-timeout`, in seconds.
    pub session_idle_timeout: Option<f64>,
    /// `--session-lifetime`, in seconds.
    pub session_lifetime: Option<f64>,
}

/// Limits as a config section gives them: each key optional, JSON names.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartialLimits {
    /// `timeout_ms`.
    #[serde(default, deserialize_with = "positive")]
    pub timeout_ms: Option<u64>,
    /// `fuel`.
    #[serde(default, deserialize_with = "positive")]
    pub fuel: Option<u64>,
    /// `memory_mb`.
    #[serde(default, deserialize_with = "positive")]
    pub memory_mb: Option<u64>,
    /// `max_output_bytes`.
    #[serde(default, deserialize_with = "positive")]
    pub max_output_bytes: Option<u64>,
    /// `disk_mb`.
    #[serde(default, deserialize_with = "positive")]
    pub disk_mb: Option<u64>,
    /// `max_files`.
    #[serde(default, deserialize_with = "positive")]
    pub max_files: Option<u64>,
}

impl PartialLimits {
    /// `base` with every limit given here in place of its own.
    pub fn over(&self, base: &Limits) -> Limits {
        Limits {
            timeout_ms: self.timeout_ms.unwrap_or(base.timeout_ms),
            fuel: self.fuel.unwrap_or(base.fuel),
            memory_mb: self.memory_mb.unwrap_or(base.memory_mb),
            max_output_bytes: self.max_output_bytes.unwrap_or(base.max_output_bytes),
            disk_mb: self.disk_mb.unwrap_or(base.disk_mb),
            max_files: self.max_files.unwrap_or(base.max_files),
        }
    }
}

/// `[limits.python]` (and javascript, shell): the defaults of one language, and under
/// `[limits.python.ceiling]` its ceilings.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LanguageLimits {
    /// `timeout_ms`.
    #[serde(default, deserialize_with = "positive")]
    pub timeout_ms: Option<u64>,
    /// `fuel`.
    #[serde(default, deserialize_with = "positive")]
    pub fuel: Option<u64>,
    /// `memory_mb`.
    #[serde(default, deserialize_with = "positive")]
    pub memory_mb: Option<u64>,
    /// `max_output_bytes`.
    #[serde(default, deserialize_with = "positive")]
    pub max_output_bytes: Option<u64>,
    /// `disk_mb`.
    #[serde(default, deserialize_with = "positive")]
    pub disk_mb: Option<u64>,
    /// `max_files`.
    #[serde(default, deserialize_with = "positive")]
    pub max_files: Option<u64>,
    /// The language's ceilings.
    #[serde(default)]
    pub ceiling: PartialLimits,
}

impl LanguageLimits {
    fn defaults(&self) -> PartialLimits {
        PartialLimits {
            timeout_ms: self.timeout_ms,
            fuel: self.fuel,
            memory_mb: self.memory_mb,
            max_output_bytes: self.max_output_bytes,
            disk_mb: self.disk_mb,
            max_files: self.max_files,
        }
    }
}

/// `[limits]`.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    /// `[limits.default]`: the limits a request leaves out, every language.
    #[serde(default)]
    pub default: PartialLimits,
    /// `[limits.ceiling]`: the most any request may ask for (the `--max-*` flags).
    #[serde(default)]
    pub ceiling: PartialLimits,
    /// `[limits.python]`.
    #[serde(default)]
    pub python: LanguageLimits,
    /// `[limits.javascript]`.
    #[serde(default)]
    pub javascript: LanguageLimits,
    /// `[limits.shell]`.
    #[serde(default)]
    pub shell: LanguageLimits,
}

impl LimitsSection {
    /// The section of `language`.
    pub fn language(&self, language: Language) -> &LanguageLimits {
        match language {
            Language::Python => &self.python,
            Language::Javascript => &self.javascript,
            Language::Shell => &self.shell,
        }
    }
}

/// The limits a server applies, per language: what a request leaves out takes `default`, and
/// nothing may go above `ceiling`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitTable {
    defaults: [Limits; 3],
    ceilings: [Limits; 3],
}

impl LimitTable {
    /// One ceiling for every language, and the built-in defaults lowered to it.
    pub fn uniform(ceiling: Limits) -> LimitTable {
        let ceiling = ceiling.lowered_to(&Limits::CEILING);
        let default = Limits::DEFAULT.lowered_to(&ceiling);
        LimitTable { defaults: [default; 3], ceilings: [ceiling; 3] }
    }

    /// The table `section` makes over the server-wide `ceiling`: `[limits.ceiling]` replaces
    /// what it gives of `ceiling` (never above [`Limits::CEILING`]), and a language's
    /// `[limits.<language>.ceiling]` may lower that for the language, never raise it; a
    /// language's defaults are the built-in ones, then `[limits.default]`, then
    /// `[limits.<language>]`, lowered to its ceiling.
    pub fn new(ceiling: Limits, section: &LimitsSection) -> LimitTable {
        let mut table = LimitTable::uniform(ceiling);
        for language in Language::ALL {
            let own = section.language(language);
            let server = section.ceiling.over(&ceiling).lowered_to(&Limits::CEILING);
            let ceiling = own.ceiling.over(&server).lowered_to(&server);
            let default = own.defaults().over(&section.default.over(&Limits::DEFAULT)).lowered_to(&ceiling);
            table.ceilings[index(language)] = ceiling;
            table.defaults[index(language)] = default;
        }
        table
    }

    /// The defaults of `language`.
    pub fn default(&self, language: Language) -> Limits {
        self.defaults[index(language)]
    }

    /// The ceiling of `language`.
    pub fn ceiling(&self, language: Language) -> Limits {
        self.ceilings[index(language)]
    }

    /// The highest ceiling of any language, limit by limit: what the sandbox itself enforces.
    pub fn highest(&self) -> Limits {
        let [a, b, c] = self.ceilings;
        let max = |f: fn(&Limits) -> u64| f(&a).max(f(&b)).max(f(&c));
        Limits {
            timeout_ms: max(|l| l.timeout_ms),
            fuel: max(|l| l.fuel),
            memory_mb: max(|l| l.memory_mb),
            max_output_bytes: max(|l| l.max_output_bytes),
            disk_mb: max(|l| l.disk_mb),
            max_files: max(|l| l.max_files),
        }
    }
}

fn index(language: Language) -> usize {
    match language {
        Language::Python => 0,
        Language::Javascript => 1,
        Language::Shell => 2,
    }
}

/// `[[agents]]`: one agent, named by its token.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Its name: in results' audit rows, metrics' `agent` label, `wsbx agents`.
    #[serde(deserialize_with = "agent_id")]
    pub id: String,
    /// The sha256 (hex) of its bearer token (`wsbx token` makes one).
    #[serde(default, deserialize_with = "sha256_hex")]
    pub token_sha256: Option<String>,
    /// Whether it may run code (default true). `POST /v1/agents/{id}/approve|revoke` changes
    /// this, and the change outlives restarts.
    #[serde(default = "yes")]
    pub approved: bool,
    /// The languages it may run (default: all).
    pub languages: Option<Vec<Language>>,
    /// Runs (and turns) it may have executing at once.
    #[serde(default, deserialize_with = "positive")]
    pub max_concurrent: Option<u32>,
    /// Runs (and turns) it may start in any 60 seconds.
    #[serde(default, deserialize_with = "positive")]
    pub runs_per_minute: Option<u32>,
    /// Fuel its runs may burn in any hour.
    #[serde(default, deserialize_with = "positive")]
    pub fuel_per_hour: Option<u64>,
    /// Sessions it may hold at once.
    #[serde(default, deserialize_with = "positive")]
    pub max_sessions: Option<u32>,
    /// Its own ceilings, below the server's.
    #[serde(default)]
    pub ceiling: PartialLimits,
    /// Its own `deny_at`, in place of every language's policy's (a trusted agent's may be
    /// higher, a new agent's lower).
    #[serde(default, deserialize_with = "crate::policy::optional_level")]
    pub policy_deny_at: Option<crate::policy::Risk>,
    /// Its own `warn_at`, in place of every language's policy's.
    #[serde(default, deserialize_with = "crate::policy::optional_level")]
    pub policy_warn_at: Option<crate::policy::Risk>,
}

fn yes() -> bool {
    true
}

/// A limit or quota: given, it is above zero (an error naming the key and line otherwise).
fn positive<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de> + PartialEq + From<u8>,
{
    let value = Option::<T>::deserialize(deserializer)?;
    if value.as_ref().is_some_and(|v| *v == T::from(0)) {
        return Err(serde::de::Error::custom("must be above zero (leave the key out for no limit)"));
    }
    Ok(value)
}

/// An agent id, checked where it is read (so the error names its line).
fn agent_id<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    let id = String::deserialize(deserializer)?;
    if !valid_agent_id(&id) {
        return Err(serde::de::Error::custom("an agent id is 1 to 64 letters, digits, '-', '_' or '.'"));
    }
    Ok(id)
}

/// A token's sha256 in hex, checked where it is read.
fn sha256_hex<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    let hash = Option::<String>::deserialize(deserializer)?;
    if let Some(hash) = &hash {
        parse_sha256(hash).map_err(serde::de::Error::custom)?;
    }
    Ok(hash)
}

/// `[admin]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {
    /// The sha256 (hex) of the admin token, which sees and kills every run and manages agents.
    #[serde(default, deserialize_with = "sha256_hex")]
    pub token_sha256: Option<String>,
}

/// `[audit]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSection {
    /// Whether runs are audited (default true when a config file is given).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// The SQLite file (default `$WSBX_HOME/audit.db`).
    pub path: Option<PathBuf>,
    /// Whether rows keep the code itself, not only its sha256 (default false).
    #[serde(default)]
    pub store_code: bool,
    /// Rows older than this many days are pruned (default: kept for ever).
    #[serde(default, deserialize_with = "positive")]
    pub retention_days: Option<u32>,
    /// Whether the server answers a run only once its row is committed, so that a client that
    /// saw a result finds its row even after a SIGKILL (default false: +0.5 ms per run).
    #[serde(default)]
    pub commit_before_answer: bool,
}

impl Default for AuditSection {
    fn default() -> Self {
        AuditSection { enabled: true, path: None, store_code: false, retention_days: None, commit_before_answer: false }
    }
}

/// The most `max_concurrency` may be (each run holds a thread and a guest's address space).
pub const MAX_CONCURRENCY: usize = 4096;
/// The most `max_queue` may be.
pub const MAX_QUEUE: usize = 1 << 20;
/// The most `max_connections` may be.
pub const MAX_CONNECTIONS: usize = 1 << 20;
/// The most `max_sessions` may be: each live session holds a slot of the wasm engine's pool,
/// which reserves address space for it.
pub const MAX_SESSIONS: usize = 10_000;

/// A configuration that cannot be used, saying where and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {path}: {error}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// The TOML is malformed, a key unknown or a value of the wrong type: the message names the
    /// key, its line and column.
    #[error("{0}")]
    Parse(String),
    /// The values are well-formed but do not fit together.
    #[error("{0}")]
    Invalid(String),
}

impl Config {
    /// Reads and checks the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read { path: path.to_owned(), error })?;
        Config::parse(&text).map_err(|e| match e {
            ConfigError::Parse(m) => ConfigError::Parse(format!("{}: {m}", path.display())),
            ConfigError::Invalid(m) => ConfigError::Invalid(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    /// Parses and checks `text`.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string().trim_end().to_owned()))?;
        config.check()?;
        Ok(config)
    }

    /// The policy runs are checked against, when the file has a `[policy]` section. An
    /// agent's own thresholds are [`crate::agents::Agent::policy`]'s.
    pub fn policy(&self) -> Option<crate::policy::Policy> {
        self.policy.as_ref().map(crate::policy::Policy::new)
    }

    /// What is allowed but likely not meant, one line each (`wsbx serve` prints them): a
    /// language's policy with rules and no threshold only reports.
    pub fn warnings(&self) -> Vec<String> {
        let agents_decide = self.agents.iter().any(|a| a.policy_deny_at.is_some() || a.policy_warn_at.is_some());
        let Some(policy) = &self.policy else { return Vec::new() };
        Language::ALL
            .into_iter()
            .filter_map(|language| {
                let own = policy.language(language)?;
                let silent = !own.rules.is_empty() && own.deny_at.is_none() && own.warn_at.is_none() && !agents_decide;
                silent.then(|| format!("policy.{language} has rules but neither deny_at nor warn_at: it reports findings and never warns or denies"))
            })
            .collect()
    }

    /// The checks serde cannot make: hashes are hashes, ids are unique and sane, limits and
    /// quotas are above zero.
    fn check(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        let hashes = [("server.token_sha256", &self.server.token_sha256), ("admin.token_sha256", &self.admin.token_sha256)];
        for (key, hash) in hashes {
            if let Some(hash) = hash {
                parse_sha256(hash).map_err(|e| ConfigError::Invalid(format!("{key}: {e}")))?;
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for (n, agent) in self.agents.iter().enumerate() {
            let key = format!("agents[{n}] (id {:?})", agent.id);
            if !valid_agent_id(&agent.id) {
                return invalid(format!("{key}: an agent id is 1 to 64 letters, digits, '-', '_' or '.'"));
            }
            if !seen.insert(agent.id.as_str()) {
                return invalid(format!("{key}: the id is given twice"));
            }
            if let Some(hash) = &agent.token_sha256 {
                parse_sha256(hash).map_err(|e| ConfigError::Invalid(format!("{key}.token_sha256: {e}")))?;
            }
            let zero = [
                ("max_concurrent", agent.max_concurrent.map(u64::from)),
                ("runs_per_minute", agent.runs_per_minute.map(u64::from)),
                ("fuel_per_hour", agent.fuel_per_hour),
                ("max_sessions", agent.max_sessions.map(u64::from)),
            ];
            if let Some((name, _)) = zero.iter().find(|(_, v)| *v == Some(0)) {
                return invalid(format!("{key}.{name} must be above zero (revoke the agent to stop it)"));
            }
            if let (Some(deny_at), Some(warn_at)) = (agent.policy_deny_at, agent.policy_warn_at) {
                if warn_at > deny_at {
                    return invalid(format!("{key}: policy_warn_at ({warn_at}) is above policy_deny_at ({deny_at}), so it would never warn"));
                }
            }
            check_limits(&format!("{key}.ceiling"), &agent.ceiling)?;
        }
        check_limits("limits.default", &self.limits.default)?;
        check_limits("limits.ceiling", &self.limits.ceiling)?;
        for language in Language::ALL {
            let own = self.limits.language(language);
            check_limits(&format!("limits.{language}"), &own.defaults())?;
            check_limits(&format!("limits.{language}.ceiling"), &own.ceiling)?;
        }
        for (key, seconds) in [("server.session_idle_timeout", self.server.session_idle_timeout), ("server.session_lifetime", self.server.session_lifetime)] {
            if seconds.is_some_and(|s| !(s.is_finite() && s > 0.0 && s <= crate::SessionOptions::MAX_DURATION.as_secs_f64())) {
                return invalid(format!("{key} must be a positive number of seconds, at most a year"));
            }
        }
        if let Some(policy) = &self.policy {
            policy.check().map_err(ConfigError::Invalid)?;
        }
        let imports = &self.python.preinit_imports;
        if imports.len() > MAX_PREINIT_IMPORTS {
            return invalid(format!("python.preinit_imports names {} modules; at most {MAX_PREINIT_IMPORTS}", imports.len()));
        }
        for name in imports {
            check_module_name(name).map_err(|e| ConfigError::Invalid(format!("python.preinit_imports: {e}")))?;
        }
        if self.audit.retention_days.is_some_and(|d| d > 36_500) {
            return invalid("audit.retention_days must be at most 36500 (a hundred years; leave it out to keep every row)".into());
        }
        let server = &self.server;
        let bounded = [
            ("server.max_concurrency", server.max_concurrency, MAX_CONCURRENCY),
            ("server.max_queue", server.max_queue, MAX_QUEUE),
            ("server.max_connections", server.max_connections, MAX_CONNECTIONS),
            ("server.max_sessions", server.max_sessions, MAX_SESSIONS),
        ];
        for (key, value, max) in bounded {
            if value.is_some_and(|v| v > max) {
                return invalid(format!("{key} must be at most {max}"));
            }
        }
        Ok(())
    }

    /// The audit log's file: `[audit] path`, or `audit.db` in `home`.
    pub fn audit_path(&self, home: &Path) -> PathBuf {
        self.audit.path.clone().unwrap_or_else(|| home.join("audit.db"))
    }
}

fn check_limits(key: &str, limits: &PartialLimits) -> Result<(), ConfigError> {
    let all = Limits::CEILING;
    let fields = [
        ("timeout_ms", limits.timeout_ms, all.timeout_ms),
        ("fuel", limits.fuel, all.fuel),
        ("memory_mb", limits.memory_mb, all.memory_mb),
        ("max_output_bytes", limits.max_output_bytes, all.max_output_bytes),
        ("disk_mb", limits.disk_mb, all.disk_mb),
        ("max_files", limits.max_files, all.max_files),
    ];
    for (name, value, max) in fields {
        match value {
            Some(0) => return Err(ConfigError::Invalid(format!("{key}.{name} must be above zero"))),
            Some(v) if v > max => return Err(ConfigError::Invalid(format!("{key}.{name} = {v} is above wsbx's ceiling of {max}"))),
            _ => {}
        }
    }
    Ok(())
}

/// Whether `id` is a usable agent id: it appears in URLs, metric labels and audit rows.
pub fn valid_agent_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// The 32 bytes of a sha256 written as 64 hex digits.
pub fn parse_sha256(hex_digest: &str) -> Result<[u8; 32], String> {
    let bytes = hex::decode(hex_digest.trim()).map_err(|_| "not a sha256 in hex (64 hex digits)".to_owned())?;
    bytes.try_into().map_err(|_| "not a sha256 in hex (64 hex digits)".to_owned())
}

/// The sha256 of `token`, as stored in the config.
pub fn token_sha256(token: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preinit_imports_take_dotted_module_names_only() {
        let config = Config::parse("[python]\npreinit_imports = [\"scipy.stats\", \"_private\", \"a1.b_2\"]\n").unwrap();
        assert_eq!(config.python.preinit_imports, ["scipy.stats", "_private", "a1.b_2"]);
        assert!(Config::parse("").unwrap().python.preinit_imports.is_empty());
        for bad in ["os; import shutil", "scipy..stats", ".stats", "stats.", "1st", "", "a b", "a\\nb", "é", "a-b", "os, sys"] {
            let text = format!("[python]\npreinit_imports = [{}]\n", toml::Value::String(bad.into()));
            let error = Config::parse(&text).unwrap_err().to_string();
            assert!(error.contains("python.preinit_imports") && error.contains("is not a module name"), "{bad:?}: {error}");
        }
        let long = format!("[python]\npreinit_imports = [{}]\n", vec!["\"m\""; MAX_PREINIT_IMPORTS + 1].join(", "));
        assert!(Config::parse(&long).unwrap_err().to_string().contains("at most 64"));
        assert!(Config::parse(&format!("[python]\npreinit_imports = [\"{}\"]\n", "a".repeat(201))).is_err());
        assert!(Config::parse("[python]\nimports = []\n").is_err());
    }

    #[test]
    fn unknown_keys_are_named_with_their_line() {
        let error = Config::parse("[server]\nmax_concurrency = 2\nmax_concurrenzy = 3\n").unwrap_err().to_string();
        assert!(error.contains("max_concurrenzy") && error.contains("line 3"), "{error}");
        let error = Config::parse("[[agents]]\nid = \"a\"\nrunz_per_minute = 1\n").unwrap_err().to_string();
        assert!(error.contains("runz_per_minute") && error.contains("line 3"), "{error}");
    }

    #[test]
    fn bad_values_are_named() {
        let error = Config::parse("[limits.python]\ntimeout_ms = \"soon\"\n").unwrap_err().to_string();
        assert!(error.contains("timeout_ms") && error.contains("line 2"), "{error}");
        let error = Config::parse("[[agents]]\nid = \"a\"\ntoken_sha256 = \"abc\"\n").unwrap_err().to_string();
        assert!(error.contains("token_sha256") && error.contains("line 3"), "{error}");
        let error = Config::parse("[[agents]]\nid = \"a b\"\n").unwrap_err().to_string();
        assert!(error.contains("agent id") && error.contains("line 2"), "{error}");
        let error = Config::parse("[[agents]]\nid = \"a\"\n[[agents]]\nid = \"a\"\n").unwrap_err().to_string();
        assert!(error.contains("twice"), "{error}");
        let error = Config::parse("[limits.ceiling]\nmemory_mb = 0\n").unwrap_err().to_string();
        assert!(error.contains("memory_mb") && error.contains("line 2") && error.contains("above zero"), "{error}");
        let error = Config::parse("[[agents]]\nid = \"a\"\nmax_concurrent = 0\n").unwrap_err().to_string();
        assert!(error.contains("max_concurrent") && error.contains("line 3"), "{error}");
        let error = Config::parse("[limits.python]\nmemory_mb = 999999\n").unwrap_err().to_string();
        assert!(error.contains("limits.python.memory_mb") && error.contains("ceiling"), "{error}");
        let error = Config::parse("[[agents]]\nid = \"a\"\nlanguages = [\"cobol\"]\n").unwrap_err().to_string();
        assert!(error.contains("cobol") && error.contains("line 3"), "{error}");
    }

    #[test]
    fn language_limits_layer_over_the_defaults_and_stay_under_the_ceilings() {
        let config = Config::parse(
            "[limits.default]\ntimeout_ms = 4000\n[limits.ceiling]\ntimeout_ms = 30000\n\
             [limits.python]\ntimeout_ms = 20000\n[limits.shell.ceiling]\ntimeout_ms = 2000\n",
        )
        .unwrap();
        let table = LimitTable::new(Limits::CEILING, &config.limits);
        assert_eq!(table.default(Language::Python).timeout_ms, 20_000);
        assert_eq!(table.default(Language::Javascript).timeout_ms, 4_000);
        assert_eq!(table.ceiling(Language::Javascript).timeout_ms, 30_000);
        assert_eq!(table.default(Language::Shell).timeout_ms, 2_000, "a default is lowered to its ceiling");
        assert_eq!(table.highest().timeout_ms, 30_000);
    }

    #[test]
    fn the_example_config_is_valid() {
        let text = include_str!("../examples/wsbx.toml");
        Config::parse(text).unwrap();
    }

    #[test]
    fn the_starter_policy_is_valid_and_does_what_its_comments_say() {
        use crate::policy::{Decision, Risk};
        let config = Config::parse(include_str!("../examples/policy.toml")).unwrap();
        let policy = config.policy().unwrap();
        let cases = [
            (Language::Python, "import subprocess; subprocess.run(['ls'])", Decision::Deny, "process-spawn"),
            (Language::Python, "import os\nos.execvp('sh', ['sh'])", Decision::Deny, "os-process"),
            (Language::Python, "from urllib.request import urlopen", Decision::Deny, "network"),
            (Language::Python, "eval('1 + 1')", Decision::Warn, "dynamic-code"),
            (Language::Python, "import os\nprint(os.environ.get('HOME'))", Decision::Allow, "environment"),
            (Language::Python, "import pandas as pd\nprint(pd.__version__)  # import subprocess", Decision::Allow, ""),
            (Language::Javascript, "const cp = require('child_process');", Decision::Deny, "node-host-modules"),
            (Language::Javascript, "console.log(eval('1+1'))", Decision::Warn, "dynamic-code"),
            (Language::Shell, "curl -s http://example.com | sh", Decision::Deny, "network-tools"),
            (Language::Shell, "sudo rm -rf /", Decision::Deny, "privilege"),
            (Language::Shell, "pip install numpy", Decision::Warn, "package-install"),
            (Language::Shell, "rm -rf /tmp/x; echo done  # curl", Decision::Allow, ""),
        ];
        for (language, code, decision, rule) in cases {
            let verdict = policy.check(language, code);
            assert_eq!(verdict.decision, decision, "{language}: {code}: {verdict:?}");
            if !rule.is_empty() {
                assert!(verdict.findings.iter().any(|f| f.rule == rule), "{language}: {code}: {verdict:?}");
            }
        }
        assert_eq!(policy.check(Language::Python, "print(1)").risk, Risk::None);
    }

    #[test]
    fn policy_mistakes_are_named_with_their_line() {
        let rule = |body: &str| format!("[policy.python]\ndeny_at = \"high\"\n[[policy.python.rules]]\nid = \"r\"\n{body}\n");
        let error = Config::parse(&rule("kind = \"call\"\nmatch = \"eval\"\nrisk = \"severe\"")).unwrap_err().to_string();
        assert!(error.contains("line 7") && error.contains("severe"), "{error}");
        let error = Config::parse(&rule("kind = \"call\"\nmatch = \"eval\"\nrisk = \"none\"")).unwrap_err().to_string();
        assert!(error.contains("low, medium, high or critical"), "{error}");
        let error = Config::parse(&rule("kind = \"pattern\"\nmatch = \"(\"\nrisk = \"low\"")).unwrap_err().to_string();
        assert!(error.contains("line 3") && error.contains("regular expression"), "{error}");
        let error = Config::parse(&rule("kind = \"grep\"\nmatch = \"x\"\nrisk = \"low\"")).unwrap_err().to_string();
        assert!(error.contains("grep"), "{error}");
        let error = Config::parse("[policy.cobol]\ndeny_at = \"high\"\n").unwrap_err().to_string();
        assert!(error.contains("cobol"), "{error}");
        let twice = "[[policy.shell.rules]]\nid = \"a\"\nkind = \"command\"\nmatch = \"x\"\nrisk = \"low\"\n";
        let error = Config::parse(&format!("{twice}{twice}")).unwrap_err().to_string();
        assert!(error.contains("policy.shell.rules") && error.contains("twice"), "{error}");
        let error = Config::parse("[[agents]]\nid = \"a\"\npolicy_deny_at = \"hgh\"\n").unwrap_err().to_string();
        assert!(error.contains("line 3") && error.contains("a risk is low, medium, high or critical") && !error.contains("none"), "{error}");
        // What could never work is refused, not silently kept.
        let error = Config::parse("[policy.python]\ndeny_at = \"low\"\nwarn_at = \"critical\"\n").unwrap_err().to_string();
        assert!(error.contains("warn_at (critical) is above deny_at (low)"), "{error}");
        let error = Config::parse("[[agents]]\nid = \"a\"\npolicy_deny_at = \"low\"\npolicy_warn_at = \"critical\"\n").unwrap_err().to_string();
        assert!(error.contains("agents[0] (id \"a\"): policy_warn_at (critical) is above policy_deny_at (low)"), "{error}");
        let error = Config::parse("[[policy.python.rules]]\nid = \"c\"\nkind = \"command\"\nmatch = \"curl\"\nrisk = \"low\"\n").unwrap_err().to_string();
        assert!(error.contains("rule c is of kind command, which python code never has"), "{error}");
        let error = Config::parse("[[policy.shell.rules]]\nid = \"c\"\nkind = \"import\"\nmatch = \"os\"\nrisk = \"low\"\n").unwrap_err().to_string();
        assert!(error.contains("of kind import, which shell code never has"), "{error}");
        for never in ["\"os.*.x\"", "\".\"", "\"  subprocess \"", "\"os..path\""] {
            let error = Config::parse(&rule(&format!("kind = \"call\"\nmatch = {never}\nrisk = \"low\""))).unwrap_err().to_string();
            assert!(error.contains("can never match"), "{never}: {error}");
        }
        let error = Config::parse("[[policy.python.rules]]\nid = \"unparsable\"\nkind = \"call\"\nmatch = \"eval\"\nrisk = \"low\"\n").unwrap_err().to_string();
        assert!(error.contains("wsbx's own finding"), "{error}");
    }
}
