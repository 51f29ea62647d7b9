//! Who is calling, and whether they may run now: identity from the bearer token, approval,
//! per-agent languages, ceilings and quotas, and each agent's usage.
//!
//! Quotas are sliding windows counted in buckets of a sixtieth of the window (one second for
//! `runs_per_minute`, one minute for `fuel_per_hour`): a run is counted when it is admitted,
//! its fuel when it ends. `fuel_per_hour` is a hard budget: an admitted run reserves its fuel
//! limit, lowered to what the window has left after what was burnt and what runs in flight
//! reserved; when nothing is left, runs are refused until enough of the window has passed.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::{parse_sha256, token_sha256, AgentConfig, Config};
use crate::policy::Policy;
use crate::request::{Language, Limits};

/// The agent a server's callers are when it has no tokens at all, and the agent the single
/// `--token` names.
pub const DEFAULT_AGENT: &str = "default";

/// Who sent a request.
#[derive(Debug, Clone)]
pub enum Caller {
    /// The operator: sees and kills every run, manages agents; runs nothing.
    Admin,
    /// An agent: runs code, sees and kills its own runs and sessions.
    Agent(Arc<Agent>),
}

impl Caller {
    /// The agent, unless the caller is the admin.
    pub fn agent(&self) -> Option<&Arc<Agent>> {
        match self {
            Caller::Admin => None,
            Caller::Agent(agent) => Some(agent),
        }
    }

    /// Whether the caller may see or kill what `agent` runs.
    pub fn may_manage(&self, agent: &str) -> bool {
        match self {
            Caller::Admin => true,
            Caller::Agent(own) => own.id == agent,
        }
    }
}

/// The agents of a server.
#[derive(Debug)]
pub struct Agents {
    agents: BTreeMap<String, Arc<Agent>>,
    tokens: HashMap<[u8; 32], String>,
    admin: Option<[u8; 32]>,
    /// The agent `default` when the file has none: see [`Agents::local`].
    operator: Arc<Agent>,
}

impl Agents {
    /// The agents of `config`; `token` (the `--token` flag) is the agent `default`'s token,
    /// as is `[server] token_sha256`. Without any token, every caller is `default`.
    pub fn new(config: &Config, token: Option<&str>) -> Result<Agents, String> {
        let mut agents = BTreeMap::new();
        let mut tokens = HashMap::new();
        let policy = config.policy();
        for entry in &config.agents {
            if let Some(hash) = &entry.token_sha256 {
                let hash = parse_sha256(hash).map_err(|e| format!("agent {}: {e}", entry.id))?;
                if tokens.insert(hash, entry.id.clone()).is_some() {
                    return Err(format!("agent {} has the same token as another agent", entry.id));
                }
            }
            agents.insert(entry.id.clone(), Arc::new(Agent::new(entry.clone(), policy.as_ref())));
        }
        let default_token = match (token, &config.server.token_sha256) {
            (Some(token), _) => Some(token_sha256(token)),
            (None, Some(hash)) => Some(parse_sha256(hash)?),
            (None, None) => None,
        };
        if let Some(hash) = default_token {
            if tokens.get(&hash).is_some_and(|id| id != DEFAULT_AGENT) {
                return Err("the server's token is also an agent's token".into());
            }
            tokens.insert(hash, DEFAULT_AGENT.into());
        }
        let admin = config.admin.token_sha256.as_deref().map(parse_sha256).transpose()?;
        if admin.is_some_and(|a| tokens.contains_key(&a)) {
            return Err("the admin token is also an agent's token".into());
        }
        let operator = Arc::new(Agent::new(AgentConfig { id: DEFAULT_AGENT.into(), approved: true, ..AgentConfig::default() }, policy.as_ref()));
        let open = tokens.is_empty() && admin.is_none();
        if open || default_token.is_some() {
            agents.entry(DEFAULT_AGENT.to_owned()).or_insert_with(|| operator.clone());
        }
        Ok(Agents { agents, tokens, admin, operator })
    }

