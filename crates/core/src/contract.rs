//! A customer's contract: the availability each of their services is owed,
//! the notice a maintenance window needs to be excluded, and the service
//! credits owed below the objective. Set with `tandem customers contract
//! C --file contract.yaml` and journaled whole (`customer.contract_set`),
//! so an SLA report can be recomputed from the log alone.
//!
//! ```yaml
//! notice: 72h                 # announced at least this long before it began
//! objectives:
//!   - { service: shop, objective: 99.95% }
//!   - { tier: critical, objective: 99.9% }
//!   - { objective: 99.5% }    # every other service
//! credits:                    # availability below → credit of the month's fee
//!   - { below: 99.9%, credit: 10% }
//!   - { below: 99%, credit: 25% }
//! ```

use serde::{Deserialize, Serialize};

use crate::spec::SpecError;
use crate::units::{Duration, Percent};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Contract {
    /// A maintenance window announced at least this long before it began
    /// is excluded from availability; one announced later counts.
    pub notice: Duration,
    /// The first rule naming the service applies, else the first naming
    /// its tier, else the first naming neither.
    pub objectives: Vec<Objective>,
    #[serde(default)]
    pub credits: Vec<Credit>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Objective {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    pub objective: Percent,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credit {
    /// Owed when the month's availability is below this.
    pub below: Percent,
    /// Of the month's fee.
    pub credit: Percent,
}

impl Contract {
    /// Reads a contract, refusing what cannot be meant: an error says what
    /// and where.
    pub fn parse(file: &str, text: &str) -> Result<Contract, Box<SpecError>> {
        if text.len() > 64 * 1024 {
            return Err(Box::new(SpecError {
                file: file.into(),
                line: 1,
                column: 1,
                message: "a contract is at most 64 KiB".into(),
                hint: None,
                snippet: String::new(),
            }));
        }
        let c: Contract =
            serde_saphyr::from_str(text).map_err(|e| Box::new(crate::spec::locate(file, &e)))?;
        let refuse = |message: String| {
            Box::new(SpecError {
                file: file.into(),
                line: 1,
                column: 1,
                message,
                hint: None,
                snippet: String::new(),
            })
        };
        if c.objectives.is_empty() {
            return Err(refuse("objectives: at least one is needed".into()));
        }
        for (i, o) in c.objectives.iter().enumerate() {
            if o.service.is_some() && o.tier.is_some() {
                return Err(refuse(format!(
                    "objectives[{i}]: name a service or a tier, not both"
                )));
            }
            if o.objective.value() <= 0.0 {
                return Err(refuse(format!(
                    "objectives[{i}]: an objective of 0% promises nothing"
                )));
            }
        }
        for (i, step) in c.credits.iter().enumerate() {
            if step.credit.value() <= 0.0 {
                return Err(refuse(format!("credits[{i}]: a credit of 0% is no step")));
            }
        }
        Ok(c)
    }

    /// The objective (a fraction) owed for a service of `tier`.
    pub fn objective_for(&self, service: &str, tier: &str) -> Option<f64> {
        let pick = |f: &dyn Fn(&Objective) -> bool| self.objectives.iter().find(|o| f(o));
        pick(&|o| o.service.as_deref() == Some(service))
            .or_else(|| pick(&|o| o.tier.as_deref() == Some(tier)))
            .or_else(|| pick(&|o| o.service.is_none() && o.tier.is_none()))
            .map(|o| o.objective.ratio())
    }

    /// The credit (a fraction of the month's fee) owed at `availability`
    /// (a fraction): the largest step whose bound it is below.
    pub fn credit_for(&self, availability: f64) -> f64 {
        self.credits
            .iter()
            .filter(|c| availability < c.below.ratio())
            .map(|c| c.credit.ratio())
            .fold(0.0, f64::max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "notice: 72h\nobjectives:\n  - { service: shop, objective: 99.95% }\n  - { tier: critical, objective: 99.9% }\n  - { objective: 99.5% }\ncredits:\n  - { below: 99.9%, credit: 10% }\n  - { below: 99%, credit: 25% }\n";

    #[test]
    fn objectives_go_by_service_then_tier_then_default_and_credits_by_step() {
        let c = Contract::parse("contract.yaml", TEXT).expect("contract");
        assert_eq!(c.notice.as_millis(), 72 * 3600 * 1000);
        assert_eq!(c.objective_for("shop", "critical"), Some(0.9995));
        assert_eq!(c.objective_for("api", "critical"), Some(0.999));
        assert_eq!(c.objective_for("blog", "standard"), Some(0.995));
        assert_eq!(c.credit_for(0.9995), 0.0);
        assert_eq!(c.credit_for(0.9989), 0.10);
        assert_eq!(c.credit_for(0.95), 0.25);
    }

    #[test]
    fn a_contract_that_cannot_be_meant_is_refused_with_where() {
        for (text, says) in [
            ("notice: 72h\nobjectives: []\n", "at least one"),
            (
                "notice: 72h\nobjectives:\n  - { service: a, tier: b, objective: 99% }\n",
                "not both",
            ),
            (
                "notice: soon\nobjectives:\n  - { objective: 99% }\n",
                "notice",
            ),
            (
                "notice: 72h\nobjectives:\n  - { objective: 120% }\n",
                "objective",
            ),
            (
                "notice: 72h\nobjectives:\n  - { objective: 99% }\nfees: 3\n",
                "fees",
            ),
        ] {
            let e = Contract::parse("c.yaml", text).expect_err(text);
            let all = format!("{} {}", e.message, e.snippet);
            assert!(all.contains(says), "{text}: {all}");
        }
    }
}
