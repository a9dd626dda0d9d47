//! `discovery.k8s.io/v1` EndpointSlice -> [`EndpointSlice`].

use k8s_openapi::api::discovery::v1 as discovery;

use super::service::protocol;
use super::{require_key, FieldProblem, NameRule, Read};
use crate::cluster::{AddressType, Endpoint, EndpointPort, EndpointSlice};
use crate::model::ServiceKey;
use crate::names::SERVICE_NAME_LABEL;

/// Reads an EndpointSlice.
///
/// The Service comes from the [`SERVICE_NAME_LABEL`] label (required).
/// Conditions default as Kubernetes documents them: `ready` absent = true,
/// `serving` absent = `ready`, `terminating` absent = false. Ports default
/// to protocol TCP and an empty name; a port of 0 or none is `None` (as
/// kube-proxy, the port is then not used). An `FQDN` slice keeps its ports
/// but no endpoints (its addresses are host names, nothing to program). An
/// endpoint whose address is not an IP address is skipped and reported;
/// the rest of the slice is read.
pub fn read_endpoint_slice(
    slice: &discovery::EndpointSlice,
) -> Result<Read<EndpointSlice>, FieldProblem> {
    let (key, object) = require_key("EndpointSlice", &slice.metadata, NameRule::Subdomain)?;
    let service_name = slice
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(SERVICE_NAME_LABEL))
        .filter(|n| !n.is_empty())
        .ok_or_else(|| object.missing(format!("metadata.labels[{SERVICE_NAME_LABEL}]")))?;
    let service = ServiceKey::new(key.namespace.clone(), service_name.clone());

    let address_type = match slice.address_type.as_str() {
        "" => return Err(object.missing("addressType")),
        "IPv4" => AddressType::IPv4,
        "IPv6" => AddressType::IPv6,
        "FQDN" => AddressType::Fqdn,
        other => return Err(object.invalid("addressType", other, "one of IPv4, IPv6, FQDN")),
    };

    let mut ports = Vec::new();
    for (i, p) in slice.ports.iter().flatten().enumerate() {
        ports.push(EndpointPort {
            name: p.name.clone().unwrap_or_default(),
            protocol: protocol(&object, p.protocol.as_deref(), || {
                format!("ports[{i}].protocol")
            })?,
            port: object.optional_port(p.port, || format!("ports[{i}].port"))?,
        });
    }

    let mut problems = Vec::new();
    let mut endpoints = Vec::new();
    if address_type != AddressType::Fqdn {
        'endpoints: for (i, ep) in slice.endpoints.iter().enumerate() {
            let mut addresses = Vec::with_capacity(ep.addresses.len());
            for (j, addr) in ep.addresses.iter().enumerate() {
                match object.ip(addr, || format!("endpoints[{i}].addresses[{j}]")) {
                    Ok(ip) => addresses.push(ip),
                    Err(mut problem) => {
                        problem.message.push_str("; endpoint skipped");
                        problems.push(problem);
                        continue 'endpoints;
                    }
                }
            }
            let conditions = ep.conditions.as_ref();
            let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
            let serving = conditions.and_then(|c| c.serving).unwrap_or(ready);
            let terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
            endpoints.push(Endpoint {
                addresses,
                ready,
                serving,
                terminating,
                node_name: ep.node_name.clone().filter(|n| !n.is_empty()),
            });
        }
    }

    Ok(Read {
        value: EndpointSlice {
            key,
            service,
            address_type,
            ports,
            endpoints,
        },
        problems,
    })
}