    /// The agent a local caller runs as — `wsbx exec`, `wsbx check` and `wsbx mcp` on stdio,
    /// which have no token: the agent `id`, or `default` when none is named. A file without an
    /// agent `default` still has one for them: the operator on their own machine, approved,
    /// under the file's limits and policy, without quotas. `None` when `id` is no agent.
    ///
    /// ```
    /// let config = wsbx::config::Config::parse("[[agents]]\nid = \"a\"\ntoken_sha256 = \"00000000000000000000000000000000000000000000000000000000000000aa\"\n").unwrap();
    /// let agents = wsbx::agents::Agents::new(&config, None).unwrap();
    /// assert!(agents.get("default").is_none(), "over HTTP, a token names every caller");
    /// assert_eq!(agents.local(None).unwrap().id, "default");
    /// assert_eq!(agents.local(Some("default")).unwrap().id, "default");
    /// assert_eq!(agents.local(Some("a")).unwrap().id, "a");
    /// assert!(agents.local(Some("b")).is_none());
    /// ```
    pub fn local(&self, id: Option<&str>) -> Option<Arc<Agent>> {
        let id = id.unwrap_or(DEFAULT_AGENT);
        self.get(id).or_else(|| (id == DEFAULT_AGENT).then(|| self.operator.clone()))
    }

    /// Whether requests need a token (some token is configured).
    pub fn require_token(&self) -> bool {
        !self.tokens.is_empty() || self.admin.is_some()
    }

    /// The caller a bearer token names; `None` when it names no one. Without any configured
    /// token every caller is the agent `default`.
    ///
    /// Tokens are compared by their sha256: the lookup's timing says nothing useful about a
    /// token.
    pub fn identify(&self, bearer: Option<&str>) -> Option<Caller> {
        if !self.require_token() {
            return self.get(DEFAULT_AGENT).map(Caller::Agent);
        }
        let hash = token_sha256(bearer?);
        if self.admin.is_some_and(|admin| bool::from(subtle::ConstantTimeEq::ct_eq(&admin[..], &hash[..]))) {
            return Some(Caller::Admin);
        }
        self.tokens.get(&hash).and_then(|id| self.get(id)).map(Caller::Agent)
    }

    /// The agent `id`.
    pub fn get(&self, id: &str) -> Option<Arc<Agent>> {
        self.agents.get(id).cloned()
    }

    /// Every agent, by id.
    pub fn all(&self) -> impl Iterator<Item = &Arc<Agent>> {
        self.agents.values()
    }

    /// Whether an admin token is configured.
    pub fn has_admin(&self) -> bool {
        self.admin.is_some()
    }
}

/// One agent: its configuration, approval and usage.
#[derive(Debug)]
pub struct Agent {
    /// Its id.
    pub id: String,
    config: AgentConfig,
    approved: AtomicBool,
    usage: Mutex<Usage>,
    policy: Option<Policy>,
}

#[derive(Debug)]
struct Usage {
    running: u32,
    /// Fuel reserved by the runs admitted and not yet ended.
    reserved: u64,
    sessions: u32,
    runs: Window,
    fuel: Window,
    runs_total: u64,
    fuel_total: u64,
    refused_total: u64,
}

/// Why an agent may not do what it asked, as the HTTP status and message to answer with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// 403 (not approved, a language it may not use) or 429 (a quota).
    pub code: u16,
    /// Names the agent and the quota.
    pub message: String,
    /// For 429: seconds until it may try again.
    pub retry_after: Option<u64>,
    /// The metric label of the reason: `approval`, `language`, `max_concurrent`,
    /// `runs_per_minute`, `fuel_per_hour`, `max_sessions`.
    pub reason: &'static str,
}

impl Agent {
    fn new(config: AgentConfig, policy: Option<&Policy>) -> Agent {
        Agent {
            policy: policy.map(|p| p.with_thresholds(config.policy_deny_at, config.policy_warn_at)),
            id: config.id.clone(),
            approved: AtomicBool::new(config.approved),
            usage: Mutex::new(Usage {
                running: 0,
                reserved: 0,
                sessions: 0,
                runs: Window::new(Duration::from_secs(60)),
                fuel: Window::new(Duration::from_secs(3600)),
                runs_total: 0,
                fuel_total: 0,
                refused_total: 0,
            }),
            config,
        }
    }

    fn usage(&self) -> MutexGuard<'_, Usage> {
        self.usage.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The policy its runs are checked against: the config's, with its own thresholds;
    /// `None` without a `[policy]` section.
    pub fn policy(&self) -> Option<&Policy> {
        self.policy.as_ref()
    }

    /// Whether it may run code now.
    pub fn approved(&self) -> bool {
        self.approved.load(Ordering::SeqCst)
    }

    /// Approves or revokes it.
    pub fn set_approved(&self, approved: bool) {
        self.approved.store(approved, Ordering::SeqCst);
    }

    /// Its ceilings: `server`'s, lowered to its own.
    pub fn ceiling(&self, server: &Limits) -> Limits {
        self.config.ceiling.over(server).lowered_to(server)
    }

