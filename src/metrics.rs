//! Prometheus metrics of a wsbx server, in a registry of their own.

use prometheus::{Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};

use crate::result::ExecResult;
use crate::runtimes::RuntimeInfo;

/// Buckets of `wsbx_exec_duration_seconds`: fine below a millisecond (a JavaScript run takes
/// ~1 ms, a Python run ~3 ms) and up to the largest deadline.
const DURATION_BUCKETS: &[f64] = &[
    0.0002, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 300.0,
];

/// The server's metrics.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    exec_total: IntCounterVec,
    exec_duration: HistogramVec,
    fuel_total: IntCounterVec,
    in_flight: IntGauge,
    http_requests: IntCounterVec,
    runtime_info: IntGaugeVec,
    sessions_active: IntGauge,
    sessions_memory: IntGauge,
    session_turns: IntCounterVec,
    agent_runs: IntCounterVec,
    agent_fuel: IntCounterVec,
    agent_refused: IntCounterVec,
    policy_decisions: IntCounterVec,
}

impl Metrics {
    /// Registers every metric in a fresh registry.
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let exec_total = IntCounterVec::new(
            Opts::new("wsbx_exec_total", "Runs finished, by language and status."),
            &["language", "status"],
        )?;
        let exec_duration = HistogramVec::new(
            HistogramOpts::new("wsbx_exec_duration_seconds", "Wall time of runs, guest start to guest end.")
                .buckets(DURATION_BUCKETS.to_vec()),
            &["language"],
        )?;
        let fuel_total = IntCounterVec::new(
            Opts::new("wsbx_exec_fuel_consumed_total", "Fuel burnt by wasm guests."),
            &["language"],
        )?;
        let in_flight = IntGauge::new("wsbx_exec_in_flight", "Runs executing now.")?;
        let http_requests = IntCounterVec::new(
            Opts::new("wsbx_http_requests_total", "HTTP requests answered, by route and status code."),
            &["route", "code"],
        )?;
        let runtime_info = IntGaugeVec::new(
            Opts::new("wsbx_runtime_info", "The pinned runtimes (value 1), with versions and sha256."),
            &["language", "package", "version", "sha256"],
        )?;
        let sessions_active = IntGauge::new("wsbx_sessions_active", "Sessions alive now (not ended).")?;
        let sessions_memory = IntGauge::new(
            "wsbx_sessions_memory_bytes",
            "Linear memory held by the live guests of sessions, as of their last turn.",
        )?;
        let session_turns = IntCounterVec::new(
            Opts::new("wsbx_session_turns_total", "Session turns finished, by language and status."),
            &["language", "status"],
        )?;
        // Agents come from the config file: the `agent` label's values are bounded.
        let agent_runs = IntCounterVec::new(
            Opts::new("wsbx_agent_runs_total", "Runs and session turns finished, by agent and status."),
            &["agent", "status"],
        )?;
        let agent_fuel = IntCounterVec::new(Opts::new("wsbx_agent_fuel_consumed_total", "Fuel burnt, by agent."), &["agent"])?;
        let agent_refused = IntCounterVec::new(
            Opts::new("wsbx_agent_refused_total", "Requests refused by approval, languages or a quota, by agent and quota."),
            &["agent", "quota"],
        )?;
        let policy_decisions = IntCounterVec::new(
            Opts::new("wsbx_policy_decisions_total", "Runs and session turns checked by a policy, by agent and decision (allow, warn, deny)."),
            &["agent", "decision"],
        )?;
        registry.register(Box::new(policy_decisions.clone()))?;
        registry.register(Box::new(agent_runs.clone()))?;
        registry.register(Box::new(agent_fuel.clone()))?;
        registry.register(Box::new(agent_refused.clone()))?;
        registry.register(Box::new(sessions_active.clone()))?;
        registry.register(Box::new(sessions_memory.clone()))?;
        registry.register(Box::new(session_turns.clone()))?;
        registry.register(Box::new(exec_total.clone()))?;
        registry.register(Box::new(exec_duration.clone()))?;
        registry.register(Box::new(fuel_total.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        registry.register(Box::new(http_requests.clone()))?;
        registry.register(Box::new(runtime_info.clone()))?;
        Ok(Metrics {
            registry,
            exec_total,
            exec_duration,
            fuel_total,
            in_flight,
            http_requests,
            runtime_info,
            sessions_active,
            sessions_memory,
            session_turns,
            agent_runs,
            agent_fuel,
            agent_refused,
            policy_decisions,
        })
    }

    /// Records the pinned runtimes in `wsbx_runtime_info`.
    pub fn set_runtimes(&self, runtimes: &[RuntimeInfo]) {
        for r in runtimes {
            self.runtime_info.with_label_values(&[&r.language, &r.package, &r.version, &r.sha256]).set(1);
        }
    }

    /// Counts a run that is starting; the guard counts it finished when dropped.
    pub fn start_run(&self) -> InFlight {
        self.in_flight.inc();
        InFlight(self.in_flight.clone())
    }

    /// Records a finished run.
    pub fn record_run(&self, result: &ExecResult) {
        let language = result.language.as_str();
        self.exec_total.with_label_values(&[language, result.status.as_str()]).inc();
        self.exec_duration.with_label_values(&[language]).observe(result.wall_ms / 1000.0);
        if let Some(fuel) = result.fuel_consumed {
            self.fuel_total.with_label_values(&[language]).inc_by(fuel);
        }
    }

    /// Records a finished session turn (turns are not counted in `wsbx_exec_total`).
    pub fn record_turn(&self, result: &ExecResult) {
        self.session_turns.with_label_values(&[result.language.as_str(), result.status.as_str()]).inc();
        if let Some(fuel) = result.fuel_consumed {
            self.fuel_total.with_label_values(&[result.language.as_str()]).inc_by(fuel);
        }
    }

    /// Records a finished run or turn of `agent`.
    pub fn record_agent_run(&self, agent: &str, result: &ExecResult) {
        self.agent_runs.with_label_values(&[agent, result.status.as_str()]).inc();
        if let Some(verdict) = &result.policy {
            self.policy_decisions.with_label_values(&[agent, verdict.decision.as_str()]).inc();
        }
        if let Some(fuel) = result.fuel_consumed {
            self.agent_fuel.with_label_values(&[agent]).inc_by(fuel);
        }
    }

    /// Counts a request of `agent` refused for `quota` (`approval`, `language`, a quota's name).
    pub fn record_refusal(&self, agent: &str, quota: &str) {
        self.agent_refused.with_label_values(&[agent, quota]).inc();
    }

    /// Sets the sessions gauges: how many are alive and the memory their guests hold.
    pub fn set_sessions(&self, active: usize, memory_bytes: u64) {
        self.sessions_active.set(i64::try_from(active).unwrap_or(i64::MAX));
        self.sessions_memory.set(i64::try_from(memory_bytes).unwrap_or(i64::MAX));
    }

    /// Counts an HTTP response.
    pub fn record_http(&self, route: &str, code: u16) {
        self.http_requests.with_label_values(&[route, &code.to_string()]).inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail on I/O; a metric family that fails to encode is skipped.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// A run in flight; decrements `wsbx_exec_in_flight` when dropped.
pub struct InFlight(IntGauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}
