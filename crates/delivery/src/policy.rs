//! Gate policy: what a commit must pass before each environment. The
//! control plane holds it (`policies`, set from the spec a service is
//! registered with, changed by `tandem services policy`, journalled
//! `policy.set`); a commit's `tandem.yaml` may ask for more approvals than
//! the policy, never fewer, and may not drop an environment the policy
//! requires. So a commit cannot remove its own gate.

use tandem_core::spec::{Approvers, Promote, Spec};
use tandem_store::PolicyRow;

/// One environment's gate as a run meets it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gate {
    pub env: String,
    /// Approvals needed (0: none).
    pub approvals: u32,
    /// Who may approve; empty: anyone.
    pub approvers: Vec<String>,
    /// Whose approvals count (with `Both`, at least one of each side).
    pub from: Approvers,
    /// Whether the commit's author may approve it.
    pub author_may_approve: bool,
}

/// What `spec` asks of one environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Asked {
    pub env: String,
    pub approvals: u32,
    pub from: Approvers,
    pub author_may_approve: bool,
}

/// What `spec` asks for, per environment in order (a spec without
/// environments has one, `production`).
pub fn of_spec(spec: &Spec) -> Vec<Asked> {
    if spec.environments.is_empty() {
        return vec![Asked {
            env: "production".into(),
            approvals: 0,
            from: Approvers::Supplier,
            author_may_approve: false,
        }];
    }
    spec.environments
        .iter()
        .enumerate()
        .map(|(i, (name, env))| {
            let manual =
                env.promote == Promote::Manual || (i == 0 && env.auto_deploy == Some(false));
            Asked {
                env: name.as_str().to_owned(),
                approvals: if manual { env.approvals.max(1) } else { 0 },
                from: env.approvers,
                author_may_approve: env.author_may_approve,
            }
        })
        .collect()
}

/// The gates of `spec`'s environments under `policies`: the greater
/// number of approvals of the two. `Err` names an environment the policy
/// requires that the spec lacks.
pub fn effective(spec: &Spec, policies: &[PolicyRow]) -> Result<Vec<Gate>, String> {
    let asked = of_spec(spec);
    if let Some(missing) = policies
        .iter()
        .find(|p| p.required && !asked.iter().any(|a| a.env == p.env))
    {
        return Err(format!(
            "the policy of {} requires environment {}, which this commit's tandem.yaml does not have; a commit cannot remove a gate (an admin can: tandem services policy {} --env {} --optional)",
            missing.service, missing.env, missing.service, missing.env
        ));
    }
    Ok(asked
        .into_iter()
        .map(|a| {
            let policy = policies.iter().find(|p| p.env == a.env);
            // A commit may ask for other eyes too, never for fewer.
            let held = policy.and_then(|p| p.approvers_from.parse::<Approvers>().ok());
            Gate {
                approvals: a
                    .approvals
                    .max(policy.map_or(0, |p| p.approvals.max(0) as u32)),
                approvers: policy.map(|p| p.approvers.clone()).unwrap_or_default(),
                from: held.map_or(a.from, |h| h.and(a.from)),
                author_may_approve: a.author_may_approve
                    && policy.is_none_or(|p| p.author_may_approve),
                env: a.env,
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(envs: &str) -> Spec {
        let text = format!(
            "service:\n  name: shop\nrun:\n  command: x\nroute:\n  host: shop.test\n{envs}"
        );
        Spec::parse("tandem.yaml", &text).expect("spec")
    }

    fn policy(env: &str, approvals: i64, required: bool) -> PolicyRow {
        PolicyRow {
            service: "shop".into(),
            env: env.into(),
            approvals,
            approvers: vec!["user:alice".into()],
            required,
            approvers_from: "supplier".into(),
            author_may_approve: false,
            updated_at: String::new(),
            updated_by: String::new(),
        }
    }

    #[test]
    fn a_spec_may_tighten_a_gate_never_loosen_or_drop_it() {
        let loose =
            spec("environments:\n  staging: { route: { host: s.test } }\n  production: {}\n");
        let policies = [policy("staging", 0, true), policy("production", 2, true)];
        let gates = effective(&loose, &policies).expect("gates");
        assert_eq!(
            gates[1].approvals, 2,
            "the spec's 0 does not loosen the policy's 2"
        );
        assert_eq!(gates[1].approvers, ["user:alice"]);
        let tight = spec(
            "environments:\n  staging: { route: { host: s.test } }\n  production: { promote: manual, approvals: 3 }\n",
        );
        assert_eq!(effective(&tight, &policies).expect("gates")[1].approvals, 3);
        let dropped = spec("");
        let err = effective(&dropped, &policies).expect_err("staging is required");
        assert!(err.contains("requires environment staging"), "{err}");
        let optional = [policy("staging", 0, false), policy("production", 1, true)];
        assert_eq!(
            effective(&dropped, &optional).expect("gates")[0].approvals,
            1
        );
    }

    #[test]
    fn a_spec_may_ask_for_other_eyes_but_not_let_the_author_approve_alone() {
        let asks = spec(
            "environments:\n  staging: { route: { host: s.test } }\n  production: { promote: manual, approvers: customer, author_may_approve: true }\n",
        );
        let policies = [policy("staging", 0, true), policy("production", 1, true)];
        let gates = effective(&asks, &policies).expect("gates");
        assert_eq!(
            gates[1].from,
            Approvers::Both,
            "supplier's policy and customer's spec"
        );
        assert!(!gates[1].author_may_approve, "the policy does not allow it");
    }
}
