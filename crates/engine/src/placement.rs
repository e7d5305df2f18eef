//! Where a release runs. Production is the service itself: its name in the
//! agent and its `route`. Every other environment runs as its own unit in
//! the agent, `<service>@<env>`, on the route the environment declares, so
//! staging and production of one service are two independent blue/green
//! pairs behind the same proxy.

use tandem_core::journal::NewEvent;
use tandem_core::protocol::RouteSpec;
use tandem_core::spec::{EnvName, Spec};

#[derive(Clone, Debug, PartialEq)]
pub struct Placement {
    /// The environment's name; `None` for a service without environments.
    pub env: Option<String>,
    /// Whether this is production (the last environment, or the only place).
    pub production: bool,
    /// The agent's service key.
    pub unit: String,
    pub route: RouteSpec,
}

impl Placement {
    /// Production: the last environment, or the service itself when it
    /// declares none.
    pub fn production(spec: &Spec) -> Placement {
        match spec.environments.iter().last() {
            Some((name, _)) => Placement::environment(spec, name),
            None => Placement {
                env: None,
                production: true,
                unit: spec.service.name.to_string(),
                route: route(spec, None),
            },
        }
    }

    /// Every place the spec runs: each environment, or production alone.
    pub fn all(spec: &Spec) -> Vec<Placement> {
        if spec.environments.is_empty() {
            return vec![Placement::production(spec)];
        }
        spec.environments
            .iter()
            .map(|(name, _)| Placement::environment(spec, name))
            .collect()
    }

    /// One of the spec's environments.
    pub fn environment(spec: &Spec, env: &EnvName) -> Placement {
        let last = spec.environments.iter().last().map(|(n, _)| n);
        let production = last == Some(env);
        let unit = Placement::unit_name(
            spec.service.name.as_str(),
            (!production).then_some(env.as_str()),
        );
        Placement {
            env: Some(env.as_str().to_owned()),
            production,
            unit,
            route: route(spec, Some(env)),
        }
    }

    /// The agent unit of `service` in `env` (`None`: production, the bare
    /// service).
    pub fn unit_name(service: &str, env: Option<&str>) -> String {
        match env {
            Some(env) => format!("{service}@{env}"),
            None => service.to_owned(),
        }
    }

    /// The service and environment of an agent unit: the inverse of
    /// [`Placement::unit_name`] (production is the bare
    /// service, so it has no environment here).
    pub fn split_unit(unit: &str) -> (&str, Option<&str>) {
        match unit.split_once('@') {
            Some((service, env)) => (service, Some(env)),
            None => (unit, None),
        }
    }

    /// ` in staging`, for messages.
    pub fn suffix(&self) -> String {
        self.env
            .as_deref()
            .map(|e| format!(" in {e}"))
            .unwrap_or_default()
    }

    /// Adds the environment to an event's subject.
    pub fn event(&self, event: NewEvent) -> NewEvent {
        match &self.env {
            Some(env) => event.subject("env", env),
            None => event,
        }
    }
}

fn route(spec: &Spec, env: Option<&EnvName>) -> RouteSpec {
    let over = env.and_then(|name| {
        spec.environments
            .iter()
            .find(|(n, _)| *n == name)
            .and_then(|(_, e)| e.route.clone())
    });
    let host = over
        .as_ref()
        .and_then(|o| o.host.as_ref())
        .unwrap_or(&spec.route.host);
    let prefix = over
        .as_ref()
        .and_then(|o| o.path_prefix.as_ref())
        .unwrap_or(&spec.route.path_prefix);
    RouteSpec {
        host: host.as_str().into(),
        path_prefix: prefix.as_str().into(),
        timeout_ms: spec.route.timeout.as_millis(),
        https_only: spec.route.https_only,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_split_back_into_service_and_environment() {
        assert_eq!(
            Placement::split_unit("shop@staging"),
            ("shop", Some("staging"))
        );
        assert_eq!(Placement::split_unit("shop"), ("shop", None));
    }

    #[test]
    fn every_place_gets_the_route_timeout_and_its_own_host() {
        let spec = Spec::parse(
            "tandem.yaml",
            "service: { name: shop }\nrun: { command: x }\nroute: { host: shop.test, timeout: 10m }\nenvironments:\n  staging: { route: { host: shop.staging.test } }\n  production: {}\n",
        )
        .expect("spec");
        let staging =
            Placement::environment(&spec, spec.environments.iter().next().expect("env").0);
        let production = Placement::production(&spec);
        assert_eq!(
            (staging.route.host.as_str(), staging.route.timeout_ms),
            ("shop.staging.test", 600_000)
        );
        assert_eq!(
            (production.route.host.as_str(), production.route.timeout_ms),
            ("shop.test", 600_000)
        );
    }
}
