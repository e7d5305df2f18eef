//! A change's way through tandem, from journal events alone: commit →
//! pipeline run → its stages (result, duration) → approvals (who, when) →
//! the release it made → its deployment to each environment → incidents
//! that suspected it → who resolved them, when. `tandem trace` starts from
//! a commit, a release or an incident; all three lead to the same tree.

use std::collections::BTreeMap;

use serde::Serialize;
use tandem_core::journal::Event;

#[derive(Clone, Debug, Default, Serialize)]
pub struct Trace {
    pub service: String,
    pub commit: Option<String>,
    pub author: Option<String>,
    pub committed_at: Option<String>,
    pub runs: Vec<RunTrace>,
    /// Releases the trace reaches that no run made (deployed by hand).
    pub releases: Vec<ReleaseTrace>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct RunTrace {
    pub run: String,
    pub queued_at: String,
    /// `succeeded`, `failed`, `cancelled`, … or `running`.
    pub status: String,
    pub stages: Vec<StageTrace>,
    pub approvals: Vec<Approval>,
    pub release: Option<ReleaseTrace>,
}

#[derive(Clone, Debug, Serialize)]
pub struct StageTrace {
    pub stage: String,
    pub status: String,
    pub at: String,
    pub duration_ms: Option<u64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Approval {
    pub by: String,
    pub at: String,
    /// `approved` or `rejected`.
    pub decision: String,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ReleaseTrace {
    pub release: String,
    pub deployments: Vec<DeploymentTrace>,
    pub incidents: Vec<IncidentTrace>,
}

#[derive(Clone, Debug, Serialize)]
pub struct DeploymentTrace {
    /// `production` or the environment's name.
    pub env: String,
    /// `release.succeeded`, `release.failed`, `rollback.succeeded`, …
    pub outcome: String,
    pub at: String,
    pub by: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct IncidentTrace {
    pub incident: String,
    pub kind: String,
    pub summary: String,
    pub opened_at: String,
    pub resolved_at: Option<String>,
    pub resolved_by: Option<String>,
}

/// Where a trace starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum From {
    /// A commit (a prefix of its hash, at least 7 characters).
    Commit(String),
    /// A service's release (`r3`).
    Release {
        service: String,
        release: String,
    },
    Incident(String),
}

fn text(v: &serde_json::Value) -> Option<String> {
    v.as_str().map(str::to_owned)
}

/// The release's deployments and the incidents that suspected it.
fn release_trace(events: &[Event], service: &str, release: &str) -> ReleaseTrace {
    let mut incidents: BTreeMap<String, IncidentTrace> = BTreeMap::new();
    let mut deployments = Vec::new();
    for e in events
        .iter()
        .filter(|e| e.subject.get("service").is_some_and(|s| s == service))
    {
        match e.kind.as_str() {
            "release.succeeded" | "release.failed" | "rollback.succeeded" | "rollback.failed"
                if e.subject.get("release").is_some_and(|r| r == release) =>
            {
                deployments.push(DeploymentTrace {
                    env: e
                        .subject
                        .get("env")
                        .cloned()
                        .unwrap_or_else(|| "production".into()),
                    outcome: e.kind.clone(),
                    at: e.ts.clone(),
                    by: e.actor.clone(),
                });
            }
            "incident.opened" if e.payload["suspect_release"].as_str() == Some(release) => {
                let id = e.subject.get("incident").cloned().unwrap_or_default();
                incidents.insert(
                    id.clone(),
                    IncidentTrace {
                        incident: id,
                        kind: text(&e.payload["kind"]).unwrap_or_default(),
                        summary: text(&e.payload["summary"]).unwrap_or_default(),
                        opened_at: e.ts.clone(),
                        resolved_at: None,
                        resolved_by: None,
                    },
                );
            }
            "incident.resolved" => {
                if let Some(i) = e
                    .subject
                    .get("incident")
                    .and_then(|id| incidents.get_mut(id))
                {
                    i.resolved_at = Some(e.ts.clone());
                    i.resolved_by = Some(e.actor.clone());
                }
            }
            _ => {}
        }
    }
    ReleaseTrace {
        release: release.to_owned(),
        deployments,
        incidents: incidents.into_values().collect(),
    }
}

fn run_trace(events: &[Event], service: &str, run: &str) -> RunTrace {
    let mut t = RunTrace {
        run: run.to_owned(),
        status: "running".into(),
        ..RunTrace::default()
    };
    let mine = events.iter().filter(|e| {
        e.subject.get("service").is_some_and(|s| s == service)
            && e.subject.get("run").is_some_and(|r| r == run)
    });
    for e in mine {
        match e.kind.as_str() {
            "run.queued" => t.queued_at = e.ts.clone(),
            "run.approved" | "run.rejected" => t.approvals.push(Approval {
                by: e.actor.clone(),
                at: e.ts.clone(),
                decision: e.kind.trim_start_matches("run.").to_owned(),
            }),
            k if k.starts_with("run.stage.") => {
                let status = k.trim_start_matches("run.stage.").to_owned();
                let stage = text(&e.payload["stage"]).unwrap_or_default();
                if status == "started" {
                    continue;
                }
                if stage == "release"
                    && let Some(r) = e.payload["release"].as_str()
                {
                    t.release = Some(release_trace(events, service, r));
                }
                t.stages.push(StageTrace {
                    stage,
                    status,
                    at: e.ts.clone(),
                    duration_ms: e.payload["duration_ms"].as_u64(),
                });
            }
            "run.succeeded" | "run.failed" | "run.cancelled" | "run.interrupted"
            | "run.superseded" => {
                t.status = e.kind.trim_start_matches("run.").to_owned();
            }
            _ => {}
        }
    }
    t
}

/// The trace from `from` through `events` (any superset of the service's
/// events, in journal order); `None` if nothing is found to start from.
pub fn trace(events: &[Event], from: &From) -> Option<Trace> {
    // What it leads to: the service, and the runs or the release.
    let (service, release) = match from {
        From::Commit(prefix) => {
            let queued = events.iter().find(|e| {
                e.kind == "run.queued"
                    && e.payload["commit"]
                        .as_str()
                        .is_some_and(|c| c.starts_with(prefix.as_str()))
            })?;
            (queued.subject.get("service")?.clone(), None)
        }
        From::Release { service, release } => (service.clone(), Some(release.clone())),
        From::Incident(id) => {
            let opened = events.iter().find(|e| {
                e.kind == "incident.opened" && e.subject.get("incident").is_some_and(|i| i == id)
            })?;
            let service = opened.subject.get("service")?.clone();
            let release = text(&opened.payload["suspect_release"])
                .or_else(|| text(&opened.payload["release"]))?;
            (service, Some(release))
        }
    };
    let of_service = |e: &&Event| e.subject.get("service").is_some_and(|s| *s == service);
    // The commit: given, or that of the run that made the release.
    let commit = match (from, &release) {
        (From::Commit(prefix), _) => events
            .iter()
            .filter(of_service)
            .find(|e| {
                e.kind == "run.queued"
                    && e.payload["commit"]
                        .as_str()
                        .is_some_and(|c| c.starts_with(prefix.as_str()))
            })
            .and_then(|e| text(&e.payload["commit"])),
        (_, Some(r)) => {
            let run = events.iter().filter(of_service).find(|e| {
                e.kind == "run.stage.succeeded"
                    && e.payload["stage"] == "release"
                    && e.payload["release"].as_str() == Some(r.as_str())
            });
            run.and_then(|e| text(&e.payload["commit"]))
        }
        _ => None,
    };
    let mut t = Trace {
        service: service.clone(),
        ..Trace::default()
    };
    if let Some(commit) = &commit {
        for queued in events.iter().filter(of_service).filter(|e| {
            e.kind == "run.queued" && e.payload["commit"].as_str() == Some(commit.as_str())
        }) {
            if let Some(run) = queued.subject.get("run") {
                // The run's later events carry the commit's author and time
                // (read after it was queued).
                let about = events
                    .iter()
                    .filter(of_service)
                    .find(|e| e.subject.get("run") == Some(run) && e.payload["author"].is_string());
                if let Some(e) = about {
                    t.author = text(&e.payload["author"]);
                    t.committed_at = text(&e.payload["committed_at"]);
                }
                t.runs.push(run_trace(events, &service, run));
            }
        }
        t.commit = Some(commit.clone());
    }
    // A release no run made (deployed from a directory): on its own.
    if let Some(r) = &release
        && !t
            .runs
            .iter()
            .any(|run| run.release.as_ref().is_some_and(|x| &x.release == r))
    {
        t.releases.push(release_trace(events, &service, r));
    }
    Some(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(
        kind: &str,
        actor: &str,
        subject: &[(&str, &str)],
        payload: serde_json::Value,
    ) -> Event {
        crate::testing::event(0, "2026-11-05T10:00:00Z", actor, kind, subject, payload)
    }

    #[test]
    fn a_commit_a_release_and_an_incident_lead_to_the_same_tree() {
        let run = [("service", "shop"), ("run", "4")];
        let commit = serde_json::json!({ "commit": "3f9c1a2b7d", "author": "Ann", "committed_at": "2026-11-05T09:00:00Z" });
        let with = |extra: serde_json::Value| crate::testing::merged(&commit, extra);
        let events = vec![
            event("run.queued", "system:poller", &run, commit.clone()),
            event(
                "run.stage.succeeded",
                "system:scheduler",
                &run,
                with(serde_json::json!({ "stage": "test", "duration_ms": 1200 })),
            ),
            event("run.approved", "user:bob", &run, serde_json::json!({})),
            event(
                "run.stage.succeeded",
                "system:scheduler",
                &run,
                with(serde_json::json!({ "stage": "release", "release": "r7" })),
            ),
            event(
                "release.succeeded",
                "system:scheduler",
                &[("service", "shop"), ("release", "r7"), ("env", "staging")],
                serde_json::json!({}),
            ),
            event(
                "release.succeeded",
                "system:scheduler",
                &[("service", "shop"), ("release", "r7")],
                serde_json::json!({}),
            ),
            event("run.succeeded", "system:scheduler", &run, commit.clone()),
            event(
                "incident.opened",
                "system:monitor",
                &[("service", "shop"), ("incident", "9")],
                serde_json::json!({ "kind": "error-ratio", "summary": "5xx", "suspect_release": "r7" }),
            ),
            event(
                "incident.resolved",
                "user:ann",
                &[("service", "shop"), ("incident", "9")],
                serde_json::json!({}),
            ),
            // Another service's run of another commit: not in it.
            event(
                "run.queued",
                "system:poller",
                &[("service", "blog"), ("run", "5")],
                serde_json::json!({ "commit": "aaaaaaaaaa" }),
            ),
        ];
        let froms = [
            From::Commit("3f9c1a2".into()),
            From::Release {
                service: "shop".into(),
                release: "r7".into(),
            },
            From::Incident("9".into()),
        ];
        let traces: Vec<Trace> = froms
            .iter()
            .map(|f| trace(&events, f).expect("found"))
            .collect();
        for t in &traces {
            assert_eq!(t.commit.as_deref(), Some("3f9c1a2b7d"));
            assert_eq!(t.runs.len(), 1);
            let run = &t.runs[0];
            assert_eq!(run.status, "succeeded");
            assert_eq!(
                run.stages
                    .iter()
                    .map(|s| s.stage.as_str())
                    .collect::<Vec<_>>(),
                ["test", "release"]
            );
            assert_eq!(run.stages[0].duration_ms, Some(1200));
            assert_eq!(run.approvals[0].by, "user:bob");
            let release = run.release.as_ref().expect("release");
            assert_eq!(
                release
                    .deployments
                    .iter()
                    .map(|d| d.env.as_str())
                    .collect::<Vec<_>>(),
                ["staging", "production"]
            );
            assert_eq!(
                release.incidents[0].resolved_by.as_deref(),
                Some("user:ann")
            );
            assert!(t.releases.is_empty());
        }
        assert!(trace(&events, &From::Commit("0000000".into())).is_none());
        assert!(trace(&events, &From::Incident("10".into())).is_none());
    }
}
