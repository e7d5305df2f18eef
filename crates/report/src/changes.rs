//! Change evidence: one row per production change of a customer's
//! services in a month, from journal events alone — the commit and its
//! author, the test stage's result, who approved, when it went live, the
//! incidents that suspected it — flagged where nobody approved it or its
//! author approved it themselves (by user name, or by the e-mail the user
//! was added with, found in the commit's author).

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use tandem_core::journal::Event;

#[derive(Clone, Debug, Serialize)]
pub struct Change {
    pub service: String,
    pub release: String,
    pub deployed_at: String,
    pub deployed_by: String,
    /// The pipeline run that made it; none for a deploy from a directory.
    pub run: Option<String>,
    pub commit: Option<String>,
    pub author: Option<String>,
    /// The `test` stage's outcome, if the run had one.
    pub tests: Option<String>,
    pub approvers: Vec<String>,
    pub incidents: Vec<String>,
    /// No approval recorded for it (or no run at all).
    pub unapproved: bool,
    /// An approver is its commit's author.
    pub self_approved: bool,
}

/// The changes of `customer`'s services (`services`) that went live in
/// production in `[from, to)` (RFC 3339).
pub fn report(events: &[Event], services: &BTreeSet<String>, from: &str, to: &str) -> Vec<Change> {
    let (from, to) = (from.to_owned(), to.to_owned());
    let within = |ts: &str| {
        let (Ok(t), Ok(a), Ok(b)) = (
            ts.parse::<jiff::Timestamp>(),
            from.parse::<jiff::Timestamp>(),
            to.parse::<jiff::Timestamp>(),
        ) else {
            return false;
        };
        a <= t && t < b
    };
    let mut emails: BTreeMap<String, String> = BTreeMap::new(); // user → e-mail
    let mut made_by: BTreeMap<(String, String), &Event> = BTreeMap::new(); // (service, release) → stage event
    let mut tests: BTreeMap<(String, String), String> = BTreeMap::new(); // (service, run) → outcome
    let mut approvers: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    let mut suspected: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for e in events {
        if e.kind == "user.added"
            && let (Some(user), Some(mail)) = (e.subject.get("user"), e.payload["email"].as_str())
        {
            emails.insert(user.clone(), mail.to_lowercase());
        }
        let Some(service) = e.subject.get("service").filter(|s| services.contains(*s)) else {
            continue;
        };
        let run = e.subject.get("run").cloned().unwrap_or_default();
        match e.kind.as_str() {
            "run.stage.succeeded" if e.payload["stage"] == "release" => {
                if let Some(r) = e.payload["release"].as_str() {
                    made_by.insert((service.clone(), r.to_owned()), e);
                }
            }
            "run.stage.succeeded" | "run.stage.failed" if e.payload["stage"] == "test" => {
                tests.insert(
                    (service.clone(), run),
                    e.kind.trim_start_matches("run.stage.").to_owned(),
                );
            }
            "run.approved" => approvers
                .entry((service.clone(), run))
                .or_default()
                .push(e.actor.clone()),
            "incident.opened" => {
                if let (Some(r), Some(id)) = (
                    e.payload["suspect_release"].as_str(),
                    e.subject.get("incident"),
                ) {
                    suspected
                        .entry((service.clone(), r.to_owned()))
                        .or_default()
                        .push(id.clone());
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    for e in events {
        if e.kind != "release.succeeded" || e.subject.contains_key("env") || !within(&e.ts) {
            continue;
        }
        let (Some(service), Some(release)) = (
            e.subject.get("service").filter(|s| services.contains(*s)),
            e.subject.get("release"),
        ) else {
            continue;
        };
        let key = (service.clone(), release.clone());
        let stage = made_by.get(&key);
        let run = stage.and_then(|s| s.subject.get("run").cloned());
        let author = stage.and_then(|s| s.payload["author"].as_str().map(str::to_owned));
        let approved: Vec<String> = run
            .as_ref()
            .and_then(|r| approvers.get(&(service.clone(), r.clone())))
            .cloned()
            .unwrap_or_default();
        let by_author = |actor: &String| {
            let Some(author) = author.as_deref().map(str::to_lowercase) else {
                return false;
            };
            let user = actor.trim_start_matches("user:");
            author
                .split(['<', '>', ' '])
                .any(|w| w == user.to_lowercase())
                || emails
                    .get(user)
                    .is_some_and(|m| author.contains(m.as_str()))
        };
        out.push(Change {
            service: service.clone(),
            release: release.clone(),
            deployed_at: e.ts.clone(),
            deployed_by: e.actor.clone(),
            commit: stage.and_then(|s| s.payload["commit"].as_str().map(str::to_owned)),
            tests: run
                .as_ref()
                .and_then(|r| tests.get(&(service.clone(), r.clone())).cloned()),
            unapproved: approved.is_empty(),
            self_approved: approved.iter().any(by_author),
            approvers: approved,
            incidents: suspected.get(&key).cloned().unwrap_or_default(),
            author,
            run,
        });
    }
    out
}

/// The changes as CSV, a row each.
pub fn csv(changes: &[Change]) -> String {
    let field = |s: &str| {
        if s.contains([',', '"', '\n', '\r']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s.to_owned()
        }
    };
    let mut out = String::from(
        "service,release,deployed_at,deployed_by,run,commit,author,tests,approvers,incidents,unapproved,self_approved\n",
    );
    for c in changes {
        let cells = [
            field(&c.service),
            field(&c.release),
            field(&c.deployed_at),
            field(&c.deployed_by),
            field(c.run.as_deref().unwrap_or("")),
            field(c.commit.as_deref().unwrap_or("")),
            field(c.author.as_deref().unwrap_or("")),
            field(c.tests.as_deref().unwrap_or("")),
            field(&c.approvers.join(" ")),
            field(&c.incidents.join(" ")),
            c.unapproved.to_string(),
            c.self_approved.to_string(),
        ];
        out.push_str(&cells.join(","));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{event, merged};

    #[test]
    fn each_production_change_is_a_row_flagged_when_unapproved_or_self_approved() {
        let c = |commit: &str, author: &str, extra: serde_json::Value| {
            merged(
                &serde_json::json!({ "commit": commit, "author": author }),
                extra,
            )
        };
        let t = "2026-11-05T10:00:00Z";
        let events = vec![
            event(
                1,
                t,
                "user:admin",
                "user.added",
                &[("user", "bob")],
                serde_json::json!({ "email": "Bob@Example.test" }),
            ),
            // Run 1 (Ann's commit), tests pass, Ann approves her own change.
            event(
                2,
                t,
                "system:scheduler",
                "run.stage.succeeded",
                &[("service", "shop"), ("run", "1")],
                c(
                    "c1",
                    "Ann <ann@example.test>",
                    serde_json::json!({ "stage": "test" }),
                ),
            ),
            event(
                3,
                t,
                "user:ann",
                "run.approved",
                &[("service", "shop"), ("run", "1")],
                serde_json::json!({}),
            ),
            event(
                4,
                t,
                "system:scheduler",
                "run.stage.succeeded",
                &[("service", "shop"), ("run", "1")],
                c(
                    "c1",
                    "Ann <ann@example.test>",
                    serde_json::json!({ "stage": "release", "release": "r1" }),
                ),
            ),
            event(
                5,
                t,
                "system:scheduler",
                "release.succeeded",
                &[("service", "shop"), ("release", "r1"), ("env", "staging")],
                serde_json::json!({}),
            ),
            event(
                6,
                t,
                "system:scheduler",
                "release.succeeded",
                &[("service", "shop"), ("release", "r1")],
                serde_json::json!({}),
            ),
            // Run 2: Bob (known by the e-mail he was added with) approves his own commit.
            event(
                7,
                t,
                "user:bob",
                "run.approved",
                &[("service", "shop"), ("run", "2")],
                serde_json::json!({}),
            ),
            event(
                8,
                t,
                "system:scheduler",
                "run.stage.succeeded",
                &[("service", "shop"), ("run", "2")],
                c(
                    "c2",
                    "Robert <bob@example.test>",
                    serde_json::json!({ "stage": "release", "release": "r2" }),
                ),
            ),
            event(
                9,
                t,
                "system:scheduler",
                "release.succeeded",
                &[("service", "shop"), ("release", "r2")],
                serde_json::json!({}),
            ),
            event(
                10,
                t,
                "system:monitor",
                "incident.opened",
                &[("service", "shop"), ("incident", "5")],
                serde_json::json!({ "suspect_release": "r2" }),
            ),
            // Run 3 approved by someone else; r4 deployed by hand.
            event(
                11,
                t,
                "user:carol",
                "run.approved",
                &[("service", "shop"), ("run", "3")],
                serde_json::json!({}),
            ),
            event(
                12,
                t,
                "system:scheduler",
                "run.stage.succeeded",
                &[("service", "shop"), ("run", "3")],
                c(
                    "c3",
                    "Ann <ann@example.test>",
                    serde_json::json!({ "stage": "release", "release": "r3" }),
                ),
            ),
            event(
                13,
                t,
                "system:scheduler",
                "release.succeeded",
                &[("service", "shop"), ("release", "r3")],
                serde_json::json!({}),
            ),
            event(
                14,
                t,
                "user:dave",
                "release.succeeded",
                &[("service", "shop"), ("release", "r4")],
                serde_json::json!({}),
            ),
            // Another customer's service, and last month: not rows.
            event(
                15,
                t,
                "user:dave",
                "release.succeeded",
                &[("service", "other"), ("release", "r1")],
                serde_json::json!({}),
            ),
            event(
                16,
                "2026-10-05T10:00:00Z",
                "user:dave",
                "release.succeeded",
                &[("service", "shop"), ("release", "r0")],
                serde_json::json!({}),
            ),
        ];
        let services = ["shop".to_string()].into_iter().collect();
        let rows = report(
            &events,
            &services,
            "2026-11-01T00:00:00Z",
            "2026-12-01T00:00:00Z",
        );
        let brief: Vec<(&str, bool, bool, Option<&str>, usize)> = rows
            .iter()
            .map(|r| {
                (
                    r.release.as_str(),
                    r.unapproved,
                    r.self_approved,
                    r.tests.as_deref(),
                    r.incidents.len(),
                )
            })
            .collect();
        assert_eq!(
            brief,
            vec![
                ("r1", false, true, Some("succeeded"), 0),
                ("r2", false, true, None, 1),
                ("r3", false, false, None, 0),
                ("r4", true, false, None, 0),
            ]
        );
        assert_eq!(rows[0].commit.as_deref(), Some("c1"));
        assert_eq!(rows[3].run, None);
        let text = csv(&rows);
        assert!(
            text.lines()
                .nth(1)
                .is_some_and(|l| l.starts_with("shop,r1,") && l.ends_with(",false,true")),
            "{text}"
        );
    }
}
