//! Who may do what: the roles of people, what each route of the API needs,
//! and the one function that decides ([`decide`]). Deny by default: a
//! route nobody classified needs `Need::Admin`, and a role not listed for a
//! need is refused.
//!
//! The supplier's people are `admin`, `engineer` and `viewer`; a
//! customer's are `customer-viewer` and `customer-approver`, bound to one
//! customer and seeing only that customer's services.

use std::fmt;
use std::str::FromStr;

/// A person's role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Everything, including people, tokens, customers, channels,
    /// repositories and backups.
    Admin,
    /// Deploy, roll back, run pipelines and approve (supplier side),
    /// incidents, maintenance, set and remove secrets; read everything.
    Engineer,
    /// Read everything but secrets.
    Viewer,
    /// Read one customer's services, releases, runs, incidents,
    /// maintenance and the journal about them.
    CustomerViewer,
    /// As a customer viewer, and approve that customer's promotions.
    CustomerApprover,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Admin,
        Role::Engineer,
        Role::Viewer,
        Role::CustomerViewer,
        Role::CustomerApprover,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Engineer => "engineer",
            Role::Viewer => "viewer",
            Role::CustomerViewer => "customer-viewer",
            Role::CustomerApprover => "customer-approver",
        }
    }

    /// Whether the role belongs to a customer (and needs one).
    pub fn is_customer(self) -> bool {
        matches!(self, Role::CustomerViewer | Role::CustomerApprover)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Role, String> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown role {s:?}; one of: {}",
                    Role::ALL.map(Role::as_str).join(", ")
                )
            })
    }
}

/// What a route needs of its caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// Nobody's token: health, the API document, signed webhooks.
    Public,
    /// Any valid token (who am I).
    Signed,
    /// The supplier's people (admin, engineer, viewer).
    Read,
    /// As `Read`, and a customer's people for their own customer's
    /// services only.
    CustomerRead,
    /// Admin and engineer.
    Operate,
    /// Admin and engineer, and a customer approver for their own
    /// customer's services.
    Approve,
    /// Admin only.
    Admin,
}

impl Need {
    /// The short name used in the API document and ARCHITECTURE.md.
    pub fn as_str(self) -> &'static str {
        match self {
            Need::Public => "public",
            Need::Signed => "signed",
            Need::Read => "read",
            Need::CustomerRead => "customer-read",
            Need::Operate => "operate",
            Need::Approve => "approve",
            Need::Admin => "admin",
        }
    }
}

/// The decision for one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Go ahead.
    Allow,
    /// Go ahead, within the caller's customer: what belongs to another is
    /// answered as if it did not exist.
    OwnCustomer,
    /// 403.
    Deny,
}

/// Whether `role` may use a route needing `need`.
pub fn decide(role: Role, need: Need) -> Access {
    use Access::*;
    match (need, role) {
        (Need::Public | Need::Signed, _) => Allow,
        (Need::Admin, Role::Admin) => Allow,
        (Need::Operate | Need::Approve, Role::Admin | Role::Engineer) => Allow,
        (Need::Approve, Role::CustomerApprover) => OwnCustomer,
        (Need::Read | Need::CustomerRead, Role::Admin | Role::Engineer | Role::Viewer) => Allow,
        (Need::CustomerRead, Role::CustomerViewer | Role::CustomerApprover) => OwnCustomer,
        _ => Deny,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_read_back_from_their_names_and_unknown_ones_are_named() {
        for r in Role::ALL {
            assert_eq!(r.as_str().parse::<Role>(), Ok(r));
        }
        let err = "root".parse::<Role>().expect_err("unknown");
        assert!(err.contains("admin, engineer, viewer"), "{err}");
    }

    #[test]
    fn only_admins_administer_and_viewers_never_change_anything() {
        for r in Role::ALL {
            assert_eq!(decide(r, Need::Admin) == Access::Allow, r == Role::Admin);
            assert_eq!(decide(r, Need::Public), Access::Allow);
        }
        for need in [Need::Operate, Need::Approve, Need::Admin] {
            assert_eq!(decide(Role::Viewer, need), Access::Deny);
            assert_eq!(decide(Role::CustomerViewer, need), Access::Deny);
        }
        assert_eq!(decide(Role::CustomerApprover, Need::Operate), Access::Deny);
        assert_eq!(
            decide(Role::CustomerApprover, Need::Approve),
            Access::OwnCustomer
        );
        assert_eq!(decide(Role::CustomerViewer, Need::Read), Access::Deny);
        assert_eq!(
            decide(Role::CustomerViewer, Need::CustomerRead),
            Access::OwnCustomer
        );
    }
}