    /// Whether it may use `language` at all (approval and its languages).
    fn may_use(&self, language: Language) -> Result<(), Refusal> {
        if !self.approved() {
            return Err(self.refuse(403, "approval", format!("agent {} is not approved (an admin may approve it)", self.id), None));
        }
        if self.config.languages.as_ref().is_some_and(|l| !l.contains(&language)) {
            return Err(self.refuse(403, "language", format!("agent {} may not run {language}", self.id), None));
        }
        Ok(())
    }

    fn refuse(&self, code: u16, reason: &'static str, message: String, retry_after: Option<u64>) -> Refusal {
        Refusal { code, message, retry_after, reason }
    }

    /// Admits one run (or turn) of `language` that may burn `fuel`, counting it against the
    /// agent's quotas; the ticket says how much fuel it may burn ([`Ticket::fuel`]: `fuel`, or
    /// less when `fuel_per_hour` has less left) and gives its place back when dropped.
    pub fn admit(self: &Arc<Self>, language: Language, fuel: u64) -> Result<Ticket, Refusal> {
        let refused = |r: Refusal| {
            self.usage().refused_total += 1;
            r
        };
        self.may_use(language).map_err(refused)?;
        let now = Instant::now();
        let mut usage = self.usage();
        self.has_room(&mut usage)?;
        if let Some(max) = self.config.runs_per_minute {
            if usage.runs.sum(now) >= u64::from(max) {
                usage.refused_total += 1;
                let wait = usage.runs.until_below(now, u64::from(max));
                let message = format!("agent {} is over its quota runs_per_minute = {max}", self.id);
                return Err(self.refuse(429, "runs_per_minute", message, Some(wait)));
            }
        }
        let mut granted = fuel;
        if let Some(max) = self.config.fuel_per_hour {
            let used = usage.fuel.sum(now).saturating_add(usage.reserved);
            if used >= max {
                usage.refused_total += 1;
                // What runs in flight reserved comes back when they end: a second at least.
                let wait = if usage.fuel.sum(now) >= max { usage.fuel.until_below(now, max) } else { 1 };
                let message = format!("agent {} is over its quota fuel_per_hour = {max}", self.id);
                return Err(self.refuse(429, "fuel_per_hour", message, Some(wait)));
            }
            granted = granted.min(max - used);
        }
        usage.running += 1;
        usage.reserved = usage.reserved.saturating_add(granted);
        usage.runs.add(now, 1);
        usage.runs_total += 1;
        Ok(Ticket { agent: self.clone(), fuel: granted })
    }

    /// Admits one policy check of `language`: approval, its languages and `max_concurrent`
    /// (a check costs CPU as a run does, up to its budget), holding a place among its runs
    /// until the ticket drops. A check is not a run: it counts toward no other quota.
    pub fn admit_check(self: &Arc<Self>, language: Language) -> Result<Ticket, Refusal> {
        if let Err(refusal) = self.may_use(language) {
            self.usage().refused_total += 1;
            return Err(refusal);
        }
        let mut usage = self.usage();
        self.has_room(&mut usage)?;
        usage.running += 1;
        Ok(Ticket { agent: self.clone(), fuel: 0 })
    }

    /// Whether one more run or check fits in `max_concurrent` (a refusal is counted).
    fn has_room(&self, usage: &mut Usage) -> Result<(), Refusal> {
        match self.config.max_concurrent {
            Some(max) if usage.running >= max => {
                usage.refused_total += 1;
                let message = format!("agent {} is over its quota max_concurrent = {max}: that many runs and checks are executing", self.id);
                Err(self.refuse(429, "max_concurrent", message, Some(1)))
            }
            _ => Ok(()),
        }
    }

    /// Admits one session of `language` (approval, languages, `max_sessions`, and
    /// `fuel_per_hour` not used up); the ticket gives its place back when dropped.
    pub fn admit_session(self: &Arc<Self>, language: Language) -> Result<SessionTicket, Refusal> {
        if let Err(refusal) = self.may_use(language) {
            self.usage().refused_total += 1;
            return Err(refusal);
        }
        let mut usage = self.usage();
        // A session whose turns would all be refused would only hold a guest's memory.
        if let Some(max) = self.config.fuel_per_hour {
            let now = Instant::now();
            if usage.fuel.sum(now) >= max {
                usage.refused_total += 1;
                let wait = usage.fuel.until_below(now, max);
                let message = format!("agent {} is over its quota fuel_per_hour = {max}", self.id);
                return Err(self.refuse(429, "fuel_per_hour", message, Some(wait)));
            }
        }
        if let Some(max) = self.config.max_sessions {
            if usage.sessions >= max {
                usage.refused_total += 1;
                let message = format!("agent {} is over its quota max_sessions = {max}: close one of its sessions first", self.id);
                return Err(self.refuse(429, "max_sessions", message, Some(1)));
            }
        }
        usage.sessions += 1;
        Ok(SessionTicket { agent: self.clone() })
    }

