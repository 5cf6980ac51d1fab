//! One pure decision: the Cedar request and entities for (principal, action, resource), deny by
//! default, a matching `forbid` always wins, an evaluation error denies; the reason names the
//! action, the resource, the principal and the deciding policies.
//!
//! Must not: cache (see `engine`) or read files.

use super::load::diagnostic_message;
use super::*;
use std::collections::{HashMap, HashSet};

impl Policies {
    /// Pure decision, deny by default: allowed only when some permit matches and no forbid does.
    pub fn decide(&self, principal: &Principal, action: Action, resource: &Resource) -> Decision {
        let who = principal.display();
        let what = match resource {
            Resource::Broker => action.as_str().to_owned(),
            Resource::Module { path, .. } => format!("{action} of {path}"),
            Resource::Session { .. } => format!("{action} of the {}", resource.display()),
        };
        if let Resource::Module { path, .. } = resource
            && let Some(problem) = module_path_problem(path)
        {
            return Decision::deny(format!("{action} of invalid module path {path:?} ({problem}) for {who}"));
        }
        let (request, entities) = match self.request(principal, action, resource) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(principal = %who, %action, resource = %resource.display(), "cannot evaluate request: {e}");
                return Decision::deny(format!("cannot evaluate {what} for {who}: {e}"));
            }
        };
        let response = cedar::Authorizer::new().is_authorized(&request, &self.set, &entities);
        let diagnostics = response.diagnostics();
        let failed: Vec<String> = diagnostics.errors().map(|e| diagnostic_message(e)).collect();
        if !failed.is_empty() {
            tracing::warn!(principal = %who, %action, resource = %resource.display(), errors = ?failed, "policies failed to evaluate (request denied)");
        }
        let mut policy_ids: Vec<String> = diagnostics.reason().map(|id| id.to_string()).collect();
        policy_ids.sort();
        let names = policy_ids.join(", ");
        let plural = if policy_ids.len() == 1 { "y" } else { "ies" };
        match response.decision() {
            // Fail closed: a policy that could not be evaluated might have been a forbid.
            cedar::Decision::Allow if !failed.is_empty() => Decision::deny(format!(
                "{} policy evaluation error(s) while deciding {what} for {who}: denied to be safe ({})",
                failed.len(),
                failed.join("; ")
            )),
            cedar::Decision::Allow => {
                Decision { allowed: true, reason: format!("permitted by polic{plural} {names}"), policy_ids }
            }
            cedar::Decision::Deny if !policy_ids.is_empty() => Decision {
                allowed: false,
                reason: format!("forbidden by polic{plural} {names}: {what} for {who}"),
                policy_ids,
            },
            cedar::Decision::Deny => {
                let mut reason = format!("no policy permits {what} for {who}");
                if !failed.is_empty() {
                    reason.push_str(&format!(" ({} policy evaluation error(s): {})", failed.len(), failed.join("; ")));
                }
                Decision::deny(reason)
            }
        }
    }

    /// The Cedar request and entities for one question.
    fn request(
        &self,
        principal: &Principal,
        action: Action,
        resource: &Resource,
    ) -> Result<(cedar::Request, cedar::Entities), String> {
        let mut entities = Vec::new();
        let principal_uid = principal_entity(principal, &mut entities)?;
        let resource_uid = resource_entity(resource, &mut entities)?;
        let entities =
            cedar::Entities::from_entities(entities, Some(&self.schema)).map_err(|e| diagnostic_message(&e))?;
        let request = cedar::Request::new(
            principal_uid,
            uid("Action", action.as_str())?,
            resource_uid,
            cedar::Context::empty(),
            Some(&self.schema),
        )
        .map_err(|e| diagnostic_message(&e))?;
        Ok((request, entities))
    }
}

/// The principal's entity (with its groups as parents and the declared attributes) and groups.
fn principal_entity(principal: &Principal, entities: &mut Vec<cedar::Entity>) -> Result<cedar::EntityUid, String> {
    let principal_type = match principal.kind {
        PrincipalKind::User => "User",
        PrincipalKind::Workload => "Workload",
    };
    let principal_uid = uid(principal_type, &principal.id)?;
    let groups: HashSet<&str> = principal.groups.iter().map(String::as_str).collect();
    let mut parents = HashSet::new();
    for group in &groups {
        let group_uid = uid("Group", group)?;
        entities.push(cedar::Entity::new_no_attrs(group_uid.clone(), HashSet::new()));
        parents.insert(group_uid);
    }
    let mut attrs = HashMap::from([
        (
            "groups".to_owned(),
            cedar::RestrictedExpression::new_set(
                principal.groups.iter().map(|g| cedar::RestrictedExpression::new_string(g.clone())),
            ),
        ),
        ("auth_method".to_owned(), cedar::RestrictedExpression::new_string(principal.auth_method.clone())),
        ("key_fingerprint".to_owned(), cedar::RestrictedExpression::new_string(principal.key_fingerprint.clone())),
    ]);
    for (name, value) in &principal.attrs {
        if DECLARED_ATTRS.contains(&name.as_str()) {
            attrs.insert(name.clone(), cedar::RestrictedExpression::new_string(value.clone()));
        }
    }
    entities.push(cedar::Entity::new(principal_uid.clone(), attrs, parents).map_err(|e| diagnostic_message(&e))?);
    Ok(principal_uid)
}

/// The resource's entity with the attributes the schema declares for its type.
fn resource_entity(resource: &Resource, entities: &mut Vec<cedar::Entity>) -> Result<cedar::EntityUid, String> {
    Ok(match resource {
        Resource::Broker => {
            let broker = uid("Broker", "gocred")?;
            entities.push(cedar::Entity::new_no_attrs(broker.clone(), HashSet::new()));
            broker
        }
        Resource::Module { path, upstream } => {
            let module = uid("Module", path)?;
            let mut segments = path.split('/');
            let host = segments.next().unwrap_or_default();
            let mut attrs = HashMap::from([
                ("path".to_owned(), cedar::RestrictedExpression::new_string(path.clone())),
                ("folded_path".to_owned(), cedar::RestrictedExpression::new_string(folded_path(path))),
                ("host".to_owned(), cedar::RestrictedExpression::new_string(host.to_owned())),
                ("upstream".to_owned(), cedar::RestrictedExpression::new_string(upstream.clone())),
            ]);
            if let Some(org) = segments.next().filter(|o| !o.is_empty()) {
                attrs.insert("org".to_owned(), cedar::RestrictedExpression::new_string(org.to_owned()));
            }
            entities
                .push(cedar::Entity::new(module.clone(), attrs, HashSet::new()).map_err(|e| diagnostic_message(&e))?);
            module
        }
        Resource::Session { owner_kind, owner, auth_method } => {
            let session = uid("Session", &format!("{owner_kind}:{owner}"))?;
            let attrs = HashMap::from([
                ("owner_kind".to_owned(), cedar::RestrictedExpression::new_string(owner_kind.clone())),
                ("owner".to_owned(), cedar::RestrictedExpression::new_string(owner.clone())),
                ("auth_method".to_owned(), cedar::RestrictedExpression::new_string(auth_method.clone())),
            ]);
            entities
                .push(cedar::Entity::new(session.clone(), attrs, HashSet::new()).map_err(|e| diagnostic_message(&e))?);
            session
        }
    })
}
