//! `v1` Node -> [`Node`].

use std::net::IpAddr;

use k8s_openapi::api::core::v1 as core;

use super::{FieldProblem, NameRule, Object, Read};
use crate::model::{ExclusionReason, Node};
use crate::names::{EXCLUDE_FROM_LOAD_BALANCERS_LABEL, TO_BE_DELETED_TAINT};

/// Reads a Node.
///
/// - `addresses`: every `InternalIP`, then every `ExternalIP`, in status
///   order and without duplicates; other address types are ignored. The API
///   server does not validate them: one that is not an IP address is
///   skipped and reported. A Node may end up with none (the edge then has
///   nothing to send to; the node agent still serves its health checks).
/// - `excluded` (cloud-provider service controller, KEP-3458): a
///   `deletionTimestamp`, the [`EXCLUDE_FROM_LOAD_BALANCERS_LABEL`] label
///   (any value), the [`TO_BE_DELETED_TAINT`] taint (any effect).
pub fn read_node(node: &core::Node) -> Result<Read<Node>, FieldProblem> {
    let Some(name) = node.metadata.name.as_deref().filter(|n| !n.is_empty()) else {
        return Err(Object::new("Node (unnamed)".into()).missing("metadata.name"));
    };
    if let Err(why) = NameRule::Subdomain.check(name) {
        return Err(Object::new("Node (invalid name)".into())
            .problem("metadata.name", format!("{} {why}", super::quoted(name))));
    }
    let object = Object::new(format!("Node {name}"));

    let status_addresses = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_deref())
        .unwrap_or_default();
    let mut problems = Vec::new();
    let mut addresses: Vec<IpAddr> = Vec::new();
    for wanted in ["InternalIP", "ExternalIP"] {
        for (i, a) in status_addresses.iter().enumerate() {
            if a.type_ != wanted {
                continue;
            }
            match object.ip(&a.address, || format!("status.addresses[{i}].address")) {
                Ok(ip) if addresses.contains(&ip) => {}
                Ok(ip) => addresses.push(ip),
                Err(mut problem) => {
                    problem.message.push_str("; address not used");
                    problems.push(problem);
                }
            }
        }
    }

    let mut excluded = Vec::new();
    if node.metadata.deletion_timestamp.is_some() {
        excluded.push(ExclusionReason::Deleting);
    }
    if node
        .metadata
        .labels
        .as_ref()
        .is_some_and(|l| l.contains_key(EXCLUDE_FROM_LOAD_BALANCERS_LABEL))
    {
        excluded.push(ExclusionReason::ExcludeLabel);
    }
    if node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .unwrap_or_default()
        .iter()
        .any(|t| t.key == TO_BE_DELETED_TAINT)
    {
        excluded.push(ExclusionReason::ToBeDeletedTaint);
    }

    Ok(Read {
        value: Node {
            name: name.to_owned(),
            addresses,
            excluded,
        },
        problems,
    })
}