    /// What it has used, against its quotas.
    pub fn view(&self) -> AgentView {
        let now = Instant::now();
        let mut usage = self.usage();
        let (runs_last_minute, fuel_last_hour) = (usage.runs.sum(now), usage.fuel.sum(now));
        let usage = &mut *usage;
        AgentView {
            id: self.id.clone(),
            approved: self.approved(),
            languages: self.config.languages.clone().unwrap_or_else(|| Language::ALL.to_vec()),
            running: usage.running,
            sessions: usage.sessions,
            runs_last_minute,
            fuel_last_hour,
            runs_total: usage.runs_total,
            fuel_total: usage.fuel_total,
            refused_total: usage.refused_total,
            quotas: Quotas {
                max_concurrent: self.config.max_concurrent,
                runs_per_minute: self.config.runs_per_minute,
                fuel_per_hour: self.config.fuel_per_hour,
                max_sessions: self.config.max_sessions,
            },
        }
    }
}

/// An agent as `GET /v1/agents` shows it: approval, usage and quotas.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct AgentView {
    /// Its id.
    pub id: String,
    /// Whether it may run code.
    pub approved: bool,
    /// The languages it may run.
    pub languages: Vec<Language>,
    /// Runs and turns executing now.
    pub running: u32,
    /// Sessions it holds.
    pub sessions: u32,
    /// Runs and turns started in the last 60 seconds.
    pub runs_last_minute: u64,
    /// Fuel burnt in the last hour.
    pub fuel_last_hour: u64,
    /// Runs and turns since the server started.
    pub runs_total: u64,
    /// Fuel burnt since the server started.
    pub fuel_total: u64,
    /// Requests refused by approval, languages or quotas since the server started.
    pub refused_total: u64,
    /// Its quotas (`null`: none).
    pub quotas: Quotas,
}

/// An agent's quotas.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Quotas {
    /// `max_concurrent`.
    pub max_concurrent: Option<u32>,
    /// `runs_per_minute`.
    pub runs_per_minute: Option<u32>,
    /// `fuel_per_hour`.
    pub fuel_per_hour: Option<u64>,
    /// `max_sessions`.
    pub max_sessions: Option<u32>,
}

/// A run's place in its agent's quotas, held while it runs.
#[derive(Debug)]
pub struct Ticket {
    agent: Arc<Agent>,
    fuel: u64,
}

impl Ticket {
    /// The agent.
    pub fn agent(&self) -> &Arc<Agent> {
        &self.agent
    }

    /// The fuel the run may burn: its own limit, lowered to what `fuel_per_hour` had left.
    pub fn fuel(&self) -> u64 {
        self.fuel
    }

    /// Charges what `result`'s run burnt to its agent (see [`fuel_burnt`]).
    pub fn charge(&self, result: &crate::ExecResult) {
        let fuel = fuel_burnt(result, self.fuel);
        let mut usage = self.agent.usage();
        usage.fuel.add(Instant::now(), fuel);
        usage.fuel_total = usage.fuel_total.saturating_add(fuel);
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut usage = self.agent.usage();
        usage.running = usage.running.saturating_sub(1);
        usage.reserved = usage.reserved.saturating_sub(self.fuel);
    }
}

/// Fuel a wasm guest burns per millisecond on the reference machine (about 8 billion a second).
const FUEL_PER_MS: f64 = 8_000_000.0;

/// The fuel a quota charges for `result`'s run, whose limit was `limit`: what it reports; a
/// shell job, which burns no fuel, its CPU time at the reference rate, at most its limit.
/// A run that a timeout or a kill interrupted is charged at least its wall time at that rate
/// (at most its limit): wasmtime's count can be stale then (it keeps it in a register in a
/// tight loop and does not write it back before the interrupt), and a shell job's processes
/// that the cut ended were never reaped into its CPU time. An agent cannot burn CPU for free,
/// by timeouts or with shell jobs.
pub fn fuel_burnt(result: &crate::ExecResult, limit: u64) -> u64 {
    let at_rate = |ms: f64| (ms.max(0.0) * FUEL_PER_MS).min(u64::MAX as f64) as u64;
    let reported = match (result.fuel_consumed, result.cpu_ms) {
        (Some(fuel), _) => fuel,
        (None, Some(cpu_ms)) => at_rate(cpu_ms).min(limit),
        (None, None) => return 0,
    };
    match result.status {
        crate::Status::Timeout | crate::Status::Killed => reported.max(at_rate(result.wall_ms).min(limit)),
        _ => reported,
    }
}

/// A session's place in its agent's `max_sessions`, held while it lives.
#[derive(Debug)]
pub struct SessionTicket {
    agent: Arc<Agent>,
}

impl Drop for SessionTicket {
    fn drop(&mut self) {
        let mut usage = self.agent.usage();
        usage.sessions = usage.sessions.saturating_sub(1);
    }
}

/// A sliding window of amounts, in 60 buckets.
#[derive(Debug)]
struct Window {
    bucket: Duration,
    origin: Instant,
    /// (bucket number since `origin`, amount), oldest first.
    buckets: VecDeque<(u64, u64)>,
}

impl Window {
    const BUCKETS: u32 = 60;

    fn new(span: Duration) -> Window {
        Window { bucket: span / Self::BUCKETS, origin: Instant::now(), buckets: VecDeque::new() }
    }

    fn number(&self, at: Instant) -> u64 {
        let elapsed = at.saturating_duration_since(self.origin).as_nanos() / self.bucket.as_nanos().max(1);
        u64::try_from(elapsed).unwrap_or(u64::MAX)
    }

    /// Drops the buckets that have left the window at `now`.
    fn slide(&mut self, now: Instant) {
        let current = self.number(now);
        while self.buckets.front().is_some_and(|(n, _)| n + u64::from(Self::BUCKETS) <= current) {
            self.buckets.pop_front();
        }
    }

    fn add(&mut self, now: Instant, amount: u64) {
        self.slide(now);
        let current = self.number(now);
        match self.buckets.back_mut() {
            Some((n, sum)) if *n == current => *sum = sum.saturating_add(amount),
            _ => self.buckets.push_back((current, amount)),
        }
    }

    fn sum(&mut self, now: Instant) -> u64 {
        self.slide(now);
        self.buckets.iter().fold(0u64, |a, (_, s)| a.saturating_add(*s))
    }

    /// Whole seconds from `now` until the window's sum falls below `max` (at least 1).
    fn until_below(&mut self, now: Instant, max: u64) -> u64 {
        self.slide(now);
        let mut sum = self.sum(now);
        let current = self.number(now);
        for (n, amount) in &self.buckets {
            sum = sum.saturating_sub(*amount);
            if sum < max {
                let leaves = (n + u64::from(Self::BUCKETS)).saturating_sub(current);
                let wait = self.bucket.saturating_mul(u32::try_from(leaves).unwrap_or(u32::MAX));
                return wait.as_secs().max(1);
            }
        }
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agents(text: &str) -> Agents {
        Agents::new(&Config::parse(text).unwrap(), None).unwrap()
    }

    #[test]
    fn tokens_name_agents_and_nothing_else() {
        let agents = agents(&format!(
            "[admin]\ntoken_sha256 = \"{}\"\n[[agents]]\nid = \"a\"\ntoken_sha256 = \"{}\"\n",
            hex::encode(token_sha256("root")),
            hex::encode(token_sha256("ta"))
        ));
        assert!(matches!(agents.identify(Some("root")), Some(Caller::Admin)));
        assert_eq!(agents.identify(Some("ta")).and_then(|c| c.agent().map(|a| a.id.clone())).as_deref(), Some("a"));
        assert!(agents.identify(Some("tb")).is_none());
        assert!(agents.identify(None).is_none());
        assert!(agents.get(DEFAULT_AGENT).is_none(), "with tokens, no one is `default` by omission");
    }

    #[test]
    fn without_tokens_everyone_is_default() {
        let agents = agents("");
        assert_eq!(agents.identify(None).and_then(|c| c.agent().map(|a| a.id.clone())).as_deref(), Some(DEFAULT_AGENT));
    }

    #[test]
    fn quotas_trip_with_their_names() {
        let agents = agents("[[agents]]\nid = \"a\"\nmax_concurrent = 1\nruns_per_minute = 2\nlanguages = [\"python\"]\n");
        let a = agents.get("a").unwrap();
        let first = a.admit(Language::Python, 10).unwrap();
        let busy = a.admit(Language::Python, 10).unwrap_err();
        assert_eq!((busy.code, busy.reason), (429, "max_concurrent"));
        drop(first);
        drop(a.admit(Language::Python, 10).unwrap());
        let over = a.admit(Language::Python, 10).unwrap_err();
        assert_eq!((over.code, over.reason), (429, "runs_per_minute"));
        assert!(over.message.contains("runs_per_minute = 2"), "{}", over.message);
        assert!((1..=60).contains(&over.retry_after.unwrap()));
        assert_eq!(a.admit(Language::Shell, 10).unwrap_err().reason, "language");
        a.set_approved(false);
        assert_eq!(a.admit(Language::Python, 10).unwrap_err().code, 403);
        assert_eq!(a.view().refused_total, 4);
    }

    fn ran(fuel: u64, status: crate::Status, wall_ms: f64) -> crate::ExecResult {
        crate::ExecResult { fuel_consumed: Some(fuel), wall_ms, status, ..crate::ExecResult::not_run(Language::Python, status, String::new()) }
    }

    #[test]
    fn fuel_per_hour_is_a_hard_budget_shared_by_runs_in_flight() {
        let agents = agents("[[agents]]\nid = \"a\"\nfuel_per_hour = 1000\n");
        let a = agents.get("a").unwrap();
        let first = a.admit(Language::Python, 600).unwrap();
        let second = a.admit(Language::Python, 600).unwrap();
        assert_eq!((first.fuel(), second.fuel()), (600, 400), "the second run gets what is left");
        assert_eq!(a.admit(Language::Python, 600).unwrap_err().reason, "fuel_per_hour", "all of it is reserved");
        first.charge(&ran(100, crate::Status::Ok, 1.0));
        drop(first);
        let third = a.admit(Language::Python, 600).unwrap();
        assert_eq!(third.fuel(), 500, "what the first run did not burn came back");
        second.charge(&ran(400, crate::Status::OutOfFuel, 1.0));
        drop(second);
        third.charge(&ran(500, crate::Status::OutOfFuel, 1.0));
        drop(third);
        let over = a.admit(Language::Python, 1).unwrap_err();
        assert!(over.retry_after.unwrap() >= 60, "the oldest fuel leaves the window in about an hour");
        assert_eq!(a.view().fuel_last_hour, 1000);
    }

    #[test]
    fn an_interrupted_run_is_charged_at_least_its_time() {
        assert_eq!(fuel_burnt(&ran(198_300, crate::Status::Timeout, 2000.0), u64::MAX), 16_000_000_000);
        assert_eq!(fuel_burnt(&ran(198_300, crate::Status::Killed, 2000.0), 1_000_000), 1_000_000, "never past its limit");
        assert_eq!(fuel_burnt(&ran(198_300, crate::Status::Ok, 2000.0), u64::MAX), 198_300);
    }

    /// An outside review: shell jobs never counted against `fuel_per_hour`.
    #[test]
    fn a_shell_job_is_charged_its_cpu_time_and_a_cut_one_at_least_its_wall_time() {
        let shell = |cpu_ms: f64, status: crate::Status, wall_ms: f64| crate::ExecResult {
            cpu_ms: Some(cpu_ms),
            wall_ms,
            ..crate::ExecResult::not_run(Language::Shell, status, String::new())
        };
        assert_eq!(fuel_burnt(&shell(1500.0, crate::Status::Ok, 1600.0), u64::MAX), 12_000_000_000);
        assert_eq!(fuel_burnt(&shell(1.0, crate::Status::Ok, 5000.0), u64::MAX), 8_000_000, "sleeping is not charged");
        assert_eq!(fuel_burnt(&shell(1.0, crate::Status::Timeout, 2000.0), u64::MAX), 16_000_000_000);
        assert_eq!(fuel_burnt(&shell(9000.0, crate::Status::Error, 5000.0), 1_000), 1_000, "never past its limit");
        let never_ran = crate::ExecResult::not_run(Language::Shell, crate::Status::Rejected, String::new());
        assert_eq!(fuel_burnt(&never_ran, u64::MAX), 0);
    }

    #[test]
    fn a_window_forgets_what_left_it() {
        let mut window = Window::new(Duration::from_millis(600));
        let start = Instant::now();
        window.add(start, 3);
        assert_eq!(window.sum(start), 3);
        assert_eq!(window.sum(start + Duration::from_millis(700)), 0);
    }
}
